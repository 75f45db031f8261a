"""Audit regressions for the reference floor's default solvers and backward rules on problems the
node table does not cover: degenerate default starts, scaled objectives, singular H with a
regular KKT system, composition with a given y."""
import autograd.numpy as anp
import numpy as np
import pytest

import ddn.reference as R
from ddn.reference.examples import ProbabilitySimplexNode
from ddn import DDNError, DDNWarning
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


class ScaledBall(R.IneqConstrainedNode):
    """s · ½‖u − x‖² s.t. ‖u‖² ≤ 1: y = x/max(1, ‖x‖) whatever the scale s > 0."""

    def __init__(self, m, s, **kw):
        super().__init__(m, m, **kw)
        self.s = s

    def objective(self, x, y):
        return self.s * 0.5 * anp.sum((y - x) ** 2)

    def inequality_constraints(self, x, y):
        return anp.dot(y, y) - 1.0


class ScaledSimplex(ProbabilitySimplexNode):
    """s · ½‖u − x‖² s.t. 1ᵀu = 1, u ≥ 0 (mixed equality and inequality constraints): the
    probability-simplex example with its objective scaled by s (same constraints, same guess)."""

    def __init__(self, m, s, **kw):
        super().__init__(m, **kw)
        self.s = s

    def objective(self, x, y):
        return self.s * super().objective(x, y)


class ScaledSphereAndPlane(R.EqConstrainedNode):
    """s · (½‖u − x‖² + 0.1 Σu⁴) s.t. ‖u‖² = 1, u₀ = u₁ (two equality constraints, n = m = 5)."""

    def __init__(self, s):
        super().__init__(5, 5)
        self.s = s

    def objective(self, x, y):
        return self.s * (0.5 * anp.sum((y - x) ** 2) + 0.1 * anp.sum(y ** 4))

    def equality_constraints(self, x, y):
        return anp.stack([anp.sum(y ** 2) - 1.0, y[0] - y[1]])


XS = np.array([[1.2, -3.1, 0.4, 2.2, -0.9], [-0.3, 0.8, 2.5, -1.7, 1.1]])


@pytest.mark.parametrize("s", [1e4, 1e6])
@pytest.mark.parametrize("x", XS, ids=["x0", "x1"])
def test_default_solver_on_a_large_objective(s, x):
    # SLSQP on s·f with s = 1e4 stopped at a constraint violation of ~1e-7 ("Positive directional
    # derivative for linesearch") and the node said "no feasible point found"
    ball = ScaledBall(5, s)
    np.testing.assert_allclose(ball.solve(x)[0], x / max(1.0, np.linalg.norm(x)), atol=1e-10)
    assert check_gradient(ball, x).ok
    simplex = ScaledSimplex(5, s)
    np.testing.assert_allclose(simplex.solve(x)[0], R.project_simplex(x), atol=1e-10)
    assert check_gradient(simplex, x).ok


@pytest.mark.parametrize("s", [1e-4, 1e-6])
@pytest.mark.parametrize("x", XS, ids=["x0", "x1"])
def test_default_solver_on_a_small_objective_is_accurate(s, x):
    # the KKT polish stopped at ‖F‖ ≤ 1e-3·tol, an absolute stationarity residual: with f ×1e-4
    # that left y wrong by ~1e-9 and Dy disagreed with finite differences by 1e-5
    node = ScaledSphereAndPlane(s)
    rep = check_gradient(node, x)
    assert rep.ok, rep
    y_ref = ScaledSphereAndPlane(1.0).solve(x)[0]  # the minimizer does not depend on s
    np.testing.assert_allclose(node.solve(x)[0], y_ref, atol=1e-12)


def test_composed_node_uses_the_given_y_or_says_it_cannot():
    # TwoSolutionNode(-1) returns y = −1/√x; a ComposedNode given the other solution y = +1/√x
    # (without ctx) re-solved, ignored y and returned the gradient of −1/√x, of the wrong sign
    x = np.array([2.0])
    chain = R.ComposedNode(R.TwoSolutionNode(-1))
    y_other = np.array([1.0 / np.sqrt(2.0)])
    with pytest.raises(DDNError, match="forward pass"):
        chain.jacobian(x, y_other)
    with pytest.raises(DDNError, match="forward pass"):
        chain.vjp(x, np.ones(1), y_other)
    y, ctx = chain.solve(x)
    np.testing.assert_allclose(chain.jacobian(x, y), R.TwoSolutionNode(-1).closed_form_jacobian(x))
    np.testing.assert_allclose(chain.vjp(x, np.ones(1), y, ctx), [1 / (2 * 2.0 ** 1.5)])
    with pytest.raises(DDNError, match="shape"):
        chain.jacobian(np.ones(2), y, ctx)  # x unchecked when ctx was given


