"""Second audit of the generic torch nodes: rank-deficient constraints in the default solver,
non-finite solutions and multipliers from a user solve, badly shaped ctx entries, MINRES on an
indefinite H."""
import warnings

import pytest
import torch

from ddn import DDNError, DDNWarning
from ddn.torch import DeclarativeLayer, DeclarativeNode, EqConstrainedNode, LinEqConstrainedNode

F64 = torch.float64
A_FULL = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 0.0, 2.0]], dtype=F64)
B_FULL = torch.tensor([0.5, 0.2], dtype=F64)


class ExpOnPlanes(LinEqConstrainedNode):
    """min Σ exp(y) − xᵀy + 0.3 y₀y₁ s.t. A y = b (strictly convex: one solution)."""

    def __init__(self, A, b, **kw):
        super().__init__(4, **kw)
        self.A, self.b = A, b

    def objective(self, x, y):
        return (torch.exp(y) - x * y).sum(-1) + 0.3 * y[:, 0] * y[:, 1]

    def linear_constraints(self):
        return self.A, self.b


def _x():
    return torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("singular", [None, "pinv"])
def test_default_solver_on_a_repeated_linear_constraint_finds_the_solution(singular):
    """A third row 2·(first row), b consistent: the same feasible set, so the same y and Dy. The
    KKT matrix is singular; Newton-KKT's LU step gave multipliers ~1e15 whose terms swamped the
    convergence scale: an infeasible y (‖Ay − b‖ = 0.5) came back 'converged', and with the
    chosen remedy singular='pinv' its gradient was wrong by 0.5 without any warning."""
    x = _x()
    full = ExpOnPlanes(A_FULL, B_FULL)
    rep = ExpOnPlanes(torch.cat([A_FULL, 2 * A_FULL[:1]]), torch.cat([B_FULL, 2 * B_FULL[:1]]),
                      singular=singular)
    y1, _ = full._solve_detached((x,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if singular is None else "error", DDNWarning)
        y2, ctx = rep._solve_detached((x,))
        assert bool(ctx["converged"].all())
        assert (y2 @ A_FULL.T - B_FULL).abs().max() < 1e-12
        assert torch.allclose(y2, y1, atol=1e-10)
        assert ctx["multipliers"].abs().max() < 10
        if singular == "pinv":
            assert torch.allclose(rep.jacobian(x), full.jacobian(x), atol=1e-9)
