"""Calibrated decomposition: activation-aware factors, the low-rank member, calibration statistics, the
calibrated planner and the allocator."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from kronygpt.calib import HEAD, BlockRunner, Stats, collect_moments
from kronygpt.checkpoint import load_model
from conftest import REPO
from kronygpt.factorize import (InitSpec, TriangularInverse, aware_factors, balance, init_factors, output_error,
                                whitening)
from kronygpt.surgery import SurgeryOptions, decompose_model
from kronygpt.kronecker import KronShape, kron_shape, kron_sum
from kronygpt.hf_io import load_pretrained
from kronygpt.planner import allocate, lowrank_curves, matrices, curve_error

SHAPES = [KronShape(12, 1, 1, 8),   # low rank: (out,1)x(1,in)
          KronShape(4, 8, 3, 1),    # n2 = 1: the input index lives in A (exact whitening)
          KronShape(3, 1, 4, 8),    # n1 = 1: the input index lives in B (exact whitening)
          KronShape(4, 2, 3, 4)]    # general: Kronecker-factored covariance


def random_cov(n, seed, spread=3.0):
    """An anisotropic PSD covariance with eigenvalues spread over `spread` decades."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return (Q * torch.logspace(0, -spread, n, dtype=torch.float64)) @ Q.t()


@pytest.mark.parametrize("s", SHAPES, ids=str)
def test_aware_equals_vl_when_the_covariance_is_the_identity(s):
    W = torch.randn(s.out_features, s.in_features, dtype=torch.float64)
    C = torch.eye(s.in_features, dtype=torch.float64)
    for r in (1, 2):
        A, B, _ = aware_factors(W, s, r, C)
        Av, Bv, _ = init_factors(W, s, r, InitSpec("vl"))
        torch.testing.assert_close(kron_sum(A, B), kron_sum(Av, Bv))


@pytest.mark.parametrize("s", SHAPES, ids=str)
def test_whitened_inits_return_balanced_factors(s):
    """Undoing the whitening leaves the pairs on arbitrary scales; init_factors hands them back with equal
    norms (as Van Loan's), the product untouched."""
    torch.manual_seed(0)
    W = torch.randn(s.out_features, s.in_features, dtype=torch.float64)
    C, G = 50.0 * random_cov(s.in_features, 11), random_cov(s.out_features, 12) / 50.0
    A0, B0, _ = aware_factors(W, s, 2, C, G=G)
    na0, nb0 = A0.flatten(1).norm(dim=1), B0.flatten(1).norm(dim=1)
    assert not torch.allclose(na0, nb0, rtol=1e-3)  # unbalanced before
    A, B, _ = init_factors(W, s, 2, InitSpec("fisher", damping=0.0), C=C, G=G)
    torch.testing.assert_close(A.flatten(1).norm(dim=1), B.flatten(1).norm(dim=1))
    torch.testing.assert_close(kron_sum(A, B), kron_sum(A0, B0))
    Z = torch.zeros_like(B0)  # a pair with a zero factor stays as it is, finite
    Ab, Bb = balance(A0, Z)
    assert torch.equal(Ab, A0) and torch.equal(Bb, Z)


@pytest.mark.parametrize("s", SHAPES, ids=str)
def test_aware_is_exact_at_full_rank(s):
    W = torch.randn(s.out_features, s.in_features, dtype=torch.float64)
    A, B, _ = aware_factors(W, s, s.max_rank, random_cov(s.in_features, 1))
    torch.testing.assert_close(kron_sum(A, B), W)


