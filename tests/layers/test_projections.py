"""Lp sphere/ball and simplex projections on both floors: optimality, gradients vs finite
differences and closed forms, torch vs reference, vs the generic node, bad input, shapes, CUDA."""
import warnings

import numpy as np
import pytest
import torch

import ddn.reference as R
import ddn.torch as T
from ddn import DDNError, DDNWarning
from ddn.torch import _kernels

INF = float("inf")
PS = (1, 2, INF)
KINDS = ("sphere", "ball")
F64 = torch.float64


def ref_fn(kind):
    return R.project_sphere if kind == "sphere" else R.project_ball


def torch_fn(kind):
    return T.project_sphere if kind == "sphere" else T.project_ball


def node(kind, p, r, masked=True):
    return (R.SphereProjectionNode if kind == "sphere" else R.BallProjectionNode)(p, r, masked)


def sample(rng, n, scale):
    """A random vector of the given L2 size whose projections sit away from kinks (distinct
    magnitudes, no coordinate within 1e-3 of the p = 1 threshold or the p = ∞ face)."""
    while True:
        x = rng.standard_normal(n)
        x *= scale / np.linalg.norm(x)
        a = np.sort(np.abs(x))
        if np.diff(a).min() > 1e-3 and a[0] > 1e-3:
            return x


def margin_ok(x, y, p, r):
    if p == 1:
        tau = np.abs(x) - np.abs(y)
        t = tau[y != 0].mean() if (y != 0).any() else 0.0
        return np.abs(np.abs(x) - t).min() > 1e-3
    if p == INF:
        return np.abs(np.abs(x) - r).min() > 1e-3
    return True


# ----------------------------------------------------------------------------- reference floor
@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", [0.4, 3.0])
def test_reference_feasible_and_nearest(p, kind, scale):
    """Brute force: y lies on the sphere / in the ball and no sampled feasible point is nearer."""
    rng = np.random.default_rng(0)
    r = 1.3
    x = sample(rng, 5, scale)
    y = ref_fn(kind)(x, p, r)
    ny = np.linalg.norm(y, ord=p)
    if kind == "sphere":
        assert ny == pytest.approx(r, rel=1e-12)
    else:
        assert ny <= r * (1 + 1e-12)
    d = np.linalg.norm(y - x)
    # candidates: random directions scaled onto the sphere, and small perturbations of y rescaled
    cand = np.concatenate([rng.standard_normal((20000, 5)),
                           y + 1e-2 * rng.standard_normal((20000, 5))])
    norms = np.linalg.norm(cand, ord=p, axis=1, keepdims=True)
    if kind == "sphere":
        cand = cand * (r / norms)
    else:
        cand = cand * np.minimum(1.0, r / norms)
    assert np.linalg.norm(cand - x, axis=1).min() >= d - 1e-12


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", [0.4, 3.0])
def test_reference_jacobians_vs_finite_differences(p, kind, scale):
    rng = np.random.default_rng(1)
    r, e = 1.3, 1e-6
    x = sample(rng, 6, scale)
    f = ref_fn(kind)
    assert margin_ok(x, f(x, p, r), p, r)
    fd = np.stack([(f(x + e * u, p, r) - f(x - e * u, p, r)) / (2 * e) for u in np.eye(6)], 1)
    nd = node(kind, p, r, masked=True)
    np.testing.assert_allclose(nd.jacobian(x), fd, atol=1e-7)
    fr = (f(x, p, r + e) - f(x, p, r - e)) / (2 * e)
    np.testing.assert_allclose(nd.jacobian_radius(x), fr, atol=1e-7)
    v = rng.standard_normal(6)
    np.testing.assert_allclose(nd.vjp(x, v), v @ fd, atol=1e-7)


@pytest.mark.parametrize("p", [1, 2])
def test_reference_unmasked_is_generic_prop_4_5(p):
    """masked=False is exactly the generic Prop. 4.5 Jacobian of the same constrained problem."""
    rng = np.random.default_rng(2)
    x = sample(rng, 5, 3.0)
    nd = node("sphere", p, 1.3, masked=False)
    np.testing.assert_allclose(nd.jacobian(x), R.EqConstrainedNode.jacobian(nd, x), atol=1e-9)


