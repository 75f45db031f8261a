"""check_gradient judges a Jacobian on its own scale: with the bare absolute tolerance
atol = 1e-9, a Dy whose entries are ~1e-10 (y in other units) passed whatever it was, twice the
true one included. The absolute allowance is now capped by the rounding noise of the finite
differences (1e3·eps·max|y|/h), so such a Dy is judged relatively."""
import numpy as np
import pytest

from ddn.check import check_gradient
from ddn.reference import QuadraticNode, ReLUNode

RNG = np.random.default_rng(1)
P = 2.0 * np.eye(3) + 0.1
Q = RNG.standard_normal((3, 2))
X = np.array([0.3, -0.7])


class WrongJacobian(QuadraticNode):
    """Dy and vᵀDy twice the true ones."""

    def jacobian(self, x, y=None, ctx=None):
        return 2.0 * super().jacobian(x, y, ctx)

    def vjp(self, x, v, y=None, ctx=None):
        return 2.0 * super().vjp(x, v, y, ctx)


class WrongVjp(QuadraticNode):
    """Right Dy, vjp off by 1 %."""

    def vjp(self, x, v, y=None, ctx=None):
        return 1.01 * super().vjp(x, v, y, ctx)


@pytest.mark.parametrize("scale", [1.0, 1e-6, 1e-10, 1e-12])
def test_correct_jacobian_passes_at_any_scale(scale):
    report = check_gradient(QuadraticNode(P, scale * Q), X)
    assert report.ok, str(report)


@pytest.mark.parametrize("scale", [1.0, 1e-6, 1e-10, 1e-12])
def test_wrong_jacobian_is_caught_at_any_scale(scale):
    report = check_gradient(WrongJacobian(P, scale * Q), X)
    assert not report.ok
    assert report.max_rel_error > 0.5
    assert any("differs from finite differences" in m for m in report.messages)


@pytest.mark.parametrize("scale", [1.0, 1e-10])
def test_wrong_vjp_is_caught_at_any_scale(scale):
    report = check_gradient(WrongVjp(P, scale * Q), X)
    assert not report.ok
    assert any("vjp differs" in m for m in report.messages)


def test_ordinary_scale_keeps_atol():
    """With |y| ~ 1 the finite differences' noise is above atol: atol is used as given."""
    report = check_gradient(QuadraticNode(P, Q), X, atol=1e-9)
    assert report.details["atol_effective"] == 1e-9


def test_zero_jacobian_still_passes():
    """ReLU of negative inputs: y = 0 and Dy = 0 exactly; the zero allowance must not fail it."""
    report = check_gradient(ReLUNode(3), np.array([-1.0, -2.0, -0.5]))
    assert report.ok, str(report)


class LinearNode(QuadraticNode):
    """y = −P⁻¹Qx (Dy = −P⁻¹Q), solved in closed form."""

    def solve(self, x):
        return self.closed_form(self._check_x(x)), {}


class OffByOnePercent(LinearNode):
    def jacobian(self, x, y=None, ctx=None):
        return 1.01 * super().jacobian(x, y, ctx)


@pytest.mark.parametrize("scale", [1.0, 1e4, 1e8])
def test_random_directions_scale_their_steps_with_x(scale):
    """directions=k stepped eps along a unit u whatever x: at x ~ 1e8 that step is at the
    rounding level of x, and a correct linear node failed with a relative error of 1e-3."""
    x = scale * X
    assert check_gradient(LinearNode(P, Q), x, directions=2).ok
    assert not check_gradient(OffByOnePercent(P, Q), x, directions=2).ok


def test_a_y_from_another_branch_is_named():
    """TwoSolutionNode checked at the other minimum y = −1/√x: the finite differences follow
    the solver's +1/√x, and the report only said "Dy differs from finite differences"."""
    from ddn.reference import TwoSolutionNode
    x = np.array([2.0])
    report = check_gradient(TwoSolutionNode(1), x, y=np.array([-1 / np.sqrt(2)]))
    assert not report.ok
    assert any("y given differs from node.solve(x)" in m for m in report.messages)
    assert check_gradient(TwoSolutionNode(-1), x, y=np.array([-1 / np.sqrt(2)])).ok
