"""
The flagship study: SmolLM2-135M compressed to <= 81.5M parameters and recovered on Shakespeare within
300 steps, against equal-size baselines, evaluated on held-out Shakespeare and on Milton (never trained on).

Rows (all compressed rows within 1% of one another in parameters; same data order, same evaluation):
  dense_zeroshot  the dense model, no training: the bar to beat
  dense_ft        the dense model fine-tuned for the same steps: the ceiling, for context
  pipeline        the repo's best pipeline: a calibrated low-rank start (--init fisher: inputs whitened by their
                  second moment, outputs by the loss gradients'), each matrix its own rank under the budget
                  (--allocate, in predicted-loss units), layer-wise fitting of every MLP to the dense MLP on real
                  activations, then training
  pipeline_blocks the pipeline with the budget allocated over whole blocks (--scope blocks: attention's
                  matrices get ranks too, MLPs keep more), fitted block by block, then training
  today           the pipeline as it was: vl_norm (512,576)x(3,1), plain training
  truncate        layer truncation: keep 15 of the 30 blocks (the better of 'even' and 'spread:15' at step 0)
  svd             plain truncated SVD at the same size (rank 140 per MLP matrix, Frobenius-optimal), trained

Equal tuning effort: every trained row gets the same learning-rate sweep (--lrs: peak rate of the
pretrained weights; new factors get 5x; every schedule is warmup + cosine to a tenth) at --sweep_steps,
extended one rate at a time while the best is at an end of the rates tried, picks the rate with the lowest
Shakespeare validation loss, then trains --steps with it. The sweep selects
on the same fixed validation set that the table reports, for every row alike.

The script is resumable: finished runs are reused, an interrupted run continues from its last.pt, and the
report is rewritten from whatever has finished. Run it in the background and re-run the same command.

    python data/shakespeare/prepare.py --tokenizer=smollm2-135m
    python data/milton/prepare.py --tokenizer=smollm2-135m
    nohup python experiments/flagship.py > flagship.log 2>&1 &        # CPU, 4 x 256 tokens per step
    python experiments/flagship.py --report_only                      # rewrite the report from finished runs
    python experiments/flagship.py --gpu                              # one GPU: 16 x 1024 tokens per step
"""

import json
import os
import sys

from common import PROMPTS, REPO, Study, evals, finished, fmt, median_tok_s, parser, plot_runs, read_log

ALL_ROWS = ("dense_zeroshot", "dense_ft", "pipeline", "pipeline_blocks", "today", "truncate", "svd")


