"""x = 0 on the L1 / L∞ sphere is a degenerate point (every (±r/n, …), resp. every ±r e_i, is
nearest): the reference nodes returned the chosen branch's gradient without a word, where the
L2 sphere and ddn.torch (for p = 1, 2, ∞) warn."""
import numpy as np
import pytest

from ddn import DDNWarning
from ddn.reference import BallProjectionNode, SphereProjectionNode


@pytest.mark.parametrize("p, branch", [(1, [1 / 3, 1 / 3, 1 / 3]), (float("inf"), [1, 0, 0])])
def test_zero_on_l1_linf_sphere_warns_and_keeps_the_branch_gradient(p, branch):
    node, x = SphereProjectionNode(p, 1.0), np.zeros(3)
    y, ctx = node.solve(x)
    np.testing.assert_allclose(y, branch)
    with pytest.warns(DDNWarning, match="x = 0 onto the L"):
        J = node.jacobian(x, y, ctx)
    with pytest.warns(DDNWarning, match="not differentiable"):
        g = node.vjp(x, np.array([1.0, 2.0, 4.0]), y, ctx)
    np.testing.assert_allclose(g, np.array([1.0, 2.0, 4.0]) @ J)
    want = np.eye(3) - 1 / 3 if p == 1 else np.diag([0.0, 1.0, 1.0])
    np.testing.assert_allclose(J, want, atol=1e-15)


@pytest.mark.parametrize("p", [1, 2, float("inf")])
def test_zero_in_the_ball_is_ordinary(p):
    node, x = BallProjectionNode(p, 1.0), np.zeros(3)
    np.testing.assert_allclose(node.jacobian(x), np.eye(3))  # inside: y = x, no warning


@pytest.mark.parametrize("p", [1, float("inf")])
def test_nonzero_x_does_not_warn(p):
    node, x = SphereProjectionNode(p, 1.0), np.array([0.0, 0.2, -0.1])
    node.jacobian(x)  # a zero coordinate alone is a documented branch, not x = 0
