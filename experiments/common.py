"""
Helpers for experiments/*.py: run this repo's commands (echoed, output kept in a log), read the runs'
log.jsonl files, and write a markdown table plus a PNG plot of validation loss.

Finished runs leave small records (log.jsonl, row.json, suite.json, completions.json; never checkpoints) in
<report dir>/state/<name>/ as well, mirroring <out>: committed beside the report, they let a fresh clone, whose
out-experiments/ is empty, reuse every finished row and sweep run instead of recomputing it (Experiment.keep,
Experiment.restore).

Full runs use the CPU demo setup (Shakespeare, character level, the dense teacher from config/demo_dense.py)
and write their report to results/; a run given its own --out reports there instead, so
it never overwrites the committed report. --smoke runs a tiny model for a few iterations on any prepared
dataset (the test suite uses it).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from kronygpt.data_utils import prepare_command  # noqa: E402
from kronygpt.plots import plot_runs, read_log  # noqa: E402

RESULTS = os.path.join(REPO, "results")
SUITE = ("shakespeare", "milton", "pydoc", "teacher_loss", "teacher_kl", "facts_acc", "facts_acc_norm")
FULL = ["--dataset=shakespeare_char", "--block_size=128", "--batch_size=32", "--eval_tokens=65536",
        "--eval_interval=50", "--log_interval=25", "--learning_rate=1e-3", "--new_learning_rate=2e-3",
        "--min_lr=1e-4", "--warmup_iters=20"]
SMOKE = ["--block_size=32", "--batch_size=4", "--eval_tokens=1024", "--eval_interval=2", "--log_interval=1",
         "--learning_rate=3e-3", "--min_lr=3e-4", "--warmup_iters=1"]
SMOKE_TEACHER = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--max_iters=6"]


def parser(doc, steps, seconds=None):
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=steps, help="training iterations per run")
    if seconds is not None:
        p.add_argument("--seconds", type=float, default=seconds, help="training-time budget per run")
    p.add_argument("--teacher", default="out-demo/dense/best.pt",
                   help="the dense model to compress (trained with config/demo_dense.py if missing)")
    p.add_argument("--out", default=None, help="where the runs (and then the report) go; default: the runs in "
                   "out-experiments/<name>, the report in results/")
    p.add_argument("--data", default=None, help="--smoke: a prepared dataset directory")
    p.add_argument("--smoke", action="store_true", help="a tiny model, a few iterations (seconds)")
    return p


def training_finished(run_dir):
    """Whether a train.py run in run_dir reached its max_iters (an eval at that iteration after its start), or
    for an --eval_only run, whether it evaluated."""
    if not os.path.isfile(os.path.join(run_dir, "log.jsonl")):
        return False
    max_iters = None
    for r in read_log(run_dir):
        if r["type"] == "start":
            config = r.get("config", {})
            max_iters = 0 if config.get("eval_only") else config.get("max_iters")
        elif r["type"] == "eval" and max_iters is not None and r["iter"] == max_iters:
            return True
    return False


RECORDS = ("row.json", "suite.json", "completions.json")  # a row's own records, kept once written


class Experiment:
    def __init__(self, name, args):
        self.name, self.args = name, args
        self.out = os.path.abspath(args.out or os.path.join(REPO, "out-experiments", name))
        # the committed report (results/) is written only by the default runs; a run with its own
        # --out (a smoke test, a second machine, extra rows) writes its report beside its runs instead
        self.report_dir = self.out if args.smoke or args.out else RESULTS
        os.makedirs(self.out, exist_ok=True)
        self.state = os.path.join(self.report_dir, "state", name)
        self.restore()
        self.base = (SMOKE + [f"--dataset={args.data}"]) if args.smoke else FULL
        self.command = "python " + " ".join(os.path.relpath(a, REPO) if a == sys.argv[0] else a for a in sys.argv
                                            if a != "--report_only")  # the study's command, however rewritten

    def keep(self, directory, *files):
        """Copy the records of what has finished under `directory` (inside self.out) into self.state: every
        finished run's log.jsonl, the rows' RECORDS, the commands log, and `files` (e.g. a decomposition's
        report)."""
        found = [os.path.join(self.out, "commands.log"), *files]
        for d, _, names in os.walk(directory):
            found += [os.path.join(d, f) for f in names if f in RECORDS]
            if "log.jsonl" in names and training_finished(d):
                found.append(os.path.join(d, "log.jsonl"))
        for src in filter(os.path.isfile, found):
            dst = os.path.join(self.state, os.path.relpath(src, self.out))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(src, dst + ".tmp")
            os.replace(dst + ".tmp", dst)

    def restore(self):
        """Copy the kept records into self.out wherever that file is missing (a fresh clone, another machine)."""
        restored = 0
        for d, _, files in os.walk(self.state):
            for f in files:
                dst = os.path.join(self.out, os.path.relpath(os.path.join(d, f), self.state))
                if not os.path.exists(dst):
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    shutil.copyfile(os.path.join(d, f), dst)
                    restored += 1
        if restored:
            print(f"restored {restored} records of finished runs from {os.path.relpath(self.state, REPO)}")

    def run(self, script, *argv):
        """Run `python script argv...` from the repo root; its output goes to <out>/<name>.log."""
        cmd = [sys.executable, os.path.join(REPO, script), *argv]
        print("$ python " + " ".join([script, *argv]), flush=True)
        t = time.time()
        path = os.path.join(self.out, "commands.log")
        with open(path, "a") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            start = log.tell()
            rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc:
            with open(path, "rb") as f:
                f.seek(start)
                lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
            why = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "no output")
            raise SystemExit(f"{script} stopped (exit {rc}): {why} (its whole output is at the end of {path}; the "
                             f"finished runs are kept: fix it and run the same command again to go on)")
        return time.time() - t

    def require(self, *datasets):
        """Stop before any run, with one sentence, when a dataset under data/ has not been prepared (a fresh
        clone prepares none of them), naming the commands that prepare each."""
        missing = [d for d in dict.fromkeys(datasets)
                   if not os.path.isfile(os.path.join(REPO, "data", d, "val.bin"))]
        if missing:
            raise SystemExit(f"{self.name} needs the prepared datasets {', '.join(missing)}; prepare them first: "
                             + "; ".join(prepare_command(os.path.join(REPO, "data", d)) for d in missing))

    def teacher(self):
        """Path of the dense model to compress: --teacher, the one an earlier run of this experiment trained,
        or one trained now (resumed from its last.pt when an earlier attempt was interrupted)."""
        if not self.args.smoke and os.path.isfile(os.path.join(REPO, self.args.teacher)):
            return os.path.join(REPO, self.args.teacher)
        out = os.path.join(self.out, "teacher")
        best = os.path.join(out, "best.pt")
        if os.path.isfile(best) and training_finished(out):
            return best
        extra = SMOKE_TEACHER if self.args.smoke else ["config/demo_dense.py"]
        if not self.args.smoke and not os.path.isfile(os.path.join(REPO, "data", "shakespeare_char", "val.bin")):
            self.run("data/shakespeare_char/prepare.py")  # the demo's corpus, as make demo prepares it
        resume = ["--init_from=resume"] if os.path.isfile(os.path.join(out, "last.pt")) else []
        self.run("train.py", *(self.base if self.args.smoke else []), *extra, f"--out_dir={out}", *resume)
        return best

    def run_dir(self, label):
        return os.path.join(self.out, label)

    def decompose(self, teacher, label, *argv):
        path = os.path.join(self.out, f"{label}.pt")
        self.run("kron_decomp.py", "--model", teacher, "--out", path, *argv)
        with open(os.path.splitext(path)[0] + ".json") as f:
            return path, json.load(f)

    def report(self, title, intro, header, rows, runs, labels, x="iter", hline=None, notes=""):
        """Write <report_dir>/<name>.md (table, notes read off it, plot) and .png; print the table and notes."""
        png = os.path.join(self.report_dir, f"{self.name}.png")
        if runs:
            plot_runs(runs, png, labels, "val_loss", x, title, hline)
        lines = [f"# {title}", "", intro, "", f"Command: `{self.command}` ({time.strftime('%Y-%m-%d')}, "
                 f"{os.cpu_count()}-core CPU, torch {torch_version()})", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
        if notes:
            lines += ["", notes]
        lines += ["", f"![{title}]({self.name}.png)" if runs else "", ""]
        md = os.path.join(self.report_dir, f"{self.name}.md")
        with open(md, "w") as f:
            f.write("\n".join(lines))
        print("\n".join(lines[6:-2]))
        print(f"wrote {md}" + (f" and {png}" if runs else ""))
        return md


def evals(run_dir):
    """The evaluation records of a run's log ([] before it has one)."""
    if not os.path.isfile(os.path.join(run_dir, "log.jsonl")):
        return []
    return [r for r in read_log(run_dir) if r["type"] == "eval"]


