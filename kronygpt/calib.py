"""
Calibration: the second moment C = E[x x^T] of the inputs of every matrix to be decomposed, collected by
running the dense model over real training tokens. What a compressed layer must preserve is its output on
such inputs, E||(W - W_hat) x||^2 = ||(W - W_hat) L||_F^2 with C = L L^T, not its weights.

The model is run block by block over the calibration tokens, so that `decompose.py` can replace a block's
matrices between two blocks: in the plain mode every block sees the dense model's hidden states; in the
sequential mode (GPTQ-style) block l sees the states produced by blocks < l already compressed, and a
block's down matrices see the outputs of its already-compressed up matrices.
"""

import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checkpoint import atomic_save
from .data_utils import batch_seed
from .errors import UserError
from .plans import EMBED
from .progress import progress

# the statistics of the embedding as a planned matrix, (EMBED, 'wte'): the input moment of the lm_head tied to it
# and the diagonal of its output (the logits') gradient moment
HEAD = (EMBED, "wte")
# the next tokens whose loss the output gradients are taken of: 'data', the calibration text's own (the empirical
# Fisher: what predicting that text needs); 'model', drawn from the dense model's next-token distribution (the
# Fisher proper: the curvature of KL(dense || compressed), what keeping the model's own predictions needs)
FISHER_LABELS = ("data", "model")


@dataclass
class Stats:
    """The calibration statistics a plan is chosen from, each None when absent: moments {(layer, name): C},
    grads {(layer, name): G}, or instead of moments the allocator's curves and Kronecker candidates already
    computed (streaming.streamed_curves); cache: a WhiteningCache shared with the decomposition."""
    moments: dict = None
    grads: dict = None
    curves: dict = None
    kron_points: dict = None
    cache: object = None


def gram(x):
    """sum over rows of x x^T for x (..., d): a float32 GEMM accumulated in float64, also under a bfloat16
    calibration forward (autocast would otherwise run it in bfloat16 and lose the small eigenvalues)."""
    flat = x.detach().reshape(-1, x.shape[-1]).float()
    with torch.autocast(flat.device.type, enabled=False):
        return (flat.t() @ flat).double()


class MomentHooks:
    """Forward pre-hooks that accumulate sum x x^T (float64) and the token count of modules' inputs.
    Modules fed the same tensor in one forward (gate_proj and up_proj) share one computation."""

    def __init__(self, modules):
        self.sums = {name: None for name in modules}
        self.count = {name: 0 for name in modules}
        self._last = (None, None)  # (input tensor, its x^T x) of the most recent hook call
        self.handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name):
        def hook(module, args):
            x = args[0]
            if self._last[0] is not x:
                self._last = (x, gram(x))
            g = self._last[1]
            self.sums[name] = g.clone() if self.sums[name] is None else self.sums[name].add_(g)
            self.count[name] += x.numel() // x.shape[-1]
        return hook

    def moments(self):
        """{name: E[x x^T]} (float64, CPU) of every module that saw at least one token."""
        self._last = (None, None)
        return {n: (s / self.count[n]).cpu() for n, s in self.sums.items() if s is not None}

    def remove(self):
        for h in self.handles:
            h.remove()


class BlockRunner:
    """The calibration tokens' hidden states at the input of one block at a time.

    runner = BlockRunner(model, batches)       # embeds the batches: the input of block 0
    C = runner.moments(layer, {name: module})   # E[x x^T] of those modules' inputs inside block `layer`
    runner.advance(layer)                       # run block `layer` (as it is now) to get block layer+1's input
    """

    def __init__(self, model, batches, device="cpu"):
        if not batches:
            raise UserError("calibration needs at least one batch of tokens; raise --calib_tokens")
        self.model, self.device = model, device
        with torch.no_grad():
            embedded = [model.embed(x.to(device)) for x in batches]
        self.hidden = [x for x, _ in embedded]
        self.rope = [r for _, r in embedded]
        self.tokens = sum(x.numel() for x in batches)

    @torch.no_grad()
    def moments(self, layer, modules):
        """E[x x^T] of the inputs of `modules` (named sub-modules of block `layer`) on every calibration token."""
        hooks = MomentHooks(modules)
        try:
            block = self.model.transformer.h[layer]
            for x, rope in zip(self.hidden, self.rope, strict=True):
                block(x, rope)
        finally:
            hooks.remove()
        return hooks.moments()

    @torch.no_grad()
    def head_moment(self):
        """E[x x^T] of the lm_head's input, ln_f of the stored hidden states (call after the last block)."""
        total, n = None, 0
        for x in self.hidden:
            g = gram(self.model.transformer.ln_f(x))
            total = g if total is None else total.add_(g)
            n += x.numel() // x.shape[-1]
        return (total / n).cpu()

    @torch.no_grad()
    def advance(self, layer):
        """Replace the stored hidden states by block `layer`'s outputs."""
        block = self.model.transformer.h[layer]
        self.hidden = [block(x, rope) for x, rope in zip(self.hidden, self.rope, strict=True)]


