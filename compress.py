"""
Compress a pretrained language model in one command: calibrate, decompose, fit, recover, evaluate, export, and
report. Resumable: run the same command again after a stop and it continues from the last finished stage.

    python compress.py --model smollm2-135m --size 0.8 --out out-compress/smollm2-108M
    python compress.py config/compress_smollm2.py                # the same, from a settings file
    python compress.py --model gpt2 --size distilgpt2 --out out-compress/gpt2-82M --data shakespeare
    python compress.py --model smollm2-135m --size 0.6 --method width_obs --out out-compress/width-81M
    python compress.py config/compress_demo.py                  # make demo: a small run, about 10 minutes on 2 cores

What each stage runs, with the command it stands for, is in kronygpt/pipeline.py; the five-command route
(prepare, kron_decomp, train_distillation --mode=layerwise, train_distillation, eval, export) is in the README.
Writes <out>/report.md (the general-suite table of the dense, compressed and equal-size layer-drop models, the
recovery's loss curve, a greedy answer from each) and the Hugging Face export <out>/hf.
"""

import sys

from configurator import configure, run_cli
from kronygpt.pipeline import CompressConfig, compress


def main(argv=None):
    cfg = configure(CompressConfig(), sys.argv[1:] if argv is None else argv, doc=__doc__)
    report, rows, answers, hf = compress(cfg)
    print(open(report).read())
    print(f"report: {report}\nexport: {hf}")


if __name__ == "__main__":
    run_cli(main)
