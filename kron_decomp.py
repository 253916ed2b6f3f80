"""
Decompose a dense model's MLP matrices into sums of Kronecker products and write a checkpoint that
train.py (init_from=PATH), train_distillation.py, sample.py and eval.py load.

    python kron_decomp.py --model gpt2 --factors 1 --shape 768x768 --init vl_norm --out out-decomp/gpt2_81M.pt
    python kron_decomp.py --model gpt2 --target_params distilgpt2 --init vl --out out-decomp/gpt2_82M.pt
    python kron_decomp.py --model gpt2 --factors 1 --shape 3072x384 --init prune --out out-decomp/gpt2_96M_prune.pt
    python kron_decomp.py --model gpt2 --list_shapes            # every valid shape and its parameter counts
    python kron_decomp.py --model smollm2-135m --target_params 80M --out out-decomp/smollm2_80M.pt

--shape m1xn1 is the first factor A of c_fc (Llama: gate_proj and up_proj), of shape (hidden, n_embd);
B is (hidden/m1, n_embd/n1), and c_proj (down_proj) uses the opposite shapes (n1,m1)x(n_embd/n1, hidden/m1).
Initialisations (W is one (out, in) matrix; see kronecker.py for the maths):
    vl        Van Loan-Pitsianis: the top singular triplets of the rearranged R(W), each factor scaled by
              sqrt(sigma): the best `factors`-term Kronecker approximation in Frobenius norm.
    vl_norm   vl rescaled so ||sum A(x)B||_F = ||W||_F (folded into A and B, or into learnable per-factor
              scalars with --scalars).
    prune     deterministic pruning: B is a one-hot selector (+ --prune_eps elsewhere) and A keeps one
              entry of every (m2, n2) block of W. For (out, in/2)x(1,2) this keeps the even (or odd) input
              features of c_fc and the even (or odd) output features of c_proj. Factor k keeps offset k
              (+1 for --prune_keep odd), so m2*n2 factors reproduce W exactly.
    random    factors drawn so the product has the dense init's scale (0.02, c_proj 0.02/sqrt(2*n_layer)).
"""

import argparse
import copy
import json
import math
import os
import re
import sys
import time

import torch

from checkpoint import load_model, save_checkpoint
from configurator import UserError, run_cli
from kronecker import KroneckerLinear, all_shapes, factored_macs, kron_shape, kron_sum, van_loan
from model import GPT, GPTConfig

INITS = ("vl", "vl_norm", "prune", "random")
# 'up' matrices map n_embd -> hidden and use c_fc's shape; 'down' matrices use the opposite
MLP_MATRICES = {"gpt2": (("c_fc", True), ("c_proj", False)),
                "llama": (("gate_proj", True), ("up_proj", True), ("down_proj", False))}


# -----------------------------------------------------------------------------
# one matrix

def init_factors(W, s, factors, init, scalars=False, prune_keep="even", prune_eps=0.0, random_std=0.02):
    """Factors for one (out, in) matrix W: (A (r,m1,n1), B (r,m2,n2), scalars (r,) or None)."""
    if factors > s.max_rank:
        raise UserError(f"{factors} factors exceed the maximum Kronecker rank {s.max_rank} of shape {s}; "
                        f"use at most {s.max_rank} factors or another --shape")
    W = W.detach().double()
    scal = None
    if init in ("vl", "vl_norm"):
        A, B, _ = van_loan(W, s, factors)
        if init == "vl_norm":
            alpha = (torch.linalg.norm(W) / torch.linalg.norm(kron_sum(A, B))).item()
            if scalars:
                scal = torch.full((factors,), alpha, dtype=W.dtype)
            else:
                A, B = A * math.sqrt(alpha), B * math.sqrt(alpha)
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
    return A, B, scal


def matrix_report(W, layer):
    W_hat = layer.weight.detach().double()
    W = W.detach().double()
    norm = torch.linalg.norm(W).item()
    return dict(rel_error=(torch.linalg.norm(W - W_hat).item() / norm), norm_ratio=torch.linalg.norm(W_hat).item() / norm)


