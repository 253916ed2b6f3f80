"""
The quality-size frontier: SmolLM2-135M compressed to 0.9x, 0.8x, 0.7x and 0.6x of its parameters by this repo's
pipeline and by the methods people use instead, each measured with eval.py --suite general. What does each size
cost, and which method gives the best model at each size?

Sizes: layer drop can only remove whole blocks (3.54M parameters each, 2.6% of the model), so every size is the
count of the truncated model nearest the fraction (26, 22, 19 and 15 of 30 blocks kept: 0.895x, 0.790x, 0.711x,
0.605x); every other method is held to that count within 0.5%.

Methods, each an ordinary kron_decomp.py option, all calibrated on the same 65,536 tokens (half Shakespeare, half
teacher text: the general study's best calibration data) in 256-token sequences, with 16,384 tokens of output
gradients where a method uses them; the statistics are collected once and shared through --calib_cache:
  svd        plain truncated SVD of every block matrix (attention and MLP) at one ratio
  svdllm     SVD-LLM: whitened low rank ('aware', truncation-aware) at one ratio
  asvd       ASVD: input channels scaled by their activation scale^0.5, at one ratio
  fwsvd      FWSVD: rows weighted by their Fisher information (the text's next tokens), at one ratio
  layerdrop  ShortGPT: the blocks of least influence (1 - cos(input, output)) dropped
  width      Minitron-style width pruning: every MLP keeps the hidden units of largest activation scale, the down
             projection refitted by least squares
  width_obs  width pruning whose units are chosen by optimal brain surgeon (least refitted error)
  alloc      this repo's decomposition: fisher with the teacher's own labels, every matrix of the blocks its own rank
             under the budget (the exact allocator), no fitting
  krony      this repo's pipeline: alloc, then every block fitted to the dense block on the calibration text
             (train_distillation.py --mode=layerwise, 65,536 tokens, 150 steps a block)
  width_fit  width, then every narrowed MLP fitted to the dense one the same way (compress.py --method width_fit)
  width_alloc      width pruning with each block its own width (--width allocate): the widths of least predicted
                   loss increase (fisher, the teacher's labels) under the budget, exact knapsack; activation order
  width_alloc_fit  width_alloc, then fitted like krony (compress.py --method width_alloc_fit)
  lowrank_width    one allocation over both families (--allocate --families lowrank,width): each block's MLP narrowed
                   or kept at full width with low-rank (or dense) matrices, attention low rank or dense
  lowrank_width_fit  lowrank_width, then fitted like krony (compress.py --method lowrank_width_fit)

Rows: every method at every size without recovery ('zero-shot'), and the dense teacher. --recover: the three
methods with the lowest mean zero-shot loss at 0.8x and 0.6x (and krony if it is not among them), each recovered
the same way (logit distillation from the teacher on the same mixture, the general study's best recipe: 300 steps
of 4 x 256 tokens, the learning-rate sweep of every study). --long: the best 0.6x start recovered 3,000 steps,
evaluated every 300. --speed: CPU training and prefill tokens/s of every zero-shot model (bench.py; run it alone).

Resumable: every finished row keeps its records in results/state/frontier/ and is reused; run it in the background
and run the same command again to go on. The report is rewritten after every row.

    python data/shakespeare/prepare.py --tokenizer=smollm2-135m; python data/milton/prepare.py --tokenizer=smollm2-135m
    python data/pydoc/prepare.py --tokenizer=smollm2-135m; tar -xzf data/teacher/teacher_smollm2-135m.tgz -C data
    nohup python experiments/frontier.py > frontier.log 2>&1 &          # zero-shot rows (hours on 2 cores)
    python experiments/frontier.py --recover                             # then the recovered rows
    python experiments/frontier.py --speed                               # alone: the speed columns
    python experiments/frontier.py --report_only
"""

import json
import os

from common import Experiment, Recovery, evals, finished, fmt, parser
from kronygpt.pipeline import METHODS as PIPELINE  # compress.py's methods: the same options, written once

