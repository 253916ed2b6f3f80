"""
Evaluate any models side by side: validation loss on a prepared dataset, and perplexity on the standard
benchmarks through Hugging Face `datasets` (or local text files).

    python eval.py --models gpt2,distilgpt2,out-krony-vl --datasets wikitext103,wikitext2,lambada
    python eval.py --models out-demo/dense,out-demo/krony --data shakespeare_char
    python eval.py --models out-krony-vl/best.pt --datasets file:my_test.txt --stride 512 --json ppl.json

Models: hub names, Hugging Face directories, dense or Kronecker checkpoints, training out_dirs.
Benchmarks (hub name, config, split): wikitext103, wikitext2 (tokenised, not raw), lambada, ptb, 1bw;
`file:PATH` reads a local .txt (whole file) or .jsonl ('text' field).
Protocol (Krony-PT's, the default): the split's texts joined with "\\n\\n" into one stream, tokenised by
each model's own tokenizer, cut into non-overlapping block_size windows; every window scores its
block_size next-token predictions; perplexity = exp(mean loss per token). --stride S < block_size
slides the window by S and scores only the last S predictions of each (the first window scores all),
so every token but the first is predicted with at least block_size - S tokens of context.
--data uses the trainer's fixed validation set (the first eval_tokens tokens of val.bin), so the loss
is the number train.py prints.
"""

import json
import math
import os
import sys
from dataclasses import dataclass

import torch

from kronygpt.checkpoint import check_output_file, load_model
from configurator import configure, run_cli
from kronygpt.data_utils import TokenData, check_data_fits, dataset_dir
from kronygpt.errors import UserError
from kronygpt.runtime import setup_runtime
from kronygpt.tokenizer import get_tokenizer
from kronygpt.trainer import evaluate

BENCHMARKS = {  # name -> (hub dataset, config, split, text field)
    "wikitext103": ("wikitext", "wikitext-103-v1", "test", "text"),
    "wikitext2": ("wikitext", "wikitext-2-v1", "test", "text"),
    "lambada": ("lambada", None, "test", "text"),
    "ptb": ("ptb_text_only", "penn_treebank", "test", "sentence"),
    "1bw": ("lm1b", None, "test", "text"),
}


def load_text(name):
    """The evaluation text of a benchmark name or `file:PATH`, joined into one stream."""
    if name.startswith("file:") or os.path.isfile(name):
        path = name[5:] if name.startswith("file:") else name
        if not os.path.isfile(path):
            raise UserError(f"{path} does not exist")
        if path.endswith((".jsonl", ".json")):
            with open(path, encoding="utf-8") as f:
                return "\n\n".join(json.loads(line)["text"] for line in f if line.strip())
        with open(path, encoding="utf-8") as f:
            return f.read()
    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark {name!r}; use one of {', '.join(BENCHMARKS)} or file:PATH")
    from datasets import load_dataset
    hub, config, split, field = BENCHMARKS[name]
    try:
        ds = load_dataset(hub, config, split=split)
    except Exception as e:
        raise UserError(f"could not load {hub}/{config} from the Hugging Face hub ({type(e).__name__}); "
                        f"pass a local copy as file:PATH") from None
    return "\n\n".join(ds[field])


def windows(n_tokens, block_size, stride):
    """(start, end, n_scored) of each window over a stream of n_tokens (predicting tokens 1..n-1)."""
    stride = stride or block_size
    if not 0 < stride <= block_size:
        raise UserError(f"--stride must be in 1..block_size ({block_size}), got {stride}")
    out, begin, prev_end = [], 0, 0
    n_targets = n_tokens - 1
    while prev_end < n_targets:
        end = min(begin + block_size, n_targets)
        out.append((begin, end, end - prev_end))
        prev_end = end
        begin += stride
    return out


@torch.no_grad()
def stream_loss(model, ids, block_size, stride, batch_size, device, ctx):
    """(mean loss per scored token, number of scored tokens) of a token stream under the protocol above."""
    data = torch.tensor(ids, dtype=torch.long)
    ws = windows(len(data), block_size, stride)
    full = [w for w in ws if w[1] - w[0] == block_size]
    groups = [full[i:i + batch_size] for i in range(0, len(full), batch_size)]
    groups += [[w] for w in ws if w[1] - w[0] != block_size]  # a shorter last window runs alone
    total, count = 0.0, 0
    model.eval()
    for group in groups:
        x = torch.stack([data[b:e] for b, e, _ in group]).to(device)
        y = torch.stack([data[b + 1:e + 1] for b, e, _ in group])
        for row, (b, e, n_scored) in enumerate(group):
            y[row, :e - b - n_scored] = -1  # context only: scored by an earlier window
        with ctx:
            logits, _ = model(x, all_logits=True)
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten().to(device),
                                                   ignore_index=-1, reduction="sum").item()
        count += sum(n for _, _, n in group)
    return total / count, count


