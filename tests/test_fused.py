"""The fused Triton orders (kronygpt/fused.py) against the unfused factored product: forward and every gradient.
On the CPU they run under Triton's interpreter (TRITON_INTERPRET=1, read when the kernels are defined, so in a
subprocess: this file run as a script); on a GPU, in process, compiled, in bfloat16 too."""

import json
import os
import subprocess
import sys

import pytest
import torch

from kronygpt import fused
from kronygpt.errors import ConfigError
from kronygpt.kronecker import kron_matmul, kron_shape

CASES = [  # (out, in, m1, n1, factors, leading shape of x)
    (20, 6, 4, 3, 1, (5,)),
    (20, 6, 4, 3, 2, (2, 3)),
    (12, 18, 3, 2, 3, (7,)),
    (24, 8, 24, 2, 2, (4,)),       # B is (1, 4): m2 == 1
    (12, 8, 3, 8, 1, (4,)),        # B is (4, 1): n2 == 1
    (24, 8, 1, 8, 2, (4,)),        # A is a row (1, 8)
    (96, 64, 32, 16, 2, (33,)),    # several tiles in every direction
]


def errors(device, dtype):
    """For every case and fused order: the largest relative error of y, dx, dA and dB against kron_matmul's."""
    out = []
    for (o, i, m1, n1, r, lead) in CASES:
        s = kron_shape(o, i, m1, n1)
        g = torch.Generator().manual_seed(o * i + r)
        x = torch.randn(*lead, i, generator=g)
        A, B = torch.randn(r, s.m1, s.n1, generator=g), torch.randn(r, s.m2, s.n2, generator=g)
        dy = torch.randn(*lead, o, generator=g)
        for order in fused.FUSED:
            got = []
            for impl in (order, order.removeprefix("fused_")):
                xs, As, Bs = (t.to(device, dtype, copy=True).requires_grad_() for t in (x, A, B))
                y = kron_matmul(xs, As, Bs, impl)
                y.backward(dy.to(device, dtype))
                got.append([t.float().cpu() for t in (y, xs.grad, As.grad, Bs.grad)])
            err = [((a - b).norm() / b.norm()).item() for a, b in zip(*got)]
            out.append(dict(case=[o, i, m1, n1, r], order=order, errors=err))
    return out


def check(results, tol):
    assert len(results) == 2 * len(CASES)
    for row in results:
        assert max(row["errors"]) < tol, row


@pytest.mark.skipif(fused.triton is None, reason="Triton is not installed")
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the compiled kernels are tested instead (Triton "
                    "3.6's interpreter, on the H200 image, fails on the kernel's K loop; 3.9's runs it)")
def test_fused_orders_match_unfused_under_the_interpreter():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=root)
    p = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    check(json.loads(p.stdout.strip().splitlines()[-1]), 1e-5)


@pytest.mark.skipif(not torch.cuda.is_available() or fused.triton is None, reason="needs CUDA and Triton")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_fused_orders_match_unfused_on_cuda(dtype, tol):
    check(errors("cuda", dtype), tol)


def test_fused_order_without_its_device_is_one_clear_error():
    if fused.fused_available(torch.device("cpu")):
        pytest.skip("this process runs Triton's interpreter")
    x, A, B = torch.randn(2, 6), torch.randn(1, 4, 3), torch.randn(1, 5, 2)
    with pytest.raises(ConfigError, match="needs Triton"):
        kron_matmul(x, A, B, "fused_right")


if __name__ == "__main__":
    print(json.dumps(errors("cpu", torch.float32)))