# -----------------------------------------------------------------------------
# a model

def kron_config(config, factors, shape, scalars, layers):
    """A copy of config with the Kronecker MLP spec set (layers=None means every block)."""
    new = copy.deepcopy(config)
    new.kron_factors, new.kron_shape, new.kron_scalars = factors, tuple(shape), scalars
    new.kron_layers = None if layers is None or sorted(layers) == list(range(config.n_layer)) else tuple(layers)
    new.__post_init__()
    return new


def replace_mlp(model, layer, init, prune_keep="even", prune_eps=0.0):
    """Swap block `layer`'s dense MLP matrices for Kronecker ones as model.config specifies, initialised
    from the dense weights. Returns the report rows. model.config.kron_layers must include `layer`."""
    cfg = model.config
    mlp = model.transformer.h[layer].mlp
    up_shape = kron_shape(cfg.mlp_hidden, cfg.n_embd, *cfg.kron_shape)
    rows = []
    for name, up in MLP_MATRICES[cfg.arch]:
        dense = getattr(mlp, name)
        if isinstance(dense, KroneckerLinear):
            raise UserError(f"block {layer}'s {name} is already Kronecker; pass the dense model")
        s = up_shape if up else up_shape.transposed()
        std = 0.02 if up else 0.02 / math.sqrt(2 * cfg.n_layer)
        A, B, scal = init_factors(dense.weight, s, cfg.kron_factors, init, cfg.kron_scalars, prune_keep, prune_eps, std)
        kl = KroneckerLinear(s, cfg.kron_factors, bias=dense.bias is not None, scalars=cfg.kron_scalars,
                             impl=cfg.kron_impl).to(device=dense.weight.device, dtype=dense.weight.dtype)
        with torch.no_grad():
            kl.A.copy_(A)
            kl.B.copy_(B)
            if scal is not None:
                kl.scalars.copy_(scal)
            if dense.bias is not None:
                kl.bias.copy_(dense.bias)
        rows.append(dict(layer=layer, matrix=name, shape=str(s), **matrix_report(dense.weight, kl)))
        setattr(mlp, name, kl)
    return rows


def decompose_model(dense, factors, shape, init="vl", layers=None, scalars=False, prune_keep="even", prune_eps=0.0):
    """A Kronecker copy of `dense` (left unchanged) and one report row per decomposed matrix."""
    if dense.config.kron_factors:
        raise UserError("the model already has Kronecker MLPs; pass the dense model it came from")
    model = copy.deepcopy(dense)
    layers = list(range(dense.config.n_layer)) if layers is None else sorted(set(layers))
    model.config = kron_config(dense.config, factors, shape, scalars, layers)
    rows = []
    for i in layers:
        rows.extend(replace_mlp(model, i, init, prune_keep, prune_eps))
    return model, rows


def truncate_blocks(model, keep):
    """A copy of the dense `model` with only the blocks `keep` (in that order): layer truncation, the
    equal-size baseline (DistilGPT2's student starts from every other teacher block)."""
    if model.config.kron_factors:
        raise UserError("--keep_blocks truncates a dense model; pass the dense model")
    new = GPT(GPTConfig.from_dict({**model.config.to_dict(), "n_layer": len(keep)}))
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("transformer.h.")}
    for j, i in enumerate(keep):
        sd.update({f"transformer.h.{j}.{k}": v for k, v in model.transformer.h[i].state_dict().items()})
    new.load_state_dict(sd)
    new.tokenizer_name = getattr(model, "tokenizer_name", "gpt2")
    return new.to(next(model.parameters()).device)


def parse_keep_blocks(text, n_layer):
    """'even' (0,2,4,..), 'first:K', 'spread:K' (K evenly spaced, first and last included), or indices."""
    kind, _, k = text.partition(":")
    if kind == "even":
        return list(range(0, n_layer, 2))
    if kind in ("first", "spread"):
        if not k.isdigit() or not 1 <= int(k) <= n_layer:
            raise UserError(f"--keep_blocks {text!r}: K must be a number of blocks in 1..{n_layer}")
        k = int(k)
        if kind == "first":
            return list(range(k))
        return sorted({round(i * (n_layer - 1) / max(1, k - 1)) for i in range(k)})
    return parse_layers(text, n_layer)


