# GPT-2 (teacher) -> 96M pruning-initialised Kronecker student on OpenWebText, logits distillation.
# torchrun --standalone --nproc_per_node=5 train_distillation.py config/distill_prune.py
out_dir = "out-distill-prune"
teacher = "gpt2"
init_from = "teacher"
kron_plan = "*: mlp=3072x384*1"   # every MLP matrix one Kronecker product (c_proj the opposite shape)
kron_init = "prune"
mode = "e2e"
alpha = 0.5
beta = 0.5
temperature = 2.0
hidden_weight = 0.0
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
weight_decay = 0.1
grad_clip = 1.0
eval_interval = 50
eval_tokens = 2097152
log_interval = 10
