"""
Model surgery: a dense model's matrices swapped for Kronecker layers as a plan says, each initialised from its
dense weights by the maths in factorize.py; and layer truncation, the equal-size baseline.

    model, rows = decompose_model(dense, plan, InitSpec("aware"), Stats(moments))   # a compressed copy
    replace_block(model, layer, full_plan, InitSpec("vl_norm"))   # one more block (progressive replacement)
    small = truncate_blocks(dense, [0, 2, 4])                     # keep only some blocks

Calibration statistics are dicts keyed like the plan, (layer, matrix): `moments` C = E[x x^T] of each matrix's
inputs, `grads` G = E[g g^T] of the loss gradients at its outputs. The embedding's key is (EMBED, 'wte'): its
moment is the tied lm_head's input, its G the diagonal of the logits' (calib.py). Every decomposed matrix gets
a report row: relative Frobenius error, norm ratio, and where the statistics allow the calibrated output error,
the predicted loss increase and whether the whitening was exact.
"""

import copy
import math
from dataclasses import dataclass, replace

import torch

from model import GPT, GPTConfig

from .calib import BlockRunner, Stats
from .errors import UserError
from .factorize import WhiteningCache, host, init_factors, output_error, whitening_is_exact
from .kronecker import Factorized, KroneckerEmbedding, KroneckerLinear
from .permute import find_permutation, permute_mlp, permute_moments, unit_features
from .plans import EMBED, Plan
from .progress import progress


def as_plan(plan, config):
    """A Plan for this model config from a Plan or a plan string."""
    return plan if isinstance(plan, Plan) else Plan.parse(plan, config.layout())


def calibrated_errors(W, W_hat, C, G=None):
    """{'output_error': ||(W - W_hat) L|| / ||W L||, 'fisher_error': tr(G D C D^T) / 2 (with G)}, as
    factorize.output_error and fisher_error give them, with D C formed once and the three GEMMs in float32
    (products summed in float64): a report figure needs 4 digits, and on GPT-2 XL's 1600x6400 matrices the
    float64 GEMMs were most of the decomposition's time."""
    W32, C32 = W.detach().cpu().float(), C.float()
    D = W32 - W_hat.detach().cpu().float()
    DC = D @ C32
    den = ((W32 @ C32).double() * W32.double()).sum().item()
    out = {"output_error": math.sqrt(max((DC.double() * D.double()).sum().item(), 0.0) / den) if den > 0 else 0.0}
    if G is not None:
        G32 = G.float()
        GD = G32[:, None] * D if G32.dim() == 1 else G32 @ D
        out["fisher_error"] = 0.5 * (GD.double() * DC.double()).sum().item()
    return out


def report_row(layer, name, spec, W, W_hat, C=None, G=None, exact=None):
    """What one decomposed matrix lost (see the module docstring)."""
    row = dict(layer=layer, matrix=name, shape=str(spec.shape), factors=spec.factors, kind=spec.describe(),
               params=spec.params(), rel_error=output_error(W, W_hat),
               norm_ratio=torch.linalg.norm(W_hat.double()).item() / max(torch.linalg.norm(W.double()).item(), 1e-30))
    if C is not None:
        row.update(calibrated_errors(W, W_hat, C, G))
    if exact is not None:
        row["whitening"] = "exact" if exact else "kronecker-factored"
    return row


def factorised_like(dense, spec, scalars, impl, A, B, scal):
    """A KroneckerLinear (or KroneckerEmbedding for an embedding) holding the given factors, with the dense
    layer's bias, device and dtype."""
    bias = getattr(dense, "bias", None)
    cls = KroneckerEmbedding if isinstance(dense, torch.nn.Embedding) else KroneckerLinear
    layer = cls(spec.shape, spec.factors, bias=bias is not None, scalars=scalars, impl=impl)
    layer = layer.to(device=dense.weight.device, dtype=dense.weight.dtype)
    with torch.no_grad():
        layer.A.copy_(A)
        layer.B.copy_(B)
        if scal is not None:
            layer.scalars.copy_(scal)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def replace_matrices(model, layer, names, init, stats=None):
    """Swap the dense matrices `names` of block `layer` for Kronecker ones as model.config.plan says, initialised
    from their weights (init: an InitSpec). stats: a Stats whose moments and grads are this block's ({name: C},
    {name: G}; either None). Returns one report row per matrix."""
    cfg, rows = model.config, []
    stats = stats or Stats()
    moments, grads, cache = stats.moments, stats.grads, stats.cache
    for name in names:
        dense = model.matrix(layer, name)
        if isinstance(dense, Factorized):
            raise UserError(f"block {layer}'s {name} is already Kronecker; pass the dense model")
        spec = cfg.plan.spec(layer, name)
        residual = name in cfg.family.down or name == "attn.c_proj"
        std = 0.02 / math.sqrt(2 * cfg.n_layer) if residual else 0.02  # random: the dense init's scale
        C, G = (moments or {}).get(name), (grads or {}).get(name)
        A, B, scal = init_factors(dense.weight, spec.shape, spec.factors, init, C, G, std, cache)
        kl = factorised_like(dense, spec, cfg.kron_scalars, cfg.kron_impl, A, B, scal)
        exact = whitening_is_exact(spec.shape, init.init == "fisher") if init.whitens else None
        rows.append(report_row(layer, name, spec, dense.weight.detach(), kl.weight.detach(), C, G, exact))
        model.set_matrix(layer, name, kl)
    return rows


