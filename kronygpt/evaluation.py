"""
Evaluation beyond one validation set: perplexity on standard benchmarks under a stated protocol, and the
general-ability suite that says what a compressed model kept of what its teacher could do.

Benchmarks (stream_loss): the texts joined into one stream, cut into windows; `start_token` puts the
tokenizer's document-start token in front as lm-evaluation-harness does for perplexity tasks (a compressed
model's perplexity can move far more with it than a dense model's).

The general suite (general_suite), one row per model, every model against the same fixed sets:
    corpora       the fixed validation loss of prepared datasets: in-domain Shakespeare, held-out Milton,
                  the Python language reference (pydoc), none of them trained on except Shakespeare's train split
    teacher       the student's loss and KL(teacher || student) on held-out text sampled from the teacher
                  (data/teacher/prepare.py's val split): how much of the teacher's own distribution survives
    facts         the fact probe (data/facts/facts.jsonl): multiple-choice cloze items scored by the
                  log-likelihood of each choice (acc) and by it divided by the choice's length in bytes
                  (acc_norm), as lm-evaluation-harness scores multiple_choice tasks
"""

import json
import os

import torch
import torch.nn.functional as F

from .data_utils import REPO, TokenData, check_data_fits, dataset_dir, dataset_name
from .errors import UserError
from .progress import progress
from .tokenizer import get_tokenizer
from .trainer import evaluate

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
        try:
            with open(path, encoding="utf-8") as f:
                if not path.endswith((".jsonl", ".json")):
                    return f.read()
                docs = [json.loads(line) for line in f if line.strip()]
        except UnicodeDecodeError:
            raise UserError(f"{path} is not UTF-8 text; give a text or JSON-lines file") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path}, line {e.lineno}: not valid JSON; each line must be one object with a "
                            f"'text' field") from None
        missing = next((k for k, d in enumerate(docs, 1) if not isinstance(d, dict) or "text" not in d), None)
        if missing:
            raise UserError(f"{path}, line {missing}: no 'text' field; each line must be one object with a 'text' "
                            f"field")
        return "\n\n".join(str(d["text"]) for d in docs)
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


def with_start_token(ids, tok):
    """ids with the tokenizer's document-start token in front (lm-evaluation-harness's perplexity protocol): the
    token is context only, and every real token, the first included, is then predicted and scored."""
    start = tok.bos if getattr(tok, "bos", None) is not None else tok.eot
    if start is None:
        raise UserError(f"the tokenizer {tok.name!r} has no document-start or end-of-text token; drop --start_token")
    return [start] + list(ids)


# -----------------------------------------------------------------------------
# the general-ability suite

FACTS = os.path.join(REPO, "data", "facts", "facts.jsonl")


def suite_datasets(teacher_name, tokenizer, given=""):
    """{column: prepared dataset} of the suite for models of this tokenizer; `given` ('col=dataset,...') overrides
    any of them. The teacher column is the held-out split of text sampled from the teacher."""
    out = {c: dataset_name(c, tokenizer) for c in ("shakespeare", "milton", "pydoc")}
    out["teacher"] = f"teacher_{os.path.basename(str(teacher_name).rstrip('/'))}"
    for item in filter(None, given.split(",")):
        col, eq, name = item.partition("=")
        if not eq or col not in out:
            raise UserError(f"--suite_data item {item!r} must be COLUMN=DATASET with COLUMN one of {', '.join(out)}")
        out[col] = name
    for col, name in out.items():
        if not os.path.isfile(os.path.join(dataset_dir(name), "val.bin")):
            how = {"teacher": f"data/teacher/prepare.py --model {teacher_name}"}.get(col, f"data/{col}/prepare.py")
            raise UserError(f"the suite's {col} set {name} is not prepared; run: python {how} --tokenizer="
                            f"{tokenizer} (or point --suite_data {col}=DATASET elsewhere)"
                            if col != "teacher" else
                            f"the suite's teacher set {name} is not prepared; run: python {how}")
    return out


