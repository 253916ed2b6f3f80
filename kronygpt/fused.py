"""
Fused Triton kernels for the Kronecker layers on CUDA: the factored product without its permute copies.

The factored orders of kron_matmul (kronecker.py) are two GEMMs with a permute copy between them (and, for
'right', a transpose copy after; for 'left', one before). Every one of those products is a GEMM over indices
that are *pairs*: the 'right' order's second product is
    Y[n, i, q] = sum_{k, j} A[k, i, j] T[n, j, k, q]            (T = X B^T, as the first GEMM leaves it)
a GEMM with rows (n, q), reduction (k, j) and columns i. A GEMM kernel that splits each of its three indices
into (outer, inner) = divmod(index, inner size) and addresses each operand by two strides per index reads and
writes those layouts in place, so the copies disappear. `strided_gemm` is that kernel; the two fused orders
(forward and backward) are a few calls of it next to plain torch GEMMs:

    'fused_right':  T = X B^T (plain GEMM), Y = strided(T, A)
                    dT = strided(dY, A), dA = strided(dY, T), dX = dT B, dB = dT^T X (plain)
    'fused_left':   U = strided(X, A) in the layout [n, i, k, l], Y = U Bs (plain GEMM)
                    dU = dY Bs^T, dBs = U^T dY (plain), dX = strided(dU, A), dA = strided(dU, X)

They multiply exactly what 'right' and 'left' multiply (same MACs); only the memory traffic differs. Whether
that wins depends on the GPU, the shape and the token count, so the layer uses them only where
kron_impl='measured' times them faster (kronecker.OrderTimer), or where a user asks by name. Triton's
interpreter (TRITON_INTERPRET=1) runs the same kernels on the CPU: that is how CI checks them.
"""

import os

import torch

from .errors import ConfigError

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU install has no Triton; the fused orders are then unavailable
    triton = None

FUSED = ("fused_right", "fused_left")


def fused_available(device):
    """Whether the fused orders can run on this device: Triton on CUDA, or its interpreter on the CPU."""
    if triton is None:
        return False
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    return device.type == "cuda" or (interpret and device.type == "cpu")


