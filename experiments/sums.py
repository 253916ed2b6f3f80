"""
Do sums of a low-rank term and Kronecker terms earn their parameters? (issue 30, before building a layer for
them.) For a sample of SmolLM2-135M's matrices, at equal parameters per matrix, the calibrated error of:

  lowrank    the best rank-r term (exact: the whitened spectrum's tail)
  kron       k Kronecker factors of the 3x1-type shape ((h/3, d)x(3, 1); down (d, h/3)x(1, 3); attention as up)
  sum        k = 1 Kronecker factor plus the rank that fills the rest of the budget, fitted greedily on each
             other's residual (mixed.sum_fit, 3 rounds)

'error' is the relative squared output error ||(W - W_hat) L||^2 / ||W L||^2 on Shakespeare calibration
inputs ('aware'; damping 1e-4), the quantity the allocator sums. Budgets are fractions of the dense matrix.
Lower is better; the ratio column is sum / lowrank.

    python experiments/sums.py                    # ~10 minutes on 2 CPU cores
    python experiments/sums.py --blocks 0,15,29 --budgets 0.4,0.5
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
from kronygpt.factorize import InitSpec, whitened_spectrum  # noqa: E402
from kronygpt.mixed import Family, kron_points, kron_shape_of, sum_fit  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default="shakespeare_smollm2-135m")
    p.add_argument("--blocks", default="0,7,15,22,29")
    p.add_argument("--budgets", default="0.35,0.45,0.55,0.65")
    p.add_argument("--calib_tokens", type=int, default=16384)
    p.add_argument("--calib_cache", default="out-experiments/sums/calib.pt")
    p.add_argument("--out", default="results/sums.md")
    args = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count()))
    dense = load_model(args.model).eval()
    blocks = [int(b) for b in args.blocks.split(",")]
    budgets = [float(b) for b in args.budgets.split(",")]
    os.makedirs(os.path.dirname(args.calib_cache) or ".", exist_ok=True)
    _, moments, _ = calibrate(dense, open_dataset(args.data), args.data, tokens=args.calib_tokens, seq=256, seed=1337,
                              layers=set(range(dense.config.n_layer)), cache_path=args.calib_cache)
    init, fam = InitSpec("aware"), Family("kron", (3, 1))
    down = set(dense.config.family.down)
    sums = {}  # (matrix, budget) -> [lowrank, kron, sum] errors summed over blocks
    t0 = time.time()
    for b in blocks:
        for name in dense.config.family.block_matrices:
            W = dense.matrix(b, name).weight.detach().double()
            o, i = W.shape
            C = moments[(b, name)]
            s = kron_shape_of(fam, o, i, name in down)
            sig2, norm = whitened_spectrum(W, C, None, init.damping)
            tail = sig2.flip(0).cumsum(0).flip(0).tolist() + [0.0]
            kp = kron_points(W, s, init, C, None, norm, 8) if s is not None else []
            for frac in budgets:
                budget = frac * o * i
                r = int(budget // (o + i))
                e_low = tail[min(r, len(tail) - 1)] / norm
                fits = [e for c, e, _ in kp if c <= budget]
                e_kron = min(fits) if fits else float("nan")
                e_sum = float("nan")
                if s is not None and s.params(1) <= budget:
                    r_sum = int((budget - s.params(1)) // (o + i))
                    e_sum = sum_fit(W, s, 1, r_sum, init, C)[1] / norm
                acc = sums.setdefault((name, frac), [0.0, 0.0, 0.0, 0])
                for j, e in enumerate((e_low, e_kron, e_sum)):
                    acc[j] += e
                acc[3] += 1
        print(f"block {b} done ({time.time() - t0:.0f}s)", flush=True)
    lines = ["# Low rank, Kronecker, or their sum, at equal parameters per matrix", "",
             __doc__.split("\n\n")[1].strip("\n"), "",
             f"Command: `python experiments/sums.py --blocks {args.blocks} --budgets {args.budgets}` "
             f"({time.strftime('%Y-%m-%d')}, {os.cpu_count()}-core CPU); mean over blocks {blocks}.", "",
             "| matrix | budget (x dense) | lowrank | kron | sum (1 Kronecker factor + rank) | sum / lowrank |",
             "|---|---|---|---|---|---|"]
    for (name, frac), (lo, kr, su, n) in sums.items():
        lines.append(f"| {name} | {frac:.2f} | {lo / n:.4f} | {kr / n:.4f} | {su / n:.4f} | {su / lo:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
