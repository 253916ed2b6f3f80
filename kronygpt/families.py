"""
The model families, one table entry each. model.py builds blocks from it, hf_io.py converts Hugging Face
checkpoints with it (both directions: tensor names and configs), and the decomposition code finds the matrices it
may factorise in it. Adding a family (Qwen2, Phi, ...) is one entry here plus its tests.

Names are relative to a block (transformer.h.<i>.). 'up' matrices map n_embd -> mlp_hidden and 'down'
matrices map back; a uniform Kronecker shape (m1, n1) is given for the up matrices and the down matrices
take the opposite shape (n1, m1).
"""

from dataclasses import dataclass

from .errors import CheckpointError, ConfigError

ATTENTION = ("attn.c_attn", "attn.c_proj")  # per block, the same in every family (q/k/v fused into c_attn)


@dataclass(frozen=True)
class Family:
    name: str
    norm: str               # 'layernorm' or 'rmsnorm'
    mlp: str                # 'gelu' (c_proj(gelu(c_fc x))) or 'swiglu' (down(silu(gate x) * up x))
    positions: str          # 'learned' (wpe) or 'rotary'
    up: tuple               # MLP matrices n_embd -> mlp_hidden, as named inside block.mlp
    down: tuple             # MLP matrices mlp_hidden -> n_embd
    hf_type: str            # transformers' model_type
    hf_top: dict            # ours -> Hugging Face for tensors outside the blocks (absent: the same name)
    hf_layers: str          # Hugging Face's prefix of block i (ours is 'transformer.h.')
    hf_block: dict          # ours -> Hugging Face module or tensor names inside a block (empty: the same names)
    hf_qkv: tuple           # Hugging Face q/k/v projections fused into our attn.c_attn (empty: already fused)
    conv1d: tuple           # our per-block weights stored transposed (Conv1D) by Hugging Face
    from_hf: object         # transformers config -> GPTConfig fields
    to_hf: object           # (GPTConfig, special token ids) -> transformers config

    @property
    def mlp_matrices(self):
        """((name, is_up), ...) of the MLP matrices, in module order."""
        return tuple((n, True) for n in self.up) + tuple((n, False) for n in self.down)

    @property
    def attn_matrices(self):
        """Names (relative to a block) of the attention matrices: the fused q/k/v and the output projection."""
        return ATTENTION

    @property
    def block_matrices(self):
        """Every factorisable matrix of a block, attention first, in the order the block runs them."""
        return self.attn_matrices + tuple(n for n, _ in self.mlp_matrices)


# -----------------------------------------------------------------------------
# configs both ways (transformers is imported only when a conversion is asked for)

def gpt2_from_hf(hf):
    act = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}.get(hf.activation_function)
    if act is None:
        raise CheckpointError(f"GPT-2 activation {hf.activation_function!r} is not supported; use gelu or gelu_new")
    return dict(block_size=hf.n_positions, vocab_size=hf.vocab_size, n_layer=hf.n_layer, n_head=hf.n_head,
                n_embd=hf.n_embd, mlp_hidden=hf.n_inner or 4 * hf.n_embd, bias=True, activation=act,
                norm_eps=hf.layer_norm_epsilon, tie_embeddings=getattr(hf, "tie_word_embeddings", True))


def gpt2_to_hf(config, special):
    from transformers import GPT2Config
    return GPT2Config(**special, vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
                      n_layer=config.n_layer, n_head=config.n_head, n_inner=config.mlp_hidden,
                      activation_function="gelu_new" if config.activation == "gelu_tanh" else "gelu",
                      layer_norm_epsilon=config.norm_eps, tie_word_embeddings=config.tie_embeddings)


def llama_from_hf(hf):
    rope = getattr(hf, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise CheckpointError(f"rope scaling {rope.get('rope_type')!r} is not supported; only plain rotary")
    if getattr(hf, "attention_bias", False) != getattr(hf, "mlp_bias", False):
        raise CheckpointError("Llama models with attention_bias != mlp_bias are not supported")
    return dict(arch="llama", block_size=hf.max_position_embeddings, vocab_size=hf.vocab_size,
                n_layer=hf.num_hidden_layers, n_head=hf.num_attention_heads, n_kv_head=hf.num_key_value_heads,
                n_embd=hf.hidden_size, head_dim=getattr(hf, "head_dim",
                                                        None) or hf.hidden_size // hf.num_attention_heads,
                mlp_hidden=hf.intermediate_size, bias=bool(getattr(hf, "mlp_bias", False)), activation="silu",
                norm_eps=hf.rms_norm_eps, rope_theta=float(rope.get("rope_theta", getattr(hf, "rope_theta", 1e4))),
                tie_embeddings=bool(hf.tie_word_embeddings))


def llama_to_hf(config, special):
    from transformers import LlamaConfig
    return LlamaConfig(**special, vocab_size=config.vocab_size, hidden_size=config.n_embd,
                       intermediate_size=config.mlp_hidden, num_hidden_layers=config.n_layer,
                       num_attention_heads=config.n_head, num_key_value_heads=config.n_kv_head,
                       head_dim=config.head_dim,
                       max_position_embeddings=config.block_size, rms_norm_eps=config.norm_eps,
                       rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
                       attention_bias=config.bias, mlp_bias=config.bias, tie_word_embeddings=config.tie_embeddings)


FAMILIES = {
    "gpt2": Family(
        name="gpt2", norm="layernorm", mlp="gelu", positions="learned", up=("c_fc",), down=("c_proj",),
        hf_type="gpt2", hf_top={}, hf_layers="transformer.h.", hf_block={}, hf_qkv=(),
        conv1d=("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"),
        from_hf=gpt2_from_hf, to_hf=gpt2_to_hf),
    "llama": Family(
        name="llama", norm="rmsnorm", mlp="swiglu", positions="rotary", up=("gate_proj", "up_proj"),
        down=("down_proj",), hf_type="llama",
        hf_top={"transformer.wte.weight": "model.embed_tokens.weight", "transformer.ln_f.weight": "model.norm.weight"},
        hf_layers="model.layers.",
        hf_block={"ln_1.weight": "input_layernorm.weight", "ln_2.weight": "post_attention_layernorm.weight",
                  "attn.c_proj": "self_attn.o_proj", "mlp.gate_proj": "mlp.gate_proj",
                  "mlp.up_proj": "mlp.up_proj", "mlp.down_proj": "mlp.down_proj"},
        hf_qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), conv1d=(),
        from_hf=llama_from_hf, to_hf=llama_to_hf),
}


def family_of_hf(model_type):
    """The Family whose transformers model_type this is, or a CheckpointError."""
    for fam in FAMILIES.values():
        if fam.hf_type == model_type:
            return fam
    raise CheckpointError(f"model type {model_type!r} is not supported; use "
                          + " or ".join(f.hf_type for f in FAMILIES.values()) + " models")


def family(arch):
    """The Family of an arch name, or a ConfigError listing the known ones."""
    if arch not in FAMILIES:
        raise ConfigError(f"unknown arch {arch!r}; use one of {', '.join(FAMILIES)}")
    return FAMILIES[arch]
