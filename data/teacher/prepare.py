"""
Teacher text: a corpus sampled from a model, to distil on its own distribution without any outside data
(LLM-QAT's data-free distillation) and to measure how much of that distribution a compressed model keeps.

Each batch samples `batch_size` continuations of `sample_len` tokens with the KV cache, all from one prompt: a
prose opening from prompts.txt (topics across history, science, everyday life...), or, for a fraction
`unconditional` of the batches, the start token alone (what the model writes unprompted: chat, code, lists).
A document is the prompt, its continuation and the end-of-text token. The val split uses its own prompts (every
fifth stem, never used for train) and seeds, so it is held out from training by construction. Batch k of a split
is a pure function of (seed, split, k): an interrupted run resumes from its last finished batch (kept in
<out_dir>.partial/) and gives the same corpus.

    python data/teacher/prepare.py --model smollm2-135m                  # -> data/teacher_smollm2-135m/
    python data/teacher/prepare.py --model smollm2-135m --tokens 400000 --val_tokens 32768 --top_k 0
    python data/teacher/prepare.py --model out-81M --out_dir data/teacher_student --tokens 20000

The general study's corpus (--model smollm2-135m --tokens 160000: 164,048 train and 33,600 val tokens, about 20
minutes on 2 CPU cores) ships as teacher_smollm2-135m.tgz beside this file, so that every row of the study, on
any machine, is measured on the same held-out samples: `tar -xzf data/teacher/teacher_smollm2-135m.tgz -C data`.
"""

import json
import os
import shutil
import sys

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from configurator import run_cli  # noqa: E402
from kronygpt.calib import content_hash  # noqa: E402
from kronygpt.checkpoint import load_model  # noqa: E402
from kronygpt.data_utils import REPO, DatasetWriter, PrepareParser, batch_seed  # noqa: E402
from kronygpt.errors import UserError  # noqa: E402
from kronygpt.runtime import resolve_device  # noqa: E402
from kronygpt.tokenizer import get_tokenizer  # noqa: E402

PROMPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts.txt")
SETTINGS = ("model", "sample_len", "batch_size", "temperature", "top_k", "seed", "unconditional", "prompts")


