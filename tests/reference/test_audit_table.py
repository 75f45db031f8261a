"""Audit coverage: problems the node table (test_nodes.py) does not have, each checked against
central finite differences of the node's own solver (float64) and, where there is one, a closed
form: several equality constraints that move with x and n > m, mixed active / inactive
inequalities with equalities, m = 1 (pinned and free), float32 and list inputs, a chain of
constrained nodes, and a bi-level gradient."""
import autograd.numpy as anp
import numpy as np
import pytest

import ddn.reference as R
from ddn.check import check_gradient


class TwoMovingEqualities(R.EqConstrainedNode):
    """n = 5 > m = 3: ½‖u − x₁:₃‖² + 0.1Σu⁴ s.t. ‖u‖² = 1 + 0.1x₄², Σu = x₅."""

    def objective(self, x, y):
        return 0.5 * anp.sum((y - x[:3]) ** 2) + 0.1 * anp.sum(y ** 4)

    def equality_constraints(self, x, y):
        return anp.stack([anp.sum(y ** 2) - 1.0 - 0.1 * x[3] ** 2, anp.sum(y) - x[4]])


class MixedActiveInactive(R.IneqConstrainedNode):
    """Σu = 1 with u₁ ≤ 0.2 (active), −u₂ ≤ 0 and u₃² ≤ 4 (inactive) at x = (0.9, −0.4, 0.3):
    y = (0.2, 0.05, 0.75); on the active set u₁ = 0.2 and u₂ + u₃ = 0.8 with y₂ − y₃ = x₂ − x₃,
    so Dy = [[0, 0, 0], [0, ½, −½], [0, −½, ½]]."""

    def objective(self, x, y):
        return 0.5 * anp.sum((y - x) ** 2)

    def equality_constraints(self, x, y):
        return anp.sum(y) - 1.0

    def inequality_constraints(self, x, y):
        return anp.stack([y[0] - 0.2, -y[1], y[2] ** 2 - 4.0])

    @staticmethod
    def closed_form_jacobian(x):
        return np.array([[0.0, 0, 0], [0, 0.5, -0.5], [0, -0.5, 0.5]])


class CubeRoot(R.EqConstrainedNode):
    """m = 1 pinned by its constraint: (u − x₁)² s.t. u³ = x₂ ⇒ y = x₂^{1/3}, Dy = (0, ⅓x₂^{−2/3})."""

    def objective(self, x, y):
        return (y[0] - x[0]) ** 2

    def equality_constraints(self, x, y):
        return y[0] ** 3 - x[1]

    @staticmethod
    def closed_form_jacobian(x):
        return np.array([[0.0, x[1] ** (-2 / 3) / 3]])


class Clip(R.IneqConstrainedNode):
    """m = 1, n = 3: Σ(u − x_i)² s.t. −1 ≤ u ≤ 1 ⇒ y = clip(mean x), Dy = 1/3 inside, 0 outside."""

    def objective(self, x, y):
        return anp.sum((y[0] - x) ** 2)

    def inequality_constraints(self, x, y):
        return anp.stack([y[0] - 1.0, -y[0] - 1.0])

    @staticmethod
    def closed_form_jacobian(x):
        return np.full((1, 3), 1 / 3 if abs(np.mean(x)) < 1 else 0.0)


def _chain():
    return R.ComposedNode(R.ProbabilitySimplexNode(4), R.ImperativeNode(anp.tanh, 4, 4),
                          R.UnitSphereNode(4))


PROBLEMS = {
    "two-moving-equalities-n>m": (lambda: TwoMovingEqualities(5, 3),
                                  [0.3, -0.5, 0.8, 0.7, 0.2], None),
    "mixed-active-inactive": (lambda: MixedActiveInactive(3, 3), [0.9, -0.4, 0.3],
                              MixedActiveInactive.closed_form_jacobian),
    "m1-pinned": (lambda: CubeRoot(2, 1), [0.3, 2.0], CubeRoot.closed_form_jacobian),
    "m1-box-inside": (lambda: Clip(3, 1), [0.1, -0.2, 0.3], Clip.closed_form_jacobian),
    "m1-box-active": (lambda: Clip(3, 1), [1.0, 2.0, 3.0], Clip.closed_form_jacobian),
    "chain-of-constrained-nodes": (_chain, [0.9, -0.3, 0.5, 1.2], None),
}


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_against_finite_differences(name):
    make, x, closed_form = PROBLEMS[name]
    node, x = make(), np.array(x)
    rep = check_gradient(node, x)
    assert rep.ok and rep.max_rel_error < 1e-6, rep
    if closed_form is not None:
        np.testing.assert_allclose(rep.details["jacobian"], closed_form(x), atol=1e-9)


def test_float32_and_list_inputs_give_the_float64_answer():
    node, x = R.UnitSphereNode(3), np.array([1.0, 2.0, 3.0])
    J = node.jacobian(x)
    for xx in (x.astype(np.float32), [1, 2, 3], [1.0, 2.0, 3.0]):
        Jx = node.jacobian(xx)
        assert Jx.dtype == np.float64
        np.testing.assert_allclose(Jx, J, atol=1e-12)
        np.testing.assert_allclose(node.vjp(xx, [1, 0, 0]), J[0], atol=1e-12)


def test_bilevel_gradient_through_moving_constraints():
    """Eq. 10–11: dJ/dx = D_X J + (D_Y J) Dy, against finite differences of x ↦ J(x, y(x))."""
    node = TwoMovingEqualities(5, 3)
    x = np.array([0.3, -0.5, 0.8, 0.7, 0.2])

    def J(x, y):
        return anp.sum(y * anp.array([1.0, 2.0, 3.0])) + x[3] ** 2

    total = lambda z: J(z, node.solve(z)[0])  # noqa: E731
    fd = np.array([(total(x + 1e-6 * e) - total(x - 1e-6 * e)) / 2e-6 for e in np.eye(5)])
    np.testing.assert_allclose(R.upper_gradient(J, node, x), fd, atol=1e-8)
