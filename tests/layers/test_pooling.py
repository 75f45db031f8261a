"""Robust pooling on both floors: forward vs brute force, gradients vs finite differences, vs the
reference floor, vs the generic declarative nodes, bad input, shapes, threads, CUDA."""
import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

import ddn.reference as R
import ddn.torch as T
from ddn import DDNError, DDNWarning
from ddn.torch import _kernels
from ddn.torch.pooling import _phi

PENALTIES = R.PENALTIES
ALPHAS = (0.5, 1.0, 2.0)
F64 = torch.float64


def brute_force(x, pen, alpha):
    """Global minimizer of Σφ(u − x_i): dense grid, then a bounded 1-D refinement."""
    grid = np.linspace(x.min() - 1, x.max() + 1, 40001)
    f = R.penalty(grid[:, None] - x[None, :], pen, alpha).sum(1)
    k = int(np.argmin(f))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]
    res = minimize_scalar(lambda u: float(R.penalty(u - x, pen, alpha).sum()), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-13})
    return res.x, min(res.fun, f[k])


def objective(x, y, pen, alpha):
    return float(R.penalty(y - x, pen, alpha).sum())


def clustered(rng, n=12, outliers=3):
    """Inliers near 0.3 plus a few far outliers: the paper's protocol finds the global minimum."""
    x = 0.3 + 0.08 * rng.standard_normal(n)
    x[:outliers] = rng.uniform(4, 8, outliers) * rng.choice([-1, 1], outliers)
    return x


def away_from_kinks(x, pen, alpha, margin=1e-3):
    if pen not in ("huber", "truncated-quadratic"):
        return True
    if pen == "huber" and R.pooling._huber_gap(x, alpha) is not None:
        return False  # H = 0 on an interval of minimizers: Prop. 4.4 does not apply
    y = R.robust_pool(x, pen, alpha)
    return np.abs(np.abs(y - x) - alpha).min() > margin


# ----------------------------------------------------------------------------- reference floor
@pytest.mark.parametrize("pen", PENALTIES)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_reference_forward_matches_brute_force(pen, alpha):
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = clustered(rng) if pen in ("welsch", "truncated-quadratic") else rng.standard_normal(9) * 2
        y = R.robust_pool(x, pen, alpha)
        yb, fb = brute_force(x, pen, alpha)
        assert objective(x, y, pen, alpha) <= fb + 1e-9
        if pen != "huber":  # Huber's minimizer may be an interval; the objective check covers it
            assert y == pytest.approx(yb, abs=1e-5)


