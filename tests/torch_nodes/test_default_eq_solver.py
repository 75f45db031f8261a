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


def test_unroll_from_the_zero_guess_converges_with_the_closed_form_gradient():
    """Under unroll the AL retry is not used (the solve must stay differentiable). The Newton-KKT
    step is the least-norm one where the KKT matrix is singular (at y = 0), so the unrolled solve
    converges anyway; those first steps carry no graph (pinv's derivative is NaN where its rank
    changes) and the final Newton step gives y its derivative: finite and the closed form."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, dtype=F64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DDNWarning)
        y = DeclarativeLayer(SphereLS(3, linear_solver="unroll"))(x)
    nx = x.detach().norm(dim=-1, keepdim=True)
    yc = x.detach() / nx
    assert torch.allclose(y.detach(), yc, atol=1e-10)
    v = torch.randn(2, 3, dtype=F64)
    y.backward(v)
    assert torch.allclose(x.grad, (v - yc * (yc * v).sum(-1, keepdim=True)) / nx, atol=1e-8)
