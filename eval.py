"""
Evaluate any models side by side: the general-ability suite, validation loss on a prepared dataset, and
perplexity on the standard benchmarks through Hugging Face `datasets` (or local text files).

    python eval.py --suite general --models smollm2-135m,out-81M --json general.json --md general.md
    python eval.py --models out-demo/dense,out-demo/krony --data shakespeare_char
    python eval.py --models gpt2,distilgpt2,out-krony-vl --datasets wikitext103,wikitext2,lambada
    python eval.py --models out-krony-vl/best.pt --datasets file:my_test.txt --stride 512 --start_token

Models: checkpoints, training out_dirs, Hugging Face directories, hub names, smollm2-135m.
--suite general (kronygpt/evaluation.py): per model, the fixed validation loss on Shakespeare (in-domain),
Milton and the Python language reference (never trained on), the loss and KL(teacher || student) on held-out
text sampled from --teacher, and the fact probe's accuracy (data/facts). Prepare its sets first:
    python data/shakespeare/prepare.py --tokenizer=smollm2-135m; python data/milton/prepare.py --tokenizer=...;
    python data/pydoc/prepare.py --tokenizer=...; python data/teacher/prepare.py --model smollm2-135m
Benchmarks (hub name, config, split): wikitext103, wikitext2 (tokenised, not raw), lambada, ptb, 1bw;
`file:PATH` reads a local .txt (whole file) or .jsonl ('text' field).
Benchmark protocol (Krony-PT's, the default): the split's texts joined with "\\n\\n" into one stream, tokenised
by each model's own tokenizer, cut into non-overlapping block_size windows; perplexity = exp(mean loss per
token). --stride S < block_size slides the window by S and scores only the last S predictions of each (rolling
windows, as lm-evaluation-harness's loglikelihood_rolling); --start_token puts the document-start token in front
as lm-evaluation-harness does. Both move a compressed model's perplexity far more than a dense model's: state
the protocol with every figure (it is printed with the table). --data uses the trainer's fixed validation set
(the first eval_tokens tokens of val.bin), so the loss is the number train.py prints.
"""

import json
import math
import sys
from dataclasses import dataclass

from configurator import configure, run_cli
from kronygpt.checkpoint import check_output_file, load_model, refuse_clashes
from kronygpt.data_utils import TokenData, check_data_fits, dataset_dir
from kronygpt.errors import UserError
from kronygpt.evaluation import (FACTS, SUITE_COLUMNS, general_row, load_facts, load_text, markdown_table, stream_loss,
                                 suite_datasets, with_start_token)
from kronygpt.runtime import setup_runtime
from kronygpt.tokenizer import get_tokenizer
from kronygpt.trainer import evaluate


