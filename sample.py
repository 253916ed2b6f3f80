"""
Sample from a model: a hub name or Hugging Face directory, a dense or Kronecker checkpoint, or an out_dir.

    python sample.py --init_from=out-demo/krony                   # best.pt (or last.pt) of a run
    python sample.py --init_from=gpt2 --start="Hello, I'm a language model,"
    python sample.py --init_from=smollm2-135m --temperature=0 --start=FILE:prompt.txt
    python sample.py --init_from=out/run --temperature=0 --prompts_json='["The capital of France is"]' --json=c.json
    python sample.py --init_from=out/run --compile=True          # fixed-shape KV cache, compiled decoding step
"""

import json
import os
import sys
from dataclasses import dataclass

import torch

from kronygpt.checkpoint import check_output_file, load_model, refuse_clashes
from configurator import configure, run_cli
from kronygpt.errors import ConfigError
from kronygpt.runtime import DTYPES, autocast, resolve_device, resolve_dtype
from kronygpt.tokenizer import get_tokenizer


@dataclass
class SampleConfig:
    init_from: str = "out-demo/krony"  # checkpoint file, out_dir, HF directory or hub name
    start: str = "\n"                  # prompt text, or FILE:path to read it from a file
    num_samples: int = 3               # independent samples
    max_new_tokens: int = 200          # tokens generated per sample
    temperature: float = 0.8           # 1.0 = unchanged distribution, < 1 sharper, 0 = greedy
    top_k: int = 200                   # keep only the top_k most likely tokens (0 = all)
    seed: int = 1337
    device: str = "cpu"                # 'cpu', 'cuda', 'cuda:1', 'mps', or 'auto'
    dtype: str = "float32"             # 'float32', 'bfloat16', 'float16' (autocast on CUDA) or 'auto'
    prompts_json: str = ""             # a JSON list of prompts, each sampled num_samples times (replaces start)
    json: str = ""                     # also write {prompt: completion} (the first sample of each) to this file
    force: bool = False                # overwrite --json
    static_cache: bool = False         # the KV cache in fixed-size buffers: every decoding step the same shapes
    compile: bool = False              # torch.compile the decoding step (implies static_cache; CUDA graphs-ready)

    def validate(self):
        if self.max_new_tokens < 1 or self.num_samples < 1:
            raise ConfigError(f"max_new_tokens and num_samples must be at least 1, got {self.max_new_tokens} "
                              f"and {self.num_samples}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 keeps every token), got {self.top_k}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.dtype not in ("auto", *DTYPES):
            raise ConfigError(f"dtype must be 'auto', 'float32', 'bfloat16' or 'float16', got {self.dtype!r}")


def prompts(cfg):
    """The prompt texts: prompts_json's list, or start (FILE:path reads a file)."""
    if cfg.prompts_json:
        try:
            items = json.loads(cfg.prompts_json)
        except json.JSONDecodeError as e:
            raise ConfigError(f"prompts_json is not valid JSON ({e}); pass a list like '[\"Hello\"]'") from None
        if not isinstance(items, list) or not items or not all(isinstance(t, str) for t in items):
            raise ConfigError("prompts_json must be a non-empty JSON list of strings")
        return items
    if cfg.start.startswith("FILE:"):
        path = cfg.start[5:]
        if not os.path.isfile(path):
            raise ConfigError(f"start=FILE:{path}: no such file")
        try:
            with open(path, encoding="utf-8") as f:
                return [f.read()]
        except UnicodeDecodeError:
            raise ConfigError(f"start=FILE:{path} is not UTF-8 text; give a text file as the prompt") from None
    return [cfg.start]


def main():
    cfg = configure(SampleConfig(), sys.argv[1:], verbose=False, doc=__doc__)
    if cfg.json:
        refuse_clashes([("--json", cfg.json)], [("--init_from", cfg.init_from)])
        check_output_file(cfg.json, cfg.force)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    ctx = autocast(device_type, resolve_dtype(cfg.dtype, device_type) if device_type == "cuda" else "float32")

    model = load_model(cfg.init_from, device=device).eval()
    tok = get_tokenizer(model.tokenizer_name)
    first = {}
    for text in prompts(cfg):
        ids = tok.encode(text) or [tok.eot if tok.eot is not None else 0]
        if len(ids) >= model.config.block_size:
            raise ConfigError(f"the prompt has {len(ids)} tokens, at least the model's block_size "
                              f"{model.config.block_size}; shorten it")
        x = torch.tensor(ids, dtype=torch.long, device=device)[None, ...]
        for i in range(cfg.num_samples):
            with torch.no_grad(), ctx:
                y = model.generate(x, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k or None,
                                   static=cfg.static_cache, compile=cfg.compile)
            completion = tok.decode(y[0, len(ids):].tolist())
            first.setdefault(text, completion)
            print(text + completion)
            print("---------------")
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump(first, f, indent=1)


if __name__ == "__main__":
    run_cli(main)