SIZES = (0.9, 0.8, 0.7, 0.6)
RATIO = ["--shape", "lowrank", "--scope", "blocks"]
METHODS = {  # kron_decomp.py options of each zero-shot method, in the report's order (None: a fitted method)
    "svd": [*RATIO, "--init", "vl"],
    "svdllm": PIPELINE["svdllm"],
    "asvd": [*RATIO, "--init", "asvd"],
    "fwsvd": [*RATIO, "--init", "fwsvd", "--fisher_labels", "data"],
    **{m: PIPELINE[m] for m in ("layerdrop", "width", "width_obs", "alloc", "width_alloc", "lowrank_width")},
    "krony": None,  # alloc, fitted
    "width_fit": None,  # width, fitted
    "width_alloc_fit": None,  # width_alloc, fitted
    "lowrank_width_fit": None,  # lowrank_width, fitted
}
# the fitted methods and the decomposition each fits
FITTED = {"krony": "alloc", "width_fit": "width", "width_alloc_fit": "width_alloc",
          "lowrank_width_fit": "lowrank_width"}
OURS = ("alloc", "krony", "width_fit", "width_alloc", "width_alloc_fit", "lowrank_width",
        "lowrank_width_fit")  # compress.py's methods beyond the peers
LOSSES = ("shakespeare", "milton", "pydoc", "teacher_loss")
SUITE = (*LOSSES, "teacher_kl", "facts_acc", "facts_acc_norm")
KD = ["--mode=e2e", "--alpha=0", "--beta=1", "--temperature=1"]
# the targets of issue 52, (size, stage): {column: allowed distance from dense} (facts: points below dense)
TARGETS = {(0.9, "zero-shot"): dict(shakespeare=0.05, milton=0.05, teacher_loss=0.05, pydoc=0.15, facts_acc=0.01),
           (0.8, "zero-shot"): dict(shakespeare=0.15, milton=0.15, teacher_loss=0.15, pydoc=0.40, facts_acc=0.05),
           (0.8, "recovered"): dict(shakespeare=0.05, milton=0.05, teacher_loss=0.05, pydoc=0.20, facts_acc=0.03)}


def key_of(method, size, stage="zeroshot"):
    return f"{method}_{round(size * 100)}" + ("" if stage == "zeroshot" else f"_{stage}")