# ---- H = D²_YY L singular, but the KKT matrix [[H, −Aᵀ], [A, 0]] is not: y is isolated ---------
class ChainedCopy(R.LinEqConstrainedNode):
    """½(u₁ − x₁)² + x₂u₂ s.t. u₁ = u₂  ⇒  y = (x₁ − x₂)(1, 1), Dy = [[1, −1], [1, −1]]."""

    def __init__(self, **kw):
        super().__init__(2, 2, **kw)

    def objective(self, x, y):
        return 0.5 * (y[0] - x[0]) ** 2 + x[1] * y[1]

    def linear_constraints(self):
        return np.array([[1.0, -1.0]]), np.zeros(1)


class MovingCopy(R.EqConstrainedNode):
    """½(u₁ − x₁)² s.t. u₁ − u₂ − x₂ = 0 (C ≠ 0)  ⇒  y = (x₁, x₁ − x₂), Dy = [[1, 0], [1, −1]]."""

    def __init__(self):
        super().__init__(2, 2)

    def objective(self, x, y):
        return 0.5 * (y[0] - x[0]) ** 2

    def equality_constraints(self, x, y):
        return y[0] - y[1] - x[1]


class OnCubic(R.FixedEqConstrainedNode):
    """½(u₁ − x)² s.t. u₂ − u₁³ = 0  ⇒  y = (x, x³), λ = 0, H = diag(1, 0), Dy = (1, 3x²)ᵀ."""

    def __init__(self):
        super().__init__(1, 2)

    def objective(self, x, y):
        return 0.5 * (y[0] - x[0]) ** 2

    def constraint(self, y):
        return y[1] - y[0] ** 3


SINGULAR_H_ISOLATED_Y = {
    "cor4.9": (ChainedCopy, np.array([0.7, 0.2]), np.array([[1.0, -1.0], [1.0, -1.0]])),
    "prop4.5": (MovingCopy, np.array([0.7, 0.2]), np.array([[1.0, 0.0], [1.0, -1.0]])),
    "cor4.7": (OnCubic, np.array([0.7]), np.array([[1.0], [3 * 0.49]])),
}


@pytest.mark.parametrize("case", list(SINGULAR_H_ISOLATED_Y))
def test_singular_h_with_a_regular_kkt_system(case):
    # Prop. 4.5 needs H⁻¹; the nodes refused these well-posed problems ("H is singular: the
    # solution is not isolated"), and the remedy the message offered, singular='pinv', gave Dy = 0
    make, x, Dy = SINGULAR_H_ISOLATED_Y[case]
    node = make()
    y, ctx = node.solve(x)
    np.testing.assert_allclose(node.jacobian(x, y, ctx), Dy, atol=1e-9)
    v = np.array([0.3, -1.1])
    np.testing.assert_allclose(node.vjp(x, v, y, ctx), v @ Dy, atol=1e-9)
    assert check_gradient(node, x).ok
    if case == "cor4.9":
        np.testing.assert_allclose(ChainedCopy(singular="pinv").jacobian(x), Dy, atol=1e-9)


def test_singular_h_and_singular_kkt_still_names_the_remedies():
    class FreeCoordinate(R.LinEqConstrainedNode):  # y₂ appears nowhere: not isolated
        def objective(self, x, y):
            return 0.5 * (y[0] - x[0]) ** 2 + 0.0 * y[2]

        def linear_constraints(self):
            return np.array([[1.0, 1.0, 0.0]]), np.ones(1)

        def solve(self, x):
            return np.array([x[0], 1 - x[0], 0.0]), {}

    with pytest.raises(DDNError, match="singular"):
        FreeCoordinate(1, 3).jacobian(np.array([0.3]))


@pytest.mark.parametrize("x, s", [(XS[0], 1.0), (XS[1], 1e4)], ids=["x0-1", "x1-1e4"])
def test_trust_constr_finds_the_active_inequalities(x, s):
    # trust-constr stops strictly inside an active inequality (g ≈ −1e-6), the KKT check missed
    # the constraint, and a plain ball projection (the default initial guess 0) raised "did not
    # converge" for every x outside the ball
    ball = ScaledBall(5, s, method="trust-constr")
    np.testing.assert_allclose(ball.solve(x)[0], x / max(1.0, np.linalg.norm(x)), atol=1e-10)
    assert check_gradient(ball, x).ok
    simplex = ScaledSimplex(5, s, method="trust-constr")
    np.testing.assert_allclose(simplex.solve(x)[0], R.project_simplex(x), atol=1e-10)


