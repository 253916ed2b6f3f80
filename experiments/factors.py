"""
1, 2 and 4 Kronecker factors at an equal parameter count: (h/4, d)x(4,1), (h/8, d)x(8,1) x2 and
(h/16, d)x(16,1) x4 all keep the dense rank and have the same number of parameters. vl_norm init,
then --steps iterations each. Reports losses and training speed.

    python experiments/factors.py             # ~5 minutes on a 2-core CPU
"""


from common import Experiment, evals, median_tok_s, parser, start_record, teacher_dims


def main():
    args = parser(__doc__, steps=150).parse_args()
    ex = Experiment("factors", args)
    teacher = ex.teacher()
    d, h = teacher_dims(teacher)
    runs, rows, labels = [], [], []
    for f in (1, 2, 4):
        shape = f"{h // (4 * f)}x{d}"
        ckpt, rep = ex.decompose(teacher, f"factors_{f}", "--factors", str(f), "--shape", shape, "--init", "vl_norm")
        run = ex.run_dir(f"factors_{f}")
        ex.run("train.py", *ex.base, f"--init_from={ckpt}", f"--out_dir={run}", f"--max_iters={args.steps}")
        e = evals(run)
        rows.append((f, rep["matrices"][0]["shape"], start_record(run)["params"]["total"], e[0]["val_loss"],
                     e[-1]["val_loss"], median_tok_s(run)))
        runs.append(run)
        labels.append(f"{f} factor{'s' if f > 1 else ''} {rep['matrices'][0]['shape']}")
    ex.report(f"1, 2, 4 factors at equal parameters, {args.steps} steps",
              "Each plan keeps the dense rank; vl_norm initialisation. tok/s is the median training speed.",
              ["factors", "c_fc shape", "parameters", "val loss after decomposition",
               f"val loss after {args.steps} steps", "train tok/s"], rows, runs, labels)


if __name__ == "__main__":
    main()
