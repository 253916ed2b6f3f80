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
import json
import os
import time

import torch

import common  # noqa: E402, F401 (puts the repo on the import path: the one place that does)
from kronygpt.calib import CalibSettings, calibrate  # noqa: E402
from kronygpt.checkpoint import load_model  # noqa: E402
from kronygpt.data_utils import open_dataset  # noqa: E402
from kronygpt.factorize import InitSpec, init_factors, rearrange, whitened_spectrum  # noqa: E402
from kronygpt.kronecker import factored_macs, kron_sum  # noqa: E402
from kronygpt.mixed import damped, kron_shape_of, parse_families, sum_fit, whitened_error  # noqa: E402


NOTES = """
## What it says (2026-12-05, blocks 0, 15 and 29 of SmolLM2-135M)

- **Low rank has the lowest calibrated error for every matrix and budget**, and the margin grows with the
  budget: the best other candidate is 1.17-1.75x low rank's error (MLP matrices 1.17-1.43x, attention
  1.33-1.75x). No Kronecker candidate earns its parameters on this criterion.
- **The 3x1 shape alone is the worst candidate** (a term costs a third of the matrix, so every budget here
  holds one: 0.47-0.63 error against low rank's 0.007-0.14). The balanced shapes do far better alone
  (up_proj at 0.35x: 24x24 0.537, 8x8 0.574, 3x1 0.620) but stay 3.7-18x low rank's error; in sums with low
  rank they come closest (up_proj at 0.35x: low rank 0.143, low rank + 8x8 terms 0.168), that is, a quarter
  of the budget moved from rank to Kronecker terms always costs more than it buys.
- **Much of the calibrated gap is the whitening, not the family.** Without calibration (the last table, both
  families exact) balanced Kronecker terms nearly match low rank on the MLPs (up_proj at 0.35x: 24x24 0.525
  against 0.475; at 0.65x 0.271 against 0.233) while the calibrated gap is 3.7-4.7x: low rank whitens
  exactly, the balanced shapes only for C's nearest Kronecker-factored approximation. A fit on the exact
  criterion (alternating least squares, or the layer-wise fitting the families study uses) could close part
  of that gap, never more: even uncalibrated, low rank wins every row.
- **Balanced terms cost compute low rank does not** (the compute table): at 0.35x of the parameters, 8x8
  terms need 2.9-3.1x the dense matrix's multiply-adds per token and 24x24 terms 8.3-8.4x, against 0.35x
  for low rank; materialising W costs the dense product and more. They would make the model slower, which
  no parameter saving here pays for.
"""


def tag(fam):
    """'3x1' for the family kron:3x1 (the columns' names)."""
    return fam.text.split(":", 1)[1]


def shapes_header(fams):
    """The header of a table with a low-rank column and one column per Kronecker shape."""
    return ("| matrix | budget (x dense) | lowrank | " + " | ".join(f"kron {tag(f)}" for f in fams) + " |\n"
            "|---|---|---|" + "---|" * len(fams))


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


