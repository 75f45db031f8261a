"""Fourth audit round: the reference floor's second-order, multiplier and feasibility tests must
not depend on how the objective or the constraints are scaled (c·f, c·h for c = 1e-9 … 1e9)."""
import warnings

import autograd.numpy as anp
import numpy as np
import pytest

from ddn import DDNWarning
from ddn.reference import IneqConstrainedNode

X3 = np.array([0.6, -0.3, 1.2])


def _ball(c):
    class Ball(IneqConstrainedNode):  # projection onto the unit ball, constraint written ×c
        def objective(self, x, y):
            return anp.sum((y - x) ** 2)

        def inequality_constraints(self, x, y):
            return c * (anp.sum(y ** 2) - 1)
    return Ball


@pytest.mark.parametrize("c", [1e-9, 1.0, 1e8, 1e9])
def test_active_ball_constraint_scaled_up_is_not_weakly_active(c):
    # λ ~ 1e-9 for c = 1e8 was compared with the bare tolerance: 'weakly active' was reported
    # and weakly_active='unconstrained' dropped the constraint, Dy = I instead of the sphere's
    node = _ball(c)(3, 3, weakly_active="unconstrained")
    y, ctx = node.solve(X3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DDNWarning)
        J = node.jacobian(X3, y, ctx)
    u = X3 / np.linalg.norm(X3)
    np.testing.assert_allclose(J, (np.eye(3) - np.outer(u, u)) / np.linalg.norm(X3), atol=1e-9)


@pytest.mark.parametrize("c", [1e-9, 1.0, 1e9])
def test_weakly_active_ball_constraint_is_still_named_at_any_scale(c):
    u = X3 / np.linalg.norm(X3)  # x on the sphere: g = 0 and λ = 0
    with pytest.warns(DDNWarning, match="weakly active"):
        _ball(c)(3, 3).jacobian(u, u)
