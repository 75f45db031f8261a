"""One problem table, node × problem: every backward rule of the reference floor against central
finite differences of the node's own solver (float64, rtol 1e-6) and against a closed form, plus
jacobian/vjp consistency. The problems cover Prop. 4.4, 4.5, 4.6 (active, inactive, weakly
active), Cor. 4.7, 4.9, feasibility, non-regular points, singular Hessians, composition,
ImperativeNode and every example node."""
import warnings

import autograd.numpy as anp
import numpy as np
import pytest

from ddn import DDNWarning
from ddn.check import check_gradient, finite_difference_jacobian
from ddn.reference import (
    CircleLineNode, ComposedNode, DeclarativeNode, DirectionAlignmentNode, EqConstrainedNode,
    FeasibilityNode, HyperplaneProjectionNode, ImperativeNode, LinEqConstrainedNode,
    NormalizedDirectionAlignmentNode, ProbabilitySimplexNode, QuadraticNode, ReLUNode,
    SoftmaxNode, TwoSolutionNode, UnitBallNode, UnitSphereNode)

rng = np.random.default_rng(1234)  # fixed problem data (the table is built at import)


# ---- generic problems that use the default solvers ---------------------------------------------
class LogNode(DeclarativeNode):
    """Prop. 4.4, non-quadratic, default Newton: argmin Σ exp(u) − xᵀu = log x, Dy = diag(1/x)."""

    def objective(self, x, y):
        return anp.sum(anp.exp(y)) - anp.dot(x, y)

    @staticmethod
    def closed_form_jacobian(x):
        return np.diag(1.0 / x)


class MovingSphereNode(EqConstrainedNode):
    """Prop. 4.5 with a constraint that moves with x (C ≠ 0, D²_XY h ≠ 0), default SLSQP:
    project a fixed z onto the unit sphere centred at x: y = x + w/‖w‖, w = z − x,
    Dy = I − (I − ŵŵᵀ)/‖w‖."""

    def __init__(self, z):
        super().__init__(len(z), len(z))
        self.z = np.asarray(z, float)

    def objective(self, x, y):
        return 0.5 * anp.sum((y - self.z) ** 2)

    def equality_constraints(self, x, y):
        return anp.sum((y - x) ** 2) - 1.0

    def initial_guess(self, x):
        return self.z

    def closed_form_jacobian(self, x):
        w = self.z - x
        r = np.linalg.norm(w)
        wh = w / r
        return np.eye(x.size) - (np.eye(x.size) - np.outer(wh, wh)) / r


class QuadLinEqNode(LinEqConstrainedNode):
    """Cor. 4.9 with H ≠ I, default SLSQP: argmin ½uᵀPu + uᵀQx s.t. Au = b. Closed form from the
    KKT matrix [[P, Aᵀ], [A, 0]] [y; ν] = [−Qx; b]."""

    def __init__(self, P, Q, A, b):
        super().__init__(Q.shape[1], Q.shape[0])
        self.P, self.Q, self.A, self.b = P, Q, A, b

    def objective(self, x, y):
        return 0.5 * anp.dot(y, anp.dot(self.P, y)) + anp.dot(y, anp.dot(self.Q, x))

    def linear_constraints(self):
        return self.A, self.b

    def closed_form_jacobian(self, x):
        m, p = self.m, self.A.shape[0]
        K = np.block([[self.P, self.A.T], [self.A, np.zeros((p, p))]])
        return -np.linalg.solve(K, np.vstack([self.Q, np.zeros((p, self.n))]))[:m]


class OverdeterminedNode(EqConstrainedNode):
    """Sec. 4.7.3, three consistent constraints on y ∈ R²: u₁ = x, u₂ = 0, u₁ + u₂ = x
    (rank 2 = m < p = 3). y = (x, 0), Dy = (1, 0)ᵀ."""

    def __init__(self, **kw):
        super().__init__(1, 2, **kw)

    def objective(self, x, y):
        return 0.5 * anp.sum((y - anp.array([3.0, -2.0])) ** 2)

    def equality_constraints(self, x, y):
        return anp.stack([y[0] - x[0], y[1], y[0] + y[1] - x[0]])

    def solve(self, x):
        return np.array([self._check_x(x)[0], 0.0]), {}

    def closed_form_jacobian(self, x):
        return np.array([[1.0], [0.0]])


