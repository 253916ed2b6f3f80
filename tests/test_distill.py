"""train_distillation.py: zero loss for identical models, layer-wise fitting helps, progressive order."""

import json
import os
import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch

import train_distillation
from kronygpt.errors import ConfigError
from kronygpt.checkpoint import load_checkpoint
from conftest import REPO
from kronygpt.distill import FitSettings, TeacherActivations, fit_layers, hidden_mse, make_distill_loss
from kronygpt.factorize import InitSpec
from kronygpt.surgery import decompose_model
from kronygpt.kronecker import kron_shape
from kronygpt.hf_io import load_pretrained
from model import GPTConfig

TINY = ["--block_size=32", "--batch_size=4", "--eval_tokens=1024", "--log_interval=1", "--warmup_iters=2",
        "--learning_rate=3e-3", "--min_lr=3e-4", "--kron_plan=*: mlp=16x8*1"]


def args(teacher, data, out, *extra):
    return [f"--teacher={teacher}", f"--dataset={data}", f"--out_dir={out}", *TINY, *extra]


def records(out, kind):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["type"] == kind]


def test_loss_is_zero_when_student_equals_teacher(tiny_gpt2_dir):
    teacher = load_pretrained(tiny_gpt2_dir).eval()
    student, _ = decompose_model(teacher, f"*: mlp=16x8*{kron_shape(128, 32, 16, 8).max_rank}", InitSpec("vl"))
    loss_fn = make_distill_loss(teacher, alpha=0.0, beta=1.0, temperature=2.0, hidden_weight=1.0,
                                teacher_ctx=nullcontext())
    x = torch.randint(0, 256, (2, 16))
    loss, m = loss_fn(student.eval(), x, x, 0)
    assert abs(m["kl"].item()) < 1e-7 and m["hidden_mse"].item() < 1e-10
    assert abs(loss.item()) < 1e-6
    low, _ = decompose_model(teacher, "*: mlp=16x8*1", InitSpec("vl"))  # a real student is not free
    assert loss_fn(low.eval(), x, x, 0)[0].item() > 1e-5  # > 100x the float noise above


def test_relative_hidden_loss_weighs_every_token_and_block_alike():
    """--hidden_loss=relative divides each token's squared error by the teacher's squared norm there: scaling a
    block's (or a token's) states leaves its share unchanged, where the plain MSE grows with the square and lets
    one token with outlier activations (as SmolLM2 has) outweigh the rest."""
    torch.manual_seed(0)
    t = [torch.randn(2, 8, 16) for _ in range(3)]
    s = [h + 0.1 * torch.randn_like(h) for h in t]
    rel, mse = hidden_mse(s, t, "relative"), hidden_mse(s, t)
    assert 0.005 < rel.item() < 0.02  # about 0.1^2: the noise is a tenth of the states' size
    scaled_t, scaled_s = [t[0] * 100, *t[1:]], [s[0] * 100, *s[1:]]
    assert torch.allclose(hidden_mse(scaled_s, scaled_t, "relative"), rel)
    assert hidden_mse(scaled_s, scaled_t).item() > 1000 * mse.item()
    outlier_t, outlier_s = [h.clone() for h in t], [h.clone() for h in s]
    for h in (outlier_t[1], outlier_s[1]):
        h[0, 0] *= 300  # one token hundreds of times larger than the rest, its relative error unchanged
    assert torch.allclose(hidden_mse(outlier_s, outlier_t, "relative"), rel)
    assert hidden_mse([torch.zeros_like(h) for h in t], t, "relative").item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="relative"):
        hidden_mse(s, t, "cosine")


def test_relative_hidden_loss_trains_and_bad_names_are_refused(tiny_gpt2_dir, tiny_data_dir, tmp_path):
    train_distillation.main(args(tiny_gpt2_dir, tiny_data_dir, tmp_path / "rel", "--max_iters=2",
                                 "--eval_interval=2", "--hidden_weight=1", "--hidden_loss=relative"))
    first = records(tmp_path / "rel", "train")[0]
    assert 0 < first["hidden_mse"] < 1  # a fraction of the teacher's norm, not an absolute MSE
    with pytest.raises(ConfigError, match="hidden_loss must be one of mse, relative"):
        train_distillation.main(args(tiny_gpt2_dir, tiny_data_dir, tmp_path / "bad", "--hidden_loss=cos"))


