"""
Decomposition: turn a dense model's matrices into sums of Kronecker products as a plan says, with one of
several initialisations, optionally calibrated on real activations. kron_decomp.py is its command line;
train_distillation.py uses it for students built on the fly and for progressive replacement.

Initialisations of one (out, in) matrix W with factor shapes s and r factors (maths in kronecker.py):
    vl        Van Loan-Pitsianis: the top r singular triplets of the rearranged R(W), the best r-term
              Kronecker approximation in Frobenius norm. For the low-rank shape it is the truncated SVD.
    vl_norm   vl rescaled so ||sum A(x)B||_F = ||W||_F (into A and B, or into per-factor scalars).
    prune     B is a one-hot selector and A keeps one entry of every (m2, n2) block of W (Krony-PT's 96M init).
    random    factors whose product has the dense init's scale.
    aware     activation-aware: minimises E||(W - W_hat) x||^2 = ||(W - W_hat) L||_F^2 over the calibration
              inputs, C = E[x x^T] = L L^T. When the input side of one factor is trivial (n1 = 1 or n2 = 1,
              e.g. low rank) the covariance acts on the other factor alone, so Van Loan of W L followed by
              L^-1 on that factor is exact (SVD-LLM's truncation-aware whitening). Otherwise C is replaced by
              its nearest Kronecker-factored PSD approximation C1 (x) C2, L = L1 (x) L2, and the result is
              optimal for that approximate covariance (reported as approximate).
    fisher    aware on both sides: also whitens the output by G = E[g g^T], the second moment of the loss
              gradient with respect to the matrix's output (the empirical Fisher, K-FAC's output factor), so
              it minimises the predicted loss increase tr(G dW C dW^T) / 2 rather than the output error.
              Exact for the low-rank member (the output index lives in A, the input index in B).
              Both return factor pairs rebalanced to equal norms (kronecker.balance), Van Loan's split.
The output error of a decomposition is ||(W - W_hat) L|| / ||W L|| with the calibration covariance (without
calibration, C = I: the relative Frobenius error).
"""

import copy
import math

import torch

from .calib import HEAD, BlockRunner
from .errors import UserError
from .kronecker import (KronShape, KroneckerEmbedding, KroneckerLinear, balance, kron_sum, lapack_threads, rearrange,
                       van_loan)

INITS = ("vl", "vl_norm", "prune", "random", "aware", "fisher")


# -----------------------------------------------------------------------------
# whitening

def whitening(C, damping=0.0):
    """(L, L^-1) with L L^T = C + damping * mean(diag C) * I (float64). Any such L gives the same factors
    (an orthogonal Q in L Q cancels in the truncated SVD of W L Q and in (L Q)^-1), so with damping the
    Cholesky factor is used: with its inverse, 3-4x faster than eigh for the 1536-wide covariances of
    SmolLM2, which made eigh most of the allocation's time. Without damping, or when Cholesky finds C not safely positive
    definite, eigh runs instead and clamps directions whose eigenvalue is below 1e-10 of the largest, so a
    singular or tiny C still gives finite factors."""
    C = C.double()
    C = 0.5 * (C + C.t())
    n = C.shape[0]
    mean_diag = C.diagonal().mean().clamp_min(0)
    eye = torch.eye(n, dtype=torch.float64)
    if mean_diag == 0:  # no signal at all: the identity (plain Frobenius error)
        return eye, eye
    C = C + damping * mean_diag * eye
    with lapack_threads():
        if damping > 0:
            L, info = torch.linalg.cholesky_ex(C)
            # the pivots bound the spectrum from below (lambda_min <= min pivot): a tiny one means C is
            # nearly singular, where eigh's clamping is the safer route
            pivots = L.diagonal().pow(2)
            if info == 0 and pivots.min() > 1e-10 * pivots.max():
                return L, torch.linalg.solve_triangular(L, eye, upper=False)
        evals, U = torch.linalg.eigh(C)
    evals = evals.clamp_min(evals.max() * 1e-10)
    root = evals.sqrt()
    return U * root, (U / root).t()


