"""
The Kronecker-factored layers: a linear layer and a token embedding whose weight is a sum of Kronecker
products, multiplied in factored form. (How factors are computed from a dense matrix is factorize.py.)

A weight W of shape (out, in) = (m1*m2, n1*n2) is stored as r Kronecker products,
    W = sum_k s_k * A_k (x) B_k,    A_k: (m1, n1),  B_k: (m2, n2),
with optional learnable per-factor scalars s_k. torch.kron is row-major:
    W[i*m2 + k, j*n2 + l] = A[i, j] * B[k, l],
so for one token x viewed as X of shape (n1, n2), y = W x is A X B^T viewed as (m1, m2).
That identity lets the layer multiply by the factors without ever building W:
    B-first ("right"):  T = X B^T, then A T    MACs/token = r * n1*m2 * (n2 + m1)
    A-first ("left"):   U = A X,   then U B^T  MACs/token = r * m1*n2 * (n1 + m2)
    materialised:       W = sum A (x) B, then x W^T   MACs/token = m1*m2*n1*n2 (+ building W once)
The sum over k is folded into the contraction dimension of the second GEMM, so any r costs two
GEMMs and at most one permute copy. `choose_impl` picks the cheapest of the three (FACTORED_MAX_MAC_RATIO
records the measurements behind its threshold).
"""

import json
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fused import FUSED, fused_available, fused_kron_matmul
from .errors import ConfigError

# factored forms move (N, r*n1*m2) or (N, r*m1*n2) intermediates through memory, which costs more
# than the MAC count suggests; they are used only when their MACs are below this share of dense.
# On the 2-core CPU, B-first at 0.50 of dense MACs ran at 0.55x dense (fwd+bwd), and r=2 at 1.0
# ran at 1.02x, so anything under ~0.8 wins.
FACTORED_MAX_MAC_RATIO = 0.8


# -----------------------------------------------------------------------------
# shapes

@dataclass(frozen=True)
class KronShape:
    """Factor shapes of one Kronecker-factored matrix of shape (m1*m2, n1*n2)."""
    m1: int
    n1: int
    m2: int
    n2: int

    @property
    def out_features(self):
        return self.m1 * self.m2

    @property
    def in_features(self):
        return self.n1 * self.n2

    @property
    def max_rank(self):
        """Kronecker rank of a generic W: the rank of the rearranged (m1*n1, m2*n2) matrix."""
        return min(self.m1 * self.n1, self.m2 * self.n2)

    def transposed(self):
        """The opposite shapes, used by the matrix that maps back (c_proj for c_fc)."""
        return KronShape(self.n1, self.m1, self.n2, self.m2)

    def params(self, factors, scalars=False):
        return factors * (self.m1 * self.n1 + self.m2 * self.n2) + (factors if scalars else 0)

    def __str__(self):
        return f"({self.m1},{self.n1})x({self.m2},{self.n2})"


