"""Second audit of the generic torch nodes: rank-deficient constraints in the default solver,
non-finite solutions and multipliers from a user solve, badly shaped ctx entries, MINRES on an
indefinite H."""
import warnings

import pytest
import torch

from ddn import DDNError, DDNWarning
from ddn.check import check_gradient
from ddn.torch import (DeclarativeLayer, DeclarativeNode, EqConstrainedNode, IneqConstrainedNode,
                       LinEqConstrainedNode)

F64 = torch.float64
A_FULL = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 0.0, 2.0]], dtype=F64)
B_FULL = torch.tensor([0.5, 0.2], dtype=F64)


class ExpOnPlanes(LinEqConstrainedNode):
    """min Σ exp(y) − xᵀy + 0.3 y₀y₁ s.t. A y = b (strictly convex: one solution)."""

    def __init__(self, A, b, **kw):
        super().__init__(4, **kw)
        self.A, self.b = A, b

    def objective(self, x, y):
        return (torch.exp(y) - x * y).sum(-1) + 0.3 * y[:, 0] * y[:, 1]

    def linear_constraints(self):
        return self.A, self.b


def _x():
    return torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("singular", [None, "pinv"])
def test_default_solver_on_a_repeated_linear_constraint_finds_the_solution(singular):
    """A third row 2·(first row), b consistent: the same feasible set, so the same y and Dy. The
    KKT matrix is singular; Newton-KKT's LU step gave multipliers ~1e15 whose terms swamped the
    convergence scale: an infeasible y (‖Ay − b‖ = 0.5) came back 'converged', and with the
    chosen remedy singular='pinv' its gradient was wrong by 0.5 without any warning."""
    x = _x()
    full = ExpOnPlanes(A_FULL, B_FULL)
    rep = ExpOnPlanes(torch.cat([A_FULL, 2 * A_FULL[:1]]), torch.cat([B_FULL, 2 * B_FULL[:1]]),
                      singular=singular)
    y1, _ = full._solve_detached((x,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if singular is None else "error", DDNWarning)
        y2, ctx = rep._solve_detached((x,))
        assert bool(ctx["converged"].all())
        assert (y2 @ A_FULL.T - B_FULL).abs().max() < 1e-12
        assert torch.allclose(y2, y1, atol=1e-10)
        assert ctx["multipliers"].abs().max() < 10
        if singular == "pinv":
            assert torch.allclose(rep.jacobian(x), full.jacobian(x), atol=1e-9)


def test_unroll_through_a_repeated_linear_constraint_is_a_clear_error():
    """The unrolled Newton-KKT cannot differentiate where the KKT matrix stays singular at the
    solution (its least-norm steps carry no graph): it returned a zero gradient silently."""
    x = _x().requires_grad_()
    rep = ExpOnPlanes(torch.cat([A_FULL, 2 * A_FULL[:1]]), torch.cat([B_FULL, 2 * B_FULL[:1]]),
                      linear_solver="unroll")
    with pytest.raises(DDNError, match="unroll.*singular.*singular='pinv'"):
        DeclarativeLayer(rep)(x).sum().backward()
    # a regular problem still unrolls, with the implicit gradient
    v = torch.randn(3, 4, dtype=F64)
    y = DeclarativeLayer(ExpOnPlanes(A_FULL, B_FULL, linear_solver="unroll"))(x)
    (gu,) = torch.autograd.grad(y, x, v)
    (gi,) = ExpOnPlanes(A_FULL, B_FULL).vjp(x.detach(), v=v)
    assert torch.allclose(gu, gi, atol=1e-9)


class Near(DeclarativeNode):
    """min ½‖y − x‖² + 0.1 Σ y⁴ (default solver), or a solve that returns a bad y / ctx."""

    def __init__(self, bad=None, **kw):
        super().__init__(3, **kw)
        self.bad = bad

    def objective(self, x, y):
        return 0.5 * ((y - x) ** 2).sum(-1) + 0.1 * (y ** 4).sum(-1)

    def solve(self, x):
        y, ctx = DeclarativeNode.solve(self, x)
        if self.bad == "nan":
            y = y.clone()
            y[1] = float("nan")
        elif self.bad == "trailing":
            y = y.unsqueeze(-1)
        elif self.bad == "short":
            y = y[:, :2]
        elif self.bad == "device":
            y = y.to("meta")
        elif self.bad == "dtype":
            y = y.float()
        elif self.bad == "converged":
            ctx = {"converged": torch.ones(y.shape[0] + 1, dtype=torch.bool)}
        return y, ctx


def test_a_non_finite_y_from_finite_inputs_is_named():
    """H = I + 1.2 diag(y²) does not see the NaN through B = −I: the gradient of the NaN element
    came back as finite numbers and nothing was said."""
    x = torch.randn(3, 3, dtype=F64, requires_grad=True)
    with pytest.warns(DDNWarning, match=r"non-finite y .* element\(s\) \[1\]"):
        DeclarativeLayer(Near("nan"))(x)
    with pytest.raises(DDNError, match="non-finite y"):
        Near("nan", on_degenerate="error")(x)


@pytest.mark.parametrize("bad, match", [("trailing", r"shape \(3, 3, 1\).*output_shape=\(3,\)"),
                                        ("short", r"shape \(3, 2\)"),
                                        ("device", "on meta for inputs on cpu"),
                                        ("dtype", "dtype torch.float32 for inputs of dtype torch.float64"),
                                        ("converged", r"ctx\['converged'\] must be \(batch,\)")])
def test_a_solve_returning_a_bad_y_or_ctx_is_a_clear_error(bad, match):
    """Were opaque RuntimeErrors from the objective or from broadcasting, some only in backward
    (a (b, 3, 1) y passed the forward and broke the backward)."""
    x = torch.randn(3, 3, dtype=F64, requires_grad=True)
    with pytest.raises(DDNError, match=match):
        DeclarativeLayer(Near(bad))(x).sum().backward()


class Sphere(EqConstrainedNode):
    """min ½‖y − x‖² s.t. ‖y‖² = 1, Σy = 0; the solve can spoil ctx['multipliers']."""

    def __init__(self, bad=None, **kw):
        super().__init__(3, **kw)
        self.bad = bad

    def objective(self, x, y):
        return 0.5 * ((y - x) ** 2).sum(-1)

    def equality_constraints(self, x, y):
        return torch.stack([(y * y).sum(-1) - 1, y.sum(-1)], -1)

    def initial_guess(self, x):
        u = x - x.mean(-1, keepdim=True)
        return u / u.norm(dim=-1, keepdim=True)

    def solve(self, x):
        y, ctx = EqConstrainedNode.solve(self, x)
        lam = ctx["multipliers"].clone()
        if self.bad == "nan":
            lam[2, 0] = float("nan")
        elif self.bad == "shape":
            lam = lam[:, 0]
        return y, dict(ctx, multipliers=lam)


def test_non_finite_multipliers_are_named_and_replaced_by_least_squares():
    """A NaN multiplier from the user's solve made that element's gradient NaN silently."""
    x = torch.randn(4, 3, dtype=F64)
    v = torch.randn(4, 3, dtype=F64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    DeclarativeLayer(Sphere())(x1).backward(v)
    with pytest.warns(DDNWarning, match=r"multipliers'\] is not finite.*element\(s\) \[2\]"):
        DeclarativeLayer(Sphere("nan"))(x2).backward(v)
    assert torch.allclose(x2.grad, x1.grad, atol=1e-10)


def test_multipliers_of_the_wrong_shape_are_a_clear_error():
    x = torch.randn(4, 3, dtype=F64, requires_grad=True)
    with pytest.raises(DDNError, match=r"ctx\['multipliers'\] must be \(batch, p \+ q\) = \(4, 2\)"):
        DeclarativeLayer(Sphere("shape"))(x).sum().backward()


class DoubleWell(DeclarativeNode):
    """f = (‖y‖² − 1)² − xᵀy; the solve returns the maximum y = 0 where x = 0."""

    def objective(self, x, y):
        return ((y * y).sum(-1) - 1) ** 2 - (x * y).sum(-1)

    def solve(self, x):
        y, ctx = DeclarativeNode.solve(self, x)
        return torch.where((x == 0).all(-1, keepdim=True), torch.zeros_like(y), y), ctx


class Wells(DeclarativeNode):
    """f = Σ_i (y_i² − 1)² − x_i y_i, one double well per coordinate: Dy = diag(1 / (12 y_i² − 4))."""

    def objective(self, x, y):
        return ((y * y - 1) ** 2 - x * y).sum(-1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_default_solver_leaves_a_maximum_at_its_zero_start(dtype):
    """Where x_i = 0 (say after a ReLU) the start y0 = 0 is stationary, a maximum of that well:
    Newton's step −H⁻¹∇f is 0, so the default solver returned it as 'converged' and only the
    backward said 'indefinite'. Now it leaves along the negative curvature: a minimum y_i = ±1."""
    x = torch.tensor([[0.0, 0.3, 0.0], [0.5, -0.2, 1.0], [0.0, 0.0, 0.0]], dtype=dtype)
    xr = x.clone().requires_grad_()
    v = torch.randn(3, 3, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DDNWarning)
        y = DeclarativeLayer(Wells(3))(xr)
        y.backward(v)
    y = y.detach()
    tol = 1e-8 if dtype == torch.float64 else 1e-3  # the solver stops at ‖∇f‖ ≤ tol · s, s ≈ 16
    assert (4 * y * (y * y - 1) - x).abs().max() < tol  # stationary
    assert (12 * y * y - 4).min() > 0  # and a minimum in every coordinate
    assert (y[x == 0].abs() - 1).abs().max() < tol
    assert torch.allclose(xr.grad, v / (12 * y * y - 4), atol=10 * tol)


@pytest.mark.parametrize("solver", ["dense", "cg", "minres"])
def test_an_indefinite_hessian_is_named_by_every_linear_solver(solver):
    """dense and cg named H = −4I at y = 0; MINRES (linear_solver='minres') said nothing."""
    x = torch.zeros(2, 3, dtype=F64)
    x[1, 0] = 0.5
    xr = x.clone().requires_grad_()
    node = DoubleWell(3, linear_solver=solver)
    with pytest.warns(DDNWarning, match=r"(indefinite|not positive definite).*element\(s\) \[0\]"):
        DeclarativeLayer(node)(xr).sum().backward()


def test_minres_on_a_positive_definite_hessian_says_nothing():
    x = torch.randn(6, 3, dtype=F64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DDNWarning)
        DeclarativeLayer(Near(linear_solver="minres"))(x).sum().backward()
        DeclarativeLayer(DoubleWell(3, linear_solver="minres"))(x + 3).sum().backward()


class Box(IneqConstrainedNode):
    """min ½‖y − x‖² s.t. −1 ≤ y ≤ u (u an input): y = min(max(x, −1), u)."""

    def objective(self, x, u, y):
        return 0.5 * ((y - x) ** 2).sum(-1)

    def inequality_constraints(self, x, u, y):
        return torch.cat([y - u, -1 - y], -1)

    def solve(self, x, u):
        return torch.minimum(torch.clamp(x, min=-1), u), {}


class BallR(IneqConstrainedNode):
    """min ½‖y − x‖² s.t. ‖y‖² ≤ r²: a curved constraint, weakly active when ‖x‖ = r."""

    def objective(self, x, r, y):
        return 0.5 * ((y - x) ** 2).sum(-1)

    def inequality_constraints(self, x, r, y):
        return (y * y).sum(-1) - r[:, 0] ** 2

    def solve(self, x, r):
        n = x.norm(dim=-1, keepdim=True)
        return torch.where(n > r, r * x / n, x), {}


def test_check_gradient_on_weakly_active_constraints_compares_entry_by_entry():
    """x₂ = u₂: the one-sided (active) gradient has ∂y/∂x = 0 (a forward difference) and
    ∂y/∂u = 1 (a backward one). check_gradient picked one side for the whole Jacobian and
    reported a correct gradient as FAILED (rel err 0.5); its first-order one-sided differences
    also failed a curved constraint (the ball with ‖x‖ = r) at rtol 1e-6."""
    x = torch.tensor([[0.3, -2.0, 1.0, 0.1], [2.0, 0.0, -0.5, -3.0]], dtype=F64)
    u = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5]], dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DDNWarning)
        rep = check_gradient(Box(), x, u)
    assert rep.ok, str(rep)
    assert rep.weakly_active == [(0, 2)] and rep.details["fd_side"] == "mixed"
    assert sum("weakly active inequality" in m for m in rep.messages) == 1  # once, not thrice
    xb = torch.tensor([[0.6, 0.8, 0.0], [0.3, -0.2, 0.1]], dtype=F64)
    r = torch.ones(2, 1, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DDNWarning)
        rep = check_gradient(BallR(), xb, r)
    assert rep.ok and rep.weakly_active == [(0, 0)], str(rep)
    # a wrong gradient still fails: drop the constraint's correction
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DDNWarning)
        bad = check_gradient(BallR(), xb, r, y=xb.clone(), ctx={"active": torch.zeros(2, 1)})
    assert not bad.ok