def nearest_kron_psd(C, n1, n2):
    """(C1, C2), PSD, n1 x n1 and n2 x n2, with C1 (x) C2 nearest to C in Frobenius norm (one Van Loan term:
    the top singular pair of a PSD matrix's rearrangement gives PSD factors up to a common sign). Only the
    top pair is needed, so a few subspace iterations replace the full decomposition."""
    R = rearrange(C.double(), KronShape(n1, n1, n2, n2))  # (n1*n1, n2*n2)
    with lapack_threads():
        U, S, V = torch.svd_lowrank(R, q=min(4, *R.shape), niter=8)
    C1 = (U[:, 0] * S[0].sqrt()).reshape(n1, n1)
    C2 = (V[:, 0] * S[0].sqrt()).reshape(n2, n2)
    if C1.trace() < 0:
        C1, C2 = -C1, -C2
    psd = [0.5 * (M + M.t()) for M in (C1, C2)]
    out = []
    for M in psd:
        with lapack_threads():
            evals, U = torch.linalg.eigh(M)
        out.append((U * evals.clamp_min(0)) @ U.t())
    return out[0], out[1]


def side_whitening(C, d1, d2, damping=0.0, cache=None):
    """Whitening of one side of a matrix whose index on that side is (d1, d2) = (n1, n2) for the input
    (C = E[x x^T]) or (m1, m2) for the output (C = E[g g^T], the output gradients' second moment). Returns
    ((T1, T1inv), (T2, T2inv), exact): the side's whitening is T1 (x) T2, with T1 acting on factor A and
    T2 on factor B. When d2 == 1 (or d1 == 1) the side's index lives in A (or B) alone and the whitening is
    C's own (exact); otherwise it is that of C's nearest Kronecker-factored approximation C1 (x) C2.
    C = None is the identity. cache: a dict to reuse results for the same C (gate and up share their input;
    plan candidates share everything)."""
    one = torch.ones(1, 1, dtype=torch.float64)
    if C is None:
        return (torch.eye(d1, dtype=torch.float64),) * 2, (torch.eye(d2, dtype=torch.float64),) * 2, True
    key = (id(C), "A" if d2 == 1 else "B" if d1 == 1 else d1, damping)
    if cache is not None and key in cache:
        return cache[key]
    if d2 == 1:
        out = whitening(C, damping), (one, one), True
    elif d1 == 1:
        out = (one, one), whitening(C, damping), True
    else:
        C1, C2 = nearest_kron_psd(C, d1, d2)
        out = whitening(C1, damping), whitening(C2, damping), False
    if cache is not None:
        cache[key] = out
    return out


def aware_factors(W, s, factors, C, damping=0.0, cache=None, G=None, g_damping=1e-2):
    """Factors minimising ||R^T (W - sum A (x) B) L||_F with C = L L^T (inputs) and G = R R^T (output
    gradients; None: the identity, so only the inputs count). Both sides are whitened, Van Loan runs on
    R^T W L, and the whitening is undone factor by factor:
        (RA (x) RB)^T (A (x) B) (LA (x) LB) = (RA^T A LA) (x) (RB^T B LB).
    Returns (A, B, exact): exact when each side's whitening acts on one factor only (see side_whitening)."""
    W = W.double()
    (LA, LAi), (LB, LBi), in_exact = side_whitening(C, s.n1, s.n2, damping, cache)
    Wt = W @ torch.kron(LA, LB)
    if G is None:
        A, B, _ = van_loan(Wt, s, factors)
        return A @ LAi, B @ LBi, in_exact
    (RA, RAi), (RB, RBi), out_exact = side_whitening(G, s.m1, s.m2, g_damping, cache)
    A, B, _ = van_loan(torch.kron(RA, RB).t() @ Wt, s, factors)
    return RAi.t() @ A @ LAi, RBi.t() @ B @ LBi, in_exact and out_exact


