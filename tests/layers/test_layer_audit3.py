"""Regression tests from the third audit round of the pooling and projection layers (both
backends: compiled kernel and eager torch). Each test failed before its fix, or checks a
docstring claim made in that round."""
import warnings

import numpy as np
import pytest
import torch

import ddn.torch as T
from ddn import DDNError, DDNWarning

F64 = torch.float64
INF = float("inf")


# ----------------------------------------------------------------------------- projections
@pytest.mark.parametrize("p", [1, 2, INF])
def test_sphere_of_a_zero_row_warns_once_with_the_row_count_for_every_p(p, backend):
    """x = 0 has no unique nearest point on any Lp sphere. p = 2 warned; p = 1 and ∞ returned
    their arbitrary pick silently. Now one DDNWarning per call names the rows, and the returned
    point and gradient are the documented ones (finite)."""
    x = torch.tensor([[0.0, 0, 0, 0], [0.3, -0.2, 0.1, 0.5], [0, 0, 0, 0]], dtype=F64,
                     requires_grad=True)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        y = T.project_sphere(x, p, 2.0)
    msgs = [str(w.message) for w in rec if issubclass(w.category, DDNWarning)]
    assert len(msgs) == 1 and "x = 0 in 2 row(s)" in msgs[0], msgs
    v = torch.tensor([1.0, 2, 3, 4], dtype=F64).expand(3, 4)
    gx, = torch.autograd.grad(y, x, v)
    assert torch.isfinite(gx).all()
    z = torch.tensor([0, 2])
    if p == 1:
        assert torch.allclose(y[z], torch.full((2, 4), 0.5, dtype=F64))
        assert torch.allclose(gx[z], v[z] - v[z].mean(-1, keepdim=True))
    elif p == INF:
        assert torch.equal(y[z], torch.tensor([[2.0, 0, 0, 0]] * 2, dtype=F64))
        assert torch.equal(gx[z], torch.tensor([[0.0, 2, 3, 4]] * 2, dtype=F64))
    else:
        assert torch.allclose(y[z], torch.ones(2, 4, dtype=F64))
        assert torch.equal(gx[z], torch.zeros(2, 4, dtype=F64))


def _one_sided(f, x, r, u, ur, h=1e-7):
    """(f(x + h u, r + h ur) − f(x, r)) / h in float64: the one-sided directional derivative (the
    maps are piecewise linear near these points, so this is exact up to rounding)."""
    return (f(x + h * u, r + h * ur) - f(x, r)) / h


@pytest.mark.parametrize("masked", [True, False])
def test_sphere_gradient_at_a_non_unique_nearest_point_is_the_documented_branch(masked, backend):
    """Non-zero rows where the nearest point is not unique (p = ∞ inside the ball with tied
    largest |x_i|; p = 1 inside the ball with zero coordinates, sign(0) = +1) do not warn, and
    their gradient is the documented one: the branch's, equal to the one-sided derivative along
    directions that keep the choice (module docstring)."""
    g = torch.Generator().manual_seed(1)
    r = torch.tensor([1.0, 2.0], dtype=F64)
    xi = torch.tensor([[0.3, -0.5, 0.5, 0.1], [0.5, 0.2, -0.5, -0.5]], dtype=F64)  # ∞: k = 1, 0
    x1 = torch.tensor([[0.2, 0.0, -0.3, 0.0], [0.0, 0.0, 0.4, -0.1]], dtype=F64)  # 1: zeros
    for p, x0 in ((INF, xi), (1, x1)):
        x, rr = x0.clone().requires_grad_(), r.clone().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("error", DDNWarning)
            y = T.project_sphere(x, p, rr[:, None], masked=masked)
        v = torch.randn(2, 4, generator=g, dtype=F64)
        gx, gr = torch.autograd.grad(y, (x, rr), v)
        s = torch.where(x0 >= 0, 1.0, -1.0).to(F64)
        if p == 1:  # documented: v − s sᵀv/n, sᵀv/n
            sv = (s * v).sum(-1, keepdim=True) / 4
            assert torch.allclose(gx, v - s * sv) and torch.allclose(gr, sv.squeeze(-1))
        else:  # documented: v with v_k zeroed, sign(x_k) v_k (k: the first largest |x_i|)
            k = torch.tensor([1, 0])
            e = torch.nn.functional.one_hot(k, 4).to(F64)
            assert torch.allclose(gx, v * (1 - e))
            assert torch.allclose(gr, (e * s * v).sum(-1))
        for _ in range(3):
            u = torch.randn(2, 4, generator=g, dtype=F64)
            ur = torch.randn(2, generator=g, dtype=F64)
            if p == 1:
                u = torch.where(x0 == 0, u.abs(), u)  # keep sign(0) = +1
            else:  # keep k the first largest: sign(x_k) u_k above every tied sign(x_j) u_j
                u.scatter_(-1, k[:, None], (s * (u.abs().amax(-1, keepdim=True) + 1)).gather(
                    -1, k[:, None]))
            fd = _one_sided(lambda a, b: T.project_sphere(a, p, b[:, None]), x0, r, u, ur)
            assert torch.allclose((fd * v).sum(-1), (gx * u).sum(-1) + gr * ur, atol=1e-6)


