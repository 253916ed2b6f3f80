"""
Structured pruning, the methods people use instead of factorising: whole blocks dropped by their measured
importance (ShortGPT), and MLP hidden units removed with the down projection refitted (Minitron- and
FLAP-style width pruning). Both leave plain dense matrices: a pruned model needs no new layer type, exports as a
standard Hugging Face model and runs as fast as any dense model of its size.

    influence = block_influence(dense, batches)        # ShortGPT's block influence, one number per block
    keep = most_influential(influence, k)              # the k blocks to keep, in model order
    small, rows = prune_width(dense, units, moments)   # every MLP keeps `units` hidden units

Width pruning, per block. The MLP is y = W_down h(x) with h the hidden activation (GELU, or SwiGLU's
silu(gate x) * up x): removing hidden unit i removes row i of every up matrix and column i of W_down. With
C = E[h h^T] over the calibration tokens (the down matrix's input moment, which calibration already collects),
keeping the units K and refitting W_down by least squares on the calibration activations,

    W_K = W_down C[:, K] (C[K, K] + d I)^-1,     error = tr((W_down - W_K P_K) C (W_down - W_K P_K)^T),

keeps the block's output as close as those units allow (SliceGPT- and ZipLM-style compensation, stronger than
FLAP's bias correction). Which units to keep (criterion):
    activation   Minitron's activation importance: the units with the largest activation scale (the root mean
                 square sqrt(C_ii), read off the moment), then the least-squares refit
    obs          optimal brain surgeon for whole units: remove, one at a time, the unit whose removal raises
                 the refitted error least, ||w_i||^2 / [C^-1]_ii with w_i the current column of W_down, and
                 update W_down and C^-1 as the removal's refit does (rank-one updates, exact least squares)
"""

import copy
import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from model import GPT

from .calib import BlockRunner
from .errors import UserError
from .progress import progress

WIDTH_CRITERIA = ("obs", "activation")


# -----------------------------------------------------------------------------
# depth: ShortGPT's block influence

@torch.no_grad()
def block_influence(model, batches):
    """[BI_l] for every block: 1 - the mean cosine similarity between the block's input and output hidden states
    over the calibration tokens (ShortGPT). A block that barely turns its input has a low influence."""
    runner = BlockRunner(model, batches, next(model.parameters()).device)
    out = []
    for layer in progress(range(model.config.n_layer), "block influence", unit="block"):
        before = runner.hidden
        runner.advance(layer)
        cos = [F.cosine_similarity(a.float(), b.float(), dim=-1).flatten() for a, b in zip(before, runner.hidden)]
        out.append(1.0 - torch.cat(cos).double().mean().item())
    return out


def most_influential(influence, k):
    """The indices of the k blocks of highest influence, in model order (ties: the earlier block)."""
    if not 1 <= k <= len(influence):
        raise UserError(f"cannot keep {k} of {len(influence)} blocks; keep between 1 and {len(influence)}")
    order = sorted(range(len(influence)), key=lambda i: (-influence[i], i))
    return sorted(order[:k])


# -----------------------------------------------------------------------------
# width: MLP hidden units kept, down projection refitted

def refit_down(W, C, keep, damping):
    """W_down restricted to the units `keep`, refitted by least squares on the moment C (module docstring), and
    the relative output error sqrt(err / tr(W C W^T)) of the result. W: (out, h) float64, C: (h, h)."""
    Cd = C + damping * C.diagonal().mean().clamp_min(0) * torch.eye(C.shape[0], dtype=C.dtype)
    K = torch.as_tensor(keep)
    W_K = torch.linalg.solve(Cd[K][:, K], (W @ Cd[:, K]).t()).t()
    D = W.clone()
    D[:, K] -= W_K
    den = ((W @ C) * W).sum().item()
    err = ((D @ C) * D).sum().item()
    return W_K, math.sqrt(max(err, 0.0) / den) if den > 0 else 0.0


