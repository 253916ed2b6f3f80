"""
Parameter budgets: which plan (shape and factors, per block or per matrix) meets a target parameter count,
and, with calibration, which one loses the least on real activations.

    uniform plans   one (shape, factors) for every planned block: `shape_candidates` lists, for every valid
                    shape, the factor count nearest the target; `score_plans` measures each one's calibrated
                    output error (the init actually used, on a subset of blocks) and kron_decomp.py picks the
                    lowest within the budget tolerance.
    allocation      (see `allocate`) each matrix its own rank or dense, chosen from measured error curves.
"""

import heapq
import math
import re
import time
from dataclasses import dataclass

import torch

from model import GPT

from .calib import Stats
from .errors import UserError
from .factorize import fisher_error, init_factors, output_error, whitened_spectrum
from .kronecker import KronShape, all_shapes, factored_macs, kron_shape, kron_sum
from .mixed import Family, candidates, family_of
from .plans import EMBED, MatrixSpec, Plan, format_blocks
from .progress import progress


# -----------------------------------------------------------------------------
# counting

SCOPES = ("mlp", "blocks", "all")  # what the allocator may factorise: MLPs; + attention; + the token embedding


def matrices(config, layers=None, scope="mlp"):
    """[(layer, name, out, in)] of the matrices of the given blocks (all by default) that `scope` factorises;
    scope 'all' adds the token embedding as (EMBED, 'wte', vocab_size, n_embd)."""
    dims = config.matrix_dims()
    layers = range(config.n_layer) if layers is None else layers
    names = [n for n, _ in config.family.mlp_matrices] if scope == "mlp" else config.family.block_matrices
    mats = [(b, n, *dims[n]) for b in layers for n in names]
    if scope == "all" and config.tie_embeddings:
        mats.append((EMBED, "wte", config.vocab_size, config.n_embd))
    return mats


def param_base(config, layers=None, scope="mlp"):
    """(parameters outside the planned matrices' weights, number of planned matrices) for a dense config."""
    with torch.device("meta"):
        dense_total = GPT(type(config).from_dict({**config.to_dict(), "kron_plan": ""})).param_counts()["total"]
    mats = matrices(config, layers, scope)
    return dense_total - sum(o * i for _, _, o, i in mats), len(mats)


def is_lowrank(s):
    """Whether a KronShape is the low-rank member of the family ((out,1)x(1,in) or (1,in)x(out,1))."""
    return MatrixSpec(s, 1).lowrank


def describe(s, factors):
    return MatrixSpec(s, factors).describe()


def uniform_plan(config, s, factors, layers=None):
    """The Plan giving every MLP matrix of `layers` (None: every block) the up shape s (the down matrices the
    opposite shape; for low rank, every matrix low rank) with `factors`."""
    blocks = format_blocks(range(config.n_layer) if layers is None else layers, config.n_layer)
    spec = "lowrank" if is_lowrank(s) else f"{s.m1}x{s.n1}"
    return Plan.parse(f"{blocks}: mlp={spec}*{factors}", config.layout())


def mac_ratio(s, factors):
    """MACs per token of the up and down matrices together, relative to dense (1.0 = no saving)."""
    dense = s.in_features * s.out_features
    up, down = (min(min(factored_macs(x, factors).values()), dense) for x in (s, s.transposed()))
    return (up + down) / (2 * dense)


def keeps_rank(s, factors):
    """Whether factors x rank(A) x rank(B) can reach the dense matrix's rank min(out, in)."""
    return factors * min(s.m1, s.n1) * min(s.m2, s.n2) >= min(s.out_features, s.in_features)


def factors_for_target(config, s, target, scalars=False, layers=None):
    """(factors, total) of up shape s whose total parameter count is closest to the target."""
    base, n = param_base(config, layers)
    f = min(max(1, round((target - base) / (n * s.params(1, scalars)))), s.max_rank)
    return f, base + n * s.params(f, scalars)


def plan_for_target(config, target, scalars=False, layers=None, max_factors=8):
    """Uniform plans by parameter count alone, (total_params, factors, up KronShape), best first: within 1%
    of the target, then rank-preserving, then fewest factors, then fewest MACs per token, then closest."""
    base, n = param_base(config, layers)
    cands = [(base + n * s.params(f, scalars), f, s)
             for s in all_shapes(config.mlp_hidden, config.n_embd)
             for f in range(1, min(max_factors, s.max_rank) + 1)]

    def key(c):
        total, f, s = c
        off = abs(total - target) / target
        near = off <= 0.01
        return (not near, not keeps_rank(s, f), f if near else 0, round(mac_ratio(s, f), 2) if near else 0, off,
                -s.m1 * s.n1)  # last: the big factor first, as in Krony-PT
    return sorted(cands, key=key)


