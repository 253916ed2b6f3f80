"""
Decomposition as one call: a dense model and the settings of kron_decomp.py in, the compressed model and its
report out. The command, compress.py, the experiments and a notebook all decompose through here.

    cfg = DecompConfig(model="smollm2-135m", target_params="81.5M", init="fisher", allocate=True,
                       scope="blocks", calib="shakespeare_smollm2-135m", out="k.pt")
    cfg.validate()
    result = decompose(cfg)                 # result.model, result.rows, result.report
    save(result, cfg.out)                   # the checkpoint and its .json report

What decompose does, in order (each step in the module that owns it):
    1. load the dense model (checkpoint.load_model), and truncate it with --keep_blocks (surgery);
    2. calibrate (calib.calibrate): input moments, and for 'fisher' output-gradient moments;
    3. choose the plan (planner.choose_plan, from a PlanRequest) and factorise (surgery.decompose_model), all at
       once or, with --stream, one block's statistics at a time (streaming.streamed_plan): the same factors;
    4. report: every matrix's errors and the totals.
"""

import os
import sys
import time
from dataclasses import dataclass, field, replace

import torch

from .calib import FISHER_LABELS, CalibSettings, Stats, calibrate, calibration_batches
from .checkpoint import atomic_json, load_model, save_checkpoint
from .data_utils import check_data_fits, open_dataset
from .errors import ConfigError, UserError
from .factorize import INITS, InitSpec, WhiteningCache
from .mixed import Family, parse_families
from .planner import SCOPES, PlanRequest, choose_plan, parse_count, spread_blocks
from .plans import parse_blocks
from .prune import WIDTH_CRITERIA, allocate_widths, block_influence, most_influential, prune_width, width_units
from .runtime import autocast, resolve_device
from .streaming import streamed_plan
from .surgery import SurgeryOptions, decompose_model, permutes, truncate_blocks
from .widths import width_plan


