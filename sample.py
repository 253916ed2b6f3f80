"""
Sample from a model: a hub name or Hugging Face directory, a dense or Kronecker checkpoint, or an out_dir.

    python sample.py --init_from=out-demo/krony                   # best.pt (or last.pt) of a run
    python sample.py --init_from=gpt2 --start="Hello, I'm a language model,"
    python sample.py --init_from=smollm2-135m --temperature=0 --start=FILE:prompt.txt
"""

import sys
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from checkpoint import load_model
from configurator import configure, run_cli
from tokenizer import get_tokenizer


@dataclass
class SampleConfig:
    init_from: str = "out-demo/krony"  # checkpoint file, out_dir, HF directory or hub name
    start: str = "\n"                  # prompt text, or FILE:path to read it from a file
    num_samples: int = 3               # independent samples
    max_new_tokens: int = 200          # tokens generated per sample
    temperature: float = 0.8           # 1.0 = unchanged distribution, < 1 sharper, 0 = greedy
    top_k: int = 200                   # keep only the top_k most likely tokens (0 = all)
    seed: int = 1337
    device: str = "cpu"                # 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype: str = "float32"             # 'float32', 'bfloat16' or 'float16' (autocast on CUDA)


def main():
    cfg = configure(SampleConfig(), sys.argv[1:], verbose=False)
    torch.manual_seed(cfg.seed)
    device_type = "cuda" if "cuda" in cfg.device else "cpu"
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]
    ctx = nullcontext() if device_type == "cpu" or cfg.dtype == "float32" else \
        torch.autocast(device_type=device_type, dtype=ptdtype)

    model = load_model(cfg.init_from, device=cfg.device).eval()
    tok = get_tokenizer(model.tokenizer_name)
    start = cfg.start
    if start.startswith("FILE:"):
        with open(start[5:], encoding="utf-8") as f:
            start = f.read()
    ids = tok.encode(start)
    if not ids:
        ids = [tok.eot if tok.eot is not None else 0]
    x = torch.tensor(ids, dtype=torch.long, device=cfg.device)[None, ...]
    with torch.no_grad(), ctx:
        for _ in range(cfg.num_samples):
            y = model.generate(x, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k or None)
            print(tok.decode(y[0].tolist()))
            print("---------------")


if __name__ == "__main__":
    run_cli(main)
