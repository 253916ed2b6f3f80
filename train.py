"""
Train a dense or Kronecker GPT: from scratch, from a Hugging Face model, or from a kron_decomp.py checkpoint.

    python train.py config/train_shakespeare_small.py                   # single process (CPU or one GPU)
    python train.py config/krony_vl.py --init_from=out-decomp/gpt2_81M.pt
    torchrun --standalone --nproc_per_node=8 train.py config/krony_prune.py   # DDP (NCCL on GPU, gloo on CPU)
    python train.py config/krony_vl.py --init_from=resume                # continue out_dir/last.pt
    python train.py --eval_only=True --init_from=gpt2 --dataset=openwebtext   # validation loss of any model

Settings are the fields of trainer.TrainConfig: a config file overrides them, then --key=value.
SIGTERM or SIGINT saves out_dir/last.pt and exits with 143 or 130 (128 + the signal): requeue the same
command with --init_from=resume. Errors you can fix exit with 2 and one line saying what to change.
"""

import sys

from configurator import configure, run_cli
from kronygpt.trainer import TrainConfig, init_model, launch, train


def lm_loss(model, x, y, iter_num):
    """The next-token cross-entropy; no extra metrics."""
    _, loss = model(x, y)
    return loss, {}


def main(argv=None):
    cfg = configure(TrainConfig(), sys.argv[1:] if argv is None else argv)
    return launch(cfg, run)


def run(cfg, rt):
    model, ckpt, tokenizer = init_model(cfg, rt)
    return train(cfg, model, rt, lm_loss, tokenizer, ckpt)


if __name__ == "__main__":
    run_cli(main)
