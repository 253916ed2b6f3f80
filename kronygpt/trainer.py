"""
The trainer shared by train.py and train_distillation.py: settings, the model to start from, parameter
groups and schedules, evaluation, and the loop. The loop is nanoGPT's, written as a few named steps over
one small state object:

    run = start_run(cfg, model, rt, tokenizer, ckpt)     # data, validation sets, optimizer, logger, resume
    while True:
        prepare_iteration(run, hooks)     # progressive replacement, freeze schedule, learning rate
        evaluate_and_save(run, hooks)     # every eval_interval: validation loss(es), last.pt, best.pt
        if run.done: break
        optimisation_step(run, loss_fn)   # gradient accumulation, clipping, one AdamW step, logging
        check_stop(run)                   # SIGTERM/SIGINT: save and raise Stopped; max_seconds: finish

Parameter groups, schedules and freezing live in optim.py.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from .checkpoint import (TrainingState, load_checkpoint, load_model, model_from_checkpoint, resolve_checkpoint_path,
                         rng_state, same_file, save_checkpoint, set_rng_state)
from .claims import Claim
from configurator import as_dict
from .data_utils import REPO, TokenData, batch_seed, check_data_fits, dataset_dir, open_dataset
from .errors import CheckpointError, ConfigError, Stopped, UserError
from .kronecker import IMPLS
from .sharding import all_sum, full, full_state, is_sharded, load_optimizer, local, same_steps, shard
from model import GPT, GPTConfig
from .optim import (apply_settings, group_stats, is_frozen, lr_multiplier, make_optimizer, parse_freeze_schedule,
                    rebuild_optimizer, set_frozen)
from .runtime import setup_runtime, teardown


@dataclass
class TrainConfig:
    # -- I/O
    out_dir: str = "out"            # checkpoints (last.pt, best.pt) and log.jsonl
    init_from: str = "scratch"      # 'scratch', 'resume' (out_dir/last.pt), a checkpoint, HF dir or hub name
    force: bool = False             # start a new run in an out_dir that holds one (its files are removed first)
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
    dataset: str = "shakespeare"    # data/<dataset>/ (or a path) with train.bin, val.bin, meta.json; or a mixture
                                    # 'a:0.5,b:0.5' (each sequence from one of them; validation on the first)
    gradient_accumulation_steps: int = 1  # micro-steps per iteration, summed over all DDP ranks
    batch_size: int = 8             # sequences per micro-step per rank
    block_size: int = 256           # tokens per training sequence (not the model's context, which a loaded model keeps)
    crop_context: bool = False      # a loaded model's context cut to block_size for good (GPT-2's learned positions
                                    # beyond it dropped; the export then says block_size)
    # -- model, for init_from='scratch' (other inits take the architecture of what they load)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    bias: bool = True
    kron_plan: str = ""             # a factorised scratch model's plan, e.g. '*: mlp=64x64*1' (kronygpt/plans.py)
    kron_scalars: bool = False      # learnable per-factor scalars
    dropout: float = 0.0            # applied to any init_from
    kron_impl: str = ""             # Kronecker layers' contraction order: auto, measured (timed), right, left,
                                    # materialized; '' keeps the model's
    # -- optimiser: AdamW, two parameter groups
    max_iters: int = 1000
    learning_rate: float = 6e-4     # peak learning rate of the 'pretrained' group
    new_learning_rate: float = -1.0 # peak learning rate of the 'new' group (Kronecker factors); <0: learning_rate
    min_lr: float = -1.0            # the cosine ends at min_lr / learning_rate of each group's peak; <0: a tenth of
                                    # learning_rate (6e-5 for the default 6e-4)
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
    compile_blocks: bool = False    # torch.compile each block on its own instead (regional: blocks of one structure
                                    # share a compilation, so a deep model compiles in a fraction of the time)
    fsdp: bool = False              # under torchrun: shard parameters, gradients and optimizer states over the
                                    # processes (FSDP2, one unit per block) instead of DDP's full replicas
    seed: int = 1337
    peak_tflops: float = 312.0      # for MFU, per device: peak (A100 bf16 = 312, H100/H200 dense bf16 ~ 990)

    def validate(self):
        parse_freeze_schedule(self.freeze_schedule)
        if self.freeze_group not in ("pretrained", "new"):
            raise ConfigError(f"freeze_group must be 'pretrained' or 'new', got {self.freeze_group!r}")
        for name in ("batch_size", "block_size", "eval_interval", "log_interval", "eval_tokens",
                     "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.min_lr < 0 and math.isfinite(self.min_lr):
            self.min_lr = self.learning_rate / 10  # resolved once: the run's config records the rate it used
        for name in ("max_iters", "warmup_iters", "lr_decay_iters", "max_seconds", "learning_rate", "min_lr",
                     "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not value >= 0 or value == float("inf"):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
        for name in ("new_learning_rate", "new_weight_decay"):  # negative: follow the pretrained group's
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be a finite number (negative: the same as the pretrained group's), "
                                  f"got {getattr(self, name)}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.fsdp and self.freeze_schedule:
            raise ConfigError("fsdp shards the parameters once; a freeze_schedule changes which train. Drop one of "
                              "them")
        if self.fsdp and self.dtype == "float16":
            raise ConfigError("fsdp runs in bfloat16 or float32 (float16's loss scaling is not sharded here); set "
                              "dtype=bfloat16")
        if not 0 <= self.beta1 < 1 or not 0 <= self.beta2 < 1:
            raise ConfigError(f"beta1 and beta2 must be in [0, 1), got {self.beta1} and {self.beta2}")
        if self.kron_impl and self.kron_impl not in IMPLS:
            raise ConfigError(f"kron_impl must be one of {', '.join(IMPLS)} (or empty: the model's), got "
                              f"{self.kron_impl!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.decay_lr and self.learning_rate > 0 and self.min_lr > self.learning_rate:
            raise ConfigError(f"min_lr {self.min_lr} is above learning_rate {self.learning_rate}; lower min_lr")
        if not self.out_dir.strip():
            raise ConfigError("out_dir is empty; name the directory for the run's checkpoints and log")
        if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            raise ConfigError(f"out_dir {self.out_dir} is a file; choose a directory name")
        if self.init_from == "resume" and not os.path.isfile(os.path.join(self.out_dir, "last.pt")):
            raise CheckpointError(f"init_from='resume' needs {self.out_dir}/last.pt; run without resume first "
                                  f"or fix out_dir")
        if self.init_from not in ("scratch", "resume") and not self.eval_only:
            src = resolve_checkpoint_path(self.init_from)
            if os.path.exists(src) and (same_file(self.out_dir, src) or
                                        (os.path.isfile(src) and same_file(self.out_dir, os.path.dirname(src) or "."))):
                raise ConfigError(f"out_dir {self.out_dir} holds the checkpoint init_from starts from, and training "
                                  f"would overwrite it; choose another out_dir (or init_from='resume' to continue)")


RUN_FILES = ("last.pt", "best.pt", "fitted.pt")  # the checkpoints a run writes into its out_dir


def run_files(out_dir):
    """The checkpoints in out_dir: a directory with any of them holds a run."""
    return [f for f in RUN_FILES if os.path.exists(os.path.join(out_dir, f))]


def set_aside_log(out_dir):
    """A new run in an out_dir whose log.jsonl belongs to an earlier run (one that saved no checkpoint, or one
    replaced with --force) keeps that log as log.<n>.jsonl instead of appending to it."""
    path = os.path.join(out_dir, "log.jsonl")
    if not os.path.exists(path):
        return None
    n = 1
    while os.path.exists(os.path.join(out_dir, f"log.{n}.jsonl")):
        n += 1
    os.replace(path, os.path.join(out_dir, f"log.{n}.jsonl"))
    return f"log.{n}.jsonl"


class RunLock(Claim):
    """out_dir/.lock holds the pid of the process writing there: a second run into the same out_dir is refused
    while that process lives; a lock left by a dead process (a SIGKILL) is taken over. Released on exit."""

    def __init__(self, out_dir):
        os.makedirs(out_dir, exist_ok=True)
        super().__init__(os.path.join(out_dir, ".lock"), f"out_dir {out_dir}")


def launch(cfg, fn):
    """fn(cfg, rt) as one run: the Runtime set up (DDP under torchrun), out_dir held for the length of the run
    (run_directory), the process group left after fn has returned. What train.py, train_distillation.py and
    compress.py's stages share."""
    rt = setup_runtime(cfg.device, cfg.dtype)
    try:
        with run_directory(cfg, rt):  # locked while the run writes; --force clears an old run first
            return fn(cfg, rt)
    finally:
        teardown(rt)  # after fn returned: its model is out of scope


