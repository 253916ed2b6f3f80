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
from kronygpt.claims import Claim
from kronygpt.errors import UserError
from kronygpt.exporting import check_out_dir, dir_size, export_model


@dataclass
class ExportConfig:
    init_from: str = ""             # checkpoint, out_dir, HF directory or hub name
    out: str = ""                   # the output directory
    format: str = "auto"            # 'factored', 'dense', or 'auto': factored for a factorised model, dense otherwise
    dtype: str = "float32"          # the weights' dtype on disk: float32, bfloat16 or float16
    check: bool = False             # reload with transformers and compare on real text: PASS or FAIL
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
    with Claim(args.out.rstrip("/") + ".lock", f"--out {args.out}"):  # one export into --out at a time
        model = load_model(args.init_from).eval()
        fmt, wrote_tok = export_model(model, args.out, args.format, args.dtype, source=args.init_from)
    print(f"wrote {args.out} ({fmt}; {model.config.arch}, {model.param_counts()['total']:,} parameters; "
          f"{dir_size(args.out) / 2 ** 20:.1f} MiB on disk; {'with' if wrote_tok else 'without'} a tokenizer)")
    if args.check:
        check_export(model, args.out, fmt, args.dtype)


CHECK_TEXT = ("The capital of France is Paris. The capital of Germany is Berlin. Water freezes at zero degrees "
              "Celsius, and the Earth goes round the Sun once a year.")
TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 5e-3}  # |mean next-token loss difference| on CHECK_TEXT


def check_export(model, out, fmt, dtype):
    """Reload the export with transformers and compare it with the checkpoint on real text: the mean next-token loss
    of both (the checkpoint cast to the export's dtype) within TOLERANCE[dtype], and the same greedy next token
    at every position; says PASS or FAIL (exit status 1)."""
    from transformers import AutoModelForCausalLM
    from kronygpt.tokenizer import get_tokenizer
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=fmt == "factored").eval()
    try:
        ids = get_tokenizer(model.tokenizer_name).encode(CHECK_TEXT)
        what = "a fixed English text"
    except UserError:  # a model without a tokenizer
        ids = []
    if not ids or max(ids) >= model.config.vocab_size:  # no tokenizer, or a test model smaller than its tokenizer
        ids = torch.randint(0, model.config.vocab_size, (48,), generator=torch.Generator().manual_seed(0)).tolist()
        what = "48 fixed random tokens (the model cannot read its tokenizer's text)"
    x = torch.tensor([ids[:model.config.block_size]])
    ref = model.to(getattr(torch, dtype))
    with torch.no_grad():
        a, b = hf(x).logits.float(), ref(x, all_logits=True)[0].float()
    loss = [torch.nn.functional.cross_entropy(z[0, :-1], x[0, 1:]).item() for z in (a, b)]
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    ok = abs(loss[0] - loss[1]) <= TOLERANCE[dtype] and agree == 1.0
    print(f"check on {what}: next-token loss {loss[0]:.5f} (transformers) vs {loss[1]:.5f} (checkpoint, {dtype}), "
          f"difference {abs(loss[0] - loss[1]):.1e} (tolerance {TOLERANCE[dtype]:g}); greedy tokens agree at "
          f"{agree:.0%} of positions: {'PASS' if ok else 'FAIL'}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