def obs_keep(W, C, units, damping):
    """The `units` hidden units optimal brain surgeon keeps (module docstring): removal by removal, the unit
    whose removal with refit costs least."""
    h = C.shape[0]
    Cd = C + damping * C.diagonal().mean().clamp_min(0) * torch.eye(h, dtype=C.dtype)
    Hinv = torch.linalg.inv(Cd)
    Hinv = 0.5 * (Hinv + Hinv.t())
    W = W.clone()
    alive = torch.ones(h, dtype=torch.bool)
    for _ in range(h - units):
        d = Hinv.diagonal()
        cost = torch.where(alive, W.pow(2).sum(0) / d.clamp_min(1e-300), torch.full_like(d, float("inf")))
        j = int(cost.argmin())
        W -= torch.outer(W[:, j], Hinv[j]) / Hinv[j, j]
        Hinv -= torch.outer(Hinv[:, j], Hinv[j]) / Hinv[j, j]
        alive[j] = False
        W[:, j] = 0.0
        Hinv[j, :] = 0.0
        Hinv[:, j] = 0.0
        Hinv[j, j] = 1.0  # a removed unit stays out: its cost is never the minimum again (alive masks it)
    return alive.nonzero().flatten().tolist()


def width_units(config, target, base_model):
    """The number of hidden units per MLP whose model's total is nearest `target` parameters (every block alike)."""
    def total(units):
        with torch.device("meta"):
            return GPT(replace(config, mlp_hidden=units, kron_plan="")).param_counts()["total"]
    t0, t1 = total(1), total(2)
    per_unit = t1 - t0
    units = max(1, min(config.mlp_hidden, round(1 + (target - t0) / per_unit)))
    if abs(total(units) - target) / target > 0.02:
        raise UserError(f"--target_params {target:,} cannot be met by width pruning: MLP widths 1..{config.mlp_hidden} "
                        f"give {t0:,} to {base_model:,} parameters")
    return units


def unit_params(config):
    """Parameters of one MLP hidden unit: its row of every up matrix (and bias), its column of the down matrix."""
    return len(config.family.up) * (config.n_embd + config.bias) + len(config.family.down) * config.n_embd


def width_curve(W, C, G=None, damping=1e-4, grid=64):
    """[(units, predicted loss increase)] of one MLP narrowed to each multiple of `grid` hidden units (and its
    full width), keeping the units of largest activation scale (Minitron's order) with W_down refitted, so every
    point is a narrower prefix of that order. The error is the K-FAC loss increase tr(G D C D^T) / 2 of the
    change D of W_down (fisher_error's units; G None: the identity, the plain output error).

    All points come from one Cholesky factor: with the units in that order, C = L L^T and Y = L^-1 (W C)^T, the
    refit to the first k units leaves D C D^T = W C W^T - Y[:k]^T Y[:k] (the leading block of L^-1 is the inverse
    of L's leading block), so the error at every k is a cumulative sum of y_j^T G y_j. C is damped as in the refit.
    W: (out, h) float64, C: (h, h), G: (out, out) or None."""
    h = C.shape[0]
    Cd = C + damping * C.diagonal().mean().clamp_min(0) * torch.eye(h, dtype=C.dtype)
    order = torch.argsort(C.diagonal(), descending=True)
    L = torch.linalg.cholesky(Cd[order][:, order])
    Y = torch.linalg.solve_triangular(L, (W @ Cd)[:, order].t(), upper=False)   # (h, out)
    GY = Y if G is None else Y @ G.double()
    gain = (GY * Y).sum(1)                                                       # y_j^T G y_j
    WG = W if G is None else G.double() @ W
    full = ((WG @ Cd) * W).sum()
    left = full - torch.cumsum(gain, 0)                                          # error with the first k+1 units
    ks = sorted(set(range(grid, h, grid)) | {h})
    return [(k, 0.5 * max(left[k - 1].item(), 0.0)) for k in ks], order