def list_shapes(config, layers=None, max_factors=4):
    """Rows of (shape, max_rank, rank-preserving factors, [total params for 1..max_factors])."""
    base, n = param_base(config, layers)
    rows = []
    for s in all_shapes(config.mlp_hidden, config.n_embd):
        counts = [base + n * s.params(f) if f <= s.max_rank else None for f in range(1, max_factors + 1)]
        rows.append((s, s.max_rank, next((f for f in range(1, max_factors + 1) if keeps_rank(s, f)), None), counts))
    return rows


def shape_candidates(config, target, scalars=False, layers=None, tol=0.01):
    """[(total, factors, up KronShape)], one per shape (the factor count nearest the target), those within
    tol of the target first, then by fewest MACs, then closest; the low-rank member is always included."""
    cands = []
    for s in all_shapes(config.mlp_hidden, config.n_embd):
        f, total = factors_for_target(config, s, target, scalars, layers)
        cands.append((total, f, s))
    off = lambda c: abs(c[0] - target) / target  # noqa: E731
    return sorted(cands, key=lambda c: (off(c) > tol, round(mac_ratio(c[2], c[1]), 2), off(c), -c[2].m1 * c[2].n1))


def reachable(config, target, scalars=False, layers=None):
    """(smallest, largest) total a uniform plan can reach: one factor of the cheapest shape, and dense."""
    base, n = param_base(config, layers)
    cheapest = min(s.params(1, scalars) for s in all_shapes(config.mlp_hidden, config.n_embd))
    return base + n * cheapest, base + n * config.mlp_hidden * config.n_embd


# -----------------------------------------------------------------------------
# scoring by calibrated error

def score_plans(dense, candidates, moments, init, blocks, grads=None, cache=None):
    """The score of each candidate (total, factors, up shape) over the MLP matrices of `blocks`, with the init
    (an InitSpec) actually used: the mean output error ||(W - W_hat) L|| / ||W L||, or with grads
    ({(layer, name): E[g g^T]}) the summed predicted loss increase. moments: {(layer, name): E[x x^T]}."""
    cfg, scores = dense.config, []
    for _, factors, s in candidates:
        errs = []
        for b in blocks:
            for name, up in cfg.family.mlp_matrices:
                shape = s if up else s.transposed()
                if is_lowrank(s):  # canonical low rank for every matrix, as the plan grammar builds it
                    shape = KronShape(shape.out_features, 1, 1, shape.in_features)
                W = dense.matrix(b, name).weight.detach()
                C, G = moments[(b, name)], grads[(b, name)] if grads else None
                A, B, scal = init_factors(W, shape, factors, init, C, G, cache=cache)
                errs.append(fisher_error(W, kron_sum(A, B, scal), C, G) if G is not None else
                            output_error(W, kron_sum(A, B, scal), C))
        scores.append(sum(errs) if grads else sum(errs) / len(errs))
    return scores


def scored_blocks(n_layer, layers, k):
    """The blocks choose_uniform scores candidate plans on: k spread over the model, within `layers`."""
    return [b for b in spread_blocks(n_layer, k) if layers is None or b in layers] or (layers or [0])[:k]


def spread_blocks(n_layer, k):
    """k block indices spread evenly over 0..n_layer-1 (all of them when k >= n_layer)."""
    if k >= n_layer:
        return list(range(n_layer))
    return sorted({round(i * (n_layer - 1) / max(1, k - 1)) for i in range(k)})


# -----------------------------------------------------------------------------
# allocation

def lowrank_curves(dense, moments, mats, damping=0.0, grads=None, g_damping=1e-2, cache=None):
    """{(layer, name): (sigma^2 in descending order, normaliser)}: each matrix's whitened spectrum
    (factorize.whitened_spectrum), from which the low-rank member's error at every rank is exact. The
    normaliser makes errors relative (each matrix counts alike), or with grads the predicted loss increase,
    comparable across matrices. cache: a WhiteningCache shared with decompose_model, which then reuses the
    whitening of every moment."""
    out = {}
    for b, name, _, _ in progress(mats, "spectra", unit="matrices"):
        C = moments[(b, name)] if moments is not None else None  # no calibration: the Frobenius error
        G = grads[(b, name)] if grads is not None else None
        out[(b, name)] = whitened_spectrum(dense.matrix(b, name).weight, C, G, damping, g_damping, cache)
    return out