@pytest.mark.parametrize("pen", ["welsch", "truncated-quadratic"])
def test_reference_nonconvex_protocol_on_random_data(pen):
    """On arbitrary data the paper's protocol gives a local minimum no worse than either start."""
    rng = np.random.default_rng(2)
    for _ in range(10):
        x = rng.standard_normal(11) * 3
        y = R.robust_pool(x, pen, 1.0)
        med = np.sort(x)[(x.size - 1) // 2]
        f = objective(x, y, pen, 1.0)
        assert f <= min(objective(x, x.mean(), pen, 1.0), objective(x, med, pen, 1.0)) + 1e-12
        for d in (1e-4, -1e-4):
            assert f <= objective(x, y + d, pen, 1.0) + 1e-12


@pytest.mark.parametrize("pen", PENALTIES)
def test_reference_jacobian_vs_finite_differences_and_generic(pen):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(8)
    assert away_from_kinks(x, pen, 0.8)
    node = R.RobustPoolNode(pen, 0.8)
    J = node.jacobian(x)
    e = 1e-6
    fd = np.array([(R.robust_pool(x + e * d, pen, 0.8) - R.robust_pool(x - e * d, pen, 0.8)) / (2 * e)
                   for d in np.eye(8)])
    np.testing.assert_allclose(J[0], fd, atol=1e-7)
    np.testing.assert_allclose(J, R.DeclarativeNode.jacobian(node, x), atol=1e-10)  # generic Prop. 4.4
    v = np.array([0.7])
    np.testing.assert_allclose(node.vjp(x, v), 0.7 * J[0], atol=1e-14)
    da = (R.robust_pool(x, pen, 0.8 + e) - R.robust_pool(x, pen, 0.8 - e)) / (2 * e)
    assert node.jacobian_alpha(x)[0] == pytest.approx(da, abs=1e-7)


def test_reference_huber_interval_midpoint():
    """No inlier: the minimizers form an interval; y is its midpoint, Dy = ½(e_j + e_k)."""
    x = np.array([-10.0, -11.0, 10.0, 12.0])
    node = R.RobustPoolNode("huber", 1.0)
    y = R.robust_pool(x, "huber", 1.0)
    assert y == pytest.approx(0.0)  # interval [x_j + α, x_k − α] = [-9, 9]
    np.testing.assert_allclose(node.jacobian(x)[0], [0.5, 0, 0.5, 0])
    assert node.jacobian_alpha(x)[0] == 0


def test_reference_bad_input():
    with pytest.raises(DDNError, match="NaN or Inf"):
        R.robust_pool(np.array([1.0, np.nan]), "huber")
    with pytest.raises(DDNError, match="empty"):
        R.robust_pool(np.zeros(0), "huber")
    with pytest.raises(DDNError, match="unknown penalty"):
        R.RobustPoolNode("cauchy")
    with pytest.raises(DDNError, match="alpha"):
        R.robust_pool(np.ones(3), "huber", alpha=0.0)
    with pytest.raises(DDNError, match="overflows"):
        R.robust_pool(np.array([1e300, 0.0]), "welsch", 1e-10)
    assert R.robust_pool(np.array([2.5]), "welsch") == 2.5
    np.testing.assert_allclose(R.RobustPoolNode("welsch").jacobian(np.full(4, 3.0)), [[0.25] * 4])


# ----------------------------------------------------------------------------- torch floor
def _rows(rng, B, n, pen):
    xs = []
    while len(xs) < B:
        x = clustered(rng, n) if pen in ("welsch", "truncated-quadratic") else rng.standard_normal(n) * 2
        if all(away_from_kinks(x, pen, a) for a in ALPHAS):
            xs.append(x)
    return torch.tensor(np.stack(xs))


@pytest.mark.parametrize("pen", PENALTIES)
def test_torch_matches_reference(pen, backend):
    rng = np.random.default_rng(4)
    x = _rows(rng, 16, 10, pen)
    for a in ALPHAS:
        y = T.robust_pool(x, pen, a)
        yr = [R.robust_pool(r.numpy(), pen, a) for r in x]
        np.testing.assert_allclose(y.numpy(), yr, atol=1e-8, rtol=0)
        xg = x.clone().requires_grad_()
        at = torch.tensor(a, dtype=F64, requires_grad=True)
        v = torch.randn(16, dtype=F64)
        gx, ga = torch.autograd.grad((T.robust_pool(xg, pen, at) * v).sum(), (xg, at))
        node = R.RobustPoolNode(pen, a)
        np.testing.assert_allclose(gx.numpy(), [node.vjp(r.numpy(), [vi]) for r, vi in zip(x, v)],
                                   atol=1e-8)
        ga_ref = sum(float(vi) * node.jacobian_alpha(r.numpy())[0] for r, vi in zip(x, v))
        assert float(ga) == pytest.approx(ga_ref, abs=1e-8)


@pytest.mark.parametrize("pen", PENALTIES)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_torch_gradcheck(pen, alpha, backend):
    rng = np.random.default_rng(5)
    x = _rows(rng, 3, 7, pen).requires_grad_()
    a = torch.full((3,), alpha, dtype=F64, requires_grad=True)  # one α per row
    assert torch.autograd.gradcheck(lambda x, a: T.robust_pool(x, pen, a), (x, a), atol=1e-6)


@pytest.mark.parametrize("pen", PENALTIES)
def test_torch_forward_optimality_residual_float32(pen, backend):
    """float32: Σφ'(y − x_i) evaluated in float64 at the float32 y is at rounding level."""
    rng = np.random.default_rng(6)
    x = _rows(rng, 32, 200, pen).float()
    y = T.robust_pool(x, pen, 1.0).double()
    xd = x.double()
    z = (y[:, None] - xd).requires_grad_()
    g = torch.autograd.grad(_phi(z, pen, torch.tensor(1.0, dtype=F64)).sum(), z)[0]
    scale = g.abs().sum(-1) + 1e-30
    assert (g.sum(-1).abs() / scale).max() < 1e-5  # ≈ 80 float32 eps (observed ≤ 8e-7)


def test_torch_huber_interval_and_degenerate(backend):
    x = torch.tensor([[-10.0, -11.0, 10.0, 12.0], [1.0, 2.0, 3.0, 4.0]], dtype=F64, requires_grad=True)
    y = T.robust_pool(x, "huber", 1.0)
    assert y[0].item() == pytest.approx(0.0)
    (g,) = torch.autograd.grad(y[0], x)
    np.testing.assert_allclose(g[0].numpy(), [0.5, 0, 0.5, 0])
    assert torch.autograd.gradcheck(lambda x: T.robust_pool(x, "huber", 1.0), (x,))


def test_torch_vs_generic_declarative_node(backend):
    """The closed-form VJP equals the generic implicit differentiation of the same objective."""
    if not hasattr(T, "DeclarativeNode"):
        pytest.skip("ddn.torch.DeclarativeNode not available yet")

    class Pool(T.DeclarativeNode):
        def __init__(self, pen):
            super().__init__(output_shape=1)
            self.pen = pen

        def objective(self, x, a, y):
            return _phi(y - x, self.pen, a[:, None]).sum(-1)

        def solve(self, x, a):
            return T.robust_pool(x.detach(), self.pen, a.detach(), keepdim=True), {}

    rng = np.random.default_rng(7)
    for pen in PENALTIES:
        x = _rows(rng, 4, 6, pen).requires_grad_()
        a = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=F64, requires_grad=True)
        v = torch.randn(4, dtype=F64)
        g1 = torch.autograd.grad((T.robust_pool(x, pen, a) * v).sum(), (x, a))
        g2 = torch.autograd.grad((T.DeclarativeLayer(Pool(pen))(x, a)[:, 0] * v).sum(), (x, a))
        for p, q in zip(g1, g2):
            torch.testing.assert_close(p, q, atol=1e-8, rtol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_any_dim_keepdim_and_alpha_shapes(dtype, backend):
    x = torch.randn(3, 5, 4, dtype=dtype)
    y = T.robust_pool(x, "pseudo-huber", 0.7, dim=1, keepdim=True)
    assert y.shape == (3, 1, 4) and y.dtype == dtype
    ref = T.robust_pool(x.transpose(1, 2), "pseudo-huber", 0.7)
    torch.testing.assert_close(y.squeeze(1), ref)
    a = torch.rand(3, 1, 4, dtype=dtype) + 0.5  # per-output α
    y2 = T.robust_pool(x, "welsch", a, dim=-2)
    assert y2.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert y2[i, j].item() == pytest.approx(
                R.robust_pool(x[i, :, j].double().numpy(), "welsch", float(a[i, 0, j])),
                abs=1e-5 if dtype == torch.float32 else 1e-12)


def test_torch_bad_input(backend):
    with pytest.raises(DDNError, match="NaN or Inf"):
        T.robust_pool(torch.tensor([[1.0, float("nan")]]), "huber")
    with pytest.raises(DDNError, match="NaN or Inf"):
        T.robust_pool(torch.tensor([[1.0, float("inf")]]), "welsch")
    with pytest.raises(DDNError, match="empty"):
        T.robust_pool(torch.zeros(3, 0), "huber")
    with pytest.raises(DDNError, match="unknown penalty"):
        T.robust_pool(torch.zeros(3, 2), "cauchy")
    with pytest.raises(DDNError, match="alpha"):
        T.robust_pool(torch.zeros(3, 2), "huber", alpha=-1.0)
    with pytest.raises(DDNError, match="alpha"):
        T.robust_pool(torch.zeros(3, 2), "huber", alpha=torch.tensor(0.0))
    with pytest.raises(DDNError, match="overflows"):
        T.robust_pool(torch.tensor([[3e37, 0.0]]), "pseudo-huber", 1.0)
    # size-1 pooled dim: y = x, gradient 1; all-equal values: that value, gradient 1/n
    x = torch.randn(4, 1, dtype=F64, requires_grad=True)
    y = T.robust_pool(x, "welsch")
    torch.testing.assert_close(y, x[:, 0])
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, torch.ones_like(x))
    x = torch.full((2, 5), 3.0, dtype=F64, requires_grad=True)
    for pen in PENALTIES:
        y = T.robust_pool(x, pen)
        (g,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(y, torch.full((2,), 3.0, dtype=F64))
        torch.testing.assert_close(g, torch.full_like(x, 0.2))
    # huge but representable magnitudes pool fine
    x = torch.tensor([[1e15, 1e15 + 2, 1e15 + 4]], dtype=F64)
    assert T.robust_pool(x, "pseudo-huber").item() == pytest.approx(1e15 + 2, rel=1e-15)


def test_torch_zero_curvature_warns(backend):
    """Welsch at a flat point (H underflows to 0): zero gradient, counted, and a DDNWarning."""
    from ddn.torch import pooling
    x = torch.tensor([[0.0, 100.0]], dtype=F64)
    a, y, v = torch.ones(1, dtype=F64), torch.tensor([50.0], dtype=F64), torch.ones(1, dtype=F64)
    if backend == "kernel":
        H = torch.zeros(1, dtype=F64)  # Σφ'' underflows to 0 at y = 50
        g, _, nbad = _kernels.pool_backward(x, y, a, H, v, "welsch", True)
    else:
        w, _, nbad = pooling._weights_eager(x, y, "welsch", a[:, None], True)
        g = v[:, None] * w
    assert nbad == 1 and torch.all(g == 0)
    with pytest.warns(DDNWarning, match="not differentiable"):
        pooling._warn_bad("welsch", nbad)


def test_module_learnable_alpha_and_to(backend):
    layer = T.RobustPool("pseudo-huber", alpha=0.5, learn_alpha=True)
    x = torch.randn(6, 20)
    layer(x).sum().backward()
    assert layer.log_alpha.grad is not None and torch.isfinite(layer.log_alpha.grad)
    fixed = T.RobustPool("huber", alpha=0.5, dim=0).to(F64)
    assert fixed.alpha.dtype == F64
    assert fixed(torch.randn(7, 3, dtype=F64)).shape == (3,)


def test_two_threads_large_batch_kernel_vs_eager(monkeypatch):
    """Under torch.set_num_threads(2) the row-split kernel gives bit for bit the single-thread
    result (rows are independent) and equals the eager oracle in float64 to rounding. (Audit: the
    float32 comparison at rtol 1e-3 could not see a wrong row-split.)"""
    if _kernels.lib() is None:
        pytest.skip(f"compiled kernel unavailable: {_kernels._state['error']}")
    old = torch.get_num_threads()
    x = torch.randn(65, 4099, dtype=F64)  # B·n ≥ _PAR_MIN: the threaded path
    assert x.numel() >= _kernels._PAR_MIN
    x[7, :2000] += 40.0  # two clusters in some rows: the non-convex protocol matters
    v = torch.randn(65, dtype=F64)
    a = torch.rand(65, dtype=F64) + 0.5
    try:
        for pen in ("pseudo-huber", "huber", "welsch", "truncated-quadratic"):
            out = []
            for enabled, nt in ((True, 2), (True, 1), (False, 2)):
                torch.set_num_threads(nt)
                monkeypatch.setattr(_kernels, "ENABLED", enabled)
                xg, ag = x.clone().requires_grad_(), a.clone().requires_grad_()
                y = T.robust_pool(xg, pen, ag)
                out.append((y,) + torch.autograd.grad((y * v).sum(), (xg, ag)))
            for p, q in zip(out[0], out[1]):
                assert torch.equal(p, q), pen
            for p, q in zip(out[0], out[2]):
                torch.testing.assert_close(p, q, atol=1e-10, rtol=1e-9)
    finally:
        torch.set_num_threads(old)


@pytest.mark.cuda
@pytest.mark.parametrize("pen", PENALTIES)
def test_cuda_matches_cpu(pen):
    x = torch.randn(64, 33, dtype=F64)
    a = torch.tensor(0.9, dtype=F64, requires_grad=True)
    xc = x.cuda().requires_grad_()
    ac = a.detach().cuda().requires_grad_()
    yc = T.robust_pool(xc, pen, ac)
    yc.sum().backward()
    xx = x.clone().requires_grad_()
    y = T.robust_pool(xx, pen, a)
    y.sum().backward()
    torch.testing.assert_close(yc.cpu(), y, atol=1e-8, rtol=0)
    torch.testing.assert_close(xc.grad.cpu(), xx.grad, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("n", [5, 300, 2048, 4099])
def test_kernel_median_start_is_the_exact_lower_median(n, backend):
    """With α below every gap, the truncated quadratic returns the median start exactly (the mean
    start sees no inlier), so this checks the kernel's sampled selection, including the
    fallback when the sample band misses the median (sorted and skewed rows)."""
    g = torch.Generator().manual_seed(n)
    rows = [torch.randperm(n, generator=g).double(),             # a permutation of 0..n-1
            torch.arange(n, dtype=F64),                            # sorted
            torch.arange(n, 0, -1, dtype=F64) ** 3,                # reversed, skewed
            torch.rand(n, generator=g, dtype=F64).exp() * 1e3,       # positive, skewed
            torch.tan(3.1 * (torch.rand(n, generator=g, dtype=F64) - 0.5))]  # heavy tails
    x = torch.stack(rows)
    y = T.robust_pool(x, "truncated-quadratic", alpha=1e-9)
    torch.testing.assert_close(y, x.median(-1).values, atol=0, rtol=0)
    # heavy ties (three distinct values; gaps ≫ α): the median start still wins exactly
    xt = torch.randint(0, 3, (4, n), generator=g).double() * 10
    xt[1, : n // 2 + 1] = 20.0  # a majority of ties at the top value
    torch.testing.assert_close(T.robust_pool(xt, "truncated-quadratic", alpha=1e-9),
                               xt.median(-1).values, atol=0, rtol=0)


def test_random_rows_with_ties_and_exact_kinks(backend):
    """Regression sweep: integer data (ties, points exactly on Huber/TQ kinks), outliers, two
    clusters; the solution matches the reference (or, for Huber's interval, its objective),
    the gradient is finite and sums to 1 (y is translation-equivariant), no warning."""
    import warnings
    rng = np.random.default_rng(11)
    for trial in range(60):
        n, kind = int(rng.integers(1, 30)), trial % 4
        if kind == 0:
            x = rng.standard_normal(n) * rng.uniform(0.1, 10)
        elif kind == 1:
            x = rng.integers(-3, 4, n).astype(float)
        elif kind == 2:
            x = np.concatenate([rng.standard_normal(n) * 0.1, rng.uniform(-50, 50, 3)])
        else:
            x = np.full(n, 2.0)
            x[: n // 3] = -7
        a = float(rng.choice([0.1, 0.5, 1.0, 2.0, 5.0]))
        for pen in PENALTIES:
            yr = R.robust_pool(x, pen, a)
            xg = torch.tensor(x)[None].requires_grad_()
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always")
                y = T.robust_pool(xg, pen, a)
                (g,) = torch.autograd.grad(y.sum(), xg)
            if pen == "welsch" and rec:
                # a degenerate minimum (two points 2α apart, H = 0): the gradient was ±1e5 of
                # rounding, which passed the sum-to-1 check below; now zero, with a warning
                assert len(rec) == 1 and "degenerate minimum" in str(rec[0].message)
                assert torch.equal(g, torch.zeros_like(g))
                continue
            assert not rec, [str(w.message) for w in rec]
            y = float(y.detach())
            if pen == "huber":
                assert objective(x, y, pen, a) == pytest.approx(objective(x, yr, pen, a), abs=1e-10)
            elif pen == "welsch":
                # near-degenerate minima (two points ~2α apart: H = Σφ'' ≈ 0) fix y only to
                # about eps^(1/3) relative, so the floors may differ there by more than 1e-8
                assert y == pytest.approx(yr, abs=2e-5)
            else:
                assert y == pytest.approx(yr, abs=1e-8)
            assert torch.isfinite(g).all() and float(g.sum()) == pytest.approx(1.0, abs=1e-8)


# Found by audit: Newton (and brentq) stop on an END of Huber's interval of minimizers, where the
# boundary point |y − x_k| = α counted as an inlier, so the interval went undetected: the torch
# floor returned the end (gradient e_k instead of ½(e_j + e_k)) and the reference's midpoint,
# taken with strict inequalities, skipped x_k and returned a point that is not a minimizer.
HUBER_INTERVAL_ROWS = [
    [-2.3072335439602174, -5.004601878925627, 1.7511155091951478, -5.3451298036428705],
    [2.203573706383574, -0.5266566973695417, -0.6932584355994913, 4.760631060677068],
    [-2.0277605988175003, 1.3273570418860667, -1.3061449449673697, 2.7590849962443476],
    [0.0, 3.0, 3.0, 7.0, 9.0, 9.0],  # interval (3, 7) − α with ties at the upper end
]


def test_huber_interval_found_on_its_end_returns_midpoint(backend):
    alpha = 1.3
    for row in HUBER_INTERVAL_ROWS:
        xs = np.sort(row)
        mid = 0.5 * (xs[len(row) // 2 - 1] + xs[len(row) // 2])
        yr = R.robust_pool(np.array(row), "huber", alpha)
        assert yr == pytest.approx(mid, abs=1e-15)
        # it is a minimizer (the old reference returned a point with a higher objective)
        assert objective(np.array(row), yr, "huber", alpha) <= \
            brute_force(np.array(row), "huber", alpha)[1] + 1e-9
        x = torch.tensor([row], dtype=F64, requires_grad=True)
        a = torch.tensor([alpha], dtype=F64, requires_grad=True)
        y = T.robust_pool(x, "huber", a)
        assert y.item() == pytest.approx(mid, abs=1e-15)
        gx, ga = torch.autograd.grad(y, (x, a))
        w = np.isin(row, [xs[len(row) // 2 - 1]]) / np.sum(np.isin(row, [xs[len(row) // 2 - 1]]))
        w = 0.5 * w + 0.5 * np.isin(row, [xs[len(row) // 2]]) / np.sum(np.isin(row, [xs[len(row) // 2]]))
        np.testing.assert_allclose(gx[0].numpy(), w, atol=1e-15)
        np.testing.assert_allclose(R.RobustPoolNode("huber", alpha).jacobian(np.array(row))[0], w,
                                   atol=1e-15)
        assert ga.item() == 0.0
        if len(set(row)) == len(row):  # no ties: differentiable, so finite differences agree
            assert torch.autograd.gradcheck(lambda x: T.robust_pool(x, "huber", alpha), (x,))


def test_huber_random_small_even_rows_match_reference_and_fd(backend):
    """Random rows of n = 2, 4 (where the interval is common) against the reference and central
    differences, kinks included (the audit found 19 wrong rows in 3000 here)."""
    x = torch.randn(400, 4, dtype=F64) * 2
    x2 = torch.randn(200, 2, dtype=F64) * 2
    for xx in (x, x2):
        y = T.robust_pool(xx, "huber", 1.3)
        yr = np.array([R.robust_pool(r, "huber", 1.3) for r in xx.numpy()])
        np.testing.assert_allclose(y.numpy(), yr, atol=1e-12, rtol=0)
    xg = x[:40].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: T.robust_pool(z, "huber", 1.3), (xg,), atol=1e-7)


@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16])
def test_half_precision_is_solved_in_float32(dt, backend):
    """Found by audit: half inputs ran the eager solver at eps ≈ 1e-3 (the kernel refuses them);
    now they are upcast, so the result is the float32 answer rounded, gradients in x's dtype."""
    x = torch.randn(5, 9).to(dt)
    for pen in PENALTIES:
        xx = x.clone().requires_grad_(True)
        y = T.robust_pool(xx, pen, 0.8)
        assert y.dtype == dt
        assert torch.equal(y, T.robust_pool(x.float(), pen, 0.8).to(dt))
        y.sum().backward()
        assert xx.grad.dtype == dt
        assert torch.isfinite(xx.grad.float()).all()


def _fresh_kernel_state(monkeypatch):
    monkeypatch.setattr(_kernels, "_state", {"lib": None, "tried": False, "pool": None,
                                             "error": None})
    monkeypatch.setattr(_kernels, "ENABLED", True)


def test_kernel_missing_compiler_falls_back_with_a_warning(monkeypatch, tmp_path):
    """No compiler: one RuntimeWarning naming the cause, then the eager code (same answer)."""
    x = torch.randn(3, 8, dtype=F64)
    monkeypatch.setattr(_kernels, "ENABLED", False)
    want = T.robust_pool(x, "welsch", 0.7)
    _fresh_kernel_state(monkeypatch)
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    monkeypatch.setenv("DDN_KERNEL_CACHE", str(tmp_path / "cache"))
    with pytest.warns(RuntimeWarning, match="no-such-g\\+\\+"):
        y = T.robust_pool(x, "welsch", 0.7)
    assert not _kernels.usable(x)
    torch.testing.assert_close(y, want, atol=0, rtol=0)


def test_kernel_unwritable_cache_uses_a_temp_folder(monkeypatch):
    """Found by audit: an unwritable $DDN_KERNEL_CACHE (read-only shared home) disabled the
    kernel; it now builds under $TMPDIR/ddn-kernels-<uid>."""
    import shutil
    if shutil.which(__import__("os").environ.get("CXX", "g++")) is None:
        pytest.skip("no compiler")
    _fresh_kernel_state(monkeypatch)
    monkeypatch.setenv("DDN_KERNEL_CACHE", "/dev/null/not-a-folder")
    assert _kernels.lib() is not None
    x = torch.randn(3, 8, dtype=F64)
    assert _kernels.usable(x)


def test_nonconvex_exact_ties_pick_the_smaller_minimizer(backend):
    """Found by audit: symmetric rows (n = 2 points far apart, two equal clusters) have two minima
    with the same objective; which one won depended on rounding (kernel and eager differed by
    5.6 on random n = 2 rows). Near-ties now keep the smaller y on every floor."""
    rows = torch.tensor([[0.0, 6.0, 0.0, 6.0, 0.0, 6.0], [1.0, 1.0, 1.0, 9.0, 9.0, 9.0],
                         [3.0, -4.0, 3.0, -4.0, 3.0, -4.0]], dtype=F64)
    x2 = torch.randn(300, 2, dtype=F64) * 4
    for pen, a in (("welsch", 1.0), ("truncated-quadratic", 1.0)):
        y = T.robust_pool(rows, pen, a)
        yr = [R.robust_pool(r, pen, a) for r in rows.numpy()]
        np.testing.assert_allclose(y.numpy(), yr, atol=1e-9, rtol=0)
        lower = rows.amin(-1)
        assert (y - lower).abs().max() < 1e-3, (pen, y)
    y = T.robust_pool(x2, "welsch", 1.0)
    yr = np.array([R.robust_pool(r, "welsch", 1.0) for r in x2.numpy()])
    np.testing.assert_allclose(y.numpy(), yr, atol=1e-9, rtol=0)
    far = (x2[:, 0] - x2[:, 1]).abs() > 3  # two tied minima: the one nearer the smaller point
    assert far.sum() > 50
    assert ((y[far] - x2[far].amin(-1)).abs() < (y[far] - x2[far].amax(-1)).abs()).all()


@pytest.mark.parametrize("pen", PENALTIES)
def test_every_dim_keepdim_and_non_contiguous_vs_reference_and_fd(pen, backend):
    """Audit sweep: pooling over each dim of a 4-D tensor, keepdim both ways, against the
    reference row by row; gradients of transposed / sliced / expanded views against central
    differences (gradcheck), with a per-output α that requires grad."""
    x = torch.randn(2, 3, 4, 3, dtype=F64) * 2
    for dim in range(4):
        for keepdim in (False, True):
            y = T.robust_pool(x, pen, 1.1, dim=dim, keepdim=keepdim)
            rows = x.movedim(dim, -1).reshape(-1, x.shape[dim]).numpy()
            yr = np.array([R.robust_pool(r, pen, 1.1) for r in rows])
            assert y.shape == tuple(1 if (i == dim) else s for i, s in enumerate(x.shape)
                                    if keepdim or i != dim)
            np.testing.assert_allclose((y.squeeze(dim) if keepdim else y).reshape(-1).numpy(), yr,
                                       atol=1e-12, rtol=0)
    base = torch.randn(6, 5, dtype=F64).requires_grad_()
    a = (torch.rand(5, dtype=F64) + 0.6).requires_grad_()
    for view in (lambda b: b.t(), lambda b: b[::2, 1:].t(), lambda b: b[:1].expand(4, 5).t(),
                 lambda b: b.flip(0).t()):
        def f(b, a, view=view):
            v = view(b)
            return T.robust_pool(v, pen, a[: v.shape[0]], dim=-1)
        assert torch.autograd.gradcheck(f, (base, a), atol=1e-6)


def test_kernel_rejected_flags_retry_portably(monkeypatch, tmp_path):
    """Found by audit: a compiler that rejects the tuned x86 flags (-mprefer-vector-width on
    aarch64, an old GCC) disabled the kernel; the build now retries with portable flags."""
    import shutil
    if shutil.which(__import__("os").environ.get("CXX", "g++")) is None:
        pytest.skip("no compiler")
    _fresh_kernel_state(monkeypatch)
    monkeypatch.setattr(_kernels, "_FLAGS", _kernels._FLAGS + ["-mno-such-flag-ddn"])
    monkeypatch.setenv("DDN_KERNEL_CACHE", str(tmp_path))
    assert _kernels.lib() is not None
    x = torch.randn(4, 9, dtype=F64)
    monkeypatch.setattr(_kernels, "ENABLED", False)
    want = T.robust_pool(x, "pseudo-huber", 0.6)
    monkeypatch.setattr(_kernels, "ENABLED", True)
    torch.testing.assert_close(T.robust_pool(x, "pseudo-huber", 0.6), want, atol=1e-14, rtol=0)
