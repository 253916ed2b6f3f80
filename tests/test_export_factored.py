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


# -----------------------------------------------------------------------------
# the shipped model behaves like any causal LM of transformers

@pytest.fixture(scope="module", params=["tiny_gpt2_dir", "tiny_llama_dir"])
def shipped(request, tmp_path_factory):
    """(our model, the factored export loaded by transformers) for a tiny GPT-2 and a tiny Llama with GQA."""
    from transformers import AutoModelForCausalLM
    ours, out = exported(request.param, request, tmp_path_factory.mktemp("shipped"))
    return ours, AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True).eval(), out


def test_generation_with_the_cache_equals_generation_without_it(shipped):
    ours, hf, _ = shipped
    x = torch.randint(1, 256, (2, 7))
    with_cache = hf.generate(x, max_new_tokens=12, do_sample=False, use_cache=True)
    assert torch.equal(with_cache, hf.generate(x, max_new_tokens=12, do_sample=False, use_cache=False))
    assert torch.equal(with_cache, ours.generate(x, 12, temperature=0))  # and the repo's own cached generate


def test_a_left_padded_batch_generates_what_each_prompt_alone_does(shipped):
    _, hf, _ = shipped
    torch.manual_seed(3)
    prompts = [torch.randint(1, 256, (n,)) for n in (4, 9, 6)]
    width = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat([torch.zeros(width - len(p), dtype=torch.long), p]) for p in prompts])
    mask = torch.stack([torch.cat([torch.zeros(width - len(p)), torch.ones(len(p))]) for p in prompts]).long()
    batch = hf.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
    for row, p in enumerate(prompts):
        alone = hf.generate(p[None], max_new_tokens=10, do_sample=False, pad_token_id=0)
        assert torch.equal(batch[row, width:], alone[0, len(p):]), row


def test_generation_stops_at_the_eos_token(shipped):
    _, hf, _ = shipped
    x = torch.randint(1, 256, (1, 5))
    free = hf.generate(x, max_new_tokens=12, do_sample=False)
    stop = int(free[0, 5 + 3])  # the fourth new token becomes the stop token
    first = (free[0, 5:] == stop).nonzero()[0].item()
    stopped = hf.generate(x, max_new_tokens=12, do_sample=False, eos_token_id=stop, pad_token_id=stop)
    assert stopped.shape[1] == 5 + first + 1 and int(stopped[0, -1]) == stop


def test_the_standard_api_base_model_attention_and_errors(shipped):
    from transformers import AutoModel, AutoModelForCausalLM
    ours, hf, out = shipped
    x = torch.randint(1, 256, (2, 8))
    n_layer = ours.config.n_layer
    base = AutoModel.from_pretrained(str(out), trust_remote_code=True).eval()
    assert type(base).__name__ == "KronyGPTModel"
    with torch.no_grad():
        h = base(x).last_hidden_state
        torch.testing.assert_close(ours.lm_head(h), hf(x).logits)
        o = hf(x, output_hidden_states=True)
        assert len(o.hidden_states) == n_layer + 1 and torch.equal(o.hidden_states[-1], h)
    with pytest.raises(ValueError, match="eager"):
        hf(x, output_attentions=True)
    for impl in ("eager", "sdpa"):
        m = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True, attn_implementation=impl).eval()
        with torch.no_grad():
            torch.testing.assert_close(m(x).logits, hf(x).logits, atol=1e-5, rtol=0)
            if impl == "eager":
                att = m(x, output_attentions=True).attentions
                assert len(att) == n_layer and att[0].shape[-2:] == (8, 8)
                torch.testing.assert_close(att[0].sum(-1), torch.ones_like(att[0].sum(-1)))
    with pytest.raises(ValueError, match="exceeds the model's context"):
        hf(torch.randint(1, 256, (1, ours.config.block_size + 1)))


def test_a_bf16_export_is_half_the_size_and_reloads(request, tmp_path):
    from transformers import AutoModelForCausalLM
    ours, out = exported("tiny_llama_dir", request, tmp_path)
    r = subprocess.run([sys.executable, os.path.join(REPO, "export.py"), "--init_from", str(tmp_path / "k.pt"),
                        "--out", str(tmp_path / "bf16"), "--dtype", "bfloat16"], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    full, half = (p / "model.safetensors" for p in (out, tmp_path / "bf16"))
    assert half.stat().st_size < 0.55 * full.stat().st_size
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "bf16"), trust_remote_code=True,
                                              dtype=torch.bfloat16).eval()
    x = torch.randint(1, 256, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits.float(), ours(x, all_logits=True)[0], atol=0.1, rtol=0.05)


def test_the_exported_tokenizer_loads_without_a_remote_code_prompt(request, tmp_path):
    """AutoTokenizer on an export once stopped at 'Do you wish to run the custom code? [y/N]' (from the model card's
    snippet, and from sample.py and eval.py): the card's snippet and this repo's loader now say the tokenizer needs
    no code. (transformers 5.24's AutoTokenizer reads the model's config.json, so a bare call still asks.)"""
    _, out = exported("tiny_gpt2_dir", request, tmp_path)
    assert "AutoTokenizer.from_pretrained(DIR, trust_remote_code=False)" in (out / "README.md").read_text()
    code = (f"import sys; sys.path.insert(0, {REPO!r}); from kronygpt.tokenizer import get_tokenizer; "
            f"print(get_tokenizer({str(out)!r}).eot)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=120, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0 and r.stdout.strip() == "50256", r.stderr[-1500:]


def test_static_cache_generation_equals_the_dynamic_cache(shipped):
    # transformers' StaticCache (fixed-size buffers, what torch.compile'd decoding needs), with and without padding
    _, hf, _ = shipped
    x = torch.randint(1, 256, (2, 7))
    dynamic = hf.generate(x, max_new_tokens=12, do_sample=False)
    assert torch.equal(hf.generate(x, max_new_tokens=12, do_sample=False, cache_implementation="static"), dynamic)
    mask = torch.ones_like(x)
    mask[0, :3] = 0  # the first row left-padded
    padded = hf.generate(x, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(hf.generate(x, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0,
                                   cache_implementation="static"), padded)


@pytest.mark.slow
def test_compiled_static_cache_generation_is_one_graph_and_the_same_tokens(shipped):
    # generate(cache_implementation="static") compiles the decoding step on a GPU by itself; the compile config
    # makes it do so on the CPU too. fullgraph: the step has no graph break; one graph for every step and call
    import torch._dynamo
    from transformers import CompileConfig
    _, hf, _ = shipped
    x = torch.randint(1, 256, (2, 5))
    want = hf.generate(x, max_new_tokens=6, do_sample=False)
    cc = CompileConfig(fullgraph=True, dynamic=False, mode="default")
    cc._compile_all_devices = True
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for _ in range(2):
        got = hf.generate(x, max_new_tokens=6, do_sample=False, cache_implementation="static", compile_config=cc)
        assert torch.equal(got, want)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
