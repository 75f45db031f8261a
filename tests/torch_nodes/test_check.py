"""check_gradient_torch and its dispatch from ddn.check.check_gradient."""
import pytest
import torch

import ddn.check
from ddn.torch import DeclarativeLayer, DeclarativeNode, IneqConstrainedNode
from ddn.torch.check import check_gradient_torch

D = torch.float64


class Quartic(DeclarativeNode):
    def objective(self, x, s, y):
        return (0.25 * s * y ** 4 + 0.5 * y ** 2 - x * y).sum(-1)


def test_check_passes_on_a_good_node_and_reads_well():
    x, s = torch.randn(3, 4, dtype=D), torch.rand(3, 1, dtype=D) + 0.5
    rep = check_gradient_torch(Quartic(4), x, s)
    assert rep.ok, str(rep)
    assert rep.max_rel_error < 1e-6 and rep.residual < 1e-10
    assert rep.cond_H >= 1 and rep.n_active == 0 and rep.weakly_active == []
    assert "OK" in str(rep)
    # dispatch from ddn.check, for a node and for a layer (cg solver's vjp checked)
    assert ddn.check.check_gradient(Quartic(4), x, s).ok
    assert ddn.check.check_gradient(DeclarativeLayer(Quartic(4, linear_solver="cg")), x, s).ok


class Ball(IneqConstrainedNode):
    def objective(self, x, y):
        return 0.5 * ((y - x) ** 2).sum(-1)

    def inequality_constraints(self, x, y):
        return (y * y).sum(-1) - 1

    def solve(self, x):
        n = x.norm(dim=-1, keepdim=True)
        return torch.where(n > 1, x / n, x), {}


def test_check_reports_constraints_and_catches_a_wrong_solution():
    x = torch.tensor([[0.3, 0.2], [2.0, 1.0]], dtype=D)
    rep = check_gradient_torch(Ball(), x)
    assert rep.ok, str(rep)
    assert rep.n_active == 1 and rep.active_rank == 1
    assert rep.details["n_active"] == [0, 1]

    class WrongBall(Ball):  # always on the sphere: wrong for the element inside the ball
        def solve(self, x):
            return x / x.norm(dim=-1, keepdim=True), {}

    rep = check_gradient_torch(WrongBall(), x)
    assert not rep.ok
    assert any("wrong sign" in m for m in rep.messages)


def test_check_catches_a_wrong_gradient_in_a_module():
    class BadExp(torch.nn.Module):
        def forward(self, x):
            return _BadExpFn.apply(x)

    class _BadExpFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.exp()

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * x.exp() * 1.01  # 1 % wrong

    x = torch.randn(2, 3, dtype=D)
    assert ddn.check.check_gradient(torch.nn.Tanh(), x).ok
    rep = ddn.check.check_gradient(BadExp(), x)
    assert not rep.ok and rep.max_rel_error == pytest.approx(0.01, rel=0.2)


class TinyScale(DeclarativeNode):
    """y = c·x (c = 1e-10): Dy = c·I, every entry below the default atol = 1e-9."""
    c = 1e-10

    def objective(self, x, y):
        return 0.5 * ((y - self.c * x) ** 2).sum(-1)


class TwiceTinyScale(TinyScale):
    """The same node reporting 2·Dy (jacobian and vjp): a wrong gradient the check must catch."""

    def jacobian(self, *xs, **kw):
        return 2 * super().jacobian(*xs, **kw)

    def vjp(self, *xs, **kw):
        return tuple(None if g is None else 2 * g for g in super().vjp(*xs, **kw))


def test_a_wrong_jacobian_of_tiny_entries_is_caught():
    # with the bare atol = 1e-9 a Dy of entries ~1e-10 passed whatever it was (twice the true
    # one included); the absolute allowance is capped by the differences' rounding noise
    x = torch.randn(3, 4, dtype=D)
    good = check_gradient_torch(TinyScale(4), x)
    assert good.ok, str(good)
    assert float(good.details["atol_effective"].max()) < 1e-9
    bad = check_gradient_torch(TwiceTinyScale(4), x)
    assert not bad.ok
    assert any("differs from finite differences" in m for m in bad.messages)


def test_the_allowance_is_atol_for_outputs_of_unit_scale():
    # for |y| ~ 1 the rounding noise of the differences (~2e-8) exceeds atol: atol is used as is
    x = 1 + torch.rand(3, 4, dtype=D)
    rep = check_gradient_torch(Quartic(4), x, torch.rand(3, 1, dtype=D) + 0.5)
    assert rep.ok
    assert torch.all(rep.details["atol_effective"] == 1e-9)
