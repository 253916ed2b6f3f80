"""
Decompose a dense model's MLP matrices into sums of Kronecker products and write a checkpoint that
train.py (init_from=PATH), train_distillation.py, sample.py and eval.py load.

    python kron_decomp.py --model gpt2 --factors 1 --shape 768x768 --init vl_norm --out out-decomp/gpt2_81M.pt
    python kron_decomp.py --model gpt2 --target_params distilgpt2 --init vl --out out-decomp/gpt2_82M.pt
    python kron_decomp.py --model gpt2 --factors 1 --shape 3072x384 --init prune --out out-decomp/gpt2_96M_prune.pt
    python kron_decomp.py --model gpt2 --list_shapes            # every valid shape and its parameter counts
    python kron_decomp.py --model smollm2-135m --target_params 81.4M --init aware --calib shakespeare_smollm2-135m \\
        --out out-decomp/smollm2_81M.pt                          # the calibrated planner picks shape and factors
    python kron_decomp.py --model smollm2-135m --target_params 81.4M --init aware --calib shakespeare_smollm2-135m \\
        --allocate --out out-decomp/smollm2_81M_alloc.pt         # each matrix its own rank (or dense)
    python kron_decomp.py --model smollm2-135m --keep_blocks even --out out-decomp/smollm2_15blocks.pt  # truncation

--shape m1xn1 is the first factor A of c_fc (Llama: gate_proj and up_proj), of shape (hidden, n_embd);
B is (hidden/m1, n_embd/n1), and c_proj (down_proj) uses the opposite shapes. --shape lowrank is the family
member (out,1)x(1,in) for every matrix: W = sum_k a_k b_k^T, with --factors the rank. --plan gives any
per-block plan (grammar in plans.py). Initialisations are described in decompose.py; 'aware' needs --calib.
With --calib every report row also carries the calibrated output error ||(W - W_hat) X|| / ||W X||.
The checkpoint and a JSON report beside it (same name, .json) are written only if neither exists (--force
overwrites).
"""

import argparse
import json
import os
import re
import sys
import time

import torch

from kronygpt.calib import HEAD, calibration_batches, collect_grads, collect_moments, load_calib_cache, save_calib_cache
from kronygpt.checkpoint import load_model, resolve_checkpoint_path, save_checkpoint
from configurator import run_cli
from kronygpt.data_utils import REPO, TokenData
from kronygpt.decompose import INITS, decompose_model, describe, is_lowrank, kron_config, plan_config
from kronygpt.errors import UserError
from kronygpt.kronecker import kron_shape
from model import GPT, GPTConfig
from kronygpt.planner import (SCOPES, allocate, curve_error, factors_for_target, keeps_rank, lowrank_curves, mac_ratio,
                     matrices, param_base, plan_for_target, reachable, score_plans, shape_candidates, spread_blocks,
                     uniform_plan)
from kronygpt.plans import format_plan, parse_blocks


# -----------------------------------------------------------------------------
# configs and other model surgery

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


# -----------------------------------------------------------------------------
# parsing

def parse_count(text):
    """'81M', '81.9M', '81912576', '500k', or a model name ('distilgpt2') -> an integer."""
    sizes = {"distilgpt2": 81_912_576, "gpt2": 124_439_808}
    if text in sizes:
        return sizes[text]
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([kKmMbB]?)", text.strip())
    if not m:
        raise UserError(f"--target_params {text!r} is not a count like 81M, 81.9M, 81912576 or distilgpt2")
    n = int(round(float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}[m.group(2).lower()]))
    if n <= 0:
        raise UserError(f"--target_params {text!r} must be a positive count")
    return n


def parse_shape(text, config):
    """'m1xn1' -> (m1, n1); 'lowrank' -> (mlp_hidden, 1), the family member W = sum_k a_k b_k^T."""
    if text.strip().lower() == "lowrank":
        return config.mlp_hidden, 1
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m:
        raise UserError(f"--shape {text!r} must look like m1xn1 (e.g. 768x768) or 'lowrank'")
    return int(m.group(1)), int(m.group(2))


def parse_layers(text, n_layer):
    """'all', '0,2,4', '6-11' or a mix -> sorted block indices (None for all)."""
    if text in (None, "all", "*"):
        return None
    return parse_blocks(text, n_layer, where="--layers")


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