@contextmanager
def run_directory(cfg, rt):
    """Hold out_dir for the length of a run: locked (RunLock) on rank 0, and with force (a new run over an old
    one) the old run's files removed first, so its log and checkpoints cannot mix with the new run's."""
    if not rt.master:
        yield
        return
    held = run_files(cfg.out_dir)
    if cfg.eval_only and (held or os.path.isfile(os.path.join(cfg.out_dir, "log.jsonl"))):
        raise ConfigError(f"out_dir {cfg.out_dir} holds a run, whose log an evaluation would write into (its curve "
                          f"would then be wrong); give --eval_only another out_dir")
    if cfg.init_from != "resume" and not cfg.eval_only and held and not cfg.force:
        raise ConfigError(f"out_dir {cfg.out_dir} already holds a run ({', '.join(held)}); continue it with "
                          f"--init_from=resume, choose another out_dir, or pass --force to start over there")
    lock = RunLock(cfg.out_dir)
    try:
        if cfg.init_from != "resume" and not cfg.eval_only:
            if cfg.force:
                for name in run_files(cfg.out_dir):
                    os.remove(os.path.join(cfg.out_dir, name))
            kept = set_aside_log(cfg.out_dir)
            if kept:
                print(f"{cfg.out_dir}/log.jsonl of an earlier run is kept as {kept}")
        yield
    finally:
        lock.release()


