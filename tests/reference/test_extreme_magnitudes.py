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