def fisher_error(W, W_hat, C, G):
    """The loss increase per token the K-FAC approximation predicts for replacing W by W_hat:
    tr(G (W - W_hat) C (W - W_hat)^T) / 2."""
    D = W.double() - W_hat.double()
    return 0.5 * ((G.double() @ D @ C.double()) * D).sum().item()


def output_error(W, W_hat, C=None):
    """||(W - W_hat) L|| / ||W L|| for C = L L^T (C = None: the relative Frobenius error)."""
    W, D = W.double(), (W.double() - W_hat.double())
    if C is None:
        num, den = D.pow(2).sum(), W.pow(2).sum()
    else:
        C = C.double()
        num, den = ((D @ C) * D).sum(), ((W @ C) * W).sum()
    return math.sqrt(max(num.item(), 0.0) / den.item()) if den > 0 else 0.0


# -----------------------------------------------------------------------------
# one matrix

def init_factors(W, s, factors, init, scalars=False, prune_keep="even", prune_eps=0.0, random_std=0.02,
                 C=None, damping=0.0, cache=None, G=None, g_damping=1e-2):
    """Factors for one (out, in) matrix W: (A (r,m1,n1), B (r,m2,n2), scalars (r,) or None)."""
    if factors > s.max_rank:
        raise UserError(f"{factors} factors exceed the maximum Kronecker rank {s.max_rank} of shape {s}; "
                        f"use at most {s.max_rank} factors or another shape")
    W = W.detach().double()
    scal = None
    if init in ("vl", "vl_norm"):
        A, B, _ = van_loan(W, s, factors)
        if init == "vl_norm":
            approx = torch.linalg.norm(kron_sum(A, B))
            alpha = (torch.linalg.norm(W) / approx).item() if approx > 0 else 1.0  # an all-zero W stays zero
            if scalars:
                scal = torch.full((factors,), alpha, dtype=W.dtype)
            else:
                A, B = A * math.sqrt(alpha), B * math.sqrt(alpha)
    elif init in ("aware", "fisher"):
        if C is None or (init == "fisher" and G is None):
            raise UserError(f"--init {init} needs calibration data: pass --calib DATASET")
        A, B = balance(*aware_factors(W, s, factors, C, damping, cache, G if init == "fisher" else None, g_damping)[:2])
    elif init == "prune":
        block = s.m2 * s.n2
        offset = 0 if prune_keep == "even" else 1
        if factors + offset > block:
            raise UserError(f"prune keeps one entry of every {s.m2}x{s.n2} block per factor, so shape {s} allows at "
                            f"most {block - offset} factors with --prune_keep {prune_keep}")
        blocks = W.reshape(s.m1, s.m2, s.n1, s.n2)
        A = torch.empty(factors, s.m1, s.n1, dtype=W.dtype)
        B = torch.full((factors, s.m2, s.n2), prune_eps, dtype=W.dtype)
        for k in range(factors):
            q, l = divmod(offset + k, s.n2)  # position of the kept entry inside each block
            A[k] = blocks[:, q, :, l]
            B[k, q, l] = 1.0
    elif init == "random":
        layer = KroneckerLinear(s, factors, bias=False)
        layer.reset_parameters(std=random_std)
        A, B = layer.A.detach().double(), layer.B.detach().double()
    else:
        raise UserError(f"unknown init {init!r}; use one of {', '.join(INITS)}")
    if scalars and scal is None:
        scal = torch.ones(factors, dtype=W.dtype)
    for t in (A, B) + ((scal,) if scal is not None else ()):
        if not torch.isfinite(t).all():
            raise UserError(f"the {init} initialisation of a {tuple(W.shape)} matrix with shape {s} gave non-finite "
                            f"factors (check --prune_eps and the model's weights); nothing was written")
    return A, B, scal


