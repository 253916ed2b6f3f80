"""
Initialisations compared: decompose the dense demo model with vl, vl_norm, prune and random at one shape
(h, d/2)x(1,2) (the pruning family: Krony-PT's 96M shape), then train each for --steps iterations.
Reports the validation loss right after decomposition and after training.

    python experiments/inits.py               # ~5 minutes on a 2-core CPU (plus the teacher if missing)
"""


from common import Experiment, evals, parser, start_record, teacher_dims

INITS = ("vl", "vl_norm", "prune", "random")


def main():
    args = parser(__doc__, steps=150).parse_args()
    ex = Experiment("inits", args)
    teacher = ex.teacher()
    d, h = teacher_dims(teacher)
    shape = f"{h}x{d // 2}"
    runs, rows = [], []
    for init in INITS:
        ckpt, rep = ex.decompose(teacher, f"init_{init}", "--factors", "1", "--shape", shape, "--init", init)
        run = ex.run_dir(init)
        ex.run("train.py", *ex.base, f"--init_from={ckpt}", f"--out_dir={run}", f"--max_iters={args.steps}")
        e = evals(run)
        mean_err = sum(m["rel_error"] for m in rep["matrices"]) / len(rep["matrices"])
        rows.append((init, start_record(run)["params"]["total"], mean_err, e[0]["val_loss"], e[-1]["val_loss"]))
        runs.append(run)
    ex.run("train.py", *ex.base, f"--init_from={teacher}", f"--out_dir={ex.run_dir('dense')}", "--eval_only=True")
    dense = evals(ex.run_dir("dense"))[0]["val_loss"]
    ex.report(f"Initialisations, ({h},{d // 2})x(1,2), {args.steps} steps",
              f"Dense teacher: {start_record(ex.run_dir('dense'))['params']['total']:,} parameters, "
              f"validation loss {dense:.4f}. 'rel. error' is the mean ||W - W_hat|| / ||W|| over the MLP matrices.",
              ["init", "parameters", "rel. error", "val loss after decomposition",
               f"val loss after {args.steps} steps"],
              rows, runs, list(INITS), hline=(dense, "dense teacher"))


if __name__ == "__main__":
    main()