class Frontier:
    def __init__(self, args):
        self.args, self.ex = args, Experiment("frontier", args)
        self.model = os.path.abspath(args.model) if os.path.exists(args.model) else args.model
        if args.smoke:
            self.calib = ["--calib_tokens=256", "--calib_seq=32", "--fisher_tokens=128"]
            self.fit = ["--layerwise_tokens=512", "--layerwise_steps=3"]
            self.scale = [*self.ex.base, f"--eval_datasets={args.data}"]
        else:
            self.calib = ["--calib_tokens=65536", "--calib_seq=256", "--fisher_tokens=16384"]
            self.fit = ["--layerwise_tokens=65536", "--layerwise_steps=150", "--layerwise_batch=1024"]
            self.scale = [f"--dataset={self.mix()}", "--block_size=256", "--batch_size=4", "--eval_tokens=16384",
                          "--log_interval=5", "--warmup_iters=10", "--weight_decay=0.1", "--grad_clip=1.0",
                          f"--eval_datasets={args.milton},{args.pydoc},{args.teacher_data}"]
        self.recovery = Recovery(self.ex, self.scale, args.sweep_steps, args.lrs)

    def mix(self):
        a = self.args
        return a.data if a.smoke else f"{a.data}:0.5,{a.teacher_data}:0.5"

    # -- sizes

    def dense_params(self):
        """{'dense': its parameters, 'sizes': {fraction: the truncated model's parameters}}, computed once."""
        path = os.path.join(self.ex.out, "sizes.json")
        if not os.path.isfile(path):
            from kronygpt.checkpoint import load_model
            dense = load_model(self.model)
            total = dense.param_counts()["total"]
            per_block = sum(p.numel() for p in dense.transformer.h[0].parameters())
            outside, n_layer = total - dense.config.n_layer * per_block, dense.config.n_layer
            keep = {size: max(1, min(n_layer, round((size * total - outside) / per_block))) for size in SIZES}
            with open(path, "w") as f:
                json.dump(dict(dense=total, blocks=keep, sizes={str(s): outside + k * per_block for s,
                                                                k in keep.items()}), f)
            self.ex.keep(self.ex.out, path)
        with open(path) as f:
            return json.load(f)

    def target(self, size):
        return self.dense_params()["sizes"][str(size)]

    # -- starts: a compressed model per method and size

    def start(self, method, size):
        """The zero-shot model of `method` at `size` (decomposed, fitted for krony), and its decomposition report."""
        d = os.path.join(self.ex.out, key_of(method, size))
        os.makedirs(d, exist_ok=True)
        if method in FITTED:
            decomp, report = self.start(FITTED[method], size)
            path = os.path.join(d, "model.pt")
            fit = os.path.join(d, "fit")
            if not os.path.isfile(path) and not os.path.isfile(os.path.join(fit, "fitted.pt")):  # a fit done is kept
                self.ex.run("train_distillation.py", *self.scale, "--mode=layerwise", f"--teacher={self.model}",
                            f"--init_from={decomp}", "--max_iters=0", f"--out_dir={fit}", "--force",
                            f"--fit_dataset={self.mix()}", *self.fit)
            if not os.path.isfile(path):
                os.replace(os.path.join(fit, "fitted.pt"), path)
            return path, report
        path, report = os.path.join(d, "model.pt"), os.path.join(d, "model.json")
        if not os.path.isfile(report):
            cache = os.path.join(self.ex.out, "calib_cache.pt")
            self.ex.run("kron_decomp.py", "--model", self.model, "--out", path, "--force", "--target_params",
                        str(self.target(size)), f"--calib={self.mix()}", *self.calib, "--calib_cache", cache,
                        *METHODS[method])
        return path, report

    def fit_seconds(self, method, size):
        log = os.path.join(self.ex.out, key_of(method, size), "fit", "log.jsonl")
        if method not in FITTED or not os.path.isfile(log):
            return 0.0
        from kronygpt.plots import read_log
        return next((r["seconds"] for r in read_log(os.path.dirname(log)) if r["type"] == "layerwise"), 0.0)

    # -- rows

    def suite(self, directory, model):
        out = os.path.join(directory, "suite.json")
        if not os.path.isfile(out):
            a = self.args
            given = f"shakespeare={a.data},milton={a.milton},pydoc={a.pydoc},teacher={a.teacher_data}"
            self.ex.run("eval.py", "--suite", "general", "--teacher", self.model, "--models", model,
                        f"--suite_data={given}", f"--eval_tokens={1024 if a.smoke else 16384}", "--block_size",
                        "32" if a.smoke else "256", "--json", out, "--force", *(["--facts="] if a.smoke else []))
        with open(out) as f:
            return json.load(f)["rows"][0]

    def zeroshot(self, method, size):
        d = os.path.join(self.ex.out, key_of(method, size))
        if os.path.isfile(os.path.join(d, "row.json")):
            return
        model, report = self.start(method, size)
        with open(report) as f:
            rep = json.load(f)
        info = dict(method=method, size=size, stage="zero-shot", params=rep["params_after"]["total"],
                    decomp_seconds=rep["seconds"], fit_seconds=self.fit_seconds(method, size),
                    suite=self.suite(d, model))
        with open(os.path.join(d, "row.json"), "w") as f:
            json.dump(info, f, indent=1)
        self.ex.keep(d, report)  # the decomposition's report too: the speed pass reads each model's shape off it

    def dense(self):
        d = os.path.join(self.ex.out, "dense")
        if not os.path.isfile(os.path.join(d, "row.json")):
            os.makedirs(d, exist_ok=True)
            info = dict(method="dense", size=1.0, stage="-", params=self.dense_params()["dense"],
                        suite=self.suite(d, self.model))
            with open(os.path.join(d, "row.json"), "w") as f:
                json.dump(info, f, indent=1)
            self.ex.keep(d)

    def rows(self):
        """{key: row.json} of every finished row."""
        out = {}
        for name in sorted(os.listdir(self.ex.out)):
            path = os.path.join(self.ex.out, name, "row.json")
            if os.path.isfile(path):
                with open(path) as f:
                    out[name] = json.load(f)
        return out

    def recover_choice(self, size):
        """The three methods of lowest mean zero-shot loss at this size, and krony."""
        zs = [r for r in self.rows().values() if r["stage"] == "zero-shot" and r["size"] == size]
        ranked = sorted(zs, key=lambda r: sum(r["suite"][c] for c in LOSSES))
        chosen = [r["method"] for r in ranked[:3]]
        return chosen + (["krony"] if "krony" not in chosen else [])

    def recovered(self, method, size, steps, stage="recovered"):
        key = key_of(method, size, stage)
        d = os.path.join(self.ex.out, key)
        run = os.path.join(d, "run")
        if os.path.isfile(os.path.join(d, "row.json")) and finished(run, steps):
            return
        init, _ = self.start(method, size)
        extra = [f"--teacher={self.model}", *KD]
        if stage == "long":  # the recovered row's rate, then ten times the steps
            with open(os.path.join(self.ex.out, key_of(method, size, "recovered"), "row.json")) as f:
                lr, sweep = json.load(f)["lr"], {}
        else:
            lr, sweep = self.recovery.sweep(key, init, "train_distillation.py", extra)
        interval = 300 if stage == "long" else max(1, steps // 6)
        self.recovery.train(init, steps, lr, run, interval, "train_distillation.py", extra)
        info = dict(method=method, size=size, stage=stage, lr=lr, sweep=sweep, steps=steps,
                    params=self.row_params(method, size), suite=self.suite(d, os.path.join(run, "last.pt")),
                    curve=[{k: v for k, v in e.items() if k.startswith("val_loss") or k in ("iter", "tokens")}
                           for e in evals(run)])
        with open(os.path.join(d, "row.json"), "w") as f:
            json.dump(info, f, indent=1)
        self.ex.keep(d)

    def row_params(self, method, size):
        with open(os.path.join(self.ex.out, key_of(method, size), "row.json")) as f:
            return json.load(f)["params"]

    def speed(self):
        """CPU training and prefill tokens/s of every zero-shot model and the dense one (bench.py, random weights of
        each model's shape)."""
        out = os.path.join(self.ex.report_dir, "frontier_speed.json")
        rows = {k: r for k, r in self.rows().items() if r["stage"] == "zero-shot" and r["method"] not in FITTED}
        paths = ",".join(f"{k}={os.path.join(self.ex.out, k, 'model.json')}" for k in sorted(rows)
                         if os.path.isfile(os.path.join(self.ex.out, k, "model.json")))
        self.ex.run("bench.py", "--mode", "models", "--family", "smollm2", "--variants", "0", "--plans_from", paths,
                    "--workloads", "train,prefill", "--device", "cpu", "--json", out, "--force",
                    *(["--base_from", self.model, "--batch_size", "2", "--seq_len", "32", "--rounds", "2"]
                      if self.args.smoke else []))

    # -- the report

    def report(self):
        rows = self.rows()
        if "dense" not in rows:
            print("nothing to report yet")
            return
        dense = rows["dense"]["suite"]
        speed = {}
        path = os.path.join(self.ex.report_dir, "frontier_speed.json")
        if os.path.isfile(path):
            with open(path) as f:
                models = json.load(f).get("models", [])
            base = models[0] if models else None
            speed = {m["name"]: (m["train_tok_s"] / base["train_tok_s"], m["prefill_tok_s"] / base["prefill_tok_s"])
                     for m in models[1:]}
        header = ["method", "size", "stage", "parameters", "Shakespeare", "Milton", "Python reference",
                  "teacher-sample loss", "KL(teacher‖student)", "facts acc", "facts acc_norm", "decomposition s",
                  "fit s", "train x dense", "prefill x dense"]
        table = [("dense", "1.0", "-", rows["dense"]["params"], *[dense.get(c, "-") for c in SUITE], "-", "-", "1.00",
                  "1.00")]
        order = {m: i for i, m in enumerate(METHODS)}
        for key, r in sorted(rows.items(), key=lambda kv: (-kv[1]["size"], kv[1]["stage"] != "zero-shot",
                                                           order.get(kv[1]["method"], 99))):
            if key == "dense":
                continue
            s = r["suite"]
            sp = speed.get(key_of(FITTED.get(r["method"], r["method"]), r["size"]) if r["stage"] == "zero-shot"
                           else key, ("-", "-"))  # a fitted model has its decomposition's shape
            stage = r["stage"] + (f" {r['steps']} (lr {r['lr']:g})" if r["stage"] != "zero-shot" else "")
            table.append((r["method"], f"{r['size']:.1f}", stage, r["params"], *[s.get(c, "-") for c in SUITE],
                          f"{r.get('decomp_seconds', 0):.0f}" if "decomp_seconds" in r else "-",
                          f"{r['fit_seconds']:.0f}" if r.get("fit_seconds") else "-",
                          *(f"{v:.2f}" if isinstance(v, float) else v for v in sp)))
        intro = ("SmolLM2-135M-Instruct (the GGUF shipped on PyPI) compressed to the parameter counts of keeping "
                 f"26, 22, 19 and 15 of its 30 blocks; {dense_note(self.dense_params())}. Every column is eval.py "
                 "--suite general on 16,384-token fixed sets in 256-token windows (facts: 117 items, lm-eval's "
                 "multiple_choice scoring). Lower is better except the fact probe. Calibration for every method: "
                 "65,536 "
                 "tokens, half Shakespeare and half teacher text; one seed. Rows are made by `python "
                 "experiments/frontier.py` (every size and method, one row at a time, finished rows reused; "
                 "--sizes and --methods choose the order) and the file is rewritten after each; decomposition and "
                 "fit seconds were taken beside other jobs on the 2 cores, so they are upper bounds.")
        md = self.ex.report("The quality-size frontier: SmolLM2-135M against the methods people use instead", intro,
                            header, table, [], [], notes=findings(rows, dense) + ("" if self.args.smoke else STORY))
        self.plot(rows, dense)
        print(f"wrote {md}")

    def plot(self, rows, dense):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(2, 3, figsize=(15, 8))
        columns = [c for c in (*LOSSES, "teacher_kl", "facts_acc") if c in dense]
        for ax, col in zip(axes.flat, columns):
            for method in METHODS:
                for stage, style in (("zero-shot", "-o"), ("recovered", "--s")):
                    pts = sorted((r["params"] / 1e6, r["suite"][col]) for r in rows.values()
                                 if r["method"] == method and r["stage"] == stage and col in r["suite"])
                    if pts:
                        ax.plot(*zip(*pts), style, label=f"{method}{'' if stage == 'zero-shot' else ' (recovered)'}",
                                lw=2.5 if method in OURS else 1.2, ms=4)
            ax.axhline(dense[col], color="k", lw=0.8, ls=":", label="dense")
            ax.set_title(col)
            ax.set_xlabel("parameters (M)")
        axes.flat[0].legend(fontsize=7, ncol=2)
        fig.tight_layout()
        png = os.path.join(self.ex.report_dir, "frontier.png")
        fig.savefig(png, dpi=90)
        plt.close(fig)


def dense_note(sizes):
    d = sizes["dense"]
    return "sizes " + ", ".join(f"{s} -> {n:,} ({n / d:.3f}x)" for s, n in sizes["sizes"].items()) + f" of {d:,}"


STORY = """

## What it says (measured 2026-12-07 and 08; one seed; zero-shot unless said)

- **The best model at 0.6x is compress.py's default, `lowrank_width_fit`**: one exact allocation of the budget over
  low-rank matrices and narrowed MLPs, then each block fitted to the dense one. At 81.4M: Shakespeare 4.298, Milton
  4.990, Python 4.282, teacher text 4.610, facts 61.5%, against the best peer, Minitron-style width pruning, at
  4.629 / 5.458 / 4.978 / 5.064 and 53.8% (layer drop keeps 56.4% of the facts, at losses above 7), and against
  low rank alone, fitted (`krony`), at 4.444 / 5.162 / 4.955 / 4.776 and 59.0%. Unfitted, the same allocation
  (`lowrank_width`) is already ahead of fitted `krony` on every column.
- **Where the allocation spends**: MLPs are narrowed, never factorised; attention is factorised. At 0.6x it narrows
  28 of 30 MLPs (blocks 0-1 keep all 1,536 units, blocks 15-17 keep 320) and factorises attention in every block;
  at 0.8x it narrows 22 MLPs (blocks 0-7 whole) and factorises attention in 27 blocks. Its predicted loss increase
  at 0.6x is 0.634, against 1.017 for low rank alone and 0.876 for width alone at the same budget (the
  decomposition's log; kron_decomp prints both).
- **Per-block widths alone** (`width_alloc`) beat uniform width pruning at 0.6x on Milton (5.408 vs 5.458), Python
  (4.732 vs 4.978), teacher text (4.971 vs 5.064) and facts (60.7% vs 53.8%), not on Shakespeare (4.643 vs 4.629).
- **At 0.8x**, unfitted `lowrank_width`: 4.139 / 4.772 / 3.675 / 4.294 and 75.2% facts, ahead of every peer on every
  column (the best peer per column: width 4.200 / 4.934 / 3.830, width_obs 4.436 on teacher text, layer drop 73.5%
  facts), and of fitted `krony` on Python and facts (it trails it by 0.040 on Shakespeare and 0.036 on Milton; the
  fitted `lowrank_width_fit` row at 0.8x is not measured yet).
- **Not measured yet**: at 0.9x and 0.7x every method but lowrank_width, width_alloc, alloc and width;
  `lowrank_width_fit` at 0.8x; the 0.6x rows of width_obs, SVD, ASVD and FWSVD; the recovered and long rows; the
  speed columns (`--speed`, alone on the machine).
"""


def findings(rows, dense):
    """Per size and stage: the best method of every column, where ours stands, and the issue's targets."""
    lines = ["## Reading", "", "One seed: a difference below ~0.01 loss is noise (a tie).", ""]
    for size in SIZES:
        for stage in ("zero-shot", "recovered"):
            here = {r["method"]: r["suite"] for r in rows.values() if r["size"] == size and r["stage"] == stage}
            if not here:
                continue
            parts = []
            for col in (c for c in (*LOSSES, "facts_acc") if c in dense):
                sign = -1 if col == "facts_acc" else 1
                best = min(here, key=lambda m: sign * here[m][col])
                ours = min((m for m in OURS if m in here), key=lambda m: sign * here[m][col], default=None)
                gap = sign * (here[ours][col] - here[best][col]) if ours else None
                verdict = (f"ours best: {ours}" if ours == best else "tie" if gap is not None and gap <= 0.01 else
                           f"{best} wins by {gap:.3f}" if gap is not None else f"{best} best")
                parts.append(f"{col} {fmt(here[best][col])} ({verdict})")
            peers = sorted(m for m in here if m not in OURS)
            lines.append(f"- **{size}x {stage}**: " + "; ".join(parts) + "." +
                         (f" Peers measured: {', '.join(peers)}." if peers else " No peer measured yet."))
            target = TARGETS.get((size, stage))
            if target:
                for m in (m for m in OURS if m in here):
                    checks = []
                    for col, allowed in ((c, a) for c, a in target.items() if c in dense):
                        lost = dense[col] - here[m][col] if col == "facts_acc" else here[m][col] - dense[col]
                        miss = lost - allowed
                        checks.append(f"{col} {'met' if miss <= 0 else f'missed by {miss:.3f}'}")
                    lines.append(f"  - target for `{m}`: " + ", ".join(checks))
    return "\n".join(lines)


def main():
    p = parser(__doc__, steps=300)
    p.add_argument("--sweep_steps", type=int, default=60, help="length of each learning-rate sweep run")
    p.add_argument("--lrs", default="1e-5,3e-5,1e-4", help="peak learning rates swept (new factors get 5x)")
    p.add_argument("--methods", default=",".join(METHODS), help="methods of the zero-shot rows, in order")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="fractions of the dense parameters")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--milton", default="milton_smollm2-135m")
    p.add_argument("--pydoc", default="pydoc_smollm2-135m")
    p.add_argument("--teacher_data", default="teacher_smollm2-135m")
    p.add_argument("--recover", action="store_true", help="also the recovered rows at 0.8x and 0.6x")
    p.add_argument("--long", action="store_true", help="also the best 0.6x start recovered --long_steps")
    p.add_argument("--long_steps", type=int, default=3000)
    p.add_argument("--speed", action="store_true", help="measure the speed columns (run alone)")
    p.add_argument("--report_only", action="store_true")
    args = p.parse_args()
    args.data = args.data or "shakespeare_smollm2-135m"
    if args.smoke:
        args.milton = args.pydoc = args.teacher_data = args.data
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; methods: {', '.join(METHODS)}")
    sizes = [float(s) for s in args.sizes.split(",")]
    if not set(sizes) <= set(SIZES):
        raise SystemExit(f"--sizes must be among {', '.join(map(str, SIZES))}")
    study = Frontier(args)
    if not args.report_only:
        if not args.smoke:
            study.ex.require(args.data, args.milton, args.pydoc, args.teacher_data)
        study.dense()
        for size in sizes:
            for method in methods:
                study.zeroshot(method, size)
                study.report()
        if args.recover:
            for size in (s for s in (0.8, 0.6) if s in sizes):
                for method in study.recover_choice(size):
                    study.recovered(method, size, args.steps)
                    study.report()
        if args.long:
            rec = [r for r in study.rows().values() if r["size"] == 0.6 and r["stage"] == "recovered"]
            if not rec:
                raise SystemExit("--long recovers the best 0.6x start: run --recover first")
            best = min(rec, key=lambda r: sum(r["suite"][c] for c in LOSSES))
            study.recovered(best["method"], 0.6, args.long_steps, stage="long")
        if args.speed:
            study.speed()
    study.report()


if __name__ == "__main__":
    main()
