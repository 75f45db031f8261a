"""Projections and unit-vector examples at extreme magnitudes: ‖x‖₂ was computed from the squares,
which overflow (x ~ 1e200: y = x/inf = 0 came back as the projection) or underflow (x ~ 1e-320:
'x = 0 has no direction')."""
import warnings

import numpy as np
import pytest

from ddn.reference import project_ball, project_sphere
from ddn.reference.examples import (DirectionAlignmentNode, NormalizedDirectionAlignmentNode,
                                    UnitBallNode, UnitSphereNode)


@pytest.mark.parametrize("scale", [1e200, 1e-160, 1e-320])
def test_unit_vectors_of_huge_and_tiny_inputs(scale):
    x = np.array([3.0, 4.0]) * scale
    want = np.array([0.6, 0.8])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning (overflow in dot) either
        np.testing.assert_allclose(project_sphere(x, 2), want, rtol=1e-15)
        np.testing.assert_allclose(project_sphere(x, 2, radius=5.0), 5 * want, rtol=1e-15)
        if scale > 1:
            np.testing.assert_allclose(project_ball(x, 2), want, rtol=1e-15)
            np.testing.assert_allclose(UnitBallNode(2).closed_form(x), want, rtol=1e-15)
        else:
            np.testing.assert_array_equal(project_ball(x, 2), x)  # inside
        np.testing.assert_allclose(UnitSphereNode(2).solve(x)[0], want, rtol=1e-15)
        np.testing.assert_allclose(DirectionAlignmentNode(2, singular="pinv").solve(x)[0], want,
                                   rtol=1e-15)
        if scale > 1e-300:  # Dy ~ 1/‖x‖ itself overflows below that
            np.testing.assert_allclose(
                NormalizedDirectionAlignmentNode(2).closed_form_jacobian(x),
                np.outer([0.8, -0.6], [0.8, -0.6]) / (5 * scale), rtol=1e-14)


def test_unit_sphere_multiplier_of_a_huge_input_is_finite():
    x = np.array([3e200, 4e200])
    _, ctx = UnitSphereNode(2).solve(x)
    assert np.isfinite(ctx["multipliers"]).all()


def test_ball_of_radius_1e9_projection_is_active():
    # the exact projection onto ‖y‖ ≤ 1e9 has |g| ~ 2e-7 (eps × 1e9), a distance above the
    # active tolerance 1e-8: it counted as inactive, Dy = I and 'optimality residual 8.7e8'
    from ddn.check import check_gradient
    from ddn.reference import BallProjectionNode
    rng = np.random.default_rng(0)
    node = BallProjectionNode(2, 1e9)
    for _ in range(12):  # 4 of these 12 counted as inactive
        x = rng.normal(size=4)
        x *= 2e9 / np.linalg.norm(x)
        assert node.optimality(x).active == [0]
    rep = check_gradient(node, np.array([-6.16989866e+08, 4.16489155e+08, 1.50196157e+09,
                                         1.09085825e+09]))
    assert rep.ok, rep


@pytest.mark.parametrize("radius", [1e-9, 1.0, 1e9])
def test_generic_sphere_rule_at_any_radius(radius):
    # |D_Y h| ≤ 1e-8·|D²_YY h|·max(1, ‖y‖∞) called the gradient of ‖y‖ − 1e-9 (|D h| = 1,
    # |D² h| ~ 1e9) 'vanishing': a DDNError on the plain sphere of radius 1e-9
    from ddn.reference import EqConstrainedNode
    import autograd.numpy as anp

    class Sphere(EqConstrainedNode):
        def objective(self, x, y):
            return 0.5 * anp.sum((y - x) ** 2)

        def equality_constraints(self, x, y):
            return anp.sqrt(anp.sum(y ** 2)) - radius

    x = np.array([0.6, -0.3, 1.2]) * radius
    u = x / np.linalg.norm(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        J = Sphere(3, 3).jacobian(x, radius * u)
    np.testing.assert_allclose(J * np.linalg.norm(x) / radius, np.eye(3) - np.outer(u, u),
                               atol=1e-9)
