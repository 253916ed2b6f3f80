"""
Decompose a dense model's matrices into sums of Kronecker products and write a checkpoint that train.py
(init_from=PATH), train_distillation.py, sample.py, eval.py and export.py load.

    python kron_decomp.py --model gpt2 --factors 1 --shape 768x768 --init vl_norm --out out-decomp/gpt2_81M.pt
    python kron_decomp.py --model gpt2 --target_params distilgpt2 --init vl --out out-decomp/gpt2_82M.pt
    python kron_decomp.py --model gpt2 --factors 1 --shape 3072x384 --init prune --out out-decomp/gpt2_96M_prune.pt
    python kron_decomp.py --model gpt2 --list_shapes            # every valid shape and its parameter counts
    python kron_decomp.py --model smollm2-135m --target_params 81.4M --init aware --calib shakespeare_smollm2-135m \\
        --out out-decomp/smollm2_81M.pt                          # the calibrated planner picks shape and factors
    python kron_decomp.py --model smollm2-135m --target_params 81.4M --init fisher --calib shakespeare_smollm2-135m \\
        --allocate --scope blocks --out out-decomp/smollm2_81M_alloc.pt   # each matrix its own rank (or dense)
    python kron_decomp.py --model smollm2-135m --target_params 81.4M --init fisher --calib shakespeare_smollm2-135m \
        --allocate --scope blocks --families lowrank,kron:3x1 --permute --out out-decomp/smollm2_81M_mixed.pt
                                                                 # low rank or Kronecker, matrix by matrix
    python kron_decomp.py --model gpt2-xl --target_params 935M --init fisher --calib shakespeare --allocate \
        --scope blocks --calib_tokens 2048 --stream --out out-decomp/gpt2xl.pt   # one block's statistics at a time
    python kron_decomp.py --model smollm2-135m --keep_blocks even --out out-decomp/smollm2_15blocks.pt  # truncation
    python kron_decomp.py config/decomp_smollm2_81M.py           # the same settings from a config file

--shape m1xn1 is the first factor A of c_fc (Llama: gate_proj and up_proj), of shape (hidden, n_embd); B is
(hidden/m1, n_embd/n1), and c_proj (down_proj) uses the opposite shapes. --shape lowrank is the family member
(out,1)x(1,in) for every matrix: W = sum_k a_k b_k^T, with --factors the rank. --plan gives any plan (grammar
in kronygpt/plans.py). The maths of every --init is in kronygpt/factorize.py; 'aware' and 'fisher' need
--calib. The checkpoint and a JSON report beside it (same name, .json) are written only if neither exists
(--force overwrites both).
"""

import json
import os
import sys
import time
from dataclasses import dataclass

import torch

