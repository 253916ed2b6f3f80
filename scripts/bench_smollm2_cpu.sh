#!/usr/bin/env bash
# Issue 29's CPU rows: SmolLM2-135M dense against the 81.5M compressed models people get (the allocated low-rank
# and Kronecker whole-block plans of results/plans, uniform rank 140, the (512,576)x(3,1) MLP shape), fp32:
# training, prefill and generation at batch 1 and 16, eager; then dense vs the low-rank models compiled.
# Random weights of the real shapes (speed does not depend on the values). Run it on an idle machine:
#     bash scripts/bench_smollm2_cpu.sh          # ~25 minutes on 2 cores; writes results/bench_cpu_smollm2*
set -euo pipefail
cd "$(dirname "$0")/.."
P=${PYTHON:-.venv/bin/python}
OUT=${OUT:-results}
plans=results/plans/smollm2_81M_lowrank_blocks.json,results/plans/smollm2_81M_kron_blocks.json
{
  echo "# $(date -u +%F) $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; bash scripts/bench_smollm2_cpu.sh"
  echo "\$ python bench.py --mode models --family smollm2 --variants 2,3 --plans_from $plans --rounds 3"
  $P bench.py --mode models --family smollm2 --variants 2,3 --plans_from "$plans" --rounds 3 \
      --json "$OUT/bench_cpu_smollm2.json" --force
  echo "\$ python bench.py --mode models --family smollm2 --variants 3 --plans_from ${plans%%,*} --rounds 3 --compile"
  $P bench.py --mode models --family smollm2 --variants 3 --plans_from "${plans%%,*}" --rounds 3 --compile \
      --json "$OUT/bench_cpu_smollm2_compiled.json" --force
} 2>&1 | tee "$OUT/bench_cpu_smollm2.txt"
