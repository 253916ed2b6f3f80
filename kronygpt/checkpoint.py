"""
The one checkpoint format of this repo, and the one loader every script uses (`load_model`).

A checkpoint is a dict saved with torch.save:
    format, version   'kronygpt', CHECKPOINT_VERSION
    model_args        GPTConfig as a dict: architecture plus the full Kronecker spec
    model             state dict (no '_orig_mod.' or 'module.' prefixes)
    tokenizer         'gpt2', a Hugging Face name/dir, or {'kind': 'char', 'chars': ...}
    iter_num, best_val_loss, config, optimizer, rng, extra   (training state, optional)
Writes go to a temporary file in the same directory, are fsynced, then renamed over the target, so a
crash mid-write leaves the previous checkpoint intact. Loads use weights_only=True.
"""

import json
import os
import random
from dataclasses import dataclass

import torch

from .claims import remove_dead_temps
from .errors import CheckpointError, UserError  # noqa: F401 (CheckpointError is imported from here)
from .hf_io import is_factored_dir, is_pretrained_name, load_factored, load_pretrained
from model import GPT, GPTConfig

FORMAT = "kronygpt"
CHECKPOINT_VERSION = 1




def unwrap(model):
    """The plain GPT inside DDP and/or torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def clean_state_dict(sd):
    out = {}
    for k, v in sd.items():
        for prefix in ("_orig_mod.", "module."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def rng_state():
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def remove_stale_temps(path):
    """Delete temporary files of earlier writes of `path` whose process is gone (a SIGKILL mid-write)."""
    remove_dead_temps(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp")


def atomic_save(obj, path):
    """torch.save to a temporary file beside `path`, fsync, then rename over `path`. A failed write (a full
    disk, say) leaves the previous file and no temporary file, and raises a CheckpointError."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_json(path, obj):
    """json.dump `obj` to `path` as atomic_save writes a checkpoint: whole or not at all."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=1, default=str), binary=False)


def atomic_write(path, write, binary=True):
    """write(file) into a temporary file beside `path`, fsync, then rename over `path` (CheckpointError on
    failure, the previous file intact)."""
    d = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CheckpointError(f"cannot write {path}: it is a directory")
    try:
        os.makedirs(d, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise CheckpointError(f"cannot write {path}: a file stands where its directory {d} should be") from None
    remove_stale_temps(path)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError of its stream writer
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:120]
        raise CheckpointError(f"could not write {path} ({reason}); the previous file, if any, is intact. "
                              f"Free disk space or choose another path") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@dataclass
class TrainingState:
    """What a training checkpoint holds besides the model: the optimizer (or its gathered state dict), the
    iteration, the best validation loss, the run's config, the RNG states (one per rank), and the model's state
    dict when it is not the module's own (a sharded run gathers it)."""
    optimizer: object = None
    iter_num: int = 0
    best_val_loss: float = None
    config: dict = None
    rng: object = None
    state: dict = None
    optimizer_state: dict = None


def save_checkpoint(path, model, tokenizer="gpt2", extra=None, training=None):
    """Write `model` (with its tokenizer spec and an `extra` record) to `path` atomically; training: a
    TrainingState for a checkpoint a run resumes from (None: a model alone)."""
    t = training or TrainingState()
    optimizer, iter_num, best_val_loss, config, rng = t.optimizer, t.iter_num, t.best_val_loss, t.config, t.rng
    state, optimizer_state = t.state, t.optimizer_state
    model = unwrap(model)
    ckpt = {
        "format": FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_args": model.config.to_dict(),
        "model": clean_state_dict(model.state_dict() if state is None else state),
        "tokenizer": tokenizer,
        "iter_num": iter_num,
        "best_val_loss": best_val_loss,
        "config": config or {},
        "optimizer": optimizer_state if optimizer_state is not None else
                     optimizer.state_dict() if optimizer is not None else None,
        "rng": rng,
        "extra": extra or {},
    }
    atomic_save(ckpt, path)
    return path


def load_checkpoint(path, map_location="cpu"):
    """The checkpoint dict at `path`, or a CheckpointError saying what is wrong with the file."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist; check the path (or out_dir)")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory; pass the checkpoint file inside it (e.g. {path}/last.pt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch.load's own errors are of many types; all mean an unreadable file
        detail = (str(e).splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path} could not be read as a checkpoint (empty, truncated or corrupt?): "
                              f"{type(e).__name__}{': ' + detail if detail else ''}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a KronyGPT checkpoint (no '{FORMAT}' format field); "
                              f"for a Hugging Face model pass its directory or hub name instead")
    if ckpt.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has format version {ckpt['version']}, newer than this code's "
                              f"{CHECKPOINT_VERSION}; update the repo")
    return ckpt


def check_shapes(config, weights):
    """model_args that do not describe the stored weights (n_layer 200000 would allocate ~40 GB before
    load_state_dict could say so) are refused first: the blocks are counted, then the model is built on the meta
    device (no memory) and every tensor's shape compared."""
    blocks = {k.split(".")[2] for k in weights if isinstance(k, str) and k.startswith("transformer.h.")}
    if config.n_layer != len(blocks):
        raise CheckpointError(f"the checkpoint's model_args say {config.n_layer} blocks but its weights hold "
                              f"{len(blocks)}; it is damaged or was edited: write it again")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in GPT(config).state_dict().items()}
    wrong = [k for k, shape in expected.items() if k in weights and tuple(getattr(weights[k], "shape", ())) != shape]
    if wrong:
        raise CheckpointError(f"the checkpoint's weights do not fit its model_args ({wrong[0]}: "
                              f"{tuple(weights[wrong[0]].shape)} stored, {expected[wrong[0]]} described); it is "
                              f"damaged or was edited: write it again")


