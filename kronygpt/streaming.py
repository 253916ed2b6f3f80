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
       it is replaced (surgery.decompose_model with SurgeryOptions(stream=True); --sequential feeds the
       compressed blocks' outputs forward as before).

The calibration forward runs twice (steps 2 and 3): a forward pass over a few thousand tokens costs far less
than holding every block's statistics. Peak memory: the model, one block's statistics, the calibration
tokens' hidden states and (fisher) the backward pass's activations.
"""

import os
import shutil
import tempfile
import time
from contextlib import contextmanager

from .calib import BlockRunner, Stats, collect_grads, collect_moments
from .claims import remove_dead_temps
from .factorize import WhiteningCache, whitened_spectrum
from .mixed import block_candidates
from .planner import choose_plan, matrices, scored_blocks
from .plans import EMBED
from .progress import progress


def streamed_curves(dense, batches, mats, init, request, grads=None, log=print):
    """(curves, kron_points): lowrank_curves of the matrices `mats` (planner.matrices) computed block by block,
    and with the request's Kronecker families their candidates (mixed.block_candidates; empty otherwise): each
    block's input moments are collected on the dense model's hidden states, turned into the block's spectra and
    candidates and freed before the next block runs. Equal to lowrank_curves and mixed.candidates on
    collect_moments' statistics."""
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
        if request.mixed:
            kron.update(block_candidates(dense, b, names, Stats(moments, g, curves, cache=cache), init, request))

    for b in progress(range(dense.config.n_layer), "spectra, block by block", unit="block"):
        if b in by_block:
            block = dense.transformer.h[b]
            spectra(b, by_block[b], runner.moments(b, {n: block.matrix(n) for n in by_block[b]}))
        runner.advance(b)
    if EMBED in by_block:
        spectra(EMBED, by_block[EMBED], {"wte": runner.head_moment()})
    log(f"spectra{' and Kronecker candidates' if kron else ''} of {len(mats)} matrices, block by block: "
        f"{time.time() - t0:.0f}s")
    return curves, kron


SPILL = "kron_decomp_grads-"  # + pid + '-' + random: a spill folder names the process that owns it


@contextmanager
def streamed_plan(dense, batches, init, request, calib=None, *, spill_dir=None, log=print):
    """with streamed_plan(...) as (plan, stats): the Plan that planner.choose_plan(request) gives on all-at-once
    statistics, chosen with at most one block's statistics in memory (the module docstring), and the Stats the
    decomposition then needs (fisher's output-gradient moments, kept in files while the block is open):
    surgery.decompose_model(dense, plan, init, stats, calib=batches, options=SurgeryOptions(stream=True)) inside
    the block decomposes `dense` in place. calib: the CalibSettings whose fisher_tokens, fisher_labels and seed
    say which output gradients to take (None or fisher_tokens 0: none). spill_dir: where the gradient moments
    wait (a temporary directory inside it, removed on leaving; default: the system's)."""
    config = dense.config
    layers = request.layers
    fisher_tokens = calib.fisher_tokens if calib is not None else 0
    spill = None
    if fisher_tokens:
        remove_dead_temps(spill_dir or tempfile.gettempdir(), SPILL)  # left by runs that were killed
        spill = tempfile.mkdtemp(prefix=f"{SPILL}{os.getpid()}-", dir=spill_dir)
    try:
        grads = None
        if fisher_tokens:
            t = time.time()
            grads = collect_grads(dense, batches, set(layers if layers is not None else range(config.n_layer)),
                                  fisher_tokens, spill=spill, labels=calib.fisher_labels, seed=calib.seed)
            log(f"output gradients: {min(fisher_tokens, sum(x.numel() for x in batches)):,} tokens "
                f"({calib.fisher_labels} labels) in {time.time() - t:.0f}s (kept in {spill}, read back one block "
                f"at a time)")
        stats = Stats(grads=grads)
        if request.target and request.allocate:
            mats = matrices(config, layers, request.scope)
            stats.curves, stats.kron_points = streamed_curves(dense, batches, mats, init, request, grads, log)
        elif request.target and not request.shape and batches is not None:
            scored = set(scored_blocks(config.n_layer, layers, request.score_blocks))
            stats.moments = collect_moments(dense, batches, scored)  # the scored blocks' statistics only
        plan = choose_plan(dense, request, init, stats, log)
        stats = None  # the curves and the scored blocks' moments go before the decomposition starts
        yield plan, Stats(grads=grads)
    finally:
        if spill:
            shutil.rmtree(spill, ignore_errors=True)
