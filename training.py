"""
The training machinery shared by train.py and train_distillation.py: settings, DDP, parameter groups,
learning-rate and freeze schedules, the fixed validation set, checkpoints, and the loop itself.

Parameter groups: 'new' holds the Kronecker factors and scalars (A, B, scalars); 'pretrained' holds
everything else. Each has its own learning rate and weight decay; both follow one warmup + cosine
multiplier. Freezing sets requires_grad=False, so a frozen tensor gets no gradient, AdamW skips it
(no decay, no moment update, no new state) and it stays bitwise unchanged.
"""

import json
import math
import os
import subprocess
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from configurator import ConfigError
from data_utils import REPO, TokenData

NEW_PARAM_SUFFIXES = (".A", ".B", ".scalars")


@dataclass
class TrainConfig:
    # -- I/O
    out_dir: str = "out"            # checkpoints (last.pt, best.pt) and log.jsonl
    init_from: str = "scratch"      # 'scratch', 'resume' (out_dir/last.pt), a checkpoint, HF dir or hub name
    eval_interval: int = 250        # evaluate and write last.pt every this many iterations
    log_interval: int = 10          # console / JSONL line every this many iterations
    eval_tokens: int = 131072       # size of the fixed validation set (first tokens of val.bin)
    eval_datasets: str = ""         # more prepared datasets (comma-separated) whose fixed validation sets are
                                    # evaluated at every eval and logged as val_loss_<name>; never trained on
    eval_only: bool = False         # print the validation loss of init_from and exit
    always_save_checkpoint: bool = True  # write last.pt at every eval, not only when val improves
    max_seconds: float = 0.0        # stop (and save) after this much training time; 0 = no limit
    wandb_log: bool = False         # wandb is optional and imported only when this is on
    wandb_project: str = "kronygpt"
    wandb_run_name: str = "run"
    # -- data
    dataset: str = "shakespeare"    # data/<dataset>/ (or a path) with train.bin, val.bin, meta.pkl
    gradient_accumulation_steps: int = 1  # micro-steps per iteration, summed over all DDP ranks
    batch_size: int = 8             # sequences per micro-step per rank
    block_size: int = 256           # tokens per sequence
    # -- model, for init_from='scratch' (other inits take the architecture of what they load)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    bias: bool = True
    kron_factors: int = 0           # >0: a scratch model with Kronecker MLPs of this many factors
    kron_shape: tuple = ()          # (m1, n1) of c_fc's first factor
    kron_scalars: bool = False
    dropout: float = 0.0            # applied to any init_from
    # -- optimiser: AdamW, two parameter groups
    max_iters: int = 1000
    learning_rate: float = 6e-4     # peak learning rate of the 'pretrained' group
    new_learning_rate: float = -1.0 # peak learning rate of the 'new' group (Kronecker factors); <0: learning_rate
    min_lr: float = 6e-5            # the cosine ends at min_lr / learning_rate of each group's peak
    weight_decay: float = 0.1       # 'pretrained' group (2-D+ tensors only; biases and norms never decay)
    new_weight_decay: float = -1.0  # 'new' group; <0: weight_decay
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0          # clip the global gradient norm; 0 = off
    decay_lr: bool = True           # warmup + cosine; False = constant
    warmup_iters: int = 100
    lr_decay_iters: int = 0         # 0 = max_iters
    # -- freezing: phases 'freeze:N' / 'release:N', comma-separated, '*K' repeats the list K times;
    #    after the last phase everything trains. e.g. 'freeze:100,release:100*3'
    freeze_schedule: str = ""
    freeze_group: str = "pretrained"  # which group a 'freeze' phase freezes: 'pretrained' or 'new'
    # -- system
    device: str = "auto"            # 'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...
    dtype: str = "auto"             # 'auto': bfloat16 on CUDA if supported, else float16; float32 on CPU
    compile: bool = False           # torch.compile the model (checkpoints never carry its prefix)
    seed: int = 1337
    peak_tflops: float = 312.0      # for MFU: accelerator peak (A100 bf16 = 312, H100/H200 dense bf16 ~ 990)

    def validate(self):
        parse_freeze_schedule(self.freeze_schedule)
        if self.freeze_group not in ("pretrained", "new"):
            raise ConfigError(f"freeze_group must be 'pretrained' or 'new', got {self.freeze_group!r}")
        if self.max_iters < 0 or self.batch_size < 1 or self.block_size < 1 or self.eval_interval < 1:
            raise ConfigError("max_iters must be >= 0 and batch_size, block_size, eval_interval >= 1")
        if self.gradient_accumulation_steps < 1:
            raise ConfigError("gradient_accumulation_steps must be at least 1")


# -----------------------------------------------------------------------------
# schedules

def parse_freeze_schedule(text):
    """'freeze:100,release:50*3' -> [('freeze', 100), ('release', 50)] * 3."""
    if not text.strip():
        return []
    body, _, reps = text.partition("*")
    try:
        phases = []
        for part in body.split(","):
            kind, n = part.strip().split(":")
            if kind.strip() not in ("freeze", "release") or int(n) < 0:
                raise ValueError
            phases.append((kind.strip(), int(n)))
        return phases * (int(reps) if reps.strip() else 1)
    except ValueError:
        raise ConfigError(f"freeze_schedule {text!r} is not like 'freeze:100,release:100*3'") from None


