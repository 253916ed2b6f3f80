# Freeze/release cycles on the CPU demo setup: train only the Kronecker factors for 50 iterations, then
# everything for 50, three times. Run `make demo` first (it writes out-demo/krony_init.pt).
# python train.py config/demo_krony.py config/krony_freeze_shakespeare.py
out_dir = "out-demo/krony-freeze"
freeze_schedule = "freeze:50,release:50*3"
freeze_group = "pretrained"
