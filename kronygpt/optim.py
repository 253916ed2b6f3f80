"""
The optimiser side of training: AdamW over two parameter groups, the warmup + cosine learning-rate
multiplier, freeze/release schedules, and per-group statistics for the logs.

Parameter groups: 'new' holds every factorised layer's own new parameters (Kronecker factors and scalars,
Factorized.new_parameters); 'pretrained' holds everything else. Each has its own learning rate and weight
decay; both follow one warmup + cosine multiplier. Freezing sets requires_grad=False, so a frozen tensor
gets no gradient, AdamW skips it (no decay, no moment update, no new state) and it stays bitwise unchanged.
"""

import math

import torch


from .errors import ConfigError
from .sharding import local


# -----------------------------------------------------------------------------
# schedules

MAX_PHASES = 1_000_000


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
        times = int(reps) if reps.strip() else 1
        if times < 1:
            raise ValueError
    except ValueError:
        raise ConfigError(f"freeze_schedule {text!r} is not like 'freeze:100,release:100*3'") from None
    if len(phases) * times > MAX_PHASES:  # the list is built: '*1000000000' would fill the memory first
        raise ConfigError(f"freeze_schedule {text!r} has {len(phases) * times:,} phases, more than the "
                          f"{MAX_PHASES:,} allowed; repeat it fewer times (phases past the last step never run)")
    return phases * times


def is_frozen(schedule, it):
    """Whether iteration `it` falls in a 'freeze' phase."""
    start = 0
    for kind, n in schedule:
        if it < start + n:
            return kind == "freeze"
        start += n
    return False


def min_lr_ratio(cfg):
    """Where the cosine ends, as a share of each group's peak: min_lr / learning_rate, or, when the pretrained
    weights do not train (learning_rate 0), min_lr / new_learning_rate."""
    peak = cfg.learning_rate if cfg.learning_rate > 0 else cfg.new_learning_rate
    return cfg.min_lr / peak if peak > 0 else 1.0


def lr_multiplier(cfg, it):
    """Linear warmup to 1, then cosine down to min_lr/learning_rate, then flat."""
    if not cfg.decay_lr:
        return 1.0
    if it < cfg.warmup_iters:
        return (it + 1) / (cfg.warmup_iters + 1)
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    floor = min_lr_ratio(cfg)
    if it >= decay_iters:
        return floor
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (1 - floor)


# -----------------------------------------------------------------------------
# parameter groups

def param_groups(model, cfg):
    """AdamW groups: new/pretrained x decay/no-decay (2-D and larger tensors decay)."""
    lrs = {"pretrained": cfg.learning_rate,
           "new": cfg.new_learning_rate if cfg.new_learning_rate >= 0 else cfg.learning_rate}
    wds = {"pretrained": cfg.weight_decay,
           "new": cfg.new_weight_decay if cfg.new_weight_decay >= 0 else cfg.weight_decay}
    new, buckets = model.new_parameter_names(), {}
    for name, p in model.named_parameters():
        kind = "new" if name in new else "pretrained"
        buckets.setdefault((kind, p.dim() >= 2), []).append(p)
    return [dict(params=ps, name=f"{kind}{'' if decay else '_no_decay'}", kind=kind, base_lr=lrs[kind],
                 lr=lrs[kind], weight_decay=wds[kind] if decay else 0.0)
            for (kind, decay), ps in sorted(buckets.items())]


def make_optimizer(model, cfg, device_type):
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                             fused=device_type == "cuda")


def apply_settings(optimizer, model, cfg):
    """After loading a resumed optimizer's state: its groups take this run's learning rates, weight decays and
    betas (the command line wins, and the saved config says so). Returns what changed, as 'name old -> new'."""
    fresh = {g["name"]: g for g in param_groups(model, cfg)}
    changed = []
    for g in optimizer.param_groups:
        if g.get("name") not in fresh:
            continue
        want = dict(base_lr=fresh[g["name"]]["base_lr"], weight_decay=fresh[g["name"]]["weight_decay"],
                    betas=(cfg.beta1, cfg.beta2))
        for key, value in want.items():
            if g.get(key) != value:
                changed.append(f"{g['name']} {key} {g.get(key)} -> {value}")
                g[key] = value
    return changed


def rebuild_optimizer(old, model, cfg, device_type):
    """A new optimizer over the current parameters, keeping the state of those that survive."""
    new = make_optimizer(model, cfg, device_type)
    for group in new.param_groups:
        for p in group["params"]:
            if p in old.state:
                new.state[p] = old.state[p]
    return new


def set_frozen(model, group, frozen):
    """requires_grad=False on every parameter of `group` ('new' or 'pretrained') when frozen."""
    new = model.new_parameter_names()
    for name, p in model.named_parameters():
        if ("new" if name in new else "pretrained") == group:
            p.requires_grad_(not frozen)


def group_stats(optimizer, before, reduce=None):
    """Per-kind ('new', 'pretrained') gradient norm and update/weight norm ratio of the last step
    (one device sync for all of them). before: {id(param): its local values before the step}. reduce: sums the
    per-rank squares when parameters are sharded (sharding.all_sum)."""
    sums = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None and id(p) in before:
                old = before[id(p)]
                grad, now = local(p.grad).float(), local(p.detach()).float()
                sums.setdefault(group["kind"], []).append(torch.stack(
                    [grad.pow(2).sum(), (now - old).pow(2).sum(), old.pow(2).sum()]))
    stats = {}
    kinds = sorted(sums)
    totals = [torch.stack(sums[k]).sum(0) for k in kinds]
    if reduce is not None and totals:
        totals = list(reduce(torch.stack(totals)))
    for kind, t in zip(kinds, totals):
        g2, u2, w2 = t.tolist()
        if w2 > 0:
            stats[f"grad_norm_{kind}"] = math.sqrt(g2)
            stats[f"update_ratio_{kind}"] = math.sqrt(u2 / w2)
    return stats