@pytest.mark.parametrize("s", SHAPES, ids=str)
def test_aware_has_lower_calibrated_error_than_vl(s):
    """Exact whitening shapes: any covariance; the general shape: a Kronecker-structured one (where the
    factored covariance is exact, so aware is optimal)."""
    torch.manual_seed(0)
    W = torch.randn(s.out_features, s.in_features, dtype=torch.float64)
    if s.n1 == 1 or s.n2 == 1:
        C = random_cov(s.in_features, 2)
    else:
        C = torch.kron(random_cov(s.n1, 3), random_cov(s.n2, 4))
    for r in range(1, s.max_rank):
        A, B, _ = init_factors(W, s, r, InitSpec("aware", damping=0.0), C=C)
        Av, Bv, _ = init_factors(W, s, r, InitSpec("vl"))
        assert output_error(W, kron_sum(A, B), C) <= output_error(W, kron_sum(Av, Bv), C) + 1e-9


def test_low_rank_member_is_truncated_svd():
    torch.manual_seed(0)
    W = torch.randn(20, 12, dtype=torch.float64)
    s = kron_shape(20, 12, 20, 1)   # (20,1)x(1,12): W = sum_k a_k b_k^T
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    for r in (1, 4, 11):
        A, B, _ = init_factors(W, s, r, InitSpec("vl"))
        torch.testing.assert_close(kron_sum(A, B), (U[:, :r] * S[:r]) @ Vh[:r])
        assert output_error(W, kron_sum(A, B)) == pytest.approx((S[r:].pow(2).sum() / S.pow(2).sum()).sqrt().item())


def test_aware_low_rank_error_is_the_discarded_whitened_spectrum():
    torch.manual_seed(0)
    W = torch.randn(16, 10, dtype=torch.float64)
    C = random_cov(10, 5)
    L, _ = whitening(C)
    S = torch.linalg.svdvals(W @ L)
    for r in (2, 5):
        A, B, _ = init_factors(W, kron_shape(16, 10, 16, 1), r, InitSpec("aware", damping=0.0), C=C)
        expected = (S[r:].pow(2).sum() / S.pow(2).sum()).sqrt().item()
        assert output_error(W, kron_sum(A, B), C) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("out_dim,in_dim", [(24, 10), (10, 24), (12, 12)])
def test_whitened_spectrum_from_the_smaller_gram_equals_the_whitened_matrix(out_dim, in_dim):
    """The spectrum formed without the wider side's whitening (W^T G W or W C W^T) equals the squared singular
    values of R^T W L itself: with both moments, the input moment alone, a diagonal G (the logits') and no
    damping (M formed, as whitening may clamp); the normaliser too."""
    from kronygpt.factorize import whitened_spectrum
    torch.manual_seed(0)
    W = torch.randn(out_dim, in_dim, dtype=torch.float64)
    C, G, g = random_cov(in_dim, 4), random_cov(out_dim, 5, spread=5.0), torch.rand(out_dim, dtype=torch.float64)
    for C_, G_, damping in ((C, G, 1e-4), (C, None, 1e-4), (C, g, 1e-4), (None, G, 1e-4), (C, G, 0.0)):
        L = whitening(C_, damping, inverse=False)[0] if C_ is not None else torch.eye(in_dim, dtype=torch.float64)
        R = (whitening(G_, 1e-2, inverse=False)[0] if G_ is not None and G_.dim() == 2 else
             torch.diag((g + 1e-2 * g.mean()).sqrt()) if G_ is not None else torch.eye(out_dim, dtype=torch.float64))
        want = torch.linalg.svdvals(R.t() @ W @ L).pow(2)
        sig2, norm = whitened_spectrum(W, C_, G_, damping, 1e-2)
        torch.testing.assert_close(sig2[:len(want)], want, rtol=1e-9, atol=1e-9 * want[0].item())
        assert norm == (2.0 if G_ is not None else pytest.approx(want.sum().item(), rel=1e-9))


