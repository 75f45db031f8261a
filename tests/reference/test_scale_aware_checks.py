"""Fourth audit round: the reference floor's second-order, multiplier and feasibility tests must
not depend on how the objective or the constraints are scaled (c·f, c·h for c = 1e-9 … 1e9)."""
import warnings

import autograd.numpy as anp
import numpy as np
import pytest

from ddn import DDNError, DDNWarning
from ddn.check import check_gradient
from ddn.reference import (DeclarativeNode, EqConstrainedNode, FeasibilityNode,
                           FixedEqConstrainedNode, IneqConstrainedNode)

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


SCALES = [1e-9, 1e-4, 1.0, 1e4, 1e9]


def _quiet(fn):
    """fn() with every DDNWarning an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DDNWarning)
        return fn()


@pytest.mark.parametrize("c", SCALES)
def test_maximum_or_farthest_point_of_a_scaled_objective_is_named(c):
    # the second-order test had an absolute floor, −1e-8·max(1, |ev|): the maximum of c·f
    # with c = 1e-9 (eigenvalue −1e-9) passed silently
    class Maximum(DeclarativeNode):
        def objective(self, x, y):
            return c * anp.sum(-0.5 * y ** 2 + x * y)

        def solve(self, x):
            return x.copy(), {}

    class Farthest(FixedEqConstrainedNode):  # c·‖y − x‖² on the unit sphere
        def objective(self, x, y):
            return c * anp.sum((y - x) ** 2)

        def constraint(self, y):
            return anp.sum(y ** 2) - 1

    with pytest.warns(DDNWarning, match="not a minimum"):
        Maximum(2, 2).jacobian(np.ones(2))
    u = X3 / np.linalg.norm(X3)
    with pytest.warns(DDNWarning, match="not a minimum"):
        Farthest(3, 3).jacobian(X3, -u)
    _quiet(lambda: Farthest(3, 3).jacobian(X3, u))  # the minimum


class FlatSphere(EqConstrainedNode):
    """(1 + x₀²)·c‖y‖² on the unit sphere: every point is a minimum, for every x. H = D²f − λD²h
    is 0 up to rounding (λ = c(1 + x₀²)); the minimum-norm Dy (singular='pinv') is 0."""
    c = 1.0

    def objective(self, x, y):
        return self.c * (1 + x[0] ** 2) * anp.sum(y ** 2)

    def equality_constraints(self, x, y):
        return anp.sum(y ** 2) - 1


@pytest.mark.parametrize("c", SCALES)
def test_hessian_that_is_rounding_noise_is_singular(c):
    # H was pure rounding noise (1e-16·c) with a small condition number of its own: the default
    # singular='error' and 'pinv' inverted it and returned an O(1) random Dy without a word
    rng = np.random.default_rng(3)
    FlatSphere.c = c
    try:
        for _ in range(4):
            x, y = rng.normal(size=3), rng.normal(size=3)
            y /= np.linalg.norm(y)
            with pytest.raises(DDNError, match="singular"):
                FlatSphere(3, 3).jacobian(x, y)
            node = FlatSphere(3, 3, singular="pinv")  # a genuine (degenerate) minimum: quiet
            np.testing.assert_array_equal(_quiet(lambda: node.jacobian(x, y)), 0.0)
            np.testing.assert_array_equal(_quiet(lambda: node.vjp(x, np.ones(3), y)), 0.0)
    finally:
        FlatSphere.c = 1.0


@pytest.mark.parametrize("c", SCALES)
def test_degenerate_minima_are_not_called_saddles(c):
    class Valley(DeclarativeNode):  # c(y₀ + y₁ − x₀)²: singular H, a line of minima
        def objective(self, x, y):
            return c * (y[0] + y[1] - x[0]) ** 2

    J = _quiet(lambda: Valley(1, 2, singular="pinv").jacobian(np.array([0.4]),
                                                             np.array([0.3, 0.1])))
    np.testing.assert_allclose(J, [[0.5], [0.5]])

    class Quadrant(IneqConstrainedNode):  # c(y₀y₁ + 0.1‖y‖²) on y ≤ 0: strict minimum at 0
        def objective(self, x, y):
            return c * (y[0] * y[1] + 0.1 * anp.sum(y ** 2) - anp.dot(x, y))

        def inequality_constraints(self, x, y):
            return y

    # both constraints weakly active; H is indefinite but ⪰ 0 where they hold (y = 0): dropping
    # them (weakly_active='unconstrained') must not turn the minimum into a 'saddle'
    for side in ("constrained", "unconstrained"):
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always", DDNWarning)
            Quadrant(2, 2, weakly_active=side).jacobian(np.zeros(2), np.zeros(2))
        text = " ".join(str(w.message) for w in got)
        assert "weakly active" in text and "not a minimum" not in text


def _cube_root(c):
    class CubeRootScaled(FeasibilityNode):  # c(y³ − x) = 0: y = ∛x, Dy = diag(1/(3y²))
        def equality_constraints(self, x, y):
            return c * (y ** 3 - x)
    return CubeRootScaled


@pytest.mark.parametrize("c", [1e-14, 1e-12, 1e-9, 1.0, 1e8, 1e11])
def test_feasibility_node_with_scaled_constraints(c):
    # feas_tol was absolute: ×1e-12 accepted y = 0 (|h| = 1.2e-12 ≤ 1e-8) without a word,
    # ×1e-9 'did not converge', ×1e8 and above 'no point satisfies the constraints' (|h| at
    # its rounding level, 2e-8, was above feas_tol)
    node = _cube_root(c)(3, 3)
    y, ctx = node.solve(X3)
    np.testing.assert_allclose(y, np.cbrt(X3), rtol=1e-12)
    J = _quiet(lambda: node.jacobian(X3, y, ctx))
    np.testing.assert_allclose(J, np.diag(1 / (3 * np.cbrt(X3) ** 2)), rtol=1e-9)


@pytest.mark.parametrize("c", [1e-12, 1.0, 1e9])
def test_projection_onto_a_sphere_written_tiny_is_on_the_sphere(c):
    # ‖y‖² = 100 written ×1e-12: SLSQP stopped at y = x (|h| = 1e-10 ≤ feas_tol), returned as
    # the projection without a word
    class Sphere10(EqConstrainedNode):
        def objective(self, x, y):
            return anp.sum((y - x) ** 2)

        def equality_constraints(self, x, y):
            return c * (anp.sum(y ** 2) - 100)

    y, _ = Sphere10(3, 3).solve(X3)
    np.testing.assert_allclose(y, 10 * X3 / np.linalg.norm(X3), rtol=1e-12)


def test_feas_tol_keeps_its_meaning_for_ordinary_constraints():
    node = _cube_root(1.0)(3, 3)
    y = np.cbrt(X3) * 1.001
    assert node.violation(X3, y) == np.max(np.abs(y ** 3 - X3))  # |h| as written
    assert node.violation(X3, np.cbrt(X3)) <= 1e-15


def test_rounding_level_violation_of_a_large_constraint_is_feasible():
    # ‖y‖² = 1e10: |h| at the correctly rounded y is ~1e-6 (eps × 1e10), above feas_tol = 1e-8
    class BigSphere(EqConstrainedNode):
        def objective(self, x, y):
            return anp.sum((y - x) ** 2)

        def equality_constraints(self, x, y):
            return anp.sum(y ** 2) - 1e10

    node = BigSphere(3, 3)
    u = 1e5 * X3 / np.linalg.norm(X3)
    assert node.violation(X3, u) == 0.0 and node.violation(X3, u * (1 + 1e-9)) > 1e-8
    assert check_gradient(node, 1.3e5 * X3).ok


def test_shortcut_gradient_names_a_y_that_is_not_stationary():
    # Eq. 12 (dJ/dx = D_X f) needs D_Y f = 0; a y that is not stationary returned D_X f there
    # without a word, while upper_gradient / vjp at the same y warned
    from ddn.reference import shortcut_gradient, upper_gradient
    from ddn.reference.examples import QuadraticNode

    node = QuadraticNode(2 * np.eye(2), np.eye(2))
    x = np.array([1.0, 2.0])
    y, _ = node.solve(x)
    g = _quiet(lambda: shortcut_gradient(node, x, y))
    np.testing.assert_allclose(g, upper_gradient(node.objective, node, x), atol=1e-12)
    with pytest.warns(DDNWarning, match="not a stationary point"):
        shortcut_gradient(node, x, np.array([5.0, 5.0]))


def test_ball_constraint_times_1e9_passes_its_gradient_check():
    # at x ± δ SLSQP stopped ~150 ulps outside g = 1e9(‖y‖² − 1) ('Positive directional
    # derivative for linesearch'), above the rounding allowance: 'no feasible point found'
    rep = check_gradient(_ball(1e9)(3, 3), X3)
    assert rep.ok and rep.max_rel_error < 1e-8, rep


def _ball_f(c):
    class BallScaledObjective(IneqConstrainedNode):  # c‖y − x‖² on the unit ball
        def objective(self, x, y):
            return c * anp.sum((y - x) ** 2)

        def inequality_constraints(self, x, y):
            return anp.sum(y ** 2) - 1
    return BallScaledObjective


@pytest.mark.parametrize("c", [1e-9, 1e-6, 1.0, 1e9])
def test_ball_projection_with_scaled_objective_is_strongly_active(c):
    # the multiplier tolerance was (active tol)·(1 + ‖D_Y f‖∞), absolute for a small f: with
    # the objective ×1e-9, λ ~ 4e-10 was 'weakly active' and 'unconstrained' gave Dy = I
    node = _ball_f(c)(3, 3, weakly_active="unconstrained")
    y, ctx = node.solve(X3)
    J = _quiet(lambda: node.jacobian(X3, y, ctx))
    u = X3 / np.linalg.norm(X3)
    np.testing.assert_allclose(J, (np.eye(3) - np.outer(u, u)) / np.linalg.norm(X3), atol=1e-9)
    with pytest.warns(DDNWarning, match="weakly active"):  # x on the sphere: still named
        _ball_f(c)(3, 3).jacobian(u, u)


@pytest.mark.parametrize("c", [1e-9, 1e-6, 1.0, 1e9])
def test_multipliers_of_the_wrong_sign_are_named_for_a_scaled_objective(c):
    # ctx['multipliers'] were checked against 1e-6·(1 + |λ|), absolute for a small objective:
    # the negated λ of f ×1e-6 passed and Dy was off by 6e-3 without a word
    class MovingSphereScaled(EqConstrainedNode):
        def objective(self, x, y):
            return c * (anp.sum((y - x) ** 2) + 0.3 * y[0] * y[1])

        def equality_constraints(self, x, y):
            return anp.sum(y ** 2) - 1 - x[0] ** 2

    node = MovingSphereScaled(3, 3)
    x = np.array([0.3, -0.5, 0.8])
    y, ctx = node.solve(x)
    J = _quiet(lambda: node.jacobian(x, y, ctx))  # the solver's own λ: quiet
    with pytest.warns(DDNWarning, match="sign convention"):
        J_bad = node.jacobian(x, y, {"multipliers": -ctx["multipliers"]})
    assert np.abs(J_bad - J).max() > 1e-3


def _exp_node(c):
    class ExpScaled(DeclarativeNode):  # c·Σ(eʸ − xy): y = log x, Dy = diag(1/x)
        def objective(self, x, y):
            return c * anp.sum(anp.exp(y) - x * y)
    return ExpScaled


@pytest.mark.parametrize("c", [1e-12, 1e-9, 1e-6, 1.0, 1e6])
def test_default_newton_solver_is_scale_invariant(c):
    # it stopped at ‖∇f‖∞ ≤ tol·(1 + ‖∇f(y0)‖∞), absolute for a small objective: f ×1e-12 came
    # back as y0 = 0 (1.1 off), f ×1e-9 3.5e-3 off, without a word
    x = np.array([0.5, 3.0])
    node = _exp_node(c)(2, 2)
    y, ctx = node.solve(x)
    np.testing.assert_allclose(y, np.log(x), atol=1e-14)
    np.testing.assert_allclose(_quiet(lambda: node.jacobian(x, y, ctx)), np.diag(1 / x),
                               rtol=1e-10)


@pytest.mark.parametrize("c", [1e-9, 1e-6, 1.0, 1e9])
def test_y_that_is_not_stationary_is_named_for_a_scaled_objective(c):
    # residual_tol = 1e-6 was absolute: with f ×1e-9 a y 0.1 from the stationary point
    # (‖D_Y f‖ = 1e-10) got −H⁻¹B without a word
    class Shifted(DeclarativeNode):
        def objective(self, x, y):
            return c * anp.sum(0.5 * y ** 2 - x * y)

        def solve(self, x):
            return x + 0.1, {}

    with pytest.warns(DDNWarning, match="not a stationary point"):
        Shifted(2, 2).jacobian(np.ones(2))


@pytest.mark.parametrize("c", [1e-14, 1e-12, 1.0])
def test_trust_constr_on_a_tiny_objective_finds_the_projection(c):
    # its answer was accepted against tol·(1 + ‖D_Y f‖∞), absolute for f ×1e-12: the ball
    # projection came back 0.56 off (×1e-14: y0 = 0 itself), without a word
    y, _ = _ball_f(c)(3, 3, method="trust-constr").solve(X3)
    np.testing.assert_allclose(y, X3 / np.linalg.norm(X3), atol=1e-12)


@pytest.mark.parametrize("c_h, c_f", [(1e-12, 1.0), (1e-9, 1.0), (1e-6, 1e9), (1.0, 1.0)])
def test_cor_4_7_with_a_small_constraint_next_to_a_large_objective(c_h, c_f):
    # aᵀH⁻¹a was compared with 1e-12·max(1, Σ|terms|), absolute: the unit sphere written ×1e-9
    # next to an O(1) objective (aᵀH⁻¹a ~ 1e-18) raised 'aᵀH⁻¹a = 0 … sum of squares?'
    class Sphere(FixedEqConstrainedNode):
        def objective(self, x, y):
            return c_f * anp.sum((y - x) ** 2)

        def constraint(self, y):
            return c_h * (anp.sum(y ** 2) - 1)

    u = X3 / np.linalg.norm(X3)
    J = _quiet(lambda: Sphere(3, 3).jacobian(X3, u))
    np.testing.assert_allclose(J, (np.eye(3) - np.outer(u, u)) / np.linalg.norm(X3), atol=1e-12)


def test_cor_4_7_still_refuses_a_zero_constraint_gradient():
    from ddn.reference import cor_4_7_jacobian
    with pytest.raises(DDNError, match="aᵀH⁻¹a = 0"):
        cor_4_7_jacobian(np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(DDNError, match="aᵀH⁻¹a = 0"):  # H⁻¹ cancels on a: aᵀH⁻¹a = 1 − 1
        cor_4_7_jacobian(np.diag([1.0, -1.0]), np.ones(2), np.eye(2))


@pytest.mark.parametrize("c", [1e-12, 1.0, 1e9])
def test_tangent_space_of_a_small_constraint(c):
    # the tangent space Z came from the singular values of A above 1e-10·max(1, σ_max): a plane
    # written ×1e-12 had 'rank 0', so H was tested on all of R³ and a minimum on the plane
    # (H = diag(2, 2, −6), ⪰ 0 along it) was called 'not a minimum'
    class OnPlane(EqConstrainedNode):
        def objective(self, x, y):
            return y[0] ** 2 + y[1] ** 2 - 3 * y[2] ** 2 - x[0] * y[0] - x[1] * y[1]

        def equality_constraints(self, x, y):
            return c * (y[2] - x[2])

    x = np.array([0.4, -0.2, 0.7])
    J = _quiet(lambda: OnPlane(3, 3).jacobian(x, np.array([0.2, -0.1, 0.7])))
    np.testing.assert_allclose(J, np.diag([0.5, 0.5, 1.0]), atol=1e-12)


@pytest.mark.parametrize("c", [1.0, 1e-9, 1e-12, 1e-15])
def test_default_newton_solver_on_a_small_nonconvex_objective(c):
    # from an indefinite start the damping τ was ≥ 1e-8·max(1, ‖H‖): for f ×1e-12 the steps
    # were 1e-4 of Newton's and 'Newton did not converge in 100 iterations'
    class DoubleWell(DeclarativeNode):
        def objective(self, x, y):
            return c * anp.sum(0.25 * y ** 4 - 0.5 * y ** 2 - x * y)

        def initial_guess(self, x):
            return np.full(2, 0.1)

    x = np.array([0.1, -0.2])
    y, ctx = DoubleWell(2, 2).solve(x)
    np.testing.assert_allclose(y, [1.0466805318046024, -1.0880339146912894], rtol=1e-12)
    assert ctx["iterations"] <= 10