class RankDeficientNode(EqConstrainedNode):
    """Sec. 4.7.3, a repeated constraint: u₁ + u₂ = x twice (rank 1 < p = 2 < m = 3).
    y = c − ((c₁ + c₂ − x)/2)(1, 1, 0), Dy = (½, ½, 0)ᵀ."""

    c = np.array([0.3, -1.0, 2.0])

    def __init__(self, **kw):
        super().__init__(1, 3, **kw)

    def objective(self, x, y):
        return 0.5 * anp.sum((y - self.c) ** 2)

    def equality_constraints(self, x, y):
        s = y[0] + y[1] - x[0]
        return anp.stack([s, 2.0 * s])

    def solve(self, x):
        x = self._check_x(x)
        return self.c - (self.c[0] + self.c[1] - x[0]) / 2 * np.array([1.0, 1.0, 0.0]), {}

    def closed_form_jacobian(self, x):
        return np.array([[0.5], [0.5], [0.0]])


class CircleAboveLineNode(FeasibilityNode):
    """Feasibility with an inequality: u on the unit circle and u₂ ≥ x; the least-squares solver
    from (1, 0) stops on the line, so g is active and h̃ is square: y = (√(1 − x²), x)."""

    def __init__(self):
        super().__init__(1, 2)

    def equality_constraints(self, x, y):
        return y[0] ** 2 + y[1] ** 2 - 1.0

    def inequality_constraints(self, x, y):
        return x[0] - y[1]

    def initial_guess(self, x):
        return np.array([1.0, 0.0])

    @staticmethod
    def closed_form_jacobian(x):
        return np.array([[-x[0] / np.sqrt(1 - x[0] ** 2)], [1.0]])


class TanhLayer:
    """An explicit layer for ImperativeNode: tanh(Wx), D = diag(1 − tanh²) W."""

    def __init__(self, W):
        self.W = W

    def __call__(self, x):
        return anp.tanh(anp.dot(self.W, x))

    def jacobian(self, x):
        return (1 - np.tanh(self.W @ x) ** 2)[:, None] * self.W


def _composed():
    quad = QuadraticNode(np.array([[2.0, 0.5, 0], [0.5, 1.5, 0.2], [0, 0.2, 1.0]]),
                         rng.standard_normal((3, 2)), c=[0.5, -0.2, 1.0])
    sphere = UnitSphereNode(3)
    node = ComposedNode(quad, sphere)

    def cf(x):
        z = quad.closed_form(x)
        return sphere.closed_form_jacobian(z) @ quad.closed_form_jacobian(x)
    return node, cf


def _imperative():
    layer = TanhLayer(rng.standard_normal((2, 3)))
    return ImperativeNode(layer, 3, 2), layer.jacobian


def _with_cf(node):
    return node, node.closed_form_jacobian


x3 = rng.standard_normal(3)
x4 = rng.standard_normal(4)
P4 = np.array([[4.0, 1, 0, 0], [1, 3, 0.5, 0], [0, 0.5, 2, 0.1], [0, 0, 0.1, 1]])
relu_x = np.array([1.3, -0.7, 0.4, -2.0])