def test_reference_nodes_pass_check_gradient():
    """ddn.check.check_gradient (generic machinery) accepts the closed-form nodes. Its smooth
    KKT residual only applies where the constraint is differentiable: for p = 1, ∞ we take
    x inside the ball (the sphere pushes every coordinate outward / one coordinate to the face;
    the ball is inactive), for p = 2 anywhere."""
    from ddn.check import check_gradient
    rng = np.random.default_rng(7)
    for p in PS:
        for kind in KINDS:
            rep = check_gradient(node(kind, p, 1.3), sample(rng, 5, 3.0 if p == 2 else 0.4))
            assert rep.ok, str(rep)
    for pen in R.PENALTIES:
        rep = check_gradient(R.RobustPoolNode(pen, 0.8), rng.standard_normal(7))
        assert rep.ok, str(rep)


def test_reference_unmasked_formulas_and_simplex():
    x = np.array([2.0, -0.1, 0.05, 1.5])
    y = R.project_ball(x, 1, 1.0)
    s = np.sign(y)
    assert (s == [1, 0, 0, 1]).all()
    np.testing.assert_allclose(node("ball", 1, 1.0, masked=False).jacobian(x),
                               np.eye(4) - np.outer(s, s) / 2)
    x = np.array([2.0, -3.0, 0.2])
    sT = np.array([1.0, -1.0, 0.0])
    np.testing.assert_allclose(node("sphere", INF, 1.0, masked=False).jacobian(x),
                               np.eye(3) - np.outer(sT, sT) / 2)
    np.testing.assert_allclose(node("sphere", INF, 1.0, masked=False).jacobian_radius(x), sT / 2)
    np.testing.assert_allclose(node("sphere", INF, 1.0).jacobian_radius(x), sT)
    x = np.array([0.3, 1.2, -0.4, 0.9])
    y = R.project_simplex(x, 1.0)
    assert y.sum() == pytest.approx(1.0) and (y >= 0).all()
    e = 1e-6
    fd = np.stack([(R.project_simplex(x + e * u) - R.project_simplex(x - e * u)) / (2 * e)
                   for u in np.eye(4)], 1)
    np.testing.assert_allclose(R.SimplexProjectionNode().jacobian(x), fd, atol=1e-7)


def test_reference_special_inputs():
    with pytest.warns(DDNWarning, match="not differentiable"):
        J = node("sphere", 2, 1.0).jacobian(np.zeros(4))
    assert np.all(J == 0)
    np.testing.assert_allclose(R.project_sphere(np.zeros(4), 2, 1.0), np.full(4, 0.5))
    np.testing.assert_allclose(R.project_sphere(np.zeros(4), 1, 1.0), np.full(4, 0.25))
    np.testing.assert_allclose(R.project_sphere(np.zeros(3), INF, 2.0), [2.0, 0, 0])
    with pytest.raises(DDNError, match="NaN or Inf"):
        R.project_ball(np.array([np.nan, 1.0]), 2)
    with pytest.raises(DDNError, match="p must be"):
        R.project_ball(np.ones(2), 3)
    with pytest.raises(DDNError, match="radius"):
        R.project_sphere(np.ones(2), 2, radius=0.0)


# ----------------------------------------------------------------------------- torch floor
def batch(rng, B=12, n=6):
    return torch.tensor(np.stack([sample(rng, n, s) for s in np.linspace(0.3, 4.0, B)]))


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("masked", [True, False])
def test_torch_matches_reference(p, kind, masked, backend):
    rng = np.random.default_rng(3)
    x = batch(rng)
    r = torch.tensor(1.3, dtype=F64, requires_grad=True)
    xg = x.clone().requires_grad_()
    y = torch_fn(kind)(xg, p, r, masked=masked)
    v = torch.randn_like(x)
    gx, gr = torch.autograd.grad((y * v).sum(), (xg, r))
    nd = node(kind, p, 1.3, masked)
    np.testing.assert_allclose(y.detach().numpy(), [ref_fn(kind)(a.numpy(), p, 1.3) for a in x],
                               atol=1e-12)
    np.testing.assert_allclose(gx.numpy(), [nd.vjp(a.numpy(), b.numpy()) for a, b in zip(x, v)],
                               atol=1e-10)
    gr_ref = sum(nd.jacobian_radius(a.numpy()) @ b.numpy() for a, b in zip(x, v))
    assert float(gr) == pytest.approx(gr_ref, abs=1e-10)


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("kind", KINDS)
def test_torch_gradcheck_masked(p, kind, backend):
    """masked=True (default) is the true derivative: gradcheck in x and in a per-row radius."""
    rng = np.random.default_rng(4)
    x = batch(rng, B=6).requires_grad_()
    r = torch.tensor([1.1, 1.2, 1.3, 1.4, 1.5, 1.6], dtype=F64, requires_grad=True)
    for a, rr in zip(x.detach(), r.detach()):
        assert margin_ok(a.numpy(), ref_fn(kind)(a.numpy(), p, float(rr)), p, float(rr))
    assert torch.autograd.gradcheck(lambda x, r: torch_fn(kind)(x, p, r), (x, r))


