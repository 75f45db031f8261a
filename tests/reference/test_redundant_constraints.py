"""Consistent but linearly dependent equality constraints (a row repeated or scaled): SLSQP's LSQ
subproblem is singular there and it stopped at once, so a feasible problem was reported as 'no
feasible point found … the constraint set may be empty', even with nonregular='drop' chosen for
exactly this case."""
import autograd.numpy as anp
import numpy as np
import pytest

from ddn import DDNError
from ddn.reference import EqConstrainedNode, LinEqConstrainedNode

X3 = np.array([0.3, -0.2, 0.5])


class PlaneTwice(LinEqConstrainedNode):  # 1ᵀy = 1 written twice (once ×2)
    def objective(self, x, y):
        return anp.sum((y - x) ** 2)

    def linear_constraints(self):
        return np.array([[1.0, 1, 1], [2, 2, 2]]), np.array([1.0, 2])


class SphereTwice(EqConstrainedNode):  # ‖y‖² = 1 written twice
    def objective(self, x, y):
        return anp.sum((y - x) ** 2)

    def equality_constraints(self, x, y):
        h = anp.sum(y ** 2) - 1
        return anp.stack([h, 3 * h])


@pytest.mark.parametrize("remedy", ["drop", "pinv"])
def test_redundant_plane_is_solved_and_differentiated(remedy):
    node = PlaneTwice(3, 3, nonregular=remedy)
    y, ctx = node.solve(X3)
    np.testing.assert_allclose(y, X3 + (1 - X3.sum()) / 3, atol=1e-12)
    np.testing.assert_allclose(node.jacobian(X3, y, ctx), np.eye(3) - 1 / 3, atol=1e-10)


def test_redundant_plane_without_remedy_names_the_rank_not_infeasibility():
    with pytest.raises(DDNError, match="not regular"):
        PlaneTwice(3, 3).jacobian(X3)


def test_redundant_sphere_with_drop():
    node = SphereTwice(3, 3, nonregular="drop")
    y, ctx = node.solve(X3)
    u = X3 / np.linalg.norm(X3)
    np.testing.assert_allclose(y, u, atol=1e-10)
    np.testing.assert_allclose(node.jacobian(X3, y, ctx),
                               (np.eye(3) - np.outer(u, u)) / np.linalg.norm(X3), atol=1e-8)
