"""
The training loop shared by train.py and train_distillation.py, and model initialisation from init_from.

train_loop(cfg, model, rt, loss_fn, tokenizer, ckpt, hooks) runs nanoGPT's loop: evaluate on the fixed
validation set every eval_interval iterations (writing last.pt, and best.pt when it improves), then
gradient accumulation over micro-batches, clipping, an AdamW step. SIGTERM/SIGINT and max_seconds save
last.pt and return.
  loss_fn(model, x, y, iter_num) -> (loss, {metric: scalar tensor or float}), logged at log_interval
  hooks (optional), an object with
    before_iter(iter_num, model) -> bool   may replace modules; True makes the loop rebuild the optimizer
    eval_extra(model, val, rt, cfg) -> dict   extra numbers for each eval line and record
"""

import math
import os
import signal
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoint import (CheckpointError, load_checkpoint, load_model, model_from_checkpoint, save_checkpoint,
                        set_rng_state, rng_state)
from configurator import UserError, as_dict
from data_utils import TokenData, batch_seed
from model import GPT, GPTConfig
from training import (Logger, data_dir, evaluate, extra_val_sets, git_hash, is_frozen, lr_multiplier,
                      make_optimizer, parse_freeze_schedule, set_frozen)


# -----------------------------------------------------------------------------
# model initialisation

def crop_block_size(model, block_size):
    """Use a shorter context than the model was made for (GPT-2: 1024 -> 256 for a CPU run)."""
    cfg = model.config
    if block_size > cfg.block_size:
        raise UserError(f"block_size {block_size} exceeds the model's {cfg.block_size}; lower block_size")
    if block_size == cfg.block_size:
        return model
    cfg.block_size = block_size
    if cfg.arch == "gpt2":
        model.transformer.wpe.weight = torch.nn.Parameter(model.transformer.wpe.weight[:block_size].detach().clone())
    else:
        model.rope_cos = model.rope_cos[:block_size]
        model.rope_sin = model.rope_sin[:block_size]
    return model


def init_model(cfg, rt):
    """(model on rt.device, resume checkpoint or None, tokenizer spec) for cfg.init_from."""
    meta = TokenData(data_dir(cfg)).meta
    ckpt = None
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
    if cfg.init_from == "scratch":
        model = GPT(GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                              vocab_size=meta["vocab_size"], dropout=cfg.dropout, bias=cfg.bias,
                              kron_factors=cfg.kron_factors, kron_shape=cfg.kron_shape, kron_scalars=cfg.kron_scalars))
        model.tokenizer_name = meta["tokenizer"]
    elif cfg.init_from == "resume":
        path = os.path.join(cfg.out_dir, "last.pt")
        if not os.path.isfile(path):
            raise CheckpointError(f"init_from='resume' needs {path}; run without resume first or fix out_dir")
        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt, dropout=cfg.dropout)
    else:
        model = load_model(cfg.init_from, dropout=cfg.dropout)
    if meta["vocab_size"] > model.config.vocab_size:
        raise UserError(f"dataset {cfg.dataset} has vocabulary {meta['vocab_size']} ({meta['tokenizer']}) but the "
                        f"model only {model.config.vocab_size}; prepare the data with the model's tokenizer")
    crop_block_size(model, cfg.block_size)
    return model.to(rt.device), ckpt, getattr(model, "tokenizer_name", meta["tokenizer"])


# -----------------------------------------------------------------------------
# the loop