# -----------------------------------------------------------------------------
# the model to start from

def init_model(cfg, rt):
    """(model on rt.device in train mode, resume checkpoint or None, tokenizer spec) for cfg.init_from."""
    data = open_dataset(cfg.dataset)
    ckpt = None
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
    if cfg.init_from == "scratch":
        model = GPT(GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                              vocab_size=data.meta["vocab_size"], dropout=cfg.dropout, bias=cfg.bias,
                              kron_plan=cfg.kron_plan, kron_scalars=cfg.kron_scalars))
        model.tokenizer_name = data.meta["tokenizer"]
    elif cfg.init_from == "resume":
        ckpt = load_checkpoint(os.path.join(cfg.out_dir, "last.pt"))
        if ckpt.get("optimizer") is None:
            raise CheckpointError(f"{cfg.out_dir}/last.pt holds no optimizer state (a decomposition or export "
                                  f"checkpoint?); start from it with init_from=PATH instead of 'resume'")
        model = model_from_checkpoint(ckpt, dropout=cfg.dropout)
    else:
        model = load_model(cfg.init_from).set_dropout(cfg.dropout)
    if cfg.kron_impl:
        model.set_kron_impl(cfg.kron_impl)
    check_data_fits(data, model, cfg.dataset)
    if cfg.init_from != "scratch":
        adopt_architecture(cfg, model)
    if cfg.block_size > model.config.block_size:
        raise ConfigError(f"block_size {cfg.block_size} exceeds the model's context {model.config.block_size}; lower "
                          f"block_size")
    if cfg.crop_context:  # otherwise the windows are shorter than the context, which the model keeps
        model.crop_block_size(cfg.block_size)
    return model.to(rt.device).train(), ckpt, getattr(model, "tokenizer_name", data.meta["tokenizer"])


ARCHITECTURE = ("n_layer", "n_head", "n_embd", "bias", "kron_plan",
                "kron_scalars")  # what scratch models are built from


def adopt_architecture(cfg, model):
    """A model that was loaded brings its architecture: a field set to something else than both its default and
    the model's value is refused (it would be ignored), and the run's config records the model's values, so the
    config a checkpoint saves tells the truth."""
    defaults = type(cfg)()
    for name in ARCHITECTURE:
        actual, given = getattr(model.config, name), getattr(cfg, name)
        if name == "kron_plan" and given:  # plans compare as resolved, not as written
            try:
                given = GPTConfig.from_dict({**model.config.to_dict(), "kron_plan": given}).kron_plan
            except ConfigError:
                pass
        if given != getattr(defaults, name) and given != actual:
            raise ConfigError(f"{name}={given!r} was given, but the model from init_from={cfg.init_from!r} has "
                              f"{name}={actual!r}; architecture settings apply to init_from='scratch' only: drop it")
        setattr(cfg, name, actual)


