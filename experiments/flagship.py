"""
The flagship study: SmolLM2-135M compressed to <= 81.5M parameters and recovered on Shakespeare within
300 steps, against equal-size baselines, evaluated on held-out Shakespeare and on Milton (never trained on).

Rows (all compressed rows within 1% of one another in parameters; same data order, same evaluation):
  dense_zeroshot  the dense model, no training: the bar to beat
  dense_ft        the dense model fine-tuned for the same steps: the ceiling, for context
  pipeline        the repo's best pipeline: a calibrated low-rank start (--init fisher: inputs whitened by their
                  second moment, outputs by the loss gradients'), each matrix its own rank under the budget
                  (--allocate, in predicted-loss units), layer-wise fitting of every MLP to the dense MLP on real
                  activations, then training
  pipeline_blocks the pipeline with the budget allocated over whole blocks (--scope blocks: attention's
                  matrices get ranks too, MLPs keep more), fitted block by block, then training
  today           the pipeline as it was: vl_norm (512,576)x(3,1), plain training
  truncate        layer truncation: keep 15 of the 30 blocks (the better of 'even' and 'spread:15' at step 0)
  svd             plain truncated SVD at the same size (rank 140 per MLP matrix, Frobenius-optimal), trained

Equal tuning effort: every trained row gets the same learning-rate sweep (--lrs: peak rate of the
pretrained weights; new factors get 5x; every schedule is warmup + cosine to a tenth) at --sweep_steps,
extended one rate at a time while the best is at an end of the rates tried, picks the rate with the lowest
Shakespeare validation loss, then trains --steps with it. The sweep selects
on the same fixed validation set that the table reports, for every row alike.

The script is resumable: finished runs are reused, an interrupted run continues from its last.pt, and the
report is rewritten from whatever has finished. Run it in the background and re-run the same command.

    python data/shakespeare/prepare.py --tokenizer=smollm2-135m
    python data/milton/prepare.py --tokenizer=smollm2-135m
    nohup python experiments/flagship.py > flagship.log 2>&1 &        # CPU, 4 x 256 tokens per step
    python experiments/flagship.py --report_only                      # rewrite the report from finished runs
    python experiments/flagship.py --gpu                              # one GPU: 16 x 1024 tokens per step
"""

import json
import os
import sys

from common import REPO, Experiment, Recovery, evals, finished, fmt, median_tok_s, parser, plot_runs, read_log

PROMPTS = ["The capital of France is", "The largest planet in the solar system is",
           "Water freezes at a temperature of", "William Shakespeare was born in"]
ALL_ROWS = ("dense_zeroshot", "dense_ft", "pipeline", "pipeline_blocks", "today", "truncate", "svd")


def parse_given_lr(text, rows=ALL_ROWS):
    """--given_lr as {row: rate}: rows trained at a stated rate instead of their own sweep."""
    given = {}
    for item in filter(None, text.split(",")):
        key, sep, lr = item.partition("=")
        try:
            given[key] = float(lr)
        except ValueError:
            raise SystemExit(f"--given_lr item {item!r} is not ROW=RATE; write e.g. pipeline_blocks=3e-5") from None
        if key not in rows or not sep:
            raise SystemExit(f"--given_lr item {item!r} names no row; rows: {', '.join(rows)}")
    return given