def output_paths(args):
    """(checkpoint, report) paths, refusing anything that would destroy an input or an existing file."""
    out = args.out
    if out.endswith(".json"):
        raise UserError(f"--out {out} ends in .json, the name of the report; give the checkpoint a .pt name")
    if os.path.isdir(out):
        raise UserError(f"--out {out} is a directory; give a checkpoint file name such as {out}/model.pt")
    report = os.path.splitext(out)[0] + ".json"
    src = resolve_checkpoint_path(args.model)
    if os.path.exists(src) and os.path.exists(out) and os.path.samefile(src, out):
        raise UserError(f"--out {out} is the model being decomposed; choose another path")
    if not args.force:
        for path in (out, report):
            if os.path.exists(path):
                raise UserError(f"{path} already exists; choose another --out or pass --force to overwrite it")
    parent = os.path.dirname(os.path.abspath(out))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise UserError(f"--out {out}: {parent} is a file, not a directory")
    return out, report


# -----------------------------------------------------------------------------
# printing

def fmt(n):
    return f"{n:,}" if n is not None else "-"


def print_table(rows, out=sys.stdout):
    calibrated = any("output_error" in r for r in rows)
    print(f"{'layer':>5} {'matrix':<10} {'kind':<24} {'rel. error':>10} {'norm ratio':>10}"
          + (f" {'output err':>10}" if calibrated else ""), file=out)
    for r in rows:
        print(f"{r['layer']:>5} {r['matrix']:<10} {r['kind']:<24} {r['rel_error']:>10.4f} {r['norm_ratio']:>10.4f}"
              + (f" {r['output_error']:>10.4f}" if calibrated else ""), file=out)


def print_shapes(config, layers):
    base, n = param_base(config, layers)
    print(f"\nshapes of the {config.mlp_hidden}x{config.n_embd} up matrices (down matrices take the opposite); "
          f"total model parameters for 1..4 factors; 'keeps rank' = fewest factors whose product can "
          f"have the dense rank {min(config.mlp_hidden, config.n_embd)}")
    print(f"{'A (m1,n1)':<12} {'B (m2,n2)':<12} {'max rank':>8} {'keeps rank':>10} "
          + " ".join(f"{f'{f} factor' + ('s' if f > 1 else ''):>13}" for f in range(1, 5)))
    from kronygpt.kronecker import all_shapes
    for s in all_shapes(config.mlp_hidden, config.n_embd):
        counts = [base + n * s.params(f) if f <= s.max_rank else None for f in range(1, 5)]
        keep = next((f for f in range(1, 5) if keeps_rank(s, f)), None)
        print(f"{f'({s.m1},{s.n1})':<12} {f'({s.m2},{s.n2})':<12} {s.max_rank:>8} {fmt(keep) if keep else '>4':>10} "
              + " ".join(f"{fmt(c):>13}" for c in counts))


# -----------------------------------------------------------------------------
# the command

