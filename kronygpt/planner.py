"""
Parameter budgets: which plan (shape and factors, per block or per matrix) meets a target parameter count,
and, with calibration, which one loses the least on real activations.

    uniform plans   one (shape, factors) for every planned block: `shape_candidates` lists, for every valid
                    shape, the factor count nearest the target; `score_plans` measures each one's calibrated
                    output error (the init actually used, on a subset of blocks) and kron_decomp.py picks the
                    lowest within the budget tolerance.
    allocation      (see `allocate`) each matrix its own rank or dense, chosen from measured error curves.
"""

import math

import torch

from .decompose import fisher_error, init_factors, is_lowrank, output_error
from .kronecker import KronShape, all_shapes, factored_macs, kron_shape, kron_sum, lapack_threads
from model import GPT
from .plans import format_blocks


# -----------------------------------------------------------------------------
# counting

SCOPES = ("mlp", "blocks", "all")  # what the allocator may factorise: MLPs; + attention; + the token embedding


def matrices(config, layers=None, scope="mlp"):
    """[(layer, name, out, in)] of the matrices of the given blocks (all by default) that `scope` factorises;
    scope 'all' adds the token embedding as ('embed', 'wte', vocab_size, n_embd)."""
    dims = config.matrix_dims()
    layers = range(config.n_layer) if layers is None else layers
    names = [n for n, _ in config.family.mlp_matrices] if scope == "mlp" else config.family.block_matrices
    mats = [(b, n, *dims[n]) for b in layers for n in names]
    if scope == "all" and config.tie_embeddings:
        mats.append(("embed", "wte", config.vocab_size, config.n_embd))
    return mats


def param_base(config, layers=None, scope="mlp"):
    """(parameters outside the planned matrices' weights, number of planned matrices) for a dense config."""
    with torch.device("meta"):
        dense_total = GPT(type(config).from_dict({**config.to_dict(), "kron_factors": 0, "kron_shape": (),
                                                  "kron_plan": "", "kron_layers": None})).param_counts()["total"]
    mats = matrices(config, layers, scope)
    return dense_total - sum(o * i for _, _, o, i in mats), len(mats)


def uniform_plan(config, s, factors, layers=None):
    """The plan text giving every MLP matrix of `layers` the up shape s (down: the opposite) with `factors`."""
    blocks = format_blocks(range(config.n_layer) if layers is None else layers, config.n_layer)
    spec = "lowrank" if is_lowrank(s) else f"{s.m1}x{s.n1}"
    return f"{blocks}: mlp={spec}*{factors}"


def uniform_total(config, s, factors, scalars=False, layers=None):
    base, n = param_base(config, layers)
    return base + n * s.params(factors, scalars)


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


def planned_params(config, factors, shape, scalars=False, layers=None):
    """Total parameters (tied embeddings once) of `config` with a uniform plan, without building it."""
    base, n = param_base(config, layers)
    return base + n * kron_shape(config.mlp_hidden, config.n_embd, *shape).params(factors, scalars)


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

def score_plans(dense, candidates, moments, init, blocks, damping=0.0, grads=None, g_damping=1e-2):
    """The score of each candidate (total, factors, up shape) over the MLP matrices of `blocks`, with the init
    actually used: the mean output error ||(W - W_hat) L|| / ||W L||, or with grads ({(layer, name):
    E[g g^T]}) the summed predicted loss increase. moments: {(layer, name): E[x x^T]}."""
    cfg, scores, cache = dense.config, [], {}
    for _, factors, s in candidates:
        errs = []
        for b in blocks:
            block = dense.transformer.h[b]
            for name, up in cfg.family.mlp_matrices:
                shape = s if up else s.transposed()
                if is_lowrank(s):  # canonical low rank for every matrix, as the plan grammar builds it
                    shape = KronShape(shape.out_features, 1, 1, shape.in_features)
                W = block.matrix(name).weight.detach()
                C, G = moments[(b, name)], grads[(b, name)] if grads else None
                A, B, scal = init_factors(W, shape, factors, init, C=C, damping=damping, cache=cache, G=G,
                                          g_damping=g_damping)
                errs.append(fisher_error(W, kron_sum(A, B, scal), C, G) if G is not None else
                            output_error(W, kron_sum(A, B, scal), C))
        scores.append(sum(errs) if grads else sum(errs) / len(errs))
    return scores


