"""The methods people use instead (the frontier study's peers), as options of kron_decomp.py: ASVD and FWSVD
(--init asvd / fwsvd), low rank at one ratio over a scope (--shape lowrank --target_params --scope blocks),
ShortGPT's layer drop (--keep_blocks importance) and Minitron-style width pruning (--width)."""

import json
import re
import math

import pytest
import torch

import kron_decomp
from kronygpt.checkpoint import load_model
from kronygpt.factorize import InitSpec, init_factors
from kronygpt.kronecker import KronShape, kron_sum
from kronygpt.planner import CERTIFIED, allocate_points, lowrank_points, lp_bound
from kronygpt.prune import block_influence, most_influential, obs_keep, prune_width, refit_down

CALIB = ["--calib_tokens", "512", "--calib_seq", "32", "--fisher_tokens", "256"]


def lowrank(o, i):
    return KronShape(o, 1, 1, i)


def moments(n, seed, scales=None):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(400, n, generator=g, dtype=torch.float64) * (scales if scales is not None else 1.0)
    return X, X.t() @ X / X.shape[0]


@pytest.mark.parametrize("init", ["asvd", "fwsvd"])
def test_scaled_svd_is_exact_at_full_rank_and_plain_svd_under_uniform_scales(init):
    torch.manual_seed(0)
    W = torch.randn(12, 8, dtype=torch.float64)
    _, C = moments(8, 1, torch.logspace(-1, 1, 8, dtype=torch.float64))
    G = C[:8, :8] if init == "asvd" else torch.diag(torch.logspace(-2, 1, 12, dtype=torch.float64))
    A, B, _ = init_factors(W, lowrank(12, 8), 8, InitSpec(init), C=C, G=G)
    torch.testing.assert_close(kron_sum(A, B), W)  # full rank: the scaling undone exactly
    A, B, _ = init_factors(W, lowrank(12, 8), 3, InitSpec(init), C=torch.eye(8, dtype=torch.float64) * 4,
                           G=torch.eye(12, dtype=torch.float64) * 9)
    Av, Bv, _ = init_factors(W, lowrank(12, 8), 3, InitSpec("vl"))
    torch.testing.assert_close(kron_sum(A, B), kron_sum(Av, Bv))  # uniform scales: the truncated SVD itself


def test_asvd_weights_the_loud_input_channels_and_fwsvd_the_sensitive_rows():
    """Scaling a side makes the truncation keep what is large on it: ASVD's error on the inputs' own scale and
    FWSVD's on the rows' Fisher weights are lower than plain SVD's."""
    torch.manual_seed(0)
    W = torch.randn(16, 10, dtype=torch.float64)
    scales = torch.logspace(-1.5, 1.5, 10, dtype=torch.float64)
    X, C = moments(10, 2, scales)
    w = torch.logspace(-2, 2, 16, dtype=torch.float64)
    out_err = lambda Wh: ((W - Wh) @ X.t()).pow(2).sum().item()  # noqa: E731
    row_err = lambda Wh: (w[:, None] * (W - Wh)).pow(2).sum().item()  # noqa: E731
    s = lowrank(16, 10)
    svd = kron_sum(*init_factors(W, s, 3, InitSpec("vl"))[:2])
    asvd = kron_sum(*init_factors(W, s, 3, InitSpec("asvd"), C=C)[:2])
    fwsvd = kron_sum(*init_factors(W, s, 3, InitSpec("fwsvd"), G=w ** 2)[:2])
    assert out_err(asvd) < 0.8 * out_err(svd)
    assert row_err(fwsvd) < 0.8 * row_err(svd)