@pytest.mark.parametrize("out_dim,in_dim", [(24, 10), (10, 24)])
def test_lowrank_fisher_factors_whiten_only_the_smaller_side(out_dim, in_dim):
    """The low-rank member's calibrated factors, computed from the smaller side's Gram matrix alone, are the
    truncated SVD of R^T W L undone on both sides: R^-T [R^T W L]_r L^-1, with G and without."""
    torch.manual_seed(0)
    W = torch.randn(out_dim, in_dim, dtype=torch.float64)
    C, G = random_cov(in_dim, 4), random_cov(out_dim, 5, spread=5.0)
    s = kron_shape(out_dim, in_dim, out_dim, 1)
    for G_ in (G, None):
        L = whitening(C, 1e-4, inverse=False)[0]
        R = whitening(G_, 1e-2, inverse=False)[0] if G_ is not None else torch.eye(out_dim, dtype=torch.float64)
        U, S, Vh = torch.linalg.svd(R.t() @ W @ L)
        for r in (1, 3, 7):
            A, B, exact = aware_factors(W, s, r, C, 1e-4, G=G_, g_damping=1e-2)
            want = torch.linalg.solve(R.t(), (U[:, :r] * S[:r]) @ Vh[:r]) @ torch.linalg.inv(L)
            assert exact and A.shape == (r, out_dim, 1) and B.shape == (r, 1, in_dim)
            torch.testing.assert_close(kron_sum(A, B), want, rtol=1e-8, atol=1e-10)


def test_singular_or_zero_covariance_gives_finite_factors():
    W = torch.randn(12, 8, dtype=torch.float64)
    x = torch.randn(3, 8, dtype=torch.float64)          # rank-3 covariance
    for C in (x.t() @ x, torch.zeros(8, 8, dtype=torch.float64)):
        for s in (KronShape(12, 1, 1, 8), KronShape(4, 2, 3, 4)):
            for damping in (0.0, 1e-4, 1e-12):  # eigh; Cholesky; Cholesky refused (tiny pivot), eigh
                A, B, _ = init_factors(W, s, 2, InitSpec("aware", damping=damping), C=C)
                assert torch.isfinite(A).all() and torch.isfinite(B).all()


def test_triangular_inverse_equals_multiplying_by_the_formed_inverse():
    """The Cholesky whitening's L^-1 is applied by triangular solves (never formed): on both sides,
    transposed or not, and on a batch of factors (r, ., n) as Kronecker factors come."""
    torch.manual_seed(0)
    L = torch.linalg.cholesky(random_cov(6, 6) + 0.1 * torch.eye(6, dtype=torch.float64))
    Li, inv = TriangularInverse(L), torch.linalg.inv(L)
    X = torch.randn(3, 4, 6, dtype=torch.float64)
    Xt = X.mT.contiguous()  # (3, 6, 4)
    torch.testing.assert_close(X @ Li, X @ inv)
    torch.testing.assert_close(X @ Li.t(), X @ inv.t())
    torch.testing.assert_close(Li @ Xt, inv @ Xt)
    torch.testing.assert_close(Li.t() @ Xt, inv.t() @ Xt)
    torch.testing.assert_close(Li.t() @ Xt[0], inv.t() @ Xt[0])


