"""One allocator over several families (kronygpt/mixed.py): every candidate scored on the factors it would
build, Kronecker chosen where it is the better use of parameters, never worse than one family alone."""

import pytest
import torch

from kronygpt.calib import Stats, calibration_batches, collect_moments
from kronygpt.checkpoint import load_model
from kronygpt.data_utils import open_dataset
from kronygpt.errors import UserError
from kronygpt.factorize import InitSpec
from kronygpt.mixed import Family, candidates, damped, kron_shape_of, parse_families, whitened_error
from kronygpt.planner import PlanRequest, allocate_points, allocated_plan, lowrank_curves, matrices, param_base
from kronygpt.surgery import decompose_model

INIT = InitSpec("aware", damping=1e-3)


@pytest.fixture(scope="module")
def setup(tiny_llama_dir, tiny_data_dir):
    torch.manual_seed(0)
    dense = load_model(tiny_llama_dir).eval()
    # block 1's up_proj becomes an exact Kronecker product (48, 64) (x) (2, 1): one factor holds it, low rank
    # needs its full rank
    W = dense.matrix(1, "up_proj").weight
    with torch.no_grad():
        W.copy_(torch.kron(torch.randn(W.shape[0] // 2, W.shape[1]) * 0.1, torch.tensor([[1.0], [-0.5]])))
    batches = calibration_batches(open_dataset(tiny_data_dir), 512, 32, batch_size=4)
    moments = collect_moments(dense, batches, {0, 1})
    return dense, moments


def test_families_parse_and_refuse_nonsense():
    assert parse_families("lowrank, kron:3x1") == (Family("lowrank"), Family("kron", (3, 1)))
    for bad in ("", "kron:1x1", "kron3x1", "svd", "lowrank,lowrank"):
        with pytest.raises(UserError):
            parse_families(bad)


def test_down_matrices_take_the_transposed_factor():
    s = kron_shape_of(Family("kron", (3, 1)), 96, 64, down=False)
    assert (s.m1, s.n1, s.m2, s.n2) == (32, 64, 3, 1)
    s = kron_shape_of(Family("kron", (3, 1)), 64, 96, down=True)
    assert (s.m1, s.n1, s.m2, s.n2) == (64, 32, 1, 3)
    assert kron_shape_of(Family("kron", (5, 1)), 96, 64, down=False) is None  # 5 does not divide 96


def test_mixed_allocation_puts_kronecker_where_it_wins_and_beats_each_family_alone(setup):
    dense, moments = setup
    mats = matrices(dense.config, scope="mlp")
    base, _ = param_base(dense.config, scope="mlp")
    curves = lowrank_curves(dense, moments, mats, INIT.damping)
    fams = parse_families("lowrank,kron:2x1")
    kron = candidates(dense, Stats(moments, curves=curves), mats, INIT, PlanRequest(families=fams))
    budget = sum(o * i for *_, o, i in mats) * 3 // 5  # room for one Kronecker factor in every matrix

    def run(kinds):
        pts = {(b, n): ([p for p in _lowrank(curves[(b, n)], o, i)] if "lowrank" in kinds else []) +
               (kron[(b, n)] if "kron" in kinds else []) + [(o * i, 0.0, "dense")] for b, n, o, i in mats}
        alloc, used = allocate_points(pts, budget)
        err = {k: {p[2]: p[1] for p in v} for k, v in pts.items()}
        return alloc, used, sum(err[k][c] for k, c in alloc.items())

    mixed, used, e_mixed = run({"lowrank", "kron"})
    _, _, e_low = run({"lowrank"})
    _, _, e_kron = run({"kron"})
    assert used <= budget
    assert e_mixed <= min(e_low, e_kron) + 1e-12
    assert e_mixed < e_low  # the exact Kronecker matrix is cheaper as Kronecker
    chosen = mixed[(1, "up_proj")]
    assert not isinstance(chosen, int) and chosen.shape.m2 == 2 and chosen.factors == 1


def _lowrank(curve, o, i):
    from kronygpt.planner import lowrank_points
    return lowrank_points(curve, o, i)


def test_each_candidates_error_is_that_of_the_factors_the_decomposition_builds(setup):
    dense, moments = setup
    mats = matrices(dense.config, scope="mlp")
    base, _ = param_base(dense.config, scope="mlp")
    target = base + sum(o * i for *_, o, i in mats) * 3 // 5
    logs = []
    request = PlanRequest(scope="mlp", families=parse_families("lowrank,kron:2x1"))
    plan = allocated_plan(dense, target, request, INIT, Stats(moments), log=logs.append)
    assert any("lowrank alone" in line for line in logs) and any("kron alone" in line for line in logs)
    kron = candidates(dense, Stats(moments, curves=lowrank_curves(dense, moments, mats, INIT.damping)),
                      matrices(dense.config, scope="mlp"), INIT, PlanRequest(families=parse_families("kron:2x1")))
    model, _ = decompose_model(dense, plan, INIT, Stats(moments))
    checked = 0
    for (b, n), spec in plan.items():
        if spec.lowrank:
            continue
        W = dense.matrix(b, n).weight.detach().double()
        Cd = damped(moments[(b, n)], INIT.damping)
        norm = whitened_error(W, Cd, None)
        got = whitened_error(W - model.matrix(b, n).weight.detach().double(), Cd, None) / norm
        want = next(e for c, e, s in kron[(b, n)] if s == spec)
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9)
        checked += 1
    assert checked >= 1


def test_permuting_for_the_kronecker_shape_lowers_its_candidates_error(tiny_llama_dir):
    # block 0's MLP: gate/up rows in pairs (u, 2u) and down columns in pairs (v, -v), then the hidden units
    # shuffled: (h/2, d) x (2, 1) fits the unshuffled order exactly and the shuffled one badly
    dense = load_model(tiny_llama_dir).eval()
    mlp = dense.transformer.h[0].mlp
    h, d = mlp.up_proj.weight.shape
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(h, generator=g)
    with torch.no_grad():
        for name in ("gate_proj", "up_proj"):
            W = torch.kron(torch.randn(h // 2, d, generator=g), torch.tensor([[1.0], [2.0]]))
            getattr(mlp, name).weight.copy_(W[perm])
        W = torch.kron(torch.randn(d, h // 2, generator=g), torch.tensor([[1.0, -1.0]]))
        mlp.down_proj.weight.copy_(W[:, perm])
    mats = [m for m in matrices(dense.config, scope="mlp") if m[0] == 0]
    moments = {(0, n): torch.eye(i, dtype=torch.float64) for _, n, _, i in mats}  # plain Frobenius errors
    curves = lowrank_curves(dense, moments, mats, INIT.damping)
    fams = parse_families("kron:2x1")
    plain = candidates(dense, Stats(moments, curves=curves), mats, INIT, PlanRequest(families=fams))
    permuted = candidates(dense, Stats(moments, curves=curves), mats, INIT, PlanRequest(families=fams, permute=True))
    one = lambda pts: next(e for _, e, s in pts if s.factors == 1)  # noqa: E731
    for key in plain:
        assert one(plain[key]) > 0.1 and one(permuted[key]) < 1e-6, (key, one(plain[key]), one(permuted[key]))


def test_a_sum_of_low_rank_and_kronecker_terms_recovers_a_matrix_that_is_one():
    from kronygpt.kronecker import kron_shape
    from kronygpt.mixed import sum_fit
    torch.manual_seed(0)
    o, i = 48, 32
    s = kron_shape(o, i, 16, 32)  # (16, 32) x (3, 1)
    W = torch.kron(torch.randn(16, 32), torch.randn(3, 1)) + torch.randn(o, 3) @ torch.randn(3, i)
    X = torch.randn(400, i, dtype=torch.float64)
    C = X.t() @ X / 400
    _, err = sum_fit(W, s, (1, 3), INIT, (C, None), rounds=6)
    norm = whitened_error(W.double(), damped(C, INIT.damping), None)
    assert err / norm < 1e-3
    # low rank alone at the same parameter count (a rank of (16*32 + 3 + 3*80) / 80 = 9) is far worse
    sig = torch.linalg.svdvals(W.double() @ torch.linalg.cholesky(damped(C, INIT.damping)))
    assert sig[9:].pow(2).sum() / sig.pow(2).sum() > 100 * err / norm


def test_a_sum_is_never_worse_than_its_low_rank_term_where_the_kronecker_whitening_is_approximate():
    """Balanced shapes split each side's index between the factors, so their calibrated terms are fitted for
    C's nearest Kronecker-factored approximation; on a C far from one they can fit the residual worse than no
    term at all. sum_fit scales them on the exact criterion, so the sum keeps at least its rank-r term's error."""
    from kronygpt.kronecker import kron_shape
    from kronygpt.mixed import sum_fit
    o, i, r = 48, 36, 6
    s = kron_shape(o, i, 8, 6)  # (8, 6) x (6, 6)
    for seed in range(3):
        torch.manual_seed(seed)
        W = torch.randn(o, i, dtype=torch.float64)
        Q, _ = torch.linalg.qr(torch.randn(i, i, dtype=torch.float64))
        C = Q @ torch.diag(torch.logspace(-4, 4, i, dtype=torch.float64)) @ Q.t()  # no Kronecker structure
        _, err = sum_fit(W, s, (4, r), INIT, (C, None))
        sig = torch.linalg.svdvals(W @ torch.linalg.cholesky(damped(C, INIT.damping)))
        assert err <= sig[r:].pow(2).sum().item() * (1 + 1e-9), seed
