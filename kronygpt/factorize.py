"""
The decomposition maths: how one dense (out, in) matrix W becomes r Kronecker products sum_k A_k (x) B_k with
factor shapes s = (m1, n1) x (m2, n2), optionally calibrated on real activations. Read top to bottom:

    1. Van Loan & Pitsianis: the best r-term approximation in Frobenius norm is a truncated SVD of the
       rearranged matrix R(W) (rows: the (m1, n1) blocks' positions, columns: their flattened contents).
    2. Whitening: what a compressed layer must keep is its output on real inputs,
       E||(W - W_hat) x||^2 = ||(W - W_hat) L||_F^2 with C = E[x x^T] = L L^T, so Van Loan runs on W L and the
       whitening is undone afterwards. For the loss itself (K-FAC, the empirical Fisher) the output side is
       whitened too, by G = E[g g^T] of the loss gradients at the matrix's output: the loss increase of a
       perturbation dW is about tr(G dW C dW^T) / 2.
       Whitening is exact when each side's index lives in one factor (n1 = 1 or n2 = 1 for the input; m1 = 1
       or m2 = 1 for the output): then L acts on that factor alone. Otherwise C is replaced by its nearest
       Kronecker-factored PSD approximation C1 (x) C2 and the result is optimal for that covariance only.
       Low rank, the (out,1)x(1,in) member, is exact on both sides: truncation-aware SVD (SVD-LLM).
    3. The initialisations (InitSpec.init):
           vl        Van Loan: the top r singular triplets of R(W). For low rank, the truncated SVD.
           vl_norm   vl rescaled so ||sum A (x) B||_F = ||W||_F (into A and B, or per-factor scalars).
           prune     B is a one-hot selector and A keeps one entry of every (m2, n2) block of W (Krony-PT).
           random    factors whose product has the dense init's scale.
           aware     Van Loan of W L, whitening undone: minimises the output error on the calibration inputs.
           fisher    aware on both sides (R^T W L, R R^T = G): minimises the predicted loss increase.
           asvd      (ASVD, low rank only) a diagonal input scaling instead of the whitening: input channel j
                     scaled by its activation scale to the power 0.5, truncated SVD, scaling undone.
           fwsvd     (FWSVD, low rank only) a diagonal output scaling: row i weighted by the square root of
                     its diagonal Fisher information, truncated SVD, weighting undone.
       aware and fisher return factor pairs rebalanced to equal norms (balance), Van Loan's own split.
    4. Errors: the relative output error ||(W - W_hat) L|| / ||W L|| (C = I: the Frobenius error) and the
       K-FAC predicted loss increase; and the whitened spectrum, from which the low-rank member's error at
       every rank is read off exactly (the allocator's curves).
Every function takes W wherever the model is and works on host(W): float64 on the CPU, beside the calibration
statistics (collected on the model's device, kept on the CPU), so a model on a GPU is factorised as on the CPU.
"""

import hashlib
import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .errors import ConfigError, UserError
from .kronecker import KronShape, KroneckerLinear, kron_sum

INITS = ("vl", "vl_norm", "prune", "random", "aware", "fisher", "asvd", "fwsvd")
ASVD_ALPHA = 0.5  # ASVD's exponent of the input channels' activation scale (the paper's best, 0.5)


def host(W):
    """W detached, in float64 on the CPU: where the statistics are and where the factorisations run."""
    return W.detach().cpu().double()