def test_cholesky_whitening_gives_the_factors_of_the_symmetric_square_root():
    # with damping, whitening returns the Cholesky factor; the aware factors must not depend on which
    # square root of C is used: compare with [W S]_r S^-1 for the symmetric root S (from eigh)
    torch.manual_seed(0)
    W = torch.randn(16, 10, dtype=torch.float64)
    C = random_cov(10, 3)
    Cd = C + 1e-3 * C.diagonal().mean() * torch.eye(10, dtype=torch.float64)
    L, L_inv = whitening(C, 1e-3)
    assert torch.equal(L, L.tril()) and torch.allclose(L @ L.t(), Cd, atol=1e-12)  # the Cholesky path
    assert torch.allclose(L @ L_inv, torch.eye(10, dtype=torch.float64), atol=1e-10)
    evals, U = torch.linalg.eigh(Cd)
    S = (U * evals.sqrt()) @ U.t()
    for r in (2, 5):
        u, sig, vh = torch.linalg.svd(W @ S, full_matrices=False)
        expected = (u[:, :r] * sig[:r]) @ vh[:r] @ torch.linalg.inv(S)
        A, B, _ = init_factors(W, kron_shape(16, 10, 16, 1), r, InitSpec("aware", damping=1e-3), C=C)
        assert torch.allclose(kron_sum(A, B), expected, atol=1e-9)


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_calibration_moments_equal_a_direct_computation(fixture, request):
    model = load_pretrained(request.getfixturevalue(fixture)).eval()
    torch.manual_seed(0)
    batches = [torch.randint(0, 256, (2, 16)) for _ in range(3)]
    inputs = {}
    hooks = []
    for b, block in enumerate(model.transformer.h):
        for name in model.config.family.block_matrices:
            mod = block.matrix(name)
            hooks.append(mod.register_forward_pre_hook(
                lambda m, a, key=(b, name): inputs.setdefault(key, []).append(a[0].reshape(-1, a[0].shape[-1]))))
    hooks.append(model.lm_head.register_forward_pre_hook(
        lambda m, a: inputs.setdefault(HEAD, []).append(a[0].reshape(-1, a[0].shape[-1]))))
    with torch.no_grad():
        for x in batches:
            model(x, all_logits=True)
    for h in hooks:
        h.remove()
    moments = collect_moments(model, batches, set(range(model.config.n_layer)))
    assert set(moments) == set(inputs)
    for key, xs in inputs.items():
        X = torch.cat(xs).double()
        direct = X.t() @ X / len(X)  # ours sums float32 per-batch Gram matrices in float64
        torch.testing.assert_close(moments[key], direct, rtol=0, atol=1e-6 * direct.abs().max().item())


def test_block_runner_reproduces_the_forward(tiny_llama_dir):
    model = load_pretrained(tiny_llama_dir).eval()
    x = torch.randint(0, 256, (2, 16))
    runner = BlockRunner(model, [x])
    for b in range(model.config.n_layer):
        runner.advance(b)
    hidden = []
    with torch.no_grad():
        model(x, hidden=hidden)
    torch.testing.assert_close(runner.hidden[0], hidden[-1])


@pytest.mark.parametrize("sequential", [False, True])
def test_full_rank_aware_reproduces_the_model(tiny_llama_dir, sequential):
    dense = load_pretrained(tiny_llama_dir).eval()   # MLP 64 <-> 96
    batches = [torch.randint(0, 256, (2, 16)) for _ in range(2)]
    kw = dict(calib=batches, options=SurgeryOptions(sequential=True)) if sequential else \
        dict(stats=Stats(collect_moments(dense, batches, {0, 1})))
    kron, rows = decompose_model(dense, "*: mlp=lowrank*64", InitSpec("aware", damping=0.0), **kw)
    assert all(r["output_error"] < 1e-6 and r["whitening"] == "exact" for r in rows)
    idx = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(kron(idx, all_logits=True)[0], dense(idx, all_logits=True)[0], atol=1e-4, rtol=0)


def test_allocation_meets_the_budget_and_beats_uniform_on_its_objective(tiny_llama_dir):
    dense = load_pretrained(tiny_llama_dir).eval()
    torch.manual_seed(0)
    batches = [torch.randint(0, 256, (4, 16)) for _ in range(4)]
    moments = collect_moments(dense, batches, {0, 1})
    mats = matrices(dense.config)
    curves = lowrank_curves(dense, moments, mats)
    for r in (4, 12, 30):
        budget = len(mats) * r * (64 + 96)
        alloc, used = allocate(curves, mats, budget)
        assert used <= budget
        ours = sum(0.0 if a == "dense" else curve_error(curves, k, a) ** 2 for k, a in alloc.items())
        uniform = sum(curve_error(curves, (b, n), r) ** 2 for b, n, _, _ in mats)
        assert ours <= uniform + 1e-9


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "kron_decomp.py"), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=300)


@pytest.mark.parametrize("init,allocate,scope", [("aware", False, "mlp"), ("fisher", True, "mlp"),
                                                  ("fisher", True, "all")])