# -----------------------------------------------------------------------------
# evaluation and logging

@torch.no_grad()
def evaluate(model, val, rt, batch_size):
    """Mean cross-entropy over the fixed validation windows; windows are split across ranks and the
    sums all-reduced, so the number is the same for any world size."""
    x_all, y_all = val
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=rt.device)
    mine = list(range(rt.rank, len(x_all), rt.world_size))
    # sharded parameters: every rank runs as many forwards as the busiest (an idle rank's count nothing)
    n = same_steps(len(mine), rt.device) if is_sharded(model) else len(mine)
    for i in range(0, n, batch_size):
        sel = mine[i:i + batch_size]
        x, y = x_all[sel or [0]].to(rt.device), y_all[sel or [0]].to(rt.device)
        with rt.ctx:
            _, loss = model(x, y)
        if sel:
            total[0] += loss.double() * y.numel()
            total[1] += y.numel()
    if rt.ddp:
        dist.all_reduce(total)
    model.train(was_training)
    return (total[0] / total[1]).item()


def extra_val_sets(cfg, model):
    """{'val_loss_<name>': fixed validation windows} of cfg.eval_datasets."""
    out = {}
    for name in filter(None, (n.strip() for n in cfg.eval_datasets.split(","))):
        data = TokenData(dataset_dir(name))
        check_data_fits(data, model, name)
        out[f"val_loss_{os.path.basename(name.rstrip('/'))}"] = data.val_windows(cfg.block_size, cfg.eval_tokens)
    return out


def git_hash():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
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
            try:
                import wandb  # lazily: optional dependency; honours WANDB_MODE=offline/disabled
            except ImportError:
                raise ConfigError("wandb_log=True but wandb is not installed; pip install wandb, or drop "
                                  "--wandb_log") from None
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
# the loop

