"""Reference pseudo-Huber pooling must be ground truth where Σφ'' is tiny (α much smaller than the
gap between the middle samples): the root of g = Σφ' was decided by the rounding of its ±α
parts. Expected values from a 40-digit root of the same g (mpmath)."""
import numpy as np
import pytest

from ddn.reference.pooling import RobustPoolNode, robust_pool


@pytest.mark.parametrize("x, alpha, y_true", [
    ([-2.7112854374347726, 0.04170258602731257, -1.6174674995236882, 1.109637999248523], 1e-3,
     -0.7888619401929653),  # was 1.8e-11 off
    ([-336627.46637668164, 828156.5184266097, -1061064.920001675, 569999.8108654594], 1.0,
     91464.503790069),  # was 2.16 off
])
def test_pseudo_huber_flat_minimum_is_accurate(x, alpha, y_true):
    x = np.array(x)
    y = robust_pool(x, "pseudo-huber", alpha)
    assert abs(y - y_true) <= 4 * np.finfo(float).eps * max(1.0, abs(y_true))
    # and so Dy matches central differences of the solver itself
    node = RobustPoolNode("pseudo-huber", alpha)
    J = node.jacobian(x)[0]
    h = 1e-6 * np.abs(x).max()
    fd = [(robust_pool(x + h * e, "pseudo-huber", alpha) - robust_pool(x - h * e, "pseudo-huber",
                                                                     alpha)) / (2 * h)
          for e in np.eye(x.size)]
    np.testing.assert_allclose(fd, J, atol=1e-6)
