"""
One allocator over several factorisation families (kron_decomp.py --allocate --families lowrank,kron:3x1).

Each matrix may be dense, low rank at any rank, or a Kronecker shape with any number of factors. Every
candidate is scored by the same calibrated criterion, computed for the factors the decomposition would
actually build (not for an approximation of them): the squared whitened error

    err = ||R^T (W - W_hat) L||^2 / norm,     C + d I = L L^T (inputs),  G + d' I = R R^T (output gradients),

with the damping the decomposition uses, normalised as the low-rank curves are (planner.lowrank_curves):
relative to ||R^T W L||^2 without gradients, or with 'fisher' the K-FAC predicted loss increase (norm 2).
For low rank the error at every rank is exact from the whitened spectrum; for a Kronecker shape the factors
come from init_factors with the run's init ('aware' or 'fisher'), k = 1..K factors from one decomposition
(Van Loan's terms are ordered: the first k are the k-factor solution). The allocator (planner.allocate_points)
then spends one budget across all matrices and families.

A family is 'lowrank' or 'kron:M2xN2', the size of the small factor B of the up matrices, attention and the
embedding; down matrices take the transposed size (their hidden index is the input), so that 'kron:3x1' is the
(h/3, d)x(3, 1) / (d, h/3)x(1, 3) pair of the earlier default. A matrix whose sizes the factor does not divide
has no candidate of that family.

With permute, each block's MLP candidates are scored after its hidden units are reordered for the first
Kronecker family's shape (permute.py: function-preserving; low rank is invariant, so its candidates do not
change). decompose_model then finds the order for the shapes actually chosen, which fits them at least as
well as the order they were scored in.
"""

import re
from dataclasses import dataclass, replace

import torch

from .errors import UserError
from .factorize import host, init_factors, lapack_threads, whitening
from .kronecker import kron_shape, kron_sum
from .permute import find_permutation, unit_features
from .plans import EMBED, MatrixSpec


@dataclass(frozen=True)
class Family:
    kind: str            # 'lowrank', 'width' (a block's MLP narrowed: kronygpt/widths.py) or 'kron'
    b: tuple = None      # kron: (m2, n2) of the up matrices' small factor

    @property
    def text(self):
        return f"kron:{self.b[0]}x{self.b[1]}" if self.kind == "kron" else self.kind


def parse_families(text):
    """'lowrank,kron:3x1' -> (Family('lowrank'), Family('kron', (3, 1)))."""
    out = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        m = re.fullmatch(r"kron:(\d+)x(\d+)", part)
        if part in ("lowrank", "width"):
            out.append(Family(part))
        elif m and int(m.group(1)) * int(m.group(2)) > 1:
            out.append(Family("kron", (int(m.group(1)), int(m.group(2)))))
        else:
            raise UserError(f"--families item {part!r} must be 'lowrank', 'width' (a narrower MLP) or 'kron:M2xN2' "
                            f"(the small factor of the up matrices, e.g. kron:3x1; not 1x1)")
    if not out:
        raise UserError("--families is empty; give e.g. 'lowrank' or 'lowrank,kron:3x1'")
    if len(set(out)) < len(out):
        raise UserError(f"--families {text!r} names a family twice")
    return tuple(out)