class SpilledMoments(Mapping):
    """Second moments accumulated in files, one per name, and read back one at a time: {name: E[g g^T]} for
    models whose moments together would not fit in memory (GPT-2 XL's output-gradient moments are about
    25 GB in float64). add(name, gram, n) adds a batch's sum; m[name] is the mean, float64 on the CPU."""

    def __init__(self, directory):
        self.dir, self.count = directory, {}
        os.makedirs(directory, exist_ok=True)

    def _path(self, name):
        return os.path.join(self.dir, hashlib.blake2b(str(name).encode(), digest_size=8).hexdigest() + ".pt")

    def add(self, name, gram, n):
        path = self._path(name)
        if name in self.count:
            gram = torch.load(path, weights_only=True).add_(gram)
        torch.save(gram.cpu(), path)
        self.count[name] = self.count.get(name, 0) + n

    def __getitem__(self, name):
        if name not in self.count:
            raise KeyError(name)
        return torch.load(self._path(name), weights_only=True) / self.count[name]

    def __iter__(self):
        return iter(self.count)

    def __len__(self):
        return len(self.count)


class Moments:
    """Second moments accumulated in memory: add(name, gram, n) adds a batch's sum, m[name] is the mean."""

    def __init__(self):
        self.sums, self.count = {}, {}

    def add(self, name, gram, n):
        self.sums[name] = gram if name not in self.sums else self.sums[name].add_(gram)
        self.count[name] = self.count.get(name, 0) + n

    def means(self):
        return {k: (v / self.count[k]).cpu() for k, v in self.sums.items()}


