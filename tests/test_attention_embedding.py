"""Beyond the MLP: factorised attention projections and token embedding (tied lm_head)."""

import os
import subprocess
import sys

import pytest
import torch

from kronygpt.calib import Stats, collect_moments
from kronygpt.checkpoint import load_model, save_checkpoint
from conftest import REPO
from kronygpt.factorize import InitSpec
from kronygpt.surgery import decompose_model
from kronygpt.hf_io import dense_state_dict, load_pretrained
from kronygpt.kronecker import KroneckerEmbedding, KroneckerLinear, kron_shape
from model import GPT, GPTConfig, KVCache
from kronygpt.planner import allocate, lowrank_curves, matrices, param_base

LLAMA = dict(arch="llama", n_layer=2, n_head=4, n_kv_head=2, n_embd=32, mlp_hidden=48, vocab_size=64, block_size=24,
             bias=False, activation="silu")
GPT2 = dict(n_layer=2, n_head=4, n_embd=32, vocab_size=64, block_size=24)
PLAN = "*: mlp=lowrank*4, attn=lowrank*3; 1: attn.c_attn=16x8*2, attn.c_proj=8x8*2; embed=16x8*3"


@pytest.mark.parametrize("kw", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_factorised_model_equals_its_materialised_form_forward_and_gradients(kw):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**kw, kron_plan=PLAN)).double()
    assert isinstance(model.transformer.h[0].attn.c_attn, KroneckerLinear)
    assert isinstance(model.transformer.wte, KroneckerEmbedding) and model.lm_head is model.transformer.wte
    dense = GPT(GPTConfig(**kw)).double()
    dense.load_state_dict(dense_state_dict(model))
    idx = torch.randint(0, 64, (2, 12))
    loss, ref = model(idx, idx)[1], dense(idx, idx)[1]
    torch.testing.assert_close(loss, ref, atol=1e-12, rtol=0)
    loss.backward()
    ref.backward()
    # the dense weights' gradients, mapped through the factorisation, are the factors' gradients:
    # dL/dA_k = sum over blocks of dL/dW * B_k (the chain rule on W = sum A (x) B), checked on the embedding
    emb, W = model.transformer.wte, dense.transformer.wte.weight
    s = emb.shape
    G = W.grad.reshape(s.m1, s.m2, s.n1, s.n2)
    expect_A = torch.einsum("ikjl,rkl->rij", G, emb.B.detach())
    torch.testing.assert_close(emb.A.grad, expect_A, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_full_rank_decomposition_of_everything_reproduces_the_logits(fixture, request):
    dense = load_pretrained(request.getfixturevalue(fixture)).eval()
    cfg = dense.config
    dims = cfg.matrix_dims()
    full = ", ".join(f"{n}=lowrank*{min(dims[n])}" for n in cfg.family.block_matrices)
    kron, rows = decompose_model(dense, f"*: {full}; embed=lowrank*{cfg.n_embd}", InitSpec("vl"))
    assert any(r["layer"] == "embed" for r in rows) and all(r["rel_error"] < 1e-5 for r in rows)
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    torch.testing.assert_close(kron(idx, all_logits=True)[0], dense(idx, all_logits=True)[0], atol=1e-4, rtol=0)


def test_kv_cache_matches_the_full_forward_with_factorised_attention():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**LLAMA, kron_plan=PLAN)).eval()
    idx = torch.randint(0, 64, (1, 10))
    full, _ = model(idx, all_logits=True)
    cache = KVCache()
    first, _ = model(idx[:, :6], cache=cache, all_logits=True)
    steps = [model(idx[:, t:t + 1], cache=cache)[0] for t in range(6, 10)]
    torch.testing.assert_close(torch.cat([first] + steps, dim=1), full, atol=1e-5, rtol=0)


def test_calibrated_decomposition_and_allocation_over_the_whole_model(tiny_llama_dir):
    dense = load_pretrained(tiny_llama_dir).eval()
    torch.manual_seed(0)
    batches = [torch.randint(0, 256, (4, 16)) for _ in range(2)]
    moments = collect_moments(dense, batches, {0, 1})
    mats = matrices(dense.config, scope="all")
    assert ("embed", "wte", 256, 64) in mats and any(n == "attn.c_attn" for _, n, _, _ in mats)
    base, _ = param_base(dense.config, scope="all")
    budget = base + 20_000
    alloc, used = allocate(lowrank_curves(dense, moments, mats), mats, budget - base)
    assert used <= budget - base
    plan_parts = {}
    for (b, n), r in alloc.items():
        if r != "dense" and b != "embed":
            plan_parts.setdefault(b, []).append(f"{n}=lowrank*{r}")
    plan = "; ".join(f"{b}: {', '.join(p)}" for b, p in plan_parts.items())
    if alloc[("embed", "wte")] != "dense":
        plan += f"; embed=lowrank*{alloc[('embed', 'wte')]}"
    kron, rows = decompose_model(dense, plan, InitSpec("aware"), Stats(moments))
    assert all("output_error" in r for r in rows)
    assert kron.param_counts()["total"] <= budget


def test_factored_export_round_trips_attention_and_embedding(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**LLAMA, kron_plan=PLAN)).eval()
    ckpt = save_checkpoint(str(tmp_path / "m.pt"), model, tokenizer=None)
    r = subprocess.run([sys.executable, os.path.join(REPO, "export.py"), "--init_from", ckpt, "--out",
                        str(tmp_path / "hf")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), trust_remote_code=True).eval()
    idx = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx, all_logits=True)[0], atol=1e-5, rtol=0)
    back = load_model(str(tmp_path / "hf"))
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())


def test_embedding_lookup_never_builds_the_table(monkeypatch):
    from kronygpt import kronecker
    emb = KroneckerEmbedding(kron_shape(64, 32, 64, 1), 4, bias=False)
    monkeypatch.setattr(kronecker, "kron_sum", lambda *a, **k: pytest.fail("the table was materialised"))
    out = emb(torch.randint(0, 64, (3, 5)))
    assert out.shape == (3, 5, 32)