def kron_shape_of(family, o, i, down):
    """The KronShape family `family` gives an (o, i) matrix (down: the transposed small factor), or None when
    the small factor does not divide the sizes or the shape is a low-rank one."""
    m2, n2 = family.b[::-1] if down else family.b
    if o % m2 or i % n2 or (o // m2, i // n2) in ((o, 1), (1, i)):
        return None
    return kron_shape(o, i, o // m2, i // n2)


def damped(M, d):
    """M + d * mean(diag M) * I (M a square moment) or, for a vector (a diagonal moment), M + d * mean(M)."""
    M = M.double()
    if M.dim() == 1:
        return M + d * M.mean().clamp_min(0)
    return M + d * M.diagonal().mean().clamp_min(0) * torch.eye(M.shape[0], dtype=torch.float64)


def whitened_inner(X, Y, Cd, Gd):
    """<R^T X L, R^T Y L> = tr(G X C Y^T) for damped moments (None: the identity; G may be a diagonal vector)."""
    YC = Y if Cd is None else Y @ Cd
    GX = X if Gd is None else (Gd[:, None] * X if Gd.dim() == 1 else Gd @ X)
    return (GX * YC).sum().item()


def whitened_error(D, Cd, Gd):
    """||R^T D L||^2 = tr(G D C D^T) for damped moments (None: the identity; G may be a diagonal vector)."""
    return whitened_inner(D, D, Cd, Gd)


def kron_points(W, s, init, moments, norm, max_factors, cache=None):
    """[(cost, error, MatrixSpec)] of shape s with k = 1..K factors (K: max_factors, the shape's rank, and
    fewer parameters than dense), errors of the actual factors on the damped criterion (module docstring).
    moments: (C, G) of this matrix (either None)."""
    C, G = moments
    o, i = W.shape
    K = min(max_factors, s.max_rank)
    while K > 0 and s.params(K) >= o * i:
        K -= 1
    if K == 0:
        return []
    A, B, scal = init_factors(W, s, K, init, C, G if init.needs_grads else None, cache=cache)
    Cd = damped(C, init.damping) if C is not None else None
    Gd = damped(G, init.g_damping) if G is not None and init.needs_grads else None
    W = W.double()
    out = []
    with lapack_threads(max(o, i)):
        for k in range(1, K + 1):
            W_hat = kron_sum(A[:k], B[:k], scal[:k] if scal is not None else None)
            out.append((s.params(k), whitened_error(W - W_hat, Cd, Gd) / norm, MatrixSpec(s, k)))
    return out


def block_permutation(mlp, fam, shapes, moments, init):
    """perm[p] (the unit placed at position p) of one MLP for its matrices' Kronecker shapes {name: KronShape},
    or None when no MLP matrix has one."""
    specs = {n: (s, 1) for n, s in shapes.items() if s is not None}
    if not specs:
        return None
    perm, _, _ = find_permutation(unit_features(mlp, fam, moments, init.damping), specs, fam)
    return perm


def block_candidates(dense, b, names, stats, init, request):
    """{(b, name): [(cost, error, choice)]} of the request's Kronecker families (request: a planner.PlanRequest;
    its families, permute and max_factors) for the matrices `names` of block b (EMBED: the embedding) while
    the block's statistics are at hand. stats: a calib.Stats whose moments and grads are this block's
    ({name: C}, {name: G}, or None) and whose curves (the low-rank curves, keyed (b, name)) give the
    normalisers the Kronecker errors share."""
    kron = [f for f in request.families if f.kind == "kron"]
    if not kron:
        return {}
    fam = dense.config.family
    down = set(fam.down)
    weights = {n: host(dense.matrix(b, n).weight) for n in names}
    moments, grads = dict(stats.moments or {}), dict(stats.grads or {})
    mlp_names = [n for n, _ in fam.mlp_matrices if n in names]
    if request.permute and b != EMBED and mlp_names:  # score the MLP in the order that suits the first Kronecker shape
        shapes = {n: kron_shape_of(kron[0], *weights[n].shape, n in down) for n in mlp_names}
        perm = block_permutation(dense.transformer.h[b].mlp, fam, shapes, moments, init)
        if perm is not None:
            for n, up in fam.mlp_matrices:
                if n not in names:
                    continue
                weights[n] = weights[n][perm] if up else weights[n][:, perm]
                if not up and n in moments:
                    moments[n] = moments[n][perm][:, perm]
                if up and n in grads:
                    grads[n] = grads[n][perm][:, perm]
    out = {}
    for n in names:
        W = weights[n]
        o, i = W.shape
        _, norm = stats.curves[(b, n)]
        pts = []
        for f in kron:
            s = kron_shape_of(f, o, i, n in down)
            if s is not None:
                pts += kron_points(W, s, init, (moments.get(n), grads.get(n)), max(norm, 1e-30),
                                   request.max_factors, stats.cache)
        out[(b, n)] = pts
    return out


def candidates(dense, stats, mats, init, request):
    """block_candidates of every matrix in `mats` (planner.matrices), from all-at-once statistics (a calib.Stats
    keyed (layer, name), with the low-rank curves)."""
    by_block = {}
    for b, n, _, _ in mats:
        by_block.setdefault(b, []).append(n)
    out = {}
    for b, names in by_block.items():
        m = {n: stats.moments[(b, n)] for n in names} if stats.moments is not None else None
        g = {n: stats.grads[(b, n)] for n in names} if stats.grads is not None else None
        block = replace(stats, moments=m, grads=g)
        out.update(block_candidates(dense, b, names, block, init, request))
    return out


def family_of(choice):
    """'dense', 'lowrank' or 'kron' of an allocated choice (a rank, 'dense' or a MatrixSpec)."""
    if choice == "dense":
        return "dense"
    return "lowrank" if isinstance(choice, int) or choice.lowrank else "kron"


# -----------------------------------------------------------------------------
# sums of a low-rank term and Kronecker terms: W ~ U V^T + sum_k A_k (x) B_k

def sum_fit(W, s, terms, init, moments, rounds=3, cache=None):
    """(W_hat, error) of the sum of a rank-r term and k Kronecker terms of shape s (terms = (k, r); moments =
    (C, G), G None without gradients), fitted greedily on the
    residual of the other (low rank first), `rounds` times, on the damped calibrated criterion (module
    docstring, unnormalised). The low-rank step is exact (truncated SVD of the whitened residual, the optimal
    rank-r term given the Kronecker part); the Kronecker step is init_factors' ('aware'/'fisher') on the
    low-rank step's residual, scaled by the factor that fits that residual best on the exact criterion. Where
    the Kronecker whitening is approximate (both factors hold part of a side's index) its terms can fit the
    residual badly; the scale then shrinks them (to zero at worst), so the sum is never worse than its
    rank-r term alone."""
    (k, r), (C, G) = terms, moments
    W = W.detach().double()
    Cd = damped(C, init.damping) if C is not None else None
    Gd = damped(G, init.g_damping) if G is not None and init.needs_grads else None
    L, Li = whitening(C, init.damping) if C is not None else (None, None)
    R, Ri = whitening(G, init.g_damping) if Gd is not None and Gd.dim() == 2 else (None, None)
    K = torch.zeros_like(W)
    LR = torch.zeros_like(W)
    best = None
    for _ in range(rounds):
        M = W - K
        M = M @ L if L is not None else M
        M = R.t() @ M if R is not None else M
        if r > 0:
            U, S, Vh = torch.linalg.svd(M, full_matrices=False)
            Mr = (U[:, :r] * S[:r]) @ Vh[:r]
            Mr = Ri.t() @ Mr if R is not None else Mr
            LR = Mr @ Li if L is not None else Mr
        if k > 0:
            A, B, scal = init_factors(W - LR, s, k, init, C, G if init.needs_grads else None, cache=cache)
            K = kron_sum(A, B, scal)
            KK = whitened_inner(K, K, Cd, Gd)
            K = K * (whitened_inner(W - LR, K, Cd, Gd) / KK if KK > 0 else 0.0)
        err = whitened_error(W - K - LR, Cd, Gd)
        if best is None or err < best[1]:
            best = (K + LR, err)
    return best
