"""Per-block plans: the grammar, mixed models that build, count, train, resume and export, and checkpoints
written before plans existed."""

import os

import pytest
import torch

import train
from kronygpt.checkpoint import load_checkpoint, load_model, model_from_checkpoint
from conftest import REPO
from kronygpt.factorize import InitSpec
from kronygpt.surgery import decompose_model
from kronygpt.errors import ConfigError
from kronygpt.hf_io import export_hf
from kronygpt.kronecker import KroneckerLinear
from model import GPT, GPTConfig
from kronygpt.planner import matrices, param_base
from kronygpt.plans import EMBED, Plan

GPT2_TINY = dict(n_layer=3, n_head=2, n_embd=32, vocab_size=256, block_size=32)
LLAMA_TINY = dict(arch="llama", n_layer=3, n_head=4, n_kv_head=2, n_embd=32, mlp_hidden=48, vocab_size=256,
                  block_size=32, bias=False, activation="silu")
MIXED = {"gpt2": "*: mlp=16x8*2; 1: dense; 2: c_proj=lowrank*5",
         "llama": "0: up=24x4*1, down=lowrank*3; 2: gate_proj=lowrank*6, down_proj=8x12*2"}


def test_grammar_round_trip_and_overrides():
    cfg = GPTConfig(**GPT2_TINY, kron_plan=MIXED["gpt2"])
    plan = cfg.plan
    assert plan.layers == [0, 2]
    spec = lambda b, n: (plan.spec(b, n).shape.m1, plan.spec(b, n).shape.n1, plan.spec(b, n).factors)  # noqa: E731
    assert (spec(0, "c_fc"), spec(0, "c_proj")) == ((16, 8, 2), (8, 16, 2))  # 'mlp': down takes the opposite shape
    assert (spec(2, "c_fc"), spec(2, "c_proj")) == ((16, 8, 2), (32, 1, 5))  # a later item overrides one matrix
    assert plan.spec(1, "c_fc") is None and plan.embed is None
    assert Plan.parse(plan.text, cfg.layout()) == plan                       # the text round-trips
    assert plan.restrict([2]).layers == [2] and plan.restrict([2]).spec(2, "c_proj") == plan.spec(2, "c_proj")
    assert Plan.parse("*: mlp=lowrank*4; embed=lowrank*8", cfg.layout()).restrict([0]).embed is None
    assert Plan.parse("embed=lowrank*8", cfg.layout()).spec(EMBED, "wte").factors == 8


def test_a_config_resolves_its_plan_once(monkeypatch):
    """Layers receive their spec from the Plan the config resolved: building a model parses nothing again."""
    calls = []
    original = Plan.parse.__func__
    monkeypatch.setattr(Plan, "parse", classmethod(lambda cls, *a: calls.append(a) or original(cls, *a)))
    cfg = GPTConfig(**LLAMA_TINY, kron_plan=MIXED["llama"])
    GPT(cfg)
    assert len(calls) == 1


@pytest.mark.parametrize("plan,message", [
    ("3-1: mlp=16x8*1", "reversed"), ("0-9: mlp=16x8*1", "outside"), ("*: ffn=16x8*1", "unknown matrix"),
    ("*: attn=5x8*1", "does not divide"), ("embed=lowrank*999", "factors"),
    ("*: mlp=5x4*1", "does not divide"), ("*: mlp=16x8*0", "factors"), ("*: mlp=16x8", "must look like"),
    ("mlp=16x8*1", "BLOCKS: SPEC"), ("*: c_fc=lowrank*40", "factors"),
])
def test_bad_plans_are_one_clear_error(plan, message):
    with pytest.raises(ConfigError, match=message):
        GPTConfig(**GPT2_TINY, kron_plan=plan)


def test_legacy_shorthand_and_a_plan_are_exclusive():
    with pytest.raises(ConfigError, match="both"):
        GPTConfig.from_dict({**GPTConfig(**GPT2_TINY).to_dict(), "kron_plan": "*: mlp=16x8*1", "kron_factors": 1,
                             "kron_shape": (16, 8)})


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_mixed_plan_builds_and_counts(arch):
    kw = GPT2_TINY if arch == "gpt2" else LLAMA_TINY
    cfg = GPTConfig(**kw, kron_plan=MIXED[arch])
    model = GPT(cfg)
    for b, block in enumerate(model.transformer.h):
        specs = cfg.plan.layer_specs(b)
        for name, _ in cfg.family.mlp_matrices:
            layer = getattr(block.mlp, name)
            assert isinstance(layer, KroneckerLinear) == (name in specs)
            if name in specs:
                assert (layer.shape, layer.factors) == (specs[name].shape, specs[name].factors)
    base, _ = param_base(cfg)
    planned = sum(o * i for _, _, o, i in matrices(cfg))
    expected = base + planned - sum(o * i for b, n, o, i in matrices(cfg) if cfg.plan.spec(b, n)) + sum(
        m.A.numel() + m.B.numel() for m in model.modules() if isinstance(m, KroneckerLinear))
    assert model.param_counts()["total"] == expected


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_mixed_plan_trains_resumes_and_exports(arch, tiny_data_dir, tmp_path):
    kw = GPT2_TINY if arch == "gpt2" else LLAMA_TINY
    torch.manual_seed(0)
    dense = GPT(GPTConfig(**kw))
    mixed, rows = decompose_model(dense, MIXED[arch], InitSpec("vl"))
    assert len(rows) == len(mixed.config.plan.items())
    from kronygpt.checkpoint import save_checkpoint
    start = save_checkpoint(str(tmp_path / "start.pt"), mixed)
    common = [f"--dataset={tiny_data_dir}", f"--init_from={start}", "--block_size=16", "--batch_size=2",
              "--eval_tokens=256", "--eval_interval=2", "--log_interval=1", "--warmup_iters=1", "--learning_rate=1e-3"]
    train.main([*common, f"--out_dir={tmp_path / 'a'}", "--max_iters=4"])
    train.main([*common, f"--out_dir={tmp_path / 'b'}", "--max_iters=2"])
    train.main([*common[:1], "--init_from=resume", *common[2:], f"--out_dir={tmp_path / 'b'}", "--max_iters=4"])
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["model_args"]["kron_plan"] == GPTConfig(**kw, kron_plan=MIXED[arch]).kron_plan
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    model = load_model(str(tmp_path / "a")).eval()
    export_hf(model, str(tmp_path / "hf"))
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    idx = torch.randint(0, 256, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx, all_logits=True)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_checkpoints_written_before_plans_still_load(arch):
    """tests/data/v1_*_kron.pt were written by the code before per-block plans (commit 7db327d): the
    uniform kron_factors/kron_shape/kron_layers fields, with reference logits."""
    ckpt = load_checkpoint(os.path.join(REPO, "tests", "data", f"v1_{arch}_kron.pt"))
    model = model_from_checkpoint(ckpt).eval()
    assert model.config.plan.layers == [0, 2]
    with torch.no_grad():
        logits, _ = model(ckpt["extra"]["reference_idx"], all_logits=True)
    torch.testing.assert_close(logits, ckpt["extra"]["reference_logits"], atol=1e-6, rtol=0)
