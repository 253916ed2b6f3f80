# A small dense GPT trained from scratch on the Shakespeare corpus (GPT-2 BPE), sized for a 2-core CPU:
# 4 layers x 128 wide, 256-token context. ~5M parameters of which 6.4M... see the start line for counts.
# python data/shakespeare/prepare.py && python train.py config/train_shakespeare_small.py
out_dir = "out-shakespeare-small"
dataset = "shakespeare"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
batch_size = 16
gradient_accumulation_steps = 1
max_iters = 600
eval_interval = 100
log_interval = 20
eval_tokens = 32768
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 50
weight_decay = 0.1
dropout = 0.0