# -----------------------------------------------------------------------------
# parameter plans

def param_base(config, layers=None):
    """(parameters outside the decomposed matrices' weights, number of decomposed matrices)."""
    with torch.device("meta"):
        dense_total = GPT(GPTConfig(**{**config.to_dict(), "kron_factors": 0})).param_counts()["total"]
    n = (config.n_layer if layers is None else len(set(layers))) * len(MLP_MATRICES[config.arch])
    return dense_total - n * config.mlp_hidden * config.n_embd, n


def planned_params(config, factors, shape, scalars=False, layers=None):
    """Total parameters (tied embeddings once) of `config` decomposed with this plan, without building it."""
    base, n = param_base(config, layers)
    return base + n * kron_shape(config.mlp_hidden, config.n_embd, *shape).params(factors, scalars)


def parse_count(text, config=None):
    """'81M', '81.9M', '81912576', '500k', or a model name ('distilgpt2') -> an integer."""
    sizes = {"distilgpt2": 81_912_576, "gpt2": 124_439_808}
    if text in sizes:
        return sizes[text]
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([kKmMbB]?)", text.strip())
    if not m:
        raise UserError(f"--target_params {text!r} is not a count like 81M, 81.9M, 81912576 or distilgpt2")
    return int(round(float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}[m.group(2).lower()]))


def keeps_rank(s, factors):
    """Whether factors x rank(A) x rank(B) can reach the dense matrix's rank min(out, in)."""
    return factors * min(s.m1, s.n1) * min(s.m2, s.n2) >= min(s.out_features, s.in_features)


def plan_for_target(config, target, scalars=False, layers=None, max_factors=8):
    """Candidate plans (total_params, factors, KronShape), best first: within 1% of the target, then
    rank-preserving, then fewest factors, then fewest MACs per token, then closest."""
    base, n = param_base(config, layers)
    cands = [(base + n * s.params(f, scalars), f, s)
             for s in all_shapes(config.mlp_hidden, config.n_embd)
             for f in range(1, min(max_factors, s.max_rank) + 1)]

    def key(c):
        total, f, s = c
        off = abs(total - target) / target
        near = off <= 0.01
        return (not near, not keeps_rank(s, f), f if near else 0, round(mac_ratio(s, f), 2) if near else 0, off,
                -s.m1 * s.n1)  # last: the big factor first, as in Krony-PT
    return sorted(cands, key=key)


def mac_ratio(s, factors):
    """MACs per token of the up and down matrices together, relative to dense (1.0 = no saving)."""
    dense = s.in_features * s.out_features
    up, down = (min(min(factored_macs(x, factors).values()), dense) for x in (s, s.transposed()))
    return (up + down) / (2 * dense)


def list_shapes(config, layers=None, max_factors=4):
    """Rows of (shape, max_rank, rank-preserving factors, [total params for 1..max_factors])."""
    base, n = param_base(config, layers)
    rows = []
    for s in all_shapes(config.mlp_hidden, config.n_embd):
        counts = [base + n * s.params(f) if f <= s.max_rank else None
                  for f in range(1, max_factors + 1)]
        rows.append((s, s.max_rank, next((f for f in range(1, max_factors + 1) if keeps_rank(s, f)), None), counts))
    return rows


# -----------------------------------------------------------------------------
# command line

def parse_shape(text, config):
    """'m1xn1' -> (m1, n1); 'lowrank' -> (mlp_hidden, 1), the family member W = sum_k a_k b_k^T."""
    if text.strip().lower() == "lowrank":
        return config.mlp_hidden, 1
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m:
        raise UserError(f"--shape {text!r} must look like m1xn1 (e.g. 768x768) or 'lowrank'")
    return int(m.group(1)), int(m.group(2))


