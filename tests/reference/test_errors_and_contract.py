"""Bad input and degenerate points give clear errors (DDNError) or visible warnings
(DDNWarning); the public contract of ``ddn.reference`` / ``ddn.check`` (design.md) imports and
behaves; bi-level gradients (Eq. 10–12); check_gradient catches wrong gradients."""
import sys
import types

import autograd.numpy as anp
import numpy as np
import pytest

import ddn
from ddn import DDNError, DDNWarning
from ddn.check import GradientReport, check_gradient, finite_difference_jacobian
from ddn.reference import (
    CircleLineNode, ComposedNode, DeclarativeNode, DirectionAlignmentNode, EqConstrainedNode,
    IneqConstrainedNode, QuadraticNode, TwoSolutionNode, UnitBallNode,
    UnitSphereNode, implicit_vjp, prop_4_4_jacobian, shortcut_gradient, upper_gradient)


class LogNode(DeclarativeNode):
    """argmin Σ exp(u) − xᵀu = log x."""

    def objective(self, x, y):
        return anp.sum(anp.exp(y)) - anp.dot(x, y)


class EmptyIntervalNode(IneqConstrainedNode):
    """u ≤ −1 and u ≥ 1 at once: no feasible point."""

    def objective(self, x, y):
        return anp.sum((y - x) ** 2)

    def inequality_constraints(self, x, y):
        return anp.concatenate([y + 1.0, 1.0 - y])


class RepeatedConstraintNode(EqConstrainedNode):
    """u₁ + u₂ = x written twice: rank-deficient constraint Jacobian."""

    def objective(self, x, y):
        return 0.5 * anp.sum(y ** 2)

    def equality_constraints(self, x, y):
        s = y[0] + y[1] - x[0]
        return anp.stack([s, 2.0 * s])

    def solve(self, x):
        return np.full(2, x[0] / 2), {}


P = np.array([[2.0, 0.3], [0.3, 1.0]])
Q = np.array([[1.0, -1.0, 0.5], [0.2, 0.4, -1.0]])


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.array([1.0, np.nan, 0.0]), np.array([np.inf, 1.0, 0.0])])
def test_nan_or_inf_input(bad):
    node = QuadraticNode(P, Q)
    for call in (lambda: node.solve(bad), lambda: node.jacobian(bad),
                 lambda: node.vjp(bad, np.ones(2))):
        with pytest.raises(DDNError, match="NaN or Inf"):
            call()
    with pytest.raises(DDNError, match="NaN or Inf"):
        node.vjp(np.ones(3), np.array([np.nan, 1.0]))


def test_wrong_shapes():
    node = QuadraticNode(P, Q)
    with pytest.raises(DDNError, match=r"x must have shape \(3,\)"):
        node.solve(np.ones(4))
    with pytest.raises(DDNError, match=r"x must have shape \(3,\)"):
        node.jacobian(np.ones((3, 1)))
    with pytest.raises(DDNError, match=r"v must have shape \(2,\)"):
        node.vjp(np.ones(3), np.ones(3))
    with pytest.raises(DDNError, match=r"y must have shape \(2,\)"):
        node.jacobian(np.ones(3), y=np.ones(5))
    with pytest.raises(DDNError, match="P must be"):
        QuadraticNode(np.eye(3), Q)
    with pytest.raises(DDNError, match="cannot compose"):
        ComposedNode(QuadraticNode(P, Q), UnitSphereNode(3))
    with pytest.raises(DDNError, match="positive integers"):
        LogNode(0, 2)


def test_singular_hessian_without_remedy_names_the_remedies():
    with pytest.raises(DDNError) as e:
        DirectionAlignmentNode(3).jacobian(np.array([1.0, 2.0, 3.0]))
    msg = str(e.value)
    assert "singular" in msg and "pinv" in msg and "proximal" in msg and "Eq. 55" in msg
    with pytest.raises(DDNError, match="pinv"):  # the vjp path says the same
        DirectionAlignmentNode(3).vjp(np.array([1.0, 2.0, 3.0]), np.ones(3))
    with pytest.raises(DDNError, match="singular="):
        DirectionAlignmentNode(3, singular="lstsq")


