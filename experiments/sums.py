"""
Do Kronecker terms, alone or beside a low-rank term, earn their parameters? (issue 30, before building a layer
for them.) For a sample of SmolLM2-135M's matrices, at equal parameters per matrix, the calibrated error of:

  lowrank      the best rank-r term (exact: the whitened spectrum's tail)
  kron MxN     as many Kronecker terms of the shape whose small factor B is MxN as the budget holds (down
               matrices take NxM, as kron_decomp.py --families does): 3x1 is the (h/3, d)x(3, 1) shape of the
               earlier default, near low rank; 8x8 and 24x24 are the balanced shapes whose terms are cheap (a
               rank-k approximation of the rearranged matrix, Van Loan's view)
  sum MxN      low rank plus Kronecker terms of that shape taking --sum_share of the budget (at least one
               term), the rest of it rank, fitted greedily on each other's residual (mixed.sum_fit, 3 rounds)

'error' is the relative squared output error ||(W - W_hat) L||^2 / ||W L||^2 on Shakespeare calibration
inputs ('aware'; damping 1e-4), the quantity the allocator sums, for the factors actually built (the
Kronecker whitening is exact only for the 3x1-type shapes; the balanced shapes are whitened by C's nearest
Kronecker-factored approximation, and scored on C itself). Budgets are fractions of the dense matrix. Lower
is better; the last column is the best Kronecker or sum error over the low-rank one.

    python experiments/sums.py                    # ~20 minutes on 2 CPU cores
    python experiments/sums.py --blocks 0,15,29 --budgets 0.4,0.5 --shapes 3x1
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kronygpt.calib import calibrate  # noqa: E402
from kronygpt.checkpoint import load_model  # noqa: E402
from kronygpt.data_utils import open_dataset  # noqa: E402
from kronygpt.factorize import InitSpec, init_factors, whitened_spectrum  # noqa: E402
from kronygpt.kronecker import kron_sum  # noqa: E402
from kronygpt.mixed import damped, kron_shape_of, parse_families, sum_fit, whitened_error  # noqa: E402


def kron_errors(W, C, s, init, norm, fracs):
    """{fraction: error} of as many Kronecker terms of shape s as each fraction of the dense matrix holds, from
    one decomposition at the largest count (the first k of Van Loan's terms are the k-term solution)."""
    o, i = W.shape
    counts = {f: min(int(f * o * i // s.params(1)), s.max_rank) for f in fracs}
    counts = {f: k for f, k in counts.items() if k >= 1}
    if not counts:
        return {}
    A, B, _ = init_factors(W, s, max(counts.values()), init, C)
    Cd = damped(C, init.damping)
    return {f: whitened_error(W - kron_sum(A[:k], B[:k]), Cd, None) / norm for f, k in counts.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default="shakespeare_smollm2-135m")
    p.add_argument("--blocks", default="0,7,15,22,29")
    p.add_argument("--budgets", default="0.35,0.45,0.55,0.65")
    p.add_argument("--shapes", default="3x1,8x8,24x24", help="small factors B (MxN) of the Kronecker columns")
    p.add_argument("--sum_share", type=float, default=0.25, help="share of the budget the sums give their "
                   "Kronecker terms (at least one term)")
    p.add_argument("--calib_tokens", type=int, default=16384)
    p.add_argument("--calib_cache", default="out-experiments/sums/calib.pt")
    p.add_argument("--out", default="results/sums.md")
    args = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count()))
    dense = load_model(args.model).eval()
    blocks = [int(b) for b in args.blocks.split(",")]
    fracs = [float(b) for b in args.budgets.split(",")]
    fams = parse_families(",".join(f"kron:{b}" for b in args.shapes.split(",")))
    os.makedirs(os.path.dirname(args.calib_cache) or ".", exist_ok=True)
    _, moments, _ = calibrate(dense, open_dataset(args.data), args.data, tokens=args.calib_tokens, seq=256, seed=1337,
                              layers=set(range(dense.config.n_layer)), cache_path=args.calib_cache)
    init = InitSpec("aware")
    down = set(dense.config.family.down)
    tags = [f"{f.b[0]}x{f.b[1]}" for f in fams]
    cols = ["lowrank"] + [f"{kind} {t}" for t in tags for kind in ("kron", "sum")]
    table = {}  # (matrix, fraction) -> {column: [error summed over blocks, blocks]}
    t0 = time.time()
    for b in blocks:
        for name in dense.config.family.block_matrices:
            W = dense.matrix(b, name).weight.detach().double()
            o, i = W.shape
            C = moments[(b, name)]
            sig2, norm = whitened_spectrum(W, C, None, init.damping)
            tail = sig2.flip(0).cumsum(0).flip(0).tolist() + [0.0]
            errors = {f: {"lowrank": tail[min(int(f * o * i // (o + i)), len(tail) - 1)] / norm} for f in fracs}
            for fam, tag in zip(fams, tags):
                s = kron_shape_of(fam, o, i, name in down)
                if s is None:
                    continue
                for f, e in kron_errors(W, C, s, init, norm, fracs).items():
                    errors[f][f"kron {tag}"] = e
                for f in fracs:
                    k = max(1, int(args.sum_share * f * o * i // s.params(1)))
                    if s.params(k) <= f * o * i:
                        r = int((f * o * i - s.params(k)) // (o + i))
                        errors[f][f"sum {tag}"] = sum_fit(W, s, k, r, init, C)[1] / norm
            for f, row in errors.items():
                acc = table.setdefault((name, f), {})
                for col, e in row.items():
                    a = acc.setdefault(col, [0.0, 0])
                    a[0], a[1] = a[0] + e, a[1] + 1
        print(f"block {b} done ({time.time() - t0:.0f}s)", flush=True)
    lines = ["# Low rank, Kronecker terms, or their sum, at equal parameters per matrix", "",
             __doc__.split("\n\n")[1].strip("\n"), "",
             f"Command: `python experiments/sums.py --blocks {args.blocks} --budgets {args.budgets} --shapes "
             f"{args.shapes} --sum_share {args.sum_share:g}` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()}-core CPU, "
             f"{time.time() - t0:.0f} s); mean over blocks {blocks}; '-' where the shape does not divide the matrix "
             "or no term fits the budget.", "",
             "| matrix | budget (x dense) | " + " | ".join(cols) + " | best other / lowrank |",
             "|---|---|" + "---|" * (len(cols) + 1)]
    for (name, f), acc in table.items():
        mean = {c: v / n for c, (v, n) in acc.items() if n == len(blocks)}
        best = min((v for c, v in mean.items() if c != "lowrank"), default=float("nan"))
        cells = [f"{mean[c]:.4f}" if c in mean else "-" for c in cols]
        lines.append(f"| {name} | {f:.2f} | " + " | ".join(cells) + f" | {best / mean['lowrank']:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as fh:
        fh.write(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
