"""
Time kron_decomp's Van Loan decomposition of all 24 MLP matrices of a GPT-2-124M-sized model
(random weights of the real shapes: the hub is not needed), for several factor shapes.

    python scripts/bench_decomp.py                      # vl, 4 factors
    python scripts/bench_decomp.py --init vl_norm --factors 2
"""

import os
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import configure, run_cli  # noqa: E402
from kronygpt.factorize import InitSpec  # noqa: E402
from kronygpt.surgery import decompose_model  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402


@dataclass
class BenchDecompConfig:
    init: str = "vl"                # the initialisation timed
    factors: int = 4                # factors per matrix
    shapes: str = "1024x256,768x768,1536x384,64x32"  # c_fc first-factor shapes to time, comma-separated


def main():
    cfg = configure(BenchDecompConfig(), sys.argv[1:], doc=__doc__)
    torch.manual_seed(0)
    dense = GPT(GPTConfig())  # GPT-2 124M shapes, random weights
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; GPT-2 124M, 24 MLP matrices, "
          f"init={cfg.init}, factors={cfg.factors}")
    for shape in cfg.shapes.split(","):
        t0 = time.perf_counter()
        model, rows = decompose_model(dense, f"*: mlp={shape}*{cfg.factors}", InitSpec(cfg.init))
        dt = time.perf_counter() - t0
        print(f"  A {shape} : {dt:6.2f} s for {len(rows)} matrices, {model.param_counts()['total']:,} parameters")


if __name__ == "__main__":
    run_cli(main)
