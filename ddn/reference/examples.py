"""Ready-made example nodes from the paper, each with a known answer (closed-form y and Dy,
given as ``closed_form_jacobian(x)``) so that notebooks and tests can check the generic
machinery against it.

Sizes: every node is built with its sizes (``n`` inputs, ``m`` outputs) or infers them from its
data (QuadraticNode, HyperplaneProjectionNode).
"""
import autograd.numpy as anp
import numpy as np

from .. import DDNError
from .core import (DeclarativeNode, EqConstrainedNode, FeasibilityNode, FixedEqConstrainedNode,
                   IneqConstrainedNode, LinEqConstrainedNode, _check_vector)
from .projections import _norm

__all__ = [
    "QuadraticNode", "TwoSolutionNode", "DirectionAlignmentNode",
    "NormalizedDirectionAlignmentNode", "UnitSphereNode", "UnitBallNode",
    "HyperplaneProjectionNode", "ReLUNode", "SoftmaxNode", "CircleLineNode",
    "ProbabilitySimplexNode",
]


class QuadraticNode(DeclarativeNode):
    """y(x) = argmin_u ½uᵀPu + uᵀ(Qx + c), P (m, m) symmetric positive definite, Q (m, n).

    Closed form: y = −P⁻¹(Qx + c), Dy = −P⁻¹Q (Prop. 4.4 with H = P, B = Q).
    The default Newton solver is used (one step), so this also tests it.
    """

    def __init__(self, P, Q, c=None, **kw):
        P, Q = np.atleast_2d(np.asarray(P, float)), np.atleast_2d(np.asarray(Q, float))
        m, n = Q.shape
        if P.shape != (m, m):
            raise DDNError(f"P must be ({m}, {m}) to match Q {Q.shape}, got {P.shape}.")
        super().__init__(n, m, **kw)
        self.P, self.Q = P, Q
        self.c = np.zeros(m) if c is None else _check_vector(c, m, "c")

    def objective(self, x, y):
        return 0.5 * anp.dot(y, anp.dot(self.P, y)) + anp.dot(y, anp.dot(self.Q, x) + self.c)

    def closed_form(self, x):
        return -np.linalg.solve(self.P, self.Q @ x + self.c)

    def closed_form_jacobian(self, x):
        return -np.linalg.solve(self.P, self.Q)


class TwoSolutionNode(DeclarativeNode):
    """y(x) ∈ argmin_u (x u² − 1)², x > 0: two minima y = ±1/√x              (Eq. 49–50)

    Dy = ∓ 1/(2 x^{3/2}). The solver is deterministic: ``sign=+1`` (default) returns the
    positive root, ``sign=-1`` the negative one. x ≤ 0 has no minimizer with f = 0: DDNError.
    """

    def __init__(self, sign=1, **kw):
        if sign not in (1, -1):
            raise DDNError(f"sign must be +1 or -1, got {sign!r}.")
        super().__init__(1, 1, **kw)
        self.sign = sign

    def objective(self, x, y):
        return (x[0] * y[0] ** 2 - 1.0) ** 2

    def solve(self, x):
        x = self._check_x(x)
        if not x[0] > 0:
            raise DDNError(f"TwoSolutionNode needs x > 0, got x = {x[0]}.")
        return np.array([self.sign / np.sqrt(x[0])]), {}

    def closed_form_jacobian(self, x):
        return np.array([[-self.sign / (2.0 * x[0] ** 1.5)]])


def _unit(x, name):
    x = np.asarray(x, float)
    r = _norm(x, 2)  # scaled: ‖(3e200, 4e200)‖ overflowed, and y = x/inf = 0 came back
    if r == 0:
        raise DDNError(f"{name}: x = 0 has no direction (every unit vector is a solution).")
    return x / r, r


class DirectionAlignmentNode(DeclarativeNode):
    """y(x) ∈ argmin_u −xᵀu/‖u‖: every y = βx (β > 0) is a solution             (Eq. 52–54)

    At y = x/‖x‖ (the representative this solver returns): H = ‖x‖(I − yyᵀ) is singular (the
    objective does not see ‖u‖) and B = −(I − yyᵀ). Pick a remedy explicitly:
    ``singular="pinv"`` gives Dy = −H⁺B = (1/‖x‖)(I − yyᵀ) (Eq. 56), equal to the derivative of
    x/‖x‖; ``singular="proximal"`` gives (1/(‖x‖ + δ))(I − yyᵀ). Default "error" raises.
    """

    def __init__(self, m, **kw):
        super().__init__(m, m, **kw)

    def objective(self, x, y):
        return -anp.dot(x, y) / anp.sqrt(anp.dot(y, y))

    def solve(self, x):
        return _unit(self._check_x(x), type(self).__name__)[0], {}

    def closed_form_jacobian(self, x):
        y, r = _unit(x, type(self).__name__)
        delta = self.proximal_delta if self.singular == "proximal" else 0.0
        return (np.eye(self.m) - np.outer(y, y)) / (r + delta)


