"""
Run logs and their curves: the records of a run's log.jsonl (what train.py and train_distillation.py write) and
loss curves of several runs in one figure. plot.py, compress.py's report and the experiments draw with these.
"""

import json
import os

from .errors import UserError

FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")  # what plot_runs writes (matplotlib's Agg backend)

EVAL_METRICS = ("val_loss", "train_loss", "teacher_val_loss")


def read_log(run_dir):
    """The records of a run's log.jsonl (a partly written last line is skipped)."""
    path = os.path.join(run_dir, "log.jsonl")
    if not os.path.isfile(path):
        raise UserError(f"{run_dir} holds no log.jsonl; pass a run directory (an out_dir of train.py)")
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def series(records, metric="val_loss", x="iter"):
    """(xs, ys) of one run. Eval metrics come from eval records; others (loss, kl, ...) from train records.
    A resumed run's log repeats the iterations around the resume point; the later record wins."""
    kind = "eval" if metric in EVAL_METRICS or metric.startswith("val_loss_") else "train"
    x_key = {"iter": "iter", "tokens": "tokens", "seconds": "train_seconds"}[x]
    points = {}
    for r in records:
        if r.get("type") == kind and metric in r and x_key in r:
            points[r[x_key]] = r[metric]
    xs = sorted(points)
    return xs, [points[k] for k in xs]


def logged_metrics(records):
    return {k for r in records if r.get("type") in ("eval", "train") for k, v in r.items()
            if isinstance(v, (int, float)) and k not in ("iter", "tokens", "train_seconds")}


def plot_runs(runs, out, labels=None, metric="val_loss", x="iter", title=None, hline=None):
    """Draw one line per run directory into the PNG `out`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    data = [series(read_log(run), metric, x) for run in runs]
    empty = [run for run, (xs, _) in zip(runs, data, strict=True) if not xs]
    if empty:
        raise UserError(f"no {metric!r} values against {x!r} in {', '.join(empty)}; metrics logged: "
                        f"{', '.join(sorted(logged_metrics(read_log(empty[0]))))}")
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for i, (run, (xs, ys)) in enumerate(zip(runs, data, strict=True)):
        ax.plot(xs, ys, marker="o", markersize=3, label=labels[i] if labels else os.path.basename(run.rstrip("/")))
    if hline is not None:
        ax.axhline(hline[0], color="grey", linestyle="--", linewidth=1, label=hline[1])
    ax.set_xlabel({"iter": "iteration", "tokens": "training tokens", "seconds": "training seconds"}[x])
    ax.set_ylabel(metric.replace("_", " "))
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
