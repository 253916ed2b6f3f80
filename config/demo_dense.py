# Demo step 1: a small dense GPT on Shakespeare, character level, sized for a 2-core CPU (~4 minutes).
# 4 layers x 256 wide: 3.2M parameters, 2.1M of them in the MLPs (what Kronecker factors compress).
# python data/shakespeare_char/prepare.py && python train.py config/demo_dense.py
out_dir = "out-demo/dense"
dataset = "shakespeare_char"
n_layer = 4
n_head = 4
n_embd = 256
block_size = 128
batch_size = 32
max_iters = 500
eval_interval = 100
log_interval = 50
eval_tokens = 65536
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 50
dropout = 0.0
