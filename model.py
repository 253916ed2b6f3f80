"""
A GPT in one file, nanoGPT-style, whose MLP matrices can be sums of Kronecker products.

One GPT class covers two families, chosen by GPTConfig.arch (as litgpt does):
  'gpt2'  : LayerNorm, learned positions, GELU MLP (c_fc, c_proj), fused qkv (Hugging Face names kept)
  'llama' : RMSNorm, rotary positions, SwiGLU MLP (gate_proj, up_proj, down_proj), grouped-query attention
Any matrix can be dense or Kronecker, as the config's plan says (kronygpt/plans.py), so progressive
replacement and per-matrix allocations mix the two. Loading Hugging Face checkpoints lives in hf_io.py (and
checkpoint.load_model).
"""

import math
import numbers
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn as nn
from torch.nn import functional as F

from kronygpt.errors import ConfigError, UserError
from kronygpt.families import family
from kronygpt.kronecker import IMPLS, Factorized, KroneckerEmbedding, KroneckerLinear, choose_impl
from kronygpt.plans import EMBED, Layout, Plan


@dataclass
class GPTConfig:
    block_size: int = 1024        # longest sequence the model sees (size of wpe / the rotary table)
    vocab_size: int = 50257       # GPT-2's vocabulary; Hugging Face checkpoints are not padded
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True             # biases in linears and LayerNorms (GPT-2 True, Llama False)
    # -- architecture family
    arch: str = "gpt2"            # 'gpt2' or 'llama'
    n_kv_head: int = 0            # key/value heads (grouped-query attention); 0 means n_head
    head_dim: int = 0             # 0 means n_embd // n_head
    mlp_hidden: int = 0           # MLP width; 0 means 4 * n_embd
    mlp_widths: str = ""          # per-block MLP widths, e.g. "1024,896,..." (width pruning, --width allocate); ''
                                  # = mlp_hidden in every block
    activation: str = "gelu_tanh" # GPT-2's 'gelu_new' is the tanh approximation; 'gelu' is exact
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0   # llama only
    tie_embeddings: bool = True   # lm_head shares wte's weight (counted once in parameter counts)
    # -- factorisation: which matrices are sums of Kronecker products W = sum_k s_k A_k (x) B_k, as one plan
    #    string (grammar in kronygpt/plans.py), resolved once into self.plan when the config is made
    kron_plan: str = ""           # e.g. "*: mlp=lowrank*139; 11,28: dense"; '' = every matrix dense
    kron_scalars: bool = False    # learnable per-factor scalars s_k
    kron_impl: str = "auto"       # 'auto' (cost model), 'measured' (timed per shape), 'right', 'left', 'materialized'

    def __post_init__(self):
        for f in fields(self):  # a checkpoint's model_args are data: "12" or 1e999 never reach a layer size
            if not is_a(getattr(self, f.name), f.type):
                raise ConfigError(f"model config {f.name} must be {WHAT[f.type]}, got {getattr(self, f.name)!r} (from "
                                  f"a checkpoint's model_args: the file was edited or damaged; write it again)")
        self.family = family(self.arch)  # raises for an unknown arch
        for name in ("n_layer", "n_head", "n_embd", "vocab_size", "block_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        self.n_kv_head = self.n_kv_head or self.n_head
        if not self.head_dim and self.n_embd % self.n_head:
            raise ConfigError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}; "
                              f"choose n_head dividing n_embd (or set head_dim)")
        self.head_dim = self.head_dim or self.n_embd // self.n_head
        self.mlp_hidden = self.mlp_hidden or 4 * self.n_embd
        self.widths = parse_widths(self.mlp_widths, self.n_layer)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.n_head % self.n_kv_head:
            raise ConfigError(f"n_head {self.n_head} must be a multiple of n_kv_head {self.n_kv_head}")
        if self.kron_impl not in IMPLS:
            raise ConfigError(f"kron_impl must be one of {', '.join(IMPLS)}, got {self.kron_impl!r}")
        self.plan = Plan.parse(self.kron_plan, self.layout())  # layers ask it for their spec; nothing re-parses
        self.kron_plan = self.plan.text
        mlp = set(self.family.up) | set(self.family.down)
        if any(self.block_width(i) != self.mlp_hidden and mlp & set(self.plan.layer_specs(i))
               for i in self.plan.layers):
            raise ConfigError("a narrowed MLP (mlp_widths below mlp_hidden) stays dense: the plan may factorise the "
                              "MLPs of full-width blocks only (and any attention)")

    def block_width(self, layer):
        """The MLP width of block `layer`: its entry of mlp_widths, else mlp_hidden."""
        return self.widths[layer] if self.widths else self.mlp_hidden

    def matrix_dims(self):
        """{name: (out, in)} of every matrix of a block a plan may factorise: the MLP's (named as in
        block.mlp) and the attention's ('attn.c_attn', the fused q/k/v, and 'attn.c_proj')."""
        f, q, kv = self.family, self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        return {"attn.c_attn": (q + 2 * kv, self.n_embd), "attn.c_proj": (self.n_embd, q),
                **{n: (self.mlp_hidden, self.n_embd) for n in f.up}, **{n: (self.n_embd,
                                                                            self.mlp_hidden) for n in f.down}}

    def layout(self):
        """What a plan is resolved against; the embedding may be factorised only when the lm_head is tied to it
        (one set of factors serves both)."""
        return Layout(self.n_layer, self.matrix_dims(), self.family.up, self.family.down,
                      (self.vocab_size, self.n_embd) if self.tie_embeddings else None)

    @property
    def is_factorized(self):
        """Whether any matrix of the model is a sum of Kronecker products."""
        return bool(self.plan)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        """A config from its dict (a checkpoint's model_args). Checkpoints written before plans existed carry
        the uniform shorthand kron_factors/kron_shape and the blocks done so far, kron_layers: converted here."""
        d = dict(d)
        factors, shape, layers = d.pop("kron_factors", 0), d.pop("kron_shape", ()), d.pop("kron_layers", None)
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown model_args {sorted(unknown)}; was this saved by a newer version?")
        if factors:
            if d.get("kron_plan"):
                raise ConfigError("model_args give both kron_factors/kron_shape and kron_plan; keep the plan")
            d["kron_plan"] = f"*: mlp={shape[0]}x{shape[1]}*{factors}"
        config = cls(**d)
        return config if layers is None else replace(config, kron_plan=config.plan.restrict(layers).text)


