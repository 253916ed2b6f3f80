"""
Train a dense or Kronecker GPT: from scratch, from a Hugging Face model, or from a kron_decomp.py checkpoint.

    python train.py config/train_shakespeare_small.py                   # single process (CPU or one GPU)
    python train.py config/krony_vl.py --init_from=out-decomp/gpt2_81M.pt
    torchrun --standalone --nproc_per_node=8 train.py config/krony_prune.py   # DDP (NCCL on GPU, gloo on CPU)
    python train.py config/krony_vl.py --init_from=resume                # continue out_dir/last.pt
    python train.py --eval_only=True --init_from=gpt2 --dataset=openwebtext   # validation loss of any model

Settings are the fields of training.TrainConfig: a config file overrides them, then --key=value.
"""

import sys

from configurator import configure, run_cli
from train_loop import init_model, train_loop
from training import TrainConfig, setup_runtime


def lm_loss(model, x, y, iter_num):
    """The next-token cross-entropy; no extra metrics."""
    _, loss = model(x, y)
    return loss, {}


def main(argv=None):
    cfg = configure(TrainConfig(), sys.argv[1:] if argv is None else argv)
    rt = setup_runtime(cfg)
    model, ckpt, tokenizer = init_model(cfg, rt)
    val_loss = train_loop(cfg, model, rt, lm_loss, tokenizer, ckpt)
    if rt.ddp:
        import torch.distributed as dist
        dist.destroy_process_group()
    return val_loss


if __name__ == "__main__":
    run_cli(main)