def read_prompts(path):
    """{'val': every fifth prompt, 'train': the rest}. One prompt per line; the two characters \\n stand for a line
    break (code prompts), and lines starting with '#' are comments."""
    if not os.path.isfile(path):
        raise UserError(f"--prompts {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip().replace("\\n", "\n") for line in f if line.strip() and not line.startswith("#")]
    except UnicodeDecodeError:
        raise UserError(f"--prompts {path} is not UTF-8 text; give one prompt per line") from None
    if len(lines) < 5:
        raise UserError(f"--prompts {path} has {len(lines)} prompts; give at least 5 (every fifth is held out for val)")
    return {"val": lines[::5], "train": [p for i, p in enumerate(lines) if i % 5]}


def batch_prompt(split, k, prompts, tok, unconditional):
    """The token ids batch k of a split starts from: the start token alone, or a prompt after it."""
    start = [tok.bos] if tok.bos is not None else []
    every = round(1 / unconditional) if unconditional > 0 else 0
    if every and k % every == every - 1:
        return start or [tok.eot]
    return start + tok.encode(prompts[split][k % len(prompts[split])])


@torch.no_grad()
def sample_batch(model, prompt, args, seed, device):
    """batch_size documents (lists of ids) continuing one prompt, each ending with the end-of-text token."""
    torch.manual_seed(seed)
    idx = torch.tensor([prompt] * args.batch_size, dtype=torch.long, device=device)
    out = model.generate(idx, args.sample_len, temperature=args.temperature, top_k=args.top_k or None)
    return out.tolist()


def main():
    p = PrepareParser(__doc__)
    p.add_argument("--model", default="smollm2-135m", help="the model to sample from (anything load_model takes)")
    p.add_argument("--tokens", type=int, default=400_000, help="train tokens (at least)")
    p.add_argument("--val_tokens", type=int, default=32_768, help="val tokens (at least)")
    p.add_argument("--sample_len", type=int, default=256, help="tokens sampled after each prompt")
    p.add_argument("--batch_size", type=int, default=16, help="samples generated together (one prompt)")
    p.add_argument("--temperature", type=float, default=1.0, help="1.0: the model's own distribution")
    p.add_argument("--top_k", type=int, default=0, help="sample from the top k tokens only; 0 = all")
    p.add_argument("--unconditional", type=float, default=0.25, help="share of batches from the start token alone")
    p.add_argument("--prompts", default=PROMPTS, help="prompt stems, one per line")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out_dir", default=None, help="default: data/teacher_<model>")
    p.add_argument("--force", action="store_true", help="replace a dataset already in --out_dir")
    args = p.parse_args()
    for name in ("tokens", "val_tokens", "sample_len", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not (args.temperature > 0 and args.top_k >= 0 and 0 <= args.unconditional <= 1):
        raise UserError("--temperature must be > 0, --top_k >= 0 and --unconditional between 0 and 1")
    out_dir = args.out_dir or os.path.join(REPO, "data", f"teacher_{os.path.basename(args.model.rstrip('/'))}")
    writer = DatasetWriter(out_dir, args.force)  # refuses an existing dataset before any work
    prompts = read_prompts(args.prompts)
    device = resolve_device(args.device)
    model = load_model(args.model, device=device).eval()
    tok = get_tokenizer(model.tokenizer_name)
    if tok.n_vocab > model.config.vocab_size:
        raise UserError(f"{args.model} embeds {model.config.vocab_size} tokens but its tokenizer has {tok.n_vocab}; "
                        f"sample from a model with its full vocabulary")
    longest = max(len(tok.encode(p)) for ps in prompts.values() for p in ps) + 1
    if longest + args.sample_len > model.config.block_size:
        raise UserError(f"--sample_len {args.sample_len} and the longest prompt ({longest} tokens) exceed the model's "
                        f"context of {model.config.block_size}; lower --sample_len")
    partial = out_dir.rstrip("/") + ".partial"
    settings = {k: getattr(args, k) for k in SETTINGS}
    # keyed by the model's contents, not its path: a file replaced by another model never continues this corpus
    settings["model_weights"] = content_hash(model.state_dict().values())
    progress = resume_progress(partial, settings, args.force)
    for split, want in (("val", args.val_tokens), ("train", args.tokens)):
        path = os.path.join(partial, f"{split}.bin")
        done, have = progress[split], progress[f"{split}_tokens"]
        if os.path.exists(path) and os.path.getsize(path) < 2 * have:  # an append lost after its record: the split
            print(f"{path} is shorter than its progress record; sampling {split} again from its start")  # restarts
            done, have = 0, 0
        with open(path, "ab") as f:  # a batch written after the last progress record is dropped: it comes again
            f.truncate(2 * have)
        bar = tqdm(total=want, initial=min(have, want), desc=f"sampling {split} from {args.model}", unit="tok")
        while have < want:
            prompt = batch_prompt(split, done, prompts, tok, args.unconditional)
            docs = sample_batch(model, prompt, args, batch_seed(args.seed, {"val": 1, "train": 2}[split], done), device)
            ids = np.array([t for d in docs for t in d + [tok.eot]], dtype=np.uint16)
            with open(path, "ab") as f:
                f.write(ids.tobytes())
                f.flush()
                os.fsync(f.fileno())  # on disk before the progress record says it is done
            done, have = done + 1, have + len(ids)
            progress[split], progress[f"{split}_tokens"] = done, have
            save_progress(partial, progress)
            bar.update(len(ids))
        bar.close()
    with writer:
        for split in ("train", "val"):
            writer.write(split, np.fromfile(os.path.join(partial, f"{split}.bin"), dtype=np.uint16), tok.n_vocab)
        writer.commit(model.tokenizer_name, tok.n_vocab, source=f"sampled from {args.model}",
                      **settings,  # model_weights: which weights sampled the corpus, not only their path
                      batches={s: progress[s] for s in ("val", "train")},
                      note="val uses held-out prompts (every fifth stem) and its own seeds")
    shutil.rmtree(partial)
    sizes = {s: os.path.getsize(os.path.join(out_dir, f"{s}.bin")) // 2 for s in ("train", "val")}
    print(f"{out_dir}: train {sizes['train']:,} tokens, val {sizes['val']:,} tokens, vocab {tok.n_vocab:,}")


def resume_progress(partial, settings, force):
    """{'val': batches done, 'train': ...} of an interrupted run with the same settings, or a fresh start."""
    path = os.path.join(partial, "progress.json")
    if os.path.isfile(path):
        with open(path) as f:
            progress = json.load(f)
        if progress.get("settings") == settings:
            print(f"resuming from {partial}: {progress['val']} val and {progress['train']} train batches done")
            return progress
        if not force:
            raise UserError(f"{partial} holds an interrupted run with other settings; rerun with its settings, or "
                            f"pass --force to discard it")
        shutil.rmtree(partial)
    os.makedirs(partial, exist_ok=True)
    return {"settings": settings, "val": 0, "train": 0, "val_tokens": 0, "train_tokens": 0}


def save_progress(partial, progress):
    tmp = os.path.join(partial, "progress.json.tmp")
    with open(tmp, "w") as f:
        json.dump(progress, f)
    os.replace(tmp, os.path.join(partial, "progress.json"))


if __name__ == "__main__":
    run_cli(main)