def allocate_widths(dense, moments, grads, target, grid=64, log=print):
    """(per-block widths, predicted loss increase): how many hidden units each MLP keeps so that the model has at
    most `target` parameters and the summed predicted loss increase (width_curve, with the down matrices' output
    gradient moments when given) is least; the exact multiple-choice knapsack of planner.allocate_points."""
    from .planner import allocate_points, chosen_error
    config = dense.config
    (down,) = config.family.down
    per_unit = unit_params(config)
    fixed = dense.param_counts()["total"] - config.n_layer * config.mlp_hidden * per_unit
    points = {}
    for b in progress(range(config.n_layer), "width curves", unit="block"):
        W = dense.matrix(b, down).weight.detach().cpu().double()
        G = grads.get((b, down)) if grads else None
        curve, _ = width_curve(W, moments[(b, down)].double(), G, grid=grid)
        points[b] = [(k * per_unit, err, k) for k, err in curve]
    budget = target - fixed
    if budget < config.n_layer * grid * per_unit:
        raise UserError(f"--target_params {target:,} leaves {max(budget, 0):,} parameters for the MLPs, fewer than "
                        f"{grid} hidden units in each block need; raise --target_params")
    choice, _ = allocate_points(points, budget, log=log)
    return [choice[b] for b in range(config.n_layer)], chosen_error(points, choice)


def prune_width(dense, units, moments, criterion="obs", damping=1e-4, log=print):
    """(model, rows): a copy of `dense` whose every MLP keeps `units` hidden units, chosen by `criterion`
    (WIDTH_CRITERIA), with W_down refitted on the calibration moments {(layer, down name): C}; one report row per
    block (units kept, relative output error of its MLP on the calibration activations).

    Args:
        dense: the dense model (left unchanged).
        units: hidden units kept in every MLP (1..mlp_hidden), or a list of one per block (mlp_widths).
        moments: the down matrices' input moments, as calib.collect_moments gives them.
        criterion: 'obs' or 'activation' (the module docstring).
        damping: relative damping of C in the refit.
        log: where each block's line goes.
    """
    config, fam = dense.config, dense.config.family
    if criterion not in WIDTH_CRITERIA:
        raise UserError(f"--width_criterion must be one of {', '.join(WIDTH_CRITERIA)}, got {criterion!r}")
    if config.is_factorized or config.widths:
        raise UserError("width pruning keeps dense matrices of one width: pass the dense model")
    widths = [units] * config.n_layer if isinstance(units, int) else list(units)
    if len(widths) != config.n_layer or not all(1 <= u <= config.mlp_hidden for u in widths):
        raise UserError(f"--width {units} must be between 1 and the MLP width {config.mlp_hidden} (one per block)")
    uniform = len(set(widths)) == 1
    small = GPT(replace(config, mlp_hidden=widths[0]) if uniform else
                replace(config, mlp_widths=",".join(map(str, widths))))
    (down,) = fam.down
    sd = copy.copy(dense.state_dict())
    rows = []
    for b in progress(range(config.n_layer), f"width pruning ({criterion})", unit="block"):
        W = dense.matrix(b, down).weight.detach().cpu().double()
        C = moments[(b, down)].double()
        units = widths[b]
        if units == config.mlp_hidden:  # a block kept at full width is copied as it is
            rows.append(dict(layer=b, matrix="mlp", kind="dense", units=units, output_error=0.0, rel_error=0.0,
                             norm_ratio=1.0))
            continue
        keep = obs_keep(W, C, units, damping) if criterion == "obs" else \
            sorted(torch.argsort(C.diagonal(), descending=True)[:units].tolist())
        W_K, err = refit_down(W, C, keep, damping)
        idx = torch.as_tensor(keep)
        prefix = f"transformer.h.{b}.mlp."
        for name in fam.up:
            sd[prefix + name + ".weight"] = sd[prefix + name + ".weight"][idx]
            if prefix + name + ".bias" in sd:
                sd[prefix + name + ".bias"] = sd[prefix + name + ".bias"][idx]
        sd[prefix + down + ".weight"] = W_K.to(sd[prefix + down + ".weight"].dtype)
        rows.append(dict(layer=b, matrix="mlp", kind=f"width {units}", units=units, output_error=err,
                         rel_error=err, norm_ratio=W_K.norm().item() / max(W.norm().item(), 1e-30)))
        log(f"block {b}: kept {units} of {config.mlp_hidden} hidden units ({criterion}), MLP output error {err:.4f}")
    small.load_state_dict(sd)
    small.tokenizer_name = getattr(dense, "tokenizer_name", "gpt2")
    return small.to(next(dense.parameters()).device).train(dense.training), rows
