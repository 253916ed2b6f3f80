"""
Kronecker or low rank, matrix by matrix (issue 30): SmolLM2-135M -> <= 81.5M parameters, the budget allocated
over whole blocks (MLPs and attention), 'fisher' statistics, the same calibration and layer-wise (block-wise)
fitting for every row; only the families the allocator may choose from differ (kron_decomp.py --families,
kronygpt/mixed.py):

  lowrank          each matrix low rank at its own rank, or dense (the flagship pipeline's start)
  kron             each matrix a (h/3, d)x(3, 1)-type Kronecker shape with its own factor count, or dense,
                   hidden units permuted for the shape
  mixed            either, matrix by matrix, scored on one criterion, hidden units permuted
  mixed_wide       the same with three Kronecker shapes to choose from (small factor 2x1, 3x1, 4x1)

Columns: the allocator's predicted loss increase (damped K-FAC; comparable across rows), kron_decomp's
report (undamped), the validation loss right after decomposition and after block-wise fitting. Resumable:
finished rows are reused (calibration statistics are shared through calib.pt).

    python experiments/families.py                      # ~1 hour on 2 CPU cores, alone
    python experiments/families.py --rows lowrank,mixed
    python experiments/families.py --demo               # the demo model (3.2M -> 1.64M), minutes
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from calibrated import run_row, setup  # noqa: E402
from common import parser  # noqa: E402

TARGET = "81.5M"
SMOKE_FAMILIES = {"kron:3x1": "kron:2x1", "lowrank,kron:3x1": "lowrank,kron:2x1",
                  "lowrank,kron:2x1,kron:3x1,kron:4x1": "lowrank,kron:2x1,kron:1x2"}
# the demo model (4 x 256 wide, MLP 1024: 3 divides neither): its (256,256)x(4,1) shape, the demo's own, at the
# size the calibrated demo study compresses to
DEMO_FAMILIES = {"kron:3x1": "kron:4x1", "lowrank,kron:3x1": "lowrank,kron:4x1",
                 "lowrank,kron:2x1,kron:3x1,kron:4x1": "lowrank,kron:2x1,kron:4x1,kron:8x1"}
DEMO_TARGET = "1.64M"
COMMON = ["--init", "fisher", "--allocate", "--scope", "blocks"]
ROWS = {
    "lowrank": ["--families", "lowrank"],
    "kron": ["--families", "kron:3x1", "--permute"],
    "mixed": ["--families", "lowrank,kron:3x1", "--permute"],
    "mixed_wide": ["--families", "lowrank,kron:2x1,kron:3x1,kron:4x1", "--permute"],
}


def allocator_line(rep):
    """The allocator's damped objective and family counts, from the planner's log in kron_decomp's report."""
    text = "\n".join(rep.get("planning", []))
    obj = re.search(r"predicted loss increase \(damped\) ([0-9.]+)", text)
    fams = re.search(r"matrices by family: (.*)", text)
    alone = re.findall(r"(\w+) alone: [0-9,]+ parameters, .*? ([0-9.]+)$", text, re.M)
    counts = fams.group(1) if fams else "lowrank only"
    if alone:
        counts += "; each alone: " + ", ".join(f"{k} {float(v):.4f}" for k, v in alone)
    return (float(obj.group(1)) if obj else "-"), counts


def main():
    p = parser(__doc__, steps=0)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows: " + ", ".join(ROWS))
    p.add_argument("--target", default=None, help=f"--target_params of every row (default {TARGET}; the demo model "
                   f"{DEMO_TARGET})")
    p.add_argument("--demo", action="store_true", help="the demo model (character level) instead of SmolLM2")
    p.add_argument("--layerwise_steps", type=int, default=150)
    p.add_argument("--layerwise_tokens", type=int, default=16384)
    args = p.parse_args()
    unknown = [r for r in args.rows.split(",") if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    ex, model, data, scale, calib, lw, dense = setup(args, "families_demo" if args.demo else "families")
    target = "60k" if args.smoke else args.target or (DEMO_TARGET if args.demo else TARGET)
    renamed = SMOKE_FAMILIES if args.smoke else DEMO_FAMILIES if args.demo else {}
    fams = ["--kron_factors", "2"] if args.smoke else []
    table, done = [], []  # done: (plan, permuted, fit record) of the rows fitted so far

    def same_fit(rep):
        """An earlier row's fit when this row's allocation came out the same (e.g. mixed choosing low rank for
        every matrix, so nothing was permuted): the same checkpoint, fitted the same way."""
        if rep.get("permute_error"):  # a permuted checkpoint differs from any other with the same plan
            return None
        fit = next((f for plan, permuted, f in done if plan == rep["plan"] and not permuted), None)
        return None if fit is None else {**fit, "reused": True}

    for key in args.rows.split(","):
        argv = ["--target_params", target, *COMMON, *ROWS[key], *fams]
        argv = [renamed.get(a, a) for a in argv]  # the small models' sizes: factor shapes that divide them
        rep, fit = run_row(ex, model, key, argv, scale, calib, lw, same_fit)
        done.append((rep["plan"], bool(rep.get("permute_error")), fit))
        objective, counts = allocator_line(rep)
        if fit.get("reused"):
            counts += " (the plan of an earlier row: its fit reused)"
        table.append((key, " ".join(argv[argv.index("--families"):]), rep["params_after"]["total"], counts, objective,
                      rep.get("predicted_loss_increase", "-"), fit["val_loss_before"], fit["val_loss_after"],
                      f"{rep['seconds']:.0f}"))
        write(ex, args, target, lw, dense, table)


def write(ex, args, target, lw, dense, table):
    """The report from the rows finished so far (rewritten after each row)."""
    what = "the demo model (character-level Shakespeare)" if args.demo else args.model
    ex.report(f"Kronecker or low rank, matrix by matrix: {what} at <= {target} parameters",
              f"Dense validation loss {dense:.4f} (Shakespeare). Every row: `kron_decomp.py --target_params {target} "
              f"{' '.join(COMMON)}` plus its families; layer-wise fitting {' '.join(lw)} (whole blocks where "
              f"attention is factorised). 'allocator objective' is the damped K-FAC predicted loss increase the "
              f"allocator minimised (one criterion for every family); 'report' is kron_decomp's undamped one.",
              ["row", "families", "parameters", "matrices by family", "allocator objective",
               "predicted loss increase (report)", "val after decomposition", "val after block-wise fitting",
               "decomposition seconds"], table, [], [], notes=reading(table))


def reading(table):
    """What the table says, in words: the best plan after fitting, and what the others cost against it."""
    fitted = {row[0]: row[7] for row in table}
    if not fitted:
        return ""
    best = min(fitted, key=fitted.get)
    single = {k: v for k, v in fitted.items() if not k.startswith("mixed")}
    out = [f"After block-wise fitting the best plan is **{best}** ({fitted[best]:.4f})."]
    out += [f"`{k}` ends {v - fitted[best]:+.4f} against it." for k, v in fitted.items() if k != best]
    mixed = {k: v for k, v in fitted.items() if k.startswith("mixed")}
    if mixed and single:
        b = min(single, key=single.get)
        out += [f"`{k}` against the best single family (`{b}`): {v - single[b]:+.4f} (the target: -0.10 or lower)."
                for k, v in mixed.items()]
    return " ".join(out) + " One seed: differences below ~0.01 are noise."


if __name__ == "__main__":
    main()
