"""The KKT polish works whatever the scales of f and h̃: with f ×1e9 (or h ×1e-9) the KKT matrix
had singular values 3e9 and 1e-9, least squares cut the small one, the Newton step was 0 and y
stayed 6e-9 infeasible (2e-9 off the projection, its Dy failing the gradient check); and for
h ×1e-9 the polish measured feasibility in units of h (1e-17 for a y 5e-9 off the sphere)."""
import autograd.numpy as anp
import numpy as np
import pytest

from ddn.check import check_gradient
from ddn.reference import IneqConstrainedNode

X = np.array([2.69956107, 1.71624881, -0.48813426, 1.16070988])


class Ball(IneqConstrainedNode):
    """s·½‖u − x‖² s.t. c·(‖u‖² − 1) ≤ 0: y = x/max(1, ‖x‖) for every s, c > 0."""

    def __init__(self, s, c):
        super().__init__(4, 4)
        self.s, self.c = s, c

    def objective(self, x, y):
        return self.s * 0.5 * anp.sum((y - x) ** 2)

    def inequality_constraints(self, x, y):
        return self.c * (anp.dot(y, y) - 1.0)


@pytest.mark.parametrize("s, c", [(1e9, 1.0), (1.0, 1e-9), (1e9, 1e-9), (1e-9, 1e-9)])
def test_ball_projection_is_exact_for_scaled_problems(s, c):
    node = Ball(s, c)
    y, ctx = node.solve(X)
    np.testing.assert_allclose(y, X / np.linalg.norm(X), atol=1e-14)
    assert check_gradient(node, X, y=y, ctx=ctx).ok
