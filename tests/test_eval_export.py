"""eval.py agrees with the trainer and implements its window protocol; export round-trips through transformers."""

import math
import os
import subprocess
import sys

import pytest
import torch

from kronygpt.checkpoint import save_checkpoint
from conftest import REPO
from kronygpt.data_utils import write_meta, write_tokens
from kronygpt.evaluation import stream_loss, windows
from kronygpt.hf_io import export_hf, load_pretrained
from kronygpt.factorize import InitSpec
from kronygpt.surgery import decompose_model
from model import GPT, GPTConfig

CHARS = "\n !',-.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@pytest.mark.parametrize("n,T,S", [(100, 16, 0), (100, 16, 5), (17, 16, 0), (40, 16, 16), (9, 16, 3)])
def test_windows_score_every_target_once_with_context(n, T, S):
    scored = []
    for begin, end, k in windows(n, T, S):
        assert end - begin <= T and 1 <= k <= end - begin
        scored += list(range(end - k, end))  # target index t predicts token t+1
        if begin > 0 and S:
            assert end - k - begin >= T - S or end == n - 1  # at least T - S tokens of context
    assert scored == list(range(n - 1))


def test_stream_loss_matches_manual():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=30, block_size=8)).eval()
    ids = torch.randint(0, 30, (33,)).tolist()
    loss, n = stream_loss(model, ids, 8, 0, 3, "cpu", torch.autocast("cpu", enabled=False))
    data = torch.tensor(ids)
    manual = [model(data[i:i + 8][None], data[i + 1:i + 9][None])[1].item() for i in range(0, 32, 8)]
    assert n == 32 and loss == pytest.approx(sum(manual) / 4, rel=1e-6)


def test_eval_file_equals_trainer_validation(tmp_path):
    torch.manual_seed(0)
    text = ("To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer.\n" * 6)[:385]
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=len(CHARS), block_size=32))
    ckpt = save_checkpoint(tmp_path / "m.pt", model, tokenizer={"kind": "char", "chars": CHARS})
    (tmp_path / "test.txt").write_text(text)
    d = tmp_path / "data"
    d.mkdir()
    ids = [CHARS.index(c) for c in text]
    write_tokens(ids, d / "train.bin", len(CHARS))
    write_tokens(ids, d / "val.bin", len(CHARS))
    write_meta(str(d), {"kind": "char", "chars": CHARS}, len(CHARS))
    r = subprocess.run([sys.executable, os.path.join(REPO, "eval.py"), "--models", str(ckpt), "--datasets",
                        f"file:{tmp_path / 'test.txt'}", "--data", str(d), "--eval_tokens", "384",
                        "--block_size", "32", "--json", str(tmp_path / "r.json")],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    import json
    row = json.loads((tmp_path / "r.json").read_text())["rows"][0]
    assert row["file:" + str(tmp_path / "test.txt") + "_tokens"] == 384  # 385 characters: 384 predictions
    assert math.log(row["file:" + str(tmp_path / "test.txt")]) == pytest.approx(row["val_loss"], rel=1e-5)
    assert "protocol: non-overlapping windows of 32 tokens" in r.stdout


@pytest.mark.parametrize("fixture,shape", [("tiny_gpt2_dir", (16, 8)), ("tiny_llama_dir", (12, 8))])
def test_export_round_trip(fixture, shape, request, tmp_path):
    from transformers import AutoModelForCausalLM
    dense = load_pretrained(request.getfixturevalue(fixture))
    kron, _ = decompose_model(dense, f"*: mlp={shape[0]}x{shape[1]}*2", InitSpec("vl_norm", scalars=True))
    export_hf(kron.eval(), tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, kron(idx, all_logits=True)[0], atol=1e-5, rtol=0)


def test_export_cli_writes_gpt2_tokenizer(tiny_gpt2_dir, tmp_path):
    r = subprocess.run([sys.executable, os.path.join(REPO, "export.py"), "--init_from", tiny_gpt2_dir, "--out",
                        str(tmp_path / "hf"), "--check"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(tmp_path / "hf")("Hello world")["input_ids"] == [15496, 995]
    assert r.stdout.strip().endswith("PASS"), r.stdout[-500:]
