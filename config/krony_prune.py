# GPT-2 124M -> 96M Kronecker with Krony-PT's 50% pruning init ((3072,384)x(1,2); its best model).
#   python kron_decomp.py --model gpt2 --factors 1 --shape 3072x384 --init prune --out out-decomp/gpt2_96M_prune.pt
#   torchrun --standalone --nproc_per_node=5 train.py config/krony_prune.py
out_dir = "out-krony-prune"
init_from = "out-decomp/gpt2_96M_prune.pt"
dataset = "openwebtext"
batch_size = 24
block_size = 1024
gradient_accumulation_steps = 5
max_iters = 300
lr_decay_iters = 300
warmup_iters = 30
learning_rate = 6e-5
new_learning_rate = 6e-5
min_lr = 6e-6
beta1 = 0.9
beta2 = 0.95
weight_decay = 0.1
grad_clip = 1.0
eval_interval = 50
eval_tokens = 2097152
log_interval = 10
