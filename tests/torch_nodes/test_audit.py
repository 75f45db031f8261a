"""Regression tests from the adversarial audit of the generic torch nodes: problems outside the
main table (several inputs of different shapes, y with trailing dims, constraints that depend on
x, per-element active sets with the default solver, batch size 1), bad input that must be a
DDNError, and the batched-LU trap simulated deterministically."""
import numpy as np
import pytest
import torch

import ddn
from ddn import DDNError
from ddn.torch import (DeclarativeLayer, DeclarativeNode, EqConstrainedNode, IneqConstrainedNode)
from ddn.torch import _linalg

D = torch.float64


class TwoShapes(DeclarativeNode):
    """x (b, 2, 3), w (b, 4) -> y (b, 2, 3); couples rows of y and scales by w (no symmetry)."""

    def objective(self, x, w, y):
        s = w.sum(-1)[:, None, None]
        a = 1 + w[:, :1, None] ** 2
        return (0.5 * a * y ** 2 - s * x * y + 0.1 * y ** 4).flatten(1).sum(-1) \
            + 0.3 * (y[:, 0] * y[:, 1]).sum(-1)


def test_several_inputs_of_different_shapes_and_trailing_y_gradcheck():
    x = torch.randn(3, 2, 3, dtype=D, requires_grad=True)
    w = torch.randn(3, 4, dtype=D, requires_grad=True)
    for solver in ("dense", "cg"):
        layer = DeclarativeLayer(TwoShapes((2, 3), linear_solver=solver))
        assert layer(x, w).shape == (3, 2, 3)
        assert torch.autograd.gradcheck(lambda a, b: layer(a, b), (x, w), eps=1e-6, atol=1e-7,
                                        rtol=1e-6)


class MovingSphere(EqConstrainedNode):
    """min ‖y − x‖² + 0.3 y₀y₁ s.t. ‖y‖² = 1 + x₀², y₂ = x₁ y₀ (both constraints move with x)."""

    def objective(self, x, y):
        return ((y - x) ** 2).sum(-1) + 0.3 * y[:, 0] * y[:, 1]

    def equality_constraints(self, x, y):
        return torch.stack([(y * y).sum(-1) - (1 + x[:, 0] ** 2), y[:, 2] - x[:, 1] * y[:, 0]], -1)

    def initial_guess(self, x):
        return x / x.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("b", [1, 3])
def test_equality_constraints_that_depend_on_x_gradcheck(b):
    x = torch.randn(b, 4, dtype=D, requires_grad=True)
    for solver in ("dense", "cg"):
        layer = DeclarativeLayer(MovingSphere(4, linear_solver=solver))
        assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-7, rtol=1e-6)


class MixedDefault(IneqConstrainedNode):
    """Σy = 1 and three inequalities (one moving with x), solved by the default solver."""

    def objective(self, x, y):
        return 0.5 * ((y - x) ** 2).sum(-1) + 0.1 * (y[:, 0] - y[:, 1]) ** 2

    def equality_constraints(self, x, y):
        return y.sum(-1) - 1.0

    def inequality_constraints(self, x, y):
        return torch.stack([y[:, 0] - 0.5, -y[:, 1] - x[:, 2] ** 2, y[:, 2] ** 2 - 1.0], -1)