if triton is not None:
    @triton.jit
    def _strided_gemm_kernel(P, Q, O, M, N, K, R1, K1, C1,
                             p_r0, p_r1, p_k0, p_k1, q_k0, q_k1, q_c0, q_c1, o_r0, o_r1, o_c0, o_c1,
                             IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # O[r, c] = sum_t P[r, t] Q[t, c]; index x of inner size X1 is the pair (x // X1, x % X1), and each
        # operand addresses a pair by its own two strides (o_r0, o_r1 for O's row pair, and so on)
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        rm0, rm1 = (rm // R1).to(tl.int64), (rm % R1).to(tl.int64)
        rn0, rn1 = (rn // C1).to(tl.int64), (rn % C1).to(tl.int64)
        p_rows = P + (rm0 * p_r0 + rm1 * p_r1)[:, None]
        q_cols = Q + (rn0 * q_c0 + rn1 * q_c1)[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            rk = k + tl.arange(0, BLOCK_K)
            rk0, rk1 = (rk // K1).to(tl.int64), (rk % K1).to(tl.int64)
            p = tl.load(p_rows + (rk0 * p_k0 + rk1 * p_k1)[None, :], mask=(rm < M)[:, None] & (rk < K)[None, :],
                        other=0.0)
            q = tl.load(q_cols + (rk0 * q_k0 + rk1 * q_k1)[:, None], mask=(rk < K)[:, None] & (rn < N)[None, :],
                        other=0.0)
            if IEEE:  # float32 inputs: full precision, as torch's float32 matmul (not TF32)
                acc += tl.dot(p, q, input_precision="ieee")
            else:
                acc += tl.dot(p, q)
        o = O + (rm0 * o_r0 + rm1 * o_r1)[:, None] + (rn0 * o_c0 + rn1 * o_c1)[None, :]
        tl.store(o, acc.to(O.dtype.element_ty), mask=(rm < M)[:, None] & (rn < N)[None, :])


def _block(n, cap):
    """A power-of-two tile size for a dimension of size n: at least 16 (tl.dot's minimum), at most cap."""
    return max(16, min(cap, triton.next_power_of_2(n)))


def strided_gemm(P, Q, O, size, inner, strides):
    """O[r, c] = sum_t P[r, t] Q[t, c] for r < M, c < N, t < K (size = (M, N, K)), written into O in place.
    inner = (R1, K1, C1): the inner sizes splitting r, t and c into pairs; strides = (p, q, o) with p = (r0, r1, t0,
    t1), q = (t0, t1, c0, c1), o = (r0, r1, c0, c1): each operand's element strides for the outer and inner part of
    its two indices."""
    (M, N, K), (p, q, o) = size, strides
    BM, BN, BK = _block(M, 64), _block(N, 64), _block(K, 32)
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN))
    _strided_gemm_kernel[grid](P, Q, O, M, N, K, *inner, *p, *q, *o, IEEE=P.dtype == torch.float32,
                               BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK)
    return O


# -----------------------------------------------------------------------------
# the two fused orders (x: (N, n1*n2) contiguous, A: (r, m1, n1), B: (r, m2, n2) contiguous, one dtype)

class _FusedRight(torch.autograd.Function):
    """B first: T[n, j, k, q] = sum_l X[n, j, l] B[k, q, l] (a plain GEMM), then Y[n, i, q] = sum_{k, j} A[k, i, j]
    T[n, j, k, q], read and written in place by the strided kernel."""

    @staticmethod
    def forward(ctx, x, A, B):
        r, m1, n1 = A.shape
        _, m2, n2 = B.shape
        N = x.shape[0]
        T = x.view(N * n1, n2) @ B.view(r * m2, n2).t()   # [(n, j), (k, q)]
        Y = x.new_empty(N, m1 * m2)
        t, a, y = (n1 * r * m2, 1, m2, r * m2), (m1 * n1, 1, n1, 0), (m1 * m2, 1, m2, 0)  # T[(n,q),(k,j)], A[(k,j),i]
        strided_gemm(T, A, Y, (N * m2, m1, r * n1), (m2, n1, 1),
                     (t, a, y))
        ctx.save_for_backward(x, A, B, T)
        return Y

    @staticmethod
    def backward(ctx, dY):
        x, A, B, T = ctx.saved_tensors
        r, m1, n1 = A.shape
        _, m2, n2 = B.shape
        N = x.shape[0]
        dY = dY.contiguous()
        dT = torch.empty_like(T)  # dT[n, j, k, q] = sum_i dY[n, i, q] A[k, i, j]
        strided_gemm(dY, A, dT, (N * m2, r * n1, m1), (m2, 1, n1),
                     ((m1 * m2, 1, m2, 0), (n1, 0, m1 * n1, 1), (n1 * r * m2, 1, m2, r * m2)))
        dA = torch.empty_like(A)  # dA[k, i, j] = sum_{n, q} dY[n, i, q] T[n, j, k, q]
        strided_gemm(dY, T, dA, (m1, r * n1, N * m2), (1, m2, n1),
                     ((m2, 0, m1 * m2, 1), (n1 * r * m2, 1, m2, r * m2), (n1, 0, m1 * n1, 1)))
        dT2 = dT.view(N * n1, r * m2)
        dx = (dT2 @ B.view(r * m2, n2)).view(N, n1 * n2)
        dB = (dT2.t() @ x.view(N * n1, n2)).view(r, m2, n2)
        return dx, dA, dB


class _FusedLeft(torch.autograd.Function):
    """A first: U[n, i, k, l] = sum_j A[k, i, j] X[n, j, l] by the strided kernel (no transpose of X), then
    Y[(n, i), q] = U[(n, i), (k, l)] Bs[(k, l), q] as a plain GEMM (Bs = B permuted, a copy of the small factor)."""

    @staticmethod
    def forward(ctx, x, A, B):
        r, m1, n1 = A.shape
        _, m2, n2 = B.shape
        N = x.shape[0]
        U = x.new_empty(N * m1, r * n2)
        strided_gemm(x, A, U, (N * n2, r * m1, n1), (n2, 1, m1),
                     ((n1 * n2, 1, n2, 0), (1, 0, m1 * n1, n1), (m1 * r * n2, 1, n2, r * n2)))
        Bs = B.transpose(1, 2).reshape(r * n2, m2)
        ctx.save_for_backward(x, A, Bs, U)
        return (U @ Bs).view(N, m1 * m2)

    @staticmethod
    def backward(ctx, dY):
        x, A, Bs, U = ctx.saved_tensors
        r, m1, n1 = A.shape
        m2, n2 = Bs.shape[1], Bs.shape[0] // r
        N = x.shape[0]
        dY2 = dY.contiguous().view(N * m1, m2)
        dU = dY2 @ Bs.t()                                   # [(n, i), (k, l)]
        dB = (U.t() @ dY2).view(r, n2, m2).transpose(1, 2).contiguous()
        dx = torch.empty_like(x)  # dX[n, j, l] = sum_{k, i} A[k, i, j] dU[n, i, k, l]
        strided_gemm(dU, A, dx, (N * n2, n1, r * m1), (n2, m1, 1),
                     ((m1 * r * n2, 1, n2, r * n2), (m1 * n1, n1, 1, 0), (n1 * n2, 1, n2, 0)))
        dA = torch.empty_like(A)  # dA[k, i, j] = sum_{n, l} dU[n, i, k, l] X[n, j, l]
        strided_gemm(dU, x, dA, (r * m1, n1, N * n2), (m1, n2, 1),
                     ((n2, r * n2, m1 * r * n2, 1), (n1 * n2, 1, n2, 0), (m1 * n1, n1, 1, 0)))
        return dx, dA, dB


def fused_kron_matmul(x, A, B, order):
    """y = x (sum_k A_k (x) B_k)^T like kronecker.kron_matmul(x, A, B, order[6:]), by the fused kernels.
    Under autocast the inputs are cast to its dtype first, as F.linear would."""
    r, m1, n1 = A.shape
    _, m2, n2 = B.shape
    lead = x.shape[:-1]
    if not fused_available(x.device):
        raise ConfigError(f"kron_impl {order!r} needs Triton and a CUDA device (or TRITON_INTERPRET=1 on the CPU), "
                          f"but the input is on {x.device}{'' if triton else ' and Triton is not installed'}; use "
                          f"kron_impl='measured' to run the fastest order available")
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        x, A, B = x.to(dt), A.to(dt), B.to(dt)
    else:
        A, B = A.to(x.dtype), B.to(x.dtype)
    fn = {"fused_right": _FusedRight, "fused_left": _FusedLeft}[order]
    with torch.autocast(dev, enabled=False):
        y = fn.apply(x.reshape(-1, n1 * n2).contiguous(), A.contiguous(), B.contiguous())
    return y.view(*lead, m1 * m2)
