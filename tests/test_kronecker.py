"""The factored Kronecker layer equals the materialised sum of torch.kron products."""


import pytest
import torch

from kronygpt.factorize import rearrange, van_loan
from kronygpt.kronecker import KroneckerLinear, all_shapes, choose_impl, kron_shape, kron_sum

SHAPES = [  # (out, in, m1, n1): ordinary, tall, wide, degenerate 1xk / kx1 factors
    (12, 8, 3, 2), (12, 8, 12, 4), (8, 12, 2, 6), (6, 6, 1, 3), (6, 6, 3, 1), (8, 4, 8, 2), (4, 8, 2, 8),
    (3072, 768, 3072, 384),  # the 96M pruning shape (3072,384)x(1,2)
    (768, 3072, 384, 3072),
    (12, 8, 12, 1), (96, 40, 96, 1),  # low rank (out,1)x(1,in): the two-GEMM path
]


@pytest.mark.parametrize("out_f,in_f,m1,n1", SHAPES)
@pytest.mark.parametrize("impl", ["right", "left", "materialized", "auto"])
def test_forward_and_grads_equal_materialised(out_f, in_f, m1, n1, impl):
    torch.manual_seed(0)
    s = kron_shape(out_f, in_f, m1, n1)
    for r in range(1, min(4, s.max_rank) + 1):
        layer = KroneckerLinear(s, r, bias=True, scalars=(r % 2 == 0), impl=impl).double()
        with torch.no_grad():
            layer.bias.normal_()
            if layer.scalars is not None:
                layer.scalars.uniform_(0.5, 2.0)
        x = torch.randn(3, 5, in_f, dtype=torch.float64, requires_grad=True)
        # the reference: sum_k s_k kron(A_k, B_k), built with torch.kron
        scal = layer.scalars if layer.scalars is not None else torch.ones(r, dtype=torch.float64)
        W = sum(scal[k] * torch.kron(layer.A[k], layer.B[k]) for k in range(r))
        ref = x @ W.t() + layer.bias
        out = layer(x)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        g = torch.randn_like(out)
        params = [x, layer.A, layer.B, layer.bias] + ([layer.scalars] if layer.scalars is not None else [])
        got = torch.autograd.grad(out, params, g, retain_graph=True)
        want = torch.autograd.grad(ref, params, g)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        # .grad has the parameters' exact strides, size-1 dimensions included (autograd's layout contract
        # ignores those; DDP's gradient buckets do not, and warn)
        out.backward(g)
        assert layer.A.grad.stride() == layer.A.stride() and layer.B.grad.stride() == layer.B.stride()


def test_weight_property_is_kron_sum():
    s = kron_shape(12, 8, 3, 4)
    layer = KroneckerLinear(s, 3).double()
    W = sum(torch.kron(layer.A[k], layer.B[k]) for k in range(3))
    torch.testing.assert_close(layer.weight, W)
    torch.testing.assert_close(kron_sum(layer.A, layer.B), W)


def test_cost_model_picks_cheaper_order_and_materialises_when_no_saving():
    assert choose_impl(kron_shape(3072, 768, 768, 768), 1) == "left"      # F.linear(x, A) then the 4-vector
    assert choose_impl(kron_shape(768, 3072, 768, 768), 1) == "right"     # contract the 4-vector first
    assert choose_impl(kron_shape(3072, 768, 3072, 384), 1) == "right"    # (3072,384)x(1,2): half the MACs
    assert choose_impl(kron_shape(3072, 768, 3072, 384), 2) == "materialized"  # r=2 costs as much as dense


def test_random_init_matches_dense_scale():
    torch.manual_seed(0)
    for r in (1, 4):
        layer = KroneckerLinear(kron_shape(3072, 768, 64, 32), r)
        layer.reset_parameters(std=0.02)
        assert abs(layer.weight.std().item() - 0.02) < 0.003


def test_van_loan_full_rank_is_exact_and_truncation_is_optimal():
    torch.manual_seed(0)
    s = kron_shape(12, 8, 3, 2)
    W = torch.randn(12, 8, dtype=torch.float64)
    A, B, S = van_loan(W, s, s.max_rank)
    torch.testing.assert_close(kron_sum(A, B), W)
    for r in range(1, s.max_rank):
        A, B, S = van_loan(W, s, r)
        err = torch.linalg.norm(W - kron_sum(A, B))
        torch.testing.assert_close(err, S[r:].pow(2).sum().sqrt())  # Eckart-Young on R(W)