def test_obs_keeps_the_units_whose_removal_costs_least():
    """On a small MLP the greedy optimal-brain-surgeon choice, refitted, is at least as good as every unit set of
    the activation criterion, and equal to the exhaustive best on a case small enough to enumerate."""
    import itertools
    torch.manual_seed(0)
    W = torch.randn(5, 7, dtype=torch.float64)
    _, C = moments(7, 3, torch.logspace(-1, 1, 7, dtype=torch.float64))
    keep = obs_keep(W, C, 4, 1e-8)
    assert len(keep) == 4 and keep == sorted(keep)
    _, err = refit_down(W, C, keep, 1e-8)
    best = min(refit_down(W, C, list(k), 1e-8)[1] for k in itertools.combinations(range(7), 4))
    by_activation = refit_down(W, C, sorted(torch.argsort(C.diagonal(), descending=True)[:4].tolist()), 1e-8)[1]
    assert err <= by_activation + 1e-12
    assert err <= 1.05 * best  # greedy removal: optimal here, and never far off
    _, none_removed = refit_down(W, C, list(range(7)), 0.0)
    assert none_removed < 1e-10


def test_refit_beats_cutting_the_columns():
    torch.manual_seed(0)
    W = torch.randn(6, 9, dtype=torch.float64)
    X, C = moments(9, 4)
    X = X @ torch.randn(9, 9, dtype=torch.float64)  # correlated units: the kept ones can stand in for the others
    C = X.t() @ X / X.shape[0]
    keep = [0, 2, 3, 5, 8]
    W_K, err = refit_down(W, C, keep, 0.0)
    cut = torch.zeros_like(W)
    cut[:, keep] = W[:, keep]
    cut_err = math.sqrt(((W - cut) @ C * (W - cut)).sum().item() / ((W @ C) * W).sum().item())
    assert err < cut_err


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_width_pruning_at_full_width_is_the_same_model_and_narrower_matches_its_report(arch, tiny_llama_dir,
                                                                                     tiny_gpt2_dir, tiny_data_dir):
    from kronygpt.calib import calibration_batches, collect_moments
    from kronygpt.data_utils import open_dataset
    dense = load_model(tiny_llama_dir if arch == "llama" else tiny_gpt2_dir).eval()
    batches = calibration_batches(open_dataset(tiny_data_dir), 512, 32)
    C = collect_moments(dense, batches, set(range(dense.config.n_layer)))
    full, _ = prune_width(dense, dense.config.mlp_hidden, C, log=lambda s: None)
    x = batches[0]
    torch.testing.assert_close(full(x, all_logits=True)[0], dense(x, all_logits=True)[0], rtol=1e-5, atol=1e-5)
    units = dense.config.mlp_hidden // 2
    small, rows = prune_width(dense, units, C, log=lambda s: None)
    assert small.config.mlp_hidden == units and all(r["units"] == units for r in rows)
    down = dense.config.family.down[0]
    assert small.matrix(0, down).weight.shape == (dense.config.n_embd, units)
    assert small.param_counts()["total"] < dense.param_counts()["total"]
    assert all(0 < r["output_error"] < 1 for r in rows)


def test_block_influence_finds_a_block_that_does_nothing(tiny_llama_dir, tiny_data_dir):
    """A block whose output projections are zero passes its input through (influence 0): layer drop removes it
    first."""
    from kronygpt.calib import calibration_batches
    from kronygpt.data_utils import open_dataset
    dense = load_model(tiny_llama_dir).eval()
    with torch.no_grad():
        dense.matrix(1, "attn.c_proj").weight.zero_()
        dense.matrix(1, "down_proj").weight.zero_()
    influence = block_influence(dense, calibration_batches(open_dataset(tiny_data_dir), 512, 32))
    assert influence[1] == pytest.approx(0.0, abs=1e-6) and influence[0] > 1e-3
    assert most_influential(influence, 1) == [0]


def decompose(tmp_path, model, *args):
    out = tmp_path / "k.pt"
    kron_decomp.main(["--model", model, "--out", str(out), *args])
    return load_model(str(out)), json.loads(out.with_suffix(".json").read_text())


@pytest.mark.parametrize("args", [["--width", "auto"], ["--keep_blocks", "importance"],
                                  ["--shape", "lowrank", "--scope", "blocks", "--init", "asvd"],
                                  ["--shape", "lowrank", "--scope", "blocks", "--init", "fwsvd"],
                                  ["--shape", "lowrank", "--scope", "blocks", "--init", "aware"],
                                  ["--shape", "lowrank", "--scope", "blocks", "--init", "vl"]],
                         ids=lambda a: "-".join(a).replace("--", ""))
