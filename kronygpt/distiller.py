"""
The distillation run: a dense teacher, a student (a decomposed checkpoint, or the teacher decomposed now), and
train.py's machinery (DDP, learning-rate groups, freezing, checkpoints, logging) with the distillation loss
(distill.py). Three modes (DistillConfig.mode):

  e2e          alpha * CE(student, data) + beta * T^2 * KL(teacher || student) over every position,
               plus hidden_weight * per-block hidden-state distance (intermediate-layer distillation; MSE or
               --hidden_loss=relative)
  layerwise    first fit each Kronecker MLP (or whole block) to the teacher's on the teacher's real activations
               (fit_student), then train with the e2e loss
  progressive  start from the dense teacher; every progressive_interval iterations replace the next block's MLP
               (top_down or bottom_up) by its Kronecker version, training the whole model in between

    cfg = configure(DistillConfig(), argv); rt = setup_runtime(cfg.device, cfg.dtype)
    with run_directory(cfg, rt):
        distil(cfg, rt)
"""

import copy
import os
import time
from dataclasses import dataclass, replace

import torch

from .checkpoint import atomic_save, load_model, save_checkpoint
from .data_utils import batch_seed, check_data_fits, open_dataset
from .distill import (HIDDEN_LOSSES, FitSettings, TeacherActivations, changed_layers, fit_layers, fit_units,
                      make_distill_loss, progressive_order)
from .errors import ConfigError, Stopped, UserError
from .factorize import INITS, InitSpec
from .plans import Plan
from .runtime import autocast, resolve_dtype
from .surgery import decompose_model, replace_block
from .trainer import Logger, StopSignal, TrainConfig, evaluate, init_model, train