def spread_blocks(n_layer, k):
    """k block indices spread evenly over 0..n_layer-1 (all of them when k >= n_layer)."""
    if k >= n_layer:
        return list(range(n_layer))
    return sorted({round(i * (n_layer - 1) / max(1, k - 1)) for i in range(k)})


# -----------------------------------------------------------------------------
# allocation

def lowrank_curves(dense, moments, mats, damping=0.0, grads=None, g_damping=1e-2, cache=None):
    """{(layer, name): (sigma^2 in descending order, normaliser)}: the whitened spectrum of each matrix, of
    W L, or of R^T W L with grads. With r kept components the low-rank member's squared error is
    sum(sigma^2[r:]) exactly (whitening is exact for it on both sides). The normaliser is ||W L||^2, making
    errors relative (each matrix counts alike), or 2 with grads, making them the predicted loss increase
    tr(G dW C dW^T) / 2, comparable across matrices. cache: shared with decompose_model, which then reuses
    the whitening of every covariance."""
    from .calib import HEAD
    from .decompose import side_whitening
    out = {}
    for b, name, o, i in mats:
        key = HEAD if b == "embed" else (b, name)
        W = (dense.transformer.wte if b == "embed" else dense.transformer.h[b].matrix(name)).weight.detach().double()
        C = moments[key] if moments is not None else None  # no calibration: the Frobenius error
        _, (L, _), _ = side_whitening(C, 1, i, damping, cache)  # low rank: the input lives in B
        M = W @ L
        if grads is not None and b == "embed":  # the logits: only the diagonal of their gradient moment
            g = grads[key].double()
            M = (g + g_damping * g.mean()).sqrt()[:, None] * M
        elif grads is not None:
            (R, _), _, _ = side_whitening(grads[key], o, 1, g_damping, cache)  # and the output in A
            M = R.t() @ M
        with lapack_threads():
            sig2 = torch.linalg.svdvals(M).pow(2)
        out[(b, name)] = (sig2, 2.0 if grads is not None else sig2.sum().item())
    return out


def allocate(curves, mats, budget, weights=None):
    """Each matrix its rank (or dense) so that the total weight parameters stay within `budget` and the
    summed (weighted) relative squared output error is smallest. Greedy by marginal error reduction per
    parameter, which is optimal here: each matrix's gains sigma_k^2 are non-increasing in k, so its error is
    convex in the rank. A matrix turns dense when its rank reaches the point where low rank costs as
    much as the dense matrix (then its error is 0).
    Returns {(layer, name): rank or 'dense'} and the parameters used."""
    import heapq
    weights = weights or {}
    state, used, heap = {}, 0, []
    for b, name, o, i in mats:
        key = (b, name)
        state[key] = 0
        sig2, total = curves[key]
        w = weights.get(key, 1.0) / max(total, 1e-30)
        full = min(o, i)
        dense_rank = o * i / (o + i)  # ranks above this cost more than the dense matrix
        heapq.heappush(heap, (-(w * sig2[0].item()) / (o + i), key, w, o, i, full, dense_rank))
    while heap:
        neg_gain, key, w, o, i, full, dense_rank = heapq.heappop(heap)
        r = state[key]
        cost = o + i
        if used + cost > budget:
            continue  # this matrix cannot grow; others (cheaper units) may still fit
        state[key] = r + 1
        used += cost
        sig2, _ = curves[key]
        if r + 1 < full and r + 1 < dense_rank:
            heapq.heappush(heap, (-(w * sig2[r + 1].item()) / cost, key, w, o, i, full, dense_rank))
    out = {}
    for b, name, o, i in mats:
        r = state[(b, name)]
        out[(b, name)] = "dense" if r >= o * i / (o + i) or r >= min(o, i) else r
    return out, used


def curve_error(curves, key, r):
    """The error of rank r on a lowrank_curves curve: relative output error, or (Fisher curves) the square
    root of the predicted loss increase, so that curve_error**2 is what `allocate` sums."""
    sig2, norm = curves[key]
    return math.sqrt(max(sig2[r:].sum().item(), 0.0) / norm) if norm > 0 else 0.0
