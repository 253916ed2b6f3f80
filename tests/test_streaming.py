"""Block-streamed decomposition (kronygpt/streaming.py) gives the all-at-once path's plan and factors."""

import json
import os

import pytest
import torch

import kron_decomp
from kronygpt.calib import SpilledMoments, collect_grads
from kronygpt.checkpoint import load_model

CALIB = ["--calib_tokens", "512", "--calib_seq", "32", "--fisher_tokens", "256"]
CASES = {  # what kron_decomp.py is asked: every way a plan is chosen, both families of statistics, --sequential
    "allocate_all_fisher": ["--target_params", "60k", "--allocate", "--scope", "all", "--init", "fisher"],
    "allocate_blocks_aware_sequential": ["--target_params", "70k", "--allocate", "--scope", "blocks", "--init",
                                         "aware", "--sequential"],
    "uniform_scored_fisher": ["--target_params", "60k", "--init", "fisher", "--score_blocks", "1"],
    "kronecker_shape_aware_permute": ["--shape", "16x8", "--factors", "2", "--init", "aware", "--permute"],
    "allocate_mixed_families_fisher_permute": ["--target_params", "60k", "--allocate", "--scope", "blocks", "--init",
                                               "fisher", "--families", "lowrank,kron:2x1,kron:1x2", "--permute"],
    "plan_vl_calibrated_report": ["--plan", "*: mlp=lowrank*5; 1: attn=lowrank*3", "--init", "vl"],
    "allocate_all_mixed_fisher": ["--target_params", "60k", "--allocate", "--scope", "all", "--init", "fisher",
                                  "--families", "lowrank,kron:2x1"],
    "random_scored_target": ["--target_params", "60k", "--init", "random", "--score_blocks", "1"],
    "ratio_fwsvd_blocks": ["--target_params", "60k", "--shape", "lowrank", "--scope", "blocks", "--init", "fwsvd"],
    "ratio_asvd_blocks": ["--target_params", "60k", "--shape", "lowrank", "--scope", "blocks", "--init", "asvd"],
}


