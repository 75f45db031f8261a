"""Audit regressions for the reference floor's default solvers and backward rules on problems the
node table does not cover: degenerate default starts, scaled objectives, singular H with a
regular KKT system, composition with a given y."""
import autograd.numpy as anp
import numpy as np
import pytest

import ddn.reference as R
from ddn import DDNError
from ddn.check import check_gradient


class CircleAndVerticalLine(R.FeasibilityNode):
    """h(x, u) = (u₁² + u₂² − 1, u₁ − x) = 0 from the default guess u = 0, where D_Y h₁ = 2u = 0:
    y = (x, √(1 − x²)) or (x, −√(1 − x²)); Dy = (1, ∓x/√(1 − x²))ᵀ."""

    def __init__(self):
        super().__init__(1, 2)

    def equality_constraints(self, x, y):
        return anp.stack([y[0] ** 2 + y[1] ** 2 - 1.0, y[0] - x[0]])


def test_feasibility_from_the_zero_default_guess():
    # least squares from u = 0 set u₁ = x and never moved u₂ (its column of D_Y h stays 0 on
    # u₂ = 0), so a feasible problem was reported as "no point satisfies the constraints"
    node = CircleAndVerticalLine()
    x = np.array([0.3])
    y, _ = node.solve(x)
    assert abs(y[0] - 0.3) < 1e-12 and abs(abs(y[1]) - np.sqrt(1 - 0.09)) < 1e-12
    J = node.jacobian(x, y)
    np.testing.assert_allclose(J, [[1.0], [-x[0] / y[1]]], rtol=1e-10)
    assert check_gradient(node, x).ok
