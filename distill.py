"""
Distillation pieces used by train_distillation.py: the teacher-student loss, layer-wise fitting of each
Kronecker MLP to its dense MLP on real activations, and progressive one-block-at-a-time replacement.
"""

import math

import torch
import torch.nn.functional as F

from decompose import replace_mlp
from errors import ConfigError


# -----------------------------------------------------------------------------
# the end-to-end loss

def kl_at_temperature(student_logits, teacher_logits, T):
    """T^2 * KL(teacher || student) of the softened distributions, averaged over positions."""
    s = F.log_softmax(student_logits.float() / T, dim=-1)
    t = F.log_softmax(teacher_logits.float() / T, dim=-1)
    return (T * T) * F.kl_div(s.flatten(0, -2), t.flatten(0, -2), log_target=True, reduction="batchmean")


def hidden_mse(student_hidden, teacher_hidden):
    """Mean over blocks of the MSE between block outputs (intermediate-layer distillation)."""
    return sum(F.mse_loss(s.float(), t.float()) for s, t in zip(student_hidden, teacher_hidden, strict=True)) / len(student_hidden)


def make_distill_loss(teacher, alpha, beta, temperature, hidden_weight, teacher_ctx):
    """loss_fn for train_loop: alpha*CE + beta*T^2*KL(teacher||student) + hidden_weight*hidden MSE."""

    def loss_fn(model, x, y, iter_num):
        t_hidden = [] if hidden_weight > 0 else None
        if beta > 0 or hidden_weight > 0:  # alpha-only (plain CE, e.g. after layer-wise fitting) needs no teacher
            with torch.no_grad(), teacher_ctx:
                t_logits, _ = teacher(x, all_logits=True, hidden=t_hidden)
        s_hidden = [] if hidden_weight > 0 else None
        logits, ce = model(x, y, hidden=s_hidden)
        metrics = {"ce": ce.detach()}
        loss = alpha * ce
        if beta > 0:
            kl = kl_at_temperature(logits, t_logits, temperature)
            loss = loss + beta * kl
            metrics["kl"] = kl.detach()
        if hidden_weight > 0:
            mse = hidden_mse(s_hidden, t_hidden)
            loss = loss + hidden_weight * mse
            metrics["hidden_mse"] = mse.detach()
        return loss, metrics

    return loss_fn


# -----------------------------------------------------------------------------
# layer-wise fitting

@torch.no_grad()
def collect_mlp_activations(model, batches, layers, device):
    """{layer: (inputs, outputs)} of the MLPs of `model` on the token batches, as (tokens, n_embd) CPU tensors."""
    acts = {i: ([], []) for i in layers}
    hooks = []
    for i in layers:
        def hook(module, inp, out, i=i):
            acts[i][0].append(inp[0].detach().flatten(0, -2).float().cpu())
            acts[i][1].append(out.detach().flatten(0, -2).float().cpu())
        hooks.append(model.transformer.h[i].mlp.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            model(x.to(device), all_logits=False)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {i: (torch.cat(a), torch.cat(b)) for i, (a, b) in acts.items()}


@torch.no_grad()
def mlp_mse(mlp, X, Y, device, batch=4096):
    total = 0.0
    for j in range(0, len(X), batch):
        total += F.mse_loss(mlp(X[j:j + batch].to(device)), Y[j:j + batch].to(device), reduction="sum").item()
    return total / Y.numel()


def fit_mlp(mlp, X, Y, steps, lr, batch, device, seed=0):
    """Adam on the MLP's parameters to minimise ||mlp(X) - Y||^2 over random token minibatches."""
    params = [p for p in mlp.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    was_training = mlp.training
    mlp.train()
    for step in range(steps):
        idx = torch.randint(len(X), (min(batch, len(X)),), generator=g)
        loss = F.mse_loss(mlp(X[idx].to(device)), Y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:  # cosine decay within the layer's budget
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.step()
    return mlp.train(was_training)


def fit_layers(student, fit_acts, heldout_acts, layers, steps, lr, batch, device, log=print):
    """Fit each listed Kronecker MLP of the student to its dense MLP's outputs on the teacher's own
    inputs. Returns rows {layer, mse_before, mse_after} measured on held-out activations."""
    rows = []
    for i in layers:
        mlp = student.transformer.h[i].mlp
        Xh, Yh = heldout_acts[i]
        before = mlp_mse(mlp, Xh, Yh, device)
        fit_mlp(mlp, *fit_acts[i], steps, lr, batch, device, seed=i)
        after = mlp_mse(mlp, Xh, Yh, device)
        rows.append(dict(layer=i, mse_before=before, mse_after=after))
        log(f"layer {i}: MLP output MSE on held-out activations {before:.6f} -> {after:.6f}")
    return rows


# -----------------------------------------------------------------------------
# progressive replacement

def progressive_order(n_layer, order):
    if order == "bottom_up":
        return list(range(n_layer))
    if order == "top_down":
        return list(range(n_layer - 1, -1, -1))
    raise ConfigError(f"progressive_order must be 'top_down' or 'bottom_up', got {order!r}")


def add_kron_layer(model, layer, init, prune_keep="even", prune_eps=0.0):
    """Make block `layer` Kronecker (config and modules), initialised from its dense weights."""
    cfg = model.config
    current = set(range(cfg.n_layer)) if cfg.kron_layers is None else set(cfg.kron_layers)
    current.add(layer)
    cfg.kron_layers = None if len(current) == cfg.n_layer else tuple(sorted(current))
    return replace_mlp(model, layer, init, prune_keep, prune_eps)