class StopSignal:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the end of the iteration and stops."""

    def __init__(self):
        self.signum, self.previous = None, {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self.handle)

    def handle(self, signum, frame):
        self.signum = signum

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@dataclass
class Run:
    """Everything one training run carries from iteration to iteration."""
    cfg: object
    raw: object                  # the plain GPT (no DDP / compile wrapper): saved, evaluated, counted
    rt: object
    tokenizer: object
    data: object
    val: tuple
    extra_vals: dict
    optimizer: object
    scaler: object
    logger: object
    stop: object
    config: dict
    tokens_per_iter: int
    local_accum: int
    schedule: list
    model: object = None         # raw wrapped for the current freeze phase (DDP and/or compile)
    frozen: object = None        # the freeze phase the wrapper was built for
    iter_num: int = 0
    best_val: float = float("inf")
    train_seconds: float = 0.0
    val_loss: float = float("nan")
    last_eval: int = -1
    budget_done: bool = False
    done: bool = False
    losses: list = field(default_factory=list)


def start_run(cfg, model, rt, tokenizer, ckpt=None, start_seconds=0.0):
    """The Run: data, fixed validation sets, optimizer (resumed from ckpt), logger and the start record."""
    if cfg.gradient_accumulation_steps % rt.world_size:
        raise ConfigError(f"gradient_accumulation_steps {cfg.gradient_accumulation_steps} must be a multiple of "
                          f"the number of processes {rt.world_size}")
    if cfg.fsdp:
        if not rt.ddp:
            raise ConfigError("fsdp shards the model over the processes torchrun starts; launch with torchrun "
                              "--nproc_per_node=N (or drop fsdp)")
        if rt.dtype == "float16":
            raise ConfigError("fsdp runs in bfloat16 or float32; set dtype=bfloat16")
        shard(model, rt)  # before the optimizer, which then holds the shards
    data = open_dataset(cfg.dataset)
    if not cfg.eval_only:
        data.check("train")
    config = as_dict(cfg)
    run = Run(cfg=cfg, raw=model, rt=rt, tokenizer=tokenizer, data=data,
              val=data.val_windows(cfg.block_size, cfg.eval_tokens), extra_vals=extra_val_sets(cfg, model),
              optimizer=make_optimizer(model, cfg, rt.device_type),
              scaler=torch.amp.GradScaler(rt.device_type, enabled=rt.dtype == "float16"),
              logger=Logger(cfg, rt, config), stop=StopSignal(), config=config,
              tokens_per_iter=cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size,
              local_accum=cfg.gradient_accumulation_steps // rt.world_size,
              schedule=parse_freeze_schedule(cfg.freeze_schedule), train_seconds=start_seconds)
    counts = model.param_counts()
    run.logger.log(dict(type="start", config=config, model_args=model.config.to_dict(), params=counts, git=git_hash(),
                        torch=torch.__version__, world_size=rt.world_size, tokens_per_iter=run.tokens_per_iter,
                        val_tokens=run.val[1].numel()),
                   line=f"tokens per iteration {run.tokens_per_iter:,} | parameters {counts['total']:,} "
                        f"({counts['tying']}) | validation set {run.val[1].numel():,} tokens | git {git_hash()}")
    if rt.master and cfg.decay_lr and 0 < cfg.max_iters <= cfg.warmup_iters and not cfg.eval_only:
        print(f"note: warmup_iters {cfg.warmup_iters} >= max_iters {cfg.max_iters}: the learning rate rises to "
              f"{cfg.max_iters / (cfg.warmup_iters + 1):.0%} of its peak and never decays; lower --warmup_iters "
              f"(e.g. {max(1, cfg.max_iters // 10)})", flush=True)
    if ckpt is not None:
        if cfg.fsdp:
            load_optimizer(model, run.optimizer, ckpt["optimizer"])
        else:
            run.optimizer.load_state_dict(ckpt["optimizer"])
        changed = apply_settings(run.optimizer, model, cfg)
        run.iter_num, run.best_val = ckpt["iter_num"], ckpt["best_val_loss"] or float("inf")
        run.train_seconds = ckpt["extra"].get("train_seconds", 0.0)
        if ckpt["extra"].get("scaler") and run.scaler.is_enabled():  # fp16: the loss scale resumes where it was
            run.scaler.load_state_dict(ckpt["extra"]["scaler"])
        rngs = ckpt["rng"]
        if isinstance(rngs, list) and len(rngs) == rt.world_size:
            set_rng_state(rngs[rt.rank])
        run.logger.log(dict(type="resume", iter=run.iter_num, changed=changed),
                       line=f"resumed from {cfg.out_dir}/last.pt at iter {run.iter_num}"
                            + (f"; now with {', '.join(changed)}" if changed else ""))
    else:
        torch.manual_seed(cfg.seed + rt.rank)
    return run


def save(run, name, val_loss):
    """Write out_dir/name with everything needed to resume exactly (every rank's RNG state)."""
    rngs = [None] * run.rt.world_size
    if run.rt.ddp:
        dist.all_gather_object(rngs, rng_state())
    else:
        rngs = [rng_state()]
    state = optimizer_state = None
    if run.cfg.fsdp:  # every rank helps gather the full state; rank 0 writes it
        state, optimizer_state = full_state(run.raw, run.optimizer)
    if run.rt.master:
        training = TrainingState(optimizer=run.optimizer, iter_num=run.iter_num, best_val_loss=run.best_val,
                                 config=run.config, rng=rngs, state=state, optimizer_state=optimizer_state)
        save_checkpoint(os.path.join(run.cfg.out_dir, name), run.raw, tokenizer=run.tokenizer, training=training,
                        extra=dict(train_seconds=run.train_seconds, val_loss=val_loss,
                                   scaler=run.scaler.state_dict() if run.scaler.is_enabled() else None))


def link_best(out_dir):
    """best.pt := last.pt, by a hard link renamed into place (atomic, no second copy on disk)."""
    last, best = os.path.join(out_dir, "last.pt"), os.path.join(out_dir, "best.pt")
    tmp = best + f".tmp{os.getpid()}"
    try:
        os.link(last, tmp)
    except OSError:
        shutil.copyfile(last, tmp)
    os.replace(tmp, best)


def prepare_iteration(run, hooks):
    """Progressive replacement (hooks), the freeze phase (rewrapping the model when it changes), and the
    learning rate of this iteration."""
    cfg, raw = run.cfg, run.raw
    if hooks is not None and hooks.before_iter(run.iter_num, raw):
        run.optimizer = rebuild_optimizer(run.optimizer, raw, cfg, run.rt.device_type)
        run.frozen = None
    want = is_frozen(run.schedule, run.iter_num)
    if want != run.frozen:
        set_frozen(raw, cfg.freeze_group, want)
        if not any(p.requires_grad for p in raw.parameters()):
            raise ConfigError(f"freezing the '{cfg.freeze_group}' group leaves nothing to train "
                              f"(a dense model has no 'new' parameters); drop freeze_schedule")
        m = raw.compile_blocks() if cfg.compile_blocks else torch.compile(raw) if cfg.compile else raw
        if run.rt.ddp and not cfg.fsdp:
            m = DDP(m, device_ids=[run.rt.local_rank] if run.rt.device_type == "cuda" else None)
        run.frozen, run.model = want, m
    mult = lr_multiplier(cfg, run.iter_num)
    for g in run.optimizer.param_groups:
        g["lr"] = g["base_lr"] * mult


def evaluate_and_save(run, hooks):
    """At every eval_interval and at the end: validation loss(es), the eval record, last.pt (and best.pt
    when it improved). Sets run.done at the end of training (or after the one eval of eval_only)."""
    cfg, raw = run.cfg, run.raw
    at_end = run.iter_num >= cfg.max_iters or run.budget_done
    if (run.iter_num % cfg.eval_interval == 0 or at_end) and run.last_eval != run.iter_num:
        run.last_eval = run.iter_num
        run.val_loss = evaluate(raw, run.val, run.rt, cfg.batch_size)
        extra = {k: evaluate(raw, v, run.rt, cfg.batch_size) for k, v in run.extra_vals.items()}
        extra.update(hooks.eval_extra(raw, run.val, run.rt, cfg) if hooks else {})
        train_loss = sum(run.losses) / len(run.losses) if run.losses else float("nan")
        run.logger.log(dict(type="eval", iter=run.iter_num, val_loss=run.val_loss, train_loss=train_loss,
                            tokens=run.iter_num * run.tokens_per_iter, train_seconds=run.train_seconds, **extra),
                       line=f"step {run.iter_num}: val loss {run.val_loss:.4f}"
                            + (f", train loss {train_loss:.4f}" if run.losses else "")
                            + "".join(f", {k} {v:.4f}" if isinstance(v, float) else f", {k} {v}"
                                      for k, v in extra.items()))
        if cfg.eval_only:
            run.done = True
            return
        if not math.isfinite(run.val_loss):  # never write non-finite weights over the last good checkpoint
            kept = f"{cfg.out_dir}/last.pt" if os.path.isfile(os.path.join(cfg.out_dir, "last.pt")) else "nothing"
            raise UserError(f"the validation loss became {run.val_loss} at iter {run.iter_num}; stopped without "
                            f"saving, so {kept} is the last good checkpoint. Lower the learning rate or check the data")
        improved = run.val_loss < run.best_val
        run.best_val = min(run.best_val, run.val_loss)
        if run.iter_num > 0 and (improved or cfg.always_save_checkpoint):
            save(run, "last.pt", run.val_loss)
            if improved and run.rt.master:
                link_best(cfg.out_dir)
    run.done = run.done or at_end


def optimisation_step(run, loss_fn):
    """One iteration: gradient accumulation over micro-batches, clipping, one AdamW step, the log line.
    Loss and metrics are means over the iteration's micro-batches and ranks."""
    cfg, raw, rt = run.cfg, run.raw, run.rt
    raw.train()  # evaluation (ours or a hook's) may have left it in eval mode
    t0 = time.time()
    log_now = run.iter_num % cfg.log_interval == 0
    sums = {}
    for micro in range(run.local_accum):
        seed = batch_seed(cfg.seed, run.iter_num, micro * rt.world_size + rt.rank)
        x, y = run.data.get_batch("train", cfg.batch_size, cfg.block_size, seed)
        x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
        if cfg.fsdp:  # gradients are reduce-scattered on the last micro-batch only
            raw.set_requires_gradient_sync(micro == run.local_accum - 1)
        elif rt.ddp:
            run.model.require_backward_grad_sync = micro == run.local_accum - 1
        with rt.ctx:
            loss, metrics = loss_fn(run.model, x, y, run.iter_num)
        run.scaler.scale(loss / run.local_accum).backward()
        for k, v in {"loss": loss, **metrics}.items():
            sums[k] = sums.get(k, 0.0) + torch.as_tensor(v, device=rt.device).detach().float()
    run.scaler.unscale_(run.optimizer)
    trainable = [p for p in raw.parameters() if p.grad is not None]
    norm = full(torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip if cfg.grad_clip > 0 else float("inf")))
    if not torch.isfinite(norm) and not run.scaler.is_enabled():
        raise UserError(f"the gradient became {norm.item()} at iter {run.iter_num} (loss {loss.item()}); "
                        f"stopped without saving, so {cfg.out_dir}/last.pt is the last good checkpoint. "
                        f"Lower the learning rate or check the data")
    before = {id(p): local(p.detach()).float().clone() for p in trainable} if log_now else None
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    if rt.device_type == "cuda":
        torch.cuda.synchronize()
    dt = time.time() - t0
    run.train_seconds += dt

    keys = list(sums)
    means = torch.stack([sums[k] for k in keys]) / run.local_accum
    if rt.ddp:
        dist.all_reduce(means, op=dist.ReduceOp.AVG)
    means = dict(zip(keys, means.tolist(), strict=True))
    lossf = means.pop("loss")
    run.losses = (run.losses + [lossf])[-cfg.eval_interval:]
    if log_now:
        stats = group_stats(run.optimizer, before, all_sum if cfg.fsdp else None)
        lrs = {g["kind"]: g["lr"] for g in run.optimizer.param_groups}
        tok_s = run.tokens_per_iter / dt
        # MFU per device: this device's share of the tokens against one device's peak
        mfu = raw.estimate_mfu(run.tokens_per_iter / rt.world_size, cfg.block_size, dt, cfg.peak_tflops * 1e12)
        run.logger.log(dict(type="train", iter=run.iter_num, loss=lossf, lr=lrs.get("pretrained", 0.0),
                            lr_new=lrs.get("new", 0.0), dt_ms=dt * 1000, tok_s=tok_s, mfu=mfu,
                            grad_norm=norm.item(), frozen=bool(run.frozen), **stats, **means),
                       line=f"iter {run.iter_num}: loss {lossf:.4f}, lr {lrs.get('pretrained', lrs.get('new')):.2e}, "
                            f"time {dt * 1000:.0f}ms, {tok_s:,.0f} tok/s"
                            + (f", mfu {mfu * 100:.1f}%" if rt.device_type == "cuda" else "")
                            + (" [frozen]" if run.frozen else ""))
    run.iter_num += 1


