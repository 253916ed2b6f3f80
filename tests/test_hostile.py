"""Hostile inputs the fourth reliability pass (issue 51) listed as partial, each closed at its root and checked
in-process (fast): model_args that are not the model's, options that overflow or are not finite, a damaged
order cache, token ids past the first million, truncated weight files."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, make_llama, save_hf
from configurator import configure
from kronygpt.checkpoint import load_model, model_from_checkpoint, save_checkpoint
from kronygpt.data_utils import TokenData, write_meta, write_tokens
from kronygpt.errors import ConfigError, UserError
from kronygpt.optim import parse_freeze_schedule
from kronygpt.trainer import TrainConfig


@pytest.fixture
def ckpt(tmp_path):
    path = str(tmp_path / "m.pt")
    save_checkpoint(path, load_model(save_hf(make_llama(tie=True, n_kv_head=2), tmp_path / "hf")))
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("edit, says", [
    (dict(n_layer=200000), "blocks"),          # would allocate tens of GB before load_state_dict could refuse
    (dict(n_layer="2"), "whole number"),
    (dict(mlp_hidden=10 ** 9), "do not fit"),  # caught on the meta device, before any memory
    (dict(rope_theta=float("inf")), "finite"),
    (dict(bias=1), "true or false"),
])
def test_model_args_that_do_not_describe_the_weights_are_refused_before_building(ckpt, edit, says):
    ckpt["model_args"].update(edit)
    with pytest.raises(UserError, match=says):
        model_from_checkpoint(ckpt)


def test_the_untouched_checkpoint_still_loads(ckpt):
    assert model_from_checkpoint(ckpt).config.n_layer == ckpt["model_args"]["n_layer"]


@pytest.mark.parametrize("argv, says", [
    (["--seed=99999999999999999999"], "out of range"),
    (["--seed=-99999999999999999999"], "out of range"),
    (["--learning_rate=nan"], "finite"),
    (["--grad_clip=inf"], "finite"),
])
def test_options_that_overflow_or_are_not_finite_are_refused(argv, says):
    with pytest.raises(ConfigError, match=says):
        configure(TrainConfig(), argv)


def test_a_freeze_schedule_repeated_beyond_memory_is_refused():
    with pytest.raises(ConfigError, match="phases"):
        parse_freeze_schedule("freeze:1,release:1*1000000000")
    assert len(parse_freeze_schedule("freeze:1,release:1*3")) == 6


@pytest.mark.parametrize("content", ["[1,2", '"a string"', '{"k": 5}'])
def test_a_damaged_order_cache_warns_and_every_command_still_starts(tmp_path, content):
    orders = tmp_path / "orders.json"
    orders.write_text(content)
    r = subprocess.run([sys.executable, "-c", "import kronygpt.kronecker as k; print(len(k.TIMER.choices))"],
                       cwd=REPO, capture_output=True, text=True, env={**os.environ, "KRONYGPT_ORDERS": str(orders)})
    assert r.returncode == 0 and r.stdout.strip() == "0", r.stderr
    assert ("warning" in r.stderr) == (content != '{"k": 5}')  # a readable file with an unknown order: dropped


def test_a_token_id_past_the_first_million_is_refused_when_drawn(tmp_path):
    ids = np.zeros((1 << 20) + 4096, dtype=np.int64)
    ids[-2000:] = 300  # beyond the 256-token vocabulary, after the scanned start
    write_tokens(ids[:1 << 20], tmp_path / "val.bin", 512)
    write_tokens(ids, tmp_path / "train.bin", 512)
    write_meta(str(tmp_path), None, 256)
    data = TokenData(str(tmp_path))
    with pytest.raises(UserError, match="token id 300"):
        for seed in range(200):  # a batch of 8 x 64 from 1M positions meets the last 2000 within a few hundred
            data.get_batch("train", 8, 64, seed)


def test_a_truncated_safetensors_file_is_one_sentence(tmp_path):
    d = save_hf(make_llama(tie=True, n_kv_head=2), tmp_path / "hf")
    path = os.path.join(d, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(UserError):
        load_model(d)


def test_an_export_killed_between_its_renames_is_put_back(tmp_path):
    """replace_dir sets the old export aside, then renames the new one in: killed between the two, `out` is
    missing. The next export puts the old one back before it checks --out, and removes dead staging folders."""
    from kronygpt.exporting import check_out_dir
    out, dead = tmp_path / "hf", 2 ** 22 + 12345  # above any pid_max: a process that is gone
    aside, staged = tmp_path / f"hf.old{dead}", tmp_path / f"hf.tmp{dead}"
    aside.mkdir()
    (aside / "kronygpt_export.json").write_text("{}")
    staged.mkdir()
    with pytest.raises(UserError, match="not empty"):  # the old export is back, so --out holds one again
        check_out_dir(str(out), False, str(tmp_path / "model.pt"))
    assert (out / "kronygpt_export.json").is_file() and not aside.exists() and not staged.exists()


def test_a_report_beside_a_checkpoint_is_always_its_own(tmp_path, monkeypatch):
    """kron_decomp's report marks a finished decomposition: a write stopped after the checkpoint leaves no
    report (never the previous run's beside the new checkpoint)."""
    from kronygpt import decompose as dec
    report = tmp_path / "k.json"
    report.write_text('{"old": true}')

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(dec, "atomic_json", stop)
    result = dec.Decomposition(make_llama_gpt(tmp_path), [], [], {})
    with pytest.raises(KeyboardInterrupt):
        dec.save(result, str(tmp_path / "k.pt"), str(report))
    assert (tmp_path / "k.pt").is_file() and not report.exists()


def make_llama_gpt(tmp_path):
    return load_model(save_hf(make_llama(tie=True, n_kv_head=2), tmp_path / "hf_src"))


def test_a_truncated_factored_export_is_one_sentence(tmp_path):
    from kronygpt.exporting import export_model
    out = str(tmp_path / "fac")
    export_model(make_llama_gpt(tmp_path), out, "factored")
    assert load_model(out).config.n_layer >= 1
    path = os.path.join(out, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(UserError, match="truncated or damaged"):
        load_model(out)


def test_spill_folders_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    from kronygpt.claims import remove_dead_temps
    from kronygpt.streaming import SPILL
    dead, live = tmp_path / f"{SPILL}{2 ** 22 + 12345}-abc", tmp_path / f"{SPILL}{os.getpid()}-xyz"
    for d in (dead, live):
        d.mkdir()
        (d / "g.pt").write_bytes(b"0")
    other = tmp_path / "kron_decomp_grads-notapid"
    other.mkdir()
    remove_dead_temps(str(tmp_path), SPILL)
    assert not dead.exists() and live.exists() and other.exists()