def test_cli_calibrated_planner_and_allocation(tiny_llama_dir, tiny_data_dir, tmp_path, init, allocate, scope):
    out = tmp_path / "k.pt"
    r = run_cli("--model", tiny_llama_dir, "--target_params", "60k", "--init", init, "--calib", tiny_data_dir,
                "--calib_tokens", "512", "--calib_seq", "32", "--fisher_tokens", "256", "--out", str(out),
                *(["--allocate", "--scope", scope] if allocate else []))
    assert r.returncode == 0, r.stderr
    if allocate:
        assert "allocation" in r.stdout and "predicted loss increase" in r.stdout
    else:
        assert "candidate plans scored by calibrated output error" in r.stdout and "low rank" in r.stdout
    report = json.loads((tmp_path / "k.json").read_text())
    assert report["init"] == init and report["calib"] == tiny_data_dir
    assert all("output_error" in m and m["whitening"] == "exact" for m in report["matrices"])
    assert all(("fisher_error" in m) == (init == "fisher") for m in report["matrices"])
    if init == "fisher":  # the summary is the sum of the per-matrix estimates
        assert report["predicted_loss_increase"] == pytest.approx(sum(m["fisher_error"] for m in report["matrices"]))
    assert abs(report["params_after"]["total"] - 60_000) <= 600
    assert load_model(str(out)).param_counts()["total"] == report["params_after"]["total"]


def test_cli_calibrates_on_a_mixture(tiny_llama_dir, tiny_data_dir, tmp_path):
    """--calib takes a mixture like training's --dataset (issue 32: calibrate on teacher text and the
    training corpus), and --calib_tokens is checked against the mixture's total."""
    mix = f"{tiny_data_dir}:0.5,{tiny_data_dir}:0.5"
    common = ["--model", tiny_llama_dir, "--shape", "lowrank", "--factors", "4", "--init", "aware", "--calib", mix,
              "--calib_seq", "32"]
    r = run_cli(*common, "--calib_tokens", "512", "--out", str(tmp_path / "m.pt"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "m.json").read_text())["calib"] == mix
    r = run_cli(*common, "--calib_tokens", "100000", "--out", str(tmp_path / "big.pt"))
    assert r.returncode == 2 and "--calib_tokens" in r.stderr and "69,840" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_cli_calibration_cache_is_reused_and_grows_only_when_needed(tiny_llama_dir, tiny_data_dir, tmp_path):
    cache = tmp_path / "calib.pt"
    common = ["--model", tiny_llama_dir, "--shape", "lowrank", "--factors", "4", "--calib", tiny_data_dir,
              "--calib_tokens", "512", "--calib_seq", "32", "--fisher_tokens", "256", "--calib_cache", str(cache)]
    runs = [("aware", "a"), ("aware", "b"), ("fisher", "c"), ("fisher", "d")]
    stamps, reports = [], []
    for init, name in runs:
        r = run_cli(*common, "--init", init, "--out", str(tmp_path / f"{name}.pt"))
        assert r.returncode == 0, r.stderr
        stamps.append(cache.stat().st_mtime_ns)
        reports.append((r.stdout, json.loads((tmp_path / f"{name}.json").read_text())))
    assert f"(from {cache})" not in reports[0][0]
    assert f"(from {cache})" in reports[1][0] and stamps[1] == stamps[0]  # reused, not rewritten
    assert stamps[2] != stamps[1]                                         # the gradients were added
    assert reports[3][0].count(f"(from {cache})") == 2 and stamps[3] == stamps[2]
    for (_, a), (_, b) in ((reports[0], reports[1]), (reports[2], reports[3])):  # same statistics, same factors
        assert [m["output_error"] for m in a["matrices"]] == pytest.approx([m["output_error"] for m in b["matrices"]])
    stored = torch.load(cache, weights_only=True)
    assert {"moments", "grads_256"} <= set(stored)