def kron_shape(out_features, in_features, m1, n1):
    """The KronShape whose first factor is (m1, n1), or a ConfigError saying why it cannot be."""
    if m1 <= 0 or n1 <= 0 or out_features % m1 or in_features % n1:
        raise ConfigError(
            f"factor shape ({m1},{n1}) does not divide the ({out_features},{in_features}) matrix; "
            f"m1 must divide {out_features} and n1 must divide {in_features} "
            f"(run kron_decomp.py --list_shapes to see the valid ones)")
    return KronShape(m1, n1, out_features // m1, in_features // n1)


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def all_shapes(out_features, in_features):
    """Every KronShape for an (out, in) matrix, trivial ones (a 1x1 factor) excluded."""
    shapes = []
    for m1 in divisors(out_features):
        for n1 in divisors(in_features):
            s = KronShape(m1, n1, out_features // m1, in_features // n1)
            if (m1, n1) != (1, 1) and (s.m2, s.n2) != (1, 1):
                shapes.append(s)
    return shapes


# -----------------------------------------------------------------------------
# cost model

def factored_macs(s, r):
    """Multiply-accumulates per token of the two factored orders: {'right': .., 'left': ..}."""
    return {"right": r * s.n1 * s.m2 * (s.n2 + s.m1),   # B-first
            "left": r * s.m1 * s.n2 * (s.n1 + s.m2)}    # A-first


IMPLS = ("auto", "measured", "right", "left", "materialized", *FUSED)  # 'auto': the cost model's; 'measured': timed
ORDERS = ("right", "left", "materialized", *FUSED)  # the fused ones (Triton, CUDA) only where they can run


def orders(device):
    """The contraction orders that can run on this device."""
    return ORDERS if fused_available(device) else tuple(o for o in ORDERS if o not in FUSED)


def choose_impl(s, r):
    """'right' (B-first), 'left' (A-first) or 'materialized', whichever is cheapest. Low rank is always factored:
    its two GEMMs need no copies, and below the rank where it would cost as much as dense (no plan goes beyond)
    they are cheaper than building W, above all when decoding one token at a time."""
    if s.n1 == 1 and s.m2 == 1:
        return "right"
    macs = factored_macs(s, r)
    best = min(macs, key=macs.get)
    dense = s.out_features * s.in_features
    return best if macs[best] < FACTORED_MAX_MAC_RATIO * dense else "materialized"


class OrderTimer:
    """The fastest contraction order, measured: each (device, dtype, shape, factors, token count rounded up to
    a power of two, forward or forward+backward) is timed once on random data of that size (every candidate
    order, a median of a few runs after a warm-up) and the winner kept for the process (and in the JSON file
    $KRONYGPT_ORDERS, when set, for later runs). The cost model (choose_impl) decides where nothing may be
    timed: inside torch.compile's tracing and CUDA graph capture. On a GPU the multiply-add count misleads:
    there, materialising was faster than the factored orders for every Kronecker shape measured in
    forward+backward (results/gpu_h200_2026-11-30)."""

    def __init__(self, path=None, repeats=5):
        self.path, self.repeats, self.choices, self.timings = path, repeats, {}, {}
        if path and os.path.exists(path):
            self.choices = read_orders(path)

    @staticmethod
    def key(s, r, bucket, device, dtype, backward):
        return f"{device.type}|{str(dtype).replace('torch.', '')}|{s}|r{r}|n{bucket}|{'fwd+bwd' if backward else 'fwd'}"

    def choose(self, s, r, x):
        """The order to run for input x (..., in) on a layer of shape s with r factors."""
        if s.n1 == 1 and s.m2 == 1:
            return "right"  # low rank: two plain GEMMs, nothing to choose
        bucket = 1 << max(0, math.ceil(math.log2(max(1, x.numel() // x.shape[-1]))))  # tokens, rounded up
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        key = self.key(s, r, bucket, x.device, dtype, torch.is_grad_enabled())
        if self.choices.get(key) in orders(x.device):  # (a saved fused choice needs Triton here too)
            return self.choices[key]
        if torch.compiler.is_compiling() or (x.is_cuda and torch.cuda.is_current_stream_capturing()):
            return choose_impl(s, r)
        self.choices[key] = self.measure(s, r, bucket, x.device, dtype, torch.is_grad_enabled(), key)
        self.save()
        return self.choices[key]

    def measure(self, s, r, n_tokens, device, dtype, backward, key=None):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)
            x = torch.randn(n_tokens, s.in_features, device=device, dtype=dtype, requires_grad=backward)
            A = torch.randn(r, s.m1, s.n1, device=device, dtype=dtype, requires_grad=backward)
            B = torch.randn(r, s.m2, s.n2, device=device, dtype=dtype, requires_grad=backward)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        def run(impl):
            y = kron_matmul(x, A, B, impl)
            if backward:
                y.backward(torch.ones_like(y))
            sync()

        times = {impl: [] for impl in orders(device)}
        with torch.enable_grad() if backward else torch.no_grad():
            for impl in times:
                run(impl)  # warm-up (allocator, kernels, the fused kernels' compilation)
            for _ in range(self.repeats):  # rounds alternate between orders: drift hits all alike
                for impl in times:
                    t0 = time.perf_counter()
                    run(impl)
                    times[impl].append(time.perf_counter() - t0)
        medians = {impl: sorted(t)[len(t) // 2] for impl, t in times.items()}
        if key is not None:
            self.timings[key] = medians
        return min(medians, key=medians.get)

    def save(self):
        if not self.path:
            return
        tmp = f"{self.path}.tmp{os.getpid()}"
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(self.choices, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as e:  # a cache of timings: a run never fails for it, it stops saving (and says so once)
            print(f"warning: cannot write $KRONYGPT_ORDERS {self.path} ({e.strerror or e}); the orders measured "
                  f"now are kept for this run only", file=sys.stderr)
            self.path = None


def read_orders(path):
    """The saved {key: order} of $KRONYGPT_ORDERS, or {} with a warning when it is not such a file: a cache of
    timings is measured again, never a reason for every command (even --help) to fail at import."""
    try:
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return {k: v for k, v in data.items() if isinstance(v, str) and v in ORDERS}
    except (OSError, ValueError, RecursionError) as e:
        print(f"warning: $KRONYGPT_ORDERS {path} is not a saved order file ({e}); measuring the orders again and "
              f"replacing it", file=sys.stderr)
        return {}


TIMER = OrderTimer(os.environ.get("KRONYGPT_ORDERS") or None)


def kron_sum(A, B, scalars=None):
    """sum_k s_k * kron(A[k], B[k]) as one (m1*m2, n1*n2) matrix, built by a single einsum."""
    r, m1, n1 = A.shape
    _, m2, n2 = B.shape
    if scalars is not None:
        A = A * scalars.view(r, 1, 1)
    if r == 1:  # squeezed, so the gradients keep the parameters' strides (see _merge01)
        return torch.einsum("ij,kl->ikjl", A.squeeze(0), B.squeeze(0)).reshape(m1 * m2, n1 * n2)
    return torch.einsum("rij,rkl->ikjl", A, B).reshape(m1 * m2, n1 * n2)


def _merge01(t):
    """(r, m, n) -> (r*m, n) as a view. squeeze when r == 1: the gradient of a reshape that drops a size-1
    dimension comes back with another stride on it, which DDP reports as a layout mismatch (and copies)."""
    return t.squeeze(0) if t.shape[0] == 1 else t.reshape(-1, t.shape[-1])


def kron_matmul(x, A, B, impl):
    """y = x (sum_k A_k (x) B_k)^T for x of shape (..., n1*n2), without building the matrix
    unless impl == 'materialized'. A: (r, m1, n1), B: (r, m2, n2)."""
    r, m1, n1 = A.shape
    _, m2, n2 = B.shape
    lead = x.shape[:-1]
    if impl == "materialized":
        return F.linear(x, kron_sum(A, B))
    if impl in FUSED:
        if torch.compiler.is_compiling():  # compiled code gets the unfused order: inductor fuses its copies itself
            impl = impl.removeprefix("fused_")
        elif not (n1 == 1 and m2 == 1):
            return fused_kron_matmul(x, A, B, impl)
    # (A permute that only moves a size-1 dimension is skipped, and size-1 dimensions are dropped by squeeze,
    # not reshape: the gradient then has the parameter's exact strides, which DDP's gradient buckets require
    # to avoid a copy; tests/test_train.py checks torchrun gives no stride warning. A product whose inner
    # dimension is 1 is an outer product, done as a broadcast multiply: 15-20% faster than a K=1 GEMM.)
    # Every GEMM below is an explicit 2-D product. torch.matmul(2-D, 3-D) and F.linear on a transposed
    # 3-D input fold into one GEMM only while autograd records; under no_grad (eval, generation) they
    # run N tiny GEMMs, 3-10x slower than dense on the CPU. The permute copies are written out instead.
    if n1 == 1 and m2 == 1:  # low rank, W = U V^T: exactly two GEMMs on views of the factors, no copies
        V, Ut = B.squeeze(1), A.squeeze(2)                      # (r, in), (r, out): A (r, out, 1) is U^T in memory
        return (x.reshape(-1, n2) @ V.t() @ Ut).reshape(*lead, m1)
    X = x.reshape(-1, n1, n2)                                   # (N, n1, n2)
    N = X.shape[0]
    if impl == "right":
        Xf, Bt = X.reshape(N * n1, n2), (B.view(1, r * m2) if n2 == 1 else _merge01(B).t())
        T = Xf * Bt if n2 == 1 else Xf @ Bt                     # T[(n, j), (k, q)] = sum_l X[n,j,l] B_k[q,l]
        T = T.view(N, n1, r, m2).permute(0, 3, 2, 1).reshape(N * m2, r * n1)  # [(n, q), (k, j)]
        A_cat = (A.squeeze(0) if r == 1 else A.view(1, r * n1) if m1 == 1 else A.squeeze(2).t() if n1 == 1
                 else A.permute(1, 0, 2).reshape(m1, r * n1))  # [i, (k, j)]
        Y = F.linear(T, A_cat)                                  # Y[(n, q), i] = sum_{k,j} A_k[i,j] T
        Y = Y.view(N, m2, m1).transpose(1, 2)                   # (N, m1, m2); a view when m2 == 1
    else:  # "left"
        Xt = X.transpose(1, 2).reshape(N * n2, n1)              # [(n, l), j]; a view when n2 == 1
        U = F.linear(Xt, _merge01(A))                           # U[(n, l), (k, i)] = sum_j A_k[i,j] X[n,j,l]
        U = U.view(N, n2, r, m1).permute(0, 3, 2, 1).reshape(N * m1, r * n2)  # [(n, i), (k, l)]
        B_stack = (B.squeeze(2) if n2 == 1 else B.squeeze(0).t() if r == 1 else B.view(r * n2, 1) if m2 == 1
                   else B.permute(0, 2, 1).reshape(r * n2, m2))  # [(k, l), q]
        Y = U * B_stack if r * n2 == 1 else U @ B_stack         # Y[(n, i), q] = sum_{k,l} U B_k[q,l]
    return Y.reshape(*lead, m1 * m2)


# -----------------------------------------------------------------------------
# the layer

class Factorized(nn.Module):
    """What every factorised linear layer offers, so that the trainer, parameter counting, FLOP counting,
    export and decomposition work with any of them without knowing the concrete class:
        weight             the materialised (out, in) matrix: for export and analysis, never the forward
        macs_per_token()   the multiply-accumulates its forward actually runs per token
        new_parameters     the names of its own parameters that are new (not pretrained); the trainer gives
                           them their own learning-rate group and the freeze schedules act on them
        reset_parameters(std)  a random init of the given scale"""
    new_parameters = ()

    @property
    def weight(self):
        raise NotImplementedError

    def macs_per_token(self):
        raise NotImplementedError

    def reset_parameters(self, std=0.02):
        """A random init whose product has the dense init's scale (scratch models)."""
        raise NotImplementedError


class KroneckerLinear(Factorized):
    """A drop-in for nn.Linear whose weight is sum_k s_k * A[k] (x) B[k] (+ bias).

    Parameters: A (r, m1, n1), B (r, m2, n2), bias (m1*m2,) or None, scalars (r,) or None.
    impl: 'auto' (cost model), 'measured' (timed once per device, dtype, shape and token count: OrderTimer),
    'right', 'left' or 'materialized'. last_impl: the order the latest 'measured' forward ran.
    """
    new_parameters = ("A", "B", "scalars")  # the bias is copied from the dense layer: it is pretrained

    def __init__(self, shape, factors, bias=True, scalars=False, impl="auto"):
        super().__init__()
        if factors < 1:
            raise ConfigError(f"a Kronecker layer needs at least 1 factor, got {factors}")
        self.shape = shape
        self.factors = factors
        self.in_features = shape.in_features
        self.out_features = shape.out_features
        self.A = nn.Parameter(torch.empty(factors, shape.m1, shape.n1))
        self.B = nn.Parameter(torch.empty(factors, shape.m2, shape.n2))
        self.bias = nn.Parameter(torch.zeros(shape.out_features)) if bias else None
        self.scalars = nn.Parameter(torch.ones(factors)) if scalars else None
        self.impl = choose_impl(shape, factors) if impl == "auto" else impl
        self.last_impl = None
        self.reset_parameters()

    def reset_parameters(self, std=0.02):
        """Random init whose product has the dense init's scale: each entry of W is a sum of r
        products a*b, so std(a) = std(b) = (std^2 / r)^(1/4) gives std(W) = std."""
        s = (std ** 2 / self.factors) ** 0.25
        nn.init.normal_(self.A, std=s)
        nn.init.normal_(self.B, std=s)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        if self.scalars is not None:
            nn.init.ones_(self.scalars)

    @property
    def weight(self):
        """The materialised (out, in) weight: for export, tests and analysis, not the forward."""
        return kron_sum(self.A, self.B, self.scalars)

    def forward(self, x):
        A = self.A if self.scalars is None else self.A * self.scalars.view(-1, 1, 1)
        impl = self.impl
        if impl == "measured":  # compiled code keeps the order last measured eagerly (nothing is timed in tracing)
            if torch.compiler.is_compiling():
                impl = self.last_impl or choose_impl(self.shape, self.factors)
            else:
                impl = self.last_impl = TIMER.choose(self.shape, self.factors, x)
        if impl == "materialized" and not torch.is_grad_enabled():  # inference: build W once, not per call
            y = F.linear(x, self.materialized(A))
        else:
            y = kron_matmul(x, A, self.B, impl)
        return y if self.bias is None else y + self.bias.to(y.dtype)  # nn.Linear's output dtype under autocast

    def materialized(self, A):
        """W for inference, cached until a factor changes (the parameters' version counters say when)."""
        key = (self.A._version, self.B._version, None if self.scalars is None else self.scalars._version,
               self.A.data_ptr(), self.B.data_ptr(), A.dtype, A.device)
        if getattr(self, "_w_key", None) != key:
            self._w, self._w_key = kron_sum(A, self.B), key
        return self._w

    def macs_per_token(self):
        impl = self.impl if self.impl != "measured" else self.last_impl or choose_impl(self.shape, self.factors)
        if impl == "materialized":
            return self.in_features * self.out_features
        return factored_macs(self.shape, self.factors)[impl.removeprefix("fused_")]

    def extra_repr(self):
        return (f"{self.shape}, factors={self.factors}, bias={self.bias is not None}, "
                f"scalars={self.scalars is not None}, impl={self.impl}")


class KroneckerEmbedding(KroneckerLinear):
    """A token embedding whose (vocab_size, n_embd) table is sum_k s_k A[k] (x) B[k], used both ways:
    called with token ids (an integer tensor) it returns their rows, built from the factors without the
    table (row t = i*m2 + k is sum_r A_r[i, :] (x) B_r[k, :]); called with hidden states x (float) it is the
    tied lm_head, x W^T by the factored product. Tying is this one module in two places."""

    def forward(self, x):
        if x.dtype in (torch.int64, torch.int32):
            return self.lookup(x)
        return super().forward(x)

    def lookup(self, idx):
        """Rows of the table in the factors' dtype, as nn.Embedding returns its weight's dtype whatever autocast
        says (a bf16 embedding would make the residual stream and the rotary tables bf16)."""
        with torch.autocast(idx.device.type, enabled=False):
            return self.rows(idx)

    def rows(self, idx):
        s = self.shape
        A = self.A if self.scalars is None else self.A * self.scalars.view(-1, 1, 1)
        i, k = idx // s.m2, idx % s.m2
        if s.n1 == 1 and s.m2 == 1:  # low rank: the (N, r) coefficients of the token rows times B
            return A[:, i, 0].movedim(0, -1) @ self.B[:, 0, :]                    # (..., n2)
        rows = torch.einsum("r...j,r...l->...jl", A[:, i], self.B[:, k])         # (..., n1, n2)
        return rows.reshape(*idx.shape, s.n1 * s.n2)
