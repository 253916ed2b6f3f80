# Demo step 3: recover the Kronecker-compressed demo model by training (~2 minutes on a 2-core CPU).
# python train.py config/demo_krony.py --init_from=out-demo/krony_init.pt
out_dir = "out-demo/krony"
init_from = "out-demo/krony_init.pt"
dataset = "shakespeare_char"
block_size = 128
batch_size = 32
max_iters = 300
eval_interval = 100
log_interval = 50
eval_tokens = 65536
learning_rate = 1e-3
new_learning_rate = 2e-3   # the new Kronecker factors move further than the pretrained weights
min_lr = 1e-4
warmup_iters = 20