class LinearOnBall(IneqConstrainedNode):
    """min −xᵀy s.t. ‖y‖² ≤ 1: y = x/‖x‖, Dy = (I − yyᵀ)/‖x‖ (a linear objective: D²f = 0)."""

    def objective(self, x, y):
        return -(x * y).sum(-1)

    def inequality_constraints(self, x, y):
        return (y * y).sum(-1) - 1


@pytest.mark.parametrize("solver", ["dense", "cg", "minres"])
def test_linear_objective_with_the_default_inequality_solver(solver):
    """The augmented Lagrangian took the Hessian of f, whose gradient −x does not depend on y: for
    an input that does not require grad (inference, vjp, jacobian) 'element 0 of tensors does not
    require grad' (a RuntimeError) on this textbook problem."""
    x = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    xr = x.clone().requires_grad_()
    v = torch.randn(5, 3, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DDNWarning)
        y0 = DeclarativeLayer(LinearOnBall(3, linear_solver=solver))(x)  # inference
        (g0,) = LinearOnBall(3, linear_solver=solver).vjp(x, v=v)
        y = DeclarativeLayer(LinearOnBall(3, linear_solver=solver))(xr)
        y.backward(v)
    n = x.norm(dim=-1, keepdim=True)
    yc = x / n
    assert torch.allclose(y.detach(), yc, atol=1e-9)
    assert torch.allclose(xr.grad, (v - yc * (yc * v).sum(-1, keepdim=True)) / n, atol=1e-7)
    assert torch.allclose(y0, yc, atol=1e-9) and torch.allclose(g0, xr.grad, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_vjp_jacobian_and_diagnose_accept_half_precision_like_the_layer(dtype):
    """The layer solves float16/bfloat16 in float32; node.vjp / jacobian / diagnose crashed with
    '\"cholesky_cpu\" not implemented for 'Half''."""
    x = torch.randn(3, 3, dtype=F64, generator=torch.Generator().manual_seed(5))
    v = torch.randn(3, 3, dtype=F64, generator=torch.Generator().manual_seed(6))
    node = Near()
    J64 = node.jacobian(x)
    (g64,) = node.vjp(x, v=v)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DDNWarning)
        J = node.jacobian(x.to(dtype))
        (g,) = node.vjp(x.to(dtype), v=v.to(dtype))
        d = node.diagnose(x.to(dtype))
    assert J.dtype == dtype and g.dtype == dtype
    tol = 2e-2 if dtype == torch.float16 else 1e-1
    assert torch.allclose(J.double(), J64, atol=tol) and torch.allclose(g.double(), g64, atol=tol)
    assert d["residual"].max() < 1e-3


