"""
Freezing schedules from one (h/4, d)x(4,1) vl_norm decomposition, --steps iterations each: no freezing;
the pretrained weights frozen for the first third then released; three freeze/release cycles; and
only the Kronecker factors trained throughout.

    python experiments/freezing.py            # ~5 minutes on a 2-core CPU
"""


from common import Experiment, evals, parser, teacher_dims


def main():
    args = parser(__doc__, steps=150).parse_args()
    ex = Experiment("freezing", args)
    teacher = ex.teacher()
    d, h = teacher_dims(teacher)
    ckpt, _ = ex.decompose(teacher, "krony", "--factors", "1", "--shape", f"{h // 4}x{d}", "--init", "vl_norm")
    n = args.steps
    schedules = [("no freezing", ""), (f"freeze {n // 3}, then release", f"freeze:{n // 3}"),
                 (f"(freeze {n // 6}, release {n // 6}) x3", f"freeze:{n // 6},release:{n // 6}*3"),
                 ("factors only (always frozen)", f"freeze:{n}")]
    runs, rows = [], []
    for i, (label, sched) in enumerate(schedules):
        run = ex.run_dir(f"schedule_{i}")
        ex.run("train.py", *ex.base, f"--init_from={ckpt}", f"--out_dir={run}", f"--max_iters={n}",
               f"--freeze_schedule={sched}")
        e = evals(run)
        rows.append((label, sched or "-", e[0]["val_loss"], min(r["val_loss"] for r in e), e[-1]["val_loss"]))
        runs.append(run)
    ex.report(f"Freezing schedules, ({h // 4},{d})x(4,1) vl_norm, {n} steps",
              "'freeze' freezes the pretrained weights (attention, embeddings, norms, biases); the Kronecker "
              "factors always train.",
              ["schedule", "freeze_schedule", "val loss at start", "best val loss", f"val loss after {n} steps"],
              rows, runs, [r[0] for r in rows])


if __name__ == "__main__":
    main()
