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

from common import Experiment, parser, read_log, teacher_dims


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
