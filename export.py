"""
Export any checkpoint (dense or factorised) as a Hugging Face model directory, with its tokenizer.

  --format factored  (the default for a factorised model) keeps the factors: config.json with the plan,
                     the factors as safetensors (a tied embedding stored once), the model code (this repo's
                     own modules, imports made relative) and a model card. Small on disk, factored forward.
                     Loads offline with AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True);
                     sample.py, eval.py and load_model take the directory too.
  --format dense     (the default for a dense model) materialises every product into a standard
                     GPT2LMHeadModel / LlamaForCausalLM: as large and as slow as the original, but any
                     Hugging Face tool loads it without remote code (e.g. lm-evaluation-harness).
Factored is the default for compressed models because shipping the compressed model is the point of
compressing: the dense form gives the size and the speed back.

    python export.py --init_from out-krony/best.pt --out hf/krony-81M            # factored
    python export.py --init_from out-krony/best.pt --out hf/krony-81M-dense --format dense --check
    lm_eval --model hf --model_args pretrained=hf/krony-81M,trust_remote_code=True --tasks lambada_openai
"""

import json
import os
import shutil
import sys
from dataclasses import dataclass

import torch

from kronygpt.checkpoint import load_checkpoint, load_model, resolve_checkpoint_path, same_file
from configurator import configure, run_cli
from kronygpt.errors import UserError
from kronygpt.hf_io import export_factored, export_hf
from kronygpt.tokenizer import save_hf_tokenizer, special_token_ids


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
             f"| architecture | {cfg.arch}, {cfg.n_layer} blocks, width {cfg.n_embd}, MLP {cfg.mlp_hidden}, "
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


@dataclass
class ExportConfig:
    init_from: str = ""             # checkpoint, out_dir, HF directory or hub name
    out: str = ""                   # the output directory
    format: str = "auto"            # 'factored', 'dense', or 'auto': factored for a factorised model, dense otherwise
    dtype: str = "float32"          # the weights' dtype on disk: float32, bfloat16 or float16
    check: bool = False             # reload with transformers and compare logits
    force: bool = False             # replace an existing export in --out

    def validate(self):
        if not self.init_from or not self.out:
            raise UserError("give --init_from MODEL and --out DIRECTORY")
        if self.format not in ("auto", "factored", "dense"):
            raise UserError(f"--format must be auto, factored or dense, got {self.format!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise UserError(f"--dtype must be float32, bfloat16 or float16, got {self.dtype!r}")


def check_out_dir(out, force, source):
    """Before any work: --out may be new, empty, or (with --force) a previous export of this repo, which is
    replaced whole. A directory holding anything else (a training run, another model) is never written into."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file; give a directory for the Hugging Face model")
    if os.path.exists(source) and same_file(source, out):
        raise UserError(f"--out {out} is the model being exported; choose another directory")
    if not os.path.isdir(out) or not os.listdir(out):
        return
    if not force:
        raise UserError(f"--out {out} is not empty; choose another directory or pass --force to replace the export "
                        f"there")
    if not os.path.isfile(os.path.join(out, "kronygpt_export.json")):
        raise UserError(f"--out {out} holds files that are not an export of this repo ({', '.join(sorted(os.listdir(out))[:4])}"
                        f"...); --force replaces only a previous export: choose another directory")


def replace_dir(staged, out):
    """Put the staged export at `out`, replacing a previous export there whole (no stale file of another format)."""
    old = None
    if os.path.isdir(out):
        old = f"{out.rstrip('/')}.old{os.getpid()}"
        os.replace(out, old)
    os.replace(staged, out)
    if old:
        shutil.rmtree(old)


def main():
    args = configure(ExportConfig(), sys.argv[1:], verbose=False, doc=__doc__)
    check_out_dir(args.out, args.force, resolve_checkpoint_path(args.init_from))
    model = load_model(args.init_from).eval()
    fmt = args.format if args.format != "auto" else ("factored" if model.config.is_factorized else "dense")
    extra = checkpoint_extra(args.init_from)
    staged = f"{args.out.rstrip('/')}.tmp{os.getpid()}"
    try:
        special = {k: v for k, v in special_token_ids(model.tokenizer_name).items() if v < model.config.vocab_size}
        if fmt == "factored":
            export_factored(model, staged, model.tokenizer_name, model_card(model, args.init_from, extra), args.dtype,
                            special)
        else:
            export_hf(model, staged, args.dtype, special)
        try:
            wrote_tok = save_hf_tokenizer(model.tokenizer_name, staged)
        except Exception as e:  # a model whose tokenizer has no Hugging Face files (a random test model, say)
            print(f"note: no tokenizer written ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
            wrote_tok = False
        with open(os.path.join(staged, "kronygpt_export.json"), "w") as f:
            json.dump(dict(source=args.init_from, format=fmt, params=model.param_counts()["total"]), f, indent=1)
        replace_dir(staged, args.out)
    finally:
        if os.path.isdir(staged):
            shutil.rmtree(staged)
    print(f"wrote {args.out} ({fmt}; {model.config.arch}, {model.param_counts()['total']:,} parameters; "
          f"{dir_size(args.out) / 2 ** 20:.1f} MiB on disk; {'with' if wrote_tok else 'without'} a tokenizer)")
    if args.check:
        from transformers import AutoModelForCausalLM
        hf = AutoModelForCausalLM.from_pretrained(args.out, trust_remote_code=fmt == "factored").eval()
        idx = torch.randint(0, model.config.vocab_size, (2, min(32, model.config.block_size)))
        with torch.no_grad():
            diff = (hf(idx).logits - model(idx, all_logits=True)[0]).abs().max().item()
        print(f"max |logit difference| transformers vs checkpoint: {diff:.2e}")


if __name__ == "__main__":
    run_cli(main)
