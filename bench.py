"""
Speed (and GPU memory) of Kronecker layers and models against dense, on CPU or CUDA, as ratios to dense.

    python bench.py --mode layers                       # c_fc / c_proj / whole MLP, every implementation
    python bench.py --mode models                       # GPT-2 124M vs the 81M / 80M / 96M Kronecker models
    python bench.py --mode models --family smollm2      # SmolLM2-135M vs its ~80M plan
    python bench.py --device cuda --dtype bfloat16 --compile   # on a GPU, torch.compile'd
    python bench.py --smoke                             # tiny sizes, a few seconds (the test suite runs it)

Layers: forward and forward+backward time of each matrix for nn.Linear, the factored Kronecker layer
('auto' = the order the cost model picks) and the materialised sum of torch.kron products (Krony-PT's
way). Models: training tokens/s (forward+backward+AdamW step), prefill tokens/s, and greedy generation
tokens/s at each --gen_batches size (a KV cache; with --compile the static cache and a compiled step).
Timings alternate between variants round by round and report medians, so drift of the machine hits all of
them alike. Figures are printed, never asserted.
"""

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from kronygpt.fused import FUSED, fused_available
from kronygpt.kronecker import KroneckerLinear, kron_shape
from configurator import configure, run_cli
from kronygpt.checkpoint import check_output_file
from kronygpt.errors import UserError
from model import GPT, MLP, GPTConfig
from kronygpt.runtime import DTYPES, autocast, resolve_device, resolve_dtype

GPT2 = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024)
SMOLLM2 = dict(arch="llama", n_layer=30, n_head=9, n_kv_head=3, n_embd=576, head_dim=64, mlp_hidden=1536,
               vocab_size=49152, block_size=2048, bias=False, activation="silu", rope_theta=100000.0)
VARIANTS = {  # name -> Kronecker settings (c_fc / gate+up first factor)
    "gpt2": [("dense 124M", {}),
             ("81M (768,768)x(4,1)", dict(kron_plan="*: mlp=768x768*1")),
             ("80M (1024,256)x(3,3) x2", dict(kron_plan="*: mlp=1024x256*2")),
             ("96M prune (3072,384)x(1,2)", dict(kron_plan="*: mlp=3072x384*1")),
             ("82M low rank 154", dict(kron_plan="*: mlp=lowrank*154"))],
    "smollm2": [("dense 135M", {}),
                ("80M 5x(768,72)x(2,8)", dict(kron_plan="*: mlp=768x72*5")),
                ("81M (512,576)x(3,1)", dict(kron_plan="*: mlp=512x576*1")),
                ("81M low rank 140", dict(kron_plan="*: mlp=lowrank*140"))],
}
WORKLOADS = ("train", "prefill", "generate")
SMOKE = dict(n_layer=2, n_head=2, n_embd=64, vocab_size=512, block_size=64)
SMOKE_VARIANTS = [("dense", {}), ("kron (64,64)x(4,1)", dict(kron_plan="*: mlp=64x64*1")),
                  ("kron (32,16)x(8,4) x2", dict(kron_plan="*: mlp=32x16*2"))]


