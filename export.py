"""
Export any checkpoint (dense or Kronecker) as a Hugging Face model directory: the Kronecker products are
materialised into dense weights, so GPT2LMHeadModel / LlamaForCausalLM, lm-evaluation-harness and other
Hugging Face tools load it. The tokenizer is written beside it when it has a Hugging Face form.

    python export.py --init_from out-krony-vl/best.pt --out hf/krony-82M
    lm_eval --model hf --model_args pretrained=hf/krony-82M --tasks lambada_openai,wikitext
"""

import argparse
import os

import torch

from checkpoint import load_model
from configurator import run_cli
from errors import UserError
from hf_io import export_hf
from tokenizer import save_hf_tokenizer


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init_from", required=True, help="checkpoint, out_dir, HF directory or hub name")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--check", action="store_true", help="reload with transformers and compare logits")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    args = p.parse_args()
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a file; give a directory for the Hugging Face model")
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.force:
        raise UserError(f"--out {args.out} is not empty; choose another directory or pass --force to overwrite")
    model = load_model(args.init_from).eval()
    export_hf(model, args.out)
    wrote_tok = save_hf_tokenizer(model.tokenizer_name, args.out)
    print(f"wrote {args.out} ({model.config.arch}, {model.param_counts()['total']:,} parameters as stored; "
          f"{'with' if wrote_tok else 'without'} a tokenizer)")
    if args.check:
        from transformers import AutoModelForCausalLM
        hf = AutoModelForCausalLM.from_pretrained(args.out).eval()
        idx = torch.randint(0, model.config.vocab_size, (2, min(32, model.config.block_size)))
        with torch.no_grad():
            diff = (hf(idx).logits - model(idx, all_logits=True)[0]).abs().max().item()
        print(f"max |logit difference| transformers vs checkpoint: {diff:.2e}")


if __name__ == "__main__":
    run_cli(main)
