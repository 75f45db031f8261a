"""The reference constrained solver from the default initial guess y0 = 0, where ∇‖y‖² = 0 makes
SLSQP's linearized constraints singular ("Singular matrix C in LSQ subproblem"). It used to raise
"no feasible point found" on a feasible problem; it now retries from a fixed perturbation of y0."""
import autograd.numpy as anp
import numpy as np
import pytest

import ddn.reference as R
from ddn.check import check_gradient


class SphereAndPlane(R.EqConstrainedNode):
    """min ‖y − x‖² + 0.3 Σy⁴  s.t.  ‖y‖² = 1, y₀ = y₁."""

    def __init__(self):
        super().__init__(3, 3)

    def objective(self, x, y):
        return anp.sum((y - x) ** 2) + 0.3 * anp.sum(y ** 4)

    def equality_constraints(self, x, y):
        return anp.array([anp.sum(y ** 2) - 1, y[0] - y[1]])


class Sphere(R.EqConstrainedNode):
    """min ‖y − x‖² s.t. ‖y‖² = 1: y = x/‖x‖, Dy = (I − yyᵀ)/‖x‖."""

    def __init__(self):
        super().__init__(3, 3)

    def objective(self, x, y):
        return anp.sum((y - x) ** 2)

    def equality_constraints(self, x, y):
        return anp.sum(y ** 2) - 1


@pytest.mark.parametrize("x", [[0.5, -1.2, 2.0], [3.0, 1.0, -1.0]])
def test_two_constraints_from_zero(x):
    x = np.array(x)
    node = SphereAndPlane()
    assert np.all(node.initial_guess(x) == 0)
    y, ctx = node.solve(x)
    assert abs(y @ y - 1) < 1e-12 and abs(y[0] - y[1]) < 1e-12
    assert check_gradient(node, x).ok


def test_sphere_from_zero_matches_closed_form():
    x = np.array([0.4, -2.0, 1.1])
    y, _ = Sphere().solve(x)
    nx = np.linalg.norm(x)
    np.testing.assert_allclose(y, x / nx, atol=1e-12)
    J = Sphere().jacobian(x)
    np.testing.assert_allclose(J, (np.eye(3) - np.outer(y, y)) / nx, atol=1e-9)
