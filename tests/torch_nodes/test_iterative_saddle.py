"""The saddle/maximum check of constrained nodes with the matrix-free linear solvers.

Only the dense solver checked that a KKT point is a minimum (inertia of K); with cg/minres a
maximum on the sphere got a gradient without a word (MINRES's own certificate vᵀKv < 0 says
nothing for a KKT matrix, always indefinite). The solution w of K w = [v; 0] has A w_y = 0 and
w_yᵀv = w_yᵀ H w_y, so w_yᵀv < 0 proves a negative direction on the tangent space."""
import warnings

import pytest
import torch

from ddn import DDNWarning
from ddn.torch import DeclarativeNode, EqConstrainedNode, IneqConstrainedNode
from sphere_problems import QuarticSphere


class Nearest(EqConstrainedNode):
    """argmin ½‖y − x‖² on the unit sphere: x/‖x‖ (a minimum)."""

    def __init__(self, **kw):
        super().__init__((4,), **kw)

    def objective(self, x, y):
        return 0.5 * ((y - x) ** 2).sum(-1)

    def equality_constraints(self, x, y):
        return (y * y).sum(-1) - 1

    def solve(self, x):
        return x / x.norm(dim=-1, keepdim=True), {}


class Farthest(Nearest):
    """The same problem, but the solve returns −x/‖x‖: a KKT point that is the maximum."""

    def solve(self, x):
        return -x / x.norm(dim=-1, keepdim=True), {}


class FarthestIneq(IneqConstrainedNode):
    """f = −‖y‖² + 1.5 uᵀy (u = x/‖x‖) s.t. ‖y‖² ≤ 1, y₀ ≤ 5 (inactive). y = u is a KKT point
    (∇f = −0.5 u = 2λy, λ = −¼ ≤ 0) with D²_YY L = −2I − 2λI = −1.5 I: a maximum on the sphere."""

    def __init__(self, **kw):
        super().__init__((4,), **kw)

    def objective(self, x, y):
        u = x / x.norm(dim=-1, keepdim=True)
        return -(y * y).sum(-1) + 1.5 * (u * y).sum(-1)

    def inequality_constraints(self, x, y):
        return torch.stack([(y * y).sum(-1) - 1, y[:, 0] - 5], -1)

    def solve(self, x):
        return x / x.norm(dim=-1, keepdim=True), {}


class Ridge(DeclarativeNode):
    """f = ½(y₀ − x₀)² − ½(y₁ − x₁)²: y = x is a saddle."""

    def __init__(self, **kw):
        super().__init__((2,), **kw)

    def objective(self, x, y):
        return 0.5 * (y[:, 0] - x[:, 0]) ** 2 - 0.5 * (y[:, 1] - x[:, 1]) ** 2

    def solve(self, x):
        return x.clone(), {}


def _xv(m=4):
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(5, m, dtype=torch.float64, generator=g)
    x = x * (1.5 / x.norm(dim=-1, keepdim=True)).clamp_min(1)
    return x, torch.randn(5, m, dtype=torch.float64, generator=g)


@pytest.mark.parametrize("ls", ["dense", "cg", "minres"])
@pytest.mark.parametrize("cls", [Farthest, FarthestIneq])
def test_a_maximum_is_named_by_every_linear_solver(cls, ls):
    x, v = _xv()
    with pytest.warns(DDNWarning, match=r"not a minimum.*element\(s\) \[0, 1, 2, 3, 4\]"):
        cls(linear_solver=ls).vjp(x, v=v)


@pytest.mark.parametrize("ls", ["cg", "minres"])
def test_a_minimum_is_not_named(ls):
    x, v = _xv()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g_it = Nearest(linear_solver=ls).vjp(x, v=v)[0]
    torch.testing.assert_close(g_it, Nearest().vjp(x, v=v)[0], rtol=1e-8, atol=1e-10)


def test_minres_names_an_unconstrained_saddle():  # a guard: MINRES's vᵀKv < 0 also sees this one
    x, _ = _xv(2)
    v = torch.tensor([[0.1, 1.0]], dtype=torch.float64).expand(5, 2)  # wᵀv = 0.01 − 1 < 0
    with pytest.warns(DDNWarning, match="indefinite"):
        Ridge(linear_solver="minres").vjp(x, v=v)


class ScaledSphere(QuarticSphere):
    def __init__(self, c, **kw):
        super().__init__(6, c, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", [1e-4, 1.0, 1e4])
def test_the_certificate_does_not_flag_a_minimum_for_v_normal_to_the_constraint(c, dtype):
    """v ∥ ∇h: the true w_y is 0, so w_yᵀv is pure round-off. Its bound is that of the block-scaled
    system that MINRES solves (an unscaled bound flagged this minimum at c = 1e-4 in float32)."""
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(64, 6, dtype=dtype, generator=g)
    x = x * (2 / x.norm(dim=-1, keepdim=True)).clamp_min(1)  # the default solver converges
    node = ScaledSphere(c, linear_solver="minres")
    y, ctx = node._solve_detached((x,))
    for v in (y * torch.randn(64, 1, dtype=dtype, generator=g),
              y + 1e-4 * torch.randn(64, 6, dtype=dtype, generator=g)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            node.vjp(x, v=v, y=y, ctx=ctx)