WHAT = {int: "a whole number", float: "a finite number", bool: "true or false", str: "a string"}


def parse_widths(text, n_layer):
    """mlp_widths as a tuple of n_layer positive widths, () for ''."""
    if not text:
        return ()
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise ConfigError(f"mlp_widths must be whole numbers separated by commas, got {text!r}") from None
    if len(widths) != n_layer or min(widths) < 1:
        raise ConfigError(f"mlp_widths must give one width of at least 1 for each of the {n_layer} blocks, got "
                          f"{text!r}")
    return widths


def is_a(value, kind):
    """Whether a config value is of its field's type (a bool is not a number; a float is finite)."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, numbers.Real) and math.isfinite(value)
    return isinstance(value, numbers.Integral if kind is int else kind)  # numpy ints (GGUF metadata) count


def block_linear(config, spec, in_features, out_features):
    """One matrix of a block: dense (spec None), or Kronecker with the shape and factors of its MatrixSpec."""
    if spec is None:
        return nn.Linear(in_features, out_features, bias=config.bias)
    return KroneckerLinear(spec.shape, spec.factors, bias=config.bias, scalars=config.kron_scalars,
                           impl=config.kron_impl)


# -----------------------------------------------------------------------------
# layers

@dataclass
class Padding:
    """How a batch of uneven rows sits in the attention (GPT.trunk's padding): keep, (B, S) 1 for real tokens and 0
    for padding over the cached and the new positions (S = cache.pos + T; a static cache's max_len); slots, (T,)
    the static cache slots the tokens are written to, where they differ from the positions (left padding; default
    positions[0]); mask, a (B, 1, T, S) bool attention mask (True: attend) that replaces the one built from keep
    (transformers' 4-D masks)."""
    keep: torch.Tensor = None
    slots: torch.Tensor = None
    mask: torch.Tensor = None


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def norm(config, dim):
    if config.family.norm == "rmsnorm":
        return RMSNorm(dim, config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.bias)


def rotary_table(config, device=None):
    """cos, sin of shape (block_size, head_dim), in Hugging Face Llama's half-split layout."""
    hd = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2, device=device).float() / hd))
    t = torch.arange(config.block_size, device=device).float()
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x, cos, sin):  # x: (B, nh, T, hs); cos, sin: (T, hs)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class KVCache:
    """Keys and values of past positions for incremental decoding (sample.py, bench.py). Anything with the same
    two members serves (the shipped Hugging Face wrapper adapts transformers' Cache classes to it)."""

    def __init__(self):
        self.k, self.v = {}, {}
        self.pos = 0  # number of positions already cached

    def update(self, layer, k, v):
        """Append this step's keys and values (B, nkv, T, hs) of block `layer`; returns all of them so far."""
        if layer in self.k:
            k = torch.cat((self.k[layer], k), dim=2)
            v = torch.cat((self.v[layer], v), dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


class StaticKVCache:
    """Keys and values in buffers of max_len positions, allocated at the first update: every decoding step then has
    the same shapes, so a compiled step (torch.compile; CUDA graphs with mode='reduce-overhead') is traced once.
    The positions a step writes come from the `positions` tensor the trunk is given (never a Python int, which
    would specialise the compiled code), and attention runs over all max_len positions with the unwritten
    ones masked (static_mask). `pos` (positions written) is kept by the caller (GPT.generate)."""
    static = True

    def __init__(self, n_layer, max_len):
        self.n_layer, self.max_len = n_layer, max_len
        self.k = self.v = None
        self.index = None  # (T,) the positions the current step writes (set by GPT.trunk)
        self.pos = 0

    def reset(self):
        """Empty again for a new prompt of the same batch size, keeping the buffers (and so their addresses, which
        CUDA graphs recorded); the stale slots are masked like unwritten ones."""
        self.index, self.pos = None, 0

    def update(self, layer, k, v):
        if self.k is None or self.k.dtype != k.dtype or self.k.size(1) != k.size(0):  # (re)used in another dtype
            B, nkv, _, hs = k.shape
            self.k = k.new_zeros(self.n_layer, B, nkv, self.max_len, hs)
            self.v = v.new_zeros(self.n_layer, B, nkv, self.max_len, hs)
            # fixed addresses: a compiled step updates them in place, and CUDA graphs replay on them
            torch._dynamo.mark_static_address(self.k)
            torch._dynamo.mark_static_address(self.v)
        self.k[layer].index_copy_(2, self.index, k)
        self.v[layer].index_copy_(2, self.index, v)
        return self.k[layer], self.v[layer]


def static_mask(positions, S, keep=None):
    """(B, 1, T, S) bool for queries at `positions` (B, T) over S cached slots: each sees the slots up to its own
    position (later slots are unwritten or in its future); with keep (B, S), padded slots are hidden too."""
    k = torch.arange(S, device=positions.device)
    m = k[None, None, :] <= positions[:, :, None]                      # (B, T, S)
    if keep is not None:
        m = (m & keep.bool()[:, None, :]) | (k[None, None, :] == positions[:, :, None])
    return m[:, None]


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        q_dim, kv_dim = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
        spec = config.plan.layer_specs(layer)
        # q, k, v fused (rows: the n_head query heads, then the n_kv_head key heads, then the value heads)
        self.c_attn = block_linear(config, spec.get("attn.c_attn"), config.n_embd, q_dim + 2 * kv_dim)
        self.c_proj = block_linear(config, spec.get("attn.c_proj"), q_dim, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout

    def forward(self, x, rope=None, cache=None, mask=None, attentions=None):
        """mask: (B, 1, T, S) bool, True where a query may see a key (None: plain causal); attentions: a list that
        receives this layer's attention weights (B, nh, T, S), computed explicitly (the 'eager' path)."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(
            [self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim], dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)     # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)                          # (B, nkv, S, hs)
        p = self.dropout if self.training else 0.0
        if attentions is not None:  # eager: the weights themselves are wanted
            rep = self.n_head // self.n_kv_head
            kk, vv = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            att = (q @ kk.transpose(-2, -1)) / math.sqrt(self.head_dim)   # (B, nh, T, S)
            if mask is None:
                mask = causal_mask(T, k.size(2), x.device)
            att = F.softmax(att.masked_fill(~mask, float("-inf")).float(), dim=-1).to(q.dtype)
            attentions.append(att)
            y = F.dropout(att, p, self.training) @ vv
        elif mask is None and (T == 1 or k.size(2) == T):  # the common cases: plain causal, or one new token
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=T > 1,
                                               enable_gqa=self.n_kv_head != self.n_head)
        else:
            mask = causal_mask(T, k.size(2), x.device) if mask is None else mask
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                               enable_gqa=self.n_kv_head != self.n_head)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.c_proj(y))


def causal_mask(T, S, device, keep=None):
    """(B or 1, 1, T, S) bool: the T newest positions of S see every earlier one and themselves; with keep
    (B, S), 1 for real tokens and 0 for padding, padded keys are hidden too (a query always sees itself, so a
    padded row still has one key and stays finite)."""
    q = torch.arange(S - T, S, device=device)[:, None]
    k = torch.arange(S, device=device)[None, :]
    m = (k <= q)[None]                                                  # (1, T, S)
    if keep is not None:
        m = (m & keep.bool()[:, None, :]) | (k == q)[None]
    return m[:, None]


class MLP(nn.Module):
    """GPT-2's MLP: c_proj(gelu(c_fc(x)))."""

    def __init__(self, config, layer):
        super().__init__()
        spec = config.plan.layer_specs(layer)
        width = config.block_width(layer)
        self.c_fc = block_linear(config, spec.get("c_fc"), config.n_embd, width)
        self.c_proj = block_linear(config, spec.get("c_proj"), width, config.n_embd)
        self.approximate = "tanh" if config.activation == "gelu_tanh" else "none"
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class SwiGLU(nn.Module):
    """Llama's MLP: down_proj(silu(gate_proj(x)) * up_proj(x))."""

    def __init__(self, config, layer):
        super().__init__()
        spec = config.plan.layer_specs(layer)
        width = config.block_width(layer)
        self.gate_proj = block_linear(config, spec.get("gate_proj"), config.n_embd, width)
        self.up_proj = block_linear(config, spec.get("up_proj"), config.n_embd, width)
        self.down_proj = block_linear(config, spec.get("down_proj"), width, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


MLP_CLASSES = {"gelu": MLP, "swiglu": SwiGLU}


class Block(nn.Module):

    def __init__(self, config, layer):
        super().__init__()
        self.ln_1 = norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = norm(config, config.n_embd)
        self.mlp = MLP_CLASSES[config.family.mlp](config, layer)

    def forward(self, x, rope=None, cache=None, mask=None, attentions=None):
        x = x + self.attn(self.ln_1(x), rope, cache, mask, attentions)
        x = x + self.mlp(self.ln_2(x))
        return x

    def locate(self, name):
        """(parent module, attribute) of a factorisable matrix by its plan name: 'attn.c_attn', 'attn.c_proj',
        or an MLP matrix's name ('c_fc', 'gate_proj', ...)."""
        return (self.attn, name[len("attn."):]) if name.startswith("attn.") else (self.mlp, name)

    def matrix(self, name):
        parent, attr = self.locate(name)
        return getattr(parent, attr)

    def set_matrix(self, name, module):
        parent, attr = self.locate(name)
        setattr(parent, attr, module)


# -----------------------------------------------------------------------------
# the model

class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        embed = config.plan.embed
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd) if embed is None else
            KroneckerEmbedding(embed.shape, embed.factors, bias=False, scalars=config.kron_scalars,
                               impl=config.kron_impl),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=norm(config, config.n_embd),
        ))
        if config.family.positions == "learned":
            self.transformer.wpe = nn.Embedding(config.block_size, config.n_embd)
        else:
            cos, sin = rotary_table(config)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        if embed is not None:  # one factorised module: a row lookup for token ids, the factored product for x
            self.lm_head = self.transformer.wte
        else:
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
            if config.tie_embeddings:
                self.lm_head.weight = self.transformer.wte.weight  # one tensor, counted once
        self.apply(self._init_weights)
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)  # GPT-2's scaled init of residual projections
        for name, m in self.named_modules():
            if name.endswith(("c_proj", "down_proj")):
                if isinstance(m, Factorized):
                    m.reset_parameters(std=residual_std)
                else:
                    nn.init.normal_(m.weight, mean=0.0, std=residual_std)

    def crop_block_size(self, block_size):
        """Use a shorter context than the model was made for (GPT-2: 1024 -> 256 for a CPU run)."""
        cfg = self.config
        if block_size > cfg.block_size:
            raise ConfigError(f"block_size {block_size} exceeds the model's {cfg.block_size}; lower block_size")
        if block_size == cfg.block_size:
            return self
        self.config = replace(cfg, block_size=block_size)
        if cfg.family.positions == "learned":
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone())
        else:
            self.rope_cos = self.rope_cos[:block_size]
            self.rope_sin = self.rope_sin[:block_size]
        return self

    def compile_blocks(self, **options):
        """Regional compilation: torch.compile each block on its own, not the whole model. Blocks of one structure
        share a compilation: their parameters' sizes may turn dynamic (dynamo makes a size dynamic once a call
        differs in it), so an allocated plan, whose every block has its own ranks, compiles a handful of graphs,
        not one per block (SmolLM2-135M's 81.5M plan: 7 for training instead of 30). A deep model thus compiles
        in a fraction of the whole-model time; the compiled code is much the same, the blocks being where the
        work is. The model's parameters and state_dict are untouched (the compiled wrappers are not submodules);
        passes without a KV cache use them. Returns the model."""
        import torch._dynamo.config as dynamo_config
        # past the limit dynamo would run the rest eagerly; each block compiling its own graph stays below it
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 2 * len(self.transformer.h))

        def region(block):
            compiled = torch.compile(block, **options)

            def run(*args, **kwargs):  # dynamo reads the flag as it traces, on the call (parameters: static by default)
                with dynamo_config.patch(force_parameter_static_shapes=False):
                    return compiled(*args, **kwargs)
            return run

        self.__dict__["_compiled_blocks"] = [region(b) for b in self.transformer.h]
        return self

    def set_kron_impl(self, impl):
        """Run every Kronecker layer in contraction order `impl` ('auto': each layer's cost-model choice;
        'measured': timed, kronecker.OrderTimer), config and modules alike; the factors are unchanged."""
        if impl not in IMPLS:
            raise ConfigError(f"kron_impl must be one of {', '.join(IMPLS)}, got {impl!r}")
        self.config = replace(self.config, kron_impl=impl)
        for m in self.modules():
            if isinstance(m, KroneckerLinear):
                m.impl = choose_impl(m.shape, m.factors) if impl == "auto" else impl
                m.last_impl = None
        return self

    def set_dropout(self, p):
        """Use dropout p everywhere, config and modules alike (a student copied from an eval-mode teacher,
        a checkpoint trained further with another dropout)."""
        self.config = replace(self.config, dropout=p)
        for m in self.modules():
            if isinstance(m, nn.Dropout):
                m.p = p
            elif isinstance(m, CausalSelfAttention):
                m.dropout = p
        return self

    def matrix(self, layer, name):
        """A factorisable matrix by its plan key: (block index, name), or (EMBED, 'wte') for the embedding."""
        return self.transformer.wte if layer == EMBED else self.transformer.h[layer].matrix(name)

    def set_matrix(self, layer, name, module):
        """Put `module` in place of a factorisable matrix; the embedding's replacement is the tied lm_head too."""
        if layer != EMBED:
            return self.transformer.h[layer].set_matrix(name, module)
        self.transformer.wte = module
        if self.config.tie_embeddings:
            self.lm_head = module if isinstance(module, Factorized) else self.lm_head

    def new_parameter_names(self):
        """Full names of the parameters that are new, not pretrained (every Factorized layer's own)."""
        return {f"{mod_name}.{p}" for mod_name, m in self.named_modules() if isinstance(m, Factorized)
                for p in m.new_parameters if getattr(m, p, None) is not None}

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, Factorized):
            module.reset_parameters(std=0.02)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def embed(self, idx, start=0, positions=None, check=True):
        """(x, rope): the input of block 0 for tokens idx (B, T) at positions start.. (or at `positions`, (B, T),
        e.g. a left-padded row's own), and the rotary tables every block takes (None for learned positions).
        check: refuse positions beyond the context (a host sync; a static cache checked its length once)."""
        T = idx.size(1)
        if positions is None:  # the length is known without reading the positions back (no sync, no graph break)
            positions = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
            length = start + T if check else 0
        else:
            length = (int(positions.max()) + 1 if positions.numel() else start) if check else 0
        if length > self.config.block_size:
            raise UserError(f"a sequence of length {length} exceeds the model's context (block_size "
                            f"{self.config.block_size}); shorten the input (when generating: the prompt or "
                            f"max_new_tokens)")
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.family.positions == "learned":
            x = x + self.transformer.wpe(positions)
        else:
            cos, sin = self.rope_cos[positions].to(x.dtype), self.rope_sin[positions].to(x.dtype)
            rope = (cos, sin) if positions.dim() == 1 else (cos[:, None], sin[:, None])  # (T, hs) or (B, 1, T, hs)
        return self.transformer.drop(x), rope

    def trunk(self, idx, cache=None, hidden=None, positions=None, attentions=None, embeddings=False, padding=None):
        """The final hidden states (B, T, C), after ln_f, of tokens idx (B, T). cache: a KVCache (or anything with its
        update/pos); hidden: a list that receives each block's output (and first the embedding's, with embeddings);
        positions: (B, T) each token's position (a left-padded row starts at 0); attentions: a list for each layer's
        attention weights; padding: a Padding (which cached and new positions are real tokens, and where a static
        cache writes them), for batches of uneven rows."""
        keep, slots, mask = (padding.keep, padding.slots, padding.mask) if padding is not None else (None,) * 3
        T = idx.size(1)
        if getattr(cache, "static", False):  # fixed shapes: tensors, never Python ints, say where this step writes
            if positions is None:
                raise UserError("a StaticKVCache step needs its positions (B, T); GPT.generate passes them")
            cache.index = positions[0] if slots is None else slots
            x, rope = self.embed(idx, positions=positions, check=False)
            if mask is None:
                mask = static_mask(cache.index.expand(idx.size(0), T), cache.max_len, keep)
        else:
            start = cache.pos if cache is not None else 0
            x, rope = self.embed(idx, start, positions)
            if mask is None and keep is not None:
                mask = causal_mask(T, start + T, idx.device, keep)
        if hidden is not None and embeddings:
            hidden.append(x)
        # compile_blocks' compiled blocks run the cache-free passes (training, prefill, scoring); a cache's step reads
        # its layer index, which would give every block a compilation of its own
        blocks = self.__dict__.get("_compiled_blocks") if cache is None and attentions is None else None
        for block in blocks or self.transformer.h:
            x = block(x, rope, cache, mask, attentions)
            if hidden is not None:
                hidden.append(x)
        if cache is not None and not getattr(cache, "static", False):
            cache.pos += T
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None, all_logits=False, cache=None, hidden=None, **trunk):
        """Returns (logits, loss). With targets: logits at every position and the mean cross-entropy
        (targets of -1 are ignored). Without: the last position's logits, or every position's when
        all_logits=True. `hidden`, if a list, receives each block's output (B, T, C); the other keywords
        (padding mask, positions, attention weights) are trunk's."""
        x = self.trunk(idx, cache, hidden, **trunk)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
            return logits, loss
        logits = self.lm_head(x if all_logits else x[:, [-1], :])
        return logits, None

    # -- bookkeeping

    def param_counts(self):
        """Unique parameters (a tied wte/lm_head is one tensor and counted once).
        embedding: wte + wpe (+ lm_head when untied); mlp: every MLP matrix and bias."""
        seen, counts = set(), dict(total=0, embedding=0, mlp=0, kronecker_factors=0)
        new = self.new_parameter_names()
        for name, p in self.named_parameters():  # named_parameters already yields a shared tensor once
            if id(p) in seen:
                continue
            seen.add(id(p))
            n = p.numel()
            counts["total"] += n
            if name.startswith(("transformer.wte", "transformer.wpe", "lm_head")):
                counts["embedding"] += n
            if ".mlp." in name:
                counts["mlp"] += n
            if name in new:
                counts["kronecker_factors"] += n
        counts["non_embedding"] = counts["total"] - counts["embedding"]
        counts["tying"] = "lm_head tied to wte, counted once" if self.config.tie_embeddings else "untied"
        return counts

    def flops_per_token(self, seq_len):
        """Forward+backward FLOPs per token: 6 x (MACs of every linear, Kronecker layers counted with
        the contraction they actually run) + attention's 6 * L * 2 * nh * hs * T (PaLM appendix B)."""
        macs = 0
        for m in self.modules():
            if isinstance(m, Factorized):
                macs += m.macs_per_token()
            elif isinstance(m, nn.Linear):
                macs += m.in_features * m.out_features
        cfg = self.config
        return 6 * macs + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len

    def estimate_mfu(self, tokens_per_iter, seq_len, dt, peak_flops=312e12):
        """Model FLOPs utilisation against peak_flops (A100 bf16 by default)."""
        return self.flops_per_token(seq_len) * tokens_per_iter / dt / peak_flops

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True, static=False,
                 compile=False):
        """Sample max_new_tokens continuations of idx (B, T), with a KV cache when it fits. static: the cache in
        fixed-size buffers (StaticKVCache), every decoding step the same shapes; compile: those steps through
        torch.compile (implies static; compiled once per model, batch size and length)."""
        self.eval()
        static = static or compile
        use_cache = use_cache and idx.size(1) + max_new_tokens <= self.config.block_size
        if static and not use_cache:
            raise UserError(f"a static cache holds the prompt and every new token: {idx.size(1)} + {max_new_tokens} "
                            f"exceeds the context ({self.config.block_size}); shorten them or drop static/compile")
        if static:
            return self._generate_static(idx, max_new_tokens, temperature, top_k, compile)
        cache = KVCache() if use_cache else None
        inp = idx
        for _ in range(max_new_tokens):
            if cache is None:
                inp = idx[:, -self.config.block_size:]
            logits, _ = self(inp, cache=cache)
            idx_next = self._pick(logits[:, -1, :], temperature, top_k)
            idx = torch.cat((idx, idx_next), dim=1)
            inp = idx_next
        return idx

    @staticmethod
    def _pick(logits, temperature, top_k):
        """The next token (B, 1) from the last position's logits (B, V)."""
        logits = logits / max(temperature, 1e-8)
        if top_k is not None:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits[logits < v[:, [-1]]] = -float("inf")
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)

    def _decode_step(self, tok, positions, cache):
        """One token per row at `positions` (B, 1): the last position's logits (B, 1, V)."""
        return self(tok, cache=cache, positions=positions)[0]

    def _generate_static(self, idx, max_new_tokens, temperature, top_k, compile):
        B, T = idx.shape
        step, graphs = self._decode_step, compile and idx.device.type == "cuda"
        if compile:
            # one compiled step per model (recompiled only for a new batch size or length); on CUDA through CUDA
            # graphs ('reduce-overhead'): a decoding step is hundreds of small kernels, launched at once by a replay
            mode = "reduce-overhead" if graphs else "default"
            compiled = self.__dict__.setdefault("_compiled_steps", {})
            if mode not in compiled:
                compiled[mode] = torch.compile(self._decode_step, dynamic=False, mode=mode)
            step = compiled[mode]
            # the same buffers for every call of this shape, so the compiled step (and its graph) is reused
            caches = self.__dict__.setdefault("_static_caches", {})
            cache = caches.get((B, T + max_new_tokens))
            if cache is None:
                cache = caches[(B, T + max_new_tokens)] = StaticKVCache(self.config.n_layer, T + max_new_tokens)
            cache.reset()
        else:
            cache = StaticKVCache(self.config.n_layer, T + max_new_tokens)
        positions = torch.arange(T, device=idx.device).expand(B, T)
        logits, _ = self(idx, cache=cache, positions=positions)            # the prompt, eagerly
        out = [idx]
        for i in range(max_new_tokens):
            tok = self._pick(logits[:, -1, :].float(), temperature, top_k)
            out.append(tok)
            if i + 1 < max_new_tokens:
                if graphs:
                    torch.compiler.cudagraph_mark_step_begin()  # the last step's logits are consumed: reuse its memory
                logits = step(tok, torch.full((B, 1), T + i, dtype=torch.long, device=idx.device), cache)
        return torch.cat(out, dim=1)