def lowrank_points(curve, o, i, weight=1.0, multiple=1):
    """One matrix's low-rank (parameters, error, rank) points, cheapest first: rank r costs r(o+i) with error
    sum(sigma^2[r:]) (weighted, relative); ranks that cost as much as dense are left out (dense dominates them).
    Every rank is at least 1 (a plan cannot hold a rank-0 matrix) and a multiple of `multiple` (ranks the
    hardware likes: GEMMs whose inner size is a multiple of 8-64 use the tensor cores fully)."""
    sig2, norm = curve
    w = weight / max(norm, 1e-30)
    tail = sig2.flip(0).cumsum(0).flip(0).tolist() + [0.0]  # tail[r] = sum(sig2[r:])
    return [(r * (o + i), w * tail[r], r) for r in range(multiple, min(o, i) + 1, multiple) if r * (o + i) < o * i]


def hull(points):
    """The lower convex hull of (cost, error, choice) points: the points where the error falls ever more slowly
    per parameter, cheapest first (points that cost more and lose more than another are dropped)."""
    out = []
    for p in sorted(points, key=lambda p: (p[0], p[1])):
        if out and p[1] >= out[-1][1]:
            continue  # dominated: no cheaper, no better
        while len(out) >= 2 and (out[-1][1] - p[1]) * (out[-1][0] - out[-2][0]) >= \
                (out[-2][1] - out[-1][1]) * (p[0] - out[-1][0]):
            out.pop()
        out.append(p)
    return out


def options(curve, o, i, weight=1.0, multiple=1):
    """The lower convex hull of one matrix's low-rank points and dense (cost o*i, error 0): [(cost, error,
    choice)] with choice a rank or 'dense'."""
    return hull(lowrank_points(curve, o, i, weight, multiple) + [(o * i, 0.0, "dense")])


def allocate(curves, mats, budget, weights=None, multiple=1):
    """Each matrix its rank (or dense) so that the total weight parameters stay within `budget` and the summed
    (weighted) relative squared error is smallest: allocate_points over each matrix's low-rank points and dense.
    Returns {(layer, name): rank or 'dense'} and the parameters used."""
    weights = weights or {}
    points = {(b, n): lowrank_points(curves[(b, n)], o, i, weights.get((b, n), 1.0), multiple) + [(o * i, 0.0, "dense")]
              for b, n, o, i in mats}
    return allocate_points(points, budget)


MAX_CELLS = 400_000  # the exact allocator's budget grid: beyond this many cells it rounds costs up to coarser units
DP_WORK = 3e9        # cell updates the dynamic programme may take (about 6 s on 2 cores) before the bound decides
CERTIFIED = 1e-4     # a greedy allocation within this relative distance of the LP lower bound is kept as it is


def allocate_points(points, budget, log=None):
    """One choice per matrix from its (cost, error, choice) points (any family: low-rank ranks, Kronecker factor
    counts, dense), total cost within `budget`, summed error smallest: a multiple-choice knapsack.

    The hull greedy (greedy_allocation) runs first; the LP relaxation's optimum (lp_bound) bounds every
    allocation's error from below. The dynamic programme (exact_allocation: exact on the grid of the costs'
    greatest common divisor, or within 0.1% of the budget on a coarser one) then runs whenever it is cheap
    (under DP_WORK cell updates) or the greedy is not certified within CERTIFIED of the bound; the better of the
    two is kept. So the result is optimal, or provably within 0.01% of the optimum. log: where a line saying
    which held goes (None: nowhere). Returns ({key: choice}, the cost used)."""
    cheapest = sum(min(p[0] for p in pts) for pts in points.values())
    if cheapest > budget:
        raise UserError(f"the budget leaves {budget:,} parameters for the factorised matrices, fewer than the "
                        f"cheapest choice of each needs ({cheapest:,}); raise --target_params or factorise fewer "
                        f"matrices")
    err = {k: {p[2]: p[1] for p in v} for k, v in points.items()}
    total = lambda a: sum(err[k][c] for k, c in a[0].items())  # noqa: E731
    greedy = greedy_allocation(points, budget)
    bound, g = lp_bound(points, budget), total(greedy)
    certified = g - bound <= CERTIFIED * max(abs(bound), 1e-30)
    work = sum(len(frontier(v)) for v in points.values()) * (budget - cheapest) / max(grid_unit(points, budget), 1)
    if certified and work > DP_WORK:
        if log:
            log(f"  allocation: greedy {g:.6g}, within {g - bound:.2g} of the LP lower bound {bound:.6g} (certified "
                f"near-optimal; the exact programme would take {work:.1e} cell updates)")
        return greedy
    alloc, exact = exact_allocation(points, budget)
    best = greedy if total(greedy) < total(alloc) else alloc
    if log:
        log(f"  allocation: {'exact' if exact else 'dynamic programme (costs rounded up)'} {total(alloc):.6g}, greedy "
            f"{g:.6g}, LP lower bound {bound:.6g}")
    return best