def check_stop(run):
    """A signal (on any rank) saves last.pt and raises Stopped; max_seconds ends training at the next eval."""
    cfg = run.cfg
    flags = torch.tensor([float(run.stop.signum or 0),
                          float(cfg.max_seconds > 0 and run.train_seconds >= cfg.max_seconds)])
    if run.rt.ddp:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    signum, over_budget = int(flags[0].item()), bool(flags[1].item())
    if signum:
        save(run, "last.pt", float("nan"))
        run.logger.log(dict(type="stop", iter=run.iter_num, reason="signal", signal=signum),
                       line=f"stopped by a signal at iter {run.iter_num}; saved {cfg.out_dir}/last.pt "
                            f"(continue with init_from='resume')")
        raise Stopped(signum, f"stopped by signal {signum} at iter {run.iter_num}; {cfg.out_dir}/last.pt is saved; "
                              f"continue with --init_from=resume")
    run.budget_done = over_budget


def train(cfg, model, rt, loss_fn, tokenizer, ckpt=None, hooks=None, start_seconds=0.0):
    """Train `model` (a plain GPT on rt.device) and return the final validation loss.
    loss_fn(model, x, y, iter_num) -> (loss, {metric: scalar}); metrics are logged as micro-batch means.
    hooks (optional): before_iter(iter_num, model) -> bool (True: modules were replaced, rebuild the
    optimizer) and eval_extra(model, val, rt, cfg) -> dict of numbers for each eval record.
    start_seconds: work done before the loop (layer-wise fitting), counted as training time.
    A SIGTERM/SIGINT saves last.pt and raises errors.Stopped (scripts exit with 128 + the signal)."""
    run = start_run(cfg, model, rt, tokenizer, ckpt, start_seconds)
    try:
        while True:
            prepare_iteration(run, hooks)
            evaluate_and_save(run, hooks)
            if run.done:
                break
            optimisation_step(run, loss_fn)
            check_stop(run)
    finally:
        run.stop.restore()
    return run.val_loss