class FirstThree(DeclarativeNode):
    """min ½‖y − x[:, :3]‖²: a solve that returns the view x[:, :3]."""

    def objective(self, x, y):
        return 0.5 * ((y - x[:, :3]) ** 2).sum(-1)

    def solve(self, x):
        return x[:, :3], {}


def test_a_y_that_is_a_view_of_the_input_does_not_alias_it():
    """Only y is x was copied: a view x[:, :3] came back sharing x's memory, so y.mul_(2) silently
    doubled part of the input."""
    for req in (False, True):
        x = torch.randn(2, 4, dtype=F64, requires_grad=req)
        x0 = x.detach().clone()
        y = DeclarativeLayer(FirstThree())(x)
        with torch.no_grad():
            y.mul_(2)
        assert torch.equal(x.detach(), x0)
    x = torch.randn(2, 4, dtype=F64, requires_grad=True)
    (DeclarativeLayer(FirstThree())(x) * torch.arange(3.0, dtype=F64)).sum().backward()
    assert torch.equal(x.grad, torch.tensor([[0.0, 1, 2, 0]] * 2, dtype=F64))


def test_check_gradient_options_a_torch_node_does_not_take_are_named():
    """directions=k (a reference-floor option) and a misspelt option were TypeErrors from the
    hand-off to check_gradient_torch."""
    x = torch.randn(2, 3, dtype=F64)
    with pytest.raises(DDNError, match="directions"):
        check_gradient(Near(), x, directions=2)
    with pytest.raises(DDNError, match=r"unknown options \['rtl'\]"):
        check_gradient(Near(), x, rtl=1e-3)
    assert check_gradient(Near(), x, linear_solver="cg").ok