def test_rearrange_maps_kron_to_rank_one():
    s = kron_shape(6, 6, 2, 3)
    A, B = torch.randn(2, 3, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    R = rearrange(torch.kron(A, B), s)
    torch.testing.assert_close(R, torch.outer(A.flatten(), B.flatten()))


def test_van_loan_refuses_too_many_factors():
    with pytest.raises(ValueError, match="maximum Kronecker rank"):
        van_loan(torch.randn(4, 4), kron_shape(4, 4, 2, 2), 5)


def test_all_shapes_divide():
    shapes = all_shapes(12, 8)
    assert all(s.out_features == 12 and s.in_features == 8 for s in shapes)
    assert len(shapes) == len(set(shapes)) == 6 * 4 - 2
    assert all(not ((s.m1, s.n1) == (1, 1) or (s.m2, s.n2) == (1, 1)) for s in shapes)


def test_low_rank_runs_as_two_gemms_without_copying_its_factors():
    """W = U V^T: the forward reads the factors through views (no weight copies per call), and the gradients have
    the parameters' own strides (what DDP's buckets want)."""
    layer = KroneckerLinear(kron_shape(48, 16, 48, 1), 6, bias=False)
    x = torch.randn(5, 16)
    copies = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: copies.append(t) or t, lambda t: t):
        y = layer(x)
    assert all(t.data_ptr() in (x.data_ptr(), layer.A.data_ptr(), layer.B.data_ptr()) or tuple(t.shape) == (5, 6)
               for t in copies)  # saved: the input, views of A and B, and the (N, r) intermediate only
    y.sum().backward()
    assert layer.A.grad.stride() == layer.A.stride() and layer.B.grad.stride() == layer.B.stride()


def test_inference_builds_a_materialised_weight_once_and_notices_updates():
    s = kron_shape(3072, 768, 3072, 384)  # (3072,384)x(1,2) with 2 factors: materialised
    layer = KroneckerLinear(s, 2, bias=False)
    assert layer.impl == "materialized"
    x = torch.randn(3, 768)
    with torch.no_grad():
        y1 = layer(x)
        w = layer._w
        layer(x)
        assert layer._w is w  # cached
        layer.A.mul_(2.0)     # an in-place update (an optimizer step) invalidates it
        torch.testing.assert_close(layer(x), 2 * y1)
    torch.testing.assert_close(layer(x), 2 * y1)  # and with autograd the factored path is used


def test_measured_order_times_once_per_size_and_gives_the_same_product(tmp_path, monkeypatch):
    from kronygpt import kronecker
    from kronygpt.kronecker import ORDERS, KroneckerLinear, OrderTimer
    timer = OrderTimer(str(tmp_path / "orders.json"), repeats=1)
    monkeypatch.setattr(kronecker, "TIMER", timer)
    s = kron_shape(48, 40, 8, 5)
    torch.manual_seed(0)
    auto = KroneckerLinear(s, 2, bias=True)
    measured = KroneckerLinear(s, 2, bias=True, impl="measured")
    measured.load_state_dict(auto.state_dict())
    x = torch.randn(3, 7, 40)
    with torch.no_grad():
        torch.testing.assert_close(measured(x), auto(x))
    assert measured.last_impl in ORDERS and len(timer.choices) == 1
    y = measured(x)  # with autograd: a second size of its own
    y.sum().backward()
    assert len(timer.choices) == 2 and any(k.endswith("fwd+bwd") for k in timer.choices)
    torch.testing.assert_close(measured.A.grad, torch.autograd.grad(auto(x).sum(), auto.A)[0])
    monkeypatch.setattr(timer, "measure", lambda *a, **k: pytest.fail("an order was timed twice"))
    measured(torch.randn(2, 9, 40)).sum()  # 18 tokens: the same power-of-two bucket as 21
    assert OrderTimer(str(tmp_path / "orders.json")).choices == timer.choices  # kept for later runs


def test_measured_order_leaves_low_rank_alone(monkeypatch):
    from kronygpt import kronecker
    from kronygpt.kronecker import KroneckerLinear, OrderTimer
    timer = OrderTimer()
    monkeypatch.setattr(kronecker, "TIMER", timer)
    layer = KroneckerLinear(kron_shape(48, 40, 48, 1), 3, impl="measured")
    layer(torch.randn(4, 40))
    assert layer.last_impl == "right" and not timer.choices


def test_set_kron_impl_changes_the_order_not_the_function():
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=64, block_size=16, kron_plan="*: mlp=16x8*2"))
    x = torch.randint(0, 64, (2, 16))
    before = model(x, all_logits=True)[0]
    for impl in ("materialized", "left", "auto"):
        model.set_kron_impl(impl)
        layers = [m for m in model.modules() if isinstance(m, KroneckerLinear)]
        assert model.config.kron_impl == impl
        assert all(m.impl == (choose_impl(m.shape, m.factors) if impl == "auto" else impl) for m in layers)
        torch.testing.assert_close(model(x, all_logits=True)[0], before, rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="kron_impl must be one of"):
        model.set_kron_impl("fastest")