def is_lowrank(s):
    """Whether s is the low-rank member of the family ((out,1)x(1,in) or (1,in)x(out,1))."""
    return (s.n1 == 1 and s.m2 == 1) or (s.m1 == 1 and s.n2 == 1)


def describe(s, factors):
    return f"low rank {factors}" if is_lowrank(s) else f"{factors} x {s}"


# -----------------------------------------------------------------------------
# a model

def replace_matrices(model, layer, names, init, moments=None, damping=0.0, prune_keep="even", prune_eps=0.0,
                     grads=None, g_damping=1e-2, cache=None):
    """Swap the dense matrices `names` of block `layer` for Kronecker ones as model.config plans them,
    initialised from the dense weights. moments: {name: E[x x^T]} for 'aware' and the calibrated error;
    grads: {name: E[g g^T]} of the outputs' loss gradients for 'fisher' and the predicted loss increase.
    Returns one report row per matrix."""
    cfg = model.config
    specs = cfg.matrix_specs(layer)
    block = model.transformer.h[layer]
    rows, cache = [], {} if cache is None else cache
    for name in names:
        dense = block.matrix(name)
        if isinstance(dense, KroneckerLinear):
            raise UserError(f"block {layer}'s {name} is already Kronecker; pass the dense model")
        s, factors = specs[name]
        std = 0.02 / math.sqrt(2 * cfg.n_layer) if name in cfg.family.down or name == "attn.c_proj" else 0.02
        C = moments.get(name) if moments else None
        G = grads.get(name) if grads else None
        A, B, scal = init_factors(dense.weight, s, factors, init, cfg.kron_scalars, prune_keep, prune_eps, std,
                                  C, damping, cache, G, g_damping)
        kl = KroneckerLinear(s, factors, bias=dense.bias is not None, scalars=cfg.kron_scalars,
                             impl=cfg.kron_impl).to(device=dense.weight.device, dtype=dense.weight.dtype)
        with torch.no_grad():
            kl.A.copy_(A)
            kl.B.copy_(B)
            if scal is not None:
                kl.scalars.copy_(scal)
            if dense.bias is not None:
                kl.bias.copy_(dense.bias)
        W, W_hat = dense.weight.detach(), kl.weight.detach()
        row = dict(layer=layer, matrix=name, shape=str(s), factors=factors, kind=describe(s, factors),
                   params=kl.A.numel() + kl.B.numel(), rel_error=output_error(W, W_hat),
                   norm_ratio=torch.linalg.norm(W_hat.double()).item() / max(torch.linalg.norm(W.double()).item(), 1e-30))
        if C is not None:
            row["output_error"] = output_error(W, W_hat, C)
        if C is not None and G is not None:
            row["fisher_error"] = fisher_error(W, W_hat, C, G)
        if init in ("aware", "fisher"):  # whitening is exact when each side's index lives in one factor
            exact = (s.n1 == 1 or s.n2 == 1) and (init == "aware" or s.m1 == 1 or s.m2 == 1)
            row["whitening"] = "exact" if exact else "kronecker-factored"
        rows.append(row)
        block.set_matrix(name, kl)
    return rows


def replace_mlp(model, layer, init, prune_keep="even", prune_eps=0.0):
    """Every planned MLP matrix of block `layer`, without calibration (progressive replacement)."""
    names = [n for n in model.config.family.block_matrices if n in model.config.matrix_specs(layer)]
    return replace_matrices(model, layer, names, init, prune_keep=prune_keep, prune_eps=prune_eps)


def kron_config(config, factors, shape, scalars=False, layers=None):
    """config with the uniform Kronecker MLP shorthand set (layers=None means every block)."""
    return type(config).from_dict({
        **config.to_dict(), "kron_factors": factors, "kron_shape": tuple(shape), "kron_scalars": scalars,
        "kron_plan": "", "kron_layers": None if layers is None or sorted(layers) == list(range(config.n_layer))
        else tuple(layers)})


