"""Tangent constraint surfaces (a line touching the circle, Sec. 4.7.1) are non-regular points:
y₁ = √(1 − x²) has Dy₁ = −x/√(1 − x²), unbounded at x = ±1. The node must name that point
(DDNError, or the remedy chosen), not return a huge Dy computed from a constraint Jacobian whose
smallest singular value is rounding noise; near the tangency the large Dy is correct."""
import warnings
from fractions import Fraction

import autograd.numpy as anp
import numpy as np
import pytest

from ddn import DDNError, DDNWarning
from ddn.check import check_gradient, finite_difference_jacobian
from ddn.reference import CircleLineNode, EqConstrainedNode


def _exact_dy1(x):
    """−x/√(1 − x²) with 1 − x² computed exactly (the float x² loses the digits that matter
    next to the tangency)."""
    X = Fraction(x)
    return -x / np.sqrt(float(1 - X * X))


class CircleLineObjective(EqConstrainedNode):
    """The same tangency inside an optimization problem (Prop. 4.5): y ∈ R³ with u₁² + u₂² = 1,
    u₂ = x, and u₃ free (½(u₃ − 1)² + ½u₁²)."""

    def __init__(self, **kw):
        super().__init__(1, 3, **kw)

    def objective(self, x, y):
        return 0.5 * (y[2] - 1.0) ** 2 + 0.5 * y[0] ** 2

    def equality_constraints(self, x, y):
        return anp.stack([y[0] ** 2 + y[1] ** 2 - 1.0, y[1] - x[0]])

    def initial_guess(self, x):
        return np.array([1.0, 0.0, 0.0])


@pytest.mark.parametrize("xv", [1.0, -1.0])
def test_circle_line_tangent_point_is_named(xv):
    node, x = CircleLineNode(), np.array([xv])
    y, ctx = node.solve(x)  # the forward answer (0, ±1) is fine ...
    np.testing.assert_allclose(y, [0.0, xv], atol=1e-7)
    with pytest.raises(DDNError, match="tangent"):  # ... its derivative does not exist
        node.jacobian(x, y, ctx)
    with pytest.raises(DDNError, match="not regular"):
        node.vjp(x, np.ones(2), y, ctx)
    report = check_gradient(node, x)
    assert not report.ok and "tangent" in str(report)


def test_tangent_point_in_an_optimization_problem_is_named():
    node = CircleLineObjective()
    x = np.array([1.0])
    y, ctx = node.solve(x)
    with pytest.raises(DDNError, match="tangent"):
        node.jacobian(x, y, ctx)


def test_tangent_point_with_a_remedy_uses_it():
    """With nonregular='pinv' chosen the near-zero singular value counts as zero: the remedy's
    finite minimum-norm substitute, not −1.8e8."""
    node, x = CircleLineNode(nonregular="pinv"), np.array([1.0])
    y, ctx = node.solve(x)
    opt = node.optimality(x, y, ctx)
    assert opt.rank_A == 1 and any("tangent" in m for m in opt.messages)
    J = node.jacobian(x, y, ctx)
    assert np.all(np.isfinite(J)) and np.max(np.abs(J)) < 10


@pytest.mark.parametrize("d", [1e-2, 1e-4, 1e-6])
def test_near_tangent_large_dy_is_correct_and_quiet(d):
    node, x = CircleLineNode(), np.array([1.0 - d])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DDNWarning)
        y, ctx = node.solve(x)
        J = node.jacobian(x, y, ctx)
    np.testing.assert_allclose(J[:, 0], [_exact_dy1(x[0]), 1.0], rtol=1e-7)
    # central differences with a step well below the distance d to the tangency
    fd = finite_difference_jacobian(lambda z: node.solve(z)[0], x, eps=1e-3 * d)
    np.testing.assert_allclose(J, fd, rtol=1e-5)
    vjp = node.vjp(x, np.array([1.0, 2.0]), y, ctx)
    np.testing.assert_allclose(vjp, np.array([1.0, 2.0]) @ J, rtol=1e-12)


def test_within_rounding_of_tangency_warns_but_is_still_right():
    """1e-12 from the tangency Dy₁ ≈ −7e5 is right to ~1e-5: a DDNWarning says it is
    ill-conditioned (how many digits to expect), no error."""
    node, x = CircleLineNode(), np.array([1.0 - 1e-12])
    y, ctx = node.solve(x)
    with pytest.warns(DDNWarning, match="nearly tangent"):
        J = node.jacobian(x, y, ctx)
    np.testing.assert_allclose(J[0, 0], _exact_dy1(x[0]), rtol=1e-3)


class ScaledCircleLine(CircleLineNode):
    """The circle and the line, both constraints ×c (the same y and Dy)."""

    def __init__(self, c, **kw):
        super().__init__(**kw)
        self.c = c

    def equality_constraints(self, x, y):
        return self.c * super().equality_constraints(x, y)


@pytest.mark.parametrize("c", [1e-12, 1e-6, 1e6])
def test_tangency_estimate_does_not_depend_on_the_constraints_scale(c):
    """ρ = κ·ε_h/σ² must not change when h̃ is multiplied by c (the rounding allowance of h̃ had
    a fixed eps·1 term: ×1e-12 constraints warned 'nearly tangent' at x = 0.5)."""
    node, x = ScaledCircleLine(c), np.array([0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DDNWarning)
        y, ctx = node.solve(x)
        J = node.jacobian(x, y, ctx)
    np.testing.assert_allclose(J[:, 0], [_exact_dy1(0.5), 1.0], rtol=1e-7)