def model_from_checkpoint(ckpt, **overrides):
    if not isinstance(ckpt.get("model_args"), dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError("the checkpoint lacks its model_args or its weights; it was not written by this "
                              "repo's save_checkpoint: write it again")
    args = dict(ckpt["model_args"])
    args.update(overrides)
    config = GPTConfig.from_dict(args)
    check_shapes(config, ckpt["model"])
    model = GPT(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:  # missing or unexpected tensors, or wrong shapes
        detail = " ".join(str(e).split())[:240]
        raise CheckpointError(f"the checkpoint's weights do not fit its model_args ({detail}); it is damaged or "
                              f"was edited: write it again") from None
    model.tokenizer_name = ckpt.get("tokenizer", "gpt2")
    return model


def same_file(a, b):
    """Whether two paths name the same file or directory (real paths: symlinks resolved)."""
    return os.path.realpath(a) == os.path.realpath(b)


def refuse_clashes(outputs, inputs=()):
    """One sentence, before any work, when a path a command writes is also one it reads or another it writes:
    outputs and inputs are (option, path) pairs ('' paths are absent). With or without --force: --force
    replaces an old output, never an input or a sibling output of the same run."""
    def same(a, b):
        return os.path.realpath(a) == os.path.realpath(b) or (os.path.exists(a) and os.path.exists(b)
                                                              and os.path.samefile(a, b))
    outputs = [(o, p) for o, p in outputs if p]
    for i, (opt, path) in enumerate(outputs):
        for other, other_path in outputs[i + 1:]:
            if same(path, other_path):
                raise UserError(f"{opt} and {other} are the same file ({path}); give each its own path")
        for other, src in inputs:
            if src and (same(path, src) or same(path, resolve_checkpoint_path(str(src)))):
                raise UserError(f"{opt} {path} is also {other}, which this command reads; choose another path")


def check_output_file(path, force, *inputs, report=False):
    """Check, before any work, that a command may write the file `path` (and with report=True the .json report
    beside it, returned as a second path): not a directory, not under a file, not one of the `inputs` (a
    checkpoint, or an out_dir standing for its best.pt), not an existing file unless `force`. The rule every
    output of every script follows: nothing is overwritten without --force."""
    if not path or not path.strip():
        raise UserError("an empty output path was given; name the file to write")
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory; give a file name such as {os.path.join(path, 'model.pt')}")
    if report and path.endswith(".json"):
        raise UserError(f"--out {path} ends in .json, the name of the report; give the checkpoint a .pt name")
    parent = os.path.dirname(os.path.abspath(path))
    existing = parent
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"cannot write {path}: {existing} is a file, not a directory")
    os.makedirs(parent, exist_ok=True)  # now, before the work, so that nothing fails after it
    outs = [path] + ([os.path.splitext(path)[0] + ".json"] if report else [])
    for src in inputs:
        for p in (src, resolve_checkpoint_path(str(src))):
            if os.path.exists(p) and os.path.exists(path) and same_file(p, path):
                raise UserError(f"{path} is the model being read; choose another output path")
    if not force:
        for p in outs:
            if os.path.lexists(p):
                raise UserError(f"{p} already exists; choose another name or pass --force to overwrite it")
    return outs if report else path


def resolve_checkpoint_path(path):
    """A training out_dir stands for its best.pt (or last.pt when there is no best)."""
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        for name in ("best.pt", "last.pt"):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
    return path


def load_model(init_from, device="cpu", **overrides):
    """A GPT from anything a script accepts as init_from: a checkpoint file, a training out_dir, a
    Hugging Face directory or hub name ('gpt2', 'distilgpt2', ...), or 'smollm2-135m' / a .gguf file.
    overrides (e.g. dropout=0.1) replace model config fields. Sets model.tokenizer_name."""
    path = resolve_checkpoint_path(str(init_from))
    if os.path.isfile(path) and not path.endswith(".gguf"):
        model = model_from_checkpoint(load_checkpoint(path), **overrides)
    elif is_factored_dir(path) or is_pretrained_name(path):
        load = load_factored if is_factored_dir(path) else load_pretrained
        try:
            model = load(path, **overrides)
        except UserError:
            raise
        except OSError as e:
            raise CheckpointError(f"could not load {path!r} as a Hugging Face model (no local directory of "
                                  f"that name and the hub is unreachable?): {str(e).splitlines()[0][:200]}") from None
        except Exception as e:  # safetensors', gguf's and transformers' parsers raise their own types
            detail = (str(e).splitlines() or [""])[0][:160]
            raise CheckpointError(f"could not read the model {path} (a truncated or damaged file?): "
                                  f"{type(e).__name__}{': ' + detail if detail else ''}") from None
    else:
        raise CheckpointError(f"init_from={init_from!r} is neither an existing checkpoint file or directory "
                              f"nor a known model name; pass a .pt checkpoint, a Hugging Face directory, or "
                              f"a hub name such as 'gpt2'")
    return model.to(device)