class NormalizedDirectionAlignmentNode(FixedEqConstrainedNode):
    """y(x) = argmin_u −xᵀu s.t. ‖u‖² = 1: the normalized version of Eq. 52     (Eq. 55)

    λ = −‖x‖/2, H = −λ·2I = ‖x‖I (non-singular), a = 2y, B = −I, so by Cor. 4.7
    Dy = (1/‖x‖)(I − yyᵀ) with y = x/‖x‖ — the same as the pseudo-inverse answer (Eq. 56).
    (With f = −xᵀu/‖u‖ instead, λ = 0 and H = D²f stays singular, so Cor. 4.7 does not apply.)
    """

    def __init__(self, m, **kw):
        super().__init__(m, m, **kw)

    def objective(self, x, y):
        return -anp.dot(x, y)

    def constraint(self, y):
        return anp.dot(y, y) - 1.0

    def initial_guess(self, x):
        return _unit(x, type(self).__name__)[0] + 0.1

    def closed_form_jacobian(self, x):
        y, r = _unit(x, type(self).__name__)
        return (np.eye(self.m) - np.outer(y, y)) / r


class UnitSphereNode(FixedEqConstrainedNode):
    """Projection onto the unit sphere, y = argmin_u ½‖u − x‖² s.t. ‖u‖² = 1     (Cor. 4.7)

    y = x/‖x‖, Dy = (1/‖x‖)(I − yyᵀ). x = 0: DDNError (every point of the sphere is a solution).
    """

    def __init__(self, m, **kw):
        super().__init__(m, m, **kw)

    def objective(self, x, y):
        return 0.5 * anp.sum((y - x) ** 2)

    def constraint(self, y):
        return anp.dot(y, y) - 1.0

    def solve(self, x):
        y = _unit(self._check_x(x), type(self).__name__)[0]
        # λ from D_Y f = λ D_Y h: (y − x) = λ 2y ⇒ λ = (1 − ‖x‖)/2
        return y, {"multipliers": np.array([(1.0 - _norm(x, 2)) / 2.0])}

    def closed_form_jacobian(self, x):
        y, r = _unit(x, type(self).__name__)
        return (np.eye(self.m) - np.outer(y, y)) / r


class UnitBallNode(IneqConstrainedNode):
    """Projection onto the unit ball, y = argmin_u ½‖u − x‖² s.t. ‖u‖² − 1 ≤ 0   (Prop. 4.6)

    ‖x‖ < 1: inactive, y = x, Dy = I. ‖x‖ > 1: active with λ = (1 − ‖x‖)/2 < 0, the sphere's
    Dy. ‖x‖ = 1: weakly active (λ = 0), one-sided. Uses the default (SLSQP) solver.
    """

    def __init__(self, m, **kw):
        super().__init__(m, m, **kw)

    def objective(self, x, y):
        return 0.5 * anp.sum((y - x) ** 2)

    def inequality_constraints(self, x, y):
        return anp.dot(y, y) - 1.0

    def initial_guess(self, x):
        return 0.5 * np.asarray(x) / max(1.0, _norm(np.asarray(x, float), 2))

    def closed_form(self, x):
        return np.asarray(x) / max(1.0, _norm(np.asarray(x, float), 2))

    def closed_form_jacobian(self, x):
        """I inside, the sphere's Dy outside; on the sphere (‖x‖ = 1 to 1e-12, weakly active)
        the side that the ``weakly_active`` option picks."""
        r = _norm(np.asarray(x, float), 2)
        on_sphere = abs(r - 1.0) <= 1e-12
        if r < 1.0 and not on_sphere or on_sphere and self.weakly_active == "unconstrained":
            return np.eye(self.m)
        y = x / r
        return (np.eye(self.m) - np.outer(y, y)) / r


class HyperplaneProjectionNode(EqConstrainedNode):
    """Projection of a fixed z onto a hyperplane that moves with x:                (Prop. 4.5)

        y(x) = argmin_u ½‖u − z‖²  s.t.  aᵀu = b,   x = (a, b) ∈ R^{m+1}

    Closed form y = z − r a/s with r = aᵀz − b, s = ‖a‖²;
    D_a y = −(a zᵀ + r I)/s + 2r a aᵀ/s²,  D_b y = a/s. Uses the default (SLSQP) solver.
    """

    def __init__(self, z, **kw):
        z = np.asarray(z, dtype=float).reshape(-1)
        super().__init__(z.size + 1, z.size, **kw)
        self.z = z

    def objective(self, x, y):
        return 0.5 * anp.sum((y - self.z) ** 2)

    def equality_constraints(self, x, y):
        return anp.dot(x[:-1], y) - x[-1]

    def closed_form(self, x):
        a, b = x[:-1], x[-1]
        return self.z - (a @ self.z - b) / (a @ a) * a

    def closed_form_jacobian(self, x):
        a, b = x[:-1], x[-1]
        r, s = a @ self.z - b, a @ a
        Da = -(np.outer(a, self.z) + r * np.eye(self.m)) / s + 2 * r * np.outer(a, a) / s**2
        return np.column_stack([Da, a / s])