def test_torch_simplex(backend):
    rng = np.random.default_rng(5)
    x = batch(rng, B=5).requires_grad_()
    r = torch.tensor(1.7, dtype=F64, requires_grad=True)
    y = T.project_simplex(x, r)
    torch.testing.assert_close(y.sum(-1), torch.full((5,), 1.7, dtype=F64))
    np.testing.assert_allclose(y.detach().numpy(),
                               [R.project_simplex(a.numpy(), 1.7) for a in x.detach()], atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, r: T.project_simplex(x, r), (x, r))


def test_torch_vs_generic_declarative_node(backend):
    if not hasattr(T, "EqConstrainedNode"):
        pytest.skip("ddn.torch.EqConstrainedNode not available yet")

    class Sphere(T.EqConstrainedNode):
        def __init__(self, p):
            super().__init__(output_shape=6)
            self.p = p

        def objective(self, x, r, y):
            return 0.5 * ((y - x) ** 2).sum(-1)

        def equality_constraints(self, x, r, y):
            return torch.linalg.vector_norm(y, ord=self.p, dim=-1) - r

        def solve(self, x, r):
            return T.project_sphere(x.detach(), self.p, r.detach()), {}

    rng = np.random.default_rng(6)
    x = batch(rng, B=5).requires_grad_()
    r = torch.full((5,), 1.3, dtype=F64, requires_grad=True)
    v = torch.randn(5, 6, dtype=F64)
    # generic Prop. 4.5 = the unmasked form; for p = 1 its smooth KKT residual needs every y_i ≠ 0,
    # so x is taken inside the L1 ball there (the sphere pushes every coordinate outward)
    for p, masked, s in ((2, True, 1.0), (1, False, 0.1)):
        xs = (x * s).detach().requires_grad_()
        g1 = torch.autograd.grad((T.project_sphere(xs, p, r, masked=masked) * v).sum(), (xs, r))
        g2 = torch.autograd.grad((T.DeclarativeLayer(Sphere(p))(xs, r) * v).sum(), (xs, r))
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_any_dim_and_modules(dtype, backend):
    x = torch.randn(4, 5, 3, dtype=dtype)
    for p in PS:
        y = T.project_sphere(x, p, 2.0, dim=1)
        ref = T.project_sphere(x.transpose(1, 2), p, 2.0).transpose(1, 2)
        torch.testing.assert_close(y, ref)
        nrm = torch.linalg.vector_norm(y, ord=p, dim=1)
        torch.testing.assert_close(nrm, torch.full_like(nrm, 2.0))
    m = T.SphereProjection(1, radius=2.0, learn_radius=True).to(dtype)
    m(torch.randn(3, 8, dtype=dtype)).pow(2).sum().backward()
    assert m.log_radius.grad is not None and torch.isfinite(m.log_radius.grad)
    b = T.BallProjection(INF, radius=0.5)
    assert float(b(torch.randn(3, 8)).abs().max()) <= 0.5
    s = T.SimplexProjection(radius=1.0, dim=0)
    torch.testing.assert_close(s(torch.randn(5, 2)).sum(0), torch.ones(2))