def test_mixed_constraints_with_per_element_active_sets_default_solver():
    x = torch.tensor([[2.0, 0.1, 0.3], [0.0, 0.5, 0.2], [1.0, -3.0, 0.4], [0.1, 0.2, 3.0]], dtype=D)
    node = MixedDefault(3)
    _, ctx = node.solve(x)
    # four different active sets in one batch (the point of the test)
    assert ctx["active"].tolist() == [[True, False, False], [False, False, False],
                                      [True, True, False], [False, False, True]]
    xr = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(DeclarativeLayer(node), (xr,), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_bad_inputs_are_named():
    class Q(DeclarativeNode):
        def objective(self, x, y):
            return (0.5 * y ** 2 - x * y + 0.1 * y ** 4).sum(-1)

    layer = DeclarativeLayer(Q(3))
    with pytest.raises(DDNError, match="floating-point"):
        layer(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(DDNError, match="empty batch"):
        layer(torch.ones(0, 3, dtype=D))
    with pytest.raises(DDNError, match="v must have y's shape"):
        Q(3).vjp(torch.randn(2, 3, dtype=D), v=torch.ones(2, 4, dtype=D))
    # an integer input next to a float one is fine: y takes the float input's dtype
    class Scaled(DeclarativeNode):
        def objective(self, k, x, y):
            return (0.5 * y ** 2 - k * x * y).sum(-1)

    k = torch.tensor([[1], [2]])
    x = torch.randn(2, 3, dtype=D, requires_grad=True)
    y = DeclarativeLayer(Scaled(3))(k, x)
    assert y.dtype == D
    torch.testing.assert_close(y, k * x.detach(), atol=1e-10, rtol=0)


def _corrupt_batched_lu(monkeypatch):
    """Simulate the batched-LU trap: batched solve_ex returns garbage; unbatched stays right."""
    real = torch.linalg.solve_ex

    def bad(A, B, *a, **k):
        out = real(A, B, *a, **k)
        if A.dim() == 3:
            return (out[0] + 1.0, out[1])
        return out

    monkeypatch.setattr(torch.linalg, "solve_ex", bad)


def test_lu_trap_is_caught_by_the_residual_check(monkeypatch):
    torch.manual_seed(0)
    A = torch.randn(32, 6, 6, dtype=D)
    K = A + A.mT  # symmetric indefinite: LU path
    r = torch.randn(32, 6, dtype=D)
    expect = torch.tensor(np.linalg.solve(K.numpy(), r.numpy()[..., None])[..., 0])
    _corrupt_batched_lu(monkeypatch)
    w, info = _linalg.solve_dense(K, r)
    assert not info["pd"].any()
    torch.testing.assert_close(w, expect, atol=1e-9, rtol=1e-9)
    assert not info["singular"].any()


def test_lu_trap_in_a_kkt_layer_under_two_threads(monkeypatch):
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(40, 4, dtype=D, requires_grad=True)
        layer = DeclarativeLayer(MovingSphere(4))
        v = torch.randn(40, 4, dtype=D)
        (g_ok,) = torch.autograd.grad((layer(x) * v).sum(), x)
        _corrupt_batched_lu(monkeypatch)
        (g_trap,) = torch.autograd.grad((layer(x) * v).sum(), x)
        torch.testing.assert_close(g_trap, g_ok, atol=1e-10, rtol=1e-10)
    finally:
        torch.set_num_threads(old)


class Cap(IneqConstrainedNode):
    """y = argmin ½‖u − x‖² s.t. u₀ ≤ 1, i.e. u₀ = min(x₀, 1)."""

    def objective(self, x, y):
        return 0.5 * ((y - x) ** 2).sum(-1)

    def inequality_constraints(self, x, y):
        return y[:, 0] - 1.0


@pytest.mark.parametrize("dtype,gap", [(torch.float64, 5e-7), (torch.float32, 5e-4)])
def test_default_solver_does_not_pull_a_nearly_active_constraint_onto_g_0(dtype, gap):
    # x₀ = 1 − gap is inside (g = −gap) but within active_tol (1e-6 / 1e-3): the polish used to
    # force g = 0, moving y by `gap` and zeroing its gradient (silently; true dy₀/dx₀ = 1).
    x = torch.tensor([[1.0 - gap, 0.3], [3.0, 0.1]], dtype=dtype, requires_grad=True)
    y = DeclarativeLayer(Cap(2))(x)
    torch.testing.assert_close(y[0], x[0].detach(), atol=10 * torch.finfo(dtype).eps, rtol=0)
    (g,) = torch.autograd.grad(y[:, 0].sum(), x)
    torch.testing.assert_close(g, torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=dtype))


class TiltedPlane(EqConstrainedNode, torch.nn.Module):
    """min ½‖y − x‖² + 0.1Σy⁴ s.t. aᵀy = c x₀, with a an nn.Parameter used by the constraint."""

    def __init__(self, **kw):
        torch.nn.Module.__init__(self)
        EqConstrainedNode.__init__(self, 3, **kw)
        self.a = torch.nn.Parameter(torch.tensor([1.0, 2.0, -0.5], dtype=D))
        self.register_buffer("c", torch.tensor(1.5, dtype=D))

    def objective(self, x, y):
        return 0.5 * ((y - x) ** 2).sum(-1) + 0.1 * (y ** 4).sum(-1)

    def equality_constraints(self, x, y):
        return (self.a * y).sum(-1) - self.c * x[:, 0]

    def initial_guess(self, x):
        return x.clone()


@pytest.mark.parametrize("solver", ["dense", "cg", "minres", "unroll"])
def test_module_parameter_in_a_constraint_matches_finite_differences(solver):
    # x does not require grad: only θ does. With "unroll" the solve used to drop its graph
    # (it looked at the inputs only), so θ silently got no gradient.
    node = TiltedPlane(linear_solver=solver)
    layer = DeclarativeLayer(node)
    x = torch.randn(4, 3, dtype=D)
    v = torch.randn(4, 3, dtype=D)
    (layer(x) * v).sum().backward()
    a0, fd = node.a.detach().clone(), torch.zeros(3, dtype=D)
    with torch.no_grad():
        for k in range(3):
            for s in (1.0, -1.0):
                node.a.copy_(a0)
                node.a[k] += s * 1e-6
                fd[k] += s * (layer(x) * v).sum() / 2e-6
        node.a.copy_(a0)
    torch.testing.assert_close(node.a.grad, fd, atol=1e-7, rtol=1e-6)


def test_integer_input_has_no_jacobian_and_check_gradient_runs():
    """An integer input (a per-element count) gets None from jacobian/vjp; check_gradient checks
    the float inputs (jacobian used to crash on the None)."""
    import ddn.check

    class Scaled(DeclarativeNode):
        def objective(self, k, x, y):  # y + 0.4y³ = k x ⇒ dy/dx = k / (1 + 1.2y²)
            return (0.5 * y ** 2 - k * x * y + 0.1 * y ** 4).sum(-1)

    k = torch.tensor([[1], [2]])
    x = torch.randn(2, 3, dtype=D)
    Jk, Jx = Scaled(3).jacobian(k, x)
    y = Scaled(3)(k, x)
    assert Jk is None
    torch.testing.assert_close(Jx, torch.diag_embed(k / (1 + 1.2 * y ** 2)), atol=1e-12, rtol=1e-10)
    rep = ddn.check.check_gradient(Scaled(3), k, x)
    assert rep.ok and rep.max_rel_error < 1e-7, str(rep)


def test_infeasible_constraints_are_named_not_silent():
    class Empty(IneqConstrainedNode):  # 2 ≤ y₀ ≤ 1: no feasible point
        def objective(self, x, y):
            return ((y - x) ** 2).sum(-1)

        def inequality_constraints(self, x, y):
            return torch.stack([y[:, 0] - 1, 2 - y[:, 0]], -1)

    with pytest.warns(ddn.DDNWarning, match="no common feasible point"):
        DeclarativeLayer(Empty(2, solver_max_iter=10))(torch.randn(2, 2, dtype=D))
    with pytest.raises(DDNError, match="did not converge"):
        DeclarativeLayer(Empty(2, solver_max_iter=10, on_degenerate="error"))(torch.randn(2, 2, dtype=D))


def test_jacobian_vjp_and_check_of_inputs_that_require_grad_with_the_default_ineq_solver():
    # vjp/jacobian/diagnose solved with the graph on when x required grad, so the default
    # inequality solver refused ("cannot be unrolled"); they solve without a graph now.
    import ddn.check
    x = (torch.randn(3, 3, dtype=D) * 0.5).requires_grad_()
    node = MixedDefault(3)
    J = node.jacobian(x)
    (g,) = node.vjp(x, v=torch.ones(3, 3, dtype=D))
    torch.testing.assert_close(g, J.sum(1), atol=1e-12, rtol=1e-12)
    assert node.diagnose(x)["residual"].max() < 1e-8
    assert ddn.check.check_gradient(node, x).ok


class NearestOnSphere(EqConstrainedNode):
    """min ‖y − x‖² s.t. ‖y‖² = 1: the minimum is x/‖x‖, the maximum −x/‖x‖ is also a KKT point."""

    def __init__(self, sign, **kw):
        super().__init__(**kw)
        self.sign = sign

    def objective(self, x, y):
        return ((y - x) ** 2).sum(-1)

    def equality_constraints(self, x, y):
        return (y * y).sum(-1) - 1

    def initial_guess(self, x):
        return self.sign * x / x.norm(dim=-1, keepdim=True) + 0.1


def test_a_kkt_maximum_found_by_the_default_solver_is_named():
    x = torch.randn(3, 3, dtype=D, requires_grad=True)
    y = DeclarativeLayer(NearestOnSphere(+1))(x)  # the minimum: quiet
    torch.testing.assert_close(y, x.detach() / x.detach().norm(dim=-1, keepdim=True))
    y.sum().backward()
    y = DeclarativeLayer(NearestOnSphere(-1))(x)  # Newton-KKT converges to the maximum
    torch.testing.assert_close(y, -x.detach() / x.detach().norm(dim=-1, keepdim=True))
    with pytest.warns(ddn.DDNWarning, match=r"not a minimum.*\[0, 1, 2\]"):
        y.sum().backward()


@pytest.mark.parametrize("cls", [DeclarativeNode, EqConstrainedNode, IneqConstrainedNode])
def test_objective_of_the_wrong_shape_is_named_by_the_default_solvers(cls):
    class Bad(cls):  # (b, 1), not (b,): the default solvers failed with an opaque RuntimeError
        def objective(self, x, y):
            return ((y - x) ** 2).sum(-1, keepdim=True)

        def equality_constraints(self, x, y):
            return y.sum(-1) - 1

        def inequality_constraints(self, x, y):
            return y[:, 0] - 5

    with pytest.raises(DDNError, match=r"objective must return shape \(batch,\)"):
        DeclarativeLayer(Bad(2))(torch.randn(3, 2, dtype=D))


def test_a_constrained_node_without_constraints_is_named():
    class NoCons(IneqConstrainedNode):  # both constraint methods return None
        def objective(self, x, y):
            return ((y - x) ** 2).sum(-1)

        def inequality_constraints(self, x, y):
            return None

    for cls in (NoCons, type("NoEq", (EqConstrainedNode,), {
            "objective": NoCons.objective, "equality_constraints": lambda self, x, y: None})):
        with pytest.raises(DDNError, match="returned None"):
            DeclarativeLayer(cls(2))(torch.randn(2, 2, dtype=D))
        with pytest.raises(DDNError, match="returned None"):
            DeclarativeLayer(cls(2)).node.vjp(torch.randn(2, 2, dtype=D), v=torch.ones(2, 2, dtype=D),
                                              y=torch.zeros(2, 2, dtype=D))


def test_ineq_node_whose_inequalities_are_none_solves_its_equalities():
    class EqOnly(IneqConstrainedNode):
        def objective(self, x, y):
            return 0.5 * ((y - x) ** 2).sum(-1)

        def equality_constraints(self, x, y):
            return y.sum(-1) - 1

        def inequality_constraints(self, x, y):
            return None

    x = torch.randn(3, 4, dtype=D, requires_grad=True)
    y = DeclarativeLayer(EqOnly(4))(x)
    torch.testing.assert_close(y, x.detach() - (x.detach().sum(-1, keepdim=True) - 1) / 4)
    (g,) = torch.autograd.grad(y[:, 0].sum(), x)
    torch.testing.assert_close(g, torch.eye(4, dtype=D)[0].expand(3, 4) - 0.25)


def test_implicit_vjp_refuses_a_v_of_the_wrong_size():
    # a v shorter than z used to be zero-padded silently (a wrong gradient); longer crashed
    from ddn.torch import implicit_vjp

    def f(x, y):
        return 0.5 * (y * y).sum(-1) - (x * y).sum(-1)

    x = torch.randn(2, 3, dtype=D, requires_grad=True)
    (g,), _ = implicit_vjp(f, (x,), x.detach().clone(), torch.ones(2, 3, dtype=D))
    torch.testing.assert_close(g, torch.ones(2, 3, dtype=D))
    for bad in (torch.ones(2, 2, dtype=D), torch.ones(2, 4, dtype=D), torch.ones(3, 3, dtype=D)):
        with pytest.raises(DDNError, match="v must be"):
            implicit_vjp(f, (x,), x.detach().clone(), bad)