class Flagship(Study):
    NAME, ROWS = "flagship", ALL_ROWS

    # -- starting points: a checkpoint (or hub name) each row trains from

    def start(self, key):
        ex, a = self.ex, self.args
        if key == "today":
            return self.today()
        if key in ("dense_zeroshot", "dense_ft"):
            return self.model
        path = os.path.join(ex.out, key, "start.pt")
        report = os.path.join(ex.out, key, "start.json")
        decomposed = key == "svd"  # written by kron_decomp, whose report comes last
        if os.path.isfile(path) and (not decomposed or os.path.isfile(report)):
            return path
        if decomposed:  # one without the other (an interrupted decomposition, or logs restored without
            for leftover in (path, report):  # their checkpoint): kron_decomp redoes both
                if os.path.isfile(leftover):
                    os.remove(leftover)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if key == "svd":
            ex.run("kron_decomp.py", "--model", self.model, "--out", path, "--init", "vl", "--shape", "lowrank",
                   "--target_params", str(self.target()))
        elif key == "truncate":
            return self.start_truncate(path)
        elif key in ("pipeline", "pipeline_blocks"):
            decomp = os.path.join(ex.out, key, "decomposed.pt")
            if not os.path.isfile(os.path.splitext(decomp)[0] + ".json"):
                scope = ["--scope", "blocks"] if key == "pipeline_blocks" else []
                ex.run("kron_decomp.py", "--model", self.model, "--out", decomp, "--init", "fisher",
                       "--target_params", str(self.target()), "--allocate", *scope, f"--calib={a.data}", *self.calib)
            fit_dir = os.path.join(ex.out, key, "fit")
            ex.run("train_distillation.py", *self.scale, "--mode=layerwise", f"--teacher={self.model}",
                   f"--init_from={decomp}", "--max_iters=0", f"--out_dir={fit_dir}", *self.lw)
            os.replace(os.path.join(fit_dir, "fitted.pt"), path)
        return path

    def start_truncate(self, path):
        """Truncation keeps 15 of 30 blocks; 'even' or 'spread', whichever starts lower (one eval each)."""
        ex, best = self.ex, None
        n_layer = self.dims()["n_layer"]
        for pick in ("even", f"spread:{n_layer // 2}"):
            cand = os.path.join(ex.out, "truncate", f"{pick.split(':')[0]}.pt")
            run = os.path.join(ex.out, "truncate", f"zeroshot_{pick.split(':')[0]}")
            if not os.path.isfile(cand):
                ex.run("kron_decomp.py", "--model", self.model, "--out", cand, "--keep_blocks", pick)
            if not finished(run, 0):
                ex.run("train.py", *self.scale, f"--init_from={cand}", f"--out_dir={run}", "--eval_only=True")
            loss = evals(run)[0]["val_loss"]
            if best is None or loss < best[0]:
                best = (loss, cand)
        os.link(best[1], path)
        return path

    # -- rows

    def run_row(self, key):
        if self.row_done(key):
            return
        init = self.start(key)
        run = os.path.join(self.ex.out, key, "run")
        info = dict(key=key, init=init)
        if key == "dense_zeroshot":
            if not finished(run, 0):
                self.ex.run("train.py", *self.scale, f"--init_from={init}", f"--out_dir={run}", "--eval_only=True")
        else:
            lr, info["sweep"] = (self.given_lr[key], {}) if key in self.given_lr else self.sweep(key, init)
            info["lr"] = lr
            self.train(init, self.args.steps, lr, run, interval=max(1, self.args.steps // 12))
        info["completions"] = self.completions(key, init if key == "dense_zeroshot" else os.path.join(run, "last.pt"))
        with open(os.path.join(self.ex.out, key, "row.json"), "w") as f:
            json.dump(info, f, indent=1)
        self.ex.keep(os.path.join(self.ex.out, key))

    # -- the report

    def report(self):
        ex, a = self.ex, self.args
        dense_run = os.path.join(ex.out, "dense_zeroshot", "run")
        if not evals(dense_run):
            print("nothing to report yet")
            return
        dense = evals(dense_run)[0]
        milton_key = next((k for k in dense if k.startswith("val_loss_")), None)
        rows, runs, labels, completions = [], [], [], []
        for key in a.rows.split(","):
            run = os.path.join(ex.out, key, "run")
            e = evals(run)
            if not e or (key != "dense_zeroshot" and not finished(run, a.steps)):
                rows.append((key, "running or not run yet", *["-"] * 9))
                continue
            start = next(r for r in read_log(run) if r["type"] == "start")
            info_path = os.path.join(ex.out, key, "row.json")
            info = json.load(open(info_path)) if os.path.isfile(info_path) else {}
            below = next((r["iter"] for r in e if r["val_loss"] < dense["val_loss"]), None)
            prep = self.prep_seconds(key)
            trained = key != "dense_zeroshot"
            fit = self.fit_record(key)
            at_start = (f"{fit['val_loss_before']:.4f} -> fitted {fit['val_loss_after']:.4f}" if fit
                        else e[0]["val_loss"])
            rows.append((key, f"{info['lr']:g}" if "lr" in info else "-", start["params"]["total"], e[-1]["tokens"],
                         f"{e[-1]['train_seconds'] + prep:,.0f}" + (f" (fit {prep:.0f})" if prep else ""),
                         median_tok_s(run) if trained else "-", at_start, e[-1]["val_loss"],
                         e[-1].get(milton_key, "-"), ("never" if below is None else below) if trained else "-",
                         " / ".join(f"{lr}: {v:.3f}" for lr, v in info.get("sweep", {}).items())
                         or ("none: rate given (--given_lr)" if "lr" in info else "-")))
            if trained:
                runs.append(run)
                labels.append(key)
            completions.append((key, info.get("completions", {})))
        header = ["row", "lr", "parameters", "tokens", "train seconds", "train tok/s", "Shakespeare val at the start",
                  f"Shakespeare val after {a.steps}", "Milton val", "first step below dense zero-shot",
                  f"sweep ({a.sweep_steps} steps)"]
        intro = (f"Dense SmolLM2-135M zero-shot: Shakespeare val {dense['val_loss']:.4f}, Milton "
                 f"{dense.get(milton_key, float('nan')):.4f}. " + self.scale_note())
        md = ex.report(f"SmolLM2-135M at <= 81.5M: {a.steps} steps against equal-size baselines", intro, header, rows,
                       runs, labels, x="tokens", hline=(dense["val_loss"], "dense zero-shot"))
        if milton_key and runs:
            plot_runs(runs, os.path.join(ex.report_dir, f"{ex.name}_milton.png"), labels, milton_key, "tokens",
                      "Milton (never trained on)", (dense[milton_key], "dense zero-shot"))
        with open(md, "a") as f:
            f.write(f"![Milton]({ex.name}_milton.png)\n\n## Greedy completions ({a.complete_tokens} tokens)\n\n")
            f.write("| row | " + " | ".join(f"`{p}`" for p in PROMPTS) + " |\n|" + "---|" * (len(PROMPTS) + 1) + "\n")
            for key, comp in completions:
                f.write(f"| {key} | " + " | ".join(fmt(comp.get(p, "-")).replace("|", "/").replace("\n", " ")
                                                   for p in PROMPTS) + " |\n")
            log, commands = os.path.join(ex.out, "commands.log"), ""  # the commands, not their output
            if os.path.isfile(log):  # absent when every row was reused
                with open(log) as lines:
                    commands = "".join(line for line in lines if line.startswith("$ "))
            f.write("\n## Commands\n\n```\n" + commands.replace(sys.executable, "python").replace(REPO + "/", "")
                    + "```\n")

def main():
    p = parser(__doc__, steps=300)
    p.add_argument("--sweep_steps", type=int, default=60, help="length of each learning-rate sweep run")
    p.add_argument("--lrs", default="1e-4,3e-4,1e-3", help="peak learning rates swept (new factors get 5x)")
    p.add_argument("--rows", default=",".join(ALL_ROWS), help="rows to run, in order")
    p.add_argument("--given_lr", default="", help="ROW=RATE,...: train these rows at RATE without a sweep "
                   "(less tuning than the others; the report says so)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--eval_data", help="the held-out second corpus (default milton_smollm2-135m; --smoke: --data)")
    p.add_argument("--complete_tokens", type=int, default=12)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--report_only", action="store_true")
    args = p.parse_args()
    args.data = args.data or "shakespeare_smollm2-135m"
    args.eval_data = args.eval_data or (args.data if args.smoke else "milton_smollm2-135m")
    fs = Flagship(args)
    if not args.report_only:
        if not args.smoke:
            fs.ex.require(args.data, *args.eval_data.split(","))
        fs.run_rows(args.rows)
    fs.report()


if __name__ == "__main__":
    main()
