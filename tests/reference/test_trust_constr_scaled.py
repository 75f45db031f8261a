"""method="trust-constr" on an objective ×1e-6: its steps are as small as the gradient, it ran
out of iterations ~0.5 away from the answer, and SLSQP from there ended 2e-8 infeasible, so the
node raised "did not converge" on plain ball projections (2 random x in 60). The solver now runs
trust-constr once more on f/s when the first answer fails the KKT test."""
import autograd.numpy as anp
import numpy as np
import pytest

from ddn.reference import IneqConstrainedNode


class ScaledBall(IneqConstrainedNode):
    """s · ½‖u − x‖² s.t. ‖u‖² ≤ 1: y = x/max(1, ‖x‖) whatever the scale s > 0."""

    def __init__(self, m, s, **kw):
        super().__init__(m, m, **kw)
        self.s = s

    def objective(self, x, y):
        return self.s * 0.5 * anp.sum((y - x) ** 2)

    def inequality_constraints(self, x, y):
        return anp.dot(y, y) - 1.0


@pytest.mark.parametrize("x", [[-0.43, -4.04, -0.46, -1.73, 6.65],
                               [0.348, -3.005, -0.331, -1.495, 0.252],
                               [0.349, 5.826, -1.531, -1.808, -0.07]])
def test_trust_constr_on_a_tiny_objective_projects_onto_the_ball(x):
    x = np.array(x)
    node = ScaledBall(5, 1e-6, method="trust-constr")
    y, ctx = node.solve(x)
    np.testing.assert_allclose(y, x / np.linalg.norm(x), atol=1e-12)
    assert ctx["active"] == [0]
    r = np.linalg.norm(x)
    np.testing.assert_allclose(node.jacobian(x, y, ctx), (np.eye(5) - np.outer(y, y)) / r,
                               atol=1e-10)


def test_trust_constr_answer_found_first_time_is_unchanged():
    """The extra run happens only when the first answer fails: an ordinary problem keeps it."""
    x = np.array([0.1, -0.2, 0.3, 0.0, 0.2])  # inside the ball: y = x
    y, _ = ScaledBall(5, 1.0, method="trust-constr").solve(x)
    np.testing.assert_allclose(y, x, atol=1e-12)