# ----------------------------------------------------------------------------- radius / alpha
@pytest.mark.parametrize("bad", [1e-46, 1e39])
def test_radius_that_rounds_to_zero_or_inf_is_a_ddnerror(bad, backend):
    """float32: radius 1e-46 passed the check on the Python float, then rounded to 0 (y = 0, NaN
    gradients for p = 2), and 1e39 crashed in torch.full with 'value cannot be converted to type
    float without overflow'. Now a DDNError names the dtype's range."""
    x = torch.tensor([[0.5, -1.0, 2.0, 0.25]])
    for p in (1, 2, INF):
        for f in (T.project_sphere, T.project_ball):
            for r in (bad, torch.tensor(bad, dtype=F64)):
                with pytest.raises(DDNError, match="not representable"):
                    f(x, p, r)
    with pytest.raises(DDNError, match="not representable"):
        T.project_simplex(x, bad)


@pytest.mark.parametrize("dtype,tiny", [(torch.float64, 1e-310), (torch.float32, 1e-40)])
@pytest.mark.parametrize("kind", ["sphere", "ball"])
def test_subnormal_radius_gives_the_scaled_gradient(kind, dtype, tiny, backend):
    """The p = 2 kernel backward formed ŷ = y·(1/r); 1/r overflows for a subnormal r, so the
    gradient was NaN (the eager code divides). For p = 2, ∂L/∂x = (r/‖x‖)(I − ŷŷᵀ)v is r times
    its value at r = 1 and ∂L/∂r = ŷᵀv does not depend on r."""
    x0 = torch.tensor([[0.5, -1.0, 2.0, 0.25]], dtype=dtype)
    v = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=dtype)
    f = T.project_sphere if kind == "sphere" else T.project_ball
    grads = []
    for r0 in (1.0, tiny):
        x, r = x0.clone().requires_grad_(), torch.tensor(r0, dtype=dtype, requires_grad=True)
        y = f(x, 2, r)
        gx, gr = torch.autograd.grad(y, (x, r), v)
        grads.append((gx.double() / r0, gr.double()))
    tol = 1e-9 if dtype == F64 else 1e-3
    assert torch.isfinite(grads[1][0]).all()
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=tol, atol=tol)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,bad", [(torch.float64, 1e-310), (torch.float32, 1e-40),
                                       (torch.float32, 1e39)])
@pytest.mark.parametrize("pen", ["pseudo-huber", "huber", "welsch", "truncated-quadratic"])
def test_alpha_outside_the_dtypes_normal_range_is_a_ddnerror(pen, dtype, bad, backend):
    """A subnormal α (1/α overflows) gave the kernel wrong answers — pseudo-Huber and Welsch
    returned the mean with a zero gradient and a misleading warning, the truncated quadratic
    disagreed with the eager code — and α = 1e39 in float32 crashed in torch.full. Now a DDNError
    names the range and the remedy (rescale x and α together)."""
    x = torch.tensor([[0.0, 1.0, 2.0, 10.0]], dtype=dtype) * min(bad, 1.0)
    for a in (bad, torch.tensor([bad], dtype=F64)):
        with pytest.raises(DDNError, match="normal range"):
            T.robust_pool(x, pen, a)


def test_smallest_normal_alpha_and_radius_still_work(backend):
    """The new range checks reject nothing that is representable and normal."""
    tiny = torch.finfo(F64).tiny
    x = torch.tensor([[0.0, 1.0, 2.0, 10.0]], dtype=F64) * tiny
    y = T.robust_pool(x, "pseudo-huber", tiny)
    yr = T.robust_pool(x / tiny, "pseudo-huber", 1.0)
    assert torch.allclose(y / tiny, yr, rtol=1e-10)
    yp = T.project_sphere(x / tiny, 2, tiny)
    assert torch.allclose((yp / tiny).norm(), torch.tensor(1.0, dtype=F64))


# ----------------------------------------------------------------------------- pooling kinks
def _tq(y, x, a):
    return 0.5 * np.minimum((y - x) ** 2, a * a).sum()