from configurator import configure, run_cli
from kronygpt.calib import FISHER_LABELS, calibrate
from kronygpt.checkpoint import check_output_file, load_model, save_checkpoint
from kronygpt.data_utils import check_data_fits, open_dataset
from kronygpt.errors import ConfigError, UserError
from kronygpt.factorize import INITS, InitSpec, WhiteningCache
from kronygpt.mixed import Family, parse_families
from kronygpt.planner import SCOPES, choose_plan, list_shapes, spread_blocks
from kronygpt.plans import parse_blocks
from kronygpt.runtime import autocast, resolve_device, return_large_frees_to_os
from kronygpt.streaming import stream_decompose
from kronygpt.surgery import decompose_model, permutes, truncate_blocks


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
    scope: str = "mlp"              # --allocate: 'mlp', 'blocks' (+ attention) or 'all' (+ the embedding)
    rank_multiple: int = 0          # --allocate: every rank a multiple of this (0: 1 for --device cpu, 32 for cuda)
    families: str = "lowrank"       # --allocate: what a matrix may become, e.g. 'lowrank,kron:3x1' (kronygpt/mixed.py)
    kron_factors: int = 8           # --families with kron: at most this many Kronecker factors per matrix
    plan: str = ""                  # a plan string (kronygpt/plans.py), e.g. '*: mlp=lowrank*64; 0: dense'
    layers: str = "all"             # blocks to decompose: 'all', '0,2,4', '6-11'; the others stay dense
    keep_blocks: str = None         # layer truncation first: 'even', 'first:K', 'spread:K' or indices
    list_shapes: bool = False       # print every valid shape with its parameter counts and exit
    # -- initialisation (kronygpt/factorize.py)
    init: str = "vl"                # vl, vl_norm, prune, random, aware, fisher
    scalars: bool = False           # learnable per-factor scalars (vl_norm puts its rescaling there)
    prune_keep: str = "even"        # prune: keep the 'even' or 'odd' entry of every block
    prune_eps: float = 0.0          # prune: value of B's other entries
    damping: float = 1e-4           # aware/fisher: relative damping of the input second moment
    g_damping: float = 1e-2         # fisher: relative damping of the output-gradient second moment
    # -- calibration
    calib: str = ""                 # a prepared dataset (name under data/ or a path) whose training tokens calibrate
    calib_tokens: int = 16384       # calibration tokens
    calib_seq: int = 256            # calibration sequence length (capped at the model's block_size)
    fisher_tokens: int = 4096       # fisher: tokens for the output-gradient moments
    fisher_labels: str = "data"     # fisher: the targets of those gradients: 'data' (the text's next tokens) or
                                    # 'model' (drawn from the dense model's predictions: keep what it predicts)
    calib_cache: str = ""           # a file keeping the statistics for the next run (keyed by model and data content)
    sequential: bool = False        # calibrate each block on the already-compressed blocks (GPTQ-style)
    stream: bool = False            # one block's statistics in memory at a time, the model decomposed in place (big models)
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
        if self.scope != "mlp" and not self.allocate:
            raise ConfigError(f"--scope {self.scope} says what --allocate may factorise; add --allocate (or drop "
                              f"--scope)")
        if self.allocate and not self.calib:
            raise ConfigError("--allocate chooses ranks by calibrated error: give --calib DATASET")
        if self.sequential and not self.calib:
            raise ConfigError("--sequential calibrates block by block: give --calib DATASET")
        if self.sequential and self.permute:
            raise ConfigError("--permute works on the dense model's statistics, --sequential on the compressed "
                              "model's: choose one")
        if (self.sequential or self.permute or self.calib) and self.keep_blocks and not (
                self.shape or self.target_params or self.plan):
            raise ConfigError("--keep_blocks alone truncates without decomposing: drop --calib, --sequential and "
                              "--permute, or give a plan to decompose to")
        if self.stream and self.calib_cache:
            raise ConfigError("--stream keeps no statistics to cache (each block's are freed once used); drop "
                              "--calib_cache")
        if self.spill_dir and not self.stream:
            raise ConfigError("--spill_dir is where --stream keeps the gradient moments; add --stream or drop it")
        families = parse_families(self.families)
        if families != (Family("lowrank"),) and not self.allocate:
            raise ConfigError(f"--families {self.families} chooses matrix by matrix, which --allocate does; add "
                              f"--allocate (with --target_params)")
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

    def init_spec(self):
        return InitSpec(self.init, self.scalars, self.prune_keep, self.prune_eps, self.damping, self.g_damping)


# -----------------------------------------------------------------------------
# printing

def print_table(rows, out=sys.stdout):
    calibrated = any("output_error" in r for r in rows)
    print(f"{'layer':>5} {'matrix':<11} {'kind':<24} {'rel. error':>10} {'norm ratio':>10}"
          + (f" {'output err':>10}" if calibrated else ""), file=out)
    for r in rows:
        print(f"{r['layer']:>5} {r['matrix']:<11} {r['kind']:<24} {r['rel_error']:>10.4f} {r['norm_ratio']:>10.4f}"
              + (f" {r['output_error']:>10.4f}" if "output_error" in r else ""), file=out)


