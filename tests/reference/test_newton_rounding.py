"""The default Newton solver stops when its step is at the rounding level of y. Its gradient
test alone, ‖∇f‖∞ ≤ tol·(1 + ‖∇f(y₀)‖∞), is below the rounding noise of ∇f when the terms of f
are large and the initial guess is good: Σeᵘ − xᵀu at x ~ 1e6, started at the exact y = log x,
raised "Newton did not converge" (‖∇f‖∞ = 4.7e-10 > 1e-10) without ever moving."""
import autograd.numpy as anp
import numpy as np
import pytest

from ddn.check import check_gradient
from ddn.reference import DeclarativeNode


class LogNode(DeclarativeNode):
    """argmin Σ exp(u) − xᵀu = log x, started at the answer."""

    def objective(self, x, y):
        return anp.sum(anp.exp(y)) - anp.dot(x, y)

    def initial_guess(self, x):
        return np.log(x)


@pytest.mark.parametrize("scale", [1.0, 1e6, 1e8])
def test_exact_initial_guess_with_large_terms_converges(scale):
    x = scale * np.array([1.3, 2.1, 0.7])
    node = LogNode(3, 3)
    y, ctx = node.solve(x)
    np.testing.assert_allclose(y, np.log(x), rtol=1e-15)
    assert ctx["iterations"] == 0


def test_exact_initial_guess_gradient_checks():
    x = 1e6 * np.array([1.3, 2.1, 0.7])
    assert check_gradient(LogNode(3, 3), x).ok


def test_an_overflowing_trial_step_is_a_rejected_step_not_a_numpy_warning():
    # Σeᵘ − xᵀu at x = (1e6, 2) from y0 = 0: the first Newton step is ~1e6 long and exp
    # overflows at the trial point; the line search must treat that as f = inf and backtrack
    # without a RuntimeWarning reaching the user
    import warnings

    import autograd.numpy as anp
    import numpy as np

    from ddn.reference import DeclarativeNode

    class LSE(DeclarativeNode):
        def objective(self, x, y):
            return anp.sum(anp.exp(y)) - anp.dot(x, y)

    x = np.array([1e6, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        y, _ = LSE(2, 2).solve(x)
    np.testing.assert_allclose(y, np.log(x), rtol=1e-12)