def test_torch_special_and_bad_input(backend):
    x = torch.zeros(2, 4, dtype=F64, requires_grad=True)
    with pytest.warns(DDNWarning, match="x = 0"):
        y = T.project_sphere(x, 2, 1.0)
    torch.testing.assert_close(y, torch.full((2, 4), 0.5, dtype=F64))
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.all(g == 0)
    with pytest.warns(DDNWarning, match="x = 0"):  # non-unique for p = 1 and ∞ too
        y1 = T.project_sphere(torch.zeros(1, 4), 1, 1.0)
    torch.testing.assert_close(y1, torch.full((1, 4), 0.25))
    with pytest.warns(DDNWarning, match="x = 0"):
        yi = T.project_sphere(torch.zeros(1, 3), INF, 2.0)
    torch.testing.assert_close(yi, torch.tensor([[2.0, 0, 0]]))
    torch.testing.assert_close(T.project_ball(torch.zeros(1, 3), 2, 1.0), torch.zeros(1, 3))
    with pytest.raises(DDNError, match="NaN or Inf"):
        T.project_sphere(torch.tensor([[1.0, float("nan")]]), 2)
    with pytest.raises(DDNError, match="NaN or Inf"):
        T.project_ball(torch.tensor([[1.0, float("inf")]]), 1)
    with pytest.raises(DDNError, match="p must be"):
        T.project_ball(torch.ones(2, 2), 3)
    with pytest.raises(DDNError, match="radius"):
        T.project_ball(torch.ones(2, 2), 2, radius=-1.0)
    with pytest.raises(DDNError, match="empty"):
        T.project_ball(torch.ones(2, 0), 2)
    # |x| ≫ r keeps its accuracy for p = 1 and the simplex (threshold on shifted values), and
    # Σx² overflowing / underflowing float32 is rescaled for p = 2
    big = torch.tensor([[3e25, 4e25]])
    for p, want in ((1, [0.0, 1.0]), (2, [0.6, 0.8]), (INF, [1.0, 1.0])):
        torch.testing.assert_close(T.project_sphere(big, p, 1.0), torch.tensor([want]))
    tiny = torch.tensor([[3e-25, 4e-25]])  # Σx² underflows float32
    torch.testing.assert_close(T.project_sphere(tiny, 2, 1.0), torch.tensor([[0.6, 0.8]]))
    torch.testing.assert_close(T.project_simplex(big, 1.0), torch.tensor([[0.0, 1.0]]))
    np.testing.assert_allclose(R.project_ball(np.array([3e300, 4e300]), 1, 1.0), [0.0, 1.0])
    # the safety net: a result that misses the radius is counted (and warned about)
    from ddn.torch.projections import _count_lost
    yl, rl = torch.zeros(1, 2), torch.ones(1)
    assert _count_lost(yl, rl, torch.ones(1), 1, "ball") == 1
    assert _count_lost(yl, rl, torch.ones(1), 2, "simplex") == 1
    # size-1 dim: the sphere is {±r}
    torch.testing.assert_close(T.project_sphere(torch.tensor([[-0.2], [3.0]]), 1, 1.0),
                               torch.tensor([[-1.0], [1.0]]))


def test_two_threads_large_kernel_vs_eager(monkeypatch):
    """set_num_threads(2): the row-split kernel equals its single-thread result bit for bit and
    the eager oracle in float64 (audit: was float32 at 1e-4, which hid row-split errors)."""
    if _kernels.lib() is None:
        pytest.skip(f"compiled kernel unavailable: {_kernels._state['error']}")
    old = torch.get_num_threads()
    x = torch.randn(300, 1031, dtype=torch.float64) * torch.rand(300, 1, dtype=torch.float64) * 60
    assert x.numel() >= _kernels._PAR_MIN
    v = torch.randn_like(x)
    r = torch.rand(300, dtype=torch.float64) * 30 + 1
    try:
        for p in PS:
            for kind in ("sphere", "ball"):
                out = []
                for enabled, nt in ((True, 2), (True, 1), (False, 2)):
                    torch.set_num_threads(nt)
                    monkeypatch.setattr(_kernels, "ENABLED", enabled)
                    xg, rg = x.clone().requires_grad_(), r.clone().requires_grad_()
                    y = torch_fn(kind)(xg, p, rg)
                    out.append((y,) + torch.autograd.grad((y * v).sum(), (xg, rg)))
                for a, b in zip(out[0], out[1]):
                    assert torch.equal(a, b), (p, kind)
                for a, b in zip(out[0], out[2]):
                    torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-10)
    finally:
        torch.set_num_threads(old)