def test_infeasible_constraints():
    with pytest.raises(DDNError, match="feasible"):
        EmptyIntervalNode(1, 1).solve(np.array([0.3]))
    with pytest.raises(DDNError, match="feasible set may be empty"):
        CircleLineNode().solve(np.array([2.0]))  # the line misses the circle


def test_solver_that_does_not_converge():
    with pytest.raises(DDNError, match="did not converge.*‖∇_Y f‖∞"):
        LogNode(3, 3, max_iter=2).solve(np.array([0.5, 20.0, 3.0]))
    # and the default gives the right answer
    np.testing.assert_allclose(LogNode(3, 3).solve(np.array([0.5, 20.0, 3.0]))[0],
                               np.log([0.5, 20.0, 3.0]), rtol=1e-12)


def test_nonregular_without_remedy_names_the_remedies():
    node = RepeatedConstraintNode(1, 2)
    with pytest.raises(DDNError, match="lstsq.*drop.*pinv"):
        node.jacobian(np.array([1.0]))
    with pytest.raises(DDNError, match="full column rank"):  # lstsq is for overdetermined only
        RepeatedConstraintNode(1, 2, nonregular="lstsq").jacobian(np.array([1.0]))
    J = RepeatedConstraintNode(1, 2, nonregular="drop").jacobian(np.array([1.0]))
    np.testing.assert_allclose(J, [[0.5], [0.5]], atol=1e-12)


def test_two_solution_node_domain():
    with pytest.raises(DDNError, match="x > 0"):
        TwoSolutionNode().solve(np.array([-1.0]))
    with pytest.raises(DDNError, match="sign"):
        TwoSolutionNode(sign=2)


def test_wrong_sign_multiplier_warns_and_fails_the_check():
    """A 'solver' that returns the boundary while x is inside the ball is not at a minimum:
    the multiplier is positive (wrong sign for L = f − Σλh), the node warns."""

    class BadBall(UnitBallNode):
        def solve(self, x):
            return x / np.linalg.norm(x), {}

    x = np.array([0.3, 0.1, 0.0])
    with pytest.warns(DDNWarning, match="λ > 0"):
        BadBall(3).jacobian(x)
    report = check_gradient(BadBall(3), x)
    assert not report.ok and any("λ > 0" in m for m in report.messages)


def test_ctx_multipliers_wrong_shape():
    node = UnitSphereNode(3)
    with pytest.raises(DDNError, match="multipliers"):
        node.jacobian(np.ones(3), y=np.ones(3) / np.sqrt(3), ctx={"multipliers": np.ones(2)})


# ---- contract (design.md) --------------------------------------------------------------------
def test_contract_names_import_and_behave():
    import ddn.reference as ref
    for name in ("DeclarativeNode", "EqConstrainedNode", "IneqConstrainedNode",
                 "LinEqConstrainedNode"):
        assert name in ref.__all__ and getattr(ref, name).floor == "reference"

    class Proj(ref.LinEqConstrainedNode):  # y = argmin ½‖u − x‖² s.t. 1ᵀu = 0
        def objective(self, x, y):
            return 0.5 * anp.sum((y - x) ** 2)

        def linear_constraints(self):
            return np.ones((1, 3)), np.zeros(1)

    class Halfspace(ref.IneqConstrainedNode):  # u₁ ≤ 0, and u₂ = u₃
        def objective(self, x, y):
            return 0.5 * anp.sum((y - x) ** 2)

        def inequality_constraints(self, x, y):
            return y[0]

        def equality_constraints(self, x, y):
            return y[1] - y[2]

    x = np.array([1.0, 2.0, -0.5])
    y, ctx = Proj(3, 3).solve(x)
    np.testing.assert_allclose(y, x - x.mean(), atol=1e-10)
    np.testing.assert_allclose(Proj(3, 3).jacobian(x), np.eye(3) - 1 / 3, atol=1e-10)
    y, ctx = Halfspace(3, 3).solve(x)
    np.testing.assert_allclose(y, [0.0, 0.75, 0.75], atol=1e-10)
    assert ctx["multipliers"].shape == (2,) and ctx["multipliers"][1] < 0  # [eq, ineq]
    J = Halfspace(3, 3).jacobian(x, y, ctx)
    np.testing.assert_allclose(J, [[0, 0, 0], [0, 0.5, 0.5], [0, 0.5, 0.5]], atol=1e-10)
    for node in (Proj(3, 3), Halfspace(3, 3)):
        assert node.vjp(x, np.ones(3)).shape == (3,)
        assert isinstance(node.objective(x, y), float)
        report = check_gradient(node, x)
        assert isinstance(report, GradientReport) and report.ok, str(report)
        assert "OK" in str(report) and "cond(H)" in str(report)


