"""Factored export: a Hugging Face directory that keeps the factors, loads offline with trust_remote_code,
gives our logits and greedy tokens, and comes back into our format exactly."""

import os
import subprocess
import sys

import pytest
import torch

from kronygpt.checkpoint import load_model, save_checkpoint
from conftest import REPO
from kronygpt.factorize import InitSpec
from kronygpt.surgery import decompose_model
from kronygpt.hf_io import REMOTE_MODULES, load_pretrained, remote_source

PLANS = {"gpt2": "*: mlp=16x8*2; 1: c_proj=lowrank*5", "llama": "*: mlp=lowrank*6; 0: up_proj=24x4*1"}


def exported(fixture, request, tmp_path, fmt="factored"):
    dense = load_pretrained(request.getfixturevalue(fixture)).eval()
    arch = dense.config.arch
    kron, _ = decompose_model(dense, PLANS[arch], InitSpec("vl"))
    ckpt = save_checkpoint(str(tmp_path / "k.pt"), kron, tokenizer=dense.tokenizer_name)
    out = tmp_path / "hf"
    r = subprocess.run([sys.executable, os.path.join(REPO, "export.py"), "--init_from", ckpt, "--out", str(out),
                        "--format", fmt], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return kron.eval(), out


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_factored_export_loads_with_transformers_and_matches(fixture, request, tmp_path):
    from transformers import AutoModelForCausalLM
    ours, out = exported(fixture, request, tmp_path)
    stored = 4 * ours.param_counts()["total"]  # float32, a tied embedding once; the header takes a few kB more
    assert stored < (out / "model.safetensors").stat().st_size < stored + 16_384
    hf = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True).eval()
    idx = torch.randint(0, ours.config.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx, all_logits=True)[0], atol=1e-5, rtol=0)
        theirs = hf.generate(idx[:1], max_new_tokens=8, do_sample=False)
    mine = ours.generate(idx[:1], 8, temperature=0)
    assert torch.equal(theirs, mine)
    back = load_model(str(out))  # re-import into our format, no transformers involved
    assert back.config.to_dict() == ours.config.to_dict()
    mine_sd, back_sd = ours.state_dict(), back.state_dict()
    assert mine_sd.keys() == back_sd.keys() and all(torch.equal(mine_sd[k], back_sd[k]) for k in mine_sd)


def test_factored_is_smaller_than_dense_and_keeps_tied_embeddings_once(tiny_gpt2_dir, tmp_path, request):
    ours, out = exported("tiny_gpt2_dir", request, tmp_path / "f")
    _, dense_out = exported("tiny_gpt2_dir", request, tmp_path / "d", fmt="dense")
    f, d = (out / "model.safetensors").stat().st_size, (dense_out / "model.safetensors").stat().st_size
    assert f < d
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), "pt") as st:
        keys = set(st.keys())
    assert "gpt.transformer.wte.weight" in keys and "gpt.lm_head.weight" not in keys
    assert "# KronyGPT gpt2 model" in (out / "README.md").read_text()


def test_exported_code_is_this_repos_code(tmp_path, request):
    """No drift: the modules shipped with an export are ours with only the import lines made relative."""
    _, out = exported("tiny_llama_dir", request, tmp_path)
    for name in REMOTE_MODULES:
        shipped = (out / f"{name}.py").read_text()
        assert shipped == remote_source(name)
        original = open(os.path.join(REPO, "model.py" if name == "model" else f"kronygpt/{name}.py")).read()
        differing = [(a, b) for a, b in zip(shipped.splitlines(), original.splitlines(), strict=True) if a != b]
        # model.py imports the library as kronygpt.X; the library's own imports are already relative
        assert all(a.startswith("from .") and a.replace("from .", "from kronygpt.", 1) == b for a, b in differing)


def test_sample_and_eval_take_the_exported_directory(tmp_path, request, tiny_data_dir):
    _, out = exported("tiny_gpt2_dir", request, tmp_path)
    r = subprocess.run([sys.executable, os.path.join(REPO, "sample.py"), f"--init_from={out}", "--num_samples=1",
                        "--max_new_tokens=4"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    r = subprocess.run([sys.executable, os.path.join(REPO, "eval.py"), "--models", str(out), "--data", tiny_data_dir,
                        "--block_size", "32", "--eval_tokens", "512"], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    assert "val_loss" in r.stdout


def test_force_replaces_an_export_whole_and_never_writes_into_a_run(request, tmp_path):
    """--force over a factored export with a dense one leaves no file of the old format; a run directory (or any
    directory that is not an export) is refused even with --force, and left as it was."""
    _, out = exported("tiny_gpt2_dir", request, tmp_path)
    assert (out / "modeling_kronygpt.py").exists()
    export = [sys.executable, os.path.join(REPO, "export.py"), "--init_from", str(tmp_path / "k.pt")]
    r = subprocess.run([*export, "--out", str(out), "--format", "dense"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "--force" in r.stderr
    r = subprocess.run([*export, "--out", str(out), "--format", "dense", "--force"], capture_output=True, text=True,
                       cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (out / "modeling_kronygpt.py").exists() and not (out / "kronecker.py").exists()
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"a week of training")
    r = subprocess.run([*export, "--out", str(run), "--force"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "not an export" in r.stderr
    assert os.listdir(run) == ["last.pt"] and (run / "last.pt").read_bytes() == b"a week of training"