@pytest.mark.cuda
@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("kind", ["sphere", "ball", "simplex"])
def test_cuda_matches_cpu(p, kind):
    x = torch.randn(32, 17, dtype=F64) * 2
    v = torch.randn_like(x)
    outs = []
    for dev in ("cpu", "cuda"):
        xg = x.to(dev).requires_grad_()
        r = torch.tensor(1.3, dtype=F64, device=dev, requires_grad=True)
        y = T.project_simplex(xg, r) if kind == "simplex" else torch_fn(kind)(xg, p, r)
        g = torch.autograd.grad((y * v.to(dev)).sum(), (xg, r))
        outs.append([t.cpu() for t in (y, *g)])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16])
def test_half_precision_is_projected_in_float32(dt, backend):
    """Found by audit: bfloat16 p = 1 rows warned of lost accuracy (the threshold ran in bfloat16)."""
    x = (torch.randn(6, 40) * 3).to(dt)
    for p in (1, 2, INF):
        for fn in (T.project_sphere, T.project_ball):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                y = fn(x, p, 1.5)
            assert y.dtype == dt
            assert torch.equal(y, fn(x.float(), p, 1.5).to(dt))


def test_huge_finite_float32_is_not_reported_as_nan(backend):
    """Found by audit: the kernel took an overflowed Σx for NaN/Inf and raised 'x contains NaN or
    Inf' on finite float32 rows near 3e38 (the eager code projects them correctly)."""
    x = torch.tensor([[3e38, 3e38, -1.0, 3e38], [3e38, -3e38, 3e38, 2e38]])
    for p in (1, INF):
        for fn in (T.project_sphere, T.project_ball):
            y = fn(x, p, 1.0)
            assert torch.isfinite(y).all()
            norm = y.abs().sum(-1) if p == 1 else y.abs().amax(-1)
            torch.testing.assert_close(norm, torch.ones(2), atol=1e-6, rtol=0)
    ys = T.project_simplex(x[:1])
    torch.testing.assert_close(ys, torch.tensor([[1 / 3, 1 / 3, 0.0, 1 / 3]]))
    with pytest.raises(DDNError, match="NaN or Inf"):
        T.project_ball(torch.tensor([[3e38, 3e38, float("nan")]]), 1)


SPECIAL_ROWS = {
    "on the L2 sphere": [0.6, 0.8, 0.0], "on the L1 sphere": [0.5, -0.25, 0.25],
    "on the L∞ sphere, tied": [1.0, -0.5, -1.0], "inside, tied |x|": [0.5, -0.5, 0.2],
    "outside, tied |x|": [2.0, -2.0, 0.2], "L1 with many zeros": [0.0, 0.0, 3.0, 0.0, -1.0, 0.0],
    "inside with zeros": [0.0, 0.0, 0.3, 0.0, -0.1, 0.0], "inside": [0.1, -0.2, 0.05],
}


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("kind", ("sphere", "ball"))
def test_special_points_match_reference_values_and_vjps(p, kind, backend):
    """Audit sweep: inputs exactly on the sphere, inside the ball, ties in |x|, many zeros: the
    torch value and VJP (x and r) equal the reference's to rounding; masked derivatives vanish
    on pinned coordinates (y_i = 0 for p = 1, |y_i| = r for p = ∞)."""
    for name, row in SPECIAL_ROWS.items():
        x = torch.tensor([row], dtype=F64, requires_grad=True)
        r = torch.tensor([1.0], dtype=F64, requires_grad=True)
        v = torch.arange(1.0, len(row) + 1, dtype=F64)[None]
        y = torch_fn(kind)(x, p, r)
        gx, gr = torch.autograd.grad((y * v).sum(), (x, r))
        nd = node(kind, p, 1.0, True)
        np.testing.assert_allclose(y[0].detach().numpy(), ref_fn(kind)(np.array(row), p, 1.0),
                                   atol=1e-15, err_msg=name)
        np.testing.assert_allclose(gx[0].numpy(), nd.vjp(np.array(row), v[0].numpy()),
                                   atol=1e-14, err_msg=name)
        np.testing.assert_allclose(gr.numpy(), nd.jacobian_radius(np.array(row)) @ v[0].numpy(),
                                   atol=1e-14, err_msg=name)
        yd = y[0].detach()
        pinned = (yd == 0) if p == 1 else (yd.abs() == 1.0) if p == INF else None
        active = kind == "sphere" or float(torch.linalg.vector_norm(x.detach(), ord=p)) > 1
        if pinned is not None and active:
            assert torch.all(gx[0][pinned] == 0), name
