"""
The Python language reference: a third held-out domain (technical English) that ships with every Python, in
the standard library's `pydoc_data.topics` (79 topics, about 465 KB: statements, expressions, the data model).
Evaluation only: the whole corpus is val.bin, never trained on. The topics are joined in name order.

    python data/pydoc/prepare.py --tokenizer=smollm2-135m     # -> data/pydoc_smollm2-135m/val.bin
    python data/pydoc/prepare.py                              # GPT-2 BPE -> data/pydoc/
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from configurator import run_cli  # noqa: E402
from kronygpt.data_utils import REPO, DatasetWriter, PrepareParser, dataset_name, load_tokenizer  # noqa: E402


def main():
    from pydoc_data.topics import topics
    p = PrepareParser(__doc__)
    p.add_argument("--tokenizer", default="gpt2", help="'gpt2', a Hugging Face name/dir, or 'smollm2-135m'")
    p.add_argument("--out_dir", default=None, help="default: data/pydoc[_<tokenizer>]")
    p.add_argument("--force", action="store_true", help="replace a dataset already in --out_dir")
    args = p.parse_args()
    out_dir = args.out_dir or os.path.join(REPO, "data", dataset_name("pydoc", args.tokenizer))
    tok = load_tokenizer(args.tokenizer)
    writer = DatasetWriter(out_dir, args.force)  # refuses an existing dataset before any work
    ids = []
    for name in sorted(topics):
        ids.extend(tok.encode(topics[name]))
        if tok.eot is not None:
            ids.append(tok.eot)
    with writer:
        n_val = writer.write("val", ids, tok.n_vocab)
        writer.commit(tok.name, tok.n_vocab, source=f"pydoc_data.topics of Python {sys.version.split()[0]}",
                      topics=len(topics), eval_only=True)
    print(f"{out_dir}: {len(topics)} topics, val {n_val:,} tokens, vocab {tok.n_vocab:,} (evaluation only)")


if __name__ == "__main__":
    run_cli(main)