def test_every_peer_meets_a_target_through_kron_decomp(args, tmp_path, tiny_llama_dir, tiny_data_dir):
    """Each peer is an ordinary kron_decomp.py option that meets --target_params: within 0.5% for the
    factorised ones and width pruning (one unit of every MLP is 576 parameters of SmolLM2's 135M), within one
    block for layer drop."""
    dense = load_model(tiny_llama_dir)
    total = dense.param_counts()["total"]
    target = int(total * 0.8)
    model, report = decompose(tmp_path, tiny_llama_dir, "--target_params", str(target), "--calib", tiny_data_dir,
                              *CALIB, *args)
    got = model.param_counts()["total"]
    per_block = sum(p.numel() for p in dense.transformer.h[0].parameters())
    slack = per_block / 2 if "importance" in args else 0.005 * target + 3 * dense.config.n_embd
    assert abs(got - target) <= slack, (got, target)
    assert report["params_after"]["total"] == got
    if "--scope" in args:  # one ratio for every matrix of every block, attention too
        assert len(report["matrices"]) == 2 * 5
        fracs = {}
        for r in report["matrices"]:
            o, _, _, i = (int(v) for v in r["shape"].strip("()").replace(")x(", ",").split(","))
            fracs[r["matrix"]] = r["params"] / (o * i)
        assert max(fracs.values()) - min(fracs.values()) < 0.1, fracs


def test_allocate_refuses_an_init_it_cannot_score(tmp_path, tiny_llama_dir, tiny_data_dir):
    from kronygpt.errors import ConfigError
    with pytest.raises(ConfigError, match="aware or fisher"):
        decompose(tmp_path, tiny_llama_dir, "--target_params", "60k", "--allocate", "--init", "vl", "--calib",
                  tiny_data_dir)
    assert not (tmp_path / "k.pt").exists()


def test_the_certified_greedy_is_within_its_bound_of_the_optimum(monkeypatch):
    """Where the exact programme would be too slow the greedy is kept only when the LP bound certifies it."""
    import kronygpt.planner as planner
    g = torch.Generator().manual_seed(0)
    points = {}
    for k in range(40):
        sig2 = torch.rand(40, generator=g, dtype=torch.float64).sort(descending=True).values ** 3
        points[k] = lowrank_points((sig2, sig2.sum().item()), 64, 40) + [(64 * 40, 0.0, "dense")]
    budget = 40 * 64 * 40 // 2
    monkeypatch.setattr(planner, "DP_WORK", 0)
    logs = []
    alloc, used = allocate_points(points, budget, log=logs.append)
    err = {k: {p[2]: p[1] for p in v} for k, v in points.items()}
    total = sum(err[k][c] for k, c in alloc.items())
    bound = lp_bound(points, budget)
    assert used <= budget and bound <= total
    assert "certified" in logs[0] or "exact" in logs[0]
    if "certified" in logs[0]:
        assert total <= bound * (1 + CERTIFIED)