def decompose(model_dir, data_dir, out, args, stream):
    kron_decomp.main(["--model", model_dir, "--calib", data_dir, *CALIB, *args, "--out", str(out),
                      *(["--stream"] if stream else [])])
    return load_model(str(out)).state_dict(), json.loads(out.with_suffix(".json").read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_streamed_decomposition_equals_all_at_once(case, tiny_llama_dir, tiny_gpt2_dir, tiny_data_dir, tmp_path):
    model_dir = tiny_gpt2_dir if case.startswith("plan") else tiny_llama_dir
    sd_a, rep_a = decompose(model_dir, tiny_data_dir, tmp_path / "all.pt", CASES[case], stream=False)
    sd_s, rep_s = decompose(model_dir, tiny_data_dir, tmp_path / "streamed.pt", CASES[case], stream=True)
    assert rep_s["plan"] == rep_a["plan"]
    assert sd_s.keys() == sd_a.keys()
    assert any(".A" in k for k in sd_a)  # something was decomposed
    for k in sd_a:
        torch.testing.assert_close(sd_s[k], sd_a[k], rtol=1e-6, atol=1e-7, msg=k)
    for key in ("output_error", "fisher_error", "rel_error"):
        assert [m.get(key) for m in rep_s["matrices"]] == pytest.approx([m.get(key) for m in rep_a["matrices"]])


def test_spilled_gradient_moments_equal_the_in_memory_ones(tiny_llama_dir, tiny_data_dir, tmp_path):
    from kronygpt.calib import calibration_batches
    from kronygpt.data_utils import open_dataset
    dense = load_model(tiny_llama_dir).eval()
    batches = calibration_batches(open_dataset(tiny_data_dir), 512, 32, batch_size=4)  # 4 batches: files added to
    kept = collect_grads(dense, batches, {0, 1}, 512)
    spilled = collect_grads(dense, batches, {0, 1}, 512, spill=str(tmp_path / "g"))
    assert set(spilled) == set(kept)
    for k in kept:
        torch.testing.assert_close(spilled[k], kept[k], rtol=1e-12, atol=0)
    assert len(os.listdir(tmp_path / "g")) == len(kept)
    with pytest.raises(KeyError):
        SpilledMoments(str(tmp_path / "g"))["absent"]


def test_stream_refuses_a_calibration_cache(tiny_llama_dir, tiny_data_dir, tmp_path, capsys):
    from kronygpt.errors import ConfigError
    with pytest.raises((SystemExit, ConfigError)):
        kron_decomp.main(["--model", tiny_llama_dir, "--calib", tiny_data_dir, "--shape", "lowrank", "--init",
                          "aware", "--stream", "--calib_cache", str(tmp_path / "c.pt"),
                          "--out", str(tmp_path / "k.pt")])
    assert not (tmp_path / "k.pt").exists()


class Accelerated(torch.Tensor):
    """A CPU tensor standing for one on an accelerator: an op that mixes it with a plain tensor of one or more
    dimensions fails, as a CUDA op given a CPU tensor does (0-dim tensors, indexing and copies pass, as there);
    .cpu() gives the plain tensor. Lets the CPU suite check that decomposition never mixes devices."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cpu:
            with torch._C.DisableTorchFunctionSubclass():
                return args[0].as_subclass(torch.Tensor).clone()
        tensors = [a for a in torch.utils._pytree.tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        crossing = func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.copy_)
        if not crossing and any(isinstance(t, cls) for t in tensors) and \
                any(not isinstance(t, cls) and t.dim() > 0 for t in tensors):
            raise RuntimeError(f"{getattr(func, '__name__', func)} mixes the model's device with the CPU")
        return super().__torch_function__(func, types, args, kwargs)

    def __deepcopy__(self, memo):
        with torch._C.DisableTorchFunctionSubclass():
            memo[id(self)] = self.clone().as_subclass(type(self))
        return memo[id(self)]


@pytest.mark.parametrize("case", [c for c in sorted(CASES) if "sequential" not in c])
def test_decomposition_of_a_model_on_an_accelerator_keeps_the_statistics_where_they_are(
        case, tiny_llama_dir, tiny_gpt2_dir, tiny_data_dir, tmp_path, monkeypatch):
    """Calibration statistics come back on the CPU (float64, freed from the accelerator); the weights of a model
    decomposed with --device cuda are on the GPU. Every step that meets both must bring them together: the
    factors are those of the all-CPU run."""
    model_dir = tiny_gpt2_dir if case.startswith("plan") else tiny_llama_dir
    sd_cpu, rep_cpu = decompose(model_dir, tiny_data_dir, tmp_path / "cpu.pt", CASES[case], stream=False)
    import kronygpt.decompose as decompose_module
    calibrate = decompose_module.calibrate

    def calibrate_then_move(dense, *a, **k):
        out = calibrate(dense, *a, **k)
        for module in dense.modules():  # the weights "on the accelerator" from here on
            for name, p in list(module.named_parameters(recurse=False)):
                del module._parameters[name]
                module.register_buffer(name, p.detach().as_subclass(Accelerated))
        return out
    monkeypatch.setattr(decompose_module, "calibrate", calibrate_then_move)
    sd_acc, rep_acc = decompose(model_dir, tiny_data_dir, tmp_path / "acc.pt", CASES[case], stream=False)
    assert rep_acc["plan"] == rep_cpu["plan"] and sd_acc.keys() == sd_cpu.keys()
    for k in sd_cpu:
        torch.testing.assert_close(sd_acc[k], sd_cpu[k], rtol=1e-6, atol=1e-7, msg=k)


def test_second_moments_are_accumulated_in_float32_under_a_bfloat16_forward():
    """A bfloat16 calibration forward (autocast) must not turn the moment GEMM itself into bfloat16: C is
    E[x x^T] of the inputs as they arrive, to float32 accuracy."""
    from kronygpt.calib import MomentHooks
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 8)
    x = torch.randn(256, 48) * torch.logspace(-2, 1, 48)  # a spread of scales, as real activations have
    hooks = MomentHooks({"lin": lin})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin(x).dtype == torch.bfloat16  # the forward itself ran in bfloat16
    hooks.remove()
    exact = x.double().t() @ x.double() / x.shape[0]
    torch.testing.assert_close(hooks.moments()["lin"], exact, rtol=1e-4, atol=1e-6 * exact.abs().max().item())


def test_a_bfloat16_calibration_forward_gives_statistics_close_to_float32(tiny_llama_dir, tiny_data_dir):
    """--calib_dtype bfloat16 (the GPU's default): the input and output-gradient moments of every matrix within
    a few percent of the float32 forward's, and not all equal to them (the forward did run in bfloat16; block 0's
    first input, a normalised embedding, has no bfloat16 op before it)."""
    from kronygpt.calib import CalibSettings, calibrate
    from kronygpt.data_utils import open_dataset
    from kronygpt.runtime import autocast
    dense = load_model(tiny_llama_dir).eval()
    stats = {}
    for dtype in ("float32", "bfloat16"):
        with autocast("cpu", dtype):
            settings = CalibSettings("tiny", tokens=512, seq=32, seed=0, fisher_tokens=256, dtype=dtype)
            _, C, G = calibrate(dense, open_dataset(tiny_data_dir), settings, layers={0, 1}, log=lambda _: None)
        stats[dtype] = {**{("C", k): v for k, v in C.items()}, **{("G", k): v for k, v in G.items()}}
    assert stats["float32"].keys() == stats["bfloat16"].keys()
    rel = {}
    for k, ref in stats["float32"].items():
        assert stats["bfloat16"][k].dtype == torch.float64
        rel[k] = ((stats["bfloat16"][k] - ref).norm() / ref.norm()).item()
    assert max(rel.values()) < 0.03, rel
    assert sum(r > 0 for r in rel.values()) >= len(rel) - 1, rel


def test_a_bfloat16_calibration_leaves_the_factorisation_in_full_precision(tiny_llama_dir, tmp_path):
    """Without calibration forwards, --calib_dtype bfloat16 changes nothing: the factorisation (float64 on the
    CPU) is outside autocast's reach, and the report says which precision the forwards were given."""
    out = {}
    for dtype in ("float32", "bfloat16"):
        path = tmp_path / f"{dtype}.pt"
        kron_decomp.main(["--model", tiny_llama_dir, "--shape", "16x8", "--factors", "2", "--init", "vl_norm",
                          "--calib_dtype", dtype, "--out", str(path)])
        out[dtype] = load_model(str(path)).state_dict()
        assert json.loads(path.with_suffix(".json").read_text())["calib_dtype"] == dtype
    for k, v in out["float32"].items():
        assert torch.equal(out["bfloat16"][k], v), k
