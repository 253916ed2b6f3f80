# GPT-2 124M -> Kronecker (Van Loan init) on OpenWebText, Krony-PT's research settings, aimed at the
# project goal: <= 85M parameters and < 3.00 OWT val loss within 300 steps. Decompose first, e.g.
#   python kron_decomp.py --model gpt2 --target_params distilgpt2 --init vl_norm --out out-decomp/gpt2_82M_vlnorm.pt
#   python train.py config/krony_vl.py
# (the paper's full schedule: 3-4 epochs of OWT, ~220k iterations, warmup 500-1500, then one epoch at
#  320 sequences per step and a constant 6e-6.)
out_dir = "out-krony-vl"
init_from = "out-decomp/gpt2_82M_vlnorm.pt"
dataset = "openwebtext"
batch_size = 24
block_size = 1024
gradient_accumulation_steps = 5   # ~123k tokens per iteration (split over 1 or 5 processes)
max_iters = 300
lr_decay_iters = 300
warmup_iters = 30
learning_rate = 6e-5              # pretrained weights (attention, embeddings, norms, MLP biases)
new_learning_rate = 6e-5          # the Kronecker factors; raise it to let the new weights move faster
min_lr = 6e-6
beta1 = 0.9
beta2 = 0.95
weight_decay = 0.1
grad_clip = 1.0
eval_interval = 50
eval_tokens = 2097152
log_interval = 10