def plan_config(config, plan, scalars=False, layers=None):
    """config with a per-block plan string (layers: the blocks that are Kronecker now; None: all planned)."""
    return type(config).from_dict({
        **config.to_dict(), "kron_factors": 0, "kron_shape": (), "kron_plan": plan, "kron_scalars": scalars,
        "kron_layers": None if layers is None or sorted(layers) == list(range(config.n_layer)) else tuple(layers)})


def decompose_model(dense, factors=0, shape=(), init="vl", layers=None, scalars=False, prune_keep="even",
                    prune_eps=0.0, *, plan=None, config=None, calib=None, moments=None, sequential=False,
                    damping=0.0, grads=None, g_damping=1e-2, cache=None, permute=False, log=None):
    """A copy of `dense` (left unchanged) whose matrices follow a plan, and one report row per decomposed
    matrix. The plan is `config` (a GPTConfig with one), or `plan` (a plan string, plans.py), or the uniform
    `factors` x `shape` (A's shape for the up matrices) over `layers` (None: every block). Calibration (required by 'aware'; with other inits it adds the calibrated output
    error to the report) is either `moments`, {(layer, name): E[x x^T]} collected on the dense model, or
    `calib`, a list of token batches (B, T) to collect them on as the decomposition proceeds. sequential:
    each block's moments come from the model with the blocks before it (and its own up matrices) already
    compressed. grads: {(layer, name): E[g g^T]} of the dense model's output gradients ('fisher').
    cache: whitenings already computed for these moments (see side_whitening). permute: reorder each MLP's
    hidden units first (permute.py; function-preserving) so that the decomposition loses less."""
    if dense.config.is_factorized:
        raise UserError("the model already has Kronecker matrices; pass the dense model it came from")
    if init in ("aware", "fisher") and calib is None and moments is None or init == "fisher" and grads is None:
        raise UserError(f"--init {init} needs calibration data: pass --calib DATASET")
    if config is None:
        config = plan_config(dense.config, plan, scalars, layers) if plan else \
            kron_config(dense.config, factors, shape, scalars, layers)
    model = copy.deepcopy(dense).eval()
    model.config = config
    plan = config.plan()
    fam = config.family
    runner = BlockRunner(model, calib, next(model.parameters()).device) if calib is not None else None
    rows = []

    def replace(layer, names, block_moments, g):
        """Permute the block's hidden units first if asked, then decompose the listed matrices."""
        note = {}
        specs = config.matrix_specs(layer)
        mlp_names = [n for n in names if n not in fam.attn_matrices]  # only MLP hidden units are permuted
        if permute and mlp_names and not all(is_lowrank(specs[n][0]) for n in mlp_names):
            from .permute import find_permutation, permute_mlp, permute_moments, unit_features
            mlp = model.transformer.h[layer].mlp
            feats = unit_features(mlp, fam, block_moments, damping)
            perm, before, after = find_permutation(feats, {n: specs[n] for n in mlp_names}, fam)
            permute_mlp(mlp, fam, perm)
            block_moments, g = permute_moments(block_moments, g, fam, perm)
            note = dict(permute_error_before=before, permute_error_after=after)
            if log:
                log(f"block {layer}: permutation lowers the decomposition error {before:.4g} -> {after:.4g}")
        out = replace_matrices(model, layer, names, init, block_moments, damping, prune_keep, prune_eps, g, g_damping,
                               cache)
        return [{**r, **note} for r in out]

    for layer in range(config.n_layer):
        names = [n for n in fam.block_matrices if n in plan.get(layer, {})]
        g = {n: grads[(layer, n)] for n in names} if grads is not None else None
        if runner is None:
            given = {n: moments[(layer, n)] for n in names} if moments is not None else None
            rows += replace(layer, names, given, g)
            continue
        if not names:
            runner.advance(layer)
            continue
        block = model.transformer.h[layer]
        if sequential:  # each matrix on the inputs the already-compressed ones before it produce
            for group in (fam.attn_matrices[:1], fam.attn_matrices[1:], fam.up, fam.down):
                todo = [n for n in names if n in group]
                if not todo:
                    continue
                block_moments = runner.moments(layer, {n: block.matrix(n) for n in todo})
                rows += replace_matrices(model, layer, todo, init, block_moments, damping, prune_keep, prune_eps, g,
                                         g_damping)
            runner.advance(layer)
        else:  # the dense block's inputs everywhere: moments first, then the dense block moves the states on
            block_moments = runner.moments(layer, {n: block.matrix(n) for n in names})
            runner.advance(layer)
            rows += replace(layer, names, block_moments, g)
        if log and names:
            errs = [r["output_error"] for r in rows if r["layer"] == layer]
            log(f"block {layer}: {len(names)} matrices, mean output error {sum(errs) / len(errs):.4f}")
    if config.embed_spec() is not None:
        C = runner.head_moment() if runner is not None else (moments or {}).get(HEAD)
        rows.append(replace_embedding(model, init, C, (grads or {}).get(HEAD), damping, g_damping))
    return model.train(dense.training), rows


