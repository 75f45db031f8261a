"""Regression tests from the adversarial audit of the reference floor."""
import autograd.numpy as anp
import numpy as np
import pytest

from ddn import DDNWarning
from ddn.check import finite_difference_jacobian
from ddn.reference import DeclarativeNode, EqConstrainedNode


class Shifted(DeclarativeNode):
    """f = ½‖y‖² − xᵀy, y = x; solve returns a wrong y (x + 0.1): not a stationary point."""

    def objective(self, x, y):
        return anp.sum(0.5 * y ** 2 - x * y)

    def solve(self, x):
        return x + 0.1, {}


def test_non_stationary_y_is_named_in_jacobian_and_vjp():
    node = Shifted(2, 2)
    with pytest.warns(DDNWarning, match="not a stationary point"):
        node.jacobian(np.ones(2))
    with pytest.warns(DDNWarning, match="not a stationary point"):
        node.vjp(np.ones(2), np.ones(2))


class MovingSphere(EqConstrainedNode):
    """min ‖y − x‖² + 0.3 y₀y₁ s.t. ‖y‖² = 1 + x₀², y₂ = x₁ y₀ (constraints move with x)."""

    def objective(self, x, y):
        return anp.sum((y - x) ** 2) + 0.3 * y[0] * y[1]

    def equality_constraints(self, x, y):
        return anp.array([anp.sum(y ** 2) - (1 + x[0] ** 2), y[2] - x[1] * y[0]])

    def initial_guess(self, x):
        return x / np.linalg.norm(x)


@pytest.mark.parametrize("solver", ["dense", "minres"])
def test_x_dependent_constraints_match_finite_differences(solver):
    node = MovingSphere(4, 4, linear_solver=solver)
    x = np.array([0.3, -0.5, 0.8, 0.2])
    J = node.jacobian(x)
    Jfd = finite_difference_jacobian(lambda z: node.solve(z)[0], x, eps=1e-6)
    np.testing.assert_allclose(J, Jfd, atol=1e-8)
    v = np.random.default_rng(0).standard_normal(4)
    np.testing.assert_allclose(node.vjp(x, v), v @ Jfd, atol=1e-8)


def test_multipliers_of_the_wrong_sign_convention_are_named():
    """A solver that returns λ for L = f + λᵀh (the other convention) used to give a silently
    wrong H = D²_YY(f − λᵀh) and Dy; the right λ stays quiet."""
    node = MovingSphere(4, 4)
    x = np.array([0.3, -0.5, 0.8, 0.2])
    y, ctx = node.solve(x)
    J = node.jacobian(x, y, ctx)
    with pytest.warns(DDNWarning, match="sign convention"):
        J_bad = node.jacobian(x, y, {"multipliers": -ctx["multipliers"]})
    assert np.abs(J_bad - J).max() > 1e-3


def test_a_stationary_point_that_is_not_a_minimum_is_named():
    """Prop. 4.4 holds at any stationary point, but a maximum (or the farthest point of a sphere)
    handed to the backward pass was silent; the minimum stays quiet."""
    from ddn.reference import FixedEqConstrainedNode

    class Maximum(DeclarativeNode):
        def objective(self, x, y):
            return anp.sum(-0.5 * y ** 2 + x * y)

        def solve(self, x):
            return x.copy(), {}

    with pytest.warns(DDNWarning, match="not a minimum"):
        J = Maximum(2, 2).jacobian(np.ones(2))
    np.testing.assert_allclose(J, np.eye(2))  # still that stationary point's Dy

    class Farthest(FixedEqConstrainedNode):  # min ‖y − x‖² on the unit sphere
        def objective(self, x, y):
            return anp.sum((y - x) ** 2)

        def constraint(self, y):
            return anp.sum(y ** 2) - 1

    x = np.array([0.6, -0.3, 1.2])
    u = x / np.linalg.norm(x)
    Farthest(3, 3).jacobian(x, u)  # the minimum: quiet
    with pytest.warns(DDNWarning, match="not a minimum"):
        Farthest(3, 3).jacobian(x, -u)


def test_reference_truncated_quadratic_on_quantized_data_is_a_local_minimum():
    # Integer data with α = 1 put samples exactly on the kink |y − x_i| = α at the MM fixed
    # point: x = (0,0,0,0,1,5,5,5) stopped at y = 0 with f = 2.0, though y = 0.2 has f = 1.9
    # (the concave kink lets f drop toward x = 1). The ground truth must be a local minimum, and
    # the same one the torch floor finds.
    from ddn.reference.pooling import robust_pool
    x = np.array([0, 0, 0, 0, 1, 5, 5, 5], dtype=float)

    def f(y):
        return 0.5 * np.minimum((y - x) ** 2, 1.0).sum()
    y = robust_pool(x, "truncated-quadratic", 1.0)
    assert f(y) < 2.0 - 1e-3
    assert min(f(y + 1e-4), f(y - 1e-4)) >= f(y)
    rng = np.random.default_rng(5)
    for _ in range(200):
        x = rng.integers(0, 6, 8).astype(float)
        y = robust_pool(x, "truncated-quadratic", 1.0)
        assert min(f(y + 1e-4), f(y - 1e-4)) >= f(y) - 1e-12, x