class BoxCorner(R.IneqConstrainedNode):
    """½‖u − x‖² s.t. u₁ ≤ 1, u₂ ≤ 1, u₁ + u₂ ≤ 2: at x > (1, 1) all three are active in R²
    (non-regular, Sec. 4.7.3); y = (1, 1) and Dy = 0 near such x."""

    def __init__(self, **kw):
        super().__init__(2, 2, **kw)

    def objective(self, x, y):
        return 0.5 * anp.sum((y - x) ** 2)

    def inequality_constraints(self, x, y):
        return anp.stack([y[0] - 1.0, y[1] - 1.0, y[0] + y[1] - 2.0])


@pytest.mark.parametrize("mode", ["lstsq", "drop", "pinv"])
def test_nonregular_corner_has_sign_feasible_multipliers(mode):
    # the minimum-norm λ of Eq. 32 was (−0.23, +0.03, −0.27): the node warned "λ > 0 ... y is not
    # a KKT point" and check_gradient failed, though λ = (−0.3, 0, −0.2) ≤ 0 satisfies the KKT
    # conditions and Dy = 0 is right
    node = BoxCorner(nonregular=mode)
    x = np.array([1.5, 1.2])
    y, ctx = node.solve(x)
    np.testing.assert_allclose(y, [1.0, 1.0], atol=1e-12)
    assert np.all(ctx["multipliers"] <= 1e-12)
    with pytest.warns(DDNWarning, match="weakly active"):  # λ is not unique here: one is 0
        J = node.jacobian(x, y, ctx)
    np.testing.assert_allclose(J, np.zeros((2, 2)), atol=1e-12)
    assert check_gradient(node, x).ok


class NormPenalty(R.DeclarativeNode):
    """‖u − x‖² + ‖u‖ (group-lasso shrinkage): y = (1 − 1/(2‖x‖)) x for ‖x‖ > ½,
    Dy = (1 − 1/(2‖x‖)) I + x xᵀ/(2‖x‖³)."""

    def objective(self, x, y):
        return anp.sum((y - x) ** 2) + anp.sqrt(anp.sum(y ** 2))


def test_newton_from_the_zero_default_guess_where_the_gradient_is_nan():
    # D_Y ‖u‖ is 0/0 at the default y0 = 0: the node raised "D_Y f is not finite at the initial
    # guess" on an ordinary problem whose solution is far from 0
    node = NormPenalty(3, 3)
    x = np.array([1.0, 2.0, -2.0])  # ‖x‖ = 3
    y, _ = node.solve(x)
    np.testing.assert_allclose(y, (1 - 1 / 6) * x, atol=1e-12)
    Dy = (1 - 1 / 6) * np.eye(3) + np.outer(x, x) / 54
    np.testing.assert_allclose(node.jacobian(x, y), Dy, atol=1e-10)
    assert check_gradient(node, x).ok


def test_proposition_jacobians_name_mismatched_shapes():
    # a B, A or a of the wrong size was a scipy ValueError ("Shapes of lu (3, 3) and b (2, 4)")
    H, B = np.eye(3), np.ones((3, 4))
    with pytest.raises(DDNError, match="B has shape"):
        R.prop_4_4_jacobian(H, np.ones((2, 4)))
    with pytest.raises(DDNError, match="A has shape"):
        R.prop_4_5_jacobian(H, np.ones((1, 2)), B, np.ones((1, 4)))
    with pytest.raises(DDNError, match="C has shape"):
        R.prop_4_5_jacobian(H, np.ones((1, 3)), B, np.ones((2, 4)))
    with pytest.raises(DDNError, match=r"a has shape \(2,\), expected \(3,\)"):
        R.cor_4_7_jacobian(H, np.ones(2), B)
    with pytest.raises(DDNError, match="A has shape"):
        R.cor_4_9_jacobian(H, np.ones((1, 2)), B)
    with pytest.raises(DDNError, match="C has shape"):
        R.feasibility_jacobian(np.eye(2), np.ones((3, 1)))
    np.testing.assert_allclose(R.prop_4_4_jacobian(2 * H, B), -B / 2)  # right shapes still work


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's own, from log(0) in f
def test_non_finite_hessian_is_named_not_an_svd_crash():
    # softmax of (0, 800): y₀ = e^−800 = 0, H = diag(1/y) has an Inf; the condition number's SVD
    # raised numpy's LinAlgError "SVD did not converge" instead of the DDNError that names it
    node = R.SoftmaxNode(2)
    with pytest.raises(DDNError, match="NaN/Inf"):
        node.jacobian(np.array([0.0, 800.0]))
    with pytest.raises(DDNError, match="NaN/Inf"):
        node.vjp(np.array([0.0, 800.0]), np.ones(2))