# id: (factory -> (node, closed_form_jacobian(x)), x, expected weakly active side or None)
PROBLEMS = {
    "prop4.4-newton-log": (lambda: _with_cf(LogNode(3, 3)), np.array([0.5, 2.0, 3.0]), None),
    "prop4.4-quadratic": (lambda: _with_cf(QuadraticNode(P4, rng.standard_normal((4, 3)))), x3,
                          None),
    "prop4.5-moving-sphere": (lambda: _with_cf(MovingSphereNode(np.array([1.0, 2.0, -1.0]))),
                              x3, None),
    "prop4.5-hyperplane": (lambda: (lambda n: (n, n.closed_form_jacobian))(
        HyperplaneProjectionNode(rng.standard_normal(3))), x4, None),
    "prop4.6-ball-active": (lambda: _with_cf(UnitBallNode(3)), 2.5 * x3 / np.linalg.norm(x3),
                            None),
    "prop4.6-ball-inactive": (lambda: _with_cf(UnitBallNode(3)), 0.4 * x3 / np.linalg.norm(x3),
                              None),
    "prop4.6-ball-weakly-active": (lambda: _with_cf(UnitBallNode(3)), x3 / np.linalg.norm(x3),
                                   "mixed"),
    "prop4.6-ball-trust-constr": (lambda: _with_cf(UnitBallNode(3, method="trust-constr")),
                                  2.5 * x3 / np.linalg.norm(x3), None),
    "prop4.6-simplex-mixed": (lambda: _with_cf(ProbabilitySimplexNode(5)),
                              np.array([0.9, -0.3, 0.5, 1.2, -1.0]), None),
    "prop4.6-relu": (lambda: _with_cf(ReLUNode(4)), relu_x, None),
    "prop4.6-relu-weakly-active": (lambda: _with_cf(ReLUNode(3)), np.array([0.5, 0.0, -1.0]),
                                   "backward"),
    "cor4.7-sphere": (lambda: _with_cf(UnitSphereNode(4)), x4, None),
    "cor4.7-normalized-direction": (lambda: _with_cf(NormalizedDirectionAlignmentNode(3)), x3,
                                    None),
    "cor4.9-softmax": (lambda: _with_cf(SoftmaxNode(4)), x4, None),
    "cor4.9-quadratic": (lambda: _with_cf(QuadLinEqNode(
        P4, rng.standard_normal((4, 3)), rng.standard_normal((2, 4)), np.array([1.0, -0.5]))),
        x3, None),
    "feasibility-circle-line": (lambda: _with_cf(CircleLineNode()), np.array([0.3]), None),
    "feasibility-with-inequality": (lambda: _with_cf(CircleAboveLineNode()), np.array([0.3]),
                                    None),
    "nonregular-overdetermined-lstsq": (lambda: _with_cf(OverdeterminedNode(nonregular="lstsq")),
                                        np.array([0.7]), None),
    "nonregular-overdetermined-drop": (lambda: _with_cf(OverdeterminedNode(nonregular="drop")),
                                       np.array([0.7]), None),
    "nonregular-overdetermined-pinv": (lambda: _with_cf(OverdeterminedNode(nonregular="pinv")),
                                       np.array([0.7]), None),
    "nonregular-rankdeficient-drop": (lambda: _with_cf(RankDeficientNode(nonregular="drop")),
                                      np.array([0.2]), None),
    "nonregular-rankdeficient-pinv": (lambda: _with_cf(RankDeficientNode(nonregular="pinv")),
                                      np.array([0.2]), None),
    "singular-pinv": (lambda: _with_cf(DirectionAlignmentNode(3, singular="pinv")), x3, None),
    # proximal: Dy = (I − yyᵀ)/(‖x‖ + δ), within δ/‖x‖ of the true Dy. δ trades that bias
    # against round-off amplified by 1/δ along H's null space: δ = 1e-7 keeps both < 1e-6.
    "singular-proximal": (lambda: _with_cf(DirectionAlignmentNode(
        3, singular="proximal", proximal_delta=1e-7)), x3, None),
    "two-solutions-plus": (lambda: _with_cf(TwoSolutionNode(+1)), np.array([2.0]), None),
    "two-solutions-minus": (lambda: _with_cf(TwoSolutionNode(-1)), np.array([2.0]), None),
    "composition": (_composed, rng.standard_normal(2), None),
    "imperative": (_imperative, x3, None),
}


@pytest.fixture(params=list(PROBLEMS), ids=list(PROBLEMS))
def problem(request):
    make, x, side = PROBLEMS[request.param]
    node, cf = make()
    return node, cf, np.array(x, dtype=float), side


def test_against_finite_differences_and_closed_form(problem):
    node, cf, x, side = problem
    report = check_gradient(node, x)
    assert report.ok, str(report)
    assert report.max_rel_error <= 1e-6
    J = report.details["jacobian"]
    J_cf = cf(x)
    assert J.shape == (node.m, node.n) == J_cf.shape
    np.testing.assert_allclose(J, J_cf, rtol=1e-8, atol=1e-9 * max(1.0, np.abs(J_cf).max()))
    if side is None:
        assert report.weakly_active == [] and report.details["fd_side"] == "central"
    else:  # a one-sided gradient, matched with one-sided differences (and flagged)
        assert report.weakly_active and report.details["fd_side"] == side
        assert any("one-sided" in m for m in report.messages)


def test_vjp_is_v_transpose_jacobian(problem):
    node, _, x, side = problem
    y, ctx = node.solve(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if side else "error", DDNWarning)
        J = node.jacobian(x, y, ctx)
        for k in range(2):
            v = rng.standard_normal(node.m)
            # 1e-9, not 1e-12: the proximal case amplifies round-off by 1/δ = 1e7
            np.testing.assert_allclose(node.vjp(x, v, y, ctx), v @ J, rtol=1e-9,
                                       atol=1e-9 * max(1.0, np.abs(J).max() * np.abs(v).max()))
    # solving again inside jacobian() gives the same answer as reusing (y, ctx)
    if side is None:
        np.testing.assert_allclose(node.jacobian(x), J, rtol=1e-8, atol=1e-10)