def start_record(run_dir):
    return next(r for r in read_log(run_dir) if r["type"] == "start")


def median_tok_s(run_dir):
    vals = sorted(r["tok_s"] for r in read_log(run_dir) if r["type"] == "train" and r["iter"] > 0)
    return vals[len(vals) // 2] if vals else float("nan")


def fmt(v):
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def torch_version():
    import torch
    return torch.__version__


def teacher_dims(path):
    """(n_embd, mlp_hidden) of a checkpoint, to pick factor shapes that fit it."""
    from kronygpt.checkpoint import load_checkpoint
    args = load_checkpoint(path)["model_args"]
    return args["n_embd"], args["mlp_hidden"]


# -----------------------------------------------------------------------------
# the row loop the studies share: training runs that resume, and the learning-rate sweep every trained row gets

LADDER = ["1e-5", "3e-5", "1e-4", "3e-4", "1e-3", "3e-3", "1e-2"]  # learning rates the sweep may extend to


def finished(run, steps):
    """Whether a run's log has an evaluation at iteration `steps`."""
    return os.path.isfile(os.path.join(run, "log.jsonl")) and any(r["iter"] == steps for r in evals(run))


# -----------------------------------------------------------------------------
# a calibrated row: decomposed, then fitted layer-wise (calibrated.py, families.py)

def setup(args, name):
    """(Experiment, model, data, scale, calib, lw, dense val loss) shared by every row of a calibrated study."""
    ex = Experiment(name, args)
    if getattr(args, "demo", False) or args.smoke:
        model = args.model if args.smoke and os.path.isdir(args.model) else ex.teacher()  # smoke: a model dir given
        data = args.data if args.smoke else "shakespeare_char"
        block, evt, calib_seq = (32, 1024, 32) if args.smoke else (128, 65536, 128)
    else:
        model, data, block, evt, calib_seq = args.model, args.data or "shakespeare_smollm2-135m", 256, 16384, 256
    scale = [f"--dataset={data}", f"--block_size={block}", f"--eval_tokens={evt}", "--batch_size=4"]
    calib = [f"--calib={data}", f"--calib_seq={calib_seq}", f"--calib_cache={os.path.join(ex.out, 'calib.pt')}"] + \
        (["--calib_tokens=256", "--fisher_tokens=128", "--tolerance=0.05"] if args.smoke else [])
    lw = ["--layerwise_tokens=512", "--layerwise_steps=3"] if args.smoke else \
        [f"--layerwise_tokens={args.layerwise_tokens}", f"--layerwise_steps={args.layerwise_steps}",
         "--layerwise_batch=1024"]
    dense_run = ex.run_dir("dense")
    if not os.path.isfile(os.path.join(dense_run, "log.jsonl")):
        ex.run("train.py", *scale, f"--init_from={model}", f"--out_dir={dense_run}", "--eval_only=True")
    ex.keep(dense_run)
    dense = [r for r in read_log(dense_run) if r["type"] == "eval"][0]["val_loss"]
    return ex, model, data, scale, calib, lw, dense


def run_row(ex, model, key, argv, scale, calib, lw, same_fit=None):
    """Decompose (kron_decomp.py) and fit layer-wise (train_distillation.py --mode=layerwise) one row, reusing
    whatever finished before. same_fit(report): the fit record of an earlier row that decomposed to the same
    checkpoint, reused instead of fitting it again (or None). Returns (kron_decomp's report, the fit's record)."""
    slug = key.replace(" ", "_")
    ckpt, fit_dir = os.path.join(ex.out, f"{slug}.pt"), ex.run_dir(f"fit_{slug}")
    report = os.path.splitext(ckpt)[0] + ".json"
    if not os.path.isfile(report):  # kron_decomp writes its report last: without it the row is unfinished
        if os.path.isfile(ckpt):
            os.remove(ckpt)
        ex.run("kron_decomp.py", "--model", model, "--out", ckpt, *argv, *calib)
    rep = json.load(open(report))
    reused = same_fit(rep) if same_fit else None
    if reused is not None:
        ex.keep(fit_dir, report)
        return rep, reused
    log = os.path.join(fit_dir, "log.jsonl")
    fit = [r for r in read_log(fit_dir) if r["type"] == "layerwise"] if os.path.isfile(log) else []
    if not fit:
        if os.path.isfile(log):
            os.remove(log)
        ex.run("train_distillation.py", *scale, "--mode=layerwise", f"--teacher={model}", f"--init_from={ckpt}",
               "--max_iters=0", f"--out_dir={fit_dir}", *lw)
        fit = [r for r in read_log(fit_dir) if r["type"] == "layerwise"]
    ex.keep(fit_dir, report)  # the row's records, for a fresh clone (its checkpoints are not kept)
    return json.load(open(report)), fit[0]


def forget_row(ex, key):
    """Remove a row's decomposition report and fit log, so that run_row decomposes and fits it again (their
    records were restored on a machine that lacks the checkpoints a later step needs)."""
    slug = key.replace(" ", "_")
    for path in (os.path.join(ex.out, f"{slug}.json"), os.path.join(ex.run_dir(f"fit_{slug}"), "log.jsonl")):
        if os.path.isfile(path):
            os.remove(path)


# -----------------------------------------------------------------------------
# a recovery study: compressed starts trained with equal tuning effort (flagship.py, general.py, families.py)

PROMPTS = ["The capital of France is", "The largest planet in the solar system is",
           "Water freezes at a temperature of", "William Shakespeare was born in"]


def parse_given_lr(text, rows):
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



class Study:
    """What the recovery studies share: their scale (CPU or --gpu, --smoke), the flagship's budget (today's plan),
    the row loop's training and sweep (Recovery), completions, the general suite and the fit records. A study
    sets NAME and ROWS and writes its own starts, rows and report."""
    NAME, ROWS = "study", ()

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

    def run_rows(self, rows):
        """Every row of the comma-separated `rows` in order (the dense zero-shot row first: the bar, and the model's
        dimensions), the report rewritten after each; an unknown name stops before any runs."""
        keys = ["dense_zeroshot"] + [k for k in rows.split(",") if k != "dense_zeroshot"]
        unknown = [k for k in keys if k not in self.ROWS]
        if unknown:
            raise SystemExit(f"unknown rows {unknown}; rows: {', '.join(self.ROWS)}")
        for key in keys:
            self.run_row(key)
            self.report()

    # -- the budget

    def today(self):
        """The flagship's first plan (vl_norm, one (mlp_hidden/3, n_embd) x (3, 1) factor per MLP matrix),
        decomposed once: its parameter count is the budget the studies hold every compressed row to."""
        path, report = (os.path.join(self.ex.out, "today", f"start.{ext}") for ext in ("pt", "json"))
        if os.path.isfile(path) and os.path.isfile(report):
            return path
        for leftover in (path, report):  # one without the other (an interrupted decomposition, or logs restored
            if os.path.isfile(leftover):  # without their checkpoint): kron_decomp redoes both
                os.remove(leftover)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.ex.run("kron_decomp.py", "--model", self.model, "--out", path, "--factors", "1",
                    "--shape", self.shape_today(), "--init", "vl_norm")
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
            self.today()
        with open(rep) as f:
            return json.load(f)["params_after"]["total"]

    # -- training and measuring

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

    def suite(self, key, model):
        out = os.path.join(self.ex.out, key, "suite.json")
        if not os.path.isfile(out):
            a = self.args
            given = f"shakespeare={a.data},milton={a.milton},pydoc={a.pydoc},teacher={a.teacher_data}"
            self.ex.run("eval.py", "--suite", "general", "--teacher", self.model, "--models", model,
                        f"--suite_data={given}", f"--eval_tokens={self.eval_tokens()}", "--block_size",
                        str(self.block()), "--json", out, "--force", *(["--facts="] if a.smoke else []))
        with open(out) as f:
            return json.load(f)["rows"][0]

    def eval_tokens(self):
        return 1024 if self.args.smoke else 131072 if self.args.gpu else 16384

    def block(self):
        return 32 if self.args.smoke else 1024 if self.args.gpu else 256

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


class Recovery:
    """Training runs of a study (train.py, or train_distillation.py with its options), each resumed from its
    last.pt when an earlier attempt was interrupted and kept in the study's state once finished, and the sweep
    that gives every trained row equal tuning effort: the --lrs rates at sweep_steps, extended along LADDER
    while the best rate is at an end of the rates tried; the lowest validation loss wins."""

    def __init__(self, ex, scale, sweep_steps, lrs):
        self.ex, self.scale, self.sweep_steps, self.lrs = ex, scale, sweep_steps, lrs

    def train(self, init, steps, lr, out_dir, interval, script="train.py", extra=()):
        if not finished(out_dir, steps):
            resume = os.path.isfile(os.path.join(out_dir, "last.pt"))
            log = os.path.join(out_dir, "log.jsonl")
            if not resume and os.path.isfile(log):
                os.remove(log)  # a fresh log for a run that never reached its first checkpoint
            self.ex.run(script, *self.scale, *extra, f"--init_from={'resume' if resume else init}",
                        f"--out_dir={out_dir}", f"--max_iters={steps}", f"--lr_decay_iters={max(1, steps)}",
                        f"--eval_interval={interval}", f"--learning_rate={lr:g}", f"--new_learning_rate={5 * lr:g}",
                        f"--min_lr={lr / 10:g}")
        self.ex.keep(out_dir)  # its log, so that a fresh clone reuses the finished run

    def sweep(self, key, init, script="train.py", extra=()):
        """(the best rate, {rate: validation loss}) of row `key` from `init`."""
        results = {}

        def run(lr):
            out = os.path.join(self.ex.out, key, f"sweep_{lr}")
            self.train(init, self.sweep_steps, float(lr), out, self.sweep_steps, script, extra)
            results[lr] = evals(out)[-1]["val_loss"]

        for lr in self.lrs.split(","):
            run(lr)
        while True:
            tried = sorted(results, key=float)
            best = min(results, key=results.get)
            i = LADDER.index(best) if best in LADDER else -1
            step = -1 if best == tried[0] else 1 if best == tried[-1] else 0
            if i < 0 or step == 0 or not 0 <= i + step < len(LADDER) or LADDER[i + step] in results:
                break
            run(LADDER[i + step])
        print(f"{key}: sweep {results} -> lr {best}", flush=True)
        return float(best), {lr: results[lr] for lr in sorted(results, key=float)}