def test_truncated_quadratic_on_quantized_data_returns_a_local_minimum(backend):
    """Integer data with α = 1 put points exactly at |y − x_i| = α from an MM fixed point (the
    median start y = 0 for x = (0,0,0,0,1,5,5,5)): the strict inlier test left them out, and that
    fixed point — where f = Σ½min(z², α²) has a concave kink, so it is no local minimum — was
    returned (y = 0, f = 2.0; y = 0.2 has f = 1.9). It happened in 39% of such rows."""
    x = torch.tensor([0.0, 0, 0, 0, 1, 5, 5, 5], dtype=F64, requires_grad=True)
    y = T.robust_pool(x, "truncated-quadratic", 1.0)
    gx, = torch.autograd.grad(y, x)
    assert abs(y.item() - 0.2) < 1e-15
    assert torch.allclose(gx, torch.tensor([0.2] * 5 + [0.0] * 3, dtype=F64))
    rng = np.random.default_rng(0)
    X = rng.integers(0, 6, size=(300, 8)).astype(float)
    for dtype in (F64, torch.float32):
        Y = T.robust_pool(torch.tensor(X, dtype=dtype), "truncated-quadratic", 1.0).double()
        for xr, yr in zip(X, Y.numpy()):
            f0 = _tq(yr, xr, 1.0)
            assert min(_tq(yr + 1e-3, xr, 1.0), _tq(yr - 1e-3, xr, 1.0)) >= f0 - 1e-9, (xr, yr)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_huber_gradient_at_an_exact_kink_is_the_inlier_side_one(dtype, backend):
    """x = (0, 0, 1.5), α = 1: y = 0.5 and x_3 sits exactly at |y − x_3| = α. Documented: the
    point counts as an inlier, ∂y/∂x = (⅓, ⅓, ⅓), ∂y/∂α = 0 — the one-sided derivatives as x_3
    decreases or α increases (from the other side: (½, ½, 0) and ½). Finite on both backends."""
    x0 = torch.tensor([0.0, 0.0, 1.5], dtype=dtype)
    x, a = x0.clone().requires_grad_(), torch.tensor(1.0, dtype=dtype, requires_grad=True)
    y = T.robust_pool(x, "huber", a)
    gx, ga = torch.autograd.grad(y, (x, a))
    assert y.item() == 0.5
    tol = dict(atol=1e-6, rtol=0) if dtype == F64 else dict(atol=1e-3, rtol=0)
    assert torch.allclose(gx.double(), torch.full((3,), 1 / 3, dtype=F64), **tol)
    assert abs(ga.item()) <= tol["atol"]
    h = 1e-6 if dtype == F64 else 1e-3
    e3 = torch.tensor([0.0, 0, 1], dtype=dtype)
    pool = lambda xx, aa: T.robust_pool(xx, "huber", aa).item()  # noqa: E731
    inl = (pool(x0 - h * e3, 1.0) - 0.5) / -h   # x_3 decreases: stays an inlier
    out = (pool(x0 + h * e3, 1.0) - 0.5) / h    # x_3 increases: an outlier
    up = (pool(x0, 1.0 + h) - 0.5) / h
    down = (pool(x0, 1.0 - h) - 0.5) / -h
    assert abs(inl - 1 / 3) < 1e-3 and abs(out) < 1e-3
    assert abs(up) < 1e-3 and abs(down - 0.5) < 1e-3


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_welsch_degenerate_minimum_warns_instead_of_a_huge_gradient(dtype, backend):
    """x = (0, 2), α = 1 (two points 2α apart): f'' = 0 at the minimum y = 1, which the solver
    fixes only to ~ε^⅓; H = Σφ'' then came out ~ε^⅔·Σw > 0 and the gradient was ±7.6e4 (eager
    and kernel disagreeing by up to 60%), silently. Now such an H counts as H = 0: zero gradient
    and the documented DDNWarning. Regular near-degenerate rows keep their gradient."""
    for xs in ([0.0, 2.0], [0.0, 2.0, 10.0], [[0.0, 2.0], [0.0, 0.5]]):
        x = torch.tensor(xs, dtype=dtype, requires_grad=True)
        with pytest.warns(DDNWarning, match="degenerate minimum"):
            y = T.robust_pool(x, "welsch", 1.0)
            (gx,) = torch.autograd.grad(y.sum(), x)
        assert torch.equal(gx.reshape(-1, x.shape[-1])[0], torch.zeros(x.shape[-1], dtype=dtype))
        assert abs(float(y.detach().reshape(-1)[0]) - 1.0) < 1e-2
        if x.dim() == 2:  # the regular row keeps its gradient (½, ½ by symmetry)
            assert torch.allclose(gx[1], torch.full((2,), 0.5, dtype=dtype))
    x = torch.tensor([0.0, 1.99], dtype=dtype, requires_grad=True)  # 2α(1 − 5e-3): regular
    (gx,) = torch.autograd.grad(T.robust_pool(x, "welsch", 1.0), x)
    assert torch.allclose(gx, torch.full((2,), 0.5, dtype=dtype), atol=1e-3)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("xs,gx_want,ga_want", [
    ([-3.0, -2, -1, 1, 1, 3], [0, 0, 1 / 3, 1 / 3, 1 / 3, 0], -1 / 3),   # y = 0
    ([-1.0, -2, -2, 1, 3], [1 / 3, 1 / 3, 1 / 3, 0, 0], 2 / 3),          # y = −1
    ([0.0, 3, -2, -3, 2, 2, 1, -1, 3], [0.25, 0, 0, 0, 0.25, 0.25, 0.25, 0, 0], -0.25),  # y = 1
])
def test_huber_gradient_within_rounding_of_a_kink_is_the_inlier_side_on_both_backends(
        xs, gx_want, ga_want, dtype, backend):
    """Integer data, α = 1: the Huber minimizer sits exactly on kinks, and Newton ends an ulp or
    so on either side of it; which side decided the gradient (the kernel returned (0, 0, 1, 0, 0,
    0) and ∂y/∂α = 1 for the first row, the eager code (0, 0, ⅓, ⅓, ⅓, 0) and −⅓). Points within
    rounding of the kink now count as inliers on both: the one-sided derivative as α increases
    (checked by a forward difference in α)."""
    x = torch.tensor(xs, dtype=dtype, requires_grad=True)
    a = torch.tensor(1.0, dtype=dtype, requires_grad=True)
    y = T.robust_pool(x, "huber", a)
    gx, ga = torch.autograd.grad(y, (x, a))
    tol = 1e-12 if dtype == F64 else 1e-6
    assert torch.allclose(gx.double(), torch.tensor(gx_want, dtype=F64), atol=tol)
    assert abs(float(ga) - ga_want) < tol
    h = 1e-4
    xd = torch.tensor(xs, dtype=F64)
    fd = (T.robust_pool(xd, "huber", 1.0 + h) - T.robust_pool(xd, "huber", 1.0)) / h
    assert abs(float(fd) - ga_want) < 1e-8