@dataclass
class DecompConfig:
    model: str = "gpt2"             # hub name, Hugging Face directory, or dense checkpoint
    out: str = ""                   # output checkpoint path; a .json report is written beside it
    force: bool = False             # overwrite an existing --out and its report (and another --calib_cache)
    # -- what to factorise: one of --shape, --target_params, --plan
    shape: str = ""                 # m1xn1, the first factor A of c_fc (e.g. 768x768), or 'lowrank'
    factors: int = 1                # products summed per matrix (the rank for lowrank)
    target_params: str = ""         # choose the plan for this total: 81M, 96M, distilgpt2, 81431118
    tolerance: float = 0.01         # --target_params: accepted relative distance
    allocate: bool = False          # --target_params: each matrix its own rank (or dense) under the budget
    scope: str = "mlp"              # 'mlp', 'blocks' (+ attention) or 'all' (+ the embedding): what --allocate, or
                                    # --shape lowrank with --target_params (one ratio for every matrix), factorises
    rank_multiple: int = 0          # --allocate: every rank a multiple of this (0: 1 for --device cpu, 32 for cuda)
    families: str = "lowrank"       # --allocate: what a matrix may become, e.g. 'lowrank,kron:3x1' (kronygpt/mixed.py)
    kron_factors: int = 8           # --families with kron: at most this many Kronecker factors per matrix
    plan: str = ""                  # a plan string (kronygpt/plans.py), e.g. '*: mlp=lowrank*64; 0: dense'
    layers: str = "all"             # blocks to decompose: 'all', '0,2,4', '6-11'; the others stay dense
    keep_blocks: str = None         # layer truncation first: 'even', 'first:K', 'spread:K' or indices, or by measured
                                    # importance (ShortGPT, needs --calib): 'importance:K', or 'importance' (K from
                                    # --target_params)
    width: str = ""                 # width pruning instead of factorising (needs --calib): hidden units kept in every
                                    # MLP, 'auto' (the one width --target_params gives) or 'allocate' (each block its
                                    # own width under --target_params, least predicted loss); W_down is refitted
    width_criterion: str = "obs"    # --width: which units stay: 'obs' (least refitted error) or 'activation'
    list_shapes: bool = False       # print every valid shape with its parameter counts and exit
    # -- initialisation (kronygpt/factorize.py)
    init: str = "vl"                # vl, vl_norm, prune, random, aware, fisher, asvd, fwsvd (low rank)
    scalars: bool = False           # learnable per-factor scalars (vl_norm puts its rescaling there)
    prune_keep: str = "even"        # prune: keep the 'even' or 'odd' entry of every block
    prune_eps: float = 0.0          # prune: value of B's other entries
    damping: float = 1e-4           # aware/fisher: relative damping of the input second moment
    g_damping: float = 1e-2         # fisher: relative damping of the output-gradient second moment
    # -- calibration
    calib: str = ""                 # a prepared dataset (name under data/ or a path) whose training tokens calibrate
    calib_tokens: int = 16384       # calibration tokens
    calib_seq: int = 256            # calibration sequence length (capped at the model's block_size)
    fisher_tokens: int = 4096       # fisher, fwsvd: tokens for the output-gradient moments
    fisher_labels: str = "data"     # fisher, fwsvd: the targets of those gradients: 'data' (the text's next tokens) or
                                    # 'model' (drawn from the dense model's predictions: keep what it predicts)
    calib_cache: str = ""           # a file keeping the statistics for the next run (keyed by model and data content)
    sequential: bool = False        # calibrate each block on the already-compressed blocks (GPTQ-style)
    stream: bool = False            # one block's statistics in memory at a time, decomposed in place (big models)
    spill_dir: str = ""             # --stream with fisher: where the gradient moments wait (default: the system's temp)
    permute: bool = False           # reorder each MLP's hidden units first (kronygpt/permute.py)
    plan_candidates: int = 16       # --target_params with --calib: candidate shapes scored
    score_blocks: int = 6           # --target_params with --calib: blocks the candidates are scored on
    seed: int = 1337                # for --init random and the calibration batches
    device: str = "cpu"             # where the decomposition runs: cpu, cuda, cuda:N
    calib_dtype: str = "auto"       # the calibration forwards: float32, bfloat16 (autocast; statistics still
                                    # accumulated in float32 GEMMs into float64), auto: bfloat16 on cuda, else float32

    def validate(self):
        if not self.list_shapes and not self.out:
            raise ConfigError("--out PATH is required (or use --list_shapes)")
        if self.factors < 1:
            raise ConfigError(f"--factors must be at least 1, got {self.factors}")
        if self.plan and (self.shape or self.target_params):
            raise ConfigError("--plan gives every block's shapes; drop --shape and --target_params")
        if self.allocate and not self.target_params:
            raise ConfigError("--allocate divides a parameter budget: give --target_params too")
        if self.init not in INITS:
            raise ConfigError(f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.fisher_labels not in FISHER_LABELS:
            raise ConfigError(f"--fisher_labels must be one of {', '.join(FISHER_LABELS)}, got {self.fisher_labels!r}")
        if self.scope not in SCOPES:
            raise ConfigError(f"--scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        for name in ("calib_tokens", "calib_seq", "fisher_tokens", "plan_candidates", "score_blocks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.keep_blocks is not None:  # '0,2' arrives as a tuple, '3' as a number: all mean block indices
            kb = self.keep_blocks
            self.keep_blocks = ",".join(map(str, kb)) if isinstance(kb, (tuple, list)) else str(kb).strip()
            if not self.keep_blocks:
                raise ConfigError("--keep_blocks is empty; give 'even', 'first:K', 'spread:K' or block indices, or "
                                  "drop it")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if self.scope != "mlp" and not (self.allocate or self.uniform_ratio):
            raise ConfigError(f"--scope {self.scope} says what --allocate (or --shape lowrank with --target_params) "
                              f"may factorise; add --allocate (or drop --scope)")
        if self.allocate and not self.calib:
            raise ConfigError("--allocate chooses ranks by calibrated error: give --calib DATASET")
        if self.allocate and self.init not in ("aware", "fisher"):
            raise ConfigError(f"--allocate scores every rank by the error of the whitened factors that aware and "
                              f"fisher build; --init {self.init} builds others, which would be scored wrongly: use "
                              f"--init aware or fisher with --allocate, or drop --allocate")
        if self.init in ("asvd", "fwsvd") and self.shape.strip().lower() != "lowrank" and not self.plan:
            raise ConfigError(f"--init {self.init} is a low-rank method: give --shape lowrank (with --factors or "
                              f"--target_params) or a low-rank --plan")
        if self.sequential and not self.calib:
            raise ConfigError("--sequential calibrates block by block: give --calib DATASET")
        if self.sequential and self.permute:
            raise ConfigError("--permute works on the dense model's statistics, --sequential on the compressed "
                              "model's: choose one")
        if self.keep_blocks is not None and self.keep_blocks.partition(":")[0] == "importance":
            if not self.calib:
                raise ConfigError("--keep_blocks importance ranks blocks on calibration data: give --calib DATASET")
            if self.keep_blocks == "importance" and not self.target_params:
                raise ConfigError("--keep_blocks importance takes the number of blocks from --target_params: give it, "
                                  "or write importance:K")
            if self.keep_blocks == "importance" and (self.shape or self.plan or self.allocate or self.width):
                raise ConfigError("--keep_blocks importance sizes the model by dropping blocks alone; write "
                                  "importance:K to decompose the kept blocks too")
        elif (self.sequential or self.permute or self.calib) and self.keep_blocks and not self.decomposes \
                and not self.width:
            raise ConfigError("--keep_blocks alone truncates without decomposing: drop --calib, --sequential and "
                              "--permute, or give a plan to decompose to")
        if self.width:
            if self.width not in ("auto", "allocate") and not (self.width.isdigit() and int(self.width) >= 1):
                raise ConfigError(f"--width must be a number of hidden units, 'auto' or 'allocate', got "
                                  f"{self.width!r}")
            if self.width in ("auto", "allocate") and not self.target_params:
                raise ConfigError(f"--width {self.width} takes the size from --target_params: give it, or a number "
                                  f"of units")
            if self.shape or self.plan or self.allocate or self.keep_blocks:
                raise ConfigError("--width prunes MLP hidden units instead of factorising: drop --shape, --plan, "
                                  "--allocate and --keep_blocks")
            if not self.calib:
                raise ConfigError("--width refits the down projections on calibration data: give --calib DATASET")
            if self.stream or self.sequential or self.permute:
                raise ConfigError("--width prunes on the dense model's statistics, all at once: drop --stream, "
                                  "--sequential and --permute")
            if self.width_criterion not in WIDTH_CRITERIA:
                raise ConfigError(f"--width_criterion must be one of {', '.join(WIDTH_CRITERIA)}, got "
                                  f"{self.width_criterion!r}")
        if self.stream and self.calib_cache:
            raise ConfigError("--stream keeps no statistics to cache (each block's are freed once used); drop "
                              "--calib_cache")
        if self.spill_dir and not self.stream:
            raise ConfigError("--spill_dir is where --stream keeps the gradient moments; add --stream or drop it")
        families = parse_families(self.families)
        if families != (Family("lowrank"),) and not self.allocate:
            raise ConfigError(f"--families {self.families} chooses matrix by matrix, which --allocate does; add "
                              f"--allocate (with --target_params)")
        if Family("width") in families and (self.stream or self.sequential or self.permute or
                                            any(f.kind == "kron" for f in families)):
            raise ConfigError("--families width is allocated on the dense model's statistics beside low rank: drop "
                              "--stream, --sequential, --permute and the Kronecker families")
        if self.kron_factors < 1:
            raise ConfigError(f"--kron_factors must be at least 1, got {self.kron_factors}")
        if self.permute and self.allocate and all(f.kind == "lowrank" for f in families):
            raise ConfigError("--permute reorders MLP hidden units for Kronecker shapes, and --allocate with "
                              "--families lowrank gives none; add a Kronecker family (e.g. --families "
                              "lowrank,kron:3x1) or drop --permute")
        if self.rank_multiple < 0:
            raise ConfigError(f"--rank_multiple must be >= 1 (or 0 for the device's default), got {self.rank_multiple}")
        if self.calib_dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"--calib_dtype must be auto, float32 or bfloat16, got {self.calib_dtype!r}")
        if not 0 < self.tolerance < 1:
            raise ConfigError(f"--tolerance must be between 0 and 1 (a relative distance), got {self.tolerance}")
        self.init_spec()  # checks the initialisation's own settings

    @property
    def decomposes(self):
        """Whether a plan is asked for (otherwise --keep_blocks or --width prune alone; a --target_params they
        take their size from asks for no plan)."""
        sized_by_pruning = self.width or self.keep_blocks == "importance"
        return bool(self.shape or self.plan or (self.target_params and not sized_by_pruning))

    @property
    def uniform_ratio(self):
        return self.shape.strip().lower() == "lowrank" and bool(self.target_params) and not self.allocate

    def init_spec(self):
        return InitSpec(self.init, self.scalars, self.prune_keep, self.prune_eps, self.damping, self.g_damping)

    def plan_request(self, layers=None):
        """The PlanRequest of these settings, over the blocks `layers` (None: all)."""
        return PlanRequest(plan=self.plan, shape=self.shape, factors=self.factors, target=self.target_params,
                           tolerance=self.tolerance, allocate=self.allocate, scope=self.scope, scalars=self.scalars,
                           candidates=self.plan_candidates, score_blocks=self.score_blocks,
                           rank_multiple=self.rank_multiple or (32 if self.device.startswith("cuda") else 1),
                           families=parse_families(self.families), max_factors=self.kron_factors,
                           layers=None if layers is None else tuple(layers), permute=self.permute)

    def calib_settings(self, block_size):
        """The CalibSettings of these settings for a model of this context length."""
        grads = self.init_spec().needs_grads or self.width == "allocate"  # fisher's factors, or the width allocation
        return CalibSettings(name=self.calib, tokens=self.calib_tokens, seq=min(self.calib_seq, block_size),
                             seed=self.seed, fisher_tokens=self.fisher_tokens if grads else 0,
                             fisher_labels=self.fisher_labels, cache_path=self.calib_cache, force=self.force,
                             dtype=self.calib_dtype)


@dataclass
class Decomposition:
    """What decompose() returns: the compressed model (on the CPU), one report row per decomposed matrix, the
    planner's reasoning as logged, the report (settings, plan, parameter counts, totals, seconds) and the
    tokenizer the checkpoint records."""
    model: torch.nn.Module
    rows: list
    planning: list
    report: dict = field(default_factory=dict)
    tokenizer: object = "gpt2"


# -----------------------------------------------------------------------------
# the steps

def parse_keep_blocks(text, n_layer):
    """'even' (0,2,4,..), 'first:K', 'spread:K' (K evenly spaced, first and last included), or indices."""
    kind, _, k = text.partition(":")
    if kind == "even":
        return list(range(0, n_layer, 2))
    if kind in ("first", "spread"):
        if not k.isdigit() or not 1 <= int(k) <= n_layer:
            raise UserError(f"--keep_blocks {text!r}: K must be a number of blocks in 1..{n_layer}")
        return list(range(int(k))) if kind == "first" else spread_blocks(n_layer, int(k))
    return parse_blocks(text, n_layer, where="--keep_blocks")


def load_dense(cfg, log=print):
    """The dense model to decompose (truncated first with --keep_blocks) and the blocks to decompose (None:
    all)."""
    dense = load_model(cfg.model, device=resolve_device(cfg.device)).eval()
    if cfg.keep_blocks:
        keep = kept_blocks(cfg, dense, log)
        n_before = dense.param_counts()["total"]
        dense = truncate_blocks(dense, keep)
        log(f"layer truncation: kept {len(keep)} blocks {keep}; {n_before:,} -> {dense.param_counts()['total']:,} "
            f"parameters")
    c = dense.config
    layers = None if cfg.layers in ("all", "*") else parse_blocks(cfg.layers, c.n_layer, where="--layers")
    log(f"{cfg.model}: {c.arch}, {c.n_layer} layers, MLP {c.n_embd} <-> {c.mlp_hidden}, "
        f"{dense.param_counts()['total']:,} parameters ({dense.param_counts()['tying']})")
    return dense, layers


def kept_blocks(cfg, dense, log=print):
    """The blocks --keep_blocks keeps: as written, or by ShortGPT's block influence on the calibration tokens
    ('importance:K', or 'importance' with as many blocks as --target_params leaves room for)."""
    kind, _, k = cfg.keep_blocks.partition(":")
    n_layer = dense.config.n_layer
    if kind != "importance":
        return parse_keep_blocks(cfg.keep_blocks, n_layer)
    if k:
        if not k.isdigit() or not 1 <= int(k) <= n_layer:
            raise UserError(f"--keep_blocks {cfg.keep_blocks!r}: K must be a number of blocks in 1..{n_layer}")
        count = int(k)
    else:
        count = blocks_for_target(dense, parse_count(cfg.target_params))
    data = open_dataset(cfg.calib)
    check_data_fits(data, dense, cfg.calib)
    batches = calibration_batches(data, cfg.calib_tokens, min(cfg.calib_seq, dense.config.block_size), seed=cfg.seed)
    influence = block_influence(dense, batches)
    keep = most_influential(influence, count)
    log("block influence (1 - cos(input, output), ShortGPT): "
        + ", ".join(f"{i}: {v:.4f}" for i, v in enumerate(influence)))
    return keep


def blocks_for_target(dense, target):
    """How many blocks a truncated model keeps to land nearest `target` parameters."""
    total = dense.param_counts()["total"]
    per_block = sum(p.numel() for p in dense.transformer.h[0].parameters())
    count = round((target - (total - dense.config.n_layer * per_block)) / per_block)
    if not 1 <= count <= dense.config.n_layer:
        raise UserError(f"--target_params {target:,} cannot be met by dropping blocks: keeping "
                        f"1..{dense.config.n_layer} "
                        f"blocks gives {total - (dense.config.n_layer - 1) * per_block:,} to {total:,} parameters")
    return count


def calibration(cfg, dense, layers, log=print):
    """(batches, Stats) of --calib on the dense model, or (None, Stats()) without it: the input moments unless
    --stream collects them block by block (or --sequential without a target needs none), and fisher's
    output-gradient moments unless --stream takes them itself."""
    if not cfg.calib:
        return None, Stats()
    data = open_dataset(cfg.calib)
    check_data_fits(data, dense, cfg.calib)
    if cfg.calib_tokens > data.size("train"):
        raise UserError(f"--calib_tokens {cfg.calib_tokens:,} exceeds the {data.size('train'):,} training "
                        f"tokens of {cfg.calib}; lower it")
    settings = cfg.calib_settings(dense.config.block_size)
    if cfg.stream:
        settings = replace(settings, fisher_tokens=0)  # streamed_plan takes them itself
    batches, moments, grads = calibrate(
        dense, data, settings, layers=set(layers or range(dense.config.n_layer)),
        moments=not cfg.stream and (bool(cfg.target_params) or not cfg.sequential), log=log)
    return batches, Stats(moments, grads)


def factorise(cfg, dense, layers, log=print):
    """(model, rows, planning): the calibration (if --calib) and the decomposition, their forwards in
    --calib_dtype; `planning` is the planner's reasoning as logged. The random draws of --init random start
    from --seed before the plan is scored and again just before the factors are built, on either route."""
    init = cfg.init_spec()
    batches, stats = calibration(cfg, dense, layers, log)
    init.check_stats(batches is not None, stats.grads is not None or (cfg.stream and batches is not None))
    planning = []

    def plan_log(line):
        log(line)
        planning.append(line)

    request, td = cfg.plan_request(layers), time.time()
    options = SurgeryOptions(sequential=cfg.sequential, permute=cfg.permute, stream=cfg.stream)
    torch.manual_seed(cfg.seed)  # random scoring draws (--init random with --target_params) alike on both routes
    if cfg.stream:  # the same factors in one block's memory (kronygpt/streaming.py)
        with streamed_plan(dense, batches, init, request, cfg.calib_settings(dense.config.block_size),
                           spill_dir=cfg.spill_dir or None, log=plan_log) as (plan, streamed):
            options = checked_permute(options, plan, dense, log) if cfg.allocate else options
            torch.manual_seed(cfg.seed)
            model, rows = decompose_model(dense, plan, init, streamed, calib=batches, options=options, log=log)
    elif Family("width") in request.families:  # narrowed MLPs beside low rank (kronygpt/widths.py)
        stats.cache = WhiteningCache()
        plan, widths = width_plan(dense, parse_count(cfg.target_params), request, init, stats, plan_log)
        torch.manual_seed(cfg.seed)
        narrowed, rows = prune_width(dense, widths, stats.moments, cfg.width_criterion, cfg.damping, log) \
            if min(widths) < dense.config.mlp_hidden else (dense, [])
        model, more = decompose_model(narrowed, plan, init, stats, options=options, log=log)
        rows += more
    else:
        stats.cache = WhiteningCache()
        plan = choose_plan(dense, request, init, stats, plan_log)
        options = checked_permute(options, plan, dense, log) if cfg.allocate else options
        torch.manual_seed(cfg.seed)
        if cfg.sequential:  # each block's moments anew from the compressed blocks before it
            stats.moments = None
        model, rows = decompose_model(dense, plan, init, stats, calib=batches if cfg.sequential else None,
                                      options=options, log=log)
    log(f"decomposition: {time.time() - td:.0f}s")
    return model, rows, planning


def pruned_width(cfg, dense, log=print):
    """(model, rows) of --width: every MLP narrowed to the same number of hidden units, or with 'allocate' each to
    its own (prune.allocate_widths: least predicted loss increase, with fisher's output gradients when
    --fisher_tokens collects them), its down projection refitted on the calibration moments (prune.prune_width)."""
    batches, stats = calibration(cfg, dense, None, log)
    t = time.time()
    if cfg.width == "allocate":
        grid = max(1, dense.config.mlp_hidden // 24)
        units, err = allocate_widths(dense, stats.moments, stats.grads, parse_count(cfg.target_params), grid, log)
        log(f"width allocation ({grid}-unit steps, {'fisher' if stats.grads else 'output error'}): widths "
            f"{','.join(map(str, units))}, predicted loss increase {err:.4f}")
    else:
        units = width_units(dense.config, parse_count(cfg.target_params), dense.param_counts()["total"]) \
            if cfg.width == "auto" else int(cfg.width)
    model, rows = prune_width(dense, units, stats.moments, cfg.width_criterion, cfg.damping, log)
    kept = f"{units}" if isinstance(units, int) else f"{min(units)}-{max(units)} (mean {sum(units) / len(units):.0f})"
    log(f"width pruning: {dense.config.mlp_hidden} -> {kept} hidden units per MLP ({cfg.width_criterion}) in "
        f"{time.time() - t:.0f}s")
    return model, rows


def checked_permute(options, plan, dense, log):
    """The options without permute when the allocated plan gives no MLP matrix a Kronecker shape (an allocation
    may choose low rank everywhere): nothing to reorder, said once. (A plan asked for as such is checked by
    decompose_model, which refuses --permute with nothing to reorder.)"""
    if options.permute and not permutes(plan, dense.config):
        log("--permute: the allocation gave no MLP matrix a Kronecker shape; nothing to reorder")
        return SurgeryOptions(sequential=options.sequential, permute=False, stream=options.stream)
    return options


def totals(rows, before, after, log=print):
    """The report's totals (mean output error, permutation gains, predicted loss increase), logged as they are
    computed."""
    out = {}
    log(f"parameters: {before['total']:,} -> {after['total']:,} "
        f"(non-embedding {before['non_embedding']:,} -> {after['non_embedding']:,}; {after['tying']})")
    calibrated = [r["output_error"] for r in rows if "output_error" in r]
    if calibrated:
        out["mean_output_error"] = sum(calibrated) / len(calibrated)
        log(f"mean calibrated output error {out['mean_output_error']:.4f} over {len(calibrated)} matrices")
    blocks = {r["layer"]: (r["permute_error_before"], r["permute_error_after"]) for r in rows
              if "permute_error_before" in r}
    if blocks:
        out["permute_error"] = {b: dict(before=v[0], after=v[1]) for b, v in blocks.items()}
        gain = sum(v[0] for v in blocks.values()) / max(sum(v[1] for v in blocks.values()), 1e-30)
        log(f"permutation: decomposition error (whitened, summed over blocks) lower by {gain:.3f}x")
    estimated = [r["fisher_error"] for r in rows if "fisher_error" in r]
    if estimated:
        out["predicted_loss_increase"] = sum(estimated)
        missing = f" ({len(rows) - len(estimated)} without an estimate)" if len(estimated) < len(rows) else ""
        log(f"predicted loss increase (K-FAC, undamped statistics, summed over {len(estimated)} matrices"
            f"{missing}) {out['predicted_loss_increase']:.4f}")
    return out


# -----------------------------------------------------------------------------
# the entry point

def decompose(cfg: DecompConfig, dense=None, log=print) -> Decomposition:
    """Decompose as the (validated) DecompConfig says: the whole of kron_decomp.py but the writing.

    Args:
        cfg: the settings (DecompConfig.validate() already called).
        dense: the dense model, already loaded (None: load cfg.model; --keep_blocks and --layers are applied
            either way only when loading).
        log: where every line of progress and of the planner's reasoning goes.
    """
    t0 = time.time()
    layers = None
    if dense is None:
        dense, layers = load_dense(cfg, log)
    if dense.config.is_factorized:
        raise UserError("the model already has Kronecker matrices; pass the dense model it came from")
    before = dense.param_counts()
    device_type = next(dense.parameters()).device.type
    if cfg.calib_dtype == "auto":  # the report says which precision ran
        cfg.calib_dtype = "bfloat16" if device_type == "cuda" else "float32"
    model, rows, planning = dense, [], []
    with autocast(device_type, cfg.calib_dtype):
        if cfg.width:
            model, rows = pruned_width(cfg, dense, log)
        elif cfg.decomposes:  # otherwise --keep_blocks truncates alone
            model, rows, planning = factorise(cfg, dense, layers, log)
    after = model.param_counts()
    report = {**{k: v for k, v in vars(cfg).items() if k not in ("out", "force", "list_shapes")},
              "plan": model.config.kron_plan, "params_before": before, "params_after": after,
              "seconds": time.time() - t0, **totals(rows, before, after, log), "planning": planning,
              "matrices": rows, "model_args": model.config.to_dict()}
    return Decomposition(model.cpu(), rows, planning, report, getattr(dense, "tokenizer_name", "gpt2"))


def save(result, out, report_path):
    """Write the decomposition's checkpoint (its report's summary inside) and then the full JSON report, each
    atomically; an old report goes first, so a report beside a checkpoint is always that checkpoint's (scripts
    that resume, such as experiments/frontier.py, take the report as the mark of a finished decomposition)."""
    report = result.report
    if os.path.lexists(report_path):
        os.remove(report_path)
    save_checkpoint(out, result.model, tokenizer=result.tokenizer,
                    extra=dict(decomposition={k: v for k, v in report.items() if k not in ("matrices", "model_args")}))
    atomic_json(report_path, report)


def print_table(rows, out=sys.stdout):
    """One line per decomposed matrix: its kind and errors."""
    calibrated = any("output_error" in r for r in rows)
    print(f"{'layer':>5} {'matrix':<11} {'kind':<24} {'rel. error':>10} {'norm ratio':>10}"
          + (f" {'output err':>10}" if calibrated else ""), file=out)
    for r in rows:
        print(f"{r['layer']:>5} {r['matrix']:<11} {r['kind']:<24} {r['rel_error']:>10.4f} {r['norm_ratio']:>10.4f}"
              + (f" {r['output_error']:>10.4f}" if "output_error" in r else ""), file=out)
