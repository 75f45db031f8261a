"""The optimality residual is judged against its rounding level as well as residual_tol: at
x ~ 1e9 the correctly rounded y = log x of Σeᵘ − xᵀu has ‖D_Y f‖∞ ≈ 3e-6 (eps × 1e9 terms), and
jacobian warned "y is not a stationary point" while check_gradient failed a correct node."""
import warnings

import autograd.numpy as anp
import numpy as np
import pytest

from ddn import DDNWarning
from ddn.check import check_gradient
from ddn.reference import DeclarativeNode

X = 1e9 * np.array([1.3, 2.1, 0.7])


class LogNode(DeclarativeNode):
    def objective(self, x, y):
        return anp.sum(anp.exp(y)) - anp.dot(x, y)

    def initial_guess(self, x):
        return np.log(x)


def test_rounded_solution_with_large_terms_is_stationary():
    node = LogNode(3, 3)
    y, ctx = node.solve(X)
    assert ctx["residual"] > node.residual_tol  # the rounding noise of D_Y f ...
    with warnings.catch_warnings():
        warnings.simplefilter("error", DDNWarning)  # ... is not "y is not stationary"
        J = node.jacobian(X, y, ctx)
    np.testing.assert_allclose(J, np.diag(1 / X), rtol=1e-12)
    assert check_gradient(node, X).ok


def test_a_solution_off_by_more_than_rounding_is_still_flagged():
    node = LogNode(3, 3)
    y = np.log(X) * (1 + 1e-9)
    with pytest.warns(DDNWarning, match="not a stationary point"):
        node.jacobian(X, y)
    report = check_gradient(node, X, y=y)
    assert not report.ok and any("not an accurate solution" in m for m in report.messages)