@dataclass
class DistillConfig(TrainConfig):
    init_from: str = "teacher"      # 'teacher' (decompose it now), a Kronecker checkpoint, or 'resume'
    teacher: str = "gpt2"           # the dense teacher: hub name, Hugging Face directory or dense checkpoint
    mode: str = "e2e"               # 'e2e', 'layerwise' or 'progressive'
    alpha: float = 0.5              # weight of the cross-entropy on the data
    beta: float = 0.5               # weight of T^2 * KL(teacher || student)
    temperature: float = 2.0        # softening of both distributions in the KL term
    hidden_weight: float = 0.0      # weight of the per-block hidden-state distance; 0 = off
    hidden_loss: str = "mse"        # that distance: 'mse', or 'relative' (each token's squared error over the
                                    # teacher's squared norm there: every block and token weigh alike)
    teacher_dtype: str = "auto"     # 'auto' (bfloat16 on CUDA if supported, else float16; CPU float32), or a dtype
    # -- a student decomposed on the fly (init_from='teacher', and mode='progressive'): kron_plan and
    #    kron_scalars above say what is factorised, these how
    kron_init: str = "vl_norm"      # 'vl', 'vl_norm', 'prune' or 'random' (calibrated inits: kron_decomp.py)
    prune_keep: str = "even"        # prune: keep the 'even' or 'odd' entry of every block
    prune_eps: float = 0.0          # prune: value of B's other entries
    # -- layer-wise fitting (mode='layerwise', and progressive_fit)
    layerwise_tokens: int = 16384   # teacher activations per layer to fit on (a quarter as many held out)
    layerwise_steps: int = 200      # Adam steps per layer
    layerwise_lr: float = 1e-3
    layerwise_batch: int = 1024     # tokens per step
    fit_dataset: str = ""           # the dataset (or mixture) whose tokens the fit sees; '' = dataset. What the
                                    # fit sees decides what the student keeps (teacher text: the teacher's own)
    # -- progressive replacement
    progressive_interval: int = 50  # iterations between two replacements
    progressive_order: str = "top_down"  # 'top_down' (last block first) or 'bottom_up'
    progressive_fit: bool = False   # layer-wise fit each block's Kronecker MLP before it goes in

    def validate(self):
        super().validate()
        if self.mode not in ("e2e", "layerwise", "progressive"):
            raise ConfigError(f"mode must be 'e2e', 'layerwise' or 'progressive', got {self.mode!r}")
        if self.fsdp and self.mode == "progressive":
            raise ConfigError("mode='progressive' replaces modules during training, which a sharded (fsdp) model "
                              "cannot; use mode='e2e' or 'layerwise', or drop fsdp")
        if self.kron_init not in INITS or self.kron_init in ("aware", "fisher"):
            raise ConfigError(f"kron_init must be one of vl, vl_norm, prune, random, got {self.kron_init!r} (for the "
                              f"calibrated inits decompose with kron_decomp.py and start from its checkpoint)")
        self.init_spec()
        if self.mode == "progressive" and not self.kron_plan:
            raise ConfigError("mode='progressive' replaces the teacher's blocks by the plan in kron_plan; set it, "
                              "e.g. kron_plan='*: mlp=256x256*1'")
        progressive_order(2, self.progressive_order)
        if self.alpha < 0 or self.beta < 0 or self.hidden_weight < 0 or self.temperature <= 0:
            raise ConfigError("alpha, beta and hidden_weight must be >= 0 and temperature > 0")
        if self.hidden_loss not in HIDDEN_LOSSES:
            raise ConfigError(f"hidden_loss must be one of {', '.join(HIDDEN_LOSSES)}, got {self.hidden_loss!r}")
        for name, low in (("layerwise_tokens", 1), ("layerwise_batch", 1), ("layerwise_steps", 0),
                          ("progressive_interval", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if not self.layerwise_lr > 0 or self.layerwise_lr == float("inf"):
            raise ConfigError(f"layerwise_lr must be a positive number, got {self.layerwise_lr}")

    def init_spec(self):
        return InitSpec(self.kron_init, self.kron_scalars, self.prune_keep, self.prune_eps)

    def fit_settings(self, device):
        return FitSettings(self.layerwise_steps, self.layerwise_lr, self.layerwise_batch, device)


class DistillHooks:
    """trainer hooks: teacher validation loss in eval lines, progressive replacement."""

    def __init__(self, cfg, teacher, teacher_ctx, rt, fit_data=None):
        self.cfg, self.teacher, self.teacher_ctx, self.rt = cfg, teacher, teacher_ctx, rt
        self.teacher_val = None
        self.full_plan = Plan.parse(cfg.kron_plan, teacher.config.layout()) if cfg.mode == "progressive" else None
        self.fit_data = fit_data  # (fit activations, held-out activations) for progressive_fit
        self.order = progressive_order(teacher.config.n_layer, cfg.progressive_order)

    def before_iter(self, iter_num, model):
        if self.cfg.mode != "progressive":
            return False
        due = self.order[:min(len(self.order), iter_num // self.cfg.progressive_interval + 1)]
        missing = [i for i in due if i in self.full_plan.layers and i not in model.config.plan.layers]
        for i in missing:
            replace_block(model, i, self.full_plan, self.cfg.init_spec())
            if self.cfg.progressive_fit and self.fit_data is not None:
                fit_layers(model, self.fit_data, [i], self.cfg.fit_settings(self.rt.device), log=self.log)
            self.log(f"iter {iter_num}: block {i}'s MLP is now Kronecker; Kronecker blocks: {kron_layers(model)}")
        return bool(missing)

    def eval_extra(self, model, val, rt, cfg):
        if self.teacher_val is None:
            with self.teacher_ctx:
                self.teacher_val = evaluate(self.teacher, val, rt, cfg.batch_size)
        extra = {"teacher_val_loss": self.teacher_val}
        if cfg.mode == "progressive":
            extra["kron_layers"] = kron_layers(model)
        return extra

    def log(self, line):
        if self.rt.master:
            print(line, flush=True)


def kron_layers(model):
    layers = model.config.plan.layers
    return ",".join(map(str, layers)) if layers else "none"


def token_batches(data, split, n_tokens, cfg, salt):
    """Batches of training (or validation) sequences for activation collection, disjoint from training's seeds."""
    n = max(1, n_tokens // (cfg.batch_size * cfg.block_size))
    return [data.get_batch(split, cfg.batch_size, cfg.block_size, batch_seed(cfg.seed, 2 ** 40 + salt, k))[0]
            for k in range(n)]


def build_student(cfg, teacher, rt):
    """(student in train mode with cfg.dropout, resume checkpoint or None, tokenizer) for cfg.init_from."""
    if cfg.init_from != "teacher":
        student, ckpt, tokenizer = init_model(cfg, rt)
        if student.config.vocab_size != teacher.config.vocab_size:
            raise UserError(f"student vocabulary {student.config.vocab_size} differs from the teacher's "
                            f"{teacher.config.vocab_size}; they must share a tokenizer")
        if cfg.mode == "progressive" and ckpt is None:
            raise UserError("mode='progressive' starts from the teacher; use init_from='teacher' (or 'resume')")
        return student, ckpt, tokenizer
    if not cfg.kron_plan:
        raise UserError("init_from='teacher' decomposes the teacher: set kron_plan, e.g. kron_plan='*: mlp=256x256*1'")
    if cfg.mode == "progressive":  # the dense teacher; its blocks are replaced one at a time as training goes
        student = copy.deepcopy(teacher)
        student.config = replace(teacher.config, kron_scalars=cfg.kron_scalars)
    else:
        student, _ = decompose_model(teacher, cfg.kron_plan, cfg.init_spec())
    student = student.float().requires_grad_(True).set_dropout(cfg.dropout).train()
    if cfg.kron_impl:
        student.set_kron_impl(cfg.kron_impl)
    return student, None, getattr(teacher, "tokenizer_name", "gpt2")


def check_setup(cfg, teacher, student, ckpt):
    """Errors that need both models: hidden-state distillation between different widths or depths, and a
    progressive schedule that would not end fully Kronecker with every block trained."""
    if cfg.hidden_weight > 0 and (student.config.n_embd, student.config.n_layer) != \
            (teacher.config.n_embd, teacher.config.n_layer):
        raise ConfigError(f"hidden_weight > 0 compares block outputs, but the student ({student.config.n_layer} "
                          f"blocks of {student.config.n_embd}) and the teacher ({teacher.config.n_layer} of "
                          f"{teacher.config.n_embd}) differ; set hidden_weight=0")
    if cfg.mode == "progressive" and Plan.parse(cfg.kron_plan, teacher.config.layout()).embed is not None:
        raise ConfigError("mode='progressive' replaces blocks one at a time; a plan with 'embed=' cannot be reached "
                          "that way: drop the embedding from kron_plan (or use mode='e2e')")
    if cfg.mode == "progressive":
        need = teacher.config.n_layer * cfg.progressive_interval
        if cfg.max_iters < need:
            raise ConfigError(f"mode='progressive' swaps in one of {teacher.config.n_layer} blocks every "
                              f"{cfg.progressive_interval} iterations, so the last one goes in at iteration "
                              f"{need - cfg.progressive_interval} and needs {cfg.progressive_interval} more: set "
                              f"max_iters >= {need} (or lower progressive_interval)")


def resume_fitting(path, student, key):
    """(validation loss before fitting, rows of the layers already fitted) of an interrupted layer-wise fit saved at
    `path`, with those layers' weights put back into the student; (None, []) when there is none. key: what the fit
    is computed from (fit_key); a file of another student, teacher or setting is refused."""
    if not os.path.isfile(path):
        return None, []
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"{path} could not be read ({type(e).__name__}); delete it to fit from the start") from None
    if not isinstance(saved, dict) or saved.get("key") != key:
        raise UserError(f"{path} holds an interrupted fit of another student, teacher or fit setting; delete it (or "
                        f"choose another out_dir) to fit this one from the start")
    try:
        student.load_state_dict(saved["student"])
    except (RuntimeError, KeyError):
        raise UserError(f"{path} holds an interrupted fit of another student; delete it to fit from the "
                        f"start") from None
    print(f"resuming layer-wise fitting from {path}: {len(saved['rows'])} layers already fitted")
    return saved["val_loss_before"], list(saved["rows"])


def fit_key(cfg, teacher, student):
    """What a layer-wise fit is computed from: the contents of the student (before fitting) and the teacher, and
    the fit's settings. An interrupted fit resumes only into the same."""
    from .calib import content_hash
    settings = {k: getattr(cfg, k) for k in ("layerwise_tokens", "layerwise_steps", "layerwise_lr", "layerwise_batch",
                                             "fit_dataset", "dataset", "block_size", "batch_size", "seed")}
    return dict(student=content_hash(student.state_dict().values()),
                teacher=content_hash(teacher.state_dict().values()),
                settings=repr(sorted(settings.items())))


def teacher_context(cfg, rt):
    """The teacher's autocast: 'auto' is bf16 on CUDA (fp16 where bf16 is unsupported), float32 elsewhere."""
    return autocast(rt.device_type, resolve_dtype(cfg.teacher_dtype, rt.device_type))


def load_teacher(cfg, rt):
    """The dense teacher, frozen, its context long enough for the training windows."""
    teacher = load_model(cfg.teacher, device=rt.device)
    if teacher.config.is_factorized:
        raise UserError(f"the teacher {cfg.teacher} has Kronecker matrices; distil from the dense model")
    if teacher.config.block_size < cfg.block_size:
        raise UserError(f"block_size {cfg.block_size} is longer than the teacher's context "
                        f"{teacher.config.block_size}; "
                        f"lower block_size")
    return teacher.eval().requires_grad_(False)


def fit_activations(cfg, teacher, student, rt):
    """(fit, held-out) TeacherActivations of the layers the fit works on: the factorised units (layerwise) or
    every MLP (progressive_fit), on `layerwise_tokens` training tokens of fit_dataset (a quarter as many held
    out: windows of the train split that decide whether each fit is kept, so the validation split every table
    reports stays untouched); computed one layer at a time as the fit reaches it."""
    source = open_dataset(cfg.fit_dataset or cfg.dataset)
    check_data_fits(source, teacher, cfg.fit_dataset or cfg.dataset)
    need = (cfg.layerwise_tokens + cfg.layerwise_tokens // 4)
    if need > source.size("train"):
        raise UserError(f"layerwise_tokens {cfg.layerwise_tokens:,} (and a quarter as many held out) exceed the "
                        f"{source.size('train'):,} training tokens of {cfg.fit_dataset or cfg.dataset}; lower it")
    layers = range(teacher.config.n_layer)
    units = fit_units(student, layers) if cfg.mode == "layerwise" else {i: "mlp" for i in layers}
    ctx = teacher_context(cfg, rt)
    return tuple(TeacherActivations(teacher, token_batches(source, "train", n, cfg, seed), units, rt.device,
                                    ctx=lambda: ctx)
                 for n, seed in ((cfg.layerwise_tokens, 0), (cfg.layerwise_tokens // 4, 1)))


def fit_student(cfg, teacher, student, rt, tokenizer):
    """Layer-wise fitting (mode='layerwise'): every factorised unit of the student fitted to the teacher's on real
    activations, a fit kept only where it lowered the held-out error; out_dir/fitted.pt written. A fit stopped by
    SIGTERM/SIGINT keeps the layers it finished in out_dir/fitting.pt (keyed by what it was computed from) and
    the same command continues. Returns the seconds it took."""
    t0 = time.time()
    fit_data = fit_activations(cfg, teacher, student, rt)
    val = open_dataset(cfg.dataset).val_windows(cfg.block_size, cfg.eval_tokens)
    progress_path = os.path.join(cfg.out_dir, "fitting.pt")
    key = fit_key(cfg, teacher, student)
    before, rows = resume_fitting(progress_path, student, key)
    before = evaluate(student, val, rt, cfg.batch_size) if before is None else before
    todo = [i for i in changed_layers(student, teacher) if i not in {r["layer"] for r in rows}]
    stop = StopSignal()
    try:
        rows += fit_layers(student, fit_data, todo, cfg.fit_settings(rt.device),
                           log=print if rt.master else (lambda s: None), stop=lambda: stop.signum)
    finally:
        stop.restore()
    if stop.signum:  # save what is fitted; the same command continues from there
        if rt.master:
            atomic_save(dict(key=key, student=student.state_dict(), rows=rows, val_loss_before=before), progress_path)
        raise Stopped(stop.signum, f"layer-wise fitting stopped by signal {stop.signum} after {len(rows)} "
                                   f"layers; {progress_path} keeps them: run the same command to continue")
    after = evaluate(student, val, rt, cfg.batch_size)
    seconds = time.time() - t0
    Logger(cfg, rt, {}).log(dict(type="layerwise", layers=rows, val_loss_before=before, val_loss_after=after,
                                 seconds=seconds),
                            line=f"layer-wise fitting: student val loss {before:.4f} -> {after:.4f} "
                                 f"({seconds:.0f}s); wrote {cfg.out_dir}/fitted.pt")
    if rt.master:  # the fitted student on its own, to train from (or compare) without refitting
        save_checkpoint(os.path.join(cfg.out_dir, "fitted.pt"), student, tokenizer=tokenizer,
                        extra=dict(layerwise=dict(val_loss_before=before, val_loss_after=after, seconds=seconds)))
        if os.path.exists(progress_path):
            os.remove(progress_path)
    return seconds


def distil(cfg: DistillConfig, rt):
    """The whole run: teacher and student, layer-wise fitting (mode='layerwise', a fresh student), then training
    with the distillation loss (max_iters=0: the fit alone). cfg: a validated DistillConfig; rt: the Runtime."""
    teacher = load_teacher(cfg, rt)
    student, ckpt, tokenizer = build_student(cfg, teacher, rt)
    student.to(rt.device)
    check_setup(cfg, teacher, student, ckpt)
    if cfg.mode == "layerwise" and ckpt is None and not changed_layers(student, teacher):
        raise UserError("mode='layerwise' fits the student's factorised or narrowed blocks, and this student has "
                        "none; start from a decomposed checkpoint (kron_decomp.py) or use mode='e2e'")
    check_data_fits(open_dataset(cfg.dataset), teacher, cfg.dataset)  # the teacher reads the student's tokens
    fit_seconds = fit_student(cfg, teacher, student, rt, tokenizer) if cfg.mode == "layerwise" and ckpt is None else 0.0
    progressive_fit = None
    if ckpt is None and cfg.mode == "progressive" and cfg.progressive_fit:
        progressive_fit = fit_activations(cfg, teacher, student, rt)
    teacher_ctx = teacher_context(cfg, rt)
    hooks = DistillHooks(cfg, teacher, teacher_ctx, rt, progressive_fit)
    loss_fn = make_distill_loss(teacher, cfg.alpha, cfg.beta, cfg.temperature, cfg.hidden_weight, teacher_ctx,
                                cfg.hidden_loss)
    return train(cfg, student, rt, loss_fn, tokenizer, ckpt, hooks, start_seconds=fit_seconds)
