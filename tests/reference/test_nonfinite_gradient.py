"""An infinite constraint gradient at y (−√u ≤ 0 active at u = 0) is named, not numpy's "SVD did
not converge in Linear Least Squares" from the multipliers' least squares."""
import warnings

import autograd.numpy as anp
import numpy as np
import pytest

from ddn import DDNError
from ddn.check import check_gradient
from ddn.reference import IneqConstrainedNode

X = np.array([-1.0, 2.0])


class SqrtBound(IneqConstrainedNode):
    """½‖u − x‖² s.t. −√|u| ≤ 0, solved as max(x, 0): D_Y g = −∞ where u = 0."""

    def objective(self, x, y):
        return 0.5 * anp.sum((y - x) ** 2)

    def inequality_constraints(self, x, y):
        return -anp.sqrt(anp.abs(y))

    def solve(self, x):
        return np.maximum(x, 0.0), {}


@pytest.mark.parametrize("call", ["jacobian", "vjp", "optimality"])
def test_infinite_constraint_gradient_is_a_ddn_error(call):
    node = SqrtBound(2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's divide by zero in √'
        with pytest.raises(DDNError, match=r"row\(s\) \[0\] .* contains NaN/Inf"):
            if call == "vjp":
                node.vjp(X, np.ones(2))
            else:
                getattr(node, call)(X)


def test_check_gradient_reports_it():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        report = check_gradient(SqrtBound(2, 2), X)
    assert not report.ok and "not differentiable" in str(report)
