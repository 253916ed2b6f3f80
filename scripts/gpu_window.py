"""
The speed plan for one lent GPU window (scripts/gpu_check.sh window): rows most important first, each its own
bench.py process writing its own JSON in --out, so that a call stopped by its time limit keeps every finished
row; a finished row is skipped on the next call; the remaining plan is printed after each row; a row is not
started when its expected seconds exceed the time left (--budget).

    python scripts/gpu_window.py --out gpu-results --budget 540        # one device call (the limit is 600 s)
    python scripts/gpu_window.py --out gpu-results --budget 540        # the next call: what is left
    python scripts/gpu_window.py --smoke --out /tmp/window --budget 600   # the whole plan on the CPU, tiny sizes

Rows (bf16, 16 x 1024 tokens; train = forward + backward + fused AdamW, prefill, greedy generation at batch 1
and 16; every ratio to the dense row of its family measured first in the same call or an earlier one):
  1. eager (seconds each): dense SmolLM2-135M; compress.py's default at 0.6x and 0.8x (lowrank_width: low-rank
     attention and narrowed dense MLPs, ranks in multiples of 32 so that blocks share GEMM shapes); the allocated
     low rank alone at 0.6x and 0.8x; width pruning at 0.8x and 0.6x (a narrower dense MLP); dense GPT-2 124M and
     its 81M Kronecker model (768,768)x(4,1)
  2. compiled, the same rows: regional compilation (--compile_blocks: each distinct block compiled once, the
     decoding step compiled whole) with inductor's cache in <out>/inductor, which the next call brings back so that
     it does not compile again. Expected seconds (EXPECTED) come from compile times measured on the CPU
     (results/gpu_plan.md) and the H200 run of 2026-12-04; a row that does not fit the time left waits for the next
     call.
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLANS = os.path.join(REPO, "results", "plans")
SMOLLM2 = ["--family", "smollm2"]
GPT2 = ["--family", "gpt2"]
# name: (family, the row's own bench options; '' = the family's dense row)
ROWS = {  # in order of importance: compress.py's default at 0.6x and 0.8x, GPT-2's 81M, then low rank alone and width
    "smollm2_dense": (SMOLLM2, []),
    "smollm2_mix060": (SMOLLM2, ["--plans_from", f"smollm2_mix060={PLANS}/smollm2_0.6_lowrank_width_r32.json"]),
    "smollm2_mix080": (SMOLLM2, ["--plans_from", f"smollm2_mix080={PLANS}/smollm2_0.8_lowrank_width_r32.json"]),
    "gpt2_dense": (GPT2, []),
    "gpt2_krony81": (GPT2, ["--variants", "0,1"]),
    "smollm2_060": (SMOLLM2, ["--plans_from", f"smollm2_060={PLANS}/smollm2_0.6_r32.json"]),
    "smollm2_080": (SMOLLM2, ["--plans_from", f"smollm2_080={PLANS}/smollm2_0.8_r32.json"]),
    "smollm2_width060": (SMOLLM2, ["--plans_from", f"smollm2_width060={PLANS}/smollm2_0.6_width.json"]),
    "smollm2_width080": (SMOLLM2, ["--plans_from", f"smollm2_width080={PLANS}/smollm2_0.8_width.json"]),
}
ORDER = [(name, False) for name in ROWS] + [(name, True) for name in ROWS]
# expected wall seconds of a row's process on an H100/H200 (startup, warm-up, timing; compiled rows: compilation
# from a cold cache, the dominant part; a warm cache takes about a tenth)
EXPECTED = {False: 45, True: 240}


def row_file(out, name, compiled):
    return os.path.join(out, f"{name}{'_compiled' if compiled else ''}.json")


def bench_argv(args, name, compiled):
    family, own = ROWS[name]
    dense = row_file(args.out, f"{family[1]}_dense", compiled)
    argv = [sys.executable, os.path.join(REPO, "bench.py"), "--mode", "models", *family, "--force",
            "--json", row_file(args.out, name, compiled)]
    if own and "--variants" not in own:
        argv += ["--variants", "0"]
    argv += own
    if own and os.path.isfile(dense):
        argv += ["--dense_from", dense]
    if compiled:
        argv += ["--compile", "--compile_blocks", "--kron_impl", "measured"]
    if args.smoke:  # the machinery of every row on the CPU: tiny shapes stand in for the families'
        if "--plans_from" in argv:
            i = argv.index("--plans_from")
            del argv[i:i + 2]
        argv += ["--smoke", "--device", "cpu", "--rounds", "1"]
    else:
        argv += ["--dtype", "bfloat16", "--batch_size", "16", "--seq_len", "1024", "--gen_batches", "1,16"]
    return argv


def remaining(args):
    return [(n, c) for n, c in ORDER if not os.path.isfile(row_file(args.out, n, c))]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu-results", help="where each row's JSON (and inductor's cache) goes")
    p.add_argument("--budget", type=float, default=540, help="seconds this call may take")
    p.add_argument("--rows", default="", help="only these rows (comma-separated names; default: all, in order)")
    p.add_argument("--eager_only", action="store_true", help="leave the compiled rows for a later call")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: the plan's machinery, no figures")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": os.path.abspath(os.path.join(args.out, "inductor")),
           "PYTHONUNBUFFERED": "1"}
    wanted = set(filter(None, args.rows.split(","))) or set(ROWS)
    unknown = wanted - set(ROWS)
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; rows: {', '.join(ROWS)}")
    t0 = time.time()
    for name, compiled in remaining(args):
        if name not in wanted or (compiled and args.eager_only):
            continue
        left = args.budget - (time.time() - t0)
        expected = 5 if args.smoke else EXPECTED[compiled]
        if expected > left:
            print(f"-- {name}{' compiled' if compiled else ''}: {expected}s expected, {left:.0f}s left: next call",
                  flush=True)
            continue
        print(f"== {name}{' compiled' if compiled else ''} ({left:.0f}s left)", flush=True)
        t = time.time()
        try:
            r = subprocess.run(bench_argv(args, name, compiled), cwd=REPO, env=env, timeout=max(10, left),
                               capture_output=True, text=True)
            ok = r.returncode == 0
            tail = (r.stdout + r.stderr).strip().splitlines()[-4:]
        except subprocess.TimeoutExpired:
            ok, tail = False, ["timed out"]
        print("\n".join(tail), flush=True)
        print(f"   {'done' if ok else 'FAILED'} in {time.time() - t:.0f}s", flush=True)
        with open(os.path.join(args.out, "window.log"), "a") as f:
            f.write(json.dumps(dict(row=name, compiled=compiled, ok=ok, seconds=time.time() - t,
                                    date=time.strftime("%Y-%m-%d %H:%M"))) + "\n")
    left = remaining(args)
    print("remaining plan: " + (", ".join(f"{n}{' (compiled)' if c else ''}" for n, c in left) or "nothing: done"))


if __name__ == "__main__":
    main()