def replace_embedding(model, init, C=None, g_diag=None, damping=0.0, g_damping=1e-2):
    """Swap the dense token embedding (and the lm_head tied to it) for one KroneckerEmbedding as the plan
    says. C: the second moment of the lm_head's input (final hidden states), for 'aware' and 'fisher';
    g_diag: the diagonal of the logits' loss-gradient second moment, which 'fisher' uses as the output
    weighting when the vocabulary index lives in A alone (m2 == 1, e.g. low rank; the full V x V moment
    is never formed); otherwise 'fisher' weights the input side only. Returns the report row."""
    cfg = model.config
    s, factors = cfg.embed_spec()
    wte = model.transformer.wte
    if isinstance(wte, KroneckerEmbedding):
        raise UserError("the embedding is already factorised; pass the dense model")
    W = W0 = wte.weight.detach().double()
    kind = "aware" if init == "fisher" else init
    scale = None
    if init == "fisher" and g_diag is not None and s.m2 == 1:
        scale = (g_diag.double() + g_damping * g_diag.double().mean()).clamp_min(1e-30).sqrt()  # R = diag(scale)
        W = W * scale[:, None]
    A, B, scal = init_factors(W, s, factors, kind, cfg.kron_scalars, C=C, damping=damping)
    if scale is not None:
        A, B = balance(A / scale.view(1, -1, 1), B)
    emb = KroneckerEmbedding(s, factors, bias=False, scalars=cfg.kron_scalars, impl=cfg.kron_impl).to(wte.weight)
    with torch.no_grad():
        emb.A.copy_(A)
        emb.B.copy_(B)
        if scal is not None:
            emb.scalars.copy_(scal)
    W_hat = emb.weight.detach()
    row = dict(layer="embed", matrix="wte", shape=str(s), factors=factors, kind=describe(s, factors),
               params=emb.A.numel() + emb.B.numel(), rel_error=output_error(wte.weight, W_hat),
               norm_ratio=torch.linalg.norm(W_hat.double()).item() / max(torch.linalg.norm(W0).item(), 1e-30))
    if C is not None:
        row["output_error"] = output_error(W0, W_hat, C)
    if C is not None and g_diag is not None and cfg.tie_embeddings:  # the tied lm_head's share, diagonal G
        D = W0 - W_hat.double()
        row["fisher_error"] = 0.5 * ((g_diag.double()[:, None] * (D @ C.double())) * D).sum().item()
    if init in ("aware", "fisher"):
        exact = (s.n1 == 1 or s.n2 == 1) and (init == "aware" or scale is not None)
        row["whitening"] = "exact" if exact else "kronecker-factored"
    model.transformer.wte = emb
    if cfg.tie_embeddings:
        model.lm_head = emb
    return row