class SmallQuartic(DeclarativeNode):
    """f = c·(½‖y − x‖² + 0.1 Σ y⁴): the same minimiser for every c > 0."""

    def __init__(self, c, **kw):
        super().__init__(3, **kw)
        self.c = c

    def objective(self, x, y):
        return self.c * (0.5 * ((y - x) ** 2).sum(-1) + 0.1 * (y ** 4).sum(-1))


class SmallBall(IneqConstrainedNode):
    """The same objective s.t. ‖y‖² ≤ 1 (its multiplier scales with c)."""

    def __init__(self, c, **kw):
        super().__init__(3, **kw)
        self.c = c

    objective = SmallQuartic.objective

    def inequality_constraints(self, x, y):
        return (y * y).sum(-1) - 1


@pytest.mark.parametrize("c", [1e-4, 1e-6])
def test_an_objective_scaled_down_is_solved_as_accurately(c):
    """The convergence scale s = max(1, ‖H(1 + |y|)‖) made the test absolute for small objectives:
    in float32 (tol 1e-5) f·1e-6 stopped at its initial guess y = 0 as 'converged' (y wrong by
    1.8) and f·1e-4 was wrong by 0.04, silently; the active ball constraint's multiplier (~c)
    was called 'weakly active' (an absolute threshold too)."""
    x = torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(2)) * 1.2
    y_ref, _ = SmallQuartic(1.0)._solve_detached((x,))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DDNWarning)
        y32, ctx = SmallQuartic(c)._solve_detached((x.float(),))
        assert bool(ctx["converged"].all())
        assert (y32.double() - y_ref).abs().max() < 1e-4
        # float64 with a constraint: the multiplier checks are relative to ‖∇f‖ too
        yb_ref, _ = SmallBall(1.0)._solve_detached((x,))
        yb, _ = SmallBall(c)._solve_detached((x,))
        assert (yb - yb_ref).abs().max() < 1e-9
        xr = x.clone().requires_grad_()
        DeclarativeLayer(SmallBall(c))(xr).sum().backward()
        assert torch.allclose(xr.grad, SmallBall(1.0).jacobian(x).sum(1), atol=1e-7)