def test_a_width_pruned_model_is_fitted_block_by_block(tmp_path, tiny_llama_dir, tiny_data_dir):
    """Layer-wise fitting takes a width-pruned student: every narrowed MLP is fitted to the dense one (no layer has
    a factorised matrix, yet each is fitted), and a fit never leaves a block worse on held-out activations."""
    import train_distillation
    from kronygpt.distill import changed_layers
    dense = load_model(tiny_llama_dir)
    small, _ = decompose(tmp_path, tiny_llama_dir, "--width", "8", "--calib", tiny_data_dir, *CALIB)
    assert changed_layers(small, dense) == list(range(dense.config.n_layer)) and not small.config.plan.layers
    train_distillation.main([f"--teacher={tiny_llama_dir}", f"--init_from={tmp_path / 'k.pt'}",
                             f"--dataset={tiny_data_dir}", f"--out_dir={tmp_path / 'fit'}", "--mode=layerwise",
                             "--max_iters=0", "--block_size=32", "--batch_size=4", "--eval_tokens=1024",
                             "--layerwise_tokens=2048", "--layerwise_steps=30", "--layerwise_lr=3e-3"])
    rec = [json.loads(line) for line in open(tmp_path / "fit" / "log.jsonl")]
    layers = next(r for r in rec if r["type"] == "layerwise")["layers"]
    assert [r["layer"] for r in layers] == list(range(dense.config.n_layer))
    assert all(r["unit"] == "mlp" and r["mse_after"] <= r["mse_before"] for r in layers)
    assert any(r["kept"] == "fitted" and r["mse_after"] < r["mse_before"] for r in layers)
    fitted = load_model(str(tmp_path / "fit" / "fitted.pt"))
    assert fitted.config.mlp_hidden == 8 and fitted.param_counts()["total"] == small.param_counts()["total"]


def test_width_curve_is_the_refit_error_at_every_width():
    """width_curve's errors from one Cholesky factor equal refitting W_down to each prefix of the activation order
    and measuring tr(G D C D^T) / 2 directly; the error falls as units are kept and is zero at full width."""
    from kronygpt.prune import width_curve
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2000, 48, generator=g, dtype=torch.float64) * 3 * torch.rand(48, generator=g, dtype=torch.float64)
    C, W = X.T @ X / 2000, torch.randn(12, 48, generator=g, dtype=torch.float64)
    A = torch.randn(12, 12, generator=g, dtype=torch.float64)
    G = A @ A.T / 12
    curve, order = width_curve(W, C, G, damping=1e-4, grid=8)
    assert [k for k, _ in curve] == [8, 16, 24, 32, 40, 48]
    Cd = C + 1e-4 * C.diagonal().mean() * torch.eye(48, dtype=torch.float64)
    for k, err in curve:
        keep = sorted(order[:k].tolist())
        W_K, _ = refit_down(W, C, keep, 1e-4)
        D = W.clone()
        D[:, keep] -= W_K
        assert err == pytest.approx(0.5 * ((G @ D @ Cd) * D).sum().item(), rel=1e-9, abs=1e-9)
    errs = [e for _, e in curve]
    assert all(a > b for a, b in zip(errs, errs[1:])) and errs[-1] == pytest.approx(0, abs=1e-9)


