"""
Decomposition in one block's memory: for models whose calibration statistics together do not fit (GPT-2 XL's
MLP input moments alone are 15.7 GB in float64; an 8B Llama's are over 50 GB).

The all-at-once path (kron_decomp.py without --stream) collects every matrix's input moment C and, for
'fisher', output-gradient moment G, then plans, then decomposes. The streamed path gives the same factors
with at most one block's statistics in memory:

    1. G (fisher only): the block-wise backward pass of calib.output_gradient_moments, each moment
       accumulated in a file as it is computed (calib.SpilledMoments) and read back one block at a time;
    2. the plan: --allocate needs each matrix's whitened spectrum, computed block by block from the block's
       moments, which are then freed (streamed_curves); --target_params without --allocate scores its
       candidates on --score_blocks blocks, whose moments alone are kept;
    3. the decomposition: the dense model is decomposed in place, each block's moments collected just before
       it is replaced (surgery.decompose_model with stream=True; --sequential feeds the compressed blocks'
       outputs forward as before).

The calibration forward runs twice (steps 2 and 3): a forward pass over a few thousand tokens costs far less
than holding every block's statistics. Peak memory: the model, one block's statistics, the calibration
tokens' hidden states and (fisher) the backward pass's activations.
"""

import shutil
import tempfile
import time

from .calib import BlockRunner, collect_grads, collect_moments
from .factorize import WhiteningCache, whitened_spectrum
from .mixed import block_candidates
from .planner import choose_plan, matrices, scored_blocks
from .plans import EMBED
from .surgery import decompose_model, permutes


def streamed_curves(dense, batches, mats, init, grads=None, log=print, families=None, permute=False, max_factors=8):
    """(curves, kron_points): lowrank_curves of the matrices `mats` (planner.matrices) computed block by block,
    and with Kronecker families their candidates (mixed.block_candidates; empty otherwise): each block's input
    moments are collected on the dense model's hidden states, turned into the block's spectra and candidates
    and freed before the next block runs. Equal to lowrank_curves and mixed.candidates on collect_moments'
    statistics."""
    t0 = time.time()
    by_block = {}
    for b, name, _, _ in mats:
        by_block.setdefault(b, []).append(name)
    runner = BlockRunner(dense, batches, next(dense.parameters()).device)
    curves, kron = {}, {}

    def spectra(b, names, moments):
        cache = WhiteningCache()  # shared within the block only (gate and up share their input moment)
        g = {name: grads[(b, name)] for name in names} if grads is not None else None
        for name in names:
            curves[(b, name)] = whitened_spectrum(dense.matrix(b, name).weight, moments[name], (g or {}).get(name),
                                                  init.damping, init.g_damping, cache)
        if families:
            kron.update(block_candidates(dense, b, names, moments, g, curves, init, families, permute, max_factors,
                                         cache))

    for b in range(dense.config.n_layer):
        if b in by_block:
            block = dense.transformer.h[b]
            spectra(b, by_block[b], runner.moments(b, {n: block.matrix(n) for n in by_block[b]}))
        runner.advance(b)
    if EMBED in by_block:
        spectra(EMBED, by_block[EMBED], {"wte": runner.head_moment()})
    log(f"spectra{' and Kronecker candidates' if kron else ''} of {len(mats)} matrices, block by block: "
        f"{time.time() - t0:.0f}s")
    return curves, kron


def stream_decompose(dense, batches, init, *, layers=None, fisher_tokens=0, fisher_labels="data", seed=0,
                     sequential=False, permute=False, spill_dir=None, log=print, **request):
    """(model, rows) as choose_plan(**request) then decompose_model would give on all-at-once statistics, in
    one block's memory (the module docstring). `dense` is decomposed in place. request: choose_plan's keywords
    (plan, shape, factors, target, tolerance, allocate, scope, scalars, candidates, score_blocks,
    rank_multiple, families, max_factors). fisher_labels, seed: the output gradients' targets (calib.FISHER_LABELS) and
    the seed of their draw. spill_dir: where the output-gradient moments are kept while they are used (a temporary
    directory inside it, removed afterwards; default: the system's)."""
    config = dense.config
    all_layers = set(layers if layers is not None else range(config.n_layer))
    spill = tempfile.mkdtemp(prefix="kron_decomp_grads-", dir=spill_dir) if fisher_tokens else None
    try:
        grads = None
        if fisher_tokens:
            t = time.time()
            grads = collect_grads(dense, batches, all_layers, fisher_tokens, spill=spill, labels=fisher_labels,
                                  seed=seed)
            log(f"output gradients: {min(fisher_tokens, sum(x.numel() for x in batches)):,} tokens "
                f"({fisher_labels} labels) in "
                f"{time.time() - t:.0f}s (kept in {spill}, read back one block at a time)")
        moments = curves = kron = None
        if request.get("target") and request.get("allocate"):
            mats = matrices(config, layers, request.get("scope", "mlp"))
            curves, kron = streamed_curves(dense, batches, mats, init, grads, log, request.get("families"), permute,
                                           request.get("max_factors", 8))
        elif request.get("target") and not request.get("shape") and batches is not None:
            scored = set(scored_blocks(config.n_layer, layers, request.get("score_blocks", 6)))
            moments = collect_moments(dense, batches, scored)  # the scored blocks' statistics only
        plan = choose_plan(dense, layers=layers, init=init, moments=moments, grads=grads, curves=curves, log=log,
                           kron_points=kron, permute=permute, **request)
        moments = curves = kron = None
        if permute and request.get("families") and not permutes(plan, config):
            log("--permute: the allocation gave no MLP matrix a Kronecker shape; nothing to reorder")
            permute = False
        return decompose_model(dense, plan, init, grads=grads, calib=batches, sequential=sequential,
                               permute=permute, log=log, stream=True)
    finally:
        if spill:
            shutil.rmtree(spill, ignore_errors=True)
