"""Regression tests from the adversarial audit of the pooling and projection layers (both backends:
compiled kernel and eager torch). Each test failed before its fix."""
import pytest
import torch

import ddn.torch as T

F64 = torch.float64


def _rows(B=6, n=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(B, n, generator=g, dtype=F64)
    x[:, :2] += 6  # outliers: the non-convex penalties pick between two local minima
    return x


# ----------------------------------------------------------------------------- robust pooling
@pytest.mark.parametrize("pen", ["welsch", "truncated-quadratic"])
@pytest.mark.parametrize("dtype,scales", [(torch.float64, (1e-200, 1e-160, 1e160, 1e200)),
                                          (torch.float32, (1e-25, 1e25))])
def test_nonconvex_pooling_is_scale_equivariant_for_tiny_and_huge_alpha(pen, dtype, scales,
                                                                        backend):
    """y(s·x; s·α) = s·y(x; α), ∂y/∂x unchanged, ∂y/∂α unchanged. Welsch and the truncated
    quadratic formed α² (φ'' ∝ 1/α², the objective's ceiling ½α²), which underflows to 0 or
    overflows to inf for |log10 α| > 154 (float64) or > 19 (float32): Welsch did not converge
    (a DDNWarning) or returned NaN gradients, the truncated quadratic silently returned the wrong
    minimum (every objective compared as 0 or inf, the tie rule picked the smaller y)."""
    x0 = _rows()
    xr, ar = x0.clone().requires_grad_(), torch.full((6,), 1.0, dtype=F64, requires_grad=True)
    yr = T.robust_pool(xr, pen, ar)
    gxr, gar = torch.autograd.grad(yr.sum(), (xr, ar))
    tol = 1e-12 if dtype == F64 else 1e-4
    for s in scales:
        x = (x0 * s).to(dtype).requires_grad_()
        a = torch.full((6,), s, dtype=dtype, requires_grad=True)
        y = T.robust_pool(x, pen, a)
        gx, ga = torch.autograd.grad(y.sum(), (x, a))
        assert torch.allclose(y.double() / s, yr, rtol=tol, atol=tol), s
        assert torch.allclose(gx.double(), gxr, rtol=tol, atol=tol), s
        assert torch.allclose(ga.double(), gar, rtol=tol, atol=tol), s


def test_keepdim_alpha_broadcasts_like_the_keepdim_output(backend):
    """keepdim=True: a (C, 1) alpha for x of shape (C, C, n) broadcasts against the (C, C, 1)
    output, i.e. per dim 1 (per channel); it was read as per dim 0 (the no-keepdim shape was tried
    first and also fits), silently pooling every row with another row's alpha."""
    x = _rows(9, 7).reshape(3, 3, 7)
    a = torch.tensor([[0.25], [1.0], [4.0]], dtype=F64)
    for keepdim, row_alpha in ((True, lambda i, j: a[j, 0]), (False, lambda i, j: a[i, 0])):
        y = T.robust_pool(x, "welsch", a, keepdim=keepdim)
        want = torch.stack([torch.stack([T.robust_pool(x[i, j], "welsch", float(row_alpha(i, j)))
                                         for j in range(3)]) for i in range(3)])
        assert torch.equal(y.reshape(3, 3), want), keepdim
    # the module with per-channel alpha and keepdim
    layer = T.RobustPool("welsch", alpha=a, keepdim=True).to(F64)
    assert torch.equal(layer(x), T.robust_pool(x, "welsch", a, keepdim=True))


# ----------------------------------------------------------------------------- projections
@pytest.mark.parametrize("kind", ["sphere", "ball"])
@pytest.mark.parametrize("s", [1e-200, 1e200])
def test_l2_projection_create_graph_gradient_for_huge_and_tiny_x(kind, s, backend):
    """Under create_graph=True the p = 2 backward recomputed ‖x‖ with x.norm(), which overflows
    to inf (huge x) or underflows to 0 (tiny x) while the forward rescales: the first-order
    gradient silently became 0 (a gradient penalty or hypergradient lost it entirely)."""
    fn = T.project_sphere if kind == "sphere" else T.project_ball
    x0 = torch.randn(3, 5, dtype=F64, generator=torch.Generator().manual_seed(1)) * 3 * s
    v = torch.randn(3, 5, dtype=F64, generator=torch.Generator().manual_seed(2))
    x1 = x0.clone().requires_grad_()
    (g1,) = torch.autograd.grad(fn(x1, 2, 1.0), x1, v)
    x2 = x0.clone().requires_grad_()
    (g2,) = torch.autograd.grad(fn(x2, 2, 1.0), x2, v, create_graph=True)
    assert g2.requires_grad
    assert torch.allclose(g2 * s, g1 * s, rtol=1e-12, atol=1e-14)
    assert (g1 * s).abs().max() > 1e-3 or kind == "ball" and s < 1  # not trivially zero
    # closed form (r/‖x‖)(v − ŷŷᵀv), in units of s
    xs = x0 / s
    nrm = xs.norm(dim=-1, keepdim=True)
    yh = xs / nrm
    want = (v - yh * (yh * v).sum(-1, keepdim=True)) / nrm
    if kind == "ball" and s < 1:
        want = v * s  # inside the unit ball: y = x
    assert torch.allclose(g2 * s, want, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- kernel threads
def _pool_in_child(q):
    x = torch.randn(64, 64, dtype=F64)
    q.put(tuple(T.robust_pool(x, "huber").shape))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_kernel_threads_work_in_a_forked_child(monkeypatch):
    """The kernel's row threads live in a ThreadPoolExecutor kept across calls; a forked child
    (multiprocessing's default on Linux) inherits the pool object but not its threads, so the
    child's first threaded call waited forever. The pool is now dropped in the child at fork."""
    import multiprocessing as mp

    from ddn.torch import _kernels
    if _kernels.lib() is None:
        pytest.skip("compiled kernel unavailable")
    monkeypatch.setattr(_kernels, "ENABLED", True)
    monkeypatch.setattr(_kernels, "_PAR_MIN", 1)  # thread even small inputs
    nt = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        T.robust_pool(torch.randn(64, 64, dtype=F64), "huber")  # the parent creates the pool
        assert _kernels._state["pool"] is not None
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_pool_in_child, args=(q,))
        p.start()
        p.join(15)
        hung = p.is_alive()
        if hung:
            p.kill()
            p.join()
        assert not hung, "robust_pool hung in a forked child"
        assert q.get(timeout=5) == (64,)
    finally:
        torch.set_num_threads(nt)


# ----------------------------------------------------------------------------- arguments
def test_out_of_range_dim_is_an_error_not_another_dim():
    """dim was reduced modulo x.dim(): dim=2 on a 2-D x pooled / projected over dim 0 and dim=-3
    over dim 1, silently (torch raises for such a dim). Now a DDNError naming the valid range."""
    from ddn import DDNError
    x = torch.randn(3, 4, dtype=F64)
    calls = [lambda d: T.robust_pool(x, "huber", 1.0, dim=d),
             lambda d: T.RobustPool("welsch", dim=d)(x),
             lambda d: T.project_sphere(x, 2, 1.0, dim=d),
             lambda d: T.project_ball(x, 1, 1.0, dim=d),
             lambda d: T.project_simplex(x, 1.0, dim=d),
             lambda d: T.SphereProjection(float("inf"), dim=d)(x)]
    for f in calls:
        for d in (2, 5, -3):
            with pytest.raises(DDNError, match="out of range"):
                f(d)
        with pytest.raises(DDNError, match="integer"):
            f(1.0)
        assert f(-2).shape == f(0).shape  # in range: unchanged


# ----------------------------------------------------------------------------- dtype extremes
@pytest.mark.parametrize("dtype,big", [(torch.float32, 3e38), (torch.float64, 1.5e308)])
@pytest.mark.parametrize("kind", ["sphere", "ball"])
def test_l2_projection_of_x_whose_norm_overflows(dtype, big, kind, backend):
    """Finite x whose ‖x‖ overflows the dtype (entries near its largest value): y = x·(r/‖x‖)
    was x·0 = 0, silently, though the module docstring promises huge x are fine for p = 2."""
    fn = T.project_sphere if kind == "sphere" else T.project_ball
    x = torch.tensor([[big, big, -big], [big, -0.5 * big, 1.0]], dtype=dtype)
    y = fn(x, 2, 2.0)
    want = (x.double() / big) * (2.0 / (x.double() / big).norm(dim=-1, keepdim=True))
    assert torch.allclose(y.double(), want, rtol=1e-6, atol=0)


def test_pooling_values_near_the_dtype_limit_error_alike_on_both_backends(backend):
    """Rows whose Σx or max x − min x overflow (finite x near the dtype's largest value): the
    eager path (the CUDA path) returned y = inf silently (mean and bisection midpoints
    overflowed), the kernel raised 'x contains NaN or Inf' or '|x|/alpha ...' (both wrong).
    Now a DDNError that names the cause on both; rows whose spread fits are solved."""
    from ddn import DDNError
    for row in ([3e38, 3e38, -3e38], [-3e38, 3e38], [3e38, 3e38, 3e38, -3e38],
                [1.8e38, 1.75e38, -1.5e38]):
        for pen in ("quadratic", "huber", "welsch"):
            with pytest.raises(DDNError, match="overflows the dtype"):
                T.robust_pool(torch.tensor([row]), pen, 1e38)
    # a single huge value: the spread fits, the answer is right (the reference at scale 1)
    import numpy as np

    import ddn.reference as R
    row = [3e38, 1.0, 0.0]
    for pen in ("pseudo-huber", "huber", "welsch", "truncated-quadratic"):
        want = R.robust_pool(np.array(row) / 1e38, pen, 1.0) * 1e38
        got = T.robust_pool(torch.tensor([row]), pen, 1e38).item()
        assert abs(got - want) <= 1e-5 * 1e38, pen


@pytest.mark.parametrize("pen", ["pseudo-huber", "welsch"])
def test_pooling_gradient_uses_curvature_at_the_returned_y(pen, backend):
    """float32 rows far from 0 with a small α (|x| ≈ 1000, α = 0.01): the last converged Newton
    step (≤ 2 eps |y|) moves u = (y − x_i)/α by about 0.02, and the kernel's backward divided by
    H = Σφ'' taken *before* that step, so ∂y/∂x summed to 1 ± 2.5% (pseudo-Huber) or 5% (Welsch)
    instead of 1 (y is translation-equivariant) and missed φ''(y − x_i)/Σφ''(y − x_j) at the
    returned y. Now the backward uses H at the returned y (the eager code always did)."""
    g = torch.Generator().manual_seed(0)
    x = (1000 + torch.randn(256, 33, generator=g)).requires_grad_()
    a = 0.01 if pen == "pseudo-huber" else 0.1
    y = T.robust_pool(x, pen, a)
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert (gx.double().sum(-1) - 1).abs().max() < 1e-5
    # the closed form at the returned (float32) y, evaluated in float64
    u = (y.detach().double()[:, None] - x.detach().double()) / a
    d2 = (1 + u * u) ** -1.5 if pen == "pseudo-huber" else (1 - u * u) * torch.exp(-0.5 * u * u)
    want = d2 / d2.sum(-1, keepdim=True)
    assert (gx.double() - want).abs().max() < 1e-4


def test_projection_radius_broadcasts_like_against_x(backend):
    """A (B, 1) radius for x of shape (A, B, n) broadcasts against x per dim 1. It was matched
    against x-without-dim (A, B) first, which fits only when A = B: then it was applied per
    dim 0, silently, so the meaning of the same radius flipped with a shape coincidence."""
    r = torch.tensor([[0.5], [1.0], [2.0]], dtype=F64)
    for A in (3, 4):  # A = B = 3 was the silently wrong case
        x = torch.randn(A, 3, 5, dtype=F64, generator=torch.Generator().manual_seed(A))
        for f in (lambda x, r: T.project_sphere(x, 2, r), lambda x, r: T.project_ball(x, 1, r),
                  lambda x, r: T.project_simplex(x, r)):
            y = f(x, r)
            want = torch.stack([torch.stack([f(x[i, j], r[j, 0]) for j in range(3)])
                                for i in range(A)])
            torch.testing.assert_close(y, want, rtol=0, atol=1e-15)
        # the common shapes keep their meaning: per row (A,) / per (A, B) / keepdim (A, B, 1)
        y = T.project_sphere(x, 2, torch.arange(1.0, A + 1, dtype=F64)[:, None].expand(A, 3))
        torch.testing.assert_close(y.norm(dim=-1), torch.arange(1.0, A + 1, dtype=F64)[:, None]
                                   .expand(A, 3))
        rk = torch.rand(A, 3, 1, dtype=F64) + 0.5
        torch.testing.assert_close(T.project_sphere(x, 2, rk).norm(dim=-1, keepdim=True), rk)
    x2 = torch.randn(4, 6, dtype=F64)
    r2 = torch.arange(1.0, 5.0, dtype=F64)
    torch.testing.assert_close(T.project_sphere(x2, 2, r2).norm(dim=-1), r2)


@pytest.mark.parametrize("dtype,tiny", [(torch.float32, 1e-40), (torch.float64, 1e-310)])
def test_l2_projection_of_subnormal_x(dtype, tiny, backend):
    """x whose ‖x‖ is subnormal: r/‖x‖ overflowed to inf and project_sphere returned inf,
    silently. Now (x/m)·(r/‖x/m‖), m = max|x|; the ball leaves such x alone, and a subnormal
    radius is honoured too."""
    x = torch.tensor([[3 * tiny, 4 * tiny], [-4 * tiny, 0.0]], dtype=dtype)
    want = torch.tensor([[0.6, 0.8], [-1.0, 0.0]], dtype=dtype)
    torch.testing.assert_close(T.project_sphere(x, 2, 1.0), want, rtol=1e-5, atol=0)
    assert torch.equal(T.project_ball(x, 2, 1.0), x)
    y = T.project_sphere(torch.tensor([[3.0, 4.0]], dtype=dtype), 2, 10 * tiny)
    torch.testing.assert_close(y / tiny, torch.tensor([[6.0, 8.0]], dtype=F64).to(dtype),
                               rtol=1e-4, atol=0)


# ----------------------------------------------------------------------------- empty batches
def test_empty_batch_with_a_learnable_alpha_or_radius_backpropagates(backend):
    """An empty batch through a module with a learnable α / radius returned a tensor outside the
    parameter's graph, so loss.backward() raised 'element 0 of tensors does not require grad'
    (torch layers, e.g. nn.Linear, return a graph and a zero gradient there)."""
    x = torch.randn(0, 3, 8, dtype=F64)
    mods = [T.RobustPool("welsch", learn_alpha=True), T.SphereProjection(2, learn_radius=True),
            T.BallProjection(1, learn_radius=True), T.SimplexProjection(learn_radius=True)]
    for m in mods:
        m = m.to(F64)
        y = m(x)
        assert y.shape == ((0, 3) if isinstance(m, T.RobustPool) else (0, 3, 8))
        y.sum().backward()
        (prm,) = list(m.parameters())
        assert prm.grad is not None and torch.all(prm.grad == 0)
    # x's gradient on an empty batch is empty, alpha-only gradients work too
    xg = torch.randn(0, 5, dtype=F64, requires_grad=True)
    a = torch.tensor(0.7, dtype=F64, requires_grad=True)
    gx, ga = torch.autograd.grad(T.robust_pool(xg, "huber", a).sum(), (xg, a))
    assert gx.shape == (0, 5) and ga.item() == 0


# ----------------------------------------------------------------------------- modules
def test_modules_keep_a_float64_alpha_or_radius_exactly(backend):
    """A float64 tensor α / radius given to a module was stored in the default dtype (float32),
    so a float64 model pooled with α = 0.30000001192… instead of 0.3 (and .to(float64) cannot
    undo the rounding); the module then disagreed with the functional form."""
    x = torch.randn(4, 3, 9, dtype=F64, generator=torch.Generator().manual_seed(3))
    a = torch.tensor([0.3, 0.7, 1.1], dtype=F64)
    r = torch.tensor([[0.3], [0.7], [1.1]], dtype=F64)
    for learn in (False, True):
        m = T.RobustPool("welsch", alpha=a, learn_alpha=learn).to(F64)
        want = T.robust_pool(x, "welsch", a)
        torch.testing.assert_close(m(x), want, rtol=0, atol=1e-15 if learn else 0)
        s = T.SphereProjection(1, radius=r, learn_radius=learn).to(F64)
        torch.testing.assert_close(s(x), T.project_sphere(x, 1, r), rtol=0,
                                   atol=1e-15 if learn else 0)
    # numbers keep the default dtype, and modules still follow .to()
    assert T.RobustPool("huber", alpha=0.5).alpha.dtype == torch.get_default_dtype()
    assert T.BallProjection(2, radius=2).radius.dtype == torch.get_default_dtype()
    assert T.RobustPool("huber", alpha=a).float().alpha.dtype == torch.float32


def test_alpha_and_radius_as_arrays_or_lists():
    """A numpy array or list of α / radii crashed in float() with an opaque TypeError ('only
    0-dimensional arrays can be converted'); now array-likes act as tensors, and a non-number
    (None, a string) is a DDNError naming the argument."""
    import numpy as np

    from ddn import DDNError
    x = torch.randn(2, 5, dtype=F64)
    for a in (np.array([0.5, 1.0]), [0.5, 1.0], [[0.5], [1.0]]):
        torch.testing.assert_close(T.robust_pool(x, "welsch", a),
                                   T.robust_pool(x, "welsch", torch.tensor([0.5, 1.0], dtype=F64)),
                                   rtol=0, atol=0)
        torch.testing.assert_close(T.project_ball(x, 1, a),
                                   T.project_ball(x, 1, torch.tensor([0.5, 1.0], dtype=F64)),
                                   rtol=0, atol=0)
    assert T.robust_pool(x, "huber", np.float64(0.5)).shape == (2,)
    for bad in (None, "1.0"):
        with pytest.raises(DDNError, match="alpha must be"):
            T.robust_pool(x, "huber", bad)
        with pytest.raises(DDNError, match="radius must be"):
            T.project_sphere(x, 2, bad)