def print_shapes(config, layers):
    print(f"\nshapes of the {config.mlp_hidden}x{config.n_embd} up matrices (down matrices take the opposite); "
          f"total model parameters for 1..4 factors; 'keeps rank' = fewest factors whose product can "
          f"have the dense rank {min(config.mlp_hidden, config.n_embd)}")
    print(f"{'A (m1,n1)':<12} {'B (m2,n2)':<12} {'max rank':>8} {'keeps rank':>10} "
          + " ".join(f"{f'{f} factor' + ('s' if f > 1 else ''):>13}" for f in range(1, 5)))
    for s, max_rank, keep, counts in list_shapes(config, layers):
        print(f"{f'({s.m1},{s.n1})':<12} {f'({s.m2},{s.n2})':<12} {max_rank:>8} {keep or '>4':>10} "
              + " ".join(f"{c:>13,}" if c else f"{'-':>13}" for c in counts))


def summary(rows, before, after, permute):
    """The report's totals, printed as they are computed."""
    out = {}
    print(f"parameters: {before['total']:,} -> {after['total']:,} "
          f"(non-embedding {before['non_embedding']:,} -> {after['non_embedding']:,}; {after['tying']})")
    calibrated = [r["output_error"] for r in rows if "output_error" in r]
    if calibrated:
        out["mean_output_error"] = sum(calibrated) / len(calibrated)
        print(f"mean calibrated output error {out['mean_output_error']:.4f} over {len(calibrated)} matrices")
    blocks = {r["layer"]: (r["permute_error_before"], r["permute_error_after"]) for r in rows
              if "permute_error_before" in r}
    if permute and blocks:
        out["permute_error"] = {b: dict(before=v[0], after=v[1]) for b, v in blocks.items()}
        gain = sum(v[0] for v in blocks.values()) / max(sum(v[1] for v in blocks.values()), 1e-30)
        print(f"permutation: decomposition error (whitened, summed over blocks) lower by {gain:.3f}x")
    estimated = [r["fisher_error"] for r in rows if "fisher_error" in r]
    if estimated:
        out["predicted_loss_increase"] = sum(estimated)
        missing = f" ({len(rows) - len(estimated)} without an estimate)" if len(estimated) < len(rows) else ""
        print(f"predicted loss increase (K-FAC, undamped statistics, summed over {len(estimated)} matrices"
              f"{missing}) {out['predicted_loss_increase']:.4f}")
    return out


# -----------------------------------------------------------------------------
# the command

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


def load_dense(cfg):
    """The dense model to decompose (truncated first with --keep_blocks) and the blocks to decompose."""
    dense = load_model(cfg.model, device=resolve_device(cfg.device)).eval()
    if cfg.keep_blocks:
        keep = parse_keep_blocks(cfg.keep_blocks, dense.config.n_layer)
        n_before = dense.param_counts()["total"]
        dense = truncate_blocks(dense, keep)
        print(f"layer truncation: kept {len(keep)} blocks {keep}; {n_before:,} -> {dense.param_counts()['total']:,} "
              f"parameters")
    c = dense.config
    layers = None if cfg.layers in ("all", "*") else parse_blocks(cfg.layers, c.n_layer, where="--layers")
    print(f"{cfg.model}: {c.arch}, {c.n_layer} layers, MLP {c.n_embd} <-> {c.mlp_hidden}, "
          f"{dense.param_counts()['total']:,} parameters ({dense.param_counts()['tying']})")
    return dense, layers


