"""
Distillation pieces used by train_distillation.py: the teacher-student loss, layer-wise fitting of each
Kronecker MLP (or block) to its dense counterpart on real activations, and the order of progressive
one-block-at-a-time replacement (the replacement itself is surgery.replace_block).
"""

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .progress import Bar


# -----------------------------------------------------------------------------
# the end-to-end loss

def kl_at_temperature(student_logits, teacher_logits, T):
    """T^2 * KL(teacher || student) of the softened distributions, averaged over positions."""
    s = F.log_softmax(student_logits.float() / T, dim=-1)
    t = F.log_softmax(teacher_logits.float() / T, dim=-1)
    return (T * T) * F.kl_div(s.flatten(0, -2), t.flatten(0, -2), log_target=True, reduction="batchmean")


HIDDEN_LOSSES = ("mse", "relative")


def hidden_mse(student_hidden, teacher_hidden, kind="mse"):
    """Mean over blocks of the distance between block outputs (intermediate-layer distillation).

    kind 'mse': the plain mean squared error. 'relative': each token's squared error divided by the teacher's
    squared norm at that token, averaged over tokens, so that every block and every token weighs alike whatever
    its scale. The residual stream grows with depth, and models such as SmolLM2 carry a few tokens with
    activations hundreds of times the rest; their plain MSE is dominated by those (measured on SmolLM2-135M from a
    calibrated low-rank start: MSE 24-58 and a gradient norm of 12,770 at step 0), the relative one is a fraction
    of order one for every block."""
    if kind not in HIDDEN_LOSSES:
        raise ValueError(f"hidden loss must be one of {', '.join(HIDDEN_LOSSES)}, got {kind!r}")
    total = 0.0
    for s, t in zip(student_hidden, teacher_hidden, strict=True):
        s, t = s.float(), t.float()
        if kind == "mse":
            total = total + F.mse_loss(s, t)
        else:
            err = (s - t).pow(2).sum(-1)
            total = total + (err / t.pow(2).sum(-1).clamp_min(1e-12)).mean()
    return total / len(student_hidden)


def make_distill_loss(teacher, alpha, beta, temperature, hidden_weight, teacher_ctx, hidden_loss="mse"):
    """loss_fn for trainer.train: alpha*CE + beta*T^2*KL(teacher||student) + hidden_weight*hidden distance
    (hidden_mse of kind hidden_loss)."""

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
            mse = hidden_mse(s_hidden, t_hidden, hidden_loss)
            loss = loss + hidden_weight * mse
            metrics["hidden_mse"] = mse.detach()
        return loss, metrics

    return loss_fn


# -----------------------------------------------------------------------------
# layer-wise fitting

def changed_layers(student, teacher):
    """The blocks layer-wise fitting works on: those with factorised matrices, and every block when the student's
    MLPs are narrower than the teacher's (width pruning: each narrowed MLP fitted to the dense one). None when the
    depths differ (dropped blocks have no dense twin to fit to)."""
    s, t = student.config, teacher.config
    if s.n_layer != t.n_layer:
        return []
    plan = set(s.plan.layers)
    return [i for i in range(s.n_layer) if i in plan or s.block_width(i) != t.block_width(i)]


def fit_units(model, layers):
    """{layer: 'mlp' or 'block'}: what layer-wise fitting fits in each listed block of the student. A block
    whose only factorised matrices are in its MLP fits the MLP (token by token); one with factorised
    attention fits the whole block (attention needs whole sequences)."""
    attn = set(model.config.family.attn_matrices)
    return {i: "block" if attn & set(model.config.plan.layer_specs(i)) else "mlp" for i in layers}


class TeacherActivations:
    """acts[layer] -> (inputs, outputs) of that layer's unit of `model` (fit_units: 'mlp' or 'block') on the token
    batches, as CPU float tensors: (tokens, n_embd) for an MLP, (sequences, T, n_embd) for a block.

    Computed one layer at a time, on demand: the batches' hidden states wait at the input of the next block, and
    asking for a later layer runs the blocks in between (an earlier one starts again from the embedding). Memory
    holds those hidden states and one layer's activations, not every layer's: 131,072 fitting tokens of
    SmolLM2-135M took 18 GB as every layer's at once, about 0.9 GB this way. ctx: a context the forward passes
    run in (the teacher's autocast)."""

    def __init__(self, model, batches, units, device, ctx=contextlib.nullcontext):
        self.model, self.units, self.device, self.ctx = model, dict(units), device, ctx
        self.batches = list(batches)
        self.next_layer, self.hidden, self.rope = None, None, None  # hidden: the states at the input of next_layer
        self.cached = (None, None)  # (layer, its activations)

    def __contains__(self, layer):
        return layer in self.units

    def __getitem__(self, layer):
        if layer not in self.units:
            raise KeyError(layer)
        if self.cached[0] != layer:
            self.cached = (None, None)  # free the last layer's activations before computing the next
            self.cached = (layer, self._compute(layer))
        return self.cached[1]

    @torch.no_grad()
    def _compute(self, layer):
        was_training = self.model.training
        self.model.eval()
        try:
            with self.ctx():
                if self.next_layer is None or self.next_layer > layer:
                    embedded = [self.model.embed(x.to(self.device)) for x in self.batches]
                    self.hidden, self.rope = [h for h, _ in embedded], [r for _, r in embedded]
                    self.next_layer = 0
                blocks = self.model.transformer.h
                while self.next_layer < layer:
                    self._advance(blocks[self.next_layer])
                block, flat = blocks[layer], self.units[layer] == "mlp"
                xs, ys = [], []
                if flat:
                    def keep(module, inp, out):
                        xs.append(inp[0].detach().flatten(0, -2).float().cpu())
                        ys.append(out.detach().flatten(0, -2).float().cpu())
                    hook = block.mlp.register_forward_hook(keep)
                else:
                    xs = [h.float().cpu() for h in self.hidden]
                try:
                    self._advance(block, ys if not flat else None)
                finally:
                    if flat:
                        hook.remove()
        finally:
            self.model.train(was_training)
        return torch.cat(xs), torch.cat(ys)

    def _advance(self, block, outputs=None):
        self.hidden = [block(h, rope) for h, rope in zip(self.hidden, self.rope, strict=True)]
        self.next_layer += 1
        if outputs is not None:
            outputs.extend(h.float().cpu() for h in self.hidden)