class StopSignal:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the end of the iteration and returns."""

    def __init__(self):
        self.requested = False
        self.previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self.handle)

    def handle(self, signum, frame):
        self.requested = True

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def group_stats(optimizer, before):
    """Per-kind ('new', 'pretrained') gradient norm and update/weight norm ratio of the last step
    (one device sync for all of them)."""
    sums = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None and id(p) in before:
                old = before[id(p)]
                acc = sums.setdefault(group["kind"], [])
                acc.append(torch.stack([p.grad.float().pow(2).sum(), (p.detach().float() - old).pow(2).sum(),
                                        old.pow(2).sum()]))
    stats = {}
    for kind, parts in sums.items():
        g2, u2, w2 = torch.stack(parts).sum(0).tolist()
        if w2 > 0:
            stats[f"grad_norm_{kind}"] = math.sqrt(g2)
            stats[f"update_ratio_{kind}"] = math.sqrt(u2 / w2)
    return stats


def train_loop(cfg, model, rt, loss_fn, tokenizer, ckpt=None, hooks=None, start_seconds=0.0):
    """Train `model` (a plain GPT on rt.device). Returns the final validation loss. start_seconds counts
    work done before the loop (layer-wise fitting) towards train_seconds and max_seconds."""
    raw = model
    data = TokenData(data_dir(cfg))
    val = data.val_windows(cfg.block_size, cfg.eval_tokens)
    extra_vals = extra_val_sets(cfg, raw.config.vocab_size)
    if cfg.gradient_accumulation_steps % rt.world_size:
        raise UserError(f"gradient_accumulation_steps {cfg.gradient_accumulation_steps} must be a multiple of "
                        f"the number of processes {rt.world_size}")
    local_accum = cfg.gradient_accumulation_steps // rt.world_size
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    schedule = parse_freeze_schedule(cfg.freeze_schedule)
    config = as_dict(cfg)
    logger = Logger(cfg, rt, config)
    counts = raw.param_counts()
    logger.log(dict(type="start", config=config, model_args=raw.config.to_dict(), params=counts, git=git_hash(),
                    torch=torch.__version__, world_size=rt.world_size, tokens_per_iter=tokens_per_iter,
                    val_tokens=val[1].numel()),
               line=f"tokens per iteration {tokens_per_iter:,} | parameters {counts['total']:,} "
                    f"({counts['tying']}) | validation set {val[1].numel():,} tokens | git {git_hash()}")

    iter_num, best_val, train_seconds = 0, float("inf"), start_seconds
    optimizer = make_optimizer(raw, cfg, rt.device_type)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        iter_num, best_val = ckpt["iter_num"], ckpt["best_val_loss"] or float("inf")
        train_seconds = ckpt["extra"].get("train_seconds", 0.0)
        rngs = ckpt["rng"]
        if isinstance(rngs, list) and len(rngs) == rt.world_size:
            set_rng_state(rngs[rt.rank])
        logger.log(dict(type="resume", iter=iter_num), line=f"resumed from {cfg.out_dir}/last.pt at iter {iter_num}")
    else:
        torch.manual_seed(cfg.seed + rt.rank)
    scaler = torch.amp.GradScaler(rt.device_type, enabled=rt.ptdtype == torch.float16)

    def save(path_name, val_loss):
        rngs = [None] * rt.world_size
        if rt.ddp:
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if rt.master:
            extra = dict(train_seconds=train_seconds, val_loss=val_loss)
            save_checkpoint(os.path.join(cfg.out_dir, path_name), raw, tokenizer=tokenizer, optimizer=optimizer,
                            iter_num=iter_num, best_val_loss=best_val, config=config, rng=rngs, extra=extra)

    def wrap():
        m = torch.compile(raw) if cfg.compile else raw
        if rt.ddp:
            m = DDP(m, device_ids=[rt.local_rank] if rt.device_type == "cuda" else None)
        return m

    stop = StopSignal()
    frozen, model, last_eval, val_loss, budget_done = None, None, -1, float("nan"), False
    losses = []
    try:
        while True:
            if hooks is not None and hooks.before_iter(iter_num, raw):
                optimizer = rebuild_optimizer(optimizer, raw, cfg, rt)
                frozen = None
            want = is_frozen(schedule, iter_num)
            if want != frozen:
                set_frozen(raw, cfg.freeze_group, want)
                if not any(p.requires_grad for p in raw.parameters()):
                    raise UserError(f"freezing the '{cfg.freeze_group}' group leaves nothing to train "
                                    f"(a dense model has no 'new' parameters); drop freeze_schedule")
                frozen, model = want, wrap()
            mult = lr_multiplier(cfg, iter_num)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * mult

            at_end = iter_num >= cfg.max_iters or budget_done
            if (iter_num % cfg.eval_interval == 0 or at_end) and last_eval != iter_num:
                last_eval = iter_num
                val_loss = evaluate(raw, val, rt, cfg.batch_size)
                extra = {k: evaluate(raw, v, rt, cfg.batch_size) for k, v in extra_vals.items()}
                extra.update(hooks.eval_extra(raw, val, rt, cfg) if hooks else {})
                train_loss = sum(losses) / len(losses) if losses else float("nan")
                logger.log(dict(type="eval", iter=iter_num, val_loss=val_loss, train_loss=train_loss,
                                tokens=iter_num * tokens_per_iter, train_seconds=train_seconds, **extra),
                           line=f"step {iter_num}: val loss {val_loss:.4f}"
                                + (f", train loss {train_loss:.4f}" if losses else "")
                                + "".join(f", {k} {v:.4f}" if isinstance(v, float) else f", {k} {v}"
                                          for k, v in extra.items()))
                if cfg.eval_only:
                    break
                improved = val_loss < best_val
                best_val = min(best_val, val_loss)
                if iter_num > 0 and (improved or cfg.always_save_checkpoint):
                    save("last.pt", val_loss)
                    if improved and rt.master:
                        link_best(cfg.out_dir)
            if at_end:
                break

            # -- one optimisation step
            t0 = time.time()
            log_now = iter_num % cfg.log_interval == 0
            metrics, loss_sum = {}, 0.0
            for micro in range(local_accum):
                seed = batch_seed(cfg.seed, iter_num, micro * rt.world_size + rt.rank)
                x, y = data.get_batch("train", cfg.batch_size, cfg.block_size, seed)
                x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
                if rt.ddp:
                    model.require_backward_grad_sync = micro == local_accum - 1
                with rt.ctx:
                    loss, metrics = loss_fn(model, x, y, iter_num)
                scaler.scale(loss / local_accum).backward()
                loss_sum = loss_sum + loss.detach().float()
            scaler.unscale_(optimizer)
            trainable = [p for p in raw.parameters() if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            if not torch.isfinite(norm) and not scaler.is_enabled():
                raise UserError(f"the gradient became {norm.item()} at iter {iter_num} (loss {loss.item()}); "
                                f"stopped without saving, so {cfg.out_dir}/last.pt is the last good checkpoint. "
                                f"Lower the learning rate or check the data")
            before = {id(p): p.detach().float().clone() for p in trainable} if log_now else None
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if rt.device_type == "cuda":
                torch.cuda.synchronize()
            dt = time.time() - t0
            train_seconds += dt

            lossf = loss_sum / local_accum  # mean over this iteration's micro-batches (and ranks, below)
            if rt.ddp:
                dist.all_reduce(lossf, op=dist.ReduceOp.AVG)
            lossf = lossf.item()
            losses.append(lossf)
            if log_now:
                stats = group_stats(optimizer, before)
                lrs = {g["kind"]: g["lr"] for g in optimizer.param_groups}
                tok_s = tokens_per_iter / dt
                mfu = raw.estimate_mfu(tokens_per_iter, cfg.block_size, dt, cfg.peak_tflops * 1e12)
                logger.log(dict(type="train", iter=iter_num, loss=lossf, lr=lrs.get("pretrained", 0.0),
                                lr_new=lrs.get("new", 0.0), dt_ms=dt * 1000, tok_s=tok_s, mfu=mfu,
                                grad_norm=norm.item(), frozen=bool(frozen), **stats,
                                **{k: float(v) for k, v in metrics.items()}),
                           line=f"iter {iter_num}: loss {lossf:.4f}, lr {lrs.get('pretrained', lrs.get('new')):.2e}, "
                                f"time {dt * 1000:.0f}ms, {tok_s:,.0f} tok/s"
                                + (f", mfu {mfu * 100:.1f}%" if rt.device_type == "cuda" else "")
                                + (" [frozen]" if frozen else ""))
                losses = losses[-cfg.eval_interval:]
            iter_num += 1

            halt = torch.tensor([float(stop.requested or (cfg.max_seconds > 0 and train_seconds >= cfg.max_seconds))])
            if rt.ddp:
                dist.all_reduce(halt, op=dist.ReduceOp.MAX)
            if halt.item() and stop.requested:
                save("last.pt", float("nan"))
                logger.log(dict(type="stop", iter=iter_num, reason="signal"),
                           line=f"stopped by a signal at iter {iter_num}; saved {cfg.out_dir}/last.pt "
                                f"(continue with init_from='resume')")
                break
            budget_done = bool(halt.item())  # max_seconds: evaluate, save and stop at the loop's top
    finally:
        stop.restore()
    return val_loss


def link_best(out_dir):
    """best.pt := last.pt, by a hard link renamed into place (atomic, no second copy on disk)."""
    last, best = os.path.join(out_dir, "last.pt"), os.path.join(out_dir, "best.pt")
    tmp = best + f".tmp{os.getpid()}"
    try:
        os.link(last, tmp)
    except OSError:
        import shutil
        shutil.copyfile(last, tmp)
    os.replace(tmp, best)


def rebuild_optimizer(old, raw, cfg, rt):
    """A new optimizer over the current parameters, keeping the state of those that survive."""
    new = make_optimizer(raw, cfg, rt.device_type)
    for group in new.param_groups:
        for p in group["params"]:
            if p in old.state:
                new.state[p] = old.state[p]
    return new