class Flagship:
    NAME, ROWS = "flagship", ALL_ROWS

    def __init__(self, args):
        self.args = args
        self.ex = Experiment(f"{self.NAME}_gpu" if args.gpu else self.NAME, args)
        self.model = args.model if not os.path.exists(args.model) else os.path.abspath(args.model)
        self.given_lr = parse_given_lr(args.given_lr,
                                       self.ROWS)  # a malformed --given_lr stops here, before any row runs
        if args.smoke:
            self.scale = [*self.ex.base, f"--eval_datasets={args.eval_data}"]
            self.lw = ["--layerwise_tokens=512", "--layerwise_steps=5"]
            self.calib = ["--calib_tokens=256", "--calib_seq=32", "--fisher_tokens=128"]
        else:
            block, batch, evt = (1024, 16, 131072) if args.gpu else (256, 4, 16384)
            self.scale = [f"--dataset={args.data}", f"--eval_datasets={args.eval_data}", f"--block_size={block}",
                          f"--batch_size={batch}", f"--eval_tokens={evt}", "--log_interval=5", "--warmup_iters=10",
                          "--weight_decay=0.1", "--grad_clip=1.0"] + (["--device=cuda"] if args.gpu else [])
            self.lw = ["--layerwise_tokens=16384", "--layerwise_steps=150", "--layerwise_batch=1024"]
            self.calib = ["--calib_tokens=16384", f"--calib_seq={block}", "--fisher_tokens=4096"]

    # -- starting points: a checkpoint (or hub name) each row trains from

    def start(self, key):
        ex, a = self.ex, self.args
        path = os.path.join(ex.out, key, "start.pt")
        report = os.path.join(ex.out, key, "start.json")
        decomposed = key in ("today", "svd")  # written by kron_decomp, whose report comes last
        if os.path.isfile(path) and (not decomposed or os.path.isfile(report)):
            return path
        if decomposed:  # one without the other (an interrupted decomposition, or logs restored without
            for leftover in (path, report):  # their checkpoint): kron_decomp redoes both
                if os.path.isfile(leftover):
                    os.remove(leftover)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if key in ("dense_zeroshot", "dense_ft"):
            return self.model
        if key == "today":
            ex.run("kron_decomp.py", "--model", self.model, "--out", path, "--factors", "1",
                   "--shape", self.shape_today(), "--init", "vl_norm")
        elif key == "svd":
            ex.run("kron_decomp.py", "--model", self.model, "--out", path, "--init", "vl", "--shape", "lowrank",
                   "--target_params", str(self.target()))
        elif key == "truncate":
            return self.start_truncate(path)
        elif key in ("pipeline", "pipeline_blocks"):
            decomp = os.path.join(ex.out, key, "decomposed.pt")
            if not os.path.isfile(os.path.splitext(decomp)[0] + ".json"):
                scope = ["--scope", "blocks"] if key == "pipeline_blocks" else []
                ex.run("kron_decomp.py", "--model", self.model, "--out", decomp, "--init", "fisher",
                       "--target_params", str(self.target()), "--allocate", *scope, f"--calib={a.data}", *self.calib)
            fit_dir = os.path.join(ex.out, key, "fit")
            ex.run("train_distillation.py", *self.scale, "--mode=layerwise", f"--teacher={self.model}",
                   f"--init_from={decomp}", "--max_iters=0", f"--out_dir={fit_dir}", *self.lw)
            os.replace(os.path.join(fit_dir, "fitted.pt"), path)
        return path

    def start_truncate(self, path):
        """Truncation keeps 15 of 30 blocks; 'even' or 'spread', whichever starts lower (one eval each)."""
        ex, best = self.ex, None
        n_layer = self.dims()["n_layer"]
        for pick in ("even", f"spread:{n_layer // 2}"):
            cand = os.path.join(ex.out, "truncate", f"{pick.split(':')[0]}.pt")
            run = os.path.join(ex.out, "truncate", f"zeroshot_{pick.split(':')[0]}")
            if not os.path.isfile(cand):
                ex.run("kron_decomp.py", "--model", self.model, "--out", cand, "--keep_blocks", pick)
            if not finished(run, 0):
                ex.run("train.py", *self.scale, f"--init_from={cand}", f"--out_dir={run}", "--eval_only=True")
            loss = evals(run)[0]["val_loss"]
            if best is None or loss < best[0]:
                best = (loss, cand)
        os.link(best[1], path)
        return path

    def dims(self):
        run = os.path.join(self.ex.out, "dense_zeroshot", "run")
        return next(r for r in read_log(run) if r["type"] == "start")["model_args"]

    def shape_today(self):
        d = self.dims()
        return f"{d['mlp_hidden'] // 3}x{d['n_embd']}"

    def target(self):
        """The parameter count of today's plan (the budget every compressed row is held to)."""
        rep = os.path.join(self.ex.out, "today", "start.json")
        if not os.path.isfile(rep):
            self.start("today")
        with open(rep) as f:
            return json.load(f)["params_after"]["total"]

    # -- training

    @property
    def recovery(self):
        """The shared row loop (common.Recovery) on this study's scale options, as they are now."""
        return Recovery(self.ex, self.scale, self.args.sweep_steps, self.args.lrs)

    def train(self, init, steps, lr, out_dir, interval, script="train.py", extra=()):
        """`script` (train.py, or train_distillation.py with its options in `extra`) from `init`, resumed from
        out_dir/last.pt after an interruption (common.Recovery)."""
        self.recovery.train(init, steps, lr, out_dir, interval, script, extra)

    def sweep(self, key, init, script="train.py", extra=()):
        """The learning rate with the lowest validation loss after --sweep_steps (common.Recovery.sweep: --lrs,
        extended along the ladder while the best rate is at an end of the rates tried)."""
        return self.recovery.sweep(key, init, script, extra)

    def row_done(self, key):
        """Whether the row has finished here or on an earlier machine (its records restored from the state)."""
        run = os.path.join(self.ex.out, key, "run")
        steps = 0 if key.endswith("_zeroshot") else self.args.steps
        return os.path.isfile(os.path.join(self.ex.out, key, "row.json")) and finished(run, steps)

    def run_row(self, key):
        if self.row_done(key):
            return
        init = self.start(key)
        run = os.path.join(self.ex.out, key, "run")
        info = dict(key=key, init=init)
        if key == "dense_zeroshot":
            if not finished(run, 0):
                self.ex.run("train.py", *self.scale, f"--init_from={init}", f"--out_dir={run}", "--eval_only=True")
        else:
            lr, info["sweep"] = (self.given_lr[key], {}) if key in self.given_lr else self.sweep(key, init)
            info["lr"] = lr
            self.train(init, self.args.steps, lr, run, interval=max(1, self.args.steps // 12))
        info["completions"] = self.completions(key, init if key == "dense_zeroshot" else os.path.join(run, "last.pt"))
        with open(os.path.join(self.ex.out, key, "row.json"), "w") as f:
            json.dump(info, f, indent=1)
        self.ex.keep(os.path.join(self.ex.out, key))

    def completions(self, key, path):
        if self.args.smoke:  # the tiny random models have no tokenizer of their own
            return {}
        out = os.path.join(self.ex.out, key, "completions.json")
        if not os.path.isfile(out):
            self.ex.run("sample.py", f"--init_from={path}", "--temperature=0", "--num_samples=1",
                        f"--max_new_tokens={self.args.complete_tokens}", "--prompts_json=" + json.dumps(PROMPTS),
                        f"--json={out}")
        with open(out) as f:
            return json.load(f)

    # -- the report

    def report(self):
        ex, a = self.ex, self.args
        dense_run = os.path.join(ex.out, "dense_zeroshot", "run")
        if not evals(dense_run):
            print("nothing to report yet")
            return
        dense = evals(dense_run)[0]
        milton_key = next((k for k in dense if k.startswith("val_loss_")), None)
        rows, runs, labels, completions = [], [], [], []
        for key in a.rows.split(","):
            run = os.path.join(ex.out, key, "run")
            e = evals(run)
            if not e or (key != "dense_zeroshot" and not finished(run, a.steps)):
                rows.append((key, "running or not run yet", *["-"] * 9))
                continue
            start = next(r for r in read_log(run) if r["type"] == "start")
            info_path = os.path.join(ex.out, key, "row.json")
            info = json.load(open(info_path)) if os.path.isfile(info_path) else {}
            below = next((r["iter"] for r in e if r["val_loss"] < dense["val_loss"]), None)
            prep = self.prep_seconds(key)
            trained = key != "dense_zeroshot"
            fit = self.fit_record(key)
            at_start = (f"{fit['val_loss_before']:.4f} -> fitted {fit['val_loss_after']:.4f}" if fit
                        else e[0]["val_loss"])
            rows.append((key, f"{info['lr']:g}" if "lr" in info else "-", start["params"]["total"], e[-1]["tokens"],
                         f"{e[-1]['train_seconds'] + prep:,.0f}" + (f" (fit {prep:.0f})" if prep else ""),
                         median_tok_s(run) if trained else "-", at_start, e[-1]["val_loss"],
                         e[-1].get(milton_key, "-"), ("never" if below is None else below) if trained else "-",
                         " / ".join(f"{lr}: {v:.3f}" for lr, v in info.get("sweep", {}).items())
                         or ("none: rate given (--given_lr)" if "lr" in info else "-")))
            if trained:
                runs.append(run)
                labels.append(key)
            completions.append((key, info.get("completions", {})))
        header = ["row", "lr", "parameters", "tokens", "train seconds", "train tok/s", "Shakespeare val at the start",
                  f"Shakespeare val after {a.steps}", "Milton val", "first step below dense zero-shot",
                  f"sweep ({a.sweep_steps} steps)"]
        intro = (f"Dense SmolLM2-135M zero-shot: Shakespeare val {dense['val_loss']:.4f}, Milton "
                 f"{dense.get(milton_key, float('nan')):.4f}. " + self.scale_note())
        md = ex.report(f"SmolLM2-135M at <= 81.5M: {a.steps} steps against equal-size baselines", intro, header, rows,
                       runs, labels, x="tokens", hline=(dense["val_loss"], "dense zero-shot"))
        if milton_key and runs:
            plot_runs(runs, os.path.join(ex.report_dir, f"{ex.name}_milton.png"), labels, milton_key, "tokens",
                      "Milton (never trained on)", (dense[milton_key], "dense zero-shot"))
        with open(md, "a") as f:
            f.write(f"![Milton]({ex.name}_milton.png)\n\n## Greedy completions ({a.complete_tokens} tokens)\n\n")
            f.write("| row | " + " | ".join(f"`{p}`" for p in PROMPTS) + " |\n|" + "---|" * (len(PROMPTS) + 1) + "\n")
            for key, comp in completions:
                f.write(f"| {key} | " + " | ".join(fmt(comp.get(p, "-")).replace("|", "/").replace("\n", " ")
                                                   for p in PROMPTS) + " |\n")
            log, commands = os.path.join(ex.out, "commands.log"), ""  # the commands, not their output
            if os.path.isfile(log):  # absent when every row was reused
                with open(log) as lines:
                    commands = "".join(line for line in lines if line.startswith("$ "))
            f.write("\n## Commands\n\n```\n" + commands.replace(sys.executable, "python").replace(REPO + "/", "")
                    + "```\n")

    def fit_record(self, key):
        """The layer-wise fitting record of a row that has one (the pipelines), else None."""
        fit = os.path.join(self.ex.out, key, "fit")
        rec = [r for r in read_log(fit) if r["type"] == "layerwise"] if os.path.isfile(os.path.join(fit, "log.jsonl")) \
            else []
        return rec[0] if rec else None

    def prep_seconds(self, key):
        """Layer-wise fitting time of a pipeline row (it counts as training time)."""
        rec = self.fit_record(key)
        return rec.get("seconds", 0.0) if rec else 0.0

    def scale_note(self):
        return ("One GPU, 16 x 1024 tokens per step." if self.args.gpu else
                "CPU, reduced scale: 4 x 256 tokens per step, 16,384 validation tokens per corpus.")


def main():
    p = parser(__doc__, steps=300)
    p.add_argument("--sweep_steps", type=int, default=60, help="length of each learning-rate sweep run")
    p.add_argument("--lrs", default="1e-4,3e-4,1e-3", help="peak learning rates swept (new factors get 5x)")
    p.add_argument("--rows", default=",".join(ALL_ROWS), help="rows to run, in order")
    p.add_argument("--given_lr", default="", help="ROW=RATE,...: train these rows at RATE without a sweep "
                   "(less tuning than the others; the report says so)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--eval_data", help="the held-out second corpus (default milton_smollm2-135m; --smoke: --data)")
    p.add_argument("--complete_tokens", type=int, default=12)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--report_only", action="store_true")
    args = p.parse_args()
    args.data = args.data or "shakespeare_smollm2-135m"
    args.eval_data = args.eval_data or (args.data if args.smoke else "milton_smollm2-135m")
    fs = Flagship(args)
    if not args.report_only:
        if not args.smoke:
            fs.ex.require(args.data, *args.eval_data.split(","))
        for key in ["dense_zeroshot"] + [k for k in args.rows.split(",") if k != "dense_zeroshot"]:
            if key not in ALL_ROWS:
                raise SystemExit(f"unknown row {key!r}; rows: {', '.join(ALL_ROWS)}")
            fs.run_row(key)
            fs.report()
    fs.report()


if __name__ == "__main__":
    main()