def test_check_gradient_catches_a_wrong_gradient():
    class WrongSolve(QuadraticNode):  # returns 2·y*: not a minimizer, and Dy doubles
        def solve(self, x):
            return 2 * self.closed_form(x), {}

    report = check_gradient(WrongSolve(P, Q), np.array([0.3, -0.2, 1.0]))
    assert not report.ok
    assert report.residual > 1e-3 and report.max_rel_error > 0.1
    assert "FAILED" in str(report)


def test_check_gradient_reports_regularity():
    x = np.array([2.0, 0.0, 0.0])
    rep = check_gradient(UnitBallNode(3), x)
    assert rep.ok and rep.n_active == 1 and rep.active_rank == 1 and rep.weakly_active == []
    assert rep.cond_H == pytest.approx(1.0)
    rep = check_gradient(DirectionAlignmentNode(3, singular="pinv"), np.array([1.0, 2.0, 3.0]))
    assert rep.ok and rep.cond_H > 1e12  # singular H, reported
    rep = check_gradient(DirectionAlignmentNode(3), np.array([1.0, 2.0, 3.0]))
    assert not rep.ok and "pinv" in rep.messages[0]


def test_check_gradient_hands_torch_nodes_to_the_torch_floor(monkeypatch):
    calls = []
    fake = types.ModuleType("ddn.torch.check")

    def check_gradient_torch(node, *xs, **kw):
        calls.append((node, xs, kw))
        return GradientReport(True, 0.0, 0.0, 0.0)

    fake.check_gradient_torch = check_gradient_torch
    monkeypatch.setitem(sys.modules, "ddn.torch.check", fake)

    class TorchNode:
        floor = "torch"

    rep = check_gradient(TorchNode(), "a", "b", rtol=1e-4, batch_index=3)
    assert rep.ok and calls and calls[0][1] == ("a", "b")
    assert calls[0][2] == {"rtol": 1e-4, "batch_index": 3}  # only what the caller gave


def test_check_gradient_along_random_directions():
    node = UnitSphereNode(6)
    x = np.random.default_rng(3).standard_normal(6)
    rep = check_gradient(node, x, directions=2)
    assert rep.ok and rep.details["fd_jacobian"].shape == (6, 2), str(rep)
    assert rep.details["jacobian"].shape == (6, 6)

    class Off(UnitSphereNode):  # a wrong Jacobian is caught along random directions too
        def jacobian(self, x, y=None, ctx=None):
            return 1.01 * super().jacobian(x, y, ctx)

    assert not check_gradient(Off(6), x, directions=2).ok


# ---- implicit_vjp on its own, and bi-level learning (Eq. 10–12) -------------------------------
def test_implicit_vjp_alone_matches_prop_4_4():
    H = np.array([[3.0, 1.0], [1.0, 2.0]])
    B = np.array([[1.0, 0.0, 2.0], [-1.0, 1.0, 0.5]])
    v = np.array([0.7, -1.3])
    np.testing.assert_allclose(implicit_vjp(v, H, lambda u, mu: u @ B),
                               v @ prop_4_4_jacobian(H, B), atol=1e-14)


def test_upper_gradient_and_eq_12_shortcut():
    node = QuadraticNode(P, Q, c=[0.5, -1.0])
    x = np.array([0.3, -0.2, 1.0])

    def J_f(x, y):  # J = f: the shortcut applies
        return node.objective(x, y)

    def J_other(x, y):  # depends on y directly: the shortcut does not apply
        return anp.sum(y ** 2) + anp.dot(x, x)

    for J in (J_f, J_other):
        fd = finite_difference_jacobian(
            lambda z: np.array([J(z, node.closed_form(z))]), x)[0]
        np.testing.assert_allclose(upper_gradient(J, node, x), fd, rtol=1e-7, atol=1e-9)
    # Eq. 12: full gradient == D_X f, and == the closed form (Qᵀ y) with y = −P⁻¹(Qx + c)
    y = node.closed_form(x)
    np.testing.assert_allclose(shortcut_gradient(node, x), upper_gradient(J_f, node, x),
                               atol=1e-12)
    np.testing.assert_allclose(shortcut_gradient(node, x), Q.T @ y, atol=1e-12)
    # ... but not for another J
    assert np.abs(shortcut_gradient(node, x) - upper_gradient(J_other, node, x)).max() > 1e-2
    with pytest.raises(DDNError, match="unconstrained"):
        shortcut_gradient(UnitSphereNode(3), x)