# ---- the specific claims of the paper ----------------------------------------------------------
def test_eq_56_pinv_equals_normalized_eq_55_equals_derivative_of_x_over_norm():
    """Eq. 52–56 (checked, holds): at y = x/‖x‖ both remedies give Dy = (I − yyᵀ)/‖x‖."""
    x = np.array([0.3, -1.2, 2.0])
    y = x / np.linalg.norm(x)
    expected = (np.eye(3) - np.outer(y, y)) / np.linalg.norm(x)
    J_pinv = DirectionAlignmentNode(3, singular="pinv").jacobian(x)
    J_norm = NormalizedDirectionAlignmentNode(3).jacobian(x)
    J_fd = finite_difference_jacobian(lambda z: z / np.linalg.norm(z), x)
    np.testing.assert_allclose(J_pinv, expected, atol=1e-12)
    np.testing.assert_allclose(J_norm, expected, atol=1e-10)
    np.testing.assert_allclose(J_fd, expected, atol=1e-9)


def test_proximal_remedy_shrinks_by_norm_plus_delta():
    x = np.array([0.3, -1.2, 2.0])
    node = DirectionAlignmentNode(3, singular="proximal", proximal_delta=0.5)
    y = x / np.linalg.norm(x)
    np.testing.assert_allclose(node.jacobian(x),
                               (np.eye(3) - np.outer(y, y)) / (np.linalg.norm(x) + 0.5),
                               atol=1e-12)


def test_two_solutions_flip_the_gradient():
    """Eq. 49–50: the two solutions ±1/√x have opposite gradients ∓1/(2x^{3/2})."""
    x = np.array([4.0])
    Jp, Jm = TwoSolutionNode(+1).jacobian(x), TwoSolutionNode(-1).jacobian(x)
    np.testing.assert_allclose(Jp, [[-1 / 16]])
    np.testing.assert_allclose(Jm, [[1 / 16]])


def test_fixed_constraint_moves_along_surface():
    """Obs. 4.8: h independent of x ⇒ A Dy = 0 (here a = 2y)."""
    x = rng.standard_normal(4)
    node = UnitSphereNode(4)
    y, ctx = node.solve(x)
    np.testing.assert_allclose(2 * y @ node.jacobian(x, y, ctx), 0, atol=1e-12)


def test_weakly_active_sides_and_flag():
    """Prop. 4.6, Fig. 3: at ‖x‖ = 1 the ball's gradient is one-sided; each option gives one
    side, and the node says so with a DDNWarning."""
    x = np.array([0.6, 0.8, 0.0])
    J_out = finite_difference_jacobian(lambda z: UnitBallNode(3).solve(z)[0], x, side="forward")
    J_in = finite_difference_jacobian(lambda z: UnitBallNode(3).solve(z)[0], x, side="backward")
    with pytest.warns(DDNWarning, match="weakly active"):
        J_c = UnitBallNode(3).jacobian(x)
    with pytest.warns(DDNWarning, match="unconstrained side"):
        J_u = UnitBallNode(3, weakly_active="unconstrained").jacobian(x)
    np.testing.assert_allclose(J_c, J_out, atol=1e-6)
    np.testing.assert_allclose(J_u, J_in, atol=1e-6)
    np.testing.assert_allclose(J_u, np.eye(3), atol=1e-9)
    with pytest.warns(DDNWarning):
        opt = UnitBallNode(3).optimality(x)
    assert opt.one_sided and opt.weakly_active == [0]


def test_active_multiplier_sign():
    """λ ≤ 0 for an active g ≤ 0 with L = f − Σλh."""
    node = UnitBallNode(3)
    opt = node.optimality(np.array([2.0, 0.0, 0.0]))
    np.testing.assert_allclose(opt.multipliers, [(1 - 2.0) / 2])  # λ = (1 − ‖x‖)/2
    assert opt.active == [0] and not opt.one_sided


def test_ctx_multipliers_are_used():
    """The backward pass uses ctx["multipliers"] when the solver gives them (Prop. 4.5), so a
    wrong multiplier changes H and the gradient; Eq. 32 recovers it when absent."""
    x = np.array([3.0, 4.0])
    node = UnitSphereNode(2)
    y, ctx = node.solve(x)
    J_good = node.jacobian(x, y, ctx)
    np.testing.assert_allclose(node.jacobian(x, y, {}), J_good, atol=1e-12)  # Eq. 32
    with pytest.warns(DDNWarning, match="do not satisfy stationarity"):  # no longer silent
        J_bad = node.jacobian(x, y, {"multipliers": ctx["multipliers"] + 1.0})
    assert np.abs(J_bad - J_good).max() > 1e-2


def test_nonregular_remedies_agree():
    x = np.array([0.7])
    Js = [OverdeterminedNode(nonregular=r).jacobian(x) for r in ("lstsq", "drop", "pinv")]
    for J in Js[1:]:
        np.testing.assert_allclose(J, Js[0], atol=1e-12)
