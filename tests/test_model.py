"""GPT equals Hugging Face GPT-2 / Llama on tiny random models; parameter counts are right."""

import os

import pytest
import torch

from kronygpt.checkpoint import load_model
from kronygpt.errors import UserError
from kronygpt.hf_io import load_pretrained
from model import GPT, GPTConfig


def hf_logits(path, idx):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path).eval()(idx).logits


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "odd_gpt2_dir"])
def test_gpt2_matches_hf(fixture, request):
    path = request.getfixturevalue(fixture)
    model = load_pretrained(path).eval()
    idx = torch.randint(0, model.config.vocab_size, (2, 24))
    logits, _ = model(idx, all_logits=True)
    torch.testing.assert_close(logits, hf_logits(path, idx), atol=1e-5, rtol=0)


def test_forward_modes(tiny_gpt2_dir):
    model = load_pretrained(tiny_gpt2_dir).eval()
    idx = torch.randint(0, 256, (2, 10))
    full, _ = model(idx, all_logits=True)
    last, loss = model(idx)
    assert full.shape == (2, 10, 256) and last.shape == (2, 1, 256) and loss is None
    torch.testing.assert_close(last[:, 0], full[:, -1])
    with_targets, loss = model(idx, idx)
    torch.testing.assert_close(with_targets, full)
    manual = torch.nn.functional.cross_entropy(full.view(-1, 256), idx.view(-1))
    torch.testing.assert_close(loss, manual)


def test_kv_cache_generation_matches_recompute(tiny_gpt2_dir):
    model = load_pretrained(tiny_gpt2_dir).eval()
    idx = torch.randint(0, 256, (2, 5))
    a = model.generate(idx, 12, temperature=0, use_cache=True)
    b = model.generate(idx, 12, temperature=0, use_cache=False)
    assert torch.equal(a, b)


