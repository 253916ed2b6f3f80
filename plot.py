"""
Plot validation (or training) loss against iterations, tokens or seconds for any set of runs.

    python plot.py out-demo/dense out-demo/krony --out runs.png
    python plot.py out-a out-b --labels "plain,distilled" --x seconds --metric val_loss --out cmp.png
    python plot.py out-a --metric loss --x iter --out train_loss.png      # training-loss records

A run is an out_dir holding log.jsonl (what train.py and train_distillation.py write).
"""

import os
import sys
from dataclasses import dataclass

from configurator import configure, run_cli
from kronygpt.checkpoint import check_output_file, refuse_clashes
from kronygpt.errors import UserError
from kronygpt.plots import FORMATS, plot_runs


@dataclass
class PlotConfig:
    runs: str = ""                  # run directories (each with log.jsonl), comma-separated or as positional words
    out: str = "runs.png"           # the PNG to write (refused if it exists, unless --force)
    force: bool = False             # overwrite --out
    labels: str = ""                # comma-separated legend labels, one per run
    metric: str = "val_loss"        # val_loss, val_loss_<eval dataset>, train_loss, teacher_val_loss, or a train metric
    x: str = "iter"                 # iter, tokens or seconds
    title: str = ""                 # the plot's title

    def validate(self):
        if not self.runs:
            raise UserError("give the run directories to plot: python plot.py RUN [RUN ...] --out FILE.png")
        if self.x not in ("iter", "tokens", "seconds"):
            raise UserError(f"--x must be iter, tokens or seconds, got {self.x!r}")


def main():
    cfg = configure(PlotConfig(), sys.argv[1:], verbose=False, positional="runs", doc=__doc__)
    runs = [r for r in cfg.runs.split(",") if r]
    labels = cfg.labels.split(",") if cfg.labels else None
    if labels and len(labels) != len(runs):
        raise UserError(f"--labels has {len(labels)} entries for {len(runs)} runs; give one per run")
    refuse_clashes([("--out", cfg.out)], [("a run's log", os.path.join(r, "log.jsonl")) for r in runs])
    out = check_output_file(cfg.out, cfg.force)
    fmt = os.path.splitext(out)[1][1:].lower()
    if fmt not in FORMATS:
        raise UserError(f"--out {out}: matplotlib cannot write {fmt!r} files; use one of {', '.join(FORMATS)}")
    print(plot_runs(runs, out, labels, cfg.metric, cfg.x, cfg.title or None))


if __name__ == "__main__":
    run_cli(main)
