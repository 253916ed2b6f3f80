"""The fourth reliability pass (issue 51): wrong results that passed silently, options that were ignored, and
what a hostile input got through. Each test failed before its fix."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO
from kronygpt.errors import UserError

pytestmark = pytest.mark.slow  # ~30 subprocesses of the real commands: a few minutes (make test-all, and CI, run them)


def run(*argv, timeout=300):
    return subprocess.run([sys.executable, *map(str, argv)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "KRONY_PROGRESS": "0"})


def one_sentence(r):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    return r.returncode == 2 and lines and lines[-1].startswith("error: ") and "Traceback" not in r.stderr


def test_1_fisher_scores_and_builds_the_embedding_alike_for_kronecker_families(tiny_llama_dir, tiny_data_dir):
    """The embedding's output moment is the logits' diagonal: init_factors takes it as such (no square matrix),
    so the allocator's candidate and the factors decompose_model builds are the same."""
    from kronygpt.calib import calibration_batches, collect_grads, collect_moments
    from kronygpt.checkpoint import load_model
    from kronygpt.data_utils import open_dataset
    from kronygpt.factorize import InitSpec, init_factors
    from kronygpt.kronecker import kron_shape, kron_sum
    dense = load_model(tiny_llama_dir).eval()
    batches = calibration_batches(open_dataset(tiny_data_dir), 512, 32)
    C = collect_moments(dense, batches, {0, 1})[("embed", "wte")]
    g = collect_grads(dense, batches, {0, 1}, 256)[("embed", "wte")]
    assert g.dim() == 1
    W = dense.transformer.wte.weight.detach()
    for s in (kron_shape(256, 64, 128, 64), kron_shape(256, 64, 256, 32)):  # 2x1 and 1x2 small factors
        A, B, _ = init_factors(W, s, 2, InitSpec("fisher"), C=C, G=g)
        assert torch.isfinite(kron_sum(A, B)).all()


def test_4_the_calibration_cache_holds_the_forwards_precision(tiny_llama_dir, tiny_data_dir, tmp_path):
    cache = tmp_path / "c.pt"
    base = ["kron_decomp.py", "--model", tiny_llama_dir, "--calib", tiny_data_dir, "--calib_tokens", "512",
            "--calib_seq", "32", "--shape", "lowrank", "--factors", "4", "--init", "aware", "--calib_cache", cache]
    assert run(*base, "--out", tmp_path / "a.pt", "--calib_dtype", "float32").returncode == 0
    r = run(*base, "--out", tmp_path / "b.pt", "--calib_dtype", "bfloat16")
    assert one_sentence(r) and "another model, dataset or setting" in r.stderr  # not "from cache"


def test_5_the_export_keeps_the_eos_of_a_source_without_tokenizer_files(tiny_llama_dir, tmp_path):
    r = run("export.py", "--init_from", tiny_llama_dir, "--out", tmp_path / "hf", "--format", "dense")
    assert r.returncode == 0, r.stderr[-1500:]
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen.get("eos_token_id") == 2  # the tiny Llama's config says 2


PREPARE = sorted(glob.glob(os.path.join(REPO, "data", "*", "prepare.py")))
COMMANDS = ["compress.py", "kron_decomp.py", "train.py", "train_distillation.py", "eval.py", "sample.py",
            "export.py", "bench.py", "plot.py"]


@pytest.mark.parametrize("script", COMMANDS + [os.path.relpath(p, REPO) for p in PREPARE])
def test_6_every_command_and_prepare_script_refuses_an_unknown_option(script, tmp_path):
    r = run(script, "--out_dirr", tmp_path / "x", "--no_such_option=1")
    assert one_sentence(r), (r.returncode, r.stderr[-800:])
    assert not (tmp_path / "x").exists()


def test_6_the_character_corpus_goes_where_out_dir_says(tmp_path):
    r = run("data/shakespeare_char/prepare.py", "--out_dir", tmp_path / "chars")
    assert r.returncode == 0, r.stderr[-800:]
    assert (tmp_path / "chars" / "val.bin").stat().st_size > 0


def test_7_an_output_that_is_an_input_or_another_output_is_refused(tiny_llama_dir, tiny_data_dir, tmp_path):
    k = tmp_path / "k.pt"
    base = ["kron_decomp.py", "--model", tiny_llama_dir, "--shape", "lowrank", "--factors", "4"]
    r = run(*base, "--init", "aware", "--calib", tiny_data_dir, "--calib_cache", k, "--out", k, "--force")
    assert one_sentence(r) and "same file" in r.stderr
    r = run(*base, "--init", "aware", "--calib", tiny_data_dir, "--calib_cache", tmp_path / "k.json", "--out", k)
    assert one_sentence(r) and "same file" in r.stderr
    assert run(*base, "--out", k).returncode == 0
    before = k.read_bytes()
    r = run("sample.py", f"--init_from={k}", f"--json={k}", "--force", "--max_new_tokens=1")
    assert one_sentence(r) and k.read_bytes() == before
    r = run("eval.py", "--models", k, "--data", tiny_data_dir, "--json", tmp_path / "x.out", "--md", tmp_path / "x.out")
    assert one_sentence(r) and not (tmp_path / "x.out").exists()


