# Distil the demo's dense character-level GPT into the (256,256)x(4,1) Kronecker student on the CPU.
# Run `make demo` first (it trains the teacher, out-demo/dense/best.pt).
# python train_distillation.py config/distill_shakespeare.py --mode=layerwise
out_dir = "out-demo/distill"
teacher = "out-demo/dense/best.pt"
init_from = "teacher"
kron_plan = "*: mlp=256x256*1"   # every MLP matrix one Kronecker product (c_proj the opposite shape)
kron_init = "vl_norm"
mode = "e2e"
alpha = 0.5
beta = 0.5
temperature = 2.0
dataset = "shakespeare_char"
block_size = 128
batch_size = 32
max_iters = 300
eval_interval = 100
log_interval = 50
eval_tokens = 65536
learning_rate = 1e-3
new_learning_rate = 2e-3
min_lr = 1e-4
warmup_iters = 20
layerwise_tokens = 65536
layerwise_steps = 150
progressive_interval = 25