def lp_bound(points, budget):
    """The least summed error of the knapsack's LP relaxation (any fraction of a hull segment may be taken): hull
    segments of all matrices in order of error reduction per parameter, the last that does not fit taken in part.
    No allocation within the budget has a lower error."""
    hulls = {k: hull(p) for k, p in points.items()}
    err = sum(h[0][1] for h in hulls.values())
    left = budget - sum(h[0][0] for h in hulls.values())
    segments = sorted(((e0 - e1) / (c1 - c0), c1 - c0, e0 - e1) for h in hulls.values()
                      for (c0, e0, _), (c1, e1, _) in zip(h, h[1:]))
    for _, dc, de in reversed(segments):
        if dc > left:
            return err - de * left / dc
        err, left = err - de, left - dc
    return err


def grid_unit(points, budget):
    """The exact programme's cell: the greatest common divisor of the costs beyond each matrix's cheapest point,
    or, where that needs more cells than max(MAX_CELLS, 1000 per matrix), the coarser cell that fills that many
    (costs rounded up: the rounding then loses under 0.1% of the budget). Returns the cell's size."""
    fronts = [frontier(v) for v in points.values()]
    room = budget - sum(f[0][0] for f in fronts)
    extras = [p[0] - f[0][0] for f in fronts for p in f[1:]]
    unit = math.gcd(*extras) if extras else 1
    limit = max(MAX_CELLS, 1000 * len(fronts))
    return unit if room // unit <= limit else math.ceil(room / limit)


def frontier(pts):
    """The points no other point beats (cheaper or as cheap, and lower error), cheapest first."""
    out = []
    for p in sorted(pts, key=lambda p: (p[0], p[1])):
        if not out or p[1] < out[-1][1]:
            out.append(p)
    return out


