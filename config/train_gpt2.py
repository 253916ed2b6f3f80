# Dense GPT-2 124M baseline on OpenWebText, from the Hugging Face checkpoint (the reference the
# Kronecker runs compare with; nanoGPT measures HF GPT-2 at ~3.12 OWT val loss with eval_only).
# python data/openwebtext/prepare.py && torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
out_dir = "out-gpt2"
init_from = "gpt2"
dataset = "openwebtext"
# ~123k tokens per iteration as in Krony-PT: 24 sequences x 1024 tokens x 5 micro-steps. The 5 micro-steps
# are split over the processes, so run 1 or 5 processes (or change both numbers: tokens = 24 * 1024 * gas).
batch_size = 24
block_size = 1024
gradient_accumulation_steps = 5
max_iters = 300
lr_decay_iters = 300
warmup_iters = 30
learning_rate = 6e-5
min_lr = 6e-6
beta1 = 0.9
beta2 = 0.95
weight_decay = 0.1
grad_clip = 1.0
eval_interval = 50
eval_tokens = 2097152       # fixed OWT validation set: the first 2M tokens of val.bin
log_interval = 10
