"""kron_decomp.py: every initialisation does what it claims; plans match built models; bad input fails cleanly."""

import json
import os
import subprocess
import sys

import pytest
import torch

from kronygpt.checkpoint import load_model
from conftest import REPO
from kronygpt.factorize import InitSpec, init_factors, rearrange
from kronygpt.surgery import decompose_model
from kronygpt.planner import list_shapes, parse_count, plan_for_target
from kronygpt.kronecker import kron_shape, kron_sum
from kronygpt.hf_io import load_pretrained
from model import GPT, GPTConfig


def test_full_rank_vl_reproduces_model(tiny_gpt2_dir):
    dense = load_pretrained(tiny_gpt2_dir).eval()  # MLP 32 <-> 128
    s = kron_shape(128, 32, 16, 8)                      # B is (8, 4): max rank min(128, 32) = 32
    kron, rows = decompose_model(dense, f"*: mlp=16x8*{s.max_rank}", InitSpec("vl"))
    assert all(r["rel_error"] < 1e-6 for r in rows)
    idx = torch.randint(0, 256, (2, 16))
    _, loss_dense = dense(idx, idx)
    _, loss_kron = kron.eval()(idx, idx)
    torch.testing.assert_close(loss_kron, loss_dense, atol=1e-5, rtol=0)
    torch.testing.assert_close(kron(idx, all_logits=True)[0], dense(idx, all_logits=True)[0], atol=1e-4, rtol=0)


def test_vl_error_is_the_discarded_singular_values(tiny_gpt2_dir):
    dense = load_pretrained(tiny_gpt2_dir)
    W = dense.transformer.h[0].mlp.c_fc.weight.detach().double()
    s = kron_shape(128, 32, 16, 8)
    S = torch.linalg.svdvals(rearrange(W, s))
    for r in (1, 3):
        _, rows = decompose_model(dense, f"0: mlp=16x8*{r}", InitSpec("vl"))
        got = rows[0]["rel_error"] * torch.linalg.norm(W).item()
        assert got == pytest.approx(S[r:].pow(2).sum().sqrt().item(), rel=1e-6)


@pytest.mark.parametrize("scalars", [False, True])
def test_vl_norm_keeps_the_norm(tiny_gpt2_dir, scalars):
    dense = load_pretrained(tiny_gpt2_dir)
    kron, rows = decompose_model(dense, "*: mlp=16x8*2", InitSpec("vl_norm", scalars=scalars))
    assert all(r["norm_ratio"] == pytest.approx(1.0, abs=1e-5) for r in rows)
    _, plain = decompose_model(dense, "*: mlp=16x8*2", InitSpec("vl"))
    assert all(p["norm_ratio"] < 0.999 for p in plain)  # Van Loan alone loses norm
    fc = kron.transformer.h[0].mlp.c_fc
    if scalars:
        alpha = 1 / plain[0]["norm_ratio"]
        torch.testing.assert_close(fc.scalars.detach(), torch.full((2,), alpha), rtol=1e-5, atol=0)


@pytest.mark.parametrize("keep,eps", [("even", 0.0), ("odd", 0.0), ("even", 0.1)])
def test_prune_keeps_even_or_odd_features(tiny_gpt2_dir, keep, eps):
    dense = load_pretrained(tiny_gpt2_dir)
    kron, _ = decompose_model(dense, "*: mlp=128x16*1", InitSpec("prune", prune_keep=keep,
                                                                 prune_eps=eps))  # (128,16)x(1,2)
    k = 0 if keep == "even" else 1
    for i in range(2):
        W_fc = dense.transformer.h[i].mlp.c_fc.weight.detach()
        H_fc = kron.transformer.h[i].mlp.c_fc.weight.detach()
        torch.testing.assert_close(H_fc[:, k::2], W_fc[:, k::2], rtol=0, atol=0)      # kept input features
        torch.testing.assert_close(H_fc[:, 1 - k::2], eps * W_fc[:, k::2], rtol=0, atol=1e-7)
        W_pr = dense.transformer.h[i].mlp.c_proj.weight.detach()
        H_pr = kron.transformer.h[i].mlp.c_proj.weight.detach()  # (16,128)x(2,1): output features
        torch.testing.assert_close(H_pr[k::2], W_pr[k::2], rtol=0, atol=0)
        torch.testing.assert_close(H_pr[1 - k::2], eps * W_pr[k::2], rtol=0, atol=1e-7)


