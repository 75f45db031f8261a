"""A vanishing constraint gradient (h written as a square, Cor. 4.7's observation) is judged on
the constraint's own scale: against 1e-8·(1 + |D_Y f|) the plain unit-sphere projection was
refused ("D_Y h vanishes") for an objective ×1e9 and for a constraint ×1e-9."""
import autograd.numpy as anp
import numpy as np
import pytest

from ddn import DDNError
from ddn.check import check_gradient
from ddn.reference import EqConstrainedNode

X = np.array([0.3, -1.2, 0.8])


class Sphere(EqConstrainedNode):
    """s·½‖u − x‖² s.t. c·(‖u‖² − 1) = 0: y = x/‖x‖ for every s, c > 0."""

    def __init__(self, s=1.0, c=1.0, square=False):
        super().__init__(3, 3)
        self.s, self.c, self.square = s, c, square

    def objective(self, x, y):
        return self.s * 0.5 * anp.sum((y - x) ** 2)

    def equality_constraints(self, x, y):
        h = self.c * (anp.sum(y ** 2) - 1.0)
        return h ** 2 if self.square else h

    def initial_guess(self, x):
        return x / np.linalg.norm(x) + 0.05


@pytest.mark.parametrize("s, c", [(1e9, 1.0), (1.0, 1e-9), (1e-9, 1e-9)])
def test_scaled_sphere_projection_is_not_refused(s, c):
    node = Sphere(s, c)
    y, ctx = node.solve(X)
    np.testing.assert_allclose(y, X / np.linalg.norm(X), atol=1e-12)
    r = np.linalg.norm(X)
    np.testing.assert_allclose(node.jacobian(X, y, ctx), (np.eye(3) - np.outer(y, y)) / r,
                               atol=1e-9)
    assert check_gradient(node, X).ok


@pytest.mark.parametrize("s, c", [(1.0, 1.0), (1e9, 1.0), (1.0, 1e3)])
def test_a_squared_constraint_is_still_refused(s, c):
    node = Sphere(s, c, square=True)
    y = X / np.linalg.norm(X)
    with pytest.raises(DDNError, match="vanishes"):
        node.jacobian(X, y, {})