@dataclass
class EvalConfig:
    models: str = ""                # comma-separated: hub names, HF dirs, checkpoints, out_dirs, smollm2-135m
    suite: str = ""                 # 'general': the general-ability suite (see above)
    teacher: str = "smollm2-135m"   # --suite general: the dense model whose samples and KL the suite measures against
    suite_data: str = ""            # --suite general: override its sets, e.g. 'milton=milton_smollm2-135m'
    facts: str = FACTS              # --suite general: the fact probe's items ('' leaves the probe out)
    datasets: str = ""              # comma-separated benchmarks (see above) or file:PATH
    data: str = ""                  # a prepared dataset (data/<name> or a path): its fixed validation loss
    eval_tokens: int = 131072       # size of each fixed validation set (--data and the suite), as train.py's
    block_size: int = 1024          # window length (capped at each model's)
    stride: int = 0                 # benchmarks: rolling windows scoring the last STRIDE tokens of each; 0 = none
    start_token: bool = False       # benchmarks: put the document-start token in front (lm-evaluation-harness)
    max_tokens: int = 0             # evaluate only the first N tokens of each benchmark (quick checks); 0 = all
    batch_size: int = 8             # sequences per forward pass
    device: str = "auto"            # 'auto' (cuda if available), 'cpu', 'cuda', 'cuda:N'
    dtype: str = "auto"             # float32, bfloat16 or float16 autocast ('auto': bf16 on CUDA)
    json: str = ""                  # also write the rows here
    md: str = ""                    # also write a markdown table here
    force: bool = False             # overwrite --json and --md

    def validate(self):
        if not self.models:
            raise UserError("give --models (comma-separated checkpoints, run directories, HF directories or names)")
        if not (self.datasets or self.data or self.suite):
            raise UserError("give --suite general, --datasets (benchmarks) and/or --data (a prepared dataset)")
        if self.suite not in ("", "general"):
            raise UserError(f"--suite must be 'general', got {self.suite!r}")
        for name in ("block_size", "batch_size", "eval_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.stride < 0 or self.max_tokens < 0:
            raise UserError("--stride and --max_tokens must be >= 0")


def benchmark_row(model, texts, args, rt):
    """{benchmark: perplexity, benchmark_tokens: scored tokens} of one model under the stated protocol."""
    if not texts:
        return {}
    tok, row = get_tokenizer(model.tokenizer_name), {}
    for d, text in texts.items():
        ids = tok.encode(text)[:args.max_tokens or None]
        if args.start_token:
            ids = with_start_token(ids, tok)
        if len(ids) < 2:
            raise UserError(f"{d} has {len(ids)} tokens; it needs at least 2 to score one")
        loss, n = stream_loss(model, ids, min(args.block_size, model.config.block_size), args.stride,
                              args.batch_size, rt.device, rt.ctx)
        row[d], row[f"{d}_tokens"] = math.exp(loss), n
    return row


def main():
    args = configure(EvalConfig(), sys.argv[1:], verbose=False, doc=__doc__)
    refuse_clashes([("--json", args.json), ("--md", args.md)],
                   [("--models", m) for m in args.models.split(",") if m] + [("--teacher", args.teacher)])
    for path in (args.json, args.md):
        if path:
            check_output_file(path, args.force)
    rt = setup_runtime(args.device, args.dtype)
    names = [d for d in args.datasets.split(",") if d]
    texts = {d: load_text(d) for d in names}
    teacher = suite = facts = None
    if args.suite:
        teacher = load_model(args.teacher, device=rt.device).eval()
        suite = suite_datasets(args.teacher, teacher.tokenizer_name, args.suite_data)
        facts = load_facts(args.facts) if args.facts else None
    rows = []
    for spec in [m for m in args.models.split(",") if m]:
        model = load_model(spec, device=rt.device).eval()
        row = {"model": spec, "params": model.param_counts()["total"]}
        if args.data:
            data = TokenData(dataset_dir(args.data))
            check_data_fits(data, model, args.data)
            T = min(args.block_size, model.config.block_size)
            row["val_loss"] = evaluate(model, data.val_windows(T, args.eval_tokens), rt, args.batch_size)
        if suite:
            row.update(general_row(model, teacher, suite, facts, args.block_size, args.eval_tokens, args.batch_size,
                                   rt))
        row.update(benchmark_row(model, texts, args, rt))
        rows.append(row)
        print(f"evaluated {spec}", file=sys.stderr, flush=True)
        del model
    report(rows, names, suite, args)
    return rows


def report(rows, names, suite, args):
    protocol = (f"{'rolling windows, stride ' + str(args.stride) if args.stride else 'non-overlapping windows'} of "
                f"{args.block_size} tokens{', a start token in front' if args.start_token else ''}, texts joined with "
                f"blank lines, perplexity per token of each model's own tokenizer"
                + (f", first {args.max_tokens:,} tokens only" if args.max_tokens else ""))
    lines = []
    if suite:
        lines += [f"general suite: fixed validation sets of {args.eval_tokens:,} tokens in {args.block_size}-token "
                  f"windows ({', '.join(f'{c}: {n}' for c, n in suite.items())}); teacher {args.teacher}; fact probe "
                  + (f"{len(load_facts(args.facts))} items" if args.facts else "left out"), "",
                  markdown_table(rows), ""]
    cols = (["val_loss"] if args.data else []) + names
    if cols:
        if names:
            lines.append(f"protocol: {protocol}")
        if args.data:
            lines.append(f"val_loss: mean cross-entropy on the fixed validation set of {args.data} "
                         f"({args.eval_tokens:,} tokens)")
        lines.append(f"{'model':<40} {'params':>13} " + " ".join(f"{c:>12}" for c in cols))
        lines += [f"{r['model'][-40:]:<40} {r['params']:>13,} " + " ".join(
            f"{r[c]:>12.4f}" if c == "val_loss" else f"{r[c]:>12.2f}" for c in cols) for r in rows]
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(protocol=protocol, suite=suite, columns=list(SUITE_COLUMNS) if suite else cols, rows=rows),
                      f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    run_cli(main)
