"""
Generation speed of a compressed model as users get it: tokens/s of `generate` for its factored Hugging Face export,
for its dense export (every product materialised), and for this repo's own GPT.generate on the same factors,
after prompts of several lengths, greedy, batch 1. Timings alternate between the three round by round and
report medians. Figures are printed (and written with --json), never asserted.

    python scripts/bench_generate.py --model out-81M/best.pt
    python scripts/bench_generate.py --model out-81M/best.pt --threads 1 --prompts 5,256 --new_tokens 64 --json g.json
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import configure, run_cli  # noqa: E402
from kronygpt.checkpoint import check_output_file, load_model  # noqa: E402
from kronygpt.errors import UserError  # noqa: E402
from kronygpt.hf_io import quiet_transformers  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class BenchGenerateConfig:
    model: str = ""                 # a compressed checkpoint (or run directory)
    prompts: str = "5,256"          # prompt lengths in tokens
    new_tokens: int = 64            # tokens generated after each prompt
    rounds: int = 3                 # timed rounds (the median is reported)
    threads: int = 1                # CPU threads (the measurement used one)
    json: str = ""                  # also write the figures here
    force: bool = False             # overwrite --json

    def validate(self):
        if not self.model:
            raise UserError("give --model CHECKPOINT (a compressed model)")


def main():
    cfg = configure(BenchGenerateConfig(), sys.argv[1:], verbose=False, doc=__doc__)
    if cfg.json:
        check_output_file(cfg.json, cfg.force)
    torch.set_num_threads(cfg.threads)
    quiet_transformers()
    from transformers import AutoModelForCausalLM
    ours = load_model(cfg.model).eval()
    tmp = tempfile.mkdtemp()
    models = {"repo GPT.generate": None}
    for fmt in ("factored", "dense"):
        out = os.path.join(tmp, fmt)
        subprocess.run([sys.executable, os.path.join(REPO, "export.py"), "--init_from", cfg.model, "--out", out,
                        "--format", fmt], check=True, capture_output=True)
        models[f"{fmt} export, generate"] = AutoModelForCausalLM.from_pretrained(
            out, trust_remote_code=fmt == "factored").eval()
    results = {}
    for length in (int(p) for p in cfg.prompts.split(",")):
        x = torch.randint(100, ours.config.vocab_size - 100, (1, length), generator=torch.Generator().manual_seed(0))
        times = {name: [] for name in models}
        outs = {}
        for _ in range(cfg.rounds + 1):  # the first round warms up
            for name, m in models.items():
                t = time.perf_counter()
                with torch.no_grad():
                    if m is None:
                        y = ours.generate(x, cfg.new_tokens, temperature=0)
                    else:
                        y = m.generate(x, max_new_tokens=cfg.new_tokens, min_new_tokens=cfg.new_tokens,
                                       do_sample=False, eos_token_id=None, pad_token_id=0)
                times[name].append(time.perf_counter() - t)
                outs[name] = y[0, length:].tolist()
        for name, ts in times.items():
            results[f"{name}, prompt {length}"] = cfg.new_tokens / statistics.median(ts[1:])
        same = len({tuple(o) for o in outs.values()}) == 1
        print(f"prompt {length} tokens, {cfg.new_tokens} new: " + "; ".join(
            f"{name} {cfg.new_tokens / statistics.median(ts[1:]):.1f} tok/s" for name, ts in times.items())
            + f" (same greedy tokens: {same})", flush=True)
    info = dict(model=cfg.model, params=ours.param_counts()["total"], threads=cfg.threads, torch=torch.__version__,
                date=time.strftime("%Y-%m-%d"), tokens_per_s=results)
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump(info, f, indent=1)


if __name__ == "__main__":
    run_cli(main)