def test_cli_permute_reports_the_gain_per_block(tiny_llama_dir, tiny_data_dir, tmp_path):
    # the report once raised TypeError: its summary key 'permute' clashed with the --permute flag's
    out = tmp_path / "k.pt"
    r = run_cli("--model", tiny_llama_dir, "--shape", "16x8", "--factors", "1", "--init", "aware", "--permute",
                "--calib", tiny_data_dir, "--calib_tokens", "512", "--calib_seq", "32", "--out", str(out))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "k.json").read_text())
    assert report["permute"] is True
    gains = report["permute_error"]
    assert len(gains) == 2 and all(g["after"] <= g["before"] + 1e-9 for g in gains.values())


def test_cli_fisher_with_a_factorised_embedding(tiny_llama_dir, tiny_data_dir, tmp_path):
    """The tied embedding's row has its predicted loss increase (diagonal G) and is measured against the
    dense W, not the gradient-weighted one (the report once summed a missing key and showed norm ratio 248)."""
    r = run_cli("--model", tiny_llama_dir, "--plan", "*: mlp=lowrank*4; embed=lowrank*8", "--init", "fisher",
                "--calib", tiny_data_dir, "--calib_tokens", "512", "--calib_seq", "32", "--fisher_tokens", "256",
                "--out", str(tmp_path / "k.pt"))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "k.json").read_text())
    embed = [m for m in report["matrices"] if m["layer"] == "embed"]
    assert len(embed) == 1 and embed[0]["fisher_error"] > 0 and 0.0 < embed[0]["norm_ratio"] < 1.5
    assert embed[0]["whitening"] == "exact"
    assert report["predicted_loss_increase"] == pytest.approx(sum(m["fisher_error"] for m in report["matrices"]))


def test_cli_aware_needs_calibration(tiny_llama_dir, tmp_path):
    r = run_cli("--model", tiny_llama_dir, "--shape", "lowrank", "--factors", "4", "--init", "aware",
                "--out", str(tmp_path / "k.pt"))
    assert r.returncode == 2 and "--calib" in r.stderr and "Traceback" not in r.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("s", SHAPES, ids=str)
def test_fisher_is_aware_when_the_gradient_moment_is_the_identity_and_exact_at_full_rank(s):
    W = torch.randn(s.out_features, s.in_features, dtype=torch.float64)
    C, G = random_cov(s.in_features, 6), torch.eye(s.out_features, dtype=torch.float64)
    A, B, _ = init_factors(W, s, 1, InitSpec("fisher", damping=0.0, g_damping=0.0), C=C, G=G)
    Aa, Ba, _ = init_factors(W, s, 1, InitSpec("aware", damping=0.0), C=C)
    torch.testing.assert_close(kron_sum(A, B), kron_sum(Aa, Ba))
    A, B, _ = init_factors(W, s, s.max_rank, InitSpec("fisher", damping=0.0), C=C, G=random_cov(s.out_features, 7))
    torch.testing.assert_close(kron_sum(A, B), W)