@contextmanager
def lapack_threads(size=0):
    """Run the enclosed decompositions (eigh, Cholesky) of matrices of this size on one thread when they are
    smaller than 2048, on all of torch's threads otherwise. With the 2-core CPU shared by another job, a
    2-thread float64 eigh of a 576x576 matrix took 11.8 s against 0.12 s on one thread; at 6400 (GPT-2 XL's
    MLP) two threads are 1.9x faster than one on the idle machine (Cholesky 2.1 -> 1.1 s)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1 if size < 2048 else old)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# -----------------------------------------------------------------------------
# 1. nearest Kronecker products (Van Loan & Pitsianis)

def rearrange(W, s):
    """R(W): the (m1*n1, m2*n2) matrix whose row (i,j) is the flattened block W[i-block, j-block].
    ||W - sum A_k (x) B_k||_F = ||R(W) - sum vec(A_k) vec(B_k)^T||_F."""
    return W.reshape(s.m1, s.m2, s.n1, s.n2).permute(0, 2, 1, 3).reshape(s.m1 * s.n1, s.m2 * s.n2)


def van_loan(W, s, factors):
    """Best `factors`-term Kronecker approximation of W in Frobenius norm.
    Returns A (r, m1, n1), B (r, m2, n2), and all singular values of R(W) (for error analysis).

    The top singular pairs of R = R(W) come from the eigendecomposition of its smaller Gram matrix in
    float64 (3x faster than a full SVD for GPT-2's balanced shapes, same values to ~1e-15). With V the
    top right singular vectors, the approximation is R V V^T: A_k = R v_k / sqrt(s_k), B_k = sqrt(s_k) v_k
    (or the mirror image when the rows are fewer), which stays exact at full Kronecker rank."""
    if factors > s.max_rank:
        raise ConfigError(f"{factors} factors exceed the maximum Kronecker rank {s.max_rank} of shape {s}; "
                          f"use at most {s.max_rank}")
    R = rearrange(W.double(), s)                      # (m1*n1, m2*n2)
    tall = R.shape[0] >= R.shape[1]
    G = R.t() @ R if tall else R @ R.t()
    with lapack_threads(G.shape[0]):
        evals, evecs = torch.linalg.eigh(G)           # ascending
    S = evals.flip(0).clamp_min(0).sqrt()
    V = evecs.flip(1)[:, :factors]                    # top singular vectors of the smaller side
    # components beyond the numerical Kronecker rank carry nothing: zero factors, not the inf/NaN a division
    # by their ~0 singular value would give. Singular values from the Gram matrix are accurate to about
    # sqrt(eps) * s_0, so that is the cut; the approximation stays exact to that precision.
    keep = S[:factors] > S[0] * torch.finfo(torch.float64).eps ** 0.5
    root = torch.where(keep, S[:factors], torch.ones_like(S[:factors])).sqrt()
    if tall:   # columns of R V are s_k u_k
        a, b = (R @ V) / root, V * root              # (m1*n1, r), (m2*n2, r)
    else:      # rows of V^T R are s_k v_k^T
        a, b = V * root, (R.t() @ V) / root
    a, b = a * keep, b * keep
    A = a.t().reshape(factors, s.m1, s.n1)
    B = b.t().reshape(factors, s.m2, s.n2)
    return A.to(W.dtype), B.to(W.dtype), S.to(W.dtype)


def balance(A, B):
    """Rescale every pair (A_k, B_k) to equal Frobenius norms, the split Van Loan's factors have, leaving each
    A_k (x) B_k unchanged. Whitened inits undo their whitening factor by factor, which leaves the pairs on
    arbitrary relative scales; Adam's steps are the same size for every entry, so a factor far larger than its
    partner barely moves when fitted or trained. A pair with a zero factor is left as it is."""
    na, nb = A.flatten(1).norm(dim=1), B.flatten(1).norm(dim=1)
    ok = (na > 0) & (nb > 0)
    r = torch.where(ok, nb / torch.where(ok, na, torch.ones_like(na)), torch.ones_like(na)).sqrt()
    return A * r.view(-1, 1, 1), B / r.view(-1, 1, 1)


# -----------------------------------------------------------------------------
# 2. whitening

class TriangularInverse:
    """L^-1 of a lower-triangular L, never formed: `X @ Li`, `Li @ X` and their transposed forms (`Li.t()`) run
    as triangular solves, r n^2 work for r rows where forming L^-1 is n^3 and the product with it r n^2 more.
    On GPT-2 XL's 6400-wide moments forming the inverse was most of each block's decomposition time. X may be
    a batch of matrices (r, ., n), as Kronecker factors are."""

    def __init__(self, L, transposed=False):
        self.L, self.transposed = L, transposed

    def t(self):
        return TriangularInverse(self.L, not self.transposed)

    def _solve(self, X, left):
        T = (self.L.mT if self.transposed else self.L).to(X.dtype)
        # a batch is solved as one matrix (rows are independent for X Li, columns for Li X): broadcasting T
        # over the batch would copy it once per factor
        if not left:
            return torch.linalg.solve_triangular(T, X.reshape(-1, X.shape[-1]), upper=self.transposed,
                                                 left=False).reshape(X.shape)
        cols = X.movedim(-2, 0)
        Y = torch.linalg.solve_triangular(T, cols.reshape(cols.shape[0], -1), upper=self.transposed, left=True)
        return Y.reshape(cols.shape).movedim(0, -2)

    def __matmul__(self, X):   # Li X
        return self._solve(X, left=True)

    def __rmatmul__(self, X):  # X Li
        return self._solve(X, left=False)


def whitening(C, damping=0.0, inverse=True):
    """(L, L^-1) with L L^T = C + damping * mean(diag C) * I (float64); without `inverse`, L^-1 may be None
    (the spectra need L alone). L^-1 is a TriangularInverse on the Cholesky path, a matrix on the eigh path;
    both multiply with `@`. Any such L gives the same factors
    (an orthogonal Q in L Q cancels in the truncated SVD of W L Q and in (L Q)^-1), so with damping the
    Cholesky factor is used: with triangular solves, 3-4x faster than eigh for the 1536-wide covariances of
    SmolLM2. Without damping, or when Cholesky finds C not safely positive definite, eigh runs instead and
    clamps directions whose eigenvalue is below 1e-10 of the largest, so a singular or tiny C still gives
    finite factors."""
    n = C.shape[0]
    C = damped_moment(C, damping)
    if C is None:  # no signal at all: the identity (plain Frobenius error)
        eye = torch.eye(n, dtype=torch.float64)
        return eye, eye
    with lapack_threads(n):
        if damping > 0:
            L, info = torch.linalg.cholesky_ex(C)
            # the pivots bound the spectrum from below (lambda_min <= min pivot): a tiny one means C is
            # nearly singular, where eigh's clamping is the safer route
            pivots = L.diagonal().pow(2)
            if info == 0 and pivots.min() > 1e-10 * pivots.max():
                return L, TriangularInverse(L) if inverse else None
        evals, U = torch.linalg.eigh(C)
    evals = evals.clamp_min(evals.max() * 1e-10)
    root = evals.sqrt()
    return U * root, (U / root).t()


def nearest_kron_psd(C, n1, n2):
    """(C1, C2), PSD, n1 x n1 and n2 x n2, with C1 (x) C2 nearest to C in Frobenius norm: the top singular pair of
    the rearranged C (a PSD matrix's gives PSD factors up to a common sign), by power iteration from a fixed start,
    so the result never depends on the global random state."""
    R = rearrange(C.double(), KronShape(n1, n1, n2, n2))  # (n1*n1, n2*n2)
    v = R.abs().sum(0) + 1.0                             # a deterministic start with weight on every column
    v = v / v.norm()
    u, sigma = R @ v, torch.zeros((), dtype=torch.float64)
    for _ in range(200):
        u = R @ v
        u = u / u.norm().clamp_min(1e-300)
        w = R.t() @ u
        sigma = w.norm()
        w = w / sigma.clamp_min(1e-300)
        converged = (w - v).norm() < 1e-12
        v = w
        if converged:
            break
    C1 = (u * sigma.sqrt()).reshape(n1, n1)
    C2 = (v * sigma.sqrt()).reshape(n2, n2)
    if C1.trace() < 0:
        C1, C2 = -C1, -C2
    out = []
    for M in (C1, C2):
        M = 0.5 * (M + M.t())
        with lapack_threads(M.shape[0]):
            evals, U = torch.linalg.eigh(M)
        out.append((U * evals.clamp_min(0)) @ U.t())
    return out[0], out[1]


class WhiteningCache:
    """Whitenings already computed, keyed by the content of the second moment (a hash of its bytes), its split
    and the damping: gate and up share their input moment, and plan candidates share every moment. A key
    by content cannot outlive its tensor and be matched by another one (an id() key can: Python reuses ids)."""

    def __init__(self):
        self.store = {}

    def get(self, C, split, damping, compute, inverse=True):
        """compute()'s result for this moment, computed once (again when the stored one lacks the inverses
        now asked for)."""
        digest = hashlib.blake2b(C.detach().double().contiguous().cpu().numpy().tobytes(), digest_size=16).hexdigest()
        key = (tuple(C.shape), digest, split, damping)
        stored = self.store.get(key)
        if stored is None or (inverse and any(t[1] is None for t in stored[:2])):
            self.store[key] = compute()
        return self.store[key]

    def clear(self):
        self.store.clear()


def side_whitening(C, d1, d2, damping=0.0, cache=None, inverse=True):
    """Whitening of one side of a matrix whose index on that side is (d1, d2) = (n1, n2) for the input
    (C = E[x x^T]) or (m1, m2) for the output (C = E[g g^T]). Returns ((T1, T1inv), (T2, T2inv), exact): the
    side's whitening is T1 (x) T2, T1 acting on factor A and T2 on factor B. When d2 == 1 (or d1 == 1) the
    side's index lives in A (or B) alone and the whitening is C's own (exact); otherwise it is that of C's
    nearest Kronecker-factored approximation C1 (x) C2. C = None is the identity. Without `inverse` the
    inverses may be None."""
    one = torch.ones(1, 1, dtype=torch.float64)
    if C is None:
        return (torch.eye(d1, dtype=torch.float64),) * 2, (torch.eye(d2, dtype=torch.float64),) * 2, True

    def compute():
        if d2 == 1:
            return whitening(C, damping, inverse), (one, one), True
        if d1 == 1:
            return (one, one), whitening(C, damping, inverse), True
        C1, C2 = nearest_kron_psd(C, d1, d2)
        return whitening(C1, damping, inverse), whitening(C2, damping, inverse), False

    split = "A" if d2 == 1 else "B" if d1 == 1 else d1
    return compute() if cache is None else cache.get(C, split, damping, compute, inverse)


def whitening_is_exact(s, whitens_output):
    """Whether calibrated factors of shape s are optimal (not optimal for an approximate covariance): the input
    index lives in one factor, and so does the output index when the output is whitened too."""
    return (s.n1 == 1 or s.n2 == 1) and (not whitens_output or s.m1 == 1 or s.m2 == 1)


def kron2(X, Y):
    """X (x) Y; the other matrix itself, not a copy, when one side is the 1x1 identity (the side of an exact
    whitening that holds no index)."""
    if X.numel() == 1 and X.item() == 1:
        return Y
    return X if Y.numel() == 1 and Y.item() == 1 else torch.kron(X, Y)


def aware_factors(W, s, factors, C, damping=0.0, cache=None, G=None, g_damping=1e-2):
    """Factors minimising ||R^T (W - sum A (x) B) L||_F with C = L L^T (inputs) and G = R R^T (output
    gradients; None: the identity, so only the inputs count). Both sides are whitened, Van Loan runs on
    R^T W L, and the whitening is undone factor by factor:
        (RA (x) RB)^T (A (x) B) (LA (x) LB) = (RA^T A LA) (x) (RB^T B LB).
    Returns (A, B, exact), the pairs not yet rebalanced; exact: whether each side's whitening acted on one
    factor only (whitening_is_exact)."""
    W = W.double()
    if s.n1 == 1 and s.m2 == 1 and (C is None or damping > 0) and (G is None or (G.dim() == 2 and g_damping > 0)):
        return lowrank_aware_factors(W, factors, C, damping, cache, G, g_damping)
    (LA, LAi), (LB, LBi), in_exact = side_whitening(C, s.n1, s.n2, damping, cache)
    Wt = W @ kron2(LA, LB)
    if G is None:
        A, B, _ = van_loan(Wt, s, factors)
        return A @ LAi, B @ LBi, in_exact
    (RA, RAi), (RB, RBi), out_exact = side_whitening(G, s.m1, s.m2, g_damping, cache)
    A, B, _ = van_loan(kron2(RA, RB).t() @ Wt, s, factors)
    return RAi.t() @ A @ LAi, RBi.t() @ B @ LBi, in_exact and out_exact


def lowrank_aware_factors(W, factors, C, damping, cache, G, g_damping):
    """aware_factors for the low-rank member (out,1)x(1,in), whose whitenings are exact, with only the smaller
    side whitened. Of M = R^T W L take the top singular vectors of its smaller side from the Gram matrix formed
    as whitened_spectrum forms it. For a tall W (V: the input side's), M V V^T undone is W L V V^T L^-1: R
    cancels. For a wide one (U: the output side's), U U^T M undone is R^-T U U^T R^T W: L cancels. The same
    factors as whitening both sides (the split of each pair between A and B as van_loan's), without the wider
    side's Cholesky factorisation and solves."""
    out_dim, in_dim = W.shape
    gram, (T, Ti) = smaller_side_gram(W, C, G, damping, g_damping, cache)
    with lapack_threads(gram.shape[0]):
        evals, evecs = torch.linalg.eigh(0.5 * (gram + gram.t()))  # ascending
    S = evals.flip(0).clamp_min(0).sqrt()
    V = evecs.flip(1)[:, :factors]
    keep = S[:factors] > S[0] * torch.finfo(torch.float64).eps ** 0.5  # as van_loan: no division by ~0
    root = torch.where(keep, S[:factors], torch.ones_like(S[:factors])).sqrt()
    if out_dim >= in_dim:  # T = L: a_k = W L v_k / sqrt(s_k), b_k = sqrt(s_k) L^-T v_k
        a, b = (W @ (T @ V)) / root, (Ti.t() @ V) * root
    else:                  # T = R: a_k = sqrt(s_k) R^-T u_k, b_k = W^T R u_k / sqrt(s_k)
        a, b = (Ti.t() @ V) * root, (W.t() @ (T @ V)) / root
    a, b = a * keep, b * keep
    return a.t().reshape(factors, out_dim, 1), b.t().reshape(factors, 1, in_dim), True


# -----------------------------------------------------------------------------
# 3. initialisations

@dataclass(frozen=True)
class InitSpec:
    """How factors are initialised from a dense matrix: one small object passed down instead of threaded
    arguments. damping and g_damping are relative (to the mean diagonal of C and G)."""
    init: str = "vl"
    scalars: bool = False        # learnable per-factor scalars (vl_norm puts its rescaling there)
    prune_keep: str = "even"     # prune: keep the 'even' or 'odd' entry of every block
    prune_eps: float = 0.0       # prune: value of B's other entries
    damping: float = 1e-4        # aware/fisher: damping of the input second moment C
    g_damping: float = 1e-2      # fisher: damping of the output-gradient second moment G

    def __post_init__(self):
        if self.init not in INITS:
            raise UserError(f"unknown init {self.init!r}; use one of {', '.join(INITS)}")
        if self.prune_keep not in ("even", "odd"):
            raise UserError(f"prune_keep must be 'even' or 'odd', got {self.prune_keep!r}")
        if not math.isfinite(self.prune_eps):
            raise UserError(f"prune_eps must be a finite number, got {self.prune_eps}")
        for name in ("damping", "g_damping"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value < 1e3):
                raise UserError(f"{name} must be a small non-negative number (it is relative to the mean "
                                f"diagonal), got {value}")

    @property
    def needs_moments(self):
        return self.init in ("aware", "fisher", "asvd")

    @property
    def needs_grads(self):
        return self.init in ("fisher", "fwsvd")

    @property
    def whitens(self):
        """Whether the init whitens by the full moments (its report rows say whether exactly)."""
        return self.init in ("aware", "fisher")

    @property
    def lowrank_only(self):
        return self.init in ("asvd", "fwsvd")

    def check_stats(self, have_moments, have_grads):
        """The one 'needs calibration data' check."""
        if (self.needs_moments and not have_moments) or (self.needs_grads and not have_grads):
            raise UserError(f"--init {self.init} needs calibration data: pass --calib DATASET")


def init_factors(W, s, factors, spec, C=None, G=None, random_std=0.02, cache=None):
    """Factors for one (out, in) matrix W: (A (r,m1,n1), B (r,m2,n2), scalars (r,) or None), float64.
    C, G: the input and output-gradient second moments (aware, fisher)."""
    if factors > s.max_rank:
        raise UserError(f"{factors} factors exceed the maximum Kronecker rank {s.max_rank} of shape {s}; "
                        f"use at most {s.max_rank} factors or another shape")
    init = spec.init
    W = host(W)
    scal = None
    if init in ("vl", "vl_norm"):
        A, B, _ = van_loan(W, s, factors)
        if init == "vl_norm":
            approx = torch.linalg.norm(kron_sum(A, B))
            alpha = (torch.linalg.norm(W) / approx).item() if approx > 0 else 1.0  # an all-zero W stays zero
            if spec.scalars:
                scal = torch.full((factors,), alpha, dtype=W.dtype)
            else:
                A, B = A * math.sqrt(alpha), B * math.sqrt(alpha)
    elif init == "fisher" and G is not None and G.dim() == 1:
        spec.check_stats(C is not None, True)
        A, B = diagonal_output_factors(W, s, factors, spec, (C, G), cache)
    elif init in ("aware", "fisher"):
        spec.check_stats(C is not None, G is not None or init == "aware")
        G = G if init == "fisher" else None
        A, B = balance(*aware_factors(W, s, factors, C, spec.damping, cache, G, spec.g_damping)[:2])
    elif init in ("asvd", "fwsvd"):
        spec.check_stats(C is not None or init == "fwsvd", G is not None or init == "asvd")
        A, B = balance(*scaled_svd_factors(W, s, factors, init, C if init == "asvd" else G))
    elif init == "prune":
        block = s.m2 * s.n2
        offset = 0 if spec.prune_keep == "even" else 1
        if factors + offset > block:
            raise UserError(f"prune keeps one entry of every {s.m2}x{s.n2} block per factor, so shape {s} allows at "
                            f"most {block - offset} factors with --prune_keep {spec.prune_keep}")
        blocks = W.reshape(s.m1, s.m2, s.n1, s.n2)
        A = torch.empty(factors, s.m1, s.n1, dtype=W.dtype)
        B = torch.full((factors, s.m2, s.n2), spec.prune_eps, dtype=W.dtype)
        for k in range(factors):
            q, l = divmod(offset + k, s.n2)  # position of the kept entry inside each block
            A[k] = blocks[:, q, :, l]
            B[k, q, l] = 1.0
    else:  # random
        layer = KroneckerLinear(s, factors, bias=False)
        layer.reset_parameters(std=random_std)
        A, B = layer.A.detach().double(), layer.B.detach().double()
    if spec.scalars and scal is None:
        scal = torch.ones(factors, dtype=W.dtype)
    for t in (A, B) + ((scal,) if scal is not None else ()):
        if not torch.isfinite(t).all():
            raise UserError(f"the {init} initialisation of a {tuple(W.shape)} matrix with shape {s} gave non-finite "
                            f"factors (check --prune_eps and the model's weights); nothing was written")
    return A, B, scal


def diagonal_output_factors(W, s, factors, spec, moments, cache=None):
    """fisher's factors when the output moment is only a diagonal g (the logits' of a tied embedding: the V x V
    square would not fit): with the output index in A alone (m2 == 1, low rank among them) the rows are weighted
    by sqrt(g + damping), the input side whitened as aware does, and the weighting undone in A; otherwise (the
    output index split between the factors, which a diagonal weighting cannot follow factor by factor) the input
    side alone. moments = (C, g). Returns (A, B) rebalanced."""
    C, g = moments
    if s.m2 == 1:
        g = g.double()
        scale = (g + spec.g_damping * g.mean()).clamp_min(1e-30).sqrt()
        A, B, _ = aware_factors(W * scale[:, None], s, factors, C, spec.damping, cache)
        return balance(A / scale.view(1, -1, 1), B)
    A, B, _ = aware_factors(W, s, factors, C, spec.damping, cache)
    return balance(A, B)


def scaled_svd_factors(W, s, factors, init, moment):
    """The low-rank factors of ASVD ('asvd') and FWSVD ('fwsvd'): a diagonal scaling of one side of W, the
    truncated SVD of the scaled matrix, the scaling undone in that side's factor.
        asvd    W diag(d), d_j = a_j ** ASVD_ALPHA with a_j the activation scale of input channel j. ASVD takes
                the mean absolute activation; the scale here is the root mean square, sqrt(C_jj), read off the
                input moment every calibrated init collects (equal up to one constant for channels of the same
                distribution shape, which the SVD ignores; heavier-tailed channels get a larger scale).
        fwsvd   diag(w) W, w_i = sqrt(F_i) with F_i = sum_j E[(dL/dW_ij)^2], the diagonal Fisher of row i. Its
                per-token form E[g_i^2 ||x||^2] is estimated as E[g_i^2] E[||x||^2] (K-FAC's independence), so
                w_i is proportional to sqrt(G_ii) of the output-gradient moment (a constant the SVD ignores).
    moment: C for asvd, G (a square moment or its diagonal) for fwsvd. Returns (A, B) not yet rebalanced."""
    if not (s.n1 == 1 and s.m2 == 1):
        raise UserError(f"--init {init} is a low-rank method (a scaled truncated SVD); use --shape lowrank, or "
                        f"aware/fisher for Kronecker shapes")
    d = (moment.diagonal() if moment.dim() == 2 else moment).double().clamp_min(0)
    d = d.clamp_min(1e-12 * max(d.max().item(), 1e-300))  # a dead channel keeps a tiny scale, never 1/0
    if init == "asvd":
        scale = d.sqrt() ** ASVD_ALPHA
        A, B, _ = van_loan(W * scale[None, :], s, factors)
        return A, B / scale.view(1, 1, -1)
    weight = d.sqrt()
    A, B, _ = van_loan(W * weight[:, None], s, factors)
    return A / weight.view(1, -1, 1), B


# -----------------------------------------------------------------------------
# 4. errors and spectra

def output_error(W, W_hat, C=None):
    """||(W - W_hat) L|| / ||W L|| for C = L L^T (C = None: the relative Frobenius error)."""
    W = host(W)
    D = W - host(W_hat)
    if C is None:
        num, den = D.pow(2).sum(), W.pow(2).sum()
    else:
        C = C.double()
        num, den = ((D @ C) * D).sum(), ((W @ C) * W).sum()
    return math.sqrt(max(num.item(), 0.0) / den.item()) if den > 0 else 0.0


def fisher_error(W, W_hat, C, G):
    """The loss increase per token the K-FAC approximation predicts for replacing W by W_hat:
    tr(G (W - W_hat) C (W - W_hat)^T) / 2. G may be a vector: the diagonal of the gradient moment (the
    logits', whose full square would not fit)."""
    D = host(W) - host(W_hat)
    G = G.double()
    GD = G[:, None] * D if G.dim() == 1 else G @ D
    return 0.5 * ((GD @ C.double()) * D).sum().item()


def damped_moment(C, damping):
    """C + damping * mean(diag C) * I in float64, symmetrised: the moment a damped whitening L (L L^T) stands for,
    exactly when damping > 0 (whitening then always takes its Cholesky path: the condition number is at most
    1 + n / damping, far inside the pivot test's 1e10); None for a moment with no signal (the identity)."""
    C = C.double()
    C = 0.5 * (C + C.t())
    mean_diag = C.diagonal().mean().clamp_min(0)
    if mean_diag == 0:
        return None
    return C + damping * mean_diag * torch.eye(C.shape[0], dtype=torch.float64)


def smaller_side_gram(W, C, G, damping, g_damping, cache, inverse=True):
    """(gram, (T, T^-1)): the Gram matrix of M = R^T W L on W's smaller side, formed with that side's whitening
    T only (C and G damped, damping > 0): L^T (W^T G W) L with T = L when W has at least as many rows as
    columns, R^T (W C W^T) R with T = R otherwise. C or G None: the identity on that side."""
    out_dim, in_dim = W.shape
    if out_dim >= in_dim:
        Gd = damped_moment(G, g_damping) if G is not None else None
        gram = W.t() @ (Gd @ W if Gd is not None else W)
        _, T, _ = side_whitening(C, 1, in_dim, damping, cache, inverse)  # low rank: the input lives in B
    else:
        Cd = damped_moment(C, damping) if C is not None else None
        gram = (W @ Cd if Cd is not None else W) @ W.t()
        T, _, _ = side_whitening(G, out_dim, 1, g_damping, cache, inverse)  # and the output in A
    return T[0].t() @ gram @ T[0], T


def whitened_spectrum(W, C=None, G=None, damping=0.0, g_damping=1e-2, cache=None):
    """(sigma^2 descending, normaliser) of the whitened matrix: W L, or R^T W L with G (a square moment, or a
    vector: its diagonal, e.g. the logits'). The low-rank member's squared error at rank r is exactly
    sum(sigma^2[r:]) (whitening is exact for it on both sides); the normaliser makes it relative
    (||W L||^2, so every matrix counts alike) or, with G, the predicted loss increase (2).

    sigma^2 are the eigenvalues of the smaller Gram matrix of M = R^T W L, formed without the whitening of the
    larger side: M^T M = L^T (W^T G W) L when W has at least as many rows as columns, M M^T = R^T (W C W^T) R
    otherwise (C and G damped). The wide side's Cholesky factorisation and its product with W are never
    computed: for SmolLM2-1.7B's 8192 x 2048 matrices that halves the float64 work. With no damping the
    whitening may clamp a singular moment's directions, so M itself is formed then."""
    out_dim, in_dim = W.shape
    W = host(W)
    if G is not None and G.dim() == 1:
        g = G.double()
        W, G = (g + g_damping * g.mean()).sqrt()[:, None] * W, None  # a diagonal R: its rows scale W
        scaled = True
    else:
        scaled = False
    if (C is not None and damping <= 0) or (G is not None and g_damping <= 0):
        M = W
        if C is not None:
            M = M @ side_whitening(C, 1, in_dim, damping, cache, inverse=False)[1][0]
        if G is not None:
            M = side_whitening(G, out_dim, 1, g_damping, cache, inverse=False)[0][0].t() @ M
        gram = M.t() @ M if out_dim >= in_dim else M @ M.t()
    else:
        gram, _ = smaller_side_gram(W, C, G, damping, g_damping, cache, inverse=False)
    # sigma^2 as the eigenvalues of the Gram matrix (as van_loan does): 6x faster than svdvals for GPT-2 XL's
    # 1600x6400, exact to eps * sigma_max^2, far below any tail sum the allocator compares
    with lapack_threads(gram.shape[0]):
        sig2 = torch.linalg.eigvalsh(0.5 * (gram + gram.t())).flip(0).clamp_min(0)
    return sig2, (2.0 if G is not None or scaled else sig2.sum().item())