def test_upper_gradient_through_a_constrained_node():
    node = UnitSphereNode(3)
    target = np.array([0.0, 1.0, 0.0])

    def J(x, y):
        return anp.sum((y - target) ** 2)

    x = np.array([1.0, 0.5, -0.3])
    fd = finite_difference_jacobian(lambda z: np.array([J(z, z / np.linalg.norm(z))]), x)[0]
    np.testing.assert_allclose(upper_gradient(J, node, x), fd, rtol=1e-7, atol=1e-10)


def test_ddn_error_and_warning_types():
    assert issubclass(ddn.DDNError, ValueError) and issubclass(ddn.DDNWarning, UserWarning)


def test_feasibility_not_isolated():
    """One constraint in R²: y is not isolated (Sec. 4.7.1). Error by default, minimum-norm Dy
    with nonregular='pinv' (radial: d/dx of the point (x, 0) on the circle of radius x)."""
    from ddn.reference import FeasibilityNode

    class Circle(FeasibilityNode):
        def equality_constraints(self, x, y):
            return y[0] ** 2 + y[1] ** 2 - x[0] ** 2

        def initial_guess(self, x):
            return np.array([1.0, 0.0])

    x = np.array([2.0])
    with pytest.raises(DDNError, match="not isolated.*pinv"):
        Circle(1, 2).jacobian(x)
    with pytest.raises(DDNError, match="not isolated"):
        Circle(1, 2).vjp(x, np.ones(2))
    node = Circle(1, 2, nonregular="pinv")
    y, ctx = node.solve(x)
    np.testing.assert_allclose(y, [2.0, 0.0], atol=1e-10)
    np.testing.assert_allclose(node.jacobian(x, y, ctx), [[1.0], [0.0]], atol=1e-10)
    np.testing.assert_allclose(node.vjp(x, np.array([0.3, 5.0]), y, ctx), [0.3], atol=1e-10)


def test_plain_numpy_or_vector_objective_is_explained():
    class PlainNumpy(DeclarativeNode):
        def objective(self, x, y):
            return float(np.sum((y - x) ** 2))

    class VectorObjective(DeclarativeNode):
        def objective(self, x, y):
            return (y - x) ** 2

    with pytest.raises(DDNError, match="autograd.numpy"):
        PlainNumpy(2, 2).solve(np.ones(2))
    with pytest.raises(DDNError, match="must return a scalar"):
        VectorObjective(2, 2).solve(np.ones(2))


def test_objective_not_finite_at_the_initial_guess():
    class LogBarrier(DeclarativeNode):  # log(0) at the default initial guess y0 = 0
        def objective(self, x, y):
            return anp.sum(y - x * anp.log(y))

    with np.errstate(divide="ignore", invalid="ignore"):
        with pytest.raises(DDNError, match="not finite at the initial guess"):
            LogBarrier(2, 2).solve(np.ones(2))


def test_merged_constraints_are_refused_with_the_right_reason():
    """Σh² = 0 has D_Y h = 0 at the solution (observation after Cor. 4.7): the error must say so,
    not blame H."""
    import autograd.numpy as anp
    import numpy as np
    import pytest
    from ddn import DDNError
    from ddn.reference import EqConstrainedNode

    class Merged(EqConstrainedNode):
        def objective(self, x, y):
            return 0.5 * anp.sum((y - x) ** 2)

        def equality_constraints(self, x, y):
            return (anp.dot(y, y) - 1.0) ** 2 + y[2] ** 2

    x = np.array([0.6, -1.2, 0.4])
    y = np.r_[x[:2] / np.linalg.norm(x[:2]), 0.0]
    with pytest.raises(DDNError, match="vanishes"):
        Merged(3, 3).jacobian(x, y, {})