def choose_uniform(args, dense, target, layers, moments, grads=None):
    """(factors, up shape) for --target_params: by parameter count alone, or by calibrated error with --calib."""
    config = dense.config
    lo, hi = reachable(config, target, args.scalars, layers)
    if not lo * 0.99 <= target <= hi:
        raise UserError(f"--target_params {target:,} cannot be reached: plans of this model range from {lo:,} "
                        f"(one factor of the smallest shape) to {hi:,} (dense) parameters")
    cands = shape_candidates(config, target, args.scalars, layers)
    near = [c for c in cands if abs(c[0] - target) / target <= args.tolerance]
    if not near:
        closest = sorted(cands, key=lambda c: abs(c[0] - target))[:3]
        raise UserError(f"no plan lands within {args.tolerance:.1%} of --target_params {target:,}; the nearest "
                        f"reachable totals are "
                        + ", ".join(f"{t:,} ({describe(s, f)})" for t, f, s in closest))
    if moments is None:  # by parameter count alone: Krony-PT's rank-preserving, few-factor plans
        near = [c for c in plan_for_target(config, target, args.scalars, layers)
                if abs(c[0] - target) / target <= args.tolerance] or near
        total, f, s = near[0]
        print(f"target {target:,}: {describe(s, f)} -> {total:,} parameters ({100 * (total - target) / target:+.2f}%), "
              f"MLP MACs {mac_ratio(s, f):.2f}x dense")
        print("  alternatives: " + "; ".join(f"{describe(c, g)}: {t:,}" for t, g, c in near[1:5]))
        return f, s
    # score the fastest candidates and the low-rank member by calibrated output error on a subset of blocks
    near = [c for c in near if not (is_lowrank(c[2]) and c[2].n1 != 1)]  # low rank once: (out,1)x(1,in)
    pool = [c for c in near if mac_ratio(c[2], c[1]) <= 1.0][:args.plan_candidates]
    pool += [c for c in near if is_lowrank(c[2]) and c not in pool]
    blocks = [b for b in spread_blocks(config.n_layer, args.score_blocks) if layers is None or b in layers] or \
        (layers or [0])[:args.score_blocks]
    t0 = time.time()
    scores = score_plans(dense, pool, moments, args.init, blocks, args.damping, grads, args.g_damping)
    order = sorted(range(len(pool)), key=lambda i: scores[i])
    metric = "predicted loss increase" if grads else "output error"
    print(f"target {target:,}: {len(pool)} candidate plans scored by calibrated {metric} ({args.init}) on blocks "
          f"{blocks} in {time.time() - t0:.0f}s; best first:")
    print(f"  {'plan':<26} {'parameters':>12} {metric:>23} {'MACs':>6}")
    for i in order[:6]:
        t, f, s = pool[i]
        print(f"  {describe(s, f):<26} {t:>12,} {scores[i]:>23.4f} {mac_ratio(s, f):>5.2f}x")
    _, f, s = pool[order[0]]
    return f, s


def allocated_plan(args, dense, budget, layers, moments, uniform, grads=None, cache=None):
    """A per-matrix plan (each its own rank, or dense) for the budget, from the calibrated low-rank curves:
    minimising the summed squared relative output error, or with grads ('fisher') the summed predicted loss
    increase. --scope says which matrices may be factorised (MLPs; + attention; + the embedding). With the
    MLP scope it falls back to the uniform plan when that scores lower on the same objective (said so)."""
    config = dense.config
    mats = matrices(config, layers, args.scope)
    base, _ = param_base(config, layers, args.scope)
    t0 = time.time()
    curves = lowrank_curves(dense, moments, mats, args.damping, grads, args.g_damping, cache)
    alloc, used = allocate(curves, mats, budget - base)
    objective = sum(0.0 if r == "dense" else curve_error(curves, k, r) ** 2 for k, r in alloc.items())
    what = "predicted loss increase" if grads else "sum of squared output errors"
    plan, embed = {}, None
    for (b, name), r in alloc.items():
        if r == "dense":
            continue
        if b == "embed":
            embed = (config.vocab_size, 1, r)
        else:
            plan.setdefault(b, {})[name] = (config.matrix_dims()[name][0], 1, r)
    text = format_plan(plan, config.n_layer, config.matrix_dims(), embed, (config.vocab_size, config.n_embd))
    print(f"allocation over {args.scope} ({time.time() - t0:.0f}s): {base + used:,} parameters, {what} "
          f"{objective:.4f} over {len(mats)} matrices; plan: {text}")
    f, s = uniform
    if args.scope == "mlp" and is_lowrank(s):  # the uniform low-rank plan is in the search space: compare
        uni = sum(curve_error(curves, (b, n), f) ** 2 for b, n, _, _ in mats)
        print(f"  uniform {describe(s, f)}: {what} {uni:.4f}")
        if uni < objective:
            print("  the uniform plan scores lower; keeping it")
            return None
    rows = {}
    for b, n, _, _ in mats:
        r = alloc[(b, n)]
        e = 0.0 if r == "dense" else curve_error(curves, (b, n), r)
        rows.setdefault(b, []).append(f"{n} {r} ({'dloss' if grads else 'err'} {e * e if grads else e:.4f})")
    for b, parts in rows.items():
        print(f"  {'block ' + str(b) if b != 'embed' else 'embedding':>9}: " + ", ".join(parts))
    return text


