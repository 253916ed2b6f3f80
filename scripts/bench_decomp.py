"""
Time kron_decomp's Van Loan decomposition of all 24 MLP matrices of a GPT-2-124M-sized model
(random weights of the real shapes: the hub is not needed), for several factor shapes.

    python scripts/bench_decomp.py                      # vl, 4 factors
    python scripts/bench_decomp.py --init vl_norm --factors 2
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kronygpt.decompose import decompose_model  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="vl")
    p.add_argument("--factors", type=int, default=4)
    p.add_argument("--shapes", default="1024x256,768x768,1536x384,64x32",
                   help="c_fc first-factor shapes to time, comma-separated")
    args = p.parse_args()
    torch.manual_seed(0)
    dense = GPT(GPTConfig())  # GPT-2 124M shapes, random weights
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; GPT-2 124M, 24 MLP matrices, "
          f"init={args.init}, factors={args.factors}")
    for text in args.shapes.split(","):
        shape = tuple(int(v) for v in text.split("x"))
        t0 = time.perf_counter()
        model, rows = decompose_model(dense, args.factors, shape, args.init)
        dt = time.perf_counter() - t0
        print(f"  A {shape} : {dt:6.2f} s for {len(rows)} matrices, {model.param_counts()['total']:,} parameters")


if __name__ == "__main__":
    main()
