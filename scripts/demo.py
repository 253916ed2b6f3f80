"""
The compress-and-recover demo on the embedded corpus (Shakespeare, character level), CPU, < 10 minutes:
train a small dense GPT, decompose its MLPs into Kronecker factors (half the parameters), recover by
training, sample. Every step is an ordinary command of this repo, echoed before it runs.

    python scripts/demo.py          (what `make demo` runs)
"""

import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
OUT = "out-demo"
STEPS = [
    ["data/shakespeare_char/prepare.py"],
    ["train.py", "config/demo_dense.py"],
    ["kron_decomp.py", "--model", f"{OUT}/dense/best.pt", "--factors", "1", "--shape", "256x256",
     "--init", "vl_norm", "--out", f"{OUT}/krony_init.pt"],
    ["train.py", "config/demo_krony.py"],
    ["sample.py", f"--init_from={OUT}/krony", "--num_samples=1", "--max_new_tokens=400", "--start=ROMEO:"],
]


def evals(run):
    with open(os.path.join(REPO, OUT, run, "log.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    start = next(r for r in recs if r["type"] == "start")
    return start, [r for r in recs if r["type"] == "eval"]


def main():
    os.chdir(REPO)
    shutil.rmtree(OUT, ignore_errors=True)
    t0 = time.time()
    for step in STEPS:
        print(f"\n$ python {' '.join(step)}", flush=True)
        if step[0].endswith("prepare.py") and os.path.isfile(os.path.join(REPO, "data/shakespeare_char/meta.json")):
            print("(already prepared: data/shakespeare_char/)")  # the same bytes every time
            continue
        subprocess.run([PY, *step], check=True)
    dense_start, dense = evals("dense")
    krony_start, krony = evals("krony")
    rows = [("dense GPT (trained from scratch)", dense_start["params"]["total"], dense[-1]["val_loss"]),
            ("Kronecker, right after decomposition", krony_start["params"]["total"], krony[0]["val_loss"]),
            (f"Kronecker, after {krony[-1]['iter']} recovery steps", krony_start["params"]["total"],
             krony[-1]["val_loss"])]
    print(f"\nSummary (validation: first {dense_start['val_tokens']:,} characters of the held-out works)")
    print(f"{'model':<40} {'parameters':>12} {'val loss':>9}")
    for name, params, loss in rows:
        print(f"{name:<40} {params:>12,} {loss:>9.4f}")
    print(f"demo finished in {time.time() - t0:.0f}s; checkpoints in {OUT}/")


if __name__ == "__main__":
    main()
