"""Generic torch nodes: one table of problems × linear solver, checked against finite differences
(gradcheck, float64), ddn.reference (the same problem in numpy/autograd, 1e-8), closed forms where
they exist, and implicit versus unrolled differentiation."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ddn
from ddn.torch import (DeclarativeLayer, DeclarativeNode, EqConstrainedNode, IneqConstrainedNode,
                       LinEqConstrainedNode, implicit_vjp)

# The reference twins are imported unconditionally: a broken ddn.reference must fail here, not
# skip the cross-floor comparison.
import autograd.numpy as anp
import ddn.reference as ref

D = torch.float64
SOLVERS = ["dense", "cg", "unroll"]


# ---------------------------------------------------------------------------------------------
# The problems (torch node, reference twin, inputs, closed form)
# ---------------------------------------------------------------------------------------------
M_COUPLE = torch.tensor([[1.0, 0.3, 0.0, -0.2], [0.0, 1.0, 0.5, 0.0], [0.2, 0.0, 1.0, 0.4],
                         [0.0, -0.3, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]], dtype=D)  # (n=5, m=4)


class Smooth(DeclarativeNode):
    """Unconstrained, two inputs: f(x, s, y) = ½‖y‖² + s Σ softplus(y) + 0.1 Σ y⁴ − xᵀ M y."""

    def objective(self, x, s, y):
        M = M_COUPLE.to(y)
        return (0.5 * (y * y).sum(-1) + s[:, 0] * F.softplus(y).sum(-1) + 0.1 * (y ** 4).sum(-1)
                - ((x @ M) * y).sum(-1))


class Sphere2(EqConstrainedNode):
    """Two equality constraints, one moving with x: ‖y‖² = 1 and Σy = 0.3 x₀;
    f = ½‖y − x‖² + 0.1 Σ y⁴."""

    def objective(self, x, y):
        return 0.5 * ((y - x) ** 2).sum(-1) + 0.1 * (y ** 4).sum(-1)

    def equality_constraints(self, x, y):
        return torch.stack([(y * y).sum(-1) - 1, y.sum(-1) - 0.3 * x[:, 0]], -1)

    def initial_guess(self, x):
        return x / x.norm(dim=-1, keepdim=True)


A_PLANE = torch.tensor([1.0, -1.0, 0.5], dtype=D)


def _plane_ball(x, r):
    a = A_PLANE.to(x)
    px = x - (x @ a).unsqueeze(-1) * a / (a @ a)
    nrm = px.norm(dim=-1, keepdim=True)
    return torch.where(nrm <= r, px, r * px / nrm)


class PlaneBall(IneqConstrainedNode):
    """Mixed: projection of x onto {aᵀy = 0} ∩ {‖y‖² ≤ r²} (r an input); closed-form solve.
    Active (‖Px‖ > r) and inactive elements share the batch; D²g ≠ 0 and D_X g ≠ 0."""

    def objective(self, x, r, y):
        return 0.5 * ((y - x) ** 2).sum(-1)

    def equality_constraints(self, x, r, y):
        return y @ A_PLANE.to(y)

    def inequality_constraints(self, x, r, y):
        return (y * y).sum(-1) - r[:, 0] ** 2

    def solve(self, x, r):
        return _plane_ball(x, r), {}

    def initial_guess(self, x, r):
        return torch.zeros_like(x)


def _simplex(x):
    u, _ = torch.sort(x, dim=-1, descending=True)
    css = u.cumsum(-1) - 1
    k = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype, device=x.device)
    rho = ((u - css / k) > 0).sum(-1, keepdim=True)
    tau = css.gather(-1, rho - 1) / rho
    return torch.clamp(x - tau, min=0)


class Simplex(IneqConstrainedNode):
    """Projection onto the probability simplex: Σy = 1, −y ≤ 0 (q = m inequalities)."""

    def objective(self, x, y):
        return 0.5 * ((y - x) ** 2).sum(-1)

    def equality_constraints(self, x, y):
        return y.sum(-1) - 1

    def inequality_constraints(self, x, y):
        return -y

    def solve(self, x):
        return _simplex(x), {}


A_LIN = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 2.0, 0.0, -0.5]], dtype=D)
B_LIN = torch.tensor([1.0, 0.5], dtype=D)


class ExpLinear(LinEqConstrainedNode):
    """f = Σ (exp(y_i) − x_i y_i) + ¼‖y‖², A y = b (fixed A, p = 2, m = 5)."""

    def objective(self, x, y):
        return (torch.exp(y) - x * y).sum(-1) + 0.25 * (y * y).sum(-1)

    def linear_constraints(self):
        return A_LIN, B_LIN


class RefSmooth(ref.DeclarativeNode):
    def objective(self, xs, y):
        x, s = xs[:5], xs[5]
        M = M_COUPLE.numpy()
        return (0.5 * anp.sum(y * y) + s * anp.sum(anp.logaddexp(0.0, y)) + 0.1 * anp.sum(y ** 4)
                - anp.dot(anp.dot(x, M), y))


class RefSphere2(ref.EqConstrainedNode):
    def objective(self, x, y):
        return 0.5 * anp.sum((y - x) ** 2) + 0.1 * anp.sum(y ** 4)

    def equality_constraints(self, x, y):
        return anp.array([anp.sum(y * y) - 1, anp.sum(y) - 0.3 * x[0]])


class RefPlaneBall(ref.IneqConstrainedNode):
    def objective(self, xs, y):
        return 0.5 * anp.sum((y - xs[:3]) ** 2)

    def equality_constraints(self, xs, y):
        return anp.dot(y, A_PLANE.numpy())

    def inequality_constraints(self, xs, y):
        return anp.sum(y * y) - xs[3] ** 2


class RefSimplex(ref.IneqConstrainedNode):
    def objective(self, x, y):
        return 0.5 * anp.sum((y - x) ** 2)

    def equality_constraints(self, x, y):
        return anp.sum(y) - 1

    def inequality_constraints(self, x, y):
        return -y


class RefExpLinear(ref.LinEqConstrainedNode):
    def objective(self, x, y):
        return anp.sum(anp.exp(y) - x * y) + 0.25 * anp.sum(y * y)

    def linear_constraints(self):
        return A_LIN.numpy(), B_LIN.numpy()


def _inputs(name, b=5):
    g = torch.Generator().manual_seed(1)
    if name == "unconstrained":
        return (torch.randn(b, 5, generator=g, dtype=D), torch.rand(b, 1, generator=g, dtype=D) + 0.5)
    if name == "equality":
        return (torch.randn(b, 4, generator=g, dtype=D),)
    if name == "mixed":
        x = torch.randn(b, 3, generator=g, dtype=D) * 1.5
        nrm = _plane_ball(x, torch.full((b, 1), 1e9, dtype=D)).norm(dim=-1, keepdim=True)
        # alternate clearly active (r = 0.6‖Px‖) and clearly inactive (r = 1.5‖Px‖) elements
        factor = torch.tensor([0.6, 1.5] * b, dtype=D)[:b, None]
        return (x, nrm * factor)
    if name == "simplex":
        return (torch.tensor([[0.9, 0.5, -0.2, 0.1], [0.2, 0.3, 0.25, 0.1], [2.0, -1.0, 0.4, 0.3],
                              [0.1, 0.02, 0.6, 0.45], [-0.3, 0.8, 0.7, -0.1]], dtype=D)[:b],)
    if name == "lineq":
        return (torch.randn(b, 5, generator=g, dtype=D),)
    raise KeyError(name)


PROBLEMS = {
    # name: (torch node factory, reference twin factory (n, m), m)
    "unconstrained": (lambda **kw: Smooth(4, **kw), lambda: RefSmooth(6, 4), 4),
    "equality": (lambda **kw: Sphere2(**kw), lambda: RefSphere2(4, 4), 4),
    "mixed": (lambda **kw: PlaneBall(**kw), lambda: RefPlaneBall(4, 3), 3),
    "simplex": (lambda **kw: Simplex(**kw), lambda: RefSimplex(4, 4), 4),
    "lineq": (lambda **kw: ExpLinear(5, **kw), lambda: RefExpLinear(5, 5), 5),
}


def _requiring(xs):
    return tuple(x.clone().requires_grad_(True) for x in xs)


# ---------------------------------------------------------------------------------------------
# Finite differences (gradcheck, float64)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_gradcheck(name, solver):
    layer = DeclarativeLayer(PROBLEMS[name][0](linear_solver=solver))
    xs = _requiring(_inputs(name))
    assert torch.autograd.gradcheck(lambda *a: layer(*a), xs, eps=1e-6, atol=1e-7, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Agreement with ddn.reference (1e-8) on the same y
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_matches_reference(name):
    make, make_ref, m = PROBLEMS[name]
    node, rnode = make(), make_ref()
    xs = _inputs(name)
    y, ctx = node._solve_checked(xs)
    J = node.jacobian(*xs, y=y, ctx=ctx)
    J = torch.cat(J, -1) if isinstance(J, tuple) else J
    xcat = torch.cat([x.reshape(x.shape[0], -1) for x in xs], -1)
    for e in range(y.shape[0]):
        # the same y for both floors: the reference checks optimality there and differentiates
        Jr = rnode.jacobian(xcat[e].numpy(), y=y[e].numpy())
        np.testing.assert_allclose(J[e].numpy(), Jr, atol=1e-8, rtol=1e-8)
    # and the reference's own solver finds the same y
    for e in range(y.shape[0]):
        yr, _ = rnode.solve(xcat[e].numpy()) if name != "equality" else (None, None)
        if yr is not None:
            np.testing.assert_allclose(y[e].numpy(), yr, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Closed forms
# ---------------------------------------------------------------------------------------------
def test_plane_ball_closed_form():
    x, r = _inputs("mixed", b=6)
    node = PlaneBall()
    Jx, Jr = node.jacobian(x, r)
    a = A_PLANE / A_PLANE.norm()
    P = torch.eye(3, dtype=D) - torch.outer(a, a)
    for e in range(6):
        px = P @ x[e]
        nrm = px.norm()
        if nrm <= r[e, 0]:
            Jx_cf, Jr_cf = P, torch.zeros(3, 1, dtype=D)
        else:
            u = px / nrm
            Jx_cf = (r[e, 0] / nrm) * (torch.eye(3, dtype=D) - torch.outer(u, u)) @ P
            Jr_cf = u[:, None]
        torch.testing.assert_close(Jx[e], Jx_cf, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(Jr[e], Jr_cf, atol=1e-10, rtol=1e-10)


def test_simplex_closed_form():
    (x,) = _inputs("simplex")
    J = Simplex().jacobian(x)
    y = _simplex(x)
    for e in range(x.shape[0]):
        s = (y[e] > 0).to(D)
        J_cf = torch.diag(s) - torch.outer(s, s) / s.sum()
        torch.testing.assert_close(J[e], J_cf, atol=1e-10, rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# Implicit versus unrolled, solvers against each other
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_implicit_matches_unrolled_and_cg(name):
    make = PROBLEMS[name][0]
    xs = _inputs(name)
    v = torch.randn(xs[0].shape[0], PROBLEMS[name][2], dtype=D)
    grads = {}
    for solver in SOLVERS:
        a = _requiring(xs)
        y = DeclarativeLayer(make(linear_solver=solver))(*a)
        grads[solver] = torch.autograd.grad((y * v).sum(), a)
    for solver in ("cg", "unroll"):
        for g0, g1 in zip(grads["dense"], grads[solver]):
            torch.testing.assert_close(g1, g0, atol=1e-8, rtol=1e-7)


def test_default_inequality_solver_matches_closed_form():
    x, r = _inputs("mixed", b=6)
    y, ctx = PlaneBall.__mro__[1].solve(PlaneBall(), x, r)  # the default augmented Lagrangian
    torch.testing.assert_close(y, _plane_ball(x, r), atol=1e-8, rtol=1e-8)
    assert ctx["converged"].all()
    (xs,) = _inputs("simplex")
    y, ctx = IneqConstrainedNode.solve(Simplex(output_shape=4), xs)
    torch.testing.assert_close(y, _simplex(xs), atol=1e-8, rtol=1e-8)


def test_implicit_vjp_alone_matches_closed_form():
    """The public step on its own: f = ½‖y‖² − (x ∘ w)ᵀy has y = x ∘ w, Dy_x = diag(w)."""
    x = torch.randn(3, 4, dtype=D)
    w = torch.rand(3, 4, dtype=D)

    def f(x, w, y):
        return 0.5 * (y * y).sum(-1) - (x * w * y).sum(-1)

    v = torch.randn(3, 4, dtype=D)
    for solver in ("dense", "cg", "minres"):
        (gx, gw), info = implicit_vjp(f, (x.requires_grad_(), w), x * w, v, linear_solver=solver)
        torch.testing.assert_close(gx, v * w)
        assert gw is None
        assert (info["residual"] < 1e-12).all()


# ---------------------------------------------------------------------------------------------
# dtype, device, threads, inputs without grad, double backward
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["unconstrained", "equality", "mixed", "lineq"])
@pytest.mark.parametrize("solver", ["dense", "cg"])
def test_float32_sanity(name, solver):
    make = PROBLEMS[name][0]
    xs64 = _inputs(name)
    v = torch.randn(xs64[0].shape[0], PROBLEMS[name][2], dtype=D)
    out = {}
    for dt in (torch.float32, torch.float64):
        a = tuple(x.to(dt).requires_grad_() for x in xs64)
        y = DeclarativeLayer(make(linear_solver=solver))(*a)
        assert y.dtype == dt
        out[dt] = [g.double() for g in torch.autograd.grad((y * v.to(dt)).sum(), a)]
        assert all(g.dtype == torch.float64 for g in out[dt])
    for g32, g64 in zip(out[torch.float32], out[torch.float64]):
        torch.testing.assert_close(g32, g64, atol=2e-3, rtol=2e-3)


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(PROBLEMS))
@pytest.mark.parametrize("solver", ["dense", "cg"])
def test_cuda_matches_cpu(name, solver):
    dev = torch.device("cuda")
    make = PROBLEMS[name][0]
    xs = _inputs(name)
    v = torch.randn(xs[0].shape[0], PROBLEMS[name][2], dtype=D)
    res = {}
    for d in ("cpu", dev):
        a = tuple(x.to(d).requires_grad_() for x in xs)
        y = DeclarativeLayer(make(linear_solver=solver))(*a)
        assert y.device.type == torch.device(d).type
        res[str(d)] = [g.cpu() for g in torch.autograd.grad((y * v.to(d)).sum(), a)]
    for gc, gg in zip(res["cpu"], res[str(dev)]):
        torch.testing.assert_close(gg, gc, atol=1e-8, rtol=1e-7)


def test_two_threads_batched_kkt():
    """The batched-LU trap (torch.set_num_threads(2)): KKT solves must stay right."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(64, 3, dtype=D) * 2
        r = torch.full((64, 1), 0.5, dtype=D)
        xr = x.clone().requires_grad_()
        y = DeclarativeLayer(PlaneBall())(xr, r)
        v = torch.randn(64, 3, dtype=D)
        (gx,) = torch.autograd.grad((y * v).sum(), xr)
        yc = _plane_ball(xr, r)  # closed form, differentiated by autograd
        (gx_cf,) = torch.autograd.grad((yc * v).sum(), xr)
        torch.testing.assert_close(gx, gx_cf, atol=1e-10, rtol=1e-10)
        xs = torch.randn(48, 5, dtype=D, requires_grad=True)
        y = DeclarativeLayer(ExpLinear(5))(xs)
        (g1,) = torch.autograd.grad((y * v[:48, :1]).sum(), xs)
        y2 = DeclarativeLayer(ExpLinear(5, linear_solver="unroll"))(xs)
        (g2,) = torch.autograd.grad((y2 * v[:48, :1]).sum(), xs)
        torch.testing.assert_close(g1, g2, atol=1e-8, rtol=1e-7)
    finally:
        torch.set_num_threads(old)


