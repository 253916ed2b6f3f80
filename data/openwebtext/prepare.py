"""
OpenWebText, nanoGPT's preparation: ~9B GPT-2 tokens in train.bin, ~4M in val.bin (0.05% split,
seed 2357), documents separated by the end-of-text token. Needs ~54 GB of disk for the HF cache.

    python data/openwebtext/prepare.py --num_proc=8                  # the hub dataset 'openwebtext'
    python data/openwebtext/prepare.py --files 'my/*.txt'            # local text files (one doc per file)
    python data/openwebtext/prepare.py --files docs.jsonl --text_field=text  # local JSON lines
"""

import glob
import os
import sys

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from configurator import run_cli  # noqa: E402
from kronygpt.errors import UserError  # noqa: E402
from kronygpt.data_utils import DatasetWriter, PrepareParser, load_tokenizer  # noqa: E402


def load(args):
    from datasets import Dataset, load_dataset
    if not args.files:
        return load_dataset(args.dataset, num_proc=args.num_proc)["train"]
    files = sorted(f for pattern in args.files for f in glob.glob(pattern))
    if not files:
        raise UserError(f"--files {args.files} matched no file")
    if all(f.endswith((".json", ".jsonl")) for f in files):
        try:
            ds = load_dataset("json", data_files=files)["train"]
        except Exception as e:  # datasets wraps the JSON parser's error in its own types
            raise UserError(f"--files {files[0]}...: not valid JSON lines ({type(e).__name__}); each line must be "
                            f"one JSON object with a {args.text_field!r} field") from None
        if args.text_field not in ds.column_names:
            raise UserError(f"the JSON lines have no field {args.text_field!r} (fields: {ds.column_names}); "
                            f"set --text_field")
        return ds.rename_column(args.text_field, "text")
    texts = []  # plain text: one document per file, as OpenWebText's documents are whole web pages
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                texts.append(fh.read())
        except UnicodeDecodeError:
            raise UserError(f"--files {f} is not UTF-8 text; give text or JSON-lines files") from None
    return Dataset.from_dict({"text": texts})


def main():
    p = PrepareParser(__doc__)
    p.add_argument("--dataset", default="openwebtext", help="hub dataset name")
    p.add_argument("--files", nargs="*", help="local .txt (one document each) or .jsonl files instead")
    p.add_argument("--text_field", default="text", help="JSON field holding the text")
    p.add_argument("--tokenizer", default="gpt2")
    p.add_argument("--num_proc", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    p.add_argument("--test_size", type=float, default=0.0005)
    p.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)))
    p.add_argument("--force", action="store_true", help="replace a dataset already in --out_dir")
    args = p.parse_args()
    if not 0 < args.test_size < 1:
        raise UserError(f"--test_size must be between 0 and 1 (exclusive), got {args.test_size}")
    tok = load_tokenizer(args.tokenizer)  # before anything is read or written
    writer = DatasetWriter(args.out_dir, args.force)
    ds = load(args)
    split = ds.train_test_split(test_size=args.test_size, seed=2357, shuffle=True)
    split["val"] = split.pop("test")

    def process(example):
        ids = tok.encode(example["text"])
        if tok.eot is not None:
            ids.append(tok.eot)
        return {"ids": ids, "len": len(ids)}

    num_proc = min(args.num_proc, len(ds))
    tokenized = split.map(process, remove_columns=split["train"].column_names, desc="tokenising",
                          num_proc=num_proc if num_proc > 1 else None)
    assert tok.n_vocab < 2 ** 16
    with writer:
        for name, dset in tokenized.items():
            total = int(np.sum(dset["len"], dtype=np.uint64))
            arr = np.memmap(writer.path(name), dtype=np.uint16, mode="w+", shape=(total,))
            shards = max(1, min(1024, len(dset)))
            idx = 0
            for i in tqdm(range(shards), desc=f"writing {name}.bin"):
                batch = dset.shard(num_shards=shards, index=i, contiguous=True).with_format("numpy")
                if len(batch) == 0:
                    continue
                chunk = np.concatenate(batch["ids"])
                arr[idx:idx + len(chunk)] = chunk
                idx += len(chunk)
            arr.flush()
            del arr
            print(f"{os.path.join(args.out_dir, name)}.bin: {total:,} tokens")
        writer.commit(tok.name, tok.n_vocab, source=args.files or args.dataset)


if __name__ == "__main__":
    run_cli(main)
