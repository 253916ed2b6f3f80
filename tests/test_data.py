"""The prepare scripts: Shakespeare (GPT-2 BPE) and OpenWebText from local files, offline."""

import os
import pickle
import subprocess
import sys

import numpy as np

from conftest import REPO
from kronygpt.tokenizer import get_tokenizer


def run(script, *args):
    r = subprocess.run([sys.executable, os.path.join(REPO, script), *args], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_shakespeare_bpe(tmp_path):
    run("data/shakespeare/prepare.py", f"--out_dir={tmp_path}")
    train = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "val.bin", dtype=np.uint16)
    assert len(train) + len(val) == 1_565_959 + 42  # 42 works, one end-of-text token after each
    assert abs(len(val) / (len(train) + len(val)) - 0.1) < 1e-3
    meta = pickle.load(open(tmp_path / "meta.pkl", "rb"))
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257
    assert get_tokenizer("gpt2").decode(train[:12].tolist()).startswith("ALL'S WELL THAT ENDS WELL")


def test_openwebtext_from_local_text_files(tmp_path):
    docs = ["Hello world. " * 20, "The quick brown fox. " * 30, "Kronecker products. " * 10, "Shakespeare! " * 5]
    for i, d in enumerate(docs):
        (tmp_path / f"doc{i}.txt").write_text(d)
    out = tmp_path / "owt"
    run("data/openwebtext/prepare.py", "--files", str(tmp_path / "doc*.txt"), "--test_size=0.25",
        "--num_proc=1", f"--out_dir={out}")
    tok = get_tokenizer("gpt2")
    expected = sum(len(tok.encode(d)) + 1 for d in docs)
    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    val = np.fromfile(out / "val.bin", dtype=np.uint16)
    assert len(train) + len(val) == expected
    assert (train == tok.eot).sum() == 3 and (val == tok.eot).sum() == 1  # whole documents per split