class ListConstraints(R.IneqConstrainedNode):
    """min ‖u − x‖² s.t. [‖u‖² − 1, u₀ − u₁] = 0 (a list), (u₂ − 0.5,) ≤ 0 (a tuple)."""

    def objective(self, x, y):
        return anp.sum((y - x) ** 2)

    def equality_constraints(self, x, y):
        return [anp.sum(y ** 2) - 1.0, y[0] - y[1]]

    def inequality_constraints(self, x, y):
        return (y[2] - 0.5,)

    def initial_guess(self, x):  # the feasible set is non-convex: start near the global minimum
        return np.full(3, 0.5)


def test_constraints_returned_as_a_list_are_differentiated():
    # anp.reshape of a list of traced scalars made a plain array: D_Y h was silently 0 and the
    # solver said "no feasible point found" on a feasible problem
    node, x = ListConstraints(3, 3), np.array([1.0, 2.0, 3.0])
    y, _ = node.solve(x)
    np.testing.assert_allclose(y, [np.sqrt(0.375), np.sqrt(0.375), 0.5], atol=1e-10)
    np.testing.assert_allclose(node.active_jacobian(x, y, [0]),
                               [[2 * y[0], 2 * y[1], 1.0], [1.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
    assert check_gradient(node, x).ok


def test_fixed_constraint_node_with_several_constraints_is_refused_everywhere():
    # Cor. 4.7 is for one constraint: jacobian() refused two, but vjp() and solve() went on
    class TwoFixed(R.FixedEqConstrainedNode):
        def objective(self, x, y):
            return 0.5 * anp.sum((y - x) ** 2)

        def constraint(self, y):
            return anp.stack([anp.sum(y ** 2) - 1.0, y[0] - y[1]])

        def solve(self, x):
            return np.array([np.sqrt(0.5), np.sqrt(0.5), 0.0]), {}

    node, x = TwoFixed(3, 3), np.array([1.0, 2.0, 0.0])
    for call in (lambda: node.jacobian(x), lambda: node.vjp(x, np.ones(3))):
        with pytest.raises(DDNError, match="one scalar"):
            call()


class UnitsBall(R.IneqConstrainedNode):
    """½‖u − x‖² s.t. c(‖u‖² − 1) ≤ 0: the same ball for every c > 0 (a constraint in other
    units)."""

    def __init__(self, c):
        super().__init__(3, 3)
        self.c = c

    def objective(self, x, y):
        return 0.5 * anp.sum((y - x) ** 2)

    def inequality_constraints(self, x, y):
        return self.c * (anp.dot(y, y) - 1.0)


@pytest.mark.parametrize("c", [1.0, 1e-3, 1e3])
def test_active_set_does_not_depend_on_the_constraint_units(c):
    # "active" was g ≥ −1e-8 on g itself: written ×1e-3, the ball counted as active 2.4e-6 inside
    # its surface, y = x got the sphere's Dy and a "λ > 0, not a KKT point" warning
    node = UnitsBall(c)
    x = np.array([0.6, 0.8 - 3e-6, 0.0])  # inside, 2.4e-6 from the sphere
    y, ctx = node.solve(x)
    np.testing.assert_allclose(y, x, atol=1e-12)
    np.testing.assert_allclose(node.jacobian(x, y, ctx), np.eye(3), atol=1e-12)
    x_out = np.array([1.2, 1.6, 0.0])  # outside: active at every scale
    y, ctx = node.solve(x_out)
    assert node.optimality(x_out, y, ctx).active == [0]
    np.testing.assert_allclose(node.jacobian(x_out, y, ctx),
                               (np.eye(3) - np.outer(y, y)) / 2.0, atol=1e-9)


# method="trust-constr" on an objective ×1e-6: its steps are as small as the gradient, it ran
# out of iterations ~0.5 away from the answer, and SLSQP from there ended 2e-8 infeasible, so the
# node raised "did not converge" on plain ball projections (2 random x in 60). The solver now runs
# trust-constr once more on f/s when the first answer fails the KKT test.
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