class GradientHooks:
    """Forward hooks on modules that add E[g g^T] of the loss gradient g at each module's output to `store`
    (a Moments or a SpilledMoments) as the backward pass reaches it; for the names in `diagonal` only the
    diagonal E[g * g] is kept."""

    def __init__(self, modules, store, diagonal=()):
        self.handles = [m.register_forward_hook(self._hook(name, store, name in diagonal))
                        for name, m in modules.items()]

    @staticmethod
    def _hook(name, store, diag):
        def hook(module, args, out):
            def grad_hook(g):
                flat = g.detach().reshape(-1, g.shape[-1]).float()
                store.add(name, flat.pow(2).sum(0).double() if diag else gram(flat), flat.shape[0])
            out.register_hook(grad_hook)
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def output_gradient_moments(model, batches, layers, spill=None, head_tokens=512, labels="data", seed=0):
    """{(layer, name): E[g g^T]} (float64, CPU) over every token, where g is the gradient of the summed
    next-token loss with respect to the output of each factorisable matrix of the blocks `layers`, and under
    HEAD the diagonal of the logits' (a vocabulary-sized square would not fit). It is the empirical Fisher of
    the matrix's output, the output-side factor of a K-FAC approximation: the loss increase from perturbing
    the output by d is about d^T G d / 2. batches: token sequences (B, T); the first T-1 tokens are the
    input and the last T-1 the targets. labels: 'data' takes the targets as they are; 'model' draws each
    target from the model's own next-token distribution instead (one draw per token, a generator seeded with
    `seed`), so that E[g g^T] is the Fisher of the model's predictive distribution (FISHER_LABELS).

    The backward pass runs one block at a time (activation checkpointing at every block): a forward pass
    without autograd keeps each block's input, the loss's gradient at the last block's output comes from the
    head, and each block, top first, is recomputed and back-propagated alone. Memory holds the blocks' inputs
    and one block's activations, never the whole model's, and no weight gradient is formed; the logits are
    formed for head_tokens tokens at a time (a 2,048-token batch of SmolLM2's would take 0.4 GB). spill: a directory
    where each moment is accumulated as it is computed (a SpilledMoments is returned, read back one at a time)
    instead of memory."""
    if labels not in FISHER_LABELS:
        raise UserError(f"fisher labels must be one of {', '.join(FISHER_LABELS)}, got {labels!r}")
    store = SpilledMoments(spill) if spill else Moments()
    n_layer, device = model.config.n_layer, next(model.parameters()).device
    draw = torch.Generator(device=device).manual_seed(seed) if labels == "model" else None
    was_training, frozen = model.training, [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in frozen:
        p.requires_grad_(False)
    try:
        states, ropes, grads, targets = [], [], [], []
        with torch.no_grad():  # every block's input, per batch
            for x in progress(batches, "output gradients: forward", unit="batch"):
                x = x.to(device)
                h, rope = model.embed(x[:, :-1].contiguous())
                seq = [h]
                for block in model.transformer.h:
                    seq.append(block(seq[-1], rope))
                states.append(seq)
                ropes.append(rope)
                targets.append(x[:, 1:].contiguous())
        rows = max(1, head_tokens // targets[0].shape[1])  # sequences whose logits are formed at once
        hooks = GradientHooks({HEAD: model.lm_head}, store, diagonal=(HEAD,))
        try:
            with torch.enable_grad():
                for seq, y in zip(states, targets, strict=True):
                    h, g = seq.pop(), []
                    for hc, yc in zip(h.split(rows), y.split(rows), strict=True):  # a vocabulary-wide slice at a time
                        hc = hc.requires_grad_()
                        logits = model.lm_head(model.transformer.ln_f(hc)).float().view(-1, model.config.vocab_size)
                        if draw is not None:
                            yc = torch.multinomial(F.softmax(logits.detach(), dim=-1), 1, generator=draw)
                        loss = F.cross_entropy(logits, yc.reshape(-1), reduction="sum")
                        g.append(torch.autograd.grad(loss, hc)[0])
                    grads.append(torch.cat(g))
        finally:
            hooks.remove()
        for layer in progress(list(reversed(range(min(layers, default=0), n_layer))), "output gradients: backward",
                              unit="block"):
            block = model.transformer.h[layer]
            names = model.config.family.block_matrices if layer in layers else ()
            hooks = GradientHooks({(layer, n): block.matrix(n) for n in names}, store)
            try:
                with torch.enable_grad():
                    for i, (seq, rope) in enumerate(zip(states, ropes, strict=True)):
                        h = seq.pop().requires_grad_()
                        grads[i] = torch.autograd.grad(block(h, rope), h, grads[i])[0]
            finally:
                hooks.remove()
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    return store if spill else store.means()


def calibration_batches(data, n_tokens, seq_len, batch_size=8, seed=0):
    """Batches of training sequences (int64, (B, seq_len)) totalling n_tokens, drawn from a TokenData with
    a seed disjoint from training's batch seeds."""
    n_seq = max(1, n_tokens // seq_len)
    batches = []
    for k, start in enumerate(range(0, n_seq, batch_size)):
        b = min(batch_size, n_seq - start)
        batches.append(data.get_batch("train", b, seq_len, batch_seed(seed, 2 ** 41, k))[0])
    return batches


def collect_moments(dense, batches, layers):
    """{(layer, name): E[x x^T]} of every factorisable matrix of `layers` in the dense model, and of the
    lm_head's input under HEAD (one pass)."""
    runner = BlockRunner(dense, batches, next(dense.parameters()).device)
    out = {}
    for b in progress(range(dense.config.n_layer), "calibration: input moments", unit="block"):
        if b in layers:
            block = dense.transformer.h[b]
            names = dense.config.family.block_matrices
            out.update({(b, n): C for n, C in runner.moments(b, {n: block.matrix(n) for n in names}).items()})
        runner.advance(b)
    out[HEAD] = runner.head_moment()
    return out


def collect_grads(dense, batches, layers, n_tokens, spill=None, labels="data", seed=0):
    """output_gradient_moments of every factorisable matrix of `layers` (dense model) and of the logits, on
    the first n_tokens of the batches (whole batches), with targets as `labels` says (FISHER_LABELS). spill: a
    directory to keep them in."""
    use, total = [], 0
    for x in batches:
        if total >= n_tokens:
            break
        use.append(x)
        total += x.numel()
    return output_gradient_moments(dense, use, set(layers), spill, labels=labels, seed=seed)


def content_hash(tensors):
    """A short hash of tensors' contents (dtype, shape and bytes), in order."""
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_calib_cache(path, key, force=False):
    """The statistics stored in the cache file for exactly this calibration, or {} when there is none. A file
    holding another calibration is refused unless force (it would be replaced)."""
    if not path or not os.path.isfile(path):
        return {}
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"--calib_cache {path} could not be read ({type(e).__name__}); delete it to "
                        f"recollect") from None
    if not isinstance(stored, dict) or stored.get("key") != key:
        if not force:
            raise UserError(f"--calib_cache {path} holds the statistics of another model, dataset or setting; "
                            f"choose another file or pass --force to replace it")
        print(f"--calib_cache {path} holds another calibration; collecting anew (it will be replaced)")
        return {}
    return stored


def grads_key(fisher_tokens, labels="data"):
    """The calibration cache's entry for output-gradient moments on fisher_tokens tokens with `labels`."""
    return f"grads_{fisher_tokens}" + ("" if labels == "data" else f"_{labels}")


def save_calib_cache(path, key, cached, stats, gkey):
    """Write the cache: what it held plus stats = (moments, grads), either None."""
    moments, grads = stats
    out = {k: v for k, v in cached.items() if k != "key"}
    if moments is not None:
        out["moments"] = moments
    if grads is not None:
        out[gkey] = grads
    atomic_save({"key": key, **out}, path)


@dataclass(frozen=True)
class CalibSettings:
    """How a model is calibrated: kron_decomp's calibration options, resolved once where they enter."""
    name: str                       # the dataset as the user named it (for the log)
    tokens: int = 16384             # calibration tokens
    seq: int = 256                  # their sequence length
    seed: int = 1337                # the draw of the calibration batches (and of 'model' labels)
    fisher_tokens: int = 0          # output-gradient moments on the first this many tokens (0: none)
    fisher_labels: str = "data"     # their targets (FISHER_LABELS)
    cache_path: str = ""            # a file keeping the statistics for the next run ('' = none)
    force: bool = False             # replace a cache file that holds another calibration
    dtype: str = "float32"          # the forwards' precision (autocast): statistics differ with it


def calibrate(dense, data, settings, *, layers, moments=True, log=print):
    """(batches, moments, grads) for decomposing `dense` on the prepared dataset `data` (a TokenData), as
    `settings` (CalibSettings) say: the input moments of every factorisable matrix of `layers` and the
    lm_head's (if `moments`), and with settings.fisher_tokens > 0 the output-gradient moments on the first
    fisher_tokens of the calibration tokens. settings.cache_path: a file that keeps the statistics; it is keyed
    by the contents of the model's weights and of the calibration tokens, the settings, the forwards' precision
    and device type, so statistics of a changed model, dataset or precision are never reused."""
    s = settings
    batches = calibration_batches(data, s.tokens, s.seq, seed=s.seed)
    device = next(dense.parameters()).device.type
    key = dict(weights=content_hash(dense.state_dict().values()), tokens=content_hash(batches), seq=s.seq,
               layers=sorted(layers), contents="every block matrix and the lm_head", dtype=s.dtype,
               device=device) if s.cache_path else None
    cached = load_calib_cache(s.cache_path, key, s.force)
    n = sum(b.numel() for b in batches)
    C = G = None
    if moments:
        t = time.time()
        C = cached.get("moments") or collect_moments(dense, batches, layers)
        log(f"calibration: {n:,} tokens of {s.name} in {time.time() - t:.0f}s"
            + (f" (from {s.cache_path})" if "moments" in cached else ""))
    gkey = grads_key(s.fisher_tokens, s.fisher_labels)
    if s.fisher_tokens:
        t = time.time()
        G = cached.get(gkey) or collect_grads(dense, batches, layers, s.fisher_tokens, labels=s.fisher_labels,
                                              seed=s.seed)
        log(f"output gradients: {min(s.fisher_tokens, n):,} tokens ({s.fisher_labels} labels) in "
            f"{time.time() - t:.0f}s" + (f" (from {s.cache_path})" if gkey in cached else ""))
    collected = (C is not None and "moments" not in cached) or (G is not None and gkey not in cached)
    if s.cache_path and collected:  # rewriting an unchanged cache (GBs for SmolLM2) only costs time
        save_calib_cache(s.cache_path, key, cached, (C, G), gkey)
    return batches, C, G
