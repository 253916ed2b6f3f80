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

import sys
from dataclasses import dataclass

import torch

from configurator import configure, run_cli
from kronygpt.checkpoint import load_model, resolve_checkpoint_path
from kronygpt.errors import UserError
from kronygpt.exporting import check_out_dir, dir_size, export_model


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


def main():
    args = configure(ExportConfig(), sys.argv[1:], verbose=False, doc=__doc__)
    check_out_dir(args.out, args.force, resolve_checkpoint_path(args.init_from))
    model = load_model(args.init_from).eval()
    fmt, wrote_tok = export_model(model, args.out, args.format, args.dtype, source=args.init_from)
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