@dataclass
class EvalConfig:
    models: str = ""                # comma-separated: hub names, HF dirs, checkpoints, out_dirs, smollm2-135m
    datasets: str = ""              # comma-separated benchmarks (see above) or file:PATH
    data: str = ""                  # a prepared dataset (data/<name> or a path): its fixed validation loss
    eval_tokens: int = 131072       # --data: size of the fixed validation set
    block_size: int = 1024          # window length (capped at each model's)
    stride: int = 0                 # sliding windows: score the last STRIDE tokens of each (0: non-overlapping)
    max_tokens: int = 0             # evaluate only the first N tokens of each benchmark (quick checks); 0 = all
    batch_size: int = 8             # sequences per forward pass
    device: str = "auto"            # 'auto' (cuda if available), 'cpu', 'cuda', 'cuda:N'
    dtype: str = "auto"             # float32, bfloat16 or float16 autocast ('auto': bf16 on CUDA)
    json: str = ""                  # also write the table here
    force: bool = False             # overwrite --json

    def validate(self):
        if not self.models:
            raise UserError("give --models (comma-separated checkpoints, run directories, HF directories or names)")
        if not self.datasets and not self.data:
            raise UserError("give --datasets (benchmarks) and/or --data (a prepared dataset)")
        for name in ("block_size", "batch_size", "eval_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.stride < 0 or self.max_tokens < 0:
            raise UserError("--stride and --max_tokens must be >= 0")


def main():
    args = configure(EvalConfig(), sys.argv[1:], verbose=False, doc=__doc__)
    if args.json:
        check_output_file(args.json, args.force)
    rt = setup_runtime(args.device, args.dtype)
    ctx = rt.ctx
    names = [d for d in args.datasets.split(",") if d]
    texts = {d: load_text(d) for d in names}
    protocol = (f"{'sliding windows, stride ' + str(args.stride) if args.stride else 'non-overlapping windows'} "
                f"of {args.block_size} tokens, texts joined with blank lines, perplexity per token of each "
                f"model's own tokenizer" + (f", first {args.max_tokens:,} tokens only" if args.max_tokens else ""))
    rows = []
    for spec in [m for m in args.models.split(",") if m]:
        model = load_model(spec, device=rt.device).eval()
        row = {"model": spec, "params": model.param_counts()["total"]}
        T = min(args.block_size, model.config.block_size)
        if args.data:
            data = TokenData(dataset_dir(args.data))
            check_data_fits(data, model, args.data)
            row["val_loss"] = evaluate(model, data.val_windows(T, args.eval_tokens), rt, args.batch_size)
        if names:
            tok = get_tokenizer(model.tokenizer_name)
            for d in names:
                ids = tok.encode(texts[d])
                if args.max_tokens:
                    ids = ids[:args.max_tokens]
                if len(ids) < 2:
                    raise UserError(f"{d} has {len(ids)} tokens for {spec}; it needs at least 2 to score one")
                loss, n = stream_loss(model, ids, T, args.stride, args.batch_size, rt.device, ctx)
                row[d] = math.exp(loss)
                row[f"{d}_tokens"] = n
        rows.append(row)
        print(f"evaluated {spec}", file=sys.stderr, flush=True)
        del model
    cols = (["val_loss"] if args.data else []) + names
    if names:
        print(f"protocol: {protocol}")
    if args.data:
        print(f"val_loss: mean cross-entropy on the fixed validation set of {args.data} ({args.eval_tokens:,} tokens)")
    print(f"{'model':<40} {'params':>13} " + " ".join(f"{c:>12}" for c in cols))
    for r in rows:
        print(f"{r['model'][-40:]:<40} {r['params']:>13,} " + " ".join(f"{r[c]:>12.4f}" if c == 'val_loss'
                                                                       else f"{r[c]:>12.2f}" for c in cols))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(protocol=protocol, rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    run_cli(main)
