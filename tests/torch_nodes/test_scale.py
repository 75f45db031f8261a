"""Scale-aware tolerances: the forward solver's convergence test and the optimality-residual check
compare ‖∇ℒ‖ with ``tol · s``, ``s = max(1, ‖K (1 + |z|)‖_∞)`` the size of the gradient's terms.
An objective multiplied by 10⁴ converges and is accepted silently (float32 and float64); a y that
is genuinely not a solution is still named at every scale."""
import pytest
import torch

from ddn import DDNWarning
from ddn.torch import DeclarativeNode, EqConstrainedNode
from ddn.torch.check import check_gradient_torch


class Smooth(DeclarativeNode):
    """f = c·(½‖y‖² + Σ log cosh(y − x) + 0.1 Σ y⁴): strictly convex, no closed form."""

    def __init__(self, c, **kw):
        super().__init__((3,), **kw)
        self.c = c

    def objective(self, x, y):
        return self.c * (0.5 * (y * y).sum(-1) + torch.log(torch.cosh(y - x)).sum(-1)
                         + 0.1 * (y ** 4).sum(-1))


class OnPlane(EqConstrainedNode):
    """f = c·(½‖y − x‖² + 0.1 Σ y⁴) s.t. 1ᵀy = 1 (KKT matrix [[cH, −1], [−1ᵀ, 0]])."""

    def __init__(self, c, **kw):
        super().__init__((3,), **kw)
        self.c = c

    def objective(self, x, y):
        return self.c * (0.5 * ((y - x) ** 2).sum(-1) + 0.1 * (y ** 4).sum(-1))

    def equality_constraints(self, x, y):
        return (y.sum(-1) - 1.0).unsqueeze(-1)


def _perturbed(cls, delta):
    """The same node with a user solve that returns the default solution moved by delta."""
    class Perturbed(cls):
        def solve(self, *xs):
            y, ctx = super().solve(*xs)
            return y + delta, {}
    return Perturbed


DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", [Smooth, OnPlane])
def test_scaled_objective_converges_silently_with_the_same_jacobian(cls, dtype):
    x = 3 * torch.randn(5, 3, dtype=dtype)
    J1 = cls(1.0).jacobian(x)
    y1, _ = cls(1.0).solve(x)
    for c in (1e4, 1e6):
        node = cls(c)
        y, ctx = node.solve(x)
        assert bool(torch.as_tensor(ctx["converged"]).all())
        J = node.jacobian(x)  # a DDNWarning here is an error (pyproject filterwarnings)
        tol = 1e-3 if dtype == torch.float32 else 1e-8
        torch.testing.assert_close(y, y1, atol=tol, rtol=tol)
        torch.testing.assert_close(J, J1, atol=tol, rtol=tol)  # Dy does not depend on c
        d = node.diagnose(x)
        assert (d["residual"] <= node._solver_tol(y) * d["residual_scale"]).all()


def test_scaled_objective_passes_the_gradient_check():
    x = 3 * torch.randn(3, 3, dtype=torch.float64)
    r = check_gradient_torch(Smooth(1e4), x)
    assert r.ok, r.messages


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", [Smooth, OnPlane])
@pytest.mark.parametrize("c", [1.0, 1e4, 1e6])
def test_non_optimal_y_is_named_at_every_scale(cls, dtype, c):
    x = 3 * torch.randn(4, 3, dtype=dtype)
    node = _perturbed(cls, 0.05)(c)  # 5% of |y|: far above both dtypes' residual_tol
    with pytest.warns(DDNWarning, match="optimality residual"):
        node.jacobian(x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", [Smooth, OnPlane])
@pytest.mark.parametrize("c", [1.0, 1e4, 1e6])
def test_unconverged_solver_is_named_at_every_scale(cls, dtype, c):
    x = 3 * torch.randn(4, 3, dtype=dtype)
    node = cls(c, solver_max_iter=1)
    with pytest.warns(DDNWarning, match="did not converge"):
        node._solve_detached((x,))


def test_residual_scale_is_proportional_to_the_objective():
    x = 3 * torch.randn(4, 3, dtype=torch.float64)
    s1 = Smooth(1.0).diagnose(x)["residual_scale"]
    s4 = Smooth(1e4).diagnose(x)["residual_scale"]
    assert (s1 >= 1).all()
    torch.testing.assert_close(s4, 1e4 * s1, rtol=1e-6, atol=0)
