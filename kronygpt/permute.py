"""
Function-preserving permutation of an MLP's hidden units before decomposition (TQCompressor permutes GPT-2's
rows and columns before its Kronecker decomposition). Reordering the hidden units - the rows of the up
matrices (c_fc; gate_proj and up_proj) and the matching columns of the down matrix - leaves the MLP's
function unchanged, but it changes which units share a block of A (x) B: for (512,576)x(3,1), units
3i, 3i+1, 3i+2 are rows i of A scaled by B's three entries. The right order makes those groups alike.

The order is found by alternating minimisation, each step never raising the error it minimises:
    1. decompose every matrix of the block in the current order (Van Loan, in the whitened space);
    2. assign units to positions by a linear assignment (scipy's Hungarian solver) with cost
       sum over matrices of ||unit u's row - the approximation's row at position p||^2;
repeated while the total error falls. Each unit's row is its up matrices' rows times the input whitening
(exact: the input is n_embd-dimensional and does not move) and its down column scaled by the square root of
its own input variance (a diagonal approximation of the hidden covariance, which the permutation moves).
The low-rank member is invariant under permutation (there is nothing to gain), so it is skipped.
"""

import torch
from scipy.optimize import linear_sum_assignment

from .factorize import host, van_loan, whitening
from .kronecker import kron_sum


def unit_features(mlp, family, moments, damping):
    """{name: (h, k) float64}: each hidden unit's row, for every MLP matrix (see the module docstring)."""
    feats = {}
    for name, up in family.mlp_matrices:
        W = host(getattr(mlp, name).weight)
        C = moments.get(name) if moments else None
        if up:
            feats[name] = W @ whitening(C, damping)[0] if C is not None else W      # (h, d)
        else:
            scale = C.double().diagonal().clamp_min(0).sqrt() if C is not None else torch.ones(W.shape[1])
            feats[name] = (W * scale).t()                                            # (h, d)
    return feats


def approximation(F, s, factors, up):
    """The Van Loan approximation of one matrix's unit rows F (h, k) in its own layout, returned as rows."""
    W = F if up else F.t()
    A, B, _ = van_loan(W, s, factors)
    W_hat = kron_sum(A, B)
    return W_hat if up else W_hat.t()


def grouped_order(feats, group):
    """A starting order that puts alike units side by side: greedily, the strongest unplaced unit and the
    group-1 unplaced units most parallel to it (|cosine| of their concatenated rows) form one group of
    consecutive positions, ordered within the group by norm (B's entries are shared by every group)."""
    F = torch.cat([f for f in feats.values()], dim=1)
    norms = F.norm(dim=1)
    U = F / norms.clamp_min(1e-30)[:, None]
    sim = (U @ U.t()).abs()
    free = torch.ones(len(F), dtype=torch.bool)
    order = []
    while free.any():
        lead = int(torch.where(free, norms, torch.tensor(-1.0, dtype=norms.dtype)).argmax())
        cand = torch.where(free, sim[lead], torch.tensor(-1.0, dtype=sim.dtype))
        members = cand.topk(min(group, int(free.sum()))).indices
        members = members[norms[members].argsort(descending=True)]
        order.extend(members.tolist())
        free[members] = False
    return torch.tensor(order)


def block_error(feats, specs, family, perm):
    """(total squared error, approximations) of decomposing the units in order perm."""
    approx = {n: approximation(feats[n][perm], *specs[n], up) for n, up in family.mlp_matrices if n in specs}
    return sum((feats[n][perm] - a).pow(2).sum().item() for n, a in approx.items()), approx


def find_permutation(feats, specs, family, iters=6):
    """(perm, error before, error after): perm[p] is the unit placed at position p. Starts from the better of
    the current order and grouped_order, then alternates decomposition and assignment."""
    h = next(iter(feats.values())).shape[0]
    up_shape = next(specs[n][0] for n, up in family.mlp_matrices if n in specs and up) \
        if any(up and n in specs for n, up in family.mlp_matrices) else None
    group = up_shape.m2 if up_shape is not None else next(specs[n][0].n2 for n in specs)
    first, _ = block_error(feats, specs, family, torch.arange(h))
    starts = [torch.arange(h)] + ([grouped_order(feats, group)] if group > 1 else [])
    perm = min(starts, key=lambda p: block_error(feats, specs, family, p)[0])
    best = None
    for _ in range(iters):
        err, approx = block_error(feats, specs, family, perm)
        if best is not None and err >= best[1] - 1e-12 * max(1.0, best[1]):
            break
        best = (perm, err)
        # cost[u, p] = sum_m ||F_m[u] - approx_m[p]||^2 (the ||F_m[u]||^2 term is the same for every p)
        cost = sum(-2 * feats[n] @ a.t() + a.pow(2).sum(1)[None, :] for n, a in approx.items())
        rows, cols = linear_sum_assignment(cost.numpy())
        new = torch.empty(h, dtype=torch.long)
        new[torch.as_tensor(cols)] = torch.as_tensor(rows)
        if torch.equal(new, perm):
            break
        perm = new
    return best[0], first, best[1]


@torch.no_grad()
def permute_mlp(mlp, family, perm):
    """Reorder the hidden units of a dense MLP in place: perm[p] is the unit that moves to position p."""
    for name, up in family.mlp_matrices:
        lin = getattr(mlp, name)
        if up:
            lin.weight.copy_(lin.weight[perm])
            if lin.bias is not None:
                lin.bias.copy_(lin.bias[perm])
        else:
            lin.weight.copy_(lin.weight[:, perm])


def permute_moments(moments, grads, family, perm):
    """The block's calibration statistics in the new order: the down matrices' input moments and the up
    matrices' output-gradient moments live on the hidden units."""
    moments = dict(moments or {})
    grads = dict(grads or {})
    for name, up in family.mlp_matrices:
        if not up and name in moments:
            moments[name] = moments[name][perm][:, perm]
        if up and name in grads:
            grads[name] = grads[name][perm][:, perm]
    return moments or None, grads or None
