"""
Distil a dense teacher into a Kronecker student, with train.py's machinery (DDP, learning-rate groups,
freezing, checkpoints, logging). Three modes (kronygpt/distiller.py):

  e2e          alpha * CE(student, data) + beta * T^2 * KL(teacher || student) over every position,
               plus hidden_weight * per-block hidden-state distance (intermediate-layer distillation; MSE or
               --hidden_loss=relative)
  layerwise    first fit each Kronecker MLP to its dense MLP's outputs on the teacher's real activations
               (MSE, layerwise_steps per layer), then train with the e2e loss
  progressive  start from the dense teacher; every progressive_interval iterations replace the next
               block's MLP (top_down or bottom_up) by its Kronecker version, training the whole model in
               between; the last checkpoint is fully Kronecker

    python train_distillation.py config/distill_shakespeare.py
    python train_distillation.py config/distill_prune.py            # GPT-2 -> 96M prune student, OpenWebText
    torchrun --standalone --nproc_per_node=8 train_distillation.py config/distill_prune.py

The student is init_from: 'teacher' (decompose the teacher on the fly as kron_plan and kron_init say), a
kron_decomp.py checkpoint, or 'resume'. Settings: DistillConfig (kronygpt/distiller.py) plus TrainConfig.
"""

import sys

from configurator import configure, run_cli
from kronygpt.distiller import DistillConfig, distil
from kronygpt.trainer import launch


def main(argv=None):
    return launch(configure(DistillConfig(), sys.argv[1:] if argv is None else argv), distil)


if __name__ == "__main__":
    run_cli(main)
