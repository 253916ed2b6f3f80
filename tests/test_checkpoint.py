"""One checkpoint format: round trips, atomic writes, clear errors."""

import os

import pytest
import torch

from kronygpt.checkpoint import TrainingState, load_checkpoint, load_model, save_checkpoint
from kronygpt.errors import CheckpointError
from model import GPT, GPTConfig

TINY = dict(n_layer=2, n_head=2, n_embd=16, vocab_size=50, block_size=16)


@pytest.mark.parametrize("kron", [{}, dict(kron_plan="1: mlp=8x4*2", kron_scalars=True)])
def test_round_trip(tmp_path, kron):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, **kron)).eval()
    opt = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(tmp_path / "m.pt", model, training=TrainingState(optimizer=opt, iter_num=7, config={"a": 1}))
    ckpt = load_checkpoint(path)
    assert ckpt["iter_num"] == 7 and ckpt["model_args"]["kron_plan"] == GPTConfig(**TINY, **kron).kron_plan
    loaded = load_model(str(path)).eval()
    idx = torch.randint(0, 50, (2, 8))
    torch.testing.assert_close(loaded(idx, all_logits=True)[0], model(idx, all_logits=True)[0], rtol=0, atol=0)
    assert loaded.config == model.config


def test_compiled_or_ddp_prefixes_are_stripped(tmp_path):
    model = GPT(GPTConfig(**TINY))
    wrapper = torch.nn.Module()
    wrapper._orig_mod = model
    save_checkpoint(tmp_path / "m.pt", wrapper)
    assert not any(k.startswith("_orig_mod") for k in load_checkpoint(tmp_path / "m.pt")["model"])


def test_truncated_file_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", GPT(GPTConfig(**TINY)))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_foreign_and_missing_files(tmp_path):
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a KronyGPT checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_failed_write_keeps_previous(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", GPT(GPTConfig(**TINY)), training=TrainingState(iter_num=1))

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(CheckpointError, match="could not write"):  # one sentence, not a traceback
        save_checkpoint(path, GPT(GPTConfig(**TINY)), training=TrainingState(iter_num=2))
    monkeypatch.undo()
    assert load_checkpoint(path)["iter_num"] == 1
    assert os.listdir(tmp_path) == ["m.pt"]  # no temp file left behind