def factors_for_target(config, shape, target, scalars=False, layers=None):
    """(factors, total) of the given shape whose total parameter count is closest to target."""
    s = kron_shape(config.mlp_hidden, config.n_embd, *shape)
    base, n = param_base(config, layers)
    per = s.params(1, scalars)
    f = min(max(1, round((target - base) / (n * per))), s.max_rank)
    return f, base + n * s.params(f, scalars)


def parse_layers(text, n_layer):
    """'all', '0,2,4', '6-11' or a mix -> sorted block indices."""
    if text in (None, "all"):
        return None
    out = set()
    for part in text.split(","):
        a, _, b = part.strip().partition("-")
        if not a.isdigit() or (b and not b.isdigit()):
            raise UserError(f"--layers {text!r} must be 'all' or indices/ranges like 0,2,6-11")
        out.update(range(int(a), int(b or a) + 1))
    bad = sorted(i for i in out if i >= n_layer)
    if bad:
        raise UserError(f"--layers {bad} are outside 0..{n_layer - 1}")
    return sorted(out)


def fmt(n):
    return f"{n:,}" if n is not None else "-"


def print_table(rows, out=sys.stdout):
    print(f"{'layer':>5} {'matrix':<10} {'shape':<22} {'rel. error':>10} {'norm ratio':>10}", file=out)
    for r in rows:
        print(f"{r['layer']:>5} {r['matrix']:<10} {r['shape']:<22} {r['rel_error']:>10.4f} {r['norm_ratio']:>10.4f}",
              file=out)