def exact_allocation(points, budget):
    """((choice per key, cost used), exact): the multiple-choice knapsack of allocate_points by dynamic programming.
    Each matrix's cheapest point is taken as given; the rest of the budget is a grid of cells in which best[c] is
    the least summed error of the matrices so far whose extra cost (beyond their cheapest points) fills c cells,
    and each matrix's points extend it; the last matrix's best cell within the budget is traced back. exact: the
    grid is the greatest common divisor of the costs, so no cost was rounded."""
    keys = list(points)
    fronts = {k: frontier(points[k]) for k in keys}
    room = budget - sum(f[0][0] for f in fronts.values())
    unit = grid_unit(points, budget)
    extras = [p[0] - f[0][0] for f in fronts.values() for p in f[1:]]
    exact = all(e % unit == 0 for e in extras)
    cells = room // unit
    best = torch.full((cells + 1,), math.inf, dtype=torch.float64)
    best[0] = 0.0
    picks = []
    for k in keys:
        f = fronts[k]
        shift = [-(-(p[0] - f[0][0]) // unit) for p in f]  # cells, rounded up
        best, pick = extend(best, shift, [p[1] for p in f])
        picks.append((pick, shift))
    c = int(torch.argmin(best))
    choice, used = {}, 0
    for k, (pick, shift) in zip(reversed(keys), reversed(picks)):
        j = int(pick[c])
        choice[k] = fronts[k][j][2]
        used += fronts[k][j][0]
        c -= shift[j]
    return ({k: choice[k] for k in keys}, used), exact


def extend(best, shift, err, chunk=32):
    """(new, pick): new[c] = min over j of best[c - shift[j]] + err[j], and the j that attains it (the first),
    for shifts in increasing order. Runs of equally spaced shifts (a matrix's ranks) are done as one strided
    view of the padded array, `chunk` options at a time: one vectorised min instead of a Python loop."""
    cells = best.shape[0] - 1
    new = torch.full_like(best, math.inf)
    pick = torch.zeros(cells + 1, dtype=torch.int32)
    j = 0
    while j < len(shift) and shift[j] <= cells:
        step = shift[j + 1] - shift[j] if j + 1 < len(shift) else 1
        end = j + 1
        while end < min(len(shift), j + chunk) and shift[end] <= cells and shift[end] - shift[end - 1] == step:
            end += 1
        # options j..end-1 have shifts shift[j] + t*step: row t of the view is best shifted right by shift[j + t]
        pad = shift[end - 1]
        padded = torch.cat([torch.full((pad,), math.inf, dtype=best.dtype), best])
        rows = end - j
        view = padded.as_strided((rows, cells + 1), (step if rows > 1 else 1, 1), pad - shift[end - 1])
        # view[t] = best shifted by shift[end - 1 - t]: reverse the errors to match
        vals = view + torch.tensor(err[j:end][::-1], dtype=best.dtype)[:, None]
        m, arg = vals.min(0)
        better = m < new
        new = torch.where(better, m, new)
        pick = torch.where(better, (end - 1 - arg).to(torch.int32), pick)
        j = end
    return new, pick


def greedy_allocation(points, budget):
    """The hull greedy: each matrix's options are the lower convex hull of its points; hull segments are taken in
    order of error reduction per parameter, a segment that does not fit is skipped and cheaper ones of other
    matrices fill the rest (`fill`). Exactly optimal at every total it reaches without skipping a segment (every
    Lagrangian solution), otherwise within one segment of the optimum. Returns ({key: choice}, the cost used)."""
    hulls = {k: hull(p) for k, p in points.items()}
    at = {k: 0 for k in hulls}
    used = sum(h[0][0] for h in hulls.values())
    heap = []

    def push(n, key):
        h, j = hulls[key], at[key]
        if j + 1 < len(h):
            (c0, e0, _), (c1, e1, _) = h[j], h[j + 1]
            heapq.heappush(heap, (-(e0 - e1) / (c1 - c0), n, key))

    for n, key in enumerate(hulls):  # n breaks ties between equal gains (keys mix ints and EMBED)
        push(n, key)
    while heap:
        _, n, key = heapq.heappop(heap)
        h, j = hulls[key], at[key]
        cost = h[j + 1][0] - h[j][0]
        if used + cost > budget:
            continue  # this matrix cannot take its next segment; cheaper segments of others may still fit
        at[key], used = j + 1, used + cost
        push(n, key)
    chosen = {k: hulls[k][j] for k, j in at.items()}
    chosen, left = fill(chosen, points, budget - used)
    return {k: p[2] for k, p in chosen.items()}, budget - left


def fill(chosen, points, left):
    """Spend what the hull segments left over on any point off the hull (a hull segment next to dense can span
    many ranks, too many for the rest of the budget): repeatedly the move of one matrix to a point that costs at
    most what is left and loses less, best error reduction per parameter first, so the total lands within one
    step of the budget. chosen: {key: (cost, error, choice)}. Returns (chosen, the parameters still unspent)."""
    table = {k: (torch.tensor([p[0] for p in pts], dtype=torch.float64),
                 torch.tensor([p[1] for p in pts], dtype=torch.float64)) for k, pts in points.items()}
    while True:
        best = None
        for k, (cost, err) in table.items():
            c, e = chosen[k][0], chosen[k][1]
            ok = (cost > c) & (cost - c <= left) & (err < e)
            if not ok.any():
                continue
            gain = torch.where(ok, (e - err) / (cost - c).clamp_min(1), torch.tensor(-1.0, dtype=torch.float64))
            j = int(gain.argmax())
            if best is None or gain[j] > best[0]:
                best = (gain[j].item(), k, j)
        if best is None:
            return chosen, left
        _, k, j = best
        left -= points[k][j][0] - chosen[k][0]
        chosen[k] = points[k][j]


def chosen_error(points, choice):
    """The summed error of an allocation: each key's chosen option's error, from its (cost, error, choice) points."""
    return sum({c: e for _, e, c in points[key]}[ch] for key, ch in choice.items())


def curve_error(curves, key, r):
    """The error of rank r on a lowrank_curves curve: relative output error, or (Fisher curves) the square
    root of the predicted loss increase, so that curve_error**2 is what `allocate` sums."""
    sig2, norm = curves[key]
    return math.sqrt(max(sig2[r:].sum().item(), 0.0) / norm) if norm > 0 else 0.0


# -----------------------------------------------------------------------------
# the policy: from what the user asked for to a Plan

@dataclass(frozen=True)
class PlanRequest:
    """What plan a decomposition asks for, resolved once where the settings enter (kron_decomp's options,
    DecompConfig.plan_request) and passed down whole:
        plan                 a plan string, used as written
        shape (+ factors)    one shape for every MLP matrix; with target, the factor count that meets it;
                             'lowrank' with target and scope 'blocks'/'all': every matrix of the scope keeps the
                             same fraction of its parameters (uniform ratio, as SVD-LLM, ASVD and FWSVD compress)
        target               the plan nearest a parameter count: by count alone (Krony-PT's rank-preserving
                             plans), or with calibration moments the candidate shapes' calibrated error
                             (choose_uniform); with allocate, each matrix its own rank (or, with Kronecker
                             families, factor count and shape) under the budget (allocated_plan)
    layers: the blocks planned (None: all); scope: what --allocate (or a uniform ratio) may factorise (SCOPES)."""
    plan: str = ""
    shape: str = ""
    factors: int = 1
    target: str = ""
    tolerance: float = 0.01
    allocate: bool = False
    scope: str = "mlp"
    scalars: bool = False
    candidates: int = 16         # uniform plans scored by calibrated error
    score_blocks: int = 6        # the blocks they are scored on
    rank_multiple: int = 1
    families: tuple = (Family("lowrank"),)
    max_factors: int = 8         # Kronecker families: factors per matrix at most
    layers: tuple = None
    permute: bool = False

    @property
    def mixed(self):
        return any(f.kind == "kron" for f in self.families)

    @property
    def ratio(self):
        """Whether this asks for a low-rank plan at one ratio over a scope wider than the MLPs."""
        return bool(self.target) and self.shape.strip().lower() == "lowrank" and self.scope != "mlp" \
            and not self.allocate


def parse_count(text):
    """'81M', '81.9M', '81912576', '500k', or a model name ('distilgpt2') -> an integer."""
    sizes = {"distilgpt2": 81_912_576, "gpt2": 124_439_808}
    if text in sizes:
        return sizes[text]
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([kKmMbB]?)", str(text).strip())
    if not m:
        raise UserError(f"--target_params {text!r} is not a count like 81M, 81.9M, 81912576 or distilgpt2")
    n = int(round(float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}[m.group(2).lower()]))
    if n <= 0:
        raise UserError(f"--target_params {text!r} must be a positive count")
    return n


def parse_shape(text, config):
    """'m1xn1' -> the up matrices' KronShape; 'lowrank' -> (mlp_hidden,1)x(1,n_embd), W = sum_k a_k b_k^T."""
    if text.strip().lower() == "lowrank":
        return kron_shape(config.mlp_hidden, config.n_embd, config.mlp_hidden, 1)
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m:
        raise UserError(f"--shape {text!r} must look like m1xn1 (e.g. 768x768) or 'lowrank'")
    return kron_shape(config.mlp_hidden, config.n_embd, int(m.group(1)), int(m.group(2)))


def choose_plan(dense, request, init=None, stats=None, log=print):
    """The Plan for a PlanRequest over the blocks request.layers (None: all); the reasoning goes to `log`.
    init: the InitSpec the factors will be built with; stats: the calibration Stats (None: uncalibrated)."""
    config, r, stats = dense.config, request, stats or Stats()
    layers = list(r.layers) if r.layers is not None else None
    if r.plan:
        p = Plan.parse(r.plan, config.layout())
        return p if layers is None else p.restrict([*layers, EMBED])
    if not r.target:
        if not r.shape:
            raise UserError("give --shape m1xn1, --target_params N or --plan (see --list_shapes)")
        return uniform_plan(config, parse_shape(r.shape, config), r.factors, layers)
    target = parse_count(r.target)
    if r.allocate:  # each matrix its own rank: the allocator spends the target itself
        return allocated_plan(dense, target, r, init, stats, log)
    if r.mixed:
        raise UserError("--families chooses among families matrix by matrix, which only --allocate does; add "
                        "--allocate")
    if r.ratio:
        return ratio_plan(config, target, r, log)
    if r.shape:  # a fixed shape whose factor count meets the target
        s = parse_shape(r.shape, config)
        factors, total = factors_for_target(config, s, target, r.scalars, layers)
        if abs(total - target) / target > r.tolerance:
            lo, hi = reachable(config, target, r.scalars, layers)
            raise UserError(f"--target_params {target:,}: the nearest total of {describe(s, factors)} plans is "
                            f"{total:,}; change the target (uniform plans reach {lo:,} to {hi:,}) or the shape")
        log(f"target {target:,}: {describe(s, factors)} -> {total:,} parameters "
            f"({100 * (total - target) / target:+.2f}%)")
    else:
        factors, s = choose_uniform(dense, target, r, init, stats, log)
    return uniform_plan(config, s, factors, layers)


def ratio_plan(config, target, request, log=print):
    """Every matrix of the request's scope low rank at the same fraction of its parameters (ranks rounded, then
    single ranks added where they fit best), the largest total within the target: the uniform compression
    ratio of SVD-LLM, ASVD and FWSVD."""
    layers = list(request.layers) if request.layers is not None else None
    mats = matrices(config, layers, request.scope)
    base, _ = param_base(config, layers, request.scope)
    budget = target - base
    dense_total = sum(o * i for _, _, o, i in mats)
    if not 0 < budget < dense_total:
        raise UserError(f"--target_params {target:,} cannot be met by low rank over --scope {request.scope}: it "
                        f"must lie between {base:,} and {base + dense_total:,}")

    def ranks(ratio):
        return {(b, n): max(1, min(min(o, i), int(ratio * o * i / (o + i)))) for b, n, o, i in mats}

    def cost(rk):
        return sum(rk[(b, n)] * (o + i) for b, n, o, i in mats)

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(ranks(mid)) <= budget else (lo, mid)
    rk, used = ranks(lo), cost(ranks(lo))
    if used > budget:
        raise UserError(f"--target_params {target:,} is below rank 1 of every matrix of --scope {request.scope}")
    for b, n, o, i in sorted(mats, key=lambda m: (m[2] + m[3], m[0] if m[0] != EMBED else -1, m[1])):
        if used + o + i <= budget and rk[(b, n)] < min(o, i):  # the rounding's leftover: one more rank each
            rk[(b, n)] += 1
            used += o + i
    plan = Plan({k: MatrixSpec(KronShape(o, 1, 1, i), rk[k]) for k, (_, _, o, i) in
                 zip(rk, mats)}, config.layout())
    log(f"target {target:,}: every matrix of --scope {request.scope} low rank at {lo:.3f} of its parameters -> "
        f"{base + used:,} parameters ({100 * (base + used - target) / target:+.2f}%)")
    return plan


def choose_uniform(dense, target, request, init, stats, log=print):
    """(factors, up shape) of the uniform plan for a target: by parameter count alone, or with moments by the
    calibrated error of the candidates within tolerance, scored on a few blocks."""
    config, r = dense.config, request
    layers = list(r.layers) if r.layers is not None else None
    lo, hi = reachable(config, target, r.scalars, layers)
    if not lo * 0.99 <= target <= hi:
        raise UserError(f"--target_params {target:,} cannot be reached: plans of this model range from {lo:,} "
                        f"(one factor of the smallest shape) to {hi:,} (dense) parameters")
    cands = shape_candidates(config, target, r.scalars, layers)
    near = [c for c in cands if abs(c[0] - target) / target <= r.tolerance]
    if not near:
        closest = sorted(cands, key=lambda c: abs(c[0] - target))[:3]
        raise UserError(f"no plan lands within {r.tolerance:.1%} of --target_params {target:,}; the nearest "
                        f"reachable totals are " + ", ".join(f"{t:,} ({describe(s, f)})" for t, f, s in closest))
    if stats.moments is None:  # by parameter count alone: Krony-PT's rank-preserving, few-factor plans
        near = [c for c in plan_for_target(config, target, r.scalars, layers)
                if abs(c[0] - target) / target <= r.tolerance] or near
        total, f, s = near[0]
        log(f"target {target:,}: {describe(s, f)} -> {total:,} parameters ({100 * (total - target) / target:+.2f}%), "
            f"MLP MACs {mac_ratio(s, f):.2f}x dense")
        log("  alternatives: " + "; ".join(f"{describe(c, g)}: {t:,}" for t, g, c in near[1:5]))
        return f, s
    # score the fastest candidates and the low-rank member by calibrated output error on a subset of blocks
    near = [c for c in near if not (is_lowrank(c[2]) and c[2].n1 != 1)]  # low rank once: (out,1)x(1,in)
    pool = [c for c in near if mac_ratio(c[2], c[1]) <= 1.0][:r.candidates]
    pool += [c for c in near if is_lowrank(c[2]) and c not in pool]
    blocks = scored_blocks(config.n_layer, layers, r.score_blocks)
    t0 = time.time()
    scores = score_plans(dense, pool, stats.moments, init, blocks, stats.grads, stats.cache)
    order = sorted(range(len(pool)), key=lambda i: scores[i])
    metric = "predicted loss increase" if stats.grads else "output error"
    log(f"target {target:,}: {len(pool)} candidate plans scored by calibrated {metric} ({init.init}) on blocks "
        f"{blocks} in {time.time() - t0:.0f}s; best first:")
    log(f"  {'plan':<26} {'parameters':>12} {metric:>23} {'MACs':>6}")
    for i in order[:6]:
        t, f, s = pool[i]
        log(f"  {describe(s, f):<26} {t:>12,} {scores[i]:>23.4f} {mac_ratio(s, f):>5.2f}x")
    _, f, s = pool[order[0]]
    return f, s


def allocated_plan(dense, target, request, init, stats, log=print):
    """A per-matrix Plan whose total is at most `target`, from calibrated error curves: minimising the summed
    squared relative output error, or with grads ('fisher') the summed predicted loss increase. request.scope
    says which matrices may be factorised (MLPs; + attention; + the embedding). request.families
    (mixed.parse_families; default low rank alone): what each matrix may become besides dense; with a
    Kronecker family every candidate is scored on the same damped criterion (kronygpt/mixed.py), one budget is
    spent across matrices and families, and the log compares the mixed allocation with each family alone at the
    same budget. With low rank alone and the MLP scope the uniform low-rank plan with the most parameters within
    the allocation's total is scored on the same objective, and chosen if it scores lower (said so).
    stats.curves: the lowrank_curves already computed (streaming.streamed_curves computes them block by block,
    and stats.kron_points with them); then stats.moments are not needed."""
    config, r = dense.config, request
    layers = list(r.layers) if r.layers is not None else None
    multiple, families = r.rank_multiple, r.families
    if r.scalars:
        raise UserError("--allocate builds plans without per-factor scalars; drop --scalars")
    mats = matrices(config, layers, r.scope)
    base, _ = param_base(config, layers, r.scope)
    if target <= base:
        raise UserError(f"--target_params {target:,} is below the {base:,} parameters outside the matrices "
                        f"--scope {r.scope} may factorise; raise it or widen --scope")
    if stats.moments is None and stats.curves is None:
        raise UserError("--allocate chooses ranks by calibrated error: give --calib DATASET")
    t0 = time.time()
    curves = stats.curves
    if curves is None:
        curves = lowrank_curves(dense, stats.moments, mats, init.damping, stats.grads, init.g_damping, stats.cache)
    kron_points = stats.kron_points
    if r.mixed and kron_points is None:
        kron_points = candidates(dense, Stats(stats.moments, stats.grads, curves, cache=stats.cache), mats, init, r)
    lowrank = any(f.kind == "lowrank" for f in families)

    def points(kinds):
        return {(b, n): (lowrank_points(curves[(b, n)], o, i, 1.0, multiple) if "lowrank" in kinds else []) +
                ((kron_points or {}).get((b, n), []) if "kron" in kinds else []) + [(o * i, 0.0, "dense")]
                for b, n, o, i in mats}

    kinds = {f.kind for f in families}
    pts = points(kinds)
    alloc, used = allocate_points(pts, target - base, log)
    err_of = {k: {p[2]: p[1] for p in v} for k, v in pts.items()}
    objective = chosen_error(pts, alloc)
    what = "predicted loss increase (damped)" if stats.grads else "sum of squared output errors (damped)"
    if multiple > 1 and lowrank:  # what the rounding costs, on the same objective and budget
        free_pts = {k: [p for p in v if not isinstance(p[2], int)] +
                    lowrank_points(curves[k], o, i) for (k, v), (_, _, o, i) in zip(pts.items(), mats)}
        free, _ = allocate_points(free_pts, target - base)
        unrounded = chosen_error(free_pts, free)
        log(f"ranks in multiples of {multiple}: objective {objective:.4f} against {unrounded:.4f} with any rank "
            f"({100 * (objective - unrounded) / max(unrounded, 1e-30):+.2f}%)")
    dims = {**config.matrix_dims(), "wte": (config.vocab_size, config.n_embd)}

    def spec(key, choice):
        if isinstance(choice, MatrixSpec):
            return choice
        return MatrixSpec(KronShape(dims[key[1]][0], 1, 1, dims[key[1]][1]), choice)

    plan = Plan({k: spec(k, c) for k, c in alloc.items() if c != "dense"}, config.layout())
    log(f"allocation over {r.scope}, families {','.join(f.text for f in families)} ({time.time() - t0:.0f}s): "
        f"{base + used:,} parameters (target {target:,}), {what} {objective:.4f} over {len(mats)} matrices; "
        f"plan: {plan.text}")
    if r.mixed:
        counts = {}
        for c in alloc.values():
            counts[family_of(c)] = counts.get(family_of(c), 0) + 1
        log("  matrices by family: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        for alone in sorted(kinds):  # each family alone, same budget and objective
            only = points({alone})
            try:
                a, u = allocate_points(only, target - base)
            except UserError:
                log(f"  {alone} alone cannot meet the budget")
                continue
            log(f"  {alone} alone: {base + u:,} parameters, {what} {chosen_error(only, a):.4f}")
    if r.scope == "mlp" and not r.mixed:  # uniform low-rank plans are in the search space: compare at equal size
        s = parse_shape("lowrank", config)
        rank = max(1, used // (len(mats) * s.params(1)))
        while rank > 1 and len(mats) * s.params(rank) > used:
            rank -= 1
        uni = sum(curve_error(curves, (b, n), rank) ** 2 for b, n, _, _ in mats)
        log(f"  uniform {describe(s, rank)} ({base + len(mats) * s.params(rank):,} parameters): {what} {uni:.4f}")
        if uni < objective:
            log("  the uniform plan scores lower; keeping it")
            return uniform_plan(config, s, rank, layers)
    rows = {}
    for b, n, _, _ in mats:
        c = alloc[(b, n)]
        e = err_of[(b, n)][c]
        label = c.text if isinstance(c, MatrixSpec) else c
        rows.setdefault(b, []).append(f"{n} {label} ({'dloss' if stats.grads else 'err'} "
                                      f"{e if stats.grads else e ** 0.5:.4f})")
    for b, parts in rows.items():
        log(f"  {'block ' + str(b) if b != EMBED else 'embedding':>9}: " + ", ".join(parts))
    return plan
