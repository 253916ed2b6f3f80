"""
Where and how a script runs: the device, the numeric precision (autocast), and DDP when launched by
torchrun. One place for what train, distil, sample, eval and bench all need.

    rt = setup_runtime("auto", "auto")    # cuda if available; bf16 autocast there, fp32 on the CPU
    with rt.ctx: logits, loss = model(x, y)
    teardown(rt)                          # leaves the DDP process group, if any
"""

import gc
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device):
    """'auto' -> 'cuda' when available, else 'cpu'; a CUDA device without CUDA is a ConfigError."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but CUDA is not available here; use device='cpu'")
    if not (device == "cpu" or device.startswith(("cuda", "mps"))):
        raise ConfigError(f"device {device!r} is not 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if device.startswith("mps") and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} was asked for but MPS is not available here; use device='cpu'")
    if device.startswith("cuda:"):
        index = device.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: this machine has CUDA devices 0..{torch.cuda.device_count() - 1}")
    return device


def resolve_dtype(dtype, device_type):
    """'auto' -> bfloat16 on CUDA (float16 where bf16 is unsupported), float32 elsewhere."""
    if dtype == "auto":
        if device_type != "cuda":
            return "float32"
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of 'auto', {', '.join(repr(d) for d in DTYPES)}")
    if dtype == "bfloat16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("dtype 'bfloat16' is not supported by this GPU; use 'float16' or 'auto'")
    return dtype


def autocast(device_type, dtype):
    """The mixed-precision context for a dtype name: a no-op for float32."""
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=DTYPES[dtype])


@dataclass
class Runtime:
    ddp: bool            # launched by torchrun
    rank: int
    local_rank: int
    world_size: int
    device: str          # 'cpu', 'cuda:0', ...
    device_type: str     # 'cpu' or 'cuda' (for autocast and synchronisation)
    dtype: str           # 'float32', 'bfloat16' or 'float16'
    ctx: object          # autocast(device_type, dtype)
    master: bool         # rank 0: logs and writes checkpoints

    @property
    def ptdtype(self):
        return DTYPES[self.dtype]


def return_large_frees_to_os(threshold=1 << 20):
    """Have glibc's malloc give every allocation of `threshold` bytes or more its own mapping, returned to the
    system when freed. By default the threshold rises with each large free (up to 32 MB), after which
    tensors below that size come from the heap and their freed space stays resident: loading GPT-2 medium
    tensor by tensor held 0.39 GiB more than its weights at the end. Memory-bound tools (kron_decomp) call
    this first; a no-op where the C library is not glibc."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD (malloc.h)
    except (OSError, AttributeError):
        return False


def setup_runtime(device="auto", dtype="auto"):
    """The Runtime for this process: DDP when launched by torchrun (NCCL on CUDA, gloo on the CPU)."""
    ddp = int(os.environ.get("RANK", -1)) != -1
    device = resolve_device(device)
    rank, local_rank, world = 0, 0, 1
    if ddp:
        rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    dtype = resolve_dtype(dtype, device_type)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(ddp, rank, local_rank, world, device, device_type, dtype, autocast(device_type, dtype), rank == 0)


def teardown(rt):
    """Leave the DDP process group (a no-op in a single process). Call it once the run's objects are out of
    scope: a sharded model's FSDP state lives in reference cycles that keep its last communication work, and
    when the interpreter's shutdown freed them instead, a gloo rank could abort at exit after finishing its work
    ('terminate called without an active exception', SIGABRT; about one sharded run in ten on the 2-core CPU).
    So the cycles are collected here, while the interpreter and the process group are alive."""
    if rt.ddp and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