def replace_embedding(model, init, stats=None):
    """Swap the dense token embedding (and the lm_head tied to it) for a KroneckerEmbedding as the plan says.
    C: the second moment of the lm_head's input (final hidden states), for 'aware' and 'fisher'; g_diag: the
    diagonal of the logits' loss-gradient second moment, which 'fisher' uses as the output weighting when the
    vocabulary index lives in A alone (m2 == 1, e.g. low rank; the full V x V moment is never formed);
    otherwise 'fisher' weights the input side only. stats: Stats(moments=C, grads=g_diag, cache). Returns the
    report row."""
    cfg = model.config
    stats = stats or Stats()
    C, g_diag, cache = stats.moments, stats.grads, stats.cache
    spec = cfg.plan.embed
    s, wte = spec.shape, model.transformer.wte
    if isinstance(wte, Factorized):
        raise UserError("the embedding is already factorised; pass the dense model")
    W0 = host(wte.weight)
    as_aware = replace(init, init="aware") if init.init == "fisher" and g_diag is None else init
    # fisher with the logits' diagonal: factorize.diagonal_output_factors, as the allocator scored it
    A, B, scal = init_factors(W0, s, spec.factors, as_aware, C=C, G=g_diag if init.needs_grads else None, cache=cache)
    emb = factorised_like(wte, spec, cfg.kron_scalars, cfg.kron_impl, A, B, scal)
    weighted = init.init == "fisher" and g_diag is not None and s.m2 == 1
    exact = whitening_is_exact(s, weighted) if init.whitens else None
    G = g_diag if cfg.tie_embeddings else None  # the tied lm_head's share of the loss, diagonal G
    row = report_row(EMBED, "wte", spec, W0, emb.weight.detach(), C, G, exact)
    model.set_matrix(EMBED, "wte", emb)
    return row


def permuted_block(model, layer, names, init, block_stats, log=None):
    """Reorder block `layer`'s MLP hidden units (function-preserving, permute.py) so that the planned shapes
    lose less, and return (moments, grads, note) in the new order; block_stats: the block's (moments, grads).
    Low-rank shapes have nothing to gain."""
    moments, grads = block_stats
    cfg, fam = model.config, model.config.family
    specs = {n: cfg.plan.spec(layer, n) for n in names if n not in fam.attn_matrices}
    if not specs or all(s.lowrank for s in specs.values()):
        return moments, grads, {}
    mlp = model.transformer.h[layer].mlp
    feats = unit_features(mlp, fam, moments, init.damping)
    perm, before, after = find_permutation(feats, {n: (s.shape, s.factors) for n, s in specs.items()}, fam)
    permute_mlp(mlp, fam, perm)
    moments, grads = permute_moments(moments, grads, fam, perm)
    if log:
        log(f"block {layer}: permutation lowers the decomposition error {before:.4g} -> {after:.4g}")
    return moments, grads, dict(permute_error_before=before, permute_error_after=after)


def permutes(plan, config):
    """Whether --permute can change anything for this plan: some MLP matrix has a shape other than low rank."""
    attn = config.family.attn_matrices
    return any(not s.lowrank for (b, n), s in plan.items() if b != EMBED and n not in attn)


@dataclass(frozen=True)
class SurgeryOptions:
    """How decompose_model goes through the blocks (each off by default):
        sequential  each block's moments come from the model whose earlier blocks (and the block's own earlier
                    matrices) are already compressed, as GPTQ does (needs calib batches)
        permute     reorder each MLP's hidden units first (permuted_block)
        stream      decompose the dense model itself (no copy) and keep nothing of a block's statistics once it
                    is done (its moments, grads and whitenings): memory holds the model and one block's
                    statistics (streaming.py); grads may then be a SpilledMoments read one block at a time"""
    sequential: bool = False
    permute: bool = False
    stream: bool = False


