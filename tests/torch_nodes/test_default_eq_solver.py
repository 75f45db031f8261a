"""The default equality solver from an initial guess where the constraints are degenerate.

Newton on the KKT system (local SQP) from ``y0 = 0`` meets ``∇h = 0`` for ``h = ‖y‖² − 1``: the KKT
matrix is singular and SQP went nowhere (the forward did not converge and the gradients were
NaN). The solver now retries such elements with the augmented Lagrangian. Checked against the
closed form of the projection onto the unit sphere."""
import warnings

import pytest
import torch

from ddn import DDNWarning
from ddn.torch import DeclarativeLayer, EqConstrainedNode, IneqConstrainedNode

F64 = torch.float64


class SphereLS(EqConstrainedNode):
    """min ‖y − x‖² s.t. ‖y‖² = 1: y = x/‖x‖, Dy = (I − yyᵀ)/‖x‖, λ = 1 − ‖x‖ (L = f − λh)."""

    def objective(self, x, y):
        return ((y - x) ** 2).sum(-1)

    def equality_constraints(self, x, y):
        return (y ** 2).sum(-1) - 1


class SphereLSviaIneqNode(IneqConstrainedNode):
    objective = SphereLS.objective
    equality_constraints = SphereLS.equality_constraints

    def inequality_constraints(self, x, y):
        return None


@pytest.mark.parametrize("cls", [SphereLS, SphereLSviaIneqNode])
@pytest.mark.parametrize("solver", ["dense", "cg"])
def test_sphere_constraint_from_a_zero_initial_guess(cls, solver):
    torch.manual_seed(0)
    x = (0.5 + torch.rand(5, 3, dtype=F64)) * torch.randn(5, 3, dtype=F64).sign()
    node = cls(3, linear_solver=solver)
    assert torch.equal(node.initial_guess(x), torch.zeros(5, 3, dtype=F64))  # the degenerate start
    with warnings.catch_warnings():
        warnings.simplefilter("error", DDNWarning)
        y, ctx = node.solve(x)
        assert bool(ctx["converged"].all())
        nx = x.norm(dim=-1, keepdim=True)
        assert torch.allclose(y, x / nx, atol=1e-10)
        assert torch.allclose(ctx["multipliers"], 1 - nx, atol=1e-8)
        xr = x.clone().requires_grad_()
        v = torch.randn(5, 3, dtype=F64)
        DeclarativeLayer(node)(xr).backward(v)
    yc = x / nx
    closed = (v - yc * (yc * v).sum(-1, keepdim=True)) / nx  # vᵀ(I − yyᵀ)/‖x‖
    assert torch.allclose(xr.grad, closed, atol=1e-8)


def test_gradcheck_through_the_fallback():
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(DeclarativeLayer(SphereLS(4)), (x,))


def test_unroll_cannot_fall_back_and_says_so():
    """Under unroll the solve must stay differentiable, so the AL retry is not used: the failure is
    reported, not hidden."""
    x = torch.randn(2, 3, dtype=F64, requires_grad=True)
    with pytest.warns(DDNWarning, match="did not converge"):
        DeclarativeLayer(SphereLS(3, linear_solver="unroll"))(x)