@torch.no_grad()
def teacher_agreement(student, teacher, windows_xy, batch_size, rt):
    """(the student's mean loss, mean KL(teacher || student) per token) on fixed windows of teacher samples."""
    x_all, y_all = windows_xy
    student.eval()
    teacher.eval()
    ce = kl = n = 0.0
    for i in range(0, len(x_all), batch_size):
        x, y = x_all[i:i + batch_size].to(rt.device), y_all[i:i + batch_size].to(rt.device)
        with rt.ctx:
            s_logits, _ = student(x, all_logits=True)
            t_logits, _ = teacher(x, all_logits=True)
        s = F.log_softmax(s_logits.float(), dim=-1).flatten(0, 1)
        t = F.log_softmax(t_logits.float(), dim=-1).flatten(0, 1)
        ce += F.nll_loss(s, y.flatten(), reduction="sum").item()
        kl += (t.exp() * (t - s)).sum().item()
        n += y.numel()
    return ce / n, kl / n


def load_facts(path=FACTS):
    """The fact probe's items: JSON lines with context, choices and the index of the answer."""
    try:
        with open(path, encoding="utf-8") as f:
            items = [json.loads(line) for line in f if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--facts {path} could not be read as JSON lines ({type(e).__name__}); give a file like "
                        f"data/facts/facts.jsonl") from None
    if not items:
        raise UserError(f"{path} holds no items")
    return items


@torch.no_grad()
def fact_probe(model, tok, items, rt):
    """(acc, acc_norm) on multiple-choice cloze items: each choice scored by the log-likelihood of its tokens
    after the context (the continuation's tokens are those of context+choice beyond the context's, as
    lm-evaluation-harness splits them); acc_norm divides by the choice's length in UTF-8 bytes."""
    model.eval()
    if tok.n_vocab > model.config.vocab_size:
        raise UserError(f"the fact probe needs a model that embeds its tokenizer's {tok.n_vocab} tokens; this one "
                        f"has {model.config.vocab_size}")
    right = right_norm = 0
    for item in items:
        ctx = tok.encode(item["context"])
        rows = []
        for choice in item["choices"]:
            whole = tok.encode(item["context"] + choice)
            cont = whole[len(ctx):] if whole[:len(ctx)] == ctx else tok.encode(choice)
            rows.append((ctx + cont, len(cont)))
        width = max(len(ids) for ids, _ in rows)
        x = torch.tensor([ids + [0] * (width - len(ids)) for ids, _ in rows], device=rt.device)
        with rt.ctx:
            logits, _ = model(x, all_logits=True)  # causal: the right padding cannot change earlier positions
        logp = F.log_softmax(logits.float(), dim=-1)
        scores = []
        for r, (ids, n) in enumerate(rows):
            pos = torch.arange(len(ids) - n - 1, len(ids) - 1, device=rt.device)
            scores.append(logp[r, pos, torch.tensor(ids[-n:], device=rt.device)].sum().item())
        norm = [s / len(c.encode("utf-8")) for s, c in zip(scores, item["choices"], strict=True)]
        right += max(range(len(scores)), key=scores.__getitem__) == item["answer"]
        right_norm += max(range(len(norm)), key=norm.__getitem__) == item["answer"]
    return right / len(items), right_norm / len(items)


def general_row(model, teacher, datasets, facts, block_size, eval_tokens, batch_size, rt):
    """One model's row of the general suite (see the module docstring)."""
    row = {}
    T = min(block_size, model.config.block_size)
    for col, name in progress(list(datasets.items()), "general suite", unit="set"):
        data = TokenData(dataset_dir(name))
        check_data_fits(data, model, name)
        windows_xy = data.val_windows(T, eval_tokens)
        if col == "teacher":
            row["teacher_loss"], row["teacher_kl"] = teacher_agreement(model, teacher, windows_xy, batch_size, rt)
        else:
            row[col] = evaluate(model, windows_xy, rt, batch_size)
    if facts:
        row["facts_acc"], row["facts_acc_norm"] = fact_probe(model, get_tokenizer(model.tokenizer_name), facts, rt)
    return row


SUITE_COLUMNS = ("shakespeare", "milton", "pydoc", "teacher_loss", "teacher_kl", "facts_acc", "facts_acc_norm")


def markdown_table(rows, columns=SUITE_COLUMNS):
    """The suite's rows as a markdown table (losses to 4 decimals, accuracies as fractions)."""
    head = ["model", "parameters", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], f"{r['params']:,}"] + [f"{r[c]:.4f}" if isinstance(r.get(c), float) else "-"
                                                      for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
