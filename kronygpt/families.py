"""
The model families, one table entry each. model.py builds blocks from it, hf_io.py converts Hugging Face
checkpoints with it (both directions), and the decomposition code finds the matrices it may factorise in it.
Adding a family (Qwen2, Phi, ...) is one entry here plus its tests.

Names are relative to a block (transformer.h.<i>.). 'up' matrices map n_embd -> mlp_hidden and 'down'
matrices map back; a uniform Kronecker shape (m1, n1) is given for the up matrices and the down matrices
take the opposite shape (n1, m1).
"""

from dataclasses import dataclass

from .errors import ConfigError

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


FAMILIES = {
    "gpt2": Family(
        name="gpt2", norm="layernorm", mlp="gelu", positions="learned", up=("c_fc",), down=("c_proj",),
        hf_type="gpt2", hf_top={}, hf_layers="transformer.h.", hf_block={}, hf_qkv=(),
        conv1d=("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")),
    "llama": Family(
        name="llama", norm="rmsnorm", mlp="swiglu", positions="rotary", up=("gate_proj", "up_proj"),
        down=("down_proj",), hf_type="llama",
        hf_top={"transformer.wte.weight": "model.embed_tokens.weight", "transformer.ln_f.weight": "model.norm.weight"},
        hf_layers="model.layers.",
        hf_block={"ln_1.weight": "input_layernorm.weight", "ln_2.weight": "post_attention_layernorm.weight",
                  "attn.c_proj": "self_attn.o_proj", "mlp.gate_proj": "mlp.gate_proj",
                  "mlp.up_proj": "mlp.up_proj", "mlp.down_proj": "mlp.down_proj"},
        hf_qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), conv1d=()),
}


def family(arch):
    """The Family of an arch name, or a ConfigError listing the known ones."""
    if arch not in FAMILIES:
        raise ConfigError(f"unknown arch {arch!r}; use one of {', '.join(FAMILIES)}")
    return FAMILIES[arch]