@pytest.mark.parametrize("p", [torch.tensor(1.0), torch.tensor(2), np.float64(2.0), np.int64(1),
                               torch.tensor(float("inf")), 2.0, 1])
def test_p_given_as_a_tensor_or_numpy_scalar_is_accepted(p):
    # a tensor p passed the `p in (1, 2, inf)` test and then failed as a dict key (a bare
    # KeyError when the zero-row warning was built); numpy and tensor scalars now mean their value
    from ddn.torch.projections import BallProjection, project_sphere
    x = torch.randn(3, 5, dtype=torch.float64)
    want = project_sphere(x, p=float(p))
    assert torch.equal(project_sphere(x, p=p), want)
    assert torch.equal(BallProjection(p=p)(x), BallProjection(p=float(p))(x))
    with pytest.warns(DDNWarning, match="x = 0"):
        project_sphere(torch.zeros(2, 4), p=p)


@pytest.mark.parametrize("p", ["2", True, torch.tensor([1.0, 2.0]), 3, 0.5, None])
def test_p_that_is_not_one_two_or_inf_is_a_ddnerror(p):
    from ddn.torch.projections import SphereProjection, project_sphere
    with pytest.raises(DDNError, match="p must be"):
        project_sphere(torch.randn(2, 3), p=p)
    with pytest.raises(DDNError, match="p must be"):
        SphereProjection(p=p)


def test_eager_truncated_quadratic_rows_are_solved_independently(monkeypatch):
    # the eager MM drops converged rows from the iteration: a row's answer must not depend on
    # the others (rows converging at different steps, kinks on quantized rows), and must be the
    # kernel's
    from ddn.torch import _kernels
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(6, 40, generator=g, dtype=torch.float64) * 3,
                   torch.randint(0, 6, (6, 40), generator=g).double(),
                   torch.relu(torch.randn(6, 40, generator=g, dtype=torch.float64))])
    want = T.robust_pool(x, "truncated-quadratic", 1.0)          # CPU kernel
    monkeypatch.setattr(_kernels, "usable", lambda *a, **k: False)
    together = T.robust_pool(x, "truncated-quadratic", 1.0)
    alone = torch.stack([T.robust_pool(r[None], "truncated-quadratic", 1.0)[0] for r in x])
    assert torch.equal(together, alone)
    torch.testing.assert_close(together, want, rtol=0, atol=1e-12)