def test_inputs_without_grad_get_none():
    x, s = _inputs("unconstrained")
    x = x.clone().requires_grad_()
    layer = DeclarativeLayer(Smooth(4))
    assert not s.requires_grad
    y = layer(x, s)
    y.sum().backward()
    gx = x.grad
    assert gx is not None and s.grad is None
    # the node's own vjp returns every input's gradient
    gx2, gs2 = Smooth(4).vjp(x.detach(), s, v=torch.ones(5, 4, dtype=D))
    torch.testing.assert_close(gx2, gx)
    assert gs2.shape == s.shape


@pytest.mark.parametrize("name,solver", [("unconstrained", "dense"), ("equality", "dense"),
                                         ("mixed", "dense"), ("unconstrained", "cg"),
                                         ("equality", "cg")])
def test_double_backward(name, solver):
    """The backward is written in torch ops (multipliers recomputed by least squares inside the
    graph), so second derivatives are right for dense, cg and MINRES."""
    layer = DeclarativeLayer(PROBLEMS[name][0](linear_solver=solver))
    xs = _requiring(_inputs(name, b=3))
    assert torch.autograd.gradgradcheck(lambda *a: layer(*a), xs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_output_with_trailing_shape_and_module_behaviour():
    class Mat(DeclarativeNode):
        def objective(self, x, y):  # y (b, 2, 2): f = ½‖y − x‖² + ¼Σy⁴, separable
            return (0.5 * (y - x) ** 2 + 0.25 * y ** 4).sum((-1, -2))

    x = torch.randn(3, 2, 2, dtype=D, requires_grad=True)
    layer = DeclarativeLayer(Mat((2, 2)))
    assert "Mat" in repr(layer)
    y = layer(x)
    assert y.shape == (3, 2, 2)
    torch.testing.assert_close(y - x + y ** 3, torch.zeros_like(y), atol=1e-9, rtol=0)
    (gx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(gx, 1 / (1 + 3 * y.detach() ** 2))  # Dy = 1/(1 + 3y²)


class ModuleNode(DeclarativeNode, torch.nn.Module):
    """y³ + θ ⊙ y = x (f = Σ ¼y⁴ + ½θy² − xy) with θ an nn.Parameter of the node."""

    def __init__(self, **kw):
        torch.nn.Module.__init__(self)
        DeclarativeNode.__init__(self, 3, **kw)
        self.theta = torch.nn.Parameter(torch.tensor([0.5, 1.0, 2.0], dtype=D))

    def objective(self, x, y):
        return (0.25 * y ** 4 + 0.5 * self.theta * y ** 2 - x * y).sum(-1)


@pytest.mark.parametrize("solver", ["dense", "cg"])
def test_module_parameters_get_gradients(solver):
    node = ModuleNode(linear_solver=solver)
    layer = DeclarativeLayer(node)
    assert [n for n, _ in layer.named_parameters()] == ["node.theta"]
    x = torch.randn(4, 3, dtype=D, requires_grad=True)
    v = torch.randn(4, 3, dtype=D)
    y = layer(x)
    (y * v).sum().backward()
    yd, th = y.detach(), node.theta.detach()
    denom = 3 * yd ** 2 + th  # y³ + θy = x ⇒ dy/dx = 1/(3y² + θ), dy/dθ = −y/(3y² + θ)
    torch.testing.assert_close(x.grad, v / denom)
    torch.testing.assert_close(node.theta.grad, (-v * yd / denom).sum(0))


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_check_gradient_passes_on_the_table(name):
    """ddn.check.check_gradient dispatches to the torch floor: implicit Dy vs central differences,
    cg's vjp vs vᵀDy, residual, active constraints."""
    import ddn.check
    rep = ddn.check.check_gradient(PROBLEMS[name][0](linear_solver="cg"), *_inputs(name))
    assert rep.ok, str(rep)
    assert rep.max_rel_error < 1e-6 and rep.residual < 1e-10
    if name in ("equality", "lineq"):
        assert rep.n_active == rep.active_rank == 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_in_float32(dtype):
    x, s = _inputs("unconstrained")
    a = (x.to(dtype).requires_grad_(), s.to(dtype))
    y = DeclarativeLayer(Smooth(4))(*a)
    assert y.dtype == dtype
    (y.float() ** 2).sum().backward()
    a64 = x.clone().requires_grad_()
    y64 = DeclarativeLayer(Smooth(4))(a64, s)
    (y64 ** 2).sum().backward()
    assert a[0].grad.dtype == dtype
    torch.testing.assert_close(a[0].grad.double(), a64.grad, atol=5e-2, rtol=5e-2)