def test_allocated_widths_follow_the_predicted_loss_and_meet_the_target(tiny_llama_dir, tiny_data_dir, tmp_path):
    """--width allocate: each block its own width, the total within one grid step of the target; a block whose
    output gradients are made 100x larger keeps more units than it did (its errors cost more loss). The model
    saves, reloads and exports (factored) like any other; the dense export, whose config has one MLP width,
    refuses it with a sentence."""
    from kronygpt.errors import UserError
    from kronygpt.exporting import export_model
    from kronygpt.prune import allocate_widths, unit_params
    dense = load_model(tiny_llama_dir)
    total = dense.param_counts()["total"]
    target = int(total * 0.8)
    small, report = decompose(tmp_path, tiny_llama_dir, "--width", "allocate", "--target_params", str(target),
                              "--calib", tiny_data_dir, "--width_criterion", "activation", *CALIB)
    got = small.param_counts()["total"]
    grid = max(1, dense.config.mlp_hidden // 24)
    assert target - grid * unit_params(dense.config) <= got <= target, (got, target)
    assert small.config.widths and report["model_args"]["mlp_widths"] == small.config.mlp_widths
    assert [b.mlp.down_proj.in_features for b in small.transformer.h] == list(small.config.widths)
    again = load_model(str(tmp_path / "k.pt"))
    idx = torch.randint(0, dense.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(again(idx)[0], small(idx)[0])
    with pytest.raises(UserError, match="--format factored"):
        export_model(small, str(tmp_path / "hf_dense"), fmt="dense")
    assert export_model(small, str(tmp_path / "hf"), fmt="auto")[0] == "factored"
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, small.eval()(idx, all_logits=True)[0], rtol=1e-4, atol=1e-4)
    # the allocation itself: scale one block's gradient moment and that block keeps more units
    from kronygpt.calib import calibrate, CalibSettings
    from kronygpt.data_utils import open_dataset
    _, moments, grads = calibrate(dense, open_dataset(tiny_data_dir), CalibSettings(
        name=tiny_data_dir, tokens=512, seq=32, fisher_tokens=256), layers=set(range(dense.config.n_layer)))
    widths, _ = allocate_widths(dense, moments, grads, target, grid, log=None)
    (down,) = dense.config.family.down
    low = min(range(len(widths)), key=lambda b: widths[b])
    louder = {**grads, (low, down): grads[(low, down)] * 100}
    widths_louder, _ = allocate_widths(dense, moments, louder, target, grid, log=None)
    assert widths_louder[low] > widths[low], (widths, widths_louder)


def test_combine_is_the_pareto_frontier_of_every_sum():
    from kronygpt.widths import combine
    a = [(1, 5.0, "a1"), (2, 3.0, "a2"), (4, 0.0, "a4")]
    b = [(1, 4.0, "b1"), (3, 1.0, "b3")]
    front = combine([a, b])
    every = [(ca + cb, ea + eb, (x, y)) for ca, ea, x in a for cb, eb, y in b]
    best = {}
    for c, e, _ in every:
        best[c] = min(best.get(c, float("inf")), e)
    assert [c for c, _, _ in front] == sorted(c for c in best if best[c] < min(
        [best[d] for d in best if d < c], default=float("inf")))
    for c, e, (x, y) in front:
        assert e == best[c] and (c, e, (x, y)) in every


@pytest.mark.parametrize("families", ["lowrank,width", "width"])
def test_width_family_allocates_narrowed_mlps_beside_low_rank(families, tmp_path, tiny_llama_dir, tiny_data_dir):
    """--allocate --families lowrank,width: one budget over narrowed MLPs and low-rank matrices; the model meets
    the target, a narrowed block's MLP is dense and narrower, a factorised matrix sits only in a full-width block,
    and its predicted objective is no worse than low rank alone or width alone at the same budget (both are in its
    search space)."""
    dense = load_model(tiny_llama_dir)
    target = int(dense.param_counts()["total"] * 0.75)
    args = ["--target_params", str(target), "--calib", tiny_data_dir, "--allocate", "--scope", "blocks",
            "--init", "fisher", "--width_criterion", "activation", *CALIB]
    model, report = decompose(tmp_path, tiny_llama_dir, *args, "--families", families)
    got = model.param_counts()["total"]
    assert abs(got - target) <= 0.02 * target and got <= target + 3 * dense.config.n_embd, (got, target)
    h = dense.config.mlp_hidden
    widths = model.config.widths or (model.config.mlp_hidden,) * dense.config.n_layer
    for b, block in enumerate(model.transformer.h):
        assert block.mlp.down_proj.in_features == widths[b]
        specs = model.config.plan.layer_specs(b)
        if widths[b] < h:
            assert not {"gate_proj", "up_proj", "down_proj"} & set(specs)
    if families == "width":  # narrower or dense: no factorised matrix anywhere
        assert not model.config.plan.layers and min(widths) < h
    else:
        lines = report["planning"]
        mixed = float(re.search(r"predicted loss increase \(damped\) ([0-9.e-]+);", next(
            line for line in lines if line.startswith("allocation over"))).group(1))
        alone = [float(re.search(r"\(damped\) ([0-9.e-]+)$", line).group(1)) for line in lines
                 if " alone: " in line]
        assert len(alone) == 2 and all(mixed <= a * (1 + 1e-9) for a in alone), lines
    idx = torch.randint(0, dense.config.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.isfinite(model(idx, all_logits=True)[0]).all()
    again = load_model(str(tmp_path / "k.pt"))
    assert again.config.mlp_widths == model.config.mlp_widths and again.config.kron_plan == model.config.kron_plan
