"""GPU code paths (bf16 autocast, fused AdamW, torch.compile on CUDA). Skipped without CUDA, never faked."""

import pytest
import torch

from kronygpt.kronecker import KroneckerLinear, kron_shape
from model import GPT, GPTConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("m1,n1,r", [(768, 768, 1), (1024, 256, 2), (3072, 384, 1)])
def test_kron_layer_bf16_close_to_fp32(m1, n1, r):
    torch.manual_seed(0)
    layer = KroneckerLinear(kron_shape(3072, 768, m1, n1), r).cuda()
    x = torch.randn(4096, 768, device="cuda")
    ref = layer(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = layer(x)
    assert (out.float() - ref).abs().max().item() < 0.05 * ref.abs().max().item()


def test_train_step_bf16_fused_adamw(tiny_data_dir, tmp_path):
    import train
    loss = train.main([f"--dataset={tiny_data_dir}", f"--out_dir={tmp_path}", "--device=cuda", "--dtype=bfloat16",
                       "--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=32", "--batch_size=8",
                       "--max_iters=30", "--eval_interval=30", "--eval_tokens=1024", "--learning_rate=3e-3",
                       "--kron_plan=*: mlp=64x64*1"])
    assert loss < 5.0


def test_compiled_kron_model_matches_eager():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=128, vocab_size=512, block_size=64,
                          kron_plan="*: mlp=128x64*2")).cuda().eval()
    idx = torch.randint(0, 512, (4, 64), device="cuda")
    with torch.no_grad():
        eager, _ = model(idx, all_logits=True)
        compiled, _ = torch.compile(model)(idx, all_logits=True)
    torch.testing.assert_close(compiled, eager, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("stream", [False, True])
def test_calibrated_decomposition_on_the_gpu_matches_the_cpu(stream, tiny_llama_dir, tiny_data_dir, tmp_path):
    """kron_decomp.py --device cuda: calibration on the GPU, statistics and factorisation on the CPU (float64),
    the same plan and factors as the all-CPU run to float32 tolerance (the forwards run on another device;
    --calib_dtype float32, as bfloat16, the GPU's default, would change them by design)."""
    import json

    import kron_decomp
    from kronygpt.checkpoint import load_model
    argv = ["--model", tiny_llama_dir, "--calib", tiny_data_dir, "--calib_tokens", "512", "--calib_seq", "32",
            "--fisher_tokens", "256", "--target_params", "60k", "--allocate", "--scope", "blocks", "--init", "fisher",
            "--rank_multiple", "1", "--calib_dtype", "float32", *(["--stream"] if stream else [])]
    out = {}
    for device in ("cpu", "cuda"):
        path = tmp_path / f"{device}.pt"
        kron_decomp.main([*argv, "--device", device, "--out", str(path)])
        out[device] = load_model(str(path)).state_dict(), json.loads(path.with_suffix(".json").read_text())["plan"]
    assert out["cuda"][1] == out["cpu"][1]
    for k, v in out["cpu"][0].items():
        torch.testing.assert_close(out["cuda"][0][k], v, rtol=1e-3, atol=1e-4, msg=k)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_compiled_generation_with_cuda_graphs_equals_eager(arch):
    """generate(compile=True) on CUDA replays one CUDA graph per decoding step ('reduce-overhead') over a static
    cache kept for the shape: greedy tokens equal the eager dynamic cache's, on a second call too (the graph and
    the buffers reused), and a new batch size gets its own cache."""
    torch.manual_seed(0)
    extra = dict(arch="llama", n_kv_head=2, bias=False, activation="silu") if arch == "llama" else {}
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=128, vocab_size=512, block_size=64,
                          kron_plan="*: mlp=lowrank*32", **extra)).cuda().eval()
    for B in (1, 3, 1):
        idx = torch.randint(0, 512, (B, 7), device="cuda")
        want = model.generate(idx, 16, temperature=0)
        got = model.generate(idx, 16, temperature=0, compile=True)
        assert torch.equal(got, want)
    assert sorted(model._static_caches) == [(1, 23), (3, 23)]