def fitting_setup(tiny_gpt2_dir, init):
    """(student decomposed with `init`, fit activations, held-out activations, layers) of the tiny GPT-2."""
    torch.manual_seed(0)
    teacher = load_pretrained(tiny_gpt2_dir).eval()
    student, _ = decompose_model(teacher, "*: mlp=16x8*1", InitSpec(init))
    layers = range(teacher.config.n_layer)
    units = {i: "mlp" for i in layers}
    fit = TeacherActivations(teacher, [torch.randint(0, 256, (8, 32)) for _ in range(4)], units, "cpu")
    held = TeacherActivations(teacher, [torch.randint(0, 256, (8, 32))], units, "cpu")
    return student, fit, held, layers


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_teacher_activations_one_layer_at_a_time_equal_a_whole_forward(fixture, request):
    # what a hook sees in one ordinary forward pass of the whole model, for MLP and block units, asked for in
    # any order (a later layer runs the blocks in between, an earlier one starts again)
    teacher = load_pretrained(request.getfixturevalue(fixture)).eval()
    batches = [torch.randint(0, 256, (3, 16)) for _ in range(2)]
    units = {0: "block", 1: "mlp"}
    seen = {i: ([], []) for i in units}
    hooks = []
    for i, kind in units.items():
        def keep(module, inp, out, i=i, flat=kind == "mlp"):
            seen[i][0].append(inp[0].flatten(0, -2) if flat else inp[0])
            seen[i][1].append(out.flatten(0, -2) if flat else out)
        module = teacher.transformer.h[i].mlp if kind == "mlp" else teacher.transformer.h[i]
        hooks.append(module.register_forward_hook(keep))
    with torch.no_grad():
        for x in batches:
            teacher(x)
    for h in hooks:
        h.remove()
    acts = TeacherActivations(teacher, batches, units, "cpu")
    for i in (1, 0, 1):
        X, Y = acts[i]
        E = teacher.config.n_embd
        assert X.shape == ((96, E) if units[i] == "mlp" else (6, 16, E))
        torch.testing.assert_close(X, torch.cat(seen[i][0]), rtol=0, atol=1e-6)
        torch.testing.assert_close(Y, torch.cat(seen[i][1]), rtol=0, atol=1e-6)
    with pytest.raises(KeyError):
        acts[2]


def test_layerwise_fitting_lowers_every_layer_mse(tiny_gpt2_dir):
    student, fit, held, layers = fitting_setup(tiny_gpt2_dir, "random")
    rows = fit_layers(student, (fit, held), layers, FitSettings(steps=60, lr=1e-2, batch=256), log=lambda s: None)
    # from a random start, 60 steps take block 0 to 0.66x and block 1 to 0.34x of the starting error (the seed
    # decides how far; the bar is that every layer gains clearly)
    assert len(rows) == 2 and all(r["mse_after"] < 0.75 * r["mse_before"] for r in rows)


def test_layerwise_fit_that_raises_the_heldout_error_keeps_the_start(tiny_gpt2_dir):
    student, fit, held, layers = fitting_setup(tiny_gpt2_dir, "vl")
    start = {k: v.clone() for k, v in student.state_dict().items()}
    rows = fit_layers(student, (fit, held), layers, FitSettings(steps=20, lr=10.0, batch=256), log=lambda s: None)
    # lr 10 throws Adam far off: every fit is worse on held-out tokens, so every layer keeps its start
    assert all(r["mse_fitted"] > r["mse_before"] and r["kept"] == "start" for r in rows)
    assert all(r["mse_after"] == r["mse_before"] for r in rows)
    assert all(torch.equal(v, start[k]) for k, v in student.state_dict().items())