def unit_forward(model, layer, kind):
    """The function fitting trains: the block's MLP on tokens, or the whole block on sequences."""
    block = model.transformer.h[layer]
    if kind == "mlp":
        return block.mlp, block.mlp

    def run(x):  # x: (sequences, T, n_embd)
        rope = None
        if hasattr(model, "rope_cos"):
            T = x.shape[1]
            rope = (model.rope_cos[:T].to(x.dtype), model.rope_sin[:T].to(x.dtype))
        return block(x, rope)
    return block, run


@torch.no_grad()
def unit_mse(module, fn, X, Y, device, batch=4096):
    """The mean squared error of fn(X) against Y with `module` in eval mode (no dropout: the guard that keeps or
    undoes a fit must compare like with like)."""
    was_training = module.training
    module.eval()
    total, step = 0.0, max(1, batch // (X.shape[1] if X.dim() == 3 else 1))
    for j in range(0, len(X), step):
        total += F.mse_loss(fn(X[j:j + step].to(device)), Y[j:j + step].to(device), reduction="sum").item()
    module.train(was_training)
    return total / Y.numel()


@dataclass(frozen=True)
class FitSettings:
    """How each unit is fitted: Adam steps, peak learning rate (cosine to 0 within the unit), tokens per step,
    and the device the fit runs on."""
    steps: int = 200
    lr: float = 1e-3
    batch: int = 1024
    device: object = "cpu"


def fit_mlp(module, acts, fit, seed=0, fn=None, bar=None):
    """Adam on the module's parameters to minimise ||fn(X) - Y||^2 (fn defaults to the module; acts = (X, Y))
    over random minibatches of fit.batch tokens (whole sequences for (sequences, T, n_embd) inputs), as
    `fit` (FitSettings) says; restores its mode. bar: a progress.Bar told of every step."""
    (X, Y), steps, lr, batch, device = acts, fit.steps, fit.lr, fit.batch, fit.device
    fn = fn or module
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    n = min(len(X), max(1, batch // (X.shape[1] if X.dim() == 3 else 1)))
    was_training = module.training
    module.train()
    for step in range(steps):
        idx = torch.randint(len(X), (n,), generator=g)
        loss = F.mse_loss(fn(X[idx].to(device)), Y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:  # cosine decay within the layer's budget
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.step()
        if bar is not None:
            bar.update()
    return module.train(was_training)


def fit_layers(student, acts, layers, fit, log=print, stop=None):
    """Fit each listed block's factorised unit (fit_units: its MLP, or the whole block when attention is
    factorised) to the dense unit's outputs on the teacher's own inputs. Returns rows {layer, unit,
    mse_before, mse_after, kept} measured on held-out activations. A unit whose held-out error the fit
    raised gets its starting weights back (kept='start', mse_after = mse_before): fitting never leaves a
    layer worse than its decomposition. A factorised embedding is not fitted here: end-to-end training
    adapts it. stop: a function asked after each layer; when it says True, the rows fitted so far are returned
    (an interrupted fit; each layer's fit is seeded by its index, so resuming gives the same result).
    acts: (fit activations, held-out activations), each indexed by layer (TeacherActivations); fit: FitSettings."""
    (fit_acts, heldout_acts), device = acts, fit.device
    rows, units = [], fit_units(student, layers)
    bar = Bar(len(layers) * fit.steps, "layer-wise fitting", unit="step")
    for i in layers:
        if stop is not None and stop():
            break
        module, fn = unit_forward(student, i, units[i])
        Xh, Yh = heldout_acts[i]
        before = unit_mse(module, fn, Xh, Yh, device)
        start = {k: v.detach().clone() for k, v in module.state_dict().items()}
        fit_mlp(module, fit_acts[i], fit, seed=i, fn=fn, bar=bar)
        fitted = unit_mse(module, fn, Xh, Yh, device)
        kept = "fitted" if fitted <= before else "start"
        if kept == "start":
            module.load_state_dict(start)
        after = min(before, fitted)
        rows.append(dict(layer=i, unit=units[i], mse_before=before, mse_after=after, mse_fitted=fitted, kept=kept))
        log(f"layer {i}: {'MLP' if units[i] == 'mlp' else 'block'} output MSE on held-out activations "
            f"{before:.6f} -> {fitted:.6f}" + ("" if kept == "fitted" else "; worse, so the start is kept"))
    bar.close()
    return rows


# -----------------------------------------------------------------------------
# progressive replacement

def progressive_order(n_layer, order):
    if order == "bottom_up":
        return list(range(n_layer))
    if order == "top_down":
        return list(range(n_layer - 1, -1, -1))
    raise ConfigError(f"progressive_order must be 'top_down' or 'bottom_up', got {order!r}")