def calibrate_and_decompose(cfg, dense, layers):
    """(model, rows, planning): the calibration (if --calib) and the decomposition, their forwards in
    --calib_dtype; `planning` is the planner's reasoning as printed."""
    init, cache = cfg.init_spec(), WhiteningCache()
    batches = moments = grads = None
    if cfg.calib:
        data = open_dataset(cfg.calib)
        check_data_fits(data, dense, cfg.calib)
        if cfg.calib_tokens > data.size("train"):
            raise UserError(f"--calib_tokens {cfg.calib_tokens:,} exceeds the {data.size('train'):,} training "
                            f"tokens of {cfg.calib}; lower it")
        batches, moments, grads = calibrate(
            dense, data, cfg.calib, tokens=cfg.calib_tokens, seq=min(cfg.calib_seq, dense.config.block_size),
            seed=cfg.seed, layers=set(layers or range(dense.config.n_layer)),
            moments=not cfg.stream and (bool(cfg.target_params) or not cfg.sequential),
            fisher_tokens=cfg.fisher_tokens if cfg.init == "fisher" and not cfg.stream else 0,
            fisher_labels=cfg.fisher_labels, cache_path=cfg.calib_cache, force=cfg.force)
    init.check_stats(batches is not None, grads is not None or (cfg.stream and batches is not None))
    rows, model, planning = [], dense, []  # planning: the planner's reasoning, as printed, kept in the report
    if not (cfg.keep_blocks and not (cfg.shape or cfg.target_params or cfg.plan)):  # truncation alone otherwise
        request = dict(plan=cfg.plan, shape=cfg.shape, factors=cfg.factors, target=cfg.target_params,
                       tolerance=cfg.tolerance, allocate=cfg.allocate, scope=cfg.scope, scalars=cfg.scalars,
                       candidates=cfg.plan_candidates, score_blocks=cfg.score_blocks,
                       rank_multiple=cfg.rank_multiple or (32 if cfg.device.startswith("cuda") else 1),
                       families=parse_families(cfg.families), max_factors=cfg.kron_factors)
        td = time.time()

        def log(line):
            print(line)
            planning.append(line)
        if cfg.stream:  # the same factors in one block's memory (kronygpt/streaming.py)
            torch.manual_seed(cfg.seed)
            model, rows = stream_decompose(dense, batches, init, layers=layers, sequential=cfg.sequential,
                                           permute=cfg.permute, spill_dir=cfg.spill_dir or None,
                                           fisher_tokens=cfg.fisher_tokens if cfg.init == "fisher" else 0,
                                           fisher_labels=cfg.fisher_labels, seed=cfg.seed, log=log,
                                           **request)
        else:
            plan = choose_plan(dense, layers=layers, init=init, moments=moments, grads=grads, cache=cache,
                               permute=cfg.permute, log=log, **request)
            if cfg.permute and cfg.allocate and not permutes(plan, dense.config):
                print("--permute: the allocation gave no MLP matrix a Kronecker shape; nothing to reorder")
                cfg.permute = False
            torch.manual_seed(cfg.seed)
            model, rows = decompose_model(dense, plan, init, moments=None if cfg.sequential else moments,
                                          grads=grads, calib=batches if cfg.sequential else None,
                                          sequential=cfg.sequential, permute=cfg.permute, cache=cache, log=print)
        print_table(rows)
        print(f"decomposition: {time.time() - td:.0f}s")
    return model, rows, planning


def main(argv=None):
    cfg = configure(DecompConfig(), sys.argv[1:] if argv is None else argv, doc=__doc__)
    return_large_frees_to_os()  # peak memory is this tool's limit: freed statistics go back to the system
    out, report_path = (check_output_file(cfg.out, cfg.force, cfg.model, report=True) if cfg.out else (None, None))
    t0 = time.time()
    dense, layers = load_dense(cfg)
    if cfg.list_shapes:
        return print_shapes(dense.config, layers)
    if dense.config.is_factorized:
        raise UserError("the model already has Kronecker matrices; pass the dense model it came from")
    before = dense.param_counts()
    device_type = next(dense.parameters()).device.type
    if cfg.calib_dtype == "auto":  # the report says which precision ran
        cfg.calib_dtype = "bfloat16" if device_type == "cuda" else "float32"
    with autocast(device_type, cfg.calib_dtype):
        model, rows, planning = calibrate_and_decompose(cfg, dense, layers)
    totals = summary(rows, before, model.param_counts(), cfg.permute)
    report = {**{k: v for k, v in vars(cfg).items() if k not in ("out", "force", "list_shapes")},
              "plan": model.config.kron_plan, "params_before": before, "params_after": model.param_counts(),
              "seconds": time.time() - t0, **totals, "planning": planning, "matrices": rows, "model_args": model.config.to_dict()}
    save_checkpoint(out, model.cpu(), tokenizer=getattr(dense, "tokenizer_name", "gpt2"),
                    extra=dict(decomposition={k: v for k, v in report.items() if k not in ("matrices", "model_args")}))
    with open(report_path, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(f"wrote {out} and {report_path} in {report['seconds']:.1f}s")


if __name__ == "__main__":
    run_cli(main)