@pytest.mark.parametrize("order,expected", [("bottom_up", [[0], [0, 1]]), ("top_down", [[1], [0, 1]])])
def test_progressive_replaces_in_order_and_ends_kronecker(tiny_gpt2_dir, tiny_data_dir, tmp_path, order, expected):
    train_distillation.main(args(tiny_gpt2_dir, tiny_data_dir, tmp_path, "--mode=progressive", "--max_iters=6",
                                 "--eval_interval=3", "--progressive_interval=3", f"--progressive_order={order}",
                                 "--progressive_fit=True", "--layerwise_tokens=512", "--layerwise_steps=5"))
    seen = [[int(i) for i in r["kron_layers"].split(",")] for r in records(tmp_path, "eval")]
    assert seen[:2] == expected and seen[-1] == [0, 1]
    assert all("teacher_val_loss" in r for r in records(tmp_path, "eval"))
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert GPTConfig.from_dict(ckpt["model_args"]).plan.layers == [0, 1]
    r = subprocess.run([sys.executable, os.path.join(REPO, "sample.py"), f"--init_from={tmp_path}",
                        "--num_samples=1", "--max_new_tokens=5"], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert r.returncode == 0, r.stderr


def test_layerwise_mode_reports_and_trains(tiny_gpt2_dir, tiny_data_dir, tmp_path):
    train_distillation.main(args(tiny_gpt2_dir, tiny_data_dir, tmp_path, "--mode=layerwise", "--max_iters=2",
                                 "--eval_interval=2", "--layerwise_tokens=2048", "--layerwise_steps=30",
                                 "--kron_init=random", "--hidden_weight=0.5"))
    lw = records(tmp_path, "layerwise")[0]
    assert [r["layer"] for r in lw["layers"]] == [0, 1]
    assert all(r["mse_after"] < r["mse_before"] for r in lw["layers"])
    train = records(tmp_path, "train")
    assert {"ce", "kl", "hidden_mse"} <= set(train[0])


@pytest.mark.slow
def test_torchrun_distillation_smoke(tiny_gpt2_dir, tiny_data_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        os.path.join(REPO, "train_distillation.py"),
                        *args(tiny_gpt2_dir, tiny_data_dir, tmp_path, "--max_iters=3", "--eval_interval=3",
                              "--gradient_accumulation_steps=2")],
                       cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert load_checkpoint(tmp_path / "last.pt")["iter_num"] == 3


def test_llama_teacher_distils(tiny_llama_dir, tiny_data_dir, tmp_path):
    train_distillation.main([f"--teacher={tiny_llama_dir}", f"--dataset={tiny_data_dir}", f"--out_dir={tmp_path}",
                             *TINY[:-2], "--kron_plan=*: mlp=12x8*2", "--max_iters=3",
                             "--eval_interval=3", "--hidden_weight=0.1"])
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["model_args"]["arch"] == "llama" and "12x8*2" in ckpt["model_args"]["kron_plan"]
    assert "model.transformer.h.0.mlp.gate_proj.A" not in ckpt["model"]
    assert ckpt["model"]["transformer.h.0.mlp.gate_proj.A"].shape == (2, 12, 8)


@pytest.mark.slow
def test_layerwise_fitting_stopped_by_a_signal_keeps_its_layers_and_resumes(tiny_gpt2_dir, tiny_data_dir, tmp_path):
    """SIGTERM during layer-wise fitting saves the layers fitted so far (exit 143); the same command continues
    from there and ends with the student an uninterrupted fit gives (each layer's fit is seeded)."""
    import signal
    from kronygpt.checkpoint import save_checkpoint
    student, _ = decompose_model(load_pretrained(tiny_gpt2_dir), "*: mlp=16x8*1", InitSpec("vl"))
    start = save_checkpoint(str(tmp_path / "start.pt"), student, tokenizer="gpt2")
    cmd = [sys.executable, os.path.join(REPO, "train_distillation.py"), f"--teacher={tiny_gpt2_dir}",
           f"--init_from={start}", f"--dataset={tiny_data_dir}", "--mode=layerwise", "--max_iters=0",
           "--block_size=32", "--batch_size=2", "--eval_tokens=256", "--layerwise_tokens=2048",
           "--layerwise_steps=400"]
    r = subprocess.run([*cmd, f"--out_dir={tmp_path / 'whole'}"], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    p = subprocess.Popen([*cmd, f"--out_dir={tmp_path / 'cut'}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=REPO)
    lines = []
    for line in p.stdout:  # wait until the first layer is fitted
        lines.append(line)
        if line.startswith("layer 0:"):
            break
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert (tmp_path / "cut" / "fitting.pt").exists() and not (tmp_path / "cut" / "fitted.pt").exists()
    r = subprocess.run([*cmd, f"--out_dir={tmp_path / 'cut'}"], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming layer-wise fitting" in r.stdout and not (tmp_path / "cut" / "fitting.pt").exists()
    a = load_checkpoint(tmp_path / "whole" / "fitted.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "fitted.pt")["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