def test_8_a_second_writer_of_the_same_output_is_refused_while_the_first_lives(tmp_path):
    from kronygpt.claims import Claim
    from kronygpt.data_utils import DatasetWriter
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "ds.lock").write_text(str(holder.pid))
        with pytest.raises(UserError, match="being written by another command"):
            DatasetWriter(str(tmp_path / "ds"))
        (tmp_path / "k.pt.lock").write_text(str(holder.pid))
        with pytest.raises(UserError, match=f"pid {holder.pid}"):
            Claim(str(tmp_path / "k.pt.lock"), "--out k.pt")
    finally:
        holder.kill()
        holder.wait()
    (tmp_path / "empty.lock").write_text("")  # a full disk left it empty: taken over, not locked forever
    with Claim(str(tmp_path / "empty.lock"), "x"):
        assert (tmp_path / "empty.lock").read_text() == str(os.getpid())
    assert not (tmp_path / "empty.lock").exists()


def test_9_an_interrupted_fit_resumes_only_into_its_own_student(tiny_gpt2_dir, tiny_data_dir, tmp_path):
    from kronygpt.distiller import fit_key, resume_fitting
    from kronygpt.checkpoint import load_model
    from kronygpt.decompose import DecompConfig, decompose
    from kronygpt.distiller import DistillConfig
    teacher = load_model(tiny_gpt2_dir)
    students = []
    for shape in ("16x8", "32x8"):
        cfg = DecompConfig(model=tiny_gpt2_dir, shape=shape, out="x.pt")
        students.append(decompose(cfg, log=lambda s: None).model)
    cfg = DistillConfig(dataset=tiny_data_dir)
    path = tmp_path / "fitting.pt"
    key = fit_key(cfg, teacher, students[0])
    torch.save(dict(key=key, student=students[0].state_dict(), rows=[], val_loss_before=1.0), path)
    assert resume_fitting(str(path), students[0], key) == (1.0, [])
    with pytest.raises(UserError, match="another student"):
        resume_fitting(str(path), students[1], fit_key(cfg, teacher, students[1]))


def test_10_a_dataset_stopped_between_its_renames_is_refused(tmp_path):
    from kronygpt.data_utils import DatasetWriter, TokenData
    for n in (1000, 3000):  # the old dataset, then a new one
        with DatasetWriter(str(tmp_path / "ds"), force=True) as w:
            w.write("train", np.arange(n) % 50, 50)
            w.write("val", np.arange(200) % 50, 50)
            w.commit(None, 50)
        if n == 1000:
            old_meta = (tmp_path / "ds" / "meta.json").read_text()
    (tmp_path / "ds" / "meta.json").write_text(old_meta)  # the new train.bin beside the old manifest
    with pytest.raises(UserError, match="incomplete or mixed"):
        TokenData(str(tmp_path / "ds")).tokens("train")


@pytest.mark.parametrize("meta", [{"tokenizer": None, "vocab_size": "84"}, {"tokenizer": None, "vocab_size": 84.5},
                                  {"tokenizer": ["gpt2"], "vocab_size": 84},
                                  {"tokenizer": None, "vocab_size": 10 ** 9}])
def test_10_dataset_metadata_is_checked_by_one_schema(meta, tmp_path):
    from kronygpt.data_utils import TokenData, write_tokens
    write_tokens(np.arange(100) % 50, tmp_path / "val.bin", 50)
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="prepare the data again"):
        TokenData(str(tmp_path))


def test_11_an_evaluation_never_writes_into_a_run(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    r = run("train.py", f"--dataset={tiny_data_dir}", f"--out_dir={out}", "--n_layer=1", "--n_head=2", "--n_embd=16",
            "--block_size=16", "--batch_size=2", "--max_iters=2", "--eval_interval=2", "--eval_tokens=64",
            "--warmup_iters=1")
    assert r.returncode == 0, r.stderr[-1000:]
    log = (out / "log.jsonl").read_text()
    r = run("train.py", "--eval_only=True", f"--init_from={out}/last.pt", f"--dataset={tiny_data_dir}",
            f"--out_dir={out}", "--eval_tokens=64", "--block_size=16")
    assert one_sentence(r) and (out / "log.jsonl").read_text() == log


def test_12_layerwise_tokens_beyond_the_data_are_refused_before_any_work(tiny_gpt2_dir, tiny_data_dir, tmp_path):
    from kronygpt.checkpoint import save_checkpoint
    from kronygpt.decompose import DecompConfig, decompose
    start = save_checkpoint(str(tmp_path / "s.pt"), decompose(DecompConfig(model=tiny_gpt2_dir, shape="16x8",
                                                                          out="x"), log=lambda s: None).model)
    r = run("train_distillation.py", f"--teacher={tiny_gpt2_dir}", f"--init_from={start}", "--mode=layerwise",
            f"--dataset={tiny_data_dir}", f"--out_dir={tmp_path / 'fit'}", "--max_iters=0",
            "--layerwise_tokens=1000000000000", "--block_size=32", "--batch_size=2", timeout=60)
    assert one_sentence(r) and "exceed" in r.stderr


def test_a_full_or_read_only_folder_is_one_sentence(tiny_llama_dir, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who may write anywhere (root): a read-only folder cannot be made")
        r = run("kron_decomp.py", "--model", tiny_llama_dir, "--shape", "lowrank", "--factors", "4", "--out",
                ro / "k.pt")
        assert one_sentence(r)
    finally:
        ro.chmod(0o700)