def fused_impls(device):
    """The fused Triton orders when they can run here (CUDA with Triton), else none."""
    return FUSED if fused_available(torch.device(device)) else ()


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def round_robin(fns, rounds, device, warmup=2):
    """Median seconds of each zero-argument function, timed in alternation."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


# -----------------------------------------------------------------------------
# layers

def bench_layers(args, ctx):
    d, h, tokens = (64, 256, 512) if args.smoke else (768, 3072, args.layer_tokens)
    # (3072,1)x(1,768) x154 is the low-rank member at the parameter count of (768,768)x(4,1)
    plans = [((64, 64), 1), ((32, 16), 2), ((256, 1), 16)] if args.smoke else \
        [((768, 768), 1), ((1024, 256), 2), ((3072, 384), 1), ((3072, 1), 154)]
    dt = args.ptdtype
    results = []
    for (m1, n1), r in plans:
        up = kron_shape(h, d, m1, n1)
        for name, s in (("c_fc", up), ("c_proj", up.transposed())):
            x = torch.randn(tokens, s.in_features, device=args.device, dtype=dt, requires_grad=True)
            layers = {"dense": torch.nn.Linear(s.in_features, s.out_features)}
            for impl in ("auto", "measured", "materialized", *fused_impls(args.device)):
                layers[impl] = KroneckerLinear(s, r, impl=impl)
            layers = {k: v.to(args.device, dt) for k, v in layers.items()}
            if args.compile:
                layers = {k: torch.compile(v) for k, v in layers.items()}
            fwd = {k: (lambda l=l, x=x: l(x)) for k, l in layers.items()}
            fb = {k: (lambda l=l, x=x: l(x).float().sum().backward()) for k, l in layers.items()}
            eager = {k: getattr(v, "_orig_mod", v) for k, v in layers.items()}
            with ctx:
                eager["measured"](x)  # the order is timed eagerly, before any compiled call and the timing
                tf = round_robin(fwd, args.rounds, args.device)
                measured_fwd = eager["measured"].last_impl
                eager["measured"](x).float().sum().backward()
                tb = round_robin(fb, args.rounds, args.device)
                measured_fb = eager["measured"].last_impl
            results.append(dict(matrix=name, shape=str(s), factors=r, impl=eager["auto"].impl,
                                measured=f"{measured_fwd}/{measured_fb}",
                                fwd_ms={k: v * 1e3 for k, v in tf.items()}, fb_ms={k: v * 1e3 for k, v in tb.items()}))
        results.append(bench_mlp(args, d, h, (m1, n1), r, tokens))
    print(f"\nLayers: {tokens} tokens, {args.dtype}, {args.device}{', compiled' if args.compile else ''} "
          f"(time / dense; dense in ms)")
    cols = {"auto": "kron", "measured": "meas.", "materialized": "kron(x)", "fused_right": "f.right",
            "fused_left": "f.left"}
    cols = {k: v for k, v in cols.items() if k in results[0]["fwd_ms"]}
    def head(kind):
        return "".join(f" {v + ' ' + kind:>11}" for v in cols.values())

    print(f"{'matrix':<7} {'factors':<22} {'auto impl':<13} {'measured fwd/f+b':<25} {'dense fwd':>9}{head('fwd')} "
          f"{'dense f+b':>9}{head('f+b')}")
    for r in results:
        f, b = r["fwd_ms"], r["fb_ms"]

        def ratios(t):
            return "".join(f" {t[k] / t['dense']:>11.2f}" for k in cols)
        print(f"{r['matrix']:<7} {r['shape'] + ' x' + str(r['factors']):<22} {r['impl']:<13} {r['measured']:<25} "
              f"{f['dense']:>8.2f}m{ratios(f)} {b['dense']:>8.2f}m{ratios(b)}")
    print("kron = factored (cost-model order), meas. = kron_impl 'measured' (the order timed fastest, named in "
          "'measured fwd/f+b'), kron(x) = materialised sum of torch.kron, as Krony-PT computes it"
          + (", f.right/f.left = the fused Triton orders" if "fused_right" in cols else ""))
    print("activations saved for backward by the whole MLP, MiB: " + "; ".join(
        f"{r['shape']} x{r['factors']}: dense {r['saved_mib']['dense']:.0f}, kron {r['saved_mib']['auto']:.0f}, "
        f"kron(x) {r['saved_mib']['materialized']:.0f}" for r in results if r["matrix"] == "MLP"))
    return results


def bench_mlp(args, d, h, shape, r, tokens):
    """The whole GPT-2 MLP block (c_fc, GELU, c_proj): dense vs factored vs materialised Kronecker."""
    x = torch.randn(tokens, d, device=args.device, dtype=args.ptdtype, requires_grad=True)
    mlps = {"dense": MLP(GPTConfig(n_embd=d, mlp_hidden=h, n_head=1), 0)}
    for impl in ("auto", "measured", "materialized", *fused_impls(args.device)):
        mlps[impl] = MLP(GPTConfig(n_embd=d, mlp_hidden=h, n_head=1, n_layer=1,
                                   kron_plan=f"*: mlp={shape[0]}x{shape[1]}*{r}", kron_impl=impl), 0)
    mlps = {k: v.to(args.device, args.ptdtype) for k, v in mlps.items()}
    if args.compile:
        mlps = {k: torch.compile(v) for k, v in mlps.items()}
    tf = round_robin({k: (lambda m=m: m(x)) for k, m in mlps.items()}, args.rounds, args.device)
    tb = round_robin({k: (lambda m=m: m(x).float().sum().backward()) for k, m in mlps.items()}, args.rounds,
                     args.device)
    mem = {k: saved_bytes(lambda m=m: m(x).float().sum()) / 2 ** 20 for k, m in mlps.items()}
    return dict(matrix="MLP", shape=str(kron_shape(h, d, *shape)), factors=r, impl="-", measured="-", saved_mib=mem,
                fwd_ms={k: v * 1e3 for k, v in tf.items()}, fb_ms={k: v * 1e3 for k, v in tb.items()})


def print_row(r, dense, gen_batches, note=""):
    gen_cols = "".join(f" {r['gen_tok_s'][b]:>14,.1f} {r['gen_tok_s'][b] / dense['gen_tok_s'][b]:>6.2f}"
                       for b in gen_batches)
    print(f"{r['name']:<28} {r['params']:>12,} {r['train_tok_s']:>12,.0f} "
          f"{r['train_tok_s'] / dense['train_tok_s']:>6.2f} "
          f"{r['prefill_tok_s']:>14,.0f} {r['prefill_tok_s'] / dense['prefill_tok_s']:>6.2f}{gen_cols} "
          f"{r['flops_per_token'] / dense['flops_per_token']:>9.2f} {r['saved_gib']:>8.2f} "
          f"{'-' if r['train_peak_gib'] is None else format(r['train_peak_gib'], '.2f'):>9} {r['seconds']:>7.0f}"
          + (f" {note}" if note else ""), flush=True)


def earlier_dense_row(path, args, B, T, gen, gen_batches):
    """The dense row of an earlier bench.py --json run, checked to have had these settings (a run's rows can then
    be measured in parts, e.g. one device call each)."""
    try:
        with open(path) as f:
            old = json.load(f)
        row, a = old["models"][0], old["args"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise UserError(f"--dense_from {path}: not a bench.py --json file with a models row ({e})") from None
    want = dict(family=args.family, device=args.device, dtype=args.dtype, compile=args.compile, smoke=args.smoke,
                compile_blocks=args.compile_blocks)
    a = {"compile_blocks": False, **a}  # files from before the option
    if not args.smoke:
        want.update(batch_size=B, seq_len=T, gen_tokens=gen, gen_batches=list(gen_batches))
    diff = {k: (a.get(k), v) for k, v in want.items() if a.get(k) != v}
    if diff or not row["name"].startswith("dense"):
        raise UserError(f"--dense_from {path} was measured with other settings (earlier, now: "
                        f"{diff or 'no dense row'}); rerun without --dense_from or with the same settings")
    row["gen_tok_s"] = {int(b): v for b, v in row["gen_tok_s"].items()}  # JSON made the batch sizes strings
    return row


def saved_bytes(fn):
    """Bytes autograd keeps for the backward of fn() (activation memory), each tensor counted once. The
    graph is never run backward, so pack keeps only the size: returning the tensor itself ties a saved
    output to its own grad_fn, a cycle through C++ that the garbage collector cannot free (on the H200 each
    benchmarked model then leaked its whole graph, ~10 GiB, into the next model's peak memory)."""
    seen = {}

    def pack(t):
        seen[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()

    def unpack(_):
        raise RuntimeError("saved_bytes measures a forward pass; its graph cannot be run backward")
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        fn()
    return sum(seen.values())


# -----------------------------------------------------------------------------
# models

def build(base, kron, args):
    torch.manual_seed(0)
    impl = getattr(args, "kron_impl", "auto")
    kron = {**kron, **({"kron_impl": impl} if kron else {})}
    model = GPT(GPTConfig(**{**base, **kron})).to(args.device)
    return model


# what a compressed model changes of its family's shape
SHAPE_ARGS = ("kron_plan", "n_layer", "mlp_hidden", "mlp_widths")


def plan_variants(paths):
    """(name, settings) of each kron_decomp.py report (.json) or checkpoint: the plans people get from --allocate
    (each matrix its own rank), and the depth and MLP width of a truncated or width-pruned model, timed on random
    weights of the family's shape. A path may be NAME=PATH to name its row."""
    out = []
    for item in filter(None, paths.split(",")):
        name, _, path = item.rpartition("=")
        if path.endswith(".json"):
            with open(path) as f:
                report = json.load(f)
            args = report.get("model_args") or {"kron_plan": report.get("plan", "")}
        else:
            from kronygpt.checkpoint import load_checkpoint
            args = load_checkpoint(path)["model_args"]
        shape = {k: args[k] for k in SHAPE_ARGS if args.get(k)}
        if not shape:
            raise UserError(f"--plans_from {path} holds no factorisation plan or model shape; give a kron_decomp.py "
                            f"report or a decomposed checkpoint")
        out.append((name or os.path.splitext(os.path.basename(path))[0], shape))
    return out


def base_shape(path):
    """The GPTConfig fields of a dense model (checkpoint, Hugging Face directory or smollm2-135m), dense."""
    from kronygpt.checkpoint import load_model
    config = load_model(path).config.to_dict()
    return {**config, "kron_plan": "", "kron_scalars": False}


def workloads(model, fwd_model, opt, x, prompts, gen, ctx, compile):
    """The timed functions of one model: a training step, a prefill, and greedy generation of gen tokens after
    each prompt (one per generation batch size), as sample.py runs it: a growing KV cache eagerly, the static
    cache through one compiled decoding step with --compile."""

    def train_step():
        with ctx:
            _, loss = fwd_model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def prefill():
        with ctx:
            fwd_model(x, all_logits=True)

    def generate(prompt):
        def run():
            with ctx:
                model.generate(prompt, gen, temperature=0, compile=compile)
        return run

    return train_step, prefill, {b: generate(p) for b, p in prompts.items()}


def bench_models(args, ctx, on_row=None):
    if getattr(args, "base_from", ""):  # a given dense model's shape, and the plans' rows
        base = base_shape(args.base_from)
        variants = [("dense", {})] + plan_variants(getattr(args, "plans_from", ""))
        (B, T), gen, gen_batches = (args.batch_size, min(args.seq_len, base["block_size"])), args.gen_tokens, \
            args.gen_batches
    elif args.smoke:
        base, variants, (B, T), gen, gen_batches = SMOKE, SMOKE_VARIANTS, (2, 32), 8, (1, 2)
    else:
        base = GPT2 if args.family == "gpt2" else SMOLLM2
        variants, (B, T), gen = VARIANTS[args.family], (args.batch_size, args.seq_len), args.gen_tokens
        gen_batches = args.gen_batches
        if args.variants:  # the dense row always stays: every ratio is to it
            variants = [v for i, v in enumerate(variants) if i == 0 or i in args.variants]
        variants = variants + plan_variants(getattr(args, "plans_from", ""))
    prompt_len = max(1, min(T // 4, base["block_size"] - gen))
    print(f"\nModels: batch {B}x{T}, {args.dtype}, {args.device}{', compiled' if args.compile else ''}; greedy "
          f"generation of {gen} tokens after a {prompt_len}-token prompt, batch "
          f"{' and '.join(map(str, gen_batches))}{' (static cache, compiled step)' if args.compile else ''}; "
          f"ratios are to the dense row; each row printed as it finishes")
    gen_head = "".join(f" {f'gen b{b} tok/s':>14} {'ratio':>6}" for b in gen_batches)
    print(f"{'model':<28} {'params':>12} {'train tok/s':>12} {'ratio':>6} {'prefill tok/s':>14} {'ratio':>6}"
          f"{gen_head} {'FLOPs/tok':>6} {'acts GiB':>8} {'peak GiB':>9} {'seconds':>7}", flush=True)
    results = []
    if getattr(args, "dense_from", ""):  # the dense row measured by an earlier run of the same settings
        results.append(earlier_dense_row(args.dense_from, args, B, T, gen, gen_batches))
        variants = variants[1:]
        print_row(results[0], results[0], gen_batches, note=f"(from {args.dense_from})")
    for name, kron in variants:
        t0 = time.perf_counter()
        model = build(base, kron, args)
        if args.compile and args.compile_blocks:
            fwd_model = model.compile_blocks()  # regional: the decoding step is still compiled whole
        else:
            fwd_model = torch.compile(model) if args.compile else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=args.device.startswith("cuda"))
        x = torch.randint(0, base["vocab_size"], (B, T), device=args.device)
        g = torch.Generator().manual_seed(1)
        prompts = {b: torch.randint(0, base["vocab_size"], (b, prompt_len), generator=g).to(args.device)
                   for b in gen_batches}
        train_step, prefill, generate = workloads(model, fwd_model, opt, x, prompts, gen, ctx, args.compile)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        nan, work = float("nan"), getattr(args, "workloads", WORKLOADS)  # a workload left out: nan
        t = round_robin({"train": train_step}, args.rounds, args.device)["train"] if "train" in work else nan
        mem = torch.cuda.max_memory_allocated() / 2 ** 30 if args.device.startswith("cuda") and "train" in work \
            else None
        t_pre = round_robin({"prefill": prefill}, args.rounds, args.device)["prefill"] if "prefill" in work else nan
        t_gen = {b: nan for b in gen_batches}
        try:  # a generation path that fails is reported in its row, the figures above kept
            if "generate" in work:
                t_gen = round_robin(generate, max(2, args.rounds // 2), args.device, warmup=1)
        except Exception as e:  # noqa: BLE001 (any failure of torch.compile / CUDA graphs)
            print(f"{name}: generation failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
        def train_forward(fwd_model=fwd_model):
            with ctx:
                return fwd_model(x, x)[1]
        act = saved_bytes(train_forward) / 2 ** 30
        opt.zero_grad(set_to_none=True)
        r = dict(name=name, params=model.param_counts()["total"], train_tok_s=B * T / t, saved_gib=act,
                 prefill_tok_s=B * T / t_pre, gen_tok_s={b: b * gen / t for b, t in t_gen.items()},
                 train_peak_gib=mem, flops_per_token=model.flops_per_token(T),
                 seconds=time.perf_counter() - t0)  # wall time of the row, compilation and warm-up included
        results.append(r)
        print_row(r, results[0], gen_batches)
        if on_row is not None:
            on_row(results)  # e.g. the JSON so far: a run stopped by a time limit keeps its finished rows
        del model, fwd_model, opt
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return results


@dataclass
class BenchConfig:
    mode: str = "all"               # 'all', 'layers' or 'models'
    family: str = "gpt2"            # models: 'gpt2' or 'smollm2'
    device: str = "auto"            # 'auto' (cuda if available), 'cpu', 'cuda', 'cuda:N'
    dtype: str = "auto"             # float32 (the CPU's default) or bfloat16 (CUDA's)
    compile: bool = False           # torch.compile every layer/model
    compile_blocks: bool = False    # models, with compile: train and prefill through each block compiled on its own
                                    # (GPT.compile_blocks: far shorter compile of deep models), not the whole model
    batch_size: int = 0             # models: sequences per step (0: CPU 4, CUDA 16)
    seq_len: int = 0                # models: tokens per sequence (0: CPU 256, CUDA 1024)
    gen_tokens: int = 32            # models: tokens generated per timing
    gen_batches: str = "1,16"       # models: the batch sizes generation is timed at (comma-separated)
    layer_tokens: int = 0           # layers: tokens per call (0: CPU 2048, CUDA 16384)
    rounds: int = 0                 # timed rounds, the median reported (0: CPU 5, CUDA 20, smoke 2)
    threads: int = 0                # CPU threads (0 = torch's default)
    variants: str = ""              # models: indices of the family's variants (the dense row 0 always runs), e.g. 1,4
    plans_from: str = ""            # models: kron_decomp reports/checkpoints (NAME=PATH to name a row) whose plans,
                                    # depth and MLP width are rows too (comma-separated)
    dense_from: str = ""            # models: the dense row from this earlier --json of the same settings, not rerun
    base_from: str = ""             # models: the dense row is this model's shape (checkpoint, HF dir), not --family's
    kron_impl: str = "auto"         # models: contraction order of Kronecker layers ('measured': timed per shape)
    workloads: str = "train,prefill,generate"  # models: which to time (fewer compile faster on a GPU; the rest nan)
    smoke: bool = False             # tiny sizes for a quick check
    json: str = ""                  # write the results here
    force: bool = False             # overwrite --json

    def validate(self):
        if self.mode not in ("all", "layers", "models"):
            raise UserError(f"--mode must be all, layers or models, got {self.mode!r}")
        if self.family not in VARIANTS:
            raise UserError(f"--family must be one of {', '.join(VARIANTS)}, got {self.family!r}")
        for name in ("batch_size", "seq_len", "layer_tokens", "rounds", "threads"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must be at least 1 (or 0 for the device's default), got "
                                f"{getattr(self, name)}")
        from kronygpt.kronecker import IMPLS
        if self.kron_impl not in IMPLS:
            raise UserError(f"--kron_impl must be one of {', '.join(IMPLS)}, got {self.kron_impl!r}")
        if not all(b.strip().isdigit() and int(b) > 0 for b in self.gen_batches.split(",")):
            raise UserError(f"--gen_batches must be comma-separated positive batch sizes, e.g. 1,16, got "
                            f"{self.gen_batches!r}")
        if not self.workloads or not set(self.workloads.split(",")) <= set(WORKLOADS):
            raise UserError(f"--workloads must be a comma-separated subset of {','.join(WORKLOADS)}, got "
                            f"{self.workloads!r}")
        if self.gen_tokens < 1:
            raise UserError(f"--gen_tokens must be at least 1, got {self.gen_tokens}")
        n = len(VARIANTS[self.family])
        if self.variants and not all(v.strip().isdigit() and 0 <= int(v) < n for v in self.variants.split(",")):
            raise UserError(f"--variants {self.variants!r} must be comma-separated indices from 0 to {n - 1} "
                            f"(the {self.family} variants: " + ", ".join(v[0] for v in VARIANTS[self.family]) + ")")


def main():
    cfg = configure(BenchConfig(), sys.argv[1:], verbose=False, doc=__doc__)
    if cfg.json:
        check_output_file(cfg.json, cfg.force)
    args = argparse.Namespace(**vars(cfg))  # the settings resolved for this device
    args.device = resolve_device(cfg.device)
    cuda = args.device.startswith("cuda")
    args.variants = sorted({int(v) for v in cfg.variants.split(",")}) if cfg.variants else None
    args.gen_batches = sorted({int(b) for b in cfg.gen_batches.split(",")})
    args.workloads = cfg.workloads.split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.dtype = resolve_dtype(cfg.dtype, "cuda" if cuda else "cpu")
    args.ptdtype = DTYPES[args.dtype]
    args.batch_size = args.batch_size or (16 if cuda else 4)
    args.seq_len = args.seq_len or (1024 if cuda else 256)
    args.layer_tokens = args.layer_tokens or (16384 if cuda else 2048)
    args.rounds = args.rounds or (2 if args.smoke else 20 if cuda else 5)
    # models run in fp32 weights under autocast (as in training); layers take the dtype directly
    ctx = autocast("cuda", args.dtype) if cuda else nullcontext()
    print(f"torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if cuda else f", {torch.get_num_threads()} threads"))
    out = {"args": {k: v for k, v in vars(args).items() if k != "ptdtype"}}
    if args.mode in ("all", "layers"):
        out["layers"] = bench_layers(args, nullcontext())
    def save(models=None):
        if models is not None:
            out["models"] = models
        if args.json:  # through a temporary file: a run killed mid-write leaves the previous rows
            with open(args.json + ".tmp", "w") as f:
                json.dump(out, f, indent=1)
            os.replace(args.json + ".tmp", args.json)
    if args.mode in ("all", "models"):
        out["models"] = bench_models(args, ctx, on_row=save)
    save()


if __name__ == "__main__":
    run_cli(main)
