"""
Exporting a model as a Hugging Face directory (the library side of export.py and compress.py): factored (the
factors, this repo's model code, a model card) or dense (a standard GPT2LMHeadModel / LlamaForCausalLM), with
the tokenizer, written to a staging folder and put in place whole.

    export_model(model, "hf/krony-81M", fmt="factored", source="out-81M/best.pt")
"""

import json
import os
import shutil

from .checkpoint import load_checkpoint, resolve_checkpoint_path, same_file
from .claims import alive, remove_dead_temps
from .errors import UserError
from .hf_io import export_factored, export_hf
from .progress import phase
from .tokenizer import save_hf_tokenizer, special_token_ids


def dir_size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def model_card(model, source, extra):
    """A short README.md: what the model is, its plan and parameters, how it was made, what it scored."""
    cfg, counts = model.config, model.param_counts()
    plan = cfg.kron_plan or "dense"
    lines = [f"# KronyGPT {cfg.arch} model, {counts['total'] / 1e6:.1f}M parameters", "",
             "Weight matrices stored as sums of Kronecker products, W = sum_k A_k (x) B_k (low rank is the "
             "(out,1)x(1,in) member), and multiplied in factored form. Made with KronyGPT.", "",
             "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
             "model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)",
             "tok = AutoTokenizer.from_pretrained(DIR, trust_remote_code=False)  # the tokenizer needs no code",
             "out = model.generate(**tok('The capital of France is', return_tensors='pt'), max_new_tokens=20)",
             "# fixed-size cache buffers; on a GPU transformers then compiles the decoding step (one graph)",
             "out = model.generate(**tok('The capital of France is', return_tensors='pt'), max_new_tokens=20,",
             "                     cache_implementation='static')",
             "```", "",
             "| | |", "|---|---|",
             f"| architecture | {cfg.arch}, {cfg.n_layer} blocks, width {cfg.n_embd}, MLP "
             f"{cfg.mlp_widths.replace(',', ', ') if cfg.widths else cfg.mlp_hidden}, "
             f"vocabulary {cfg.vocab_size}, context {cfg.block_size} |",
             f"| parameters | {counts['total']:,} ({counts['tying']}); factors {counts['kronecker_factors']:,} |",
             f"| plan | `{plan}` |", f"| exported from | `{source}` |"]
    dec = extra.get("decomposition")
    if dec:
        lines.append(f"| decomposition | init `{dec.get('init')}` from `{dec.get('model')}`"
                     + (f", calibrated on `{dec['calib']}`" if dec.get("calib") else "") + " |")
    if extra.get("val_loss") is not None and extra["val_loss"] == extra["val_loss"]:
        lines.append(f"| validation loss | {extra['val_loss']:.4f} (the training run's fixed validation set) |")
    lines += ["", "The bundled code supports transformers' KV cache, padding masks (batched generation), "
              "`attn_implementation` 'sdpa' or 'eager', `output_hidden_states`, and `AutoModel` (the base model).", ""]
    return "\n".join(lines)


def checkpoint_extra(init_from):
    """The training run's `extra` record of a checkpoint; {} for a pretrained model (HF dir, name, .gguf)."""
    path = resolve_checkpoint_path(init_from)
    if not os.path.isfile(path) or path.endswith(".gguf"):
        return {}
    return load_checkpoint(path).get("extra", {})


def check_out_dir(out, force, source):
    """Before any work: --out may be new, empty, or (with --force) a previous export of this repo, which is
    replaced whole. A directory holding anything else (a training run, another model) is never written into."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file; give a directory for the Hugging Face model")
    recover_interrupted(out)
    if os.path.exists(source) and same_file(source, out):
        raise UserError(f"--out {out} is the model being exported; choose another directory")
    if not os.path.isdir(out) or not os.listdir(out):
        return
    if not force:
        raise UserError(f"--out {out} is not empty; choose another directory or pass --force to replace the export "
                        f"there")
    if not os.path.isfile(os.path.join(out, "kronygpt_export.json")):
        raise UserError(f"--out {out} holds files that are not an export of this repo "
                        f"({', '.join(sorted(os.listdir(out))[:4])}"
                        f"...); --force replaces only a previous export: choose another directory")


def recover_interrupted(out):
    """Undo what a killed export left beside `out`: a previous export set aside as out.old<pid> (killed between
    replace_dir's two renames, so `out` is missing) is put back; staging folders out.tmp<pid> and set-aside
    exports of processes that are gone are removed."""
    parent, base = os.path.split(os.path.abspath(out))
    if not os.path.isdir(parent):
        return
    if not os.path.exists(out):
        for name in sorted(os.listdir(parent)):
            pid = name[len(base) + 4:]
            if name.startswith(base + ".old") and pid.isdigit() and not alive(int(pid)):
                os.replace(os.path.join(parent, name), out)
                print(f"note: {out} was set aside by an export that was stopped; put it back")
                break
    for kind in ("old", "tmp"):
        remove_dead_temps(parent, f"{base}.{kind}")


def replace_dir(staged, out):
    """Put the staged export at `out`, replacing a previous export there whole (no stale file of another format)."""
    old = None
    if os.path.isdir(out):
        old = f"{out.rstrip('/')}.old{os.getpid()}"
        os.replace(out, old)
    os.replace(staged, out)
    if old:
        shutil.rmtree(old)


def export_model(model, out, fmt="auto", dtype="float32", source=""):
    """Write `model` to the directory `out` (checked with check_out_dir first) as fmt 'factored', 'dense' or
    'auto' (factored for a factorised model) in `dtype`; source: what it was exported from (its checkpoint's
    training record goes into the model card). Returns (format, whether a tokenizer was written)."""
    fmt = fmt if fmt != "auto" else ("factored" if model.config.is_factorized or model.config.widths else "dense")
    if fmt == "dense" and model.config.widths:
        raise UserError("this model's blocks have MLPs of different widths, which a standard Hugging Face config "
                        "cannot describe (one intermediate_size); export it with --format factored")
    extra = checkpoint_extra(source) if source else {}
    staged = f"{out.rstrip('/')}.tmp{os.getpid()}"
    try:
        with phase(f"export: writing {out} ({fmt})", expected=10):
            special = {k: v for k, v in special_token_ids(model.tokenizer_name).items() if v < model.config.vocab_size}
            if fmt == "factored":
                export_factored(model, staged, model.tokenizer_name, model_card(model, source, extra), dtype, special)
            else:
                export_hf(model, staged, dtype, special)
            try:
                wrote_tok = save_hf_tokenizer(model.tokenizer_name, staged)
            except Exception as e:  # a model whose tokenizer has no Hugging Face files (a random test model, say)
                print(f"note: no tokenizer written ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
                wrote_tok = False
            with open(os.path.join(staged, "kronygpt_export.json"), "w") as f:
                json.dump(dict(source=source, format=fmt, params=model.param_counts()["total"]), f, indent=1)
            replace_dir(staged, out)
    finally:
        if os.path.isdir(staged):
            shutil.rmtree(staged)
    return fmt, wrote_tok