def block_errors(dense, b, moments, fams, fracs, init, sum_share):
    """{matrix: {fraction: {column: error}}} of block b."""
    down = set(dense.config.family.down)
    out = {}
    for name in dense.config.family.block_matrices:
        W = dense.matrix(b, name).weight.detach().double()
        o, i = W.shape
        C = moments[(b, name)]
        sig2, norm = whitened_spectrum(W, C, None, init.damping)
        tail = sig2.flip(0).cumsum(0).flip(0).tolist() + [0.0]
        errors = {f: {"lowrank": tail[min(int(f * o * i // (o + i)), len(tail) - 1)] / norm} for f in fracs}
        for fam in fams:
            s = kron_shape_of(fam, o, i, name in down)
            if s is None:
                continue
            for f, e in kron_errors(W, C, s, init, norm, fracs).items():
                errors[f][f"kron {tag(fam)}"] = e
            for f in fracs:
                k = max(1, int(sum_share * f * o * i // s.params(1)))
                if s.params(k) <= f * o * i:
                    r = int((f * o * i - s.params(k)) // (o + i))
                    errors[f][f"sum {tag(fam)}"] = sum_fit(W, s, (k, r), init, (C, None))[1] / norm
        out[name] = {str(f): e for f, e in errors.items()}
    return out


def compute_table(dense, fams, fracs):
    """Markdown: multiply-adds per token of each matrix's candidates at each budget, relative to dense (the
    cheaper factored order for Kronecker terms, kronecker.factored_macs; materialising W costs at least dense)."""
    down = set(dense.config.family.down)
    lines = [shapes_header(fams)]
    for name in dense.config.family.block_matrices:
        o, i = dense.matrix(0, name).weight.shape
        for f in fracs:
            cells = [f"{int(f * o * i // (o + i)) * (o + i) / (o * i):.2f}"]
            for fam in fams:
                s = kron_shape_of(fam, o, i, name in down)
                k = min(int(f * o * i // s.params(1)), s.max_rank) if s is not None else 0
                macs = min(factored_macs(s, k).values()) / (o * i) if k else 0
                cells.append(f"{macs:.2f} ({k} term{'s' if k > 1 else ''})" if k else "-")
            lines.append(f"| {name} | {f:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def frobenius_table(dense, blocks, fams, fracs):
    """Markdown: the same comparison without calibration, on ||W - W_hat||_F^2 / ||W||_F^2, where both families
    are exact (Eckart-Young on W for low rank, on the rearranged R(W) for Kronecker terms, Van Loan): what the
    families can represent, apart from how well their calibrated fits whiten."""
    down = set(dense.config.family.down)
    lines = [shapes_header(fams)]
    for name in dense.config.family.block_matrices:
        acc = {}
        for b in blocks:
            W = dense.matrix(b, name).weight.detach().double()
            o, i = W.shape
            total = W.pow(2).sum().item()
            tails = {"lowrank": (torch.linalg.svdvals(W).pow(2), o + i)}
            for fam in fams:
                s = kron_shape_of(fam, o, i, name in down)
                if s is not None:
                    tails[f"kron {tag(fam)}"] = (torch.linalg.svdvals(rearrange(W, s)).pow(2), s.params(1))
            for f in fracs:
                for col, (sig2, per_term) in tails.items():
                    k = int(f * o * i // per_term)
                    if k >= 1:
                        a = acc.setdefault((f, col), [0.0, 0])
                        a[0], a[1] = a[0] + sig2[k:].sum().item() / total, a[1] + 1
        for f in fracs:
            cells = [f"{acc[(f, c)][0] / acc[(f, c)][1]:.4f}" if acc.get((f, c), (0, 0))[1] == len(blocks) else "-"
                     for c in ["lowrank"] + [f"kron {tag(fam)}" for fam in fams]]
            lines.append(f"| {name} | {f:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    p.add_argument("--state", default="results/state/sums", help="where the finished blocks' errors are kept "
                   "(committed: a rerun with the same settings, on any machine, reuses them)")
    p.add_argument("--out", default="results/sums.md")
    args = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count()))
    dense = load_model(args.model).eval()
    blocks = [int(b) for b in args.blocks.split(",")]
    fracs = [float(b) for b in args.budgets.split(",")]
    fams = parse_families(",".join(f"kron:{b}" for b in args.shapes.split(",")))
    for d in (args.state, os.path.dirname(args.calib_cache) or "."):
        os.makedirs(d, exist_ok=True)
    done_path = os.path.join(args.state, "blocks.json")
    key = f"{args.model} {args.data} {args.calib_tokens} {args.shapes} {args.sum_share:g}"
    done = json.load(open(done_path)) if os.path.isfile(done_path) else {}
    done = done if done.get("key") == key else {"key": key}
    t0 = time.time()
    todo = [b for b in blocks if not all(str(f) in done.get(f"{b}", {}).get(n, {}) for f in fracs
                                         for n in dense.config.family.block_matrices)]
    if todo:
        settings = CalibSettings(args.data, tokens=args.calib_tokens, seq=min(256, dense.config.block_size),
                                 seed=1337, cache_path=args.calib_cache)
        _, moments, _ = calibrate(dense, open_dataset(args.data), settings, layers=set(range(dense.config.n_layer)))
    for b in todo:
        done[f"{b}"] = block_errors(dense, b, moments, fams, fracs, InitSpec("aware"), args.sum_share)
        with open(done_path + ".tmp", "w") as fh:
            json.dump(done, fh)
        os.replace(done_path + ".tmp", done_path)
        print(f"block {b} done ({time.time() - t0:.0f}s)", flush=True)
    cols = ["lowrank"] + [f"{kind} {tag(f)}" for f in fams for kind in ("kron", "sum")]
    lines = ["# Low rank, Kronecker terms, or their sum, at equal parameters per matrix", "",
             __doc__.split("\n\n")[1].strip("\n"), "",
             f"Command: `python experiments/sums.py --blocks {args.blocks} --budgets {args.budgets} --shapes "
             f"{args.shapes} --sum_share {args.sum_share:g}` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()}-core "
             f"CPU); mean over blocks {blocks}; '-' where the shape does not divide the matrix or no term fits "
             "the budget.", "",
             "| matrix | budget (x dense) | " + " | ".join(cols) + " | best other / lowrank |",
             "|---|---|" + "---|" * (len(cols) + 1)]
    for name in dense.config.family.block_matrices:
        for f in fracs:
            rows = [done[f"{b}"][name][str(f)] for b in blocks]
            mean = {c: sum(r[c] for r in rows) / len(rows) for c in cols if all(c in r for r in rows)}
            best = min((v for c, v in mean.items() if c != "lowrank"), default=float("nan"))
            cells = [f"{mean[c]:.4f}" if c in mean else "-" for c in cols]
            lines.append(f"| {name} | {f:.2f} | " + " | ".join(cells) + f" | {best / mean['lowrank']:.3f} |")
    lines += ["", "## Compute per token", "",
              "Multiply-adds per token of each candidate at the budget, relative to the dense matrix (Kronecker "
              "terms: the cheaper factored order, kronecker.factored_macs, with as many terms as the budget "
              "holds; forming W instead costs at least the dense product). Low rank costs one multiply-add per "
              "parameter; a Kronecker term of shape (m1,n1)x(m2,n2) costs n1*m2*(n2+m1) or m1*n2*(n1+m2) for "
              "its m1*n1 + m2*n2 parameters.", "", compute_table(dense, fams, fracs),
              "", "## Without calibration", "",
              "The relative Frobenius error ||W - W_hat||^2 / ||W||^2 of the best approximation of each family at "
              "the budget (exact for both: the singular values of W, and of the rearranged R(W) for Kronecker "
              "terms), mean over the same blocks: what each family can represent, apart from the calibration.",
              "", frobenius_table(dense, blocks, fams, fracs)]
    if args.out == p.get_default("out"):  # the findings read the default run's tables
        lines.append(NOTES)
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as fh:
        fh.write(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
