#!/bin/bash
# The general-ability study (issue 32) from a fresh machine: its datasets, then every row of
# experiments/general.py. Resumable at every step: rerun the same command after an interruption.
#     nohup scripts/general_study.sh > general.log 2>&1 &
set -e
cd "$(dirname "$0")/.."
P=${PYTHON:-.venv/bin/python}
export WANDB_MODE=${WANDB_MODE:-disabled} HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
[ -f data/shakespeare_smollm2-135m/meta.json ] || $P data/shakespeare/prepare.py --tokenizer=smollm2-135m
[ -f data/milton_smollm2-135m/meta.json ] || $P data/milton/prepare.py --tokenizer=smollm2-135m
[ -f data/pydoc_smollm2-135m/meta.json ] || $P data/pydoc/prepare.py --tokenizer=smollm2-135m
# the teacher text ships with the repo (data/teacher/prepare.py's corpus, as this command samples it; ~20 min)
[ -f data/teacher_smollm2-135m/meta.json ] || tar -xzf data/teacher/teacher_smollm2-135m.tgz -C data \
    || $P data/teacher/prepare.py --model smollm2-135m --tokens 160000
$P experiments/general.py --rows=dense_zeroshot,ce_shakespeare,kd_mix,kd_teacher,dense_ft,kd_shakespeare,kd_mix_tcal,tcal_zeroshot,start_zeroshot,ttcal_zeroshot,kd_mix_ttcal \
    --lrs=1e-5,3e-5,1e-4
