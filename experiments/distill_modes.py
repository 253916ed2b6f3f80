"""
Plain training vs distillation at an equal wall-clock budget (--seconds of training each, layer-wise
fitting time included): the student is the (h/4, d)x(4,1) vl_norm decomposition of the dense demo model,
which is also the teacher. Constant learning rate after warmup (runs stop on time, not on an iteration
count, so a cosine schedule would not end in the same place).

    python experiments/distill_modes.py       # ~10 minutes on a 2-core CPU
"""


from common import Experiment, evals, parser, teacher_dims


def main():
    args = parser(__doc__, steps=100000, seconds=120).parse_args()
    ex = Experiment("distill_modes", args)
    teacher = ex.teacher()
    d, h = teacher_dims(teacher)
    shape = (h // 4, d)
    ckpt, _ = ex.decompose(teacher, "krony", "--factors", "1", "--shape", f"{shape[0]}x{shape[1]}",
                           "--init", "vl_norm")
    budget = ["--decay_lr=False", f"--max_iters={args.steps}", f"--max_seconds={args.seconds}"]
    student = [f"--teacher={teacher}", "--init_from=teacher", f"--kron_plan=*: mlp={shape[0]}x{shape[1]}*1",
               "--kron_init=vl_norm"]
    lw = ["--layerwise_tokens=512", "--layerwise_steps=5"] if args.smoke else \
        ["--layerwise_tokens=65536", "--layerwise_steps=150"]
    interval = 2 if args.smoke else 20
    modes = [("plain training", "train.py", [f"--init_from={ckpt}"]),
             ("e2e distillation", "train_distillation.py", [*student, "--mode=e2e"]),
             ("layer-wise fit + e2e", "train_distillation.py", [*student, "--mode=layerwise", *lw]),
             ("progressive (top-down)", "train_distillation.py",
              [*student, "--mode=progressive", f"--progressive_interval={interval}"])]
    runs, rows = [], []
    for i, (label, script, extra) in enumerate(modes):
        run = ex.run_dir(f"mode_{i}")
        ex.run(script, *ex.base, *budget, *extra, f"--out_dir={run}")
        e = evals(run)
        rows.append((label, e[-1]["iter"], e[-1]["train_seconds"], e[-1]["val_loss"]))
        runs.append(run)
    teacher_val = next((r["teacher_val_loss"] for r in evals(runs[1]) if "teacher_val_loss" in r), float("nan"))
    ex.report(f"Plain training vs distillation, {args.seconds:.0f} s of training each",
              f"Student ({shape[0]},{shape[1]})x(4,1), vl_norm; teacher (the dense model) validation loss "
              f"{teacher_val:.4f}. Distillation: 0.5 CE + 0.5 T^2 KL at T=2.",
              ["mode", "iterations", "training seconds", "final val loss"], rows, runs, [r[0] for r in rows],
              x="seconds", hline=(teacher_val, "dense teacher"))


if __name__ == "__main__":
    main()