def test_fisher_low_rank_minimises_the_predicted_loss_increase():
    from kronygpt.factorize import fisher_error
    torch.manual_seed(0)
    s = kron_shape(12, 8, 12, 1)
    W = torch.randn(12, 8, dtype=torch.float64)
    C, G = random_cov(8, 8), random_cov(12, 9)
    for r in range(1, 8):
        errs = {init: fisher_error(W, kron_sum(*init_factors(W, s, r, InitSpec(init, damping=0.0, g_damping=0.0), C=C,
                                                             G=G)[:2]), C, G)
                for init in ("fisher", "aware", "vl")}
        assert errs["fisher"] <= min(errs.values()) + 1e-12


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_output_gradient_moments_equal_a_direct_computation(fixture, request):
    # computed one block at a time (recomputed from each block's stored input), checked against one ordinary
    # backward pass through the whole model
    from kronygpt.calib import HEAD, output_gradient_moments
    model = load_pretrained(request.getfixturevalue(fixture)).eval()
    x = torch.randint(0, 256, (2, 9))
    mods = {(b, n): model.transformer.h[b].matrix(n) for b in range(2) for n in model.config.family.block_matrices}
    mods[HEAD] = model.lm_head
    G = output_gradient_moments(model, [x], {0, 1}, head_tokens=8)  # the head one sequence at a time
    assert set(G) == set(mods) and G[HEAD].dim() == 1
    assert all(p.grad is None for p in model.parameters())  # no weight gradient was formed
    outs = {}

    def keep(k):
        def hook(module, args, out):
            out.retain_grad()
            outs[k] = out
        return hook

    hooks = [m.register_forward_hook(keep(k)) for k, m in mods.items()]
    _, loss = model(x[:, :-1].contiguous(), x[:, 1:].contiguous())
    (loss * 16).backward()
    for h in hooks:
        h.remove()
    for k, o in outs.items():
        g = o.grad.reshape(-1, o.shape[-1]).double()
        direct = (g * g).mean(0) if k == HEAD else g.t() @ g / len(g)
        torch.testing.assert_close(G[k], direct, rtol=0, atol=1e-6 * direct.abs().max().item())
    assert all(p.requires_grad for p in model.parameters())  # restored