def uniform_config(config, s, args, layers):
    """The model config of one shape for every planned block: the readable kron_factors/kron_shape
    shorthand, or a plan string for the low-rank member (every matrix (out,1)x(1,in))."""
    if is_lowrank(s):
        return plan_config(config, uniform_plan(config, s, args.factors, layers), args.scalars)
    return kron_config(config, args.factors, (s.m1, s.n1), args.scalars, layers)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2", help="hub name, Hugging Face directory, or dense checkpoint")
    p.add_argument("--factors", type=int, default=1, help="Kronecker products summed per matrix (the rank for lowrank)")
    p.add_argument("--shape", help="m1xn1: the first factor A of c_fc (e.g. 768x768), or 'lowrank'; with "
                                   "--target_params, the number of factors is chosen to meet the target")
    p.add_argument("--plan", help="a per-block plan string (see plans.py), e.g. '*: mlp=lowrank*64; 0: dense'")
    p.add_argument("--target_params", help="choose the plan for this total, e.g. 81M, 96M, distilgpt2")
    p.add_argument("--tolerance", type=float, default=0.01, help="--target_params: accepted relative distance")
    p.add_argument("--scope", default="mlp", choices=SCOPES,
                   help="--allocate: what may be factorised: mlp, blocks (+ attention) or all (+ the embedding)")
    p.add_argument("--allocate", action="store_true", help="with --target_params: each matrix its own rank (or dense)")
    p.add_argument("--list_shapes", action="store_true", help="print every valid shape with its counts and exit")
    p.add_argument("--init", default="vl", choices=INITS, help="initialisation (see decompose.py)")
    p.add_argument("--scalars", action="store_true", help="learnable per-factor scalars (vl_norm puts alpha there)")
    p.add_argument("--prune_keep", default="even", choices=("even", "odd"), help="prune: which features to keep")
    p.add_argument("--prune_eps", type=float, default=0.0, help="prune: value of the non-selected B entries")
    p.add_argument("--layers", default="all", help="blocks to decompose: 'all', '0,2,4', '6-11'; others stay dense")
    p.add_argument("--keep_blocks", help="layer truncation first: 'even', 'first:K', 'spread:K' or indices")
    p.add_argument("--calib", help="a prepared dataset (name under data/ or a path) whose training tokens calibrate")
    p.add_argument("--calib_tokens", type=int, default=16384, help="calibration tokens")
    p.add_argument("--calib_seq", type=int, default=256, help="calibration sequence length")
    p.add_argument("--damping", type=float, default=1e-4, help="aware: relative damping of the input covariance")
    p.add_argument("--sequential", action="store_true", help="calibrate each block on the already-compressed blocks")
    p.add_argument("--permute", action="store_true", help="reorder each MLP's hidden units first (see permute.py)")
    p.add_argument("--fisher_tokens", type=int, default=4096, help="fisher: calibration tokens for output gradients")
    p.add_argument("--calib_cache", help="a file to keep the calibration statistics in and reuse (same model, data, "
                                         "tokens and seed)")
    p.add_argument("--g_damping", type=float, default=1e-2, help="fisher: relative damping of the gradient moments")
    p.add_argument("--plan_candidates", type=int, default=16, help="--calib planner: candidate shapes scored")
    p.add_argument("--score_blocks", type=int, default=6, help="--calib planner: blocks the candidates are scored on")
    p.add_argument("--seed", type=int, default=1337, help="for --init random and the calibration batches")
    p.add_argument("--device", default="cpu", help="where the decomposition runs")
    p.add_argument("--out", help="output checkpoint path; a .json report is written beside it")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out and its report")
    args = p.parse_args(argv)

    if not args.list_shapes and not args.out:
        raise UserError("--out PATH is required (or use --list_shapes)")
    if args.factors < 1:
        raise UserError(f"--factors must be at least 1, got {args.factors}")
    if args.plan and (args.shape or args.target_params):
        raise UserError("--plan gives every block's shapes; drop --shape and --target_params")
    if args.allocate and not args.target_params:
        raise UserError("--allocate divides a parameter budget: give --target_params too")
    if args.calib_tokens < 1 or args.calib_seq < 1:
        raise UserError("--calib_tokens and --calib_seq must be positive")
    if not 0 <= args.damping < 1e3 or args.damping != args.damping:
        raise UserError(f"--damping must be a small non-negative number, got {args.damping}")
    if args.prune_eps != args.prune_eps or abs(args.prune_eps) == float("inf"):
        raise UserError(f"--prune_eps must be a finite number, got {args.prune_eps}")
    out, report_path = output_paths(args) if args.out else (None, None)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device} but CUDA is not available; use --device cpu")
    t0 = time.time()
    dense = load_model(args.model, device=args.device).eval()
    if args.keep_blocks:
        keep = parse_keep_blocks(args.keep_blocks, dense.config.n_layer)
        n_before = dense.param_counts()["total"]
        dense = truncate_blocks(dense, keep)
        print(f"layer truncation: kept {len(keep)} blocks {keep}; {n_before:,} -> {dense.param_counts()['total']:,} "
              f"parameters")
    config = dense.config
    layers = parse_layers(args.layers, config.n_layer)
    before = dense.param_counts()
    print(f"{args.model}: {config.arch}, {config.n_layer} layers, MLP {config.n_embd} <-> {config.mlp_hidden}, "
          f"{before['total']:,} parameters ({before['tying']})")
    if args.list_shapes:
        print_shapes(config, layers)
        return
    if dense.config.is_factorized:
        raise UserError("the model already has Kronecker matrices; pass the dense model it came from")

    batches, moments, grads, wcache = None, None, None, {}
    if args.calib:
        data = TokenData(args.calib if os.path.isdir(args.calib) else os.path.join(REPO, "data", args.calib))
        if data.meta["vocab_size"] > config.vocab_size:
            raise UserError(f"--calib {args.calib} has vocabulary {data.meta['vocab_size']} but the model only "
                            f"{config.vocab_size}; prepare it with the model's tokenizer")
        seq = min(args.calib_seq, config.block_size)
        batches = calibration_batches(data, args.calib_tokens, seq, seed=args.seed)
        planned = set(layers or range(config.n_layer))
        key = dict(model=args.model, calib=args.calib, tokens=args.calib_tokens, seq=seq, seed=args.seed,
                   keep_blocks=args.keep_blocks, layers=sorted(planned),
                   contents="every block matrix and the lm_head")  # what collect_moments/collect_grads hold
        cached = load_calib_cache(args.calib_cache, key)
        if args.target_params or not args.sequential:  # the planner and plain decomposition use dense moments
            tc = time.time()
            moments = cached.get("moments") or collect_moments(dense, batches, planned)
            print(f"calibration: {sum(b.numel() for b in batches):,} tokens of {args.calib} in {time.time() - tc:.0f}s"
                  + (f" (from {args.calib_cache})" if "moments" in cached else ""))
        if args.init == "fisher":
            tc = time.time()
            grads = cached.get(f"grads_{args.fisher_tokens}") or collect_grads(dense, batches, planned,
                                                                              args.fisher_tokens)
            print(f"output gradients: {min(args.fisher_tokens, sum(b.numel() for b in batches)):,} tokens in "
                  f"{time.time() - tc:.0f}s" + (f" (from {args.calib_cache})" if f"grads_{args.fisher_tokens}"
                                                 in cached else ""))
        collected = (moments is not None and "moments" not in cached) or \
            (grads is not None and f"grads_{args.fisher_tokens}" not in cached)
        if args.calib_cache and collected:  # rewriting an unchanged cache (GBs for SmolLM2) only costs time
            save_calib_cache(args.calib_cache, key, cached, moments, grads, args.fisher_tokens)
    elif args.init in ("aware", "fisher"):
        raise UserError(f"--init {args.init} needs calibration data: pass --calib DATASET")

    if args.keep_blocks and not (args.shape or args.target_params or args.plan):
        model, rows, kconfig = dense, [], config  # truncation alone
    else:
        if args.plan:
            kconfig = plan_config(config, args.plan, args.scalars, layers)
        elif args.target_params:
            target = parse_count(args.target_params)
            if args.shape:  # the shape is fixed: the number of factors meets the target
                shape = parse_shape(args.shape, config)
                s = kron_shape(config.mlp_hidden, config.n_embd, *shape)
                args.factors, total = factors_for_target(config, s, target, args.scalars, layers)
                if abs(total - target) / target > args.tolerance:
                    raise UserError(f"--target_params {target:,} with --shape {args.shape}: the nearest reachable "
                                    f"total is {total:,} ({describe(s, args.factors)}); change the target or the shape")
                print(f"target {target:,}: {describe(s, args.factors)} -> {total:,} parameters "
                      f"({100 * (total - target) / target:+.2f}%)")
            elif args.allocate:  # the allocator's family is low rank: compare with its uniform plan
                s = kron_shape(config.mlp_hidden, config.n_embd, config.mlp_hidden, 1)
                args.factors, total = factors_for_target(config, s, target, args.scalars, layers)
                if abs(total - target) / target > args.tolerance:
                    lo, hi = reachable(config, target, args.scalars, layers)
                    raise UserError(f"--target_params {target:,} cannot be met by low-rank plans (the nearest is "
                                    f"{total:,}); targets between {lo:,} and {hi:,} are reachable")
            else:
                args.factors, s = choose_uniform(args, dense, target, layers, moments, grads)
            # the allocation gets exactly the uniform plan's budget, so the two compare at equal parameters
            budget = param_base(config, layers)[0] + len(matrices(config, layers)) * s.params(args.factors, args.scalars)
            plan = allocated_plan(args, dense, budget, layers, moments, (args.factors, s), grads, wcache) \
                if args.allocate else None
            kconfig = plan_config(config, plan, args.scalars) if plan else uniform_config(config, s, args, layers)
        elif args.shape:
            shape = parse_shape(args.shape, config)
            kconfig = uniform_config(config, kron_shape(config.mlp_hidden, config.n_embd, *shape), args, layers)
        else:
            raise UserError("give --shape m1xn1, --target_params N or --plan (see --list_shapes)")
        torch.manual_seed(args.seed)
        td = time.time()
        model, rows = decompose_model(dense, init=args.init, prune_keep=args.prune_keep, prune_eps=args.prune_eps,
                                      config=kconfig, calib=batches if args.sequential else None,
                                      moments=None if args.sequential else moments, sequential=args.sequential,
                                      damping=args.damping, grads=grads, g_damping=args.g_damping, cache=wcache,
                                      permute=args.permute, log=print)
        print_table(rows)
        print(f"decomposition: {time.time() - td:.0f}s")
    after = model.param_counts()
    seconds = time.time() - t0
    print(f"parameters: {before['total']:,} -> {after['total']:,} "
          f"(non-embedding {before['non_embedding']:,} -> {after['non_embedding']:,}; {after['tying']})")
    summary = {}
    if rows and "output_error" in rows[0]:
        summary["mean_output_error"] = sum(r["output_error"] for r in rows) / len(rows)
        print(f"mean calibrated output error {summary['mean_output_error']:.4f} over {len(rows)} matrices")
    if args.permute and any("permute_error_before" in r for r in rows):
        blocks = {r["layer"]: (r["permute_error_before"], r["permute_error_after"]) for r in rows
                  if "permute_error_before" in r}
        summary["permute_error"] = {b: dict(before=v[0], after=v[1]) for b, v in blocks.items()}
        gain = sum(v[0] for v in blocks.values()) / max(sum(v[1] for v in blocks.values()), 1e-30)
        print(f"permutation: decomposition error (whitened, summed over blocks) lower by {gain:.3f}x")
    if args.sequential and args.permute:
        print("note: --permute applies to the plain (non-sequential) decomposition only; ignored")
    estimated = [r["fisher_error"] for r in rows if "fisher_error" in r]
    if estimated:
        summary["predicted_loss_increase"] = sum(estimated)
        missing = f" ({len(rows) - len(estimated)} without an estimate)" if len(estimated) < len(rows) else ""
        print(f"predicted loss increase (K-FAC, summed over {len(estimated)} matrices"
              f"{missing}) {summary['predicted_loss_increase']:.4f}")
    plan_text = kconfig.plan_text()
    report = dict(model=args.model, init=args.init, plan=plan_text, scalars=args.scalars, layers=layers,
                  keep_blocks=args.keep_blocks, calib=args.calib, calib_tokens=args.calib_tokens if args.calib else 0,
                  sequential=args.sequential, permute=args.permute, damping=args.damping, allocate=args.allocate,
                  fisher_tokens=args.fisher_tokens if args.init == "fisher" else 0, g_damping=args.g_damping,
                  prune_keep=args.prune_keep, prune_eps=args.prune_eps, params_before=before, params_after=after,
                  seconds=seconds, **summary, matrices=rows, model_args=model.config.to_dict())
    save_checkpoint(out, model.cpu(), tokenizer=getattr(dense, "tokenizer_name", "gpt2"),
                    extra=dict(decomposition={k: v for k, v in report.items() if k not in ("matrices", "model_args")}))
    with open(report_path, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(f"wrote {out} and {report_path} in {seconds:.1f}s")


if __name__ == "__main__":
    run_cli(main)
