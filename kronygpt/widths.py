"""
Width as a family of the allocator (--allocate --families lowrank,width): one budget spent across every block's
MLP, which either keeps its matrices at full width, each dense or low rank at its own rank, or becomes a plain
narrower MLP (width pruning: the hidden units of largest activation scale kept, W_down refitted), and every
attention matrix, dense or low rank. One multiple-choice knapsack (planner.allocate_points, exact) decides, all
choices scored on the same criterion: with fisher's output gradients the K-FAC predicted loss increase
tr(G D C D^T) / 2 of each change D, both moments damped as the low-rank curves damp them.

    plan, widths = width_plan(dense, target, request, init, stats)   # widths[b] < mlp_hidden: block b narrowed

A block's MLP is one group of the knapsack: its options are the narrower widths (prune.width_curve) and the
Pareto frontier of its matrices' own options combined (every pair of costs summed, dominated sums dropped), so
the allocator never narrows a block and factorises its MLP at once (a narrowed MLP stays dense: plain matrices,
fast everywhere). Errors add across matrices and blocks, as the low-rank allocation already assumes.
"""

import time

import numpy as np

from .errors import UserError
from .mixed import damped
from .plans import MatrixSpec, Plan
from .progress import progress
from .prune import unit_params, width_curve
from .kronecker import KronShape


def combine(option_lists):
    """The Pareto frontier of one choice from each list of (cost, error, choice) options: [(cost, error,
    (choice, ...))], cheapest first, each strictly lower in error than every cheaper one."""
    front = [(0, 0.0, ())]
    for opts in option_lists:
        costs = np.add.outer([c for c, _, _ in front], [c for c, _, _ in opts]).ravel()
        errs = np.add.outer([e for _, e, _ in front], [e for _, e, _ in opts]).ravel()
        order = np.lexsort((errs, costs))
        keep, best = [], np.inf
        for k in order:
            if errs[k] < best:
                keep.append(k)
                best = errs[k]
        n = len(opts)
        front = [(int(costs[k]), float(errs[k]), front[k // n][2] + (opts[k % n][2],)) for k in keep]
    return front


def width_points(dense, stats, block, grid, damping, g_damping):
    """The narrower widths of one block's MLP as knapsack options: (weight parameters, predicted error,
    ('width', units)) for every multiple of `grid` below the full width."""
    config = dense.config
    (down,) = config.family.down
    h, per_unit = config.mlp_hidden, unit_params(config) - len(config.family.up) * config.bias
    W = dense.matrix(block, down).weight.detach().cpu().double()
    G = stats.grads.get((block, down)) if stats.grads else None
    curve, _ = width_curve(W, stats.moments[(block, down)].double(), None if G is None else damped(G, g_damping),
                           damping=damping, grid=grid)
    return [(k * per_unit, err, ("width", k)) for k, err in curve if k < h]


def width_plan(dense, target, request, init, stats, log=print):
    """(Plan of the factorised matrices, per-block MLP widths) under `target` parameters, least summed error
    (module docstring). request: the PlanRequest (scope 'mlp' or 'blocks', rank_multiple, layers); init: the
    InitSpec (its damping); stats: calibration Stats with the input moments (and grads for fisher units)."""
    from .planner import allocate_points, chosen_error, lowrank_curves, lowrank_points, matrices, param_base
    config, r = dense.config, request
    if stats.moments is None:
        raise UserError("--families width narrows MLPs on calibrated moments: give --calib DATASET")
    if r.scope not in ("mlp", "blocks"):
        raise UserError("--families width allocates over the blocks: use --scope mlp or blocks")
    if config.widths:
        raise UserError("--families width takes a model whose MLPs have one width: pass the dense model")
    t0 = time.time()
    layers = list(r.layers) if r.layers is not None else list(range(config.n_layer))
    mats = matrices(config, layers, r.scope)
    base, _ = param_base(config, layers, r.scope)
    if target <= base:
        raise UserError(f"--target_params {target:,} is below the {base:,} parameters outside the matrices "
                        f"--scope {r.scope} may change; raise it or widen --scope")
    lowrank = any(f.kind == "lowrank" for f in r.families)  # '--families width' alone: narrower or dense
    curves = lowrank_curves(dense, stats.moments, mats, init.damping, stats.grads, init.g_damping, stats.cache) \
        if lowrank else {}
    own = {(b, n): (lowrank_points(curves[(b, n)], o, i, 1.0, r.rank_multiple) if lowrank else []) +
           [(o * i, 0.0, "dense")] for b, n, o, i in mats}
    mlp = [n for n, _ in config.family.mlp_matrices]
    grid = max(1, config.mlp_hidden // 24)
    points = {k: v for k, v in own.items() if k[1] not in mlp}
    full = {}  # each block's MLP at full width: the Pareto frontier of its matrices' own options
    for b in progress(layers, "width options", unit="block"):
        # width units are priced by their weights alone (the budget here counts weights; a GPT-2 MLP's up
        # biases shrink with it too, a few hundred parameters the final count includes)
        full[b] = combine([own[(b, n)] for n in mlp])
        points[(b, "mlp")] = full[b] + width_points(dense, stats, b, grid, init.damping, init.g_damping)
    choice, used = allocate_points(points, target - base, log)
    err = chosen_error(points, choice)
    widths, specs = [config.mlp_hidden] * config.n_layer, {}
    dims = config.matrix_dims()
    for (b, n), ch in choice.items():
        chosen = dict(zip(mlp, ch)) if n == "mlp" and ch[0] != "width" else {} if n == "mlp" else {n: ch}
        if n == "mlp" and ch[0] == "width":
            widths[b] = ch[1]
        for name, c in chosen.items():
            if c != "dense":
                specs[(b, name)] = MatrixSpec(KronShape(dims[name][0], 1, 1, dims[name][1]), c)
    plan = Plan(specs, config.layout())
    what = "predicted loss increase (damped)" if stats.grads else "sum of squared output errors (damped)"
    narrowed = [b for b in range(config.n_layer) if widths[b] < config.mlp_hidden]
    families = ",".join(f.text for f in r.families)
    log(f"allocation over {r.scope}, families {families} ({time.time() - t0:.0f}s): {base + used:,} parameters "
        f"(target {target:,}), {what} {err:.6g}; {len(narrowed)} MLPs narrowed "
        f"({', '.join(f'{b}: {widths[b]}' for b in narrowed) or 'none'}); plan: {plan.text or 'dense'}")
    if lowrank:  # each family alone at the same budget and objective (both are inside the search space above)
        for alone, pts in (("low rank", {k: v for k, v in points.items() if k[1] != "mlp"} |
                            {(b, "mlp"): full[b] for b in layers}),
                           ("width", {k: [v[-1]] if k[1] != "mlp" else [p for p in v if p[2][0] == "width"] +
                                      [full[k[0]][-1]] for k, v in points.items()})):
            try:
                a, u = allocate_points(pts, target - base)
                log(f"  {alone} alone: {base + u:,} parameters, {what} {chosen_error(pts, a):.6g}")
            except UserError:
                log(f"  {alone} alone cannot meet the budget")
    return plan, widths