def is_frozen(schedule, it):
    """Whether iteration `it` falls in a 'freeze' phase."""
    start = 0
    for kind, n in schedule:
        if it < start + n:
            return kind == "freeze"
        start += n
    return False


def lr_multiplier(cfg, it):
    """Linear warmup to 1, then cosine down to min_lr/learning_rate, then flat."""
    if not cfg.decay_lr:
        return 1.0
    if it < cfg.warmup_iters:
        return (it + 1) / (cfg.warmup_iters + 1)
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    floor = cfg.min_lr / cfg.learning_rate
    if it >= decay_iters:
        return floor
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (1 - floor)


# -----------------------------------------------------------------------------
# setup

@dataclass
class Runtime:
    ddp: bool
    rank: int
    local_rank: int
    world_size: int
    device: str
    device_type: str
    ptdtype: torch.dtype
    ctx: object
    master: bool


def setup_runtime(cfg):
    """DDP when launched by torchrun (NCCL on CUDA, gloo on CPU), the device, and the autocast context."""
    ddp = int(os.environ.get("RANK", -1)) != -1
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    rank, local_rank, world = 0, 0, 1
    if ddp:
        rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if device_type == "cuda" else "float32"
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    ctx = nullcontext() if dtype == "float32" else torch.autocast(device_type=device_type, dtype=ptdtype)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(ddp, rank, local_rank, world, device, device_type, ptdtype, ctx, rank == 0)


def data_dir(cfg, dataset=None):
    """The directory of a prepared dataset: a path, or a name under data/ (cfg.dataset by default)."""
    dataset = dataset or cfg.dataset
    return dataset if os.path.isdir(dataset) else os.path.join(REPO, "data", dataset)


def extra_val_sets(cfg, vocab_size):
    """{'val_loss_<name>': fixed validation windows} of cfg.eval_datasets."""
    out = {}
    for name in filter(None, (n.strip() for n in cfg.eval_datasets.split(","))):
        data = TokenData(data_dir(cfg, name))
        if data.meta["vocab_size"] > vocab_size:
            raise ConfigError(f"eval_datasets {name} has vocabulary {data.meta['vocab_size']} but the model only "
                              f"{vocab_size}; prepare it with the model's tokenizer")
        out[f"val_loss_{os.path.basename(name.rstrip('/'))}"] = data.val_windows(cfg.block_size, cfg.eval_tokens)
    return out


def is_new_param(name):
    return name.endswith(NEW_PARAM_SUFFIXES)


def param_groups(model, cfg):
    """AdamW groups: new/pretrained x decay/no-decay (2-D and larger tensors decay)."""
    lrs = {"pretrained": cfg.learning_rate,
           "new": cfg.new_learning_rate if cfg.new_learning_rate >= 0 else cfg.learning_rate}
    wds = {"pretrained": cfg.weight_decay,
           "new": cfg.new_weight_decay if cfg.new_weight_decay >= 0 else cfg.weight_decay}
    buckets = {}
    for name, p in model.named_parameters():
        kind = "new" if is_new_param(name) else "pretrained"
        decay = p.dim() >= 2
        buckets.setdefault((kind, decay), []).append(p)
    return [dict(params=ps, name=f"{kind}{'' if decay else '_no_decay'}", kind=kind, base_lr=lrs[kind],
                 lr=lrs[kind], weight_decay=wds[kind] if decay else 0.0)
            for (kind, decay), ps in sorted(buckets.items())]


def make_optimizer(model, cfg, device_type):
    fused = device_type == "cuda"
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                             fused=fused)


def set_frozen(model, group, frozen):
    """requires_grad=False on every parameter of `group` ('new' or 'pretrained') when frozen."""
    for name, p in model.named_parameters():
        if ("new" if is_new_param(name) else "pretrained") == group:
            p.requires_grad_(not frozen)


def git_hash():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except Exception:
        return None


class Logger:
    """Console lines on rank 0, one JSON object per line in out_dir/log.jsonl, and wandb if asked."""

    def __init__(self, cfg, rt, config_dict):
        self.master, self.wandb = rt.master, None
        self.path = os.path.join(cfg.out_dir, "log.jsonl")
        if not self.master:
            return
        os.makedirs(cfg.out_dir, exist_ok=True)
        if cfg.wandb_log:
            import wandb  # lazily: optional dependency; honours WANDB_MODE=offline/disabled
            self.wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=config_dict)

    def log(self, record, line=None):
        if not self.master:
            return
        if line:
            print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record.get("iter"))


# -----------------------------------------------------------------------------
# evaluation

@torch.no_grad()
def evaluate(model, val, rt, batch_size):
    """Mean cross-entropy over the fixed validation windows; windows are split across ranks and the
    sums all-reduced, so the number is the same for any world size."""
    x_all, y_all = val
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=rt.device)
    mine = list(range(rt.rank, len(x_all), rt.world_size))
    for i in range(0, len(mine), batch_size):
        sel = mine[i:i + batch_size]
        x, y = x_all[sel].to(rt.device), y_all[sel].to(rt.device)
        with rt.ctx:
            _, loss = model(x, y)
        total[0] += loss.double() * y.numel()
        total[1] += y.numel()
    if rt.ddp:
        dist.all_reduce(total)
    model.train(was_training)
    return (total[0] / total[1]).item()