class ReLUNode(IneqConstrainedNode):
    """ReLU as a declarative node, y = argmin_u ½‖u − x‖² s.t. −u ≤ 0  (Sec. 4.7.2, footnote)

    y = max(x, 0), Dy = diag(x > 0). At x_i = 0 the constraint is weakly active: one-sided,
    the default side ("constrained") gives 0 like the usual ReLU convention. The closed-form
    solver also returns the multipliers λ = min(x, 0) ≤ 0.
    """

    def __init__(self, n, **kw):
        super().__init__(n, n, **kw)

    def objective(self, x, y):
        return 0.5 * anp.sum((y - x) ** 2)

    def inequality_constraints(self, x, y):
        return -y

    def solve(self, x):
        x = self._check_x(x)
        # D_Y f = λᵀ D_Y g: y − x = −λ ⇒ λ = x − y = min(x, 0)
        return np.maximum(x, 0.0), {"multipliers": np.minimum(x, 0.0)}

    def closed_form_jacobian(self, x):
        return np.diag((np.asarray(x) > 0).astype(float))


class SoftmaxNode(LinEqConstrainedNode):
    """Softmax as a declarative node                                               (Cor. 4.9)

        y = argmin_u Σ u_i log u_i − xᵀu  s.t.  1ᵀu = 1    ⇒  y = softmax(x)

    H = diag(1/y), B = −I, A = 1ᵀ, so Dy = diag(y) − yyᵀ. The closed-form solver is used (a
    user's own ``solve`` overrides the default one).
    """

    def __init__(self, m, **kw):
        super().__init__(m, m, **kw)

    def objective(self, x, y):
        return anp.sum(y * anp.log(y)) - anp.dot(x, y)

    def linear_constraints(self):
        return np.ones((1, self.m)), np.ones(1)

    def solve(self, x):
        x = self._check_x(x)
        e = np.exp(x - x.max())
        return e / e.sum(), {}

    def closed_form_jacobian(self, x):
        y = self.solve(x)[0]
        return np.diag(y) - np.outer(y, y)


class CircleLineNode(FeasibilityNode):
    """Intersection of the unit circle and the horizontal line u₂ = x            (Sec. 4.7.1)

        h(x, u) = (u₁² + u₂² − 1, u₂ − x) = 0,  |x| < 1  ⇒  y = (√(1 − x²), x)

    (the right-hand intersection, picked by the initial guess). Dy = (−x/√(1 − x²), 1)ᵀ.
    At x = ±1 the line is tangent to the circle: y = (0, ±1) is not regular (D_Y h has rank 1)
    and Dy does not exist, so jacobian/vjp raise DDNError (nonregular= picks a substitute);
    within rounding of that point Dy is large and correct, with a DDNWarning on its accuracy.
    """

    def __init__(self, **kw):
        super().__init__(1, 2, **kw)

    def equality_constraints(self, x, y):
        return anp.stack([y[0] ** 2 + y[1] ** 2 - 1.0, y[1] - x[0]])

    def initial_guess(self, x):
        return np.array([1.0, 0.0])

    def closed_form(self, x):
        return np.array([np.sqrt(1 - x[0] ** 2), x[0]])

    def closed_form_jacobian(self, x):
        return np.array([[-x[0] / np.sqrt(1 - x[0] ** 2)], [1.0]])


class ProbabilitySimplexNode(IneqConstrainedNode):
    """Euclidean projection onto the probability simplex                        (Prop. 4.6)

        y = argmin_u ½‖u − x‖²  s.t.  1ᵀu = 1,  −u ≤ 0

    Mixed equality and inequality constraints. Closed form y = max(x − τ, 0) with τ from the
    sorted x; with S = {i: y_i > 0}, Dy = I_S − 1_S 1_Sᵀ/|S| on S × S and 0 elsewhere.
    Uses the default (SLSQP) solver.
    """

    def __init__(self, m, **kw):
        super().__init__(m, m, **kw)

    def objective(self, x, y):
        return 0.5 * anp.sum((y - x) ** 2)

    def equality_constraints(self, x, y):
        return anp.sum(y) - 1.0

    def inequality_constraints(self, x, y):
        return -y

    def initial_guess(self, x):
        return np.full(self.m, 1.0 / self.m)

    def closed_form(self, x):
        s = np.sort(x)[::-1]
        css = np.cumsum(s) - 1.0
        k = np.nonzero(s - css / np.arange(1, self.m + 1) > 0)[0][-1]
        return np.maximum(x - css[k] / (k + 1), 0.0)

    def closed_form_jacobian(self, x):
        S = (self.closed_form(x) > 0).astype(float)
        return np.diag(S) - np.outer(S, S) / S.sum()
