"""The planner (kronygpt/planner.py): the allocator's optimality, its budget, and the plans it writes."""

import itertools
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from kronygpt.planner import allocate, allocate_points, curve_error, greedy_allocation, lp_bound, options


def random_case(seed, n=3):
    g = torch.Generator().manual_seed(seed)
    mats, curves = [], {}
    for k in range(n):
        o, i = (int(v) for v in torch.randint(3, 9, (2,), generator=g))
        sig2 = torch.rand(min(o, i), generator=g, dtype=torch.float64).sort(descending=True).values ** 3
        mats.append((k, f"m{k}", o, i))
        curves[(k, f"m{k}")] = (sig2, sig2.sum().item())
    return mats, curves


def all_choices(curves, o, i, key):
    """Every option of one matrix: (cost, error, choice), ranks 1..min(o, i) and dense."""
    sig2, norm = curves[key]
    return [(r * (o + i), sig2[r:].sum().item() / norm, r) for r in range(1, min(o, i) + 1)] + [(o * i, 0.0, "dense")]


def exhaustive(mats, curves, budget):
    best = math.inf
    for combo in itertools.product(*[all_choices(curves, o, i, (b, n)) for b, n, o, i in mats]):
        if sum(c for c, _, _ in combo) <= budget:
            best = min(best, sum(e for _, e, _ in combo))
    return best


def objective(curves, alloc):
    return sum(0.0 if r == "dense" else curve_error(curves, k, r) ** 2 for k, r in alloc.items())


@pytest.mark.parametrize("seed", range(12))
def test_allocation_is_exactly_optimal_at_every_lagrangian_budget(seed):
    """For a price per parameter, each matrix at its best hull point is a solution the greedy reaches; at its total
    the allocation equals the exhaustive optimum (dense valued at its true cost o*i, not as one more rank)."""
    mats, curves = random_case(seed)
    hulls = {(b, n): options(curves[(b, n)], o, i) for b, n, o, i in mats}
    for price in (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 1.0):
        pick = {k: min(h, key=lambda p: p[1] + price * p[0]) for k, h in hulls.items()}
        budget = sum(p[0] for p in pick.values())
        alloc, used = allocate(curves, mats, budget)
        assert used <= budget
        assert objective(curves, alloc) == pytest.approx(exhaustive(mats, curves, budget), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_allocation_is_exactly_optimal_at_every_budget_and_never_costs_more_than_it(seed):
    """The allocator solves the multiple-choice knapsack exactly (dynamic programming), not only at the totals the
    hull greedy reaches: at every budget its error equals the exhaustive optimum, and dense counts its size."""
    mats, curves = random_case(seed, n=4)
    dims = {(b, n): (o, i) for b, n, o, i in mats}
    for budget in range(sum(o + i for _, _, o, i in mats), sum(o * i for _, _, o, i in mats) + 1, 7):
        alloc, used = allocate(curves, mats, budget)
        cost = sum(dims[k][0] * dims[k][1] if r == "dense" else r * sum(dims[k]) for k, r in alloc.items())
        assert cost == used <= budget and all(r == "dense" or r >= 1 for r in alloc.values())
        assert objective(curves, alloc) == pytest.approx(exhaustive(mats, curves, budget), abs=1e-12)


def test_the_allocator_takes_the_dense_jump_the_greedy_skips():
    """Two matrices, budget 10: the greedy buys A's cheap segment first and then cannot afford B's dense (error
    10); the optimum leaves A low and makes B dense (error 2)."""
    points = {"A": [(0, 2.0, "r0"), (1, 0.0, "dense")], "B": [(0, 10.0, "r0"), (10, 0.0, "dense")]}
    assert greedy_allocation(points, 10)[0] == {"A": "dense", "B": "r0"}
    assert allocate_points(points, 10) == ({"A": "r0", "B": "dense"}, 10)


@pytest.mark.parametrize("seed", range(40))
def test_exact_allocation_equals_exhaustive_search_on_arbitrary_points(seed):
    """Points of any family (not convex, not equally spaced, ties): the dynamic programme's total equals the best
    of every combination, and the certified greedy is never below the LP bound."""
    g = torch.Generator().manual_seed(seed)
    points = {}
    for k in range(4):
        n = int(torch.randint(1, 5, (1,), generator=g))
        points[k] = [(int(torch.randint(0, 20, (1,), generator=g)), float(torch.rand(1, generator=g)) * 10, f"{k}.{j}")
                     for j in range(n)]
    cheapest = sum(min(p[0] for p in v) for v in points.values())
    budget = cheapest + int(torch.randint(0, 40, (1,), generator=g))
    alloc, used = allocate_points(points, budget)
    err = {k: {p[2]: p[1] for p in v} for k, v in points.items()}
    cost = {k: {p[2]: p[0] for p in v} for k, v in points.items()}
    best = min(sum(p[1] for p in combo) for combo in itertools.product(*points.values())
               if sum(p[0] for p in combo) <= budget)
    assert sum(err[k][c] for k, c in alloc.items()) == pytest.approx(best, abs=1e-12)
    assert used == sum(cost[k][c] for k, c in alloc.items()) <= budget
    assert lp_bound(points, budget) <= best + 1e-12


def test_allocate_honours_an_ordinary_target(tmp_path, tiny_data_dir):
    """--allocate spends the target itself (total <= target), not the nearest uniform plan's count."""
    from kronygpt.checkpoint import load_model, save_checkpoint
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    dense = GPT(GPTConfig(n_layer=4, n_head=2, n_embd=32, vocab_size=256, block_size=32))
    src = save_checkpoint(str(tmp_path / "dense.pt"), dense, tokenizer=None)
    target = 60000  # between uniform plans: rank 6 gives 58,464 parameters, rank 7 61,024
    r = subprocess.run([sys.executable, os.path.join(REPO, "kron_decomp.py"), "--model", src, "--target_params",
                        str(target), "--allocate", "--init", "aware", f"--calib={tiny_data_dir}", "--calib_tokens",
                        "512", "--calib_seq", "32", "--out", str(tmp_path / "a.pt")], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    total = load_model(str(tmp_path / "a.pt")).param_counts()["total"]
    assert target - 2 * (32 + 128) < total <= target
    assert "lowrank*0" not in load_model(str(tmp_path / "a.pt")).config.kron_plan


@pytest.mark.parametrize("seed", range(4))
def test_ranks_in_multiples_stay_within_the_budget_and_cost_little(seed):
    """--rank_multiple: every rank a multiple of m (or dense), the budget kept, and the objective close to the
    unrounded allocation's (the allocator trades ranks between matrices)."""
    g = torch.Generator().manual_seed(seed)
    mats, curves = [], {}
    for k in range(12):
        o, i = 256, 96
        sig2 = torch.rand(96, generator=g, dtype=torch.float64).sort(descending=True).values ** 4
        mats.append((k, f"m{k}", o, i))
        curves[(k, f"m{k}")] = (sig2, sig2.sum().item())
    budget = 12 * 40 * (256 + 96)
    free, _ = allocate(curves, mats, budget)
    rounded, used = allocate(curves, mats, budget, multiple=4)
    assert used <= budget and all(r == "dense" or r % 4 == 0 for r in rounded.values())
    assert budget - used < 4 * (256 + 96) * 2
    assert objective(curves, rounded) <= 1.02 * objective(curves, free) + 1e-9