def decompose_model(dense, plan, init, stats=None, *, calib=None, options=SurgeryOptions(), log=None):
    """A copy of `dense` (left unchanged) whose matrices follow `plan` (a Plan or a plan string), initialised
    as `init` (an InitSpec) says, and one report row per decomposed matrix.
    Calibration ('aware' and 'fisher' need it; with other inits it adds the calibrated errors to the report):
    stats.moments {(layer, name): C} collected on the dense model, or `calib`, token batches (B, T) to collect
    them on as the decomposition proceeds. stats.grads: {(layer, name): G} of the dense model ('fisher').
    stats.cache: a WhiteningCache shared with whoever computed these moments' whitenings before. options: a
    SurgeryOptions (sequential, permute, stream). The factors are the same with or without streaming."""
    stats = stats or Stats()
    moments, grads = stats.moments, stats.grads
    if dense.config.is_factorized:
        raise UserError("the model already has Kronecker matrices; pass the dense model it came from")
    init.check_stats(calib is not None or moments is not None, grads is not None)
    if options.sequential and calib is None:
        raise UserError("sequential calibration collects statistics as it goes: give calib batches")
    plan = as_plan(plan, dense.config)
    if options.permute and not permutes(plan, dense.config):
        raise UserError("--permute reorders MLP hidden units, which changes nothing for low-rank matrices (and "
                        "this plan has no other MLP matrix); drop --permute")
    if options.stream and moments is not None:
        raise UserError("a streamed decomposition collects each block's moments as it goes: give calib, not moments")
    was_training = dense.training
    model = (dense if options.stream else copy.deepcopy(dense)).eval()
    model.config = replace(dense.config, kron_plan=plan.text, kron_scalars=init.scalars)
    fam, cache = model.config.family, WhiteningCache() if stats.cache is None else stats.cache
    runner = BlockRunner(model, calib, next(model.parameters()).device) if calib is not None else None
    rows = []
    for layer in progress(range(model.config.n_layer), "decomposition", unit="block"):
        names = [n for n in fam.block_matrices if plan.spec(layer, n) is not None]
        g = {n: grads[(layer, n)] for n in names} if grads is not None else None
        if not names:
            if runner is not None:
                runner.advance(layer)
            continue
        block = model.transformer.h[layer]
        if runner is not None and options.sequential:  # each group on the inputs the already-compressed ones produce
            for group in (fam.attn_matrices[:1], fam.attn_matrices[1:], fam.up, fam.down):
                todo = [n for n in names if n in group]
                if todo:
                    group_moments = runner.moments(layer, {n: block.matrix(n) for n in todo})
                    rows += replace_matrices(model, layer, todo, init, Stats(group_moments, g, cache=cache))
            runner.advance(layer)
        else:
            if runner is not None:  # the dense block's inputs: moments first, then the dense block moves on
                block_moments = runner.moments(layer, {n: block.matrix(n) for n in names})
                runner.advance(layer)
            else:
                block_moments = {n: moments[(layer, n)] for n in names} if moments is not None else None
            note = {}
            if options.permute:
                block_moments, g, note = permuted_block(model, layer, names, init, (block_moments, g), log)
            rows += [{**r, **note} for r in replace_matrices(model, layer, names, init,
                                                             Stats(block_moments, g, cache=cache))]
        if log and runner is not None:
            errs = [r["output_error"] for r in rows if r["layer"] == layer]
            log(f"block {layer}: {len(names)} matrices, mean output error {sum(errs) / len(errs):.4f}")
        if options.stream:
            cache.clear()
    if plan.embed is not None:
        C = runner.head_moment() if runner is not None else (moments or {}).get((EMBED, "wte"))
        rows.append(replace_embedding(model, init, Stats(C, (grads or {}).get((EMBED, "wte")), cache=cache)))
    return model.train(was_training), rows


def replace_block(model, layer, full_plan, init):
    """Make block `layer` Kronecker as `full_plan` says (config and modules), initialised from its dense
    weights without calibration: progressive replacement, one block at a time."""
    done = set(model.config.plan.layers) | {layer}
    model.config = replace(model.config, kron_plan=full_plan.restrict(done).text)
    names = list(model.config.plan.layer_specs(layer))
    return replace_matrices(model, layer, names, init)


def truncate_blocks(model, keep):
    """A copy of the dense `model` with only the blocks `keep` (in that order): layer truncation, the
    equal-size baseline (DistilGPT2's student starts from every other teacher block)."""
    if model.config.is_factorized:
        raise UserError("--keep_blocks truncates a dense model; pass the dense model")
    new = GPT(GPTConfig.from_dict({**model.config.to_dict(), "n_layer": len(keep)}))
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("transformer.h.")}
    for j, i in enumerate(keep):
        sd.update({f"transformer.h.{j}.{k}": v for k, v in model.transformer.h[i].state_dict().items()})
    new.load_state_dict(sd)
    new.tokenizer_name = getattr(model, "tokenizer_name", "gpt2")
    return new.to(next(model.parameters()).device)