def test_model_labels_give_the_fisher_of_the_models_own_predictions(tiny_llama_dir):
    # with targets drawn from the model, E[(p - e_y)^2] at the logits is p(1 - p) per token; the text's own
    # (uniformly random) targets give about 1 + sum p^2 instead. Sharpened logits tell the two apart.
    from kronygpt.calib import output_gradient_moments
    model = load_pretrained(tiny_llama_dir).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(8)
    x = torch.randint(0, 256, (64, 33), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p = F.softmax(model(x[:, :-1].contiguous(), all_logits=True)[0].double(), -1).reshape(-1, 256)
    expected = (p * (1 - p)).mean(0).sum().item()
    assert expected < 0.8  # sharp enough that the two labellings differ
    drawn = output_gradient_moments(model, [x], {1}, labels="model", seed=3)
    assert drawn[HEAD].sum().item() == pytest.approx(expected, rel=0.1)
    data = output_gradient_moments(model, [x], {1}, labels="data")
    assert data[HEAD].sum().item() > expected + 0.5
    again = output_gradient_moments(model, [x], {1}, labels="model", seed=3)
    other = output_gradient_moments(model, [x], {1}, labels="model", seed=4)
    torch.testing.assert_close(again[(1, model.config.family.block_matrices[0])],
                               drawn[(1, model.config.family.block_matrices[0])], rtol=0, atol=0)
    assert not torch.equal(other[HEAD], drawn[HEAD])  # the draw is the seed's


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_permuting_hidden_units_preserves_the_function(fixture, request):
    from kronygpt.permute import permute_mlp
    model = load_pretrained(request.getfixturevalue(fixture)).eval()
    idx = torch.randint(0, 256, (2, 12))
    before = model(idx, all_logits=True)[0]
    for block in model.transformer.h:
        permute_mlp(block.mlp, model.config.family, torch.randperm(model.config.mlp_hidden))
    torch.testing.assert_close(model(idx, all_logits=True)[0], before, atol=1e-5, rtol=0)


def test_full_rank_decomposition_with_permutation_reproduces_the_logits(tiny_gpt2_dir):
    dense = load_pretrained(tiny_gpt2_dir).eval()   # MLP 32 <-> 128
    s = kron_shape(128, 32, 16, 8)
    kron, rows = decompose_model(dense, f"*: mlp=16x8*{s.max_rank}", InitSpec("vl"),
                                 options=SurgeryOptions(permute=True))
    assert all("permute_error_after" in r for r in rows)
    idx = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(kron(idx, all_logits=True)[0], dense(idx, all_logits=True)[0], atol=1e-4, rtol=0)


def test_permutation_recovers_shuffled_kronecker_structure(tiny_gpt2_dir):
    """c_fc and c_proj built as exact (32,32)x(4,1) and (32,32)x(1,4) products, then their hidden units
    shuffled: the permutation search must find an order that is (nearly) exact again."""
    from kronygpt.permute import find_permutation, permute_mlp, unit_features
    model = load_pretrained(tiny_gpt2_dir).eval()
    mlp, fam = model.transformer.h[0].mlp, model.config.family
    torch.manual_seed(0)
    with torch.no_grad():
        mlp.c_fc.weight.copy_(torch.kron(torch.randn(32, 32), torch.rand(4, 1) + 0.5))
        mlp.c_proj.weight.copy_(torch.kron(torch.randn(32, 32), torch.rand(1, 4) + 0.5))
    permute_mlp(mlp, fam, torch.randperm(128))
    specs = {"c_fc": (kron_shape(128, 32, 32, 32), 1), "c_proj": (kron_shape(32, 128, 32, 32), 1)}
    perm, before, after = find_permutation(unit_features(mlp, fam, None, 0.0), specs, fam, iters=20)
    assert after < 0.05 * before


def test_whitening_cache_is_keyed_by_content_not_identity():
    """A moment tensor changed in place (or a new one that reuses a freed tensor's id, as permuted moments did)
    must not get another tensor's whitening: the cache is keyed by content."""
    from kronygpt.factorize import WhiteningCache, side_whitening
    cache = WhiteningCache()
    C = random_cov(8, 1)
    first = side_whitening(C, 1, 8, 1e-4, cache)[1][0].clone()
    C.copy_(random_cov(8, 2))  # same tensor, same id, new content
    again = side_whitening(C, 1, 8, 1e-4, cache)[1][0]
    assert not torch.allclose(first, again)
    torch.testing.assert_close(again, side_whitening(C, 1, 8, 1e-4, None)[1][0])


def test_nearest_kronecker_covariance_does_not_depend_on_the_global_rng():
    from kronygpt.factorize import nearest_kron_psd
    C = torch.kron(random_cov(4, 1), random_cov(3, 2)) + 0.01 * random_cov(12, 3)
    torch.manual_seed(0)
    a = nearest_kron_psd(C, 4, 3)
    torch.manual_seed(1)
    b = nearest_kron_psd(C, 4, 3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    exact = torch.kron(random_cov(4, 1), random_cov(3, 2))
    torch.testing.assert_close(torch.kron(*nearest_kron_psd(exact, 4, 3)), exact)


def test_report_errors_in_float32_equal_the_float64_definitions():
    """kron_decomp's report computes its calibrated errors with float32 GEMMs (speed); they agree with
    factorize.output_error and fisher_error to far more digits than the report prints."""
    from kronygpt.factorize import fisher_error, output_error
    from kronygpt.surgery import calibrated_errors
    torch.manual_seed(0)
    W = torch.randn(96, 64, dtype=torch.float64) * 0.02
    W_hat = W + torch.randn(96, 64, dtype=torch.float64) * 0.004
    X, Y = torch.randn(500, 64, dtype=torch.float64), torch.randn(500, 96, dtype=torch.float64)
    C, G = X.t() @ X / 500, Y.t() @ Y / 500 * 1e-3
    got = calibrated_errors(W, W_hat, C, G)
    assert got["output_error"] == pytest.approx(output_error(W, W_hat, C), rel=1e-5)
    assert got["fisher_error"] == pytest.approx(fisher_error(W, W_hat, C, G), rel=1e-5)
    g_diag = G.diagonal().clone()
    expected = fisher_error(W, W_hat, C, g_diag)
    assert calibrated_errors(W, W_hat, C, g_diag)["fisher_error"] == pytest.approx(expected, rel=1e-5)
    assert "fisher_error" not in calibrated_errors(W, W_hat, C)