def test_prune_with_every_offset_is_exact():
    W = torch.randn(6, 8, dtype=torch.float64)
    s = kron_shape(6, 8, 3, 4)  # blocks of (2, 2): four offsets
    A, B, _ = init_factors(W, s, 4, InitSpec("prune"))
    torch.testing.assert_close(kron_sum(A, B), W)


def test_random_init_scale():
    torch.manual_seed(0)
    A, B, _ = init_factors(torch.zeros(3072, 768), kron_shape(3072, 768, 64, 32), 2, InitSpec("random"),
                           random_std=0.02)
    assert kron_sum(A, B).std().item() == pytest.approx(0.02, rel=0.15)


def built_count(config, factors, shape, layers=None):
    blocks = "*" if layers is None else ",".join(map(str, layers))
    cfg = GPTConfig(**{**config.to_dict(), "kron_plan": f"{blocks}: mlp={shape[0]}x{shape[1]}*{factors}"})
    with torch.device("meta"):
        return GPT(cfg).param_counts()["total"]


GPT2 = GPTConfig()
SMOL = GPTConfig(arch="llama", n_embd=576, n_head=9, n_kv_head=3, head_dim=64, mlp_hidden=1536, n_layer=30,
                 vocab_size=49152, bias=False, block_size=2048)


@pytest.mark.parametrize("config,target", [(GPT2, "81.9M"), (GPT2, "80M"), (GPT2, "96M"), (GPT2, "distilgpt2"),
                                           (SMOL, "80M"), (SMOL, "100M")])
def test_target_params_plans_hit_target(config, target):
    total, f, s = plan_for_target(config, parse_count(target))[0]
    assert abs(total - parse_count(target)) <= 0.01 * parse_count(target)
    assert built_count(config, f, (s.m1, s.n1)) == total


def test_known_plans():
    assert plan_for_target(GPT2, parse_count("distilgpt2"))[0][1:] == (1, kron_shape(3072, 768, 768, 768))
    assert plan_for_target(GPT2, parse_count("80M"))[0][1:] == (2, kron_shape(3072, 768, 1024, 256))


def test_list_shapes_counts_equal_built_models():
    rows = list_shapes(GPT2)
    assert len(rows) == 22 * 18 - 2  # divisors of 3072 x divisors of 768, minus the trivial two
    for s, max_rank, keep, counts in rows[::37]:
        for f, c in enumerate(counts, start=1):
            if c is not None:
                assert c == built_count(GPT2, f, (s.m1, s.n1))
    s, _, _, counts = rows[0]
    assert built_count(GPT2, 1, (s.m1, s.n1), layers=(0, 5)) == list_shapes(GPT2, layers=[0, 5])[0][3][0]


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "kron_decomp.py"), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


def test_cli_writes_checkpoint_and_report(tiny_gpt2_dir, tmp_path):
    out = tmp_path / "k.pt"
    r = run_cli("--model", tiny_gpt2_dir, "--factors", "2", "--shape", "16x8", "--init", "vl", "--layers", "1",
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "k.json").read_text())
    assert [m["layer"] for m in report["matrices"]] == [1, 1]
    model = load_model(str(out))
    assert model.config.plan.layers == [1] and report["params_after"]["total"] == model.param_counts()["total"]


@pytest.mark.parametrize("args,message", [
    (["--shape", "5x8"], "does not divide"),
    (["--shape", "16x8", "--factors", "33"], "maximum Kronecker rank"),
    (["--shape", "16x8", "--init", "svd"], "--init must be one of"),
    (["--shape", "16x8", "--init", "fisher", "--fisher_labels", "teacher"], "--fisher_labels must be one of"),
    (["--shape", "16x8", "--model", "/nonexistent/model.pt"], "neither an existing checkpoint"),
    (["--shape", "64x16", "--init", "prune", "--prune_keep", "odd", "--factors", "4"], "at most 3 factors"),
])
def test_cli_bad_input(tiny_gpt2_dir, tmp_path, args, message):
    out = tmp_path / "bad.pt"
    base = ["--model", tiny_gpt2_dir] if "--model" not in args else []
    r = run_cli(*base, *args, "--out", str(out))
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 or "usage" in r.stderr  # one sentence (argparse adds its usage)
    assert os.listdir(tmp_path) == []  # nothing written