def test_load_model_dispatch_errors(tmp_path):
    from kronygpt.errors import CheckpointError
    with pytest.raises(CheckpointError, match="neither an existing checkpoint"):
        load_model(str(tmp_path / "nothing.pt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError):
        load_model(str(tmp_path / "empty"))


def count(**kw):
    with torch.device("meta"):
        return GPT(GPTConfig(**kw)).param_counts()


def test_param_counts_match_published_gpt2_sizes():
    # GPT-2 124M and DistilGPT2 as counted by Krony-PT (tied embeddings once, wpe included)
    assert count()["total"] == 124_439_808
    assert count(n_layer=6)["total"] == 81_912_576
    # Krony-PT's 81M (768,768)x(4,1), 80M-2 (1024,256)x(3,3) x2, 96M (1536,768)x(2,1) ... c_fc is 3072x768
    assert count(kron_plan="*: mlp=768x768*1")["total"] == 81_972_576
    assert count(kron_plan="*: mlp=1024x256*2")["total"] == 80_400_048
    assert count(kron_plan="*: mlp=1536x768*1")["total"] == 96_128_304
    c = count()
    assert c["embedding"] == 50257 * 768 + 1024 * 768
    assert c["non_embedding"] == c["total"] - c["embedding"]
    assert "counted once" in c["tying"]


def test_untied_counts_lm_head():
    tied = count(n_layer=1, n_embd=32, n_head=2, vocab_size=100, block_size=16)
    untied = count(n_layer=1, n_embd=32, n_head=2, vocab_size=100, block_size=16, tie_embeddings=False)
    assert untied["total"] - tied["total"] == 100 * 32
    assert untied["non_embedding"] == tied["non_embedding"]


def test_per_layer_mlp_choice():
    cfg = GPTConfig(n_layer=3, n_head=2, n_embd=16, vocab_size=50, block_size=16, kron_plan="0,2: mlp=8x4*2")
    model = GPT(cfg)
    from kronygpt.kronecker import KroneckerLinear
    kinds = [type(b.mlp.c_fc).__name__ for b in model.transformer.h]
    assert kinds == ["KroneckerLinear", "Linear", "KroneckerLinear"]
    fc, proj = model.transformer.h[0].mlp.c_fc, model.transformer.h[0].mlp.c_proj
    assert isinstance(proj, KroneckerLinear)
    assert (fc.A.shape, fc.B.shape) == ((2, 8, 4), (2, 8, 4))
    assert (proj.A.shape, proj.B.shape) == ((2, 4, 8), (2, 4, 8))  # opposite shapes


def test_bad_kron_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="does not divide"):
        GPTConfig(n_embd=48, n_head=3, kron_plan="*: mlp=5x4*1")


def test_factorised_layers_keep_the_dense_layers_dtypes_under_autocast():
    """bf16 autocast: a factorised embedding returns float32 rows as nn.Embedding does (so the residual stream and
    the rotary tables stay float32), and a factorised layer with a bias returns nn.Linear's bf16."""
    from kronygpt.kronecker import KroneckerLinear, kron_shape
    torch.manual_seed(0)
    for arch in ("gpt2", "llama"):
        kw = dict(arch=arch, n_layer=1, n_head=2, n_embd=16, vocab_size=64, block_size=16,
                  kron_plan="*: mlp=lowrank*4; embed=lowrank*8")
        if arch == "llama":
            kw.update(bias=False, activation="silu")
        dense, kron = GPT(GPTConfig(**{**kw, "kron_plan": ""})), GPT(GPTConfig(**kw))
        idx = torch.randint(0, 64, (2, 8))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert kron.embed(idx)[0].dtype == dense.embed(idx)[0].dtype == torch.float32
            rope = kron.embed(idx)[1]
            assert rope is None or rope[0].dtype == torch.float32
    x = torch.randn(3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert KroneckerLinear(kron_shape(32, 16, 32, 1), 4)(x).dtype == torch.nn.Linear(16, 32)(x).dtype


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_static_cache_generation_equals_the_dynamic_cache(fixture, request):
    """The fixed-shape cache (for compiled decoding) gives the same tokens as the growing one."""
    model = load_pretrained(request.getfixturevalue(fixture)).eval()
    idx = torch.randint(0, 256, (2, 5))
    a = model.generate(idx, 12, temperature=0)
    b = model.generate(idx, 12, temperature=0, static=True)
    assert torch.equal(a, b)
    torch.manual_seed(3)
    c = model.generate(idx, 6, temperature=1.0, top_k=20)
    torch.manual_seed(3)
    d = model.generate(idx, 6, temperature=1.0, top_k=20, static=True)
    assert torch.equal(c, d)
    with pytest.raises(UserError, match="static cache"):
        model.generate(idx, model.config.block_size, temperature=0, static=True)


@pytest.mark.slow
def test_compiled_static_decoding_equals_eager(tiny_llama_dir):
    from torch._dynamo.utils import counters
    model = load_pretrained(tiny_llama_dir).eval()
    idx = torch.randint(0, 256, (1, 4))
    a = model.generate(idx, 8, temperature=0)
    counters.clear()
    b = model.generate(idx, 8, temperature=0, compile=True)
    c = model.generate(idx, 8, temperature=0, compile=True)  # the compiled step is reused
    assert torch.equal(a, b) and torch.equal(a, c)
    assert counters["stats"]["unique_graphs"] == 1  # one graph for every step of both calls: no recompiles


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "odd_gpt2_dir", "tiny_llama_dir"])
def test_safetensors_reader_equals_the_transformers_path(fixture, request):
    """A local directory is read tensor by tensor (hf_io.SafetensorsDir, no memory map): the same model as
    converting transformers' own load of it."""
    from kronygpt.hf_io import SafetensorsDir, gpt_from_hf, load_hf_model
    path = request.getfixturevalue(fixture)
    assert SafetensorsDir.usable(path)
    got = load_pretrained(path).state_dict()
    want = gpt_from_hf(load_hf_model(path), path).state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_safetensors_reader_takes_shards_bf16_and_unprefixed_names(tiny_gpt2_dir, tmp_path):
    """The layouts hub checkpoints come in: names without the base model's prefix (the gpt2 files'
    'h.0.attn.c_attn.weight'), bfloat16, weights sharded over files with an index. A truncated file is one
    clear error."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from kronygpt.errors import CheckpointError
    from kronygpt.hf_io import gpt_from_hf, load_hf_model
    d = tmp_path / "hub_like"
    d.mkdir()
    shutil.copy(os.path.join(tiny_gpt2_dir, "config.json"), d / "config.json")
    sd = {k.removeprefix("transformer."): v.to(torch.bfloat16)
          for k, v in load_file(os.path.join(tiny_gpt2_dir, "model.safetensors")).items()}
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for fname, names in shards.items():
        save_file({k: sd[k].contiguous() for k in names}, d / fname)
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: f for f, names in shards.items() for k in names}}))
    got = load_pretrained(str(d)).state_dict()
    hf = load_hf_model(tiny_gpt2_dir)
    hf.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in hf.state_dict().items()})
    want = gpt_from_hf(hf, tiny_gpt2_dir).state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)

    last = d / "model-00002-of-00002.safetensors"
    last.write_bytes(last.read_bytes()[:-64])
    with pytest.raises(CheckpointError, match="truncated"):
        load_pretrained(str(d))


@pytest.mark.slow
def test_compiled_blocks_equal_eager_and_compile_once_per_structure():
    """GPT.compile_blocks (regional compilation): the same loss and gradients as eager; blocks of one structure
    share compilations: six low-rank blocks, each at its own rank as an allocated plan has them, one Kronecker
    and one dense block compile far fewer graphs than blocks (one per block before the ranks could turn
    dynamic); the state_dict and the cached decoding path are unchanged."""
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=8, n_head=2, n_embd=16, vocab_size=64, block_size=16,
                    kron_plan="; ".join(f"{b}: mlp=lowrank*{b + 3}" for b in range(6)) + "; 6: mlp=8x4*2")
    model = GPT(cfg)
    idx = torch.randint(0, 64, (2, 12))
    _, loss = model(idx, idx)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    keys = list(model.state_dict())
    model.zero_grad()
    torch._dynamo.reset()
    counters.clear()
    _, got = model.compile_blocks()(idx, idx)
    got.backward()
    torch.testing.assert_close(got, loss, atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4, msg=n)
    assert list(model.state_dict()) == keys
    graphs = counters["stats"]["unique_graphs"]
    assert 1 < graphs <= 5, graphs  # 3 structures, the low rank's first size static and then dynamic
    # a KV-cache pass runs the plain blocks (each block's cache index would compile a graph per block)
    counters.clear()
    model.eval()
    a = model.generate(idx[:1, :4], 4, temperature=0)
    assert counters["stats"]["unique_graphs"] == 0
    assert torch.equal(a[:, :4], idx[:1, :4]) and a.shape == (1, 8)
