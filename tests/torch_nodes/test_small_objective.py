"""An objective small in scale (c·f, c = 10⁻³…10⁻⁴) next to O(1) constraints, in float32.

The default solvers stopped when the whole KKT residual was below tol · s, where s is set by the
constraint rows (O(‖A‖)): the stationarity block ∇f − Aᵀλ (of size c) was then accurate only to
tol · ‖A‖, so the multipliers handed to the backward pass were wrong by ~tol / c relative, and the
float32 gradient (through D²_YY L = c D²f − Σ λ_i D²g_i) by ~1e-3 at c = 10⁻⁴ while y itself was
right to 1e-7."""
import pytest
import torch

from ddn import DDNWarning
from ddn.torch import DeclarativeLayer, EqConstrainedNode, IneqConstrainedNode
from ddn.torch import _linalg
from sphere_problems import QuarticSphere, quartic

M = 6


class InBall(IneqConstrainedNode):
    """f = c·(½‖y − x‖² + 0.1 Σ y⁴) s.t. ‖y‖² ≤ 1 and y₀ + y₁ ≤ 0.1."""

    def __init__(self, c, **kw):
        super().__init__((M,), **kw)
        self.c = c

    def objective(self, x, y):
        return self.c * quartic(x, y)

    def inequality_constraints(self, x, y):
        return torch.stack([(y * y).sum(-1) - 1, y[:, 0] + y[:, 1] - 0.1], -1)


class OnSphere(QuarticSphere):
    """f = c·(½‖y − x‖² + 0.1 Σ y⁴) s.t. ‖y‖² = 1."""

    def __init__(self, c, **kw):
        super().__init__(M, c, **kw)


def _grad(node_cls, c, x, v, dtype):
    xx = x.to(dtype).detach().requires_grad_()
    y = DeclarativeLayer(node_cls(c))(xx)
    (y * v.to(dtype)).sum().backward()
    return y.detach().double(), xx.grad.double()


@pytest.mark.parametrize("cls", [InBall, OnSphere])
@pytest.mark.parametrize("c", [1e-3, 1e-4])
def test_float32_gradient_of_a_small_objective_matches_float64(cls, c):
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(4, M, dtype=torch.float64, generator=g)
    v = torch.randn(4, M, dtype=torch.float64, generator=g)
    y64, g64 = _grad(cls, c, x, v, torch.float64)
    y32, g32 = _grad(cls, c, x, v, torch.float32)
    assert float((y32 - y64).norm() / y64.norm()) < 1e-5
    assert float((g32 - g64).norm() / g64.norm()) < 2e-5  # was 9e-4 (InBall, c = 1e-4)


def test_default_multipliers_are_accurate_for_a_small_objective():
    x = 2 * torch.randn(4, M, dtype=torch.float32, generator=torch.Generator().manual_seed(1))
    node = InBall(1e-4)
    y, ctx = node.solve(x)
    lam_ref = InBall(1e-4).solve(x.double())[1]["multipliers"]
    scale = lam_ref.abs().amax()
    assert float((ctx["multipliers"].double() - lam_ref).abs().amax() / scale) < 1e-5


def test_block_scaled_kkt_solve_is_more_accurate_in_float32():
    """solve_dense(n_primal=m) scales [[cH, −Aᵀ], [−A, 0]] to unit blocks before the LU solve."""
    g = torch.Generator().manual_seed(1)
    b, m, p, c = 32, 10, 4, 1e-6
    G = torch.randn(b, m, m, dtype=torch.float64, generator=g)
    H = c * (G @ G.mT / m + 0.1 * torch.eye(m, dtype=torch.float64))
    A = torch.randn(b, p, m, dtype=torch.float64, generator=g)
    K = torch.cat([torch.cat([H, -A.mT], 2),
                   torch.cat([-A, torch.zeros(b, p, p, dtype=torch.float64)], 2)], 1)
    r = torch.cat([torch.randn(b, m, dtype=torch.float64, generator=g),
                   torch.zeros(b, p, dtype=torch.float64)], 1)
    w64 = torch.linalg.solve(K, r)
    w, info = _linalg.solve_dense(K.float(), r.float(), n_primal=m)
    err = ((w.double() - w64)[:, :m].norm(dim=-1) / w64[:, :m].norm(dim=-1)).max()
    assert float(err) < 5e-6  # 2.4e-5 without the block scaling
    w_again, _ = _linalg.solve_dense(K, r, n_primal=m)  # float64: the same solution
    torch.testing.assert_close(w_again, w64, rtol=1e-10, atol=1e-12)
    assert not info["singular"].any()


@pytest.mark.parametrize("dtype,c", [(torch.float32, 1e4), (torch.float32, 1e-4),
                                     (torch.float64, 1e-4), (torch.float64, 1e4)])
@pytest.mark.parametrize("ls", ["cg", "minres"])
def test_minres_on_a_kkt_matrix_of_a_scaled_objective_converges(ls, dtype, c):
    """The matrix-free KKT solve runs on the block-scaled D K D: unscaled, MINRES did not converge
    in 10·N iterations at c = 10⁴ (float32) or c = 10⁻⁴ (float64), and gave a gradient 40-60% off
    (with a warning)."""
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(4, M, dtype=torch.float64, generator=g)
    v = torch.randn(4, M, dtype=torch.float64, generator=g)
    y = InBall(c).solve(x)[0]  # float64 solution, cast: the same y for both solvers
    ref = InBall(c).vjp(x, v=v, y=y)[0]
    got = InBall(c, linear_solver=ls).vjp(x.to(dtype), v=v.to(dtype), y=y.to(dtype))[0]
    tol = 1e-4 if dtype == torch.float32 else 1e-8
    assert float((got.double() - ref).norm() / ref.norm()) < tol


class OnPlaneMoved(EqConstrainedNode):
    """f = c·(½‖y − x‖² + 0.1 Σ y⁴) s.t. 1ᵀy = 1; the solve moves the minimum by 5% ALONG the
    plane: feasible, not stationary."""

    def __init__(self, c, move=0.05, **kw):
        super().__init__((3,), **kw)
        self.c, self.move = c, move

    def objective(self, x, y):
        return self.c * (0.5 * ((y - x) ** 2).sum(-1) + 0.1 * (y ** 4).sum(-1))

    def equality_constraints(self, x, y):
        return y.sum(-1) - 1

    def solve(self, x):
        y, _ = EqConstrainedNode.solve(self, x)
        d = self.move * y.norm(dim=-1, keepdim=True)
        return y + torch.cat([d, -d, torch.zeros_like(d)], -1), {}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", [1.0, 1e-2, 1e-4])
@pytest.mark.parametrize("ls", ["dense", "minres"])
def test_a_feasible_non_stationary_y_is_named_for_a_small_objective(ls, c, dtype):
    """The residual test judged ∇f − Aᵀλ (size c) against a scale set by the constraint rows
    (O(1)): in float32 a y 5% off the minimum passed silently at c = 10⁻⁴."""
    x = 3 * torch.randn(4, 3, dtype=dtype, generator=torch.Generator().manual_seed(0)).to(dtype)
    v = torch.ones(4, 3, dtype=dtype)
    with pytest.warns(DDNWarning, match="optimality residual"):
        OnPlaneMoved(c, linear_solver=ls).vjp(x, v=v)


def test_check_gradient_names_the_residual_of_a_small_objective():
    from ddn.torch.check import check_gradient_torch
    x = 3 * torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    r = check_gradient_torch(OnPlaneMoved(1e-4, move=1e-3), x)  # warnings go to messages
    assert not r.ok
    assert any(m.startswith("optimality residual") for m in r.messages), r.messages