def save_truncated(args, model, keep, seconds):
    """Write a truncated (dense) model and its report, as the decomposition path does."""
    report = dict(model=args.model, keep_blocks=keep, params_after=model.param_counts(), seconds=seconds,
                  model_args=model.config.to_dict())
    save_checkpoint(args.out, model.cpu(), tokenizer=getattr(model, "tokenizer_name", "gpt2"),
                    extra=dict(truncation=dict(model=args.model, keep_blocks=keep)))
    json_path = os.path.splitext(args.out)[0] + ".json"
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(f"wrote {args.out} and {json_path} in {seconds:.1f}s")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2", help="hub name, Hugging Face directory, or dense checkpoint")
    p.add_argument("--factors", type=int, default=1, help="Kronecker products summed per matrix")
    p.add_argument("--shape", help="m1xn1: the first factor A of c_fc (e.g. 768x768), or 'lowrank'; with "
                                   "--target_params, the number of factors is chosen to meet the target")
    p.add_argument("--target_params", help="choose shape and factors for this total, e.g. 81M, 96M, distilgpt2")
    p.add_argument("--list_shapes", action="store_true", help="print every valid shape with its counts and exit")
    p.add_argument("--init", default="vl", choices=INITS, help="initialisation (see above)")
    p.add_argument("--scalars", action="store_true", help="learnable per-factor scalars (vl_norm puts alpha there)")
    p.add_argument("--prune_keep", default="even", choices=("even", "odd"), help="prune: which features to keep")
    p.add_argument("--prune_eps", type=float, default=0.0, help="prune: value of the non-selected B entries")
    p.add_argument("--layers", default="all", help="blocks to decompose: 'all', '0,2,4', '6-11'; others stay dense")
    p.add_argument("--keep_blocks", help="layer truncation first: 'even', 'first:K', 'spread:K' or indices")
    p.add_argument("--seed", type=int, default=1337, help="for --init random")
    p.add_argument("--device", default="cpu", help="where the SVDs run")
    p.add_argument("--out", help="output checkpoint path; a .json report is written beside it")
    args = p.parse_args(argv)

    if not args.list_shapes and not args.out:
        raise UserError("--out PATH is required (or use --list_shapes)")
    t0 = time.time()
    dense = load_model(args.model, device=args.device)
    if args.keep_blocks:
        keep = parse_keep_blocks(args.keep_blocks, dense.config.n_layer)
        n_before = dense.param_counts()["total"]
        dense = truncate_blocks(dense, keep)
        print(f"layer truncation: kept {len(keep)} blocks {keep}; "
              f"{n_before:,} -> {dense.param_counts()['total']:,} parameters")
        if not args.shape and not args.target_params:
            save_truncated(args, dense, keep, time.time() - t0)
            return
    config = dense.config
    layers = parse_layers(args.layers, config.n_layer)
    before = dense.param_counts()
    print(f"{args.model}: {config.arch}, {config.n_layer} layers, MLP {config.n_embd} <-> {config.mlp_hidden}, "
          f"{before['total']:,} parameters ({before['tying']})")

    if args.list_shapes:
        print(f"\nshapes of the {config.mlp_hidden}x{config.n_embd} up matrices (down matrices take the opposite); "
              f"total model parameters for 1..4 factors; 'keeps rank' = fewest factors whose product can "
              f"have the dense rank {min(config.mlp_hidden, config.n_embd)}")
        print(f"{'A (m1,n1)':<12} {'B (m2,n2)':<12} {'max rank':>8} {'keeps rank':>10} "
              + " ".join(f"{f'{f} factor' + ('s' if f > 1 else ''):>13}" for f in range(1, 5)))
        for s, max_rank, keep, counts in list_shapes(config, layers):
            print(f"{f'({s.m1},{s.n1})':<12} {f'({s.m2},{s.n2})':<12} {max_rank:>8} {fmt(keep) if keep else '>4':>10} "
                  + " ".join(f"{fmt(c):>13}" for c in counts))
        return

    if args.shape and args.target_params:  # the shape is fixed: the number of factors meets the target
        shape = parse_shape(args.shape, config)
        target = parse_count(args.target_params)
        args.factors, total = factors_for_target(config, shape, target, args.scalars, layers)
        print(f"target {target:,}: {args.factors} factor(s) of shape {args.shape} -> {total:,} parameters "
              f"({100 * (total - target) / target:+.2f}%)")
    elif args.target_params:
        target = parse_count(args.target_params)
        plans = plan_for_target(config, target, args.scalars, layers)
        total, args.factors, s = plans[0]
        shape = (s.m1, s.n1)
        print(f"target {target:,}: {args.factors} factor(s) of {s} -> {total:,} parameters "
              f"({100 * (total - target) / target:+.2f}%), MLP MACs {mac_ratio(s, args.factors):.2f}x dense")
        print("  alternatives: " + "; ".join(f"{f} x {c}: {t:,}" for t, f, c in plans[1:5]))
        if abs(total - target) / target > 0.01:
            print(f"  note: no plan lands within 1% of {target:,}; this is the closest")
    elif args.shape:
        shape = parse_shape(args.shape, config)
    else:
        raise UserError("give --shape m1xn1 or --target_params N (see --list_shapes)")
    kron_shape(config.mlp_hidden, config.n_embd, *shape)  # a clear error if it does not divide
    if args.factors < 1:
        raise UserError(f"--factors must be at least 1, got {args.factors}")

    torch.manual_seed(args.seed)
    model, rows = decompose_model(dense, args.factors, shape, args.init, layers, args.scalars,
                                  args.prune_keep, args.prune_eps)
    after = model.param_counts()
    seconds = time.time() - t0
    print_table(rows)
    print(f"parameters: {before['total']:,} -> {after['total']:,} "
          f"(non-embedding {before['non_embedding']:,} -> {after['non_embedding']:,}; {after['tying']})")
    report = dict(model=args.model, init=args.init, factors=args.factors, shape=list(shape), scalars=args.scalars,
                  layers=layers, prune_keep=args.prune_keep, prune_eps=args.prune_eps, params_before=before,
                  params_after=after, seconds=seconds, matrices=rows, model_args=model.config.to_dict())
    save_checkpoint(args.out, model.cpu(), tokenizer=getattr(dense, "tokenizer_name", "gpt2"),
                    extra=dict(decomposition={k: v for k, v in report.items() if k not in ("matrices", "model_args")}))
    json_path = os.path.splitext(args.out)[0] + ".json"
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(f"wrote {args.out} and {json_path} in {seconds:.1f}s")


if __name__ == "__main__":
    run_cli(main)
