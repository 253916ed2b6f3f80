"""
Calibrated decomposition compared: every initialisation on the shape the repo used until now, on the
low-rank member at the same parameter count, and on the calibrated planner's pick, measured by the
calibrated output error, the validation loss right after decomposition, and the validation loss after
layer-wise fitting of every MLP to the dense MLP (train_distillation.py --mode=layerwise, the same settings
for every row). Resumable: finished rows are reused.

Rows (c_fc / gate+up shape; down takes the opposite):
  current   (h/3, d)x(3,1) for SmolLM2 (the earlier default, 81.4M) or (d, d)x(h/d, 1) for the demo model:
            vl, vl_norm, prune, aware, fisher, and aware after permuting each MLP's hidden units (--permute)
  lowrank   rank r at the same parameter count: vl (= truncated SVD), vl_norm, aware, aware --sequential,
            fisher, fisher --allocate (each matrix its own rank; the flagship pipeline's start)
  planner   --target_params with --calib and --init aware: whatever shape the calibrated planner picks
  fisher allocate blocks / all: the same budget allocated over the MLPs and attention (and the embedding);
            layer-wise fitting then fits whole blocks where attention is factorised

    python data/shakespeare/prepare.py --tokenizer=smollm2-135m
    python experiments/calibrated.py                     # SmolLM2-135M -> ~81.4M (CPU: ~2 hours)
    python experiments/calibrated.py --demo              # the demo model (character level, 3.2M -> 1.6M)
"""

import json
import os

from common import parser, run_row, setup, teacher_dims


def rows_for(d, h, demo):
    """(key, kron_decomp arguments) of every row."""
    current = f"{d}x{d}" if demo else f"{h // 3}x{d}"
    rows = [(f"current {init}", ["--shape", current, "--factors", "1", "--init", init])
            for init in ("vl", "vl_norm", "prune", "aware", "fisher")]
    rows += [("current aware permute", ["--shape", current, "--factors", "1", "--init", "aware", "--permute"])]
    low = ["--shape", "lowrank", "--target_params", "SAME"]
    rows += [(f"lowrank {init}", [*low, "--init", init]) for init in ("vl", "vl_norm", "aware", "fisher")]
    rows += [("lowrank aware sequential", [*low, "--init", "aware", "--sequential"]),
             ("lowrank fisher allocate", ["--target_params", "SAME", "--init", "fisher", "--allocate"]),
             ("planner aware", ["--target_params", "SAME", "--init", "aware"])]
    # the allocator free to spend the same budget on attention (and the embedding) too
    rows += [(f"fisher allocate {scope}", ["--target_params", "SAME", "--init", "fisher", "--allocate", "--scope",
                                           scope])
             for scope in ("blocks", "all")]
    return rows


def main():
    p = parser(__doc__, steps=0)
    p.add_argument("--demo", action="store_true", help="the demo model (character level) instead of SmolLM2")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--rows", default="", help="comma-separated row keys to run (default: all)")
    p.add_argument("--layerwise_steps", type=int, default=150)
    p.add_argument("--layerwise_tokens", type=int, default=16384)
    args = p.parse_args()
    ex, model, data, scale, calib, lw, dense = setup(args, "calibrated_demo" if args.demo else "calibrated")
    d, h = teacher_dims(model) if (args.demo or args.smoke) else (576, 1536)
    wanted = set(filter(None, args.rows.split(",")))
    table, same = [], None
    for key, argv in rows_for(d, h, args.demo or args.smoke):
        if wanted and key not in wanted:
            continue
        if "SAME" in argv:  # the parameter count of the current shape
            same = same or json.load(open(os.path.join(ex.out, "current_vl.json")))["params_after"]["total"]
            argv = [str(same) if a == "SAME" else a for a in argv]
        rep, fit = run_row(ex, model, key, argv, scale, calib, lw)
        table.append((key, rep["plan"] if len(rep["plan"]) <= 40 else "per-matrix ranks (see report)",
                      rep["params_after"]["total"], rep.get("mean_output_error", float("nan")),
                      rep.get("predicted_loss_increase", "-"), fit["val_loss_before"], fit["val_loss_after"],
                      f"{rep['seconds']:.0f}"))
    what = "demo model (character-level Shakespeare)" if args.demo else f"{args.model} on Shakespeare"
    ex.report(f"Calibrated decomposition: {what}",
              f"Dense validation loss {dense:.4f}. 'output error' is the mean over matrices of ||(W - W_hat) X|| / "
              f"||W X|| on the calibration inputs; 'predicted loss increase' is the K-FAC estimate summed over "
              f"matrices (fisher rows). Layer-wise fitting: {' '.join(lw)}. Decomposition seconds include "
              f"calibration unless the statistics came from the cache (calib.pt, shared by all rows).",
              ["row", "plan", "parameters", "output error", "predicted loss increase", "val after decomposition",
               "val after layer-wise fitting", "decomposition seconds"], table, [], [])


if __name__ == "__main__":
    main()
