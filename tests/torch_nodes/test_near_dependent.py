"""Nearly (not exactly) dependent equality constraints: h₂ = φ·h₁ + ε·ℓ with ε = 10⁻⁴ (the sphere
‖y‖² = 1 and, through the tiny term, the plane y₁ = 0.3). In float32 the default solver stopped
at the minimum on the sphere alone: ‖h‖ ≈ 5·10⁻⁵ is within its tolerance, but y was O(1) from the
answer and the gradient several times wrong. singular="pinv"/"proximal" (which treat the pair as
exactly dependent) made that silent. It is now a DDNWarning naming the remedy (float64); exactly
dependent constraints and well separated ones in float32 stay silent."""
import warnings

import pytest
import torch

from ddn import DDNWarning
from ddn.torch import DeclarativeLayer, EqConstrainedNode, LinEqConstrainedNode

M = 3


def _f(x, y):
    return 0.5 * ((y - x) ** 2).sum(-1) + 0.1 * (y ** 4).sum(-1)


class Near(EqConstrainedNode):
    eps = 1e-4

    def __init__(self, **kw):
        super().__init__((M,), **kw)

    def objective(self, x, y):
        return _f(x, y)

    def equality_constraints(self, x, y):
        h = (y * y).sum(-1) - 1
        return torch.stack([h, h * (1.5 + y[:, 0] ** 2) + self.eps * (y[:, 1] - 0.3)], -1)

    def initial_guess(self, x):
        return x / x.norm(dim=-1, keepdim=True)


class Separated(Near):
    eps = 0.1  # cond(A) ~ 1e2: an ordinary problem


class Repeated(Near):
    """Exactly dependent, the second constraint computed on its own (its own round-off)."""

    def equality_constraints(self, x, y):
        return torch.stack([(y * y).sum(-1) - 1,
                            3.7 * (y[:, 0] ** 2 + y[:, 2] ** 2 + y[:, 1] ** 2) - 3.7], -1)


class Lin(LinEqConstrainedNode):
    """Two planes, the second tilted by e against the first."""
    e = 0.1

    def __init__(self, **kw):
        super().__init__((M,), **kw)

    def objective(self, x, y):
        return _f(x, y)

    def linear_constraints(self):
        A = torch.tensor([[1.0, 2.0, -1.0], [1.0, 2.0 + self.e, -1.0]], dtype=torch.float64)
        return A, torch.tensor([0.5, 0.5 + 0.3 * self.e], dtype=torch.float64)


def _x(b=8):
    g = torch.Generator().manual_seed(0)
    return 2 * torch.randn(b, M, dtype=torch.float64, generator=g)


@pytest.mark.parametrize("singular", [None, "pinv", "proximal"])
def test_float32_nearly_dependent_constraints_are_reported(singular):
    x = _x().float().requires_grad_()
    with pytest.warns(DDNWarning, match="nearly dependent.*float64") as rec:
        y = DeclarativeLayer(Near(singular=singular))(x)
        y.sum().backward()
    # the elements named are the wrong ones: y is O(1) off the float64 sphere ∩ plane point here
    assert any("[0, 1, 2, 3, 4, 5, 6, 7]" in str(w.message) for w in rec)
    # reported once (by the forward), not again by the backward
    assert sum("nearly dependent" in str(w.message) for w in rec) == 1


def test_nearly_dependent_backward_reports_a_user_solve():
    """The check is in the backward too: a user's solve that stops on the sphere alone."""
    class Mine(Near):
        def solve(self, x):
            return x / x.norm(dim=-1, keepdim=True), {}  # the sphere's minimiser of ½‖y − x‖²

    x = _x().float().requires_grad_()
    with pytest.warns(DDNWarning, match="nearly dependent"):
        Mine(singular="pinv").vjp(x, v=torch.ones_like(x))


def test_nearly_dependent_can_be_an_error():
    from ddn import DDNError
    with pytest.raises(DDNError, match="nearly dependent"):
        Near(singular="pinv", on_degenerate="error").solve(_x().float())


@pytest.mark.parametrize("node", [Separated(), Lin(), Repeated(singular="pinv")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_well_separated_or_exactly_dependent_constraints_are_silent(node, dtype):
    x = _x(8).to(dtype).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = DeclarativeLayer(node)(x)
        y.sum().backward()
    assert torch.isfinite(x.grad).all()


def _on_circle(x):
    """The answer: min ½‖y − x‖² + 0.1 Σy⁴ on the circle y₁ = 0.3, y₀² + y₂² = 0.91 (float64,
    Newton on the angle from the direction of (x₀, x₂))."""
    r = 0.91 ** 0.5
    t = torch.atan2(x[:, 2], x[:, 0])
    for _ in range(50):
        c, s = torch.cos(t), torch.sin(t)
        y0, y2 = r * c, r * s
        d0, d2 = (y0 - x[:, 0]) + 0.4 * y0 ** 3, (y2 - x[:, 2]) + 0.4 * y2 ** 3
        g = -d0 * r * s + d2 * r * c
        hh = (r * s) ** 2 * (1 + 1.2 * y0 ** 2) + (r * c) ** 2 * (1 + 1.2 * y2 ** 2) \
            - d0 * r * c - d2 * r * s
        t = t - g / hh
    return torch.stack([r * torch.cos(t), torch.full_like(t, 0.3), r * torch.sin(t)], -1)


def test_float32_default_solver_is_never_silently_wrong_here():
    """Every element whose float32 y is more than 1e-3 from the answer is named (two of 24 were
    not while the round-off guard was 10·eps: their constraint values were 5·eps along the
    near-dependency, y 6e-2 off)."""
    import re
    x = 2 * torch.randn(24, M, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always", DDNWarning)
        y, _ = Near()._solve_checked((x.float(),))
    named = set()
    for w in rec:
        m = re.search(r"batch element\(s\) \[([0-9, ]*)\]", str(w.message))
        named |= {int(i) for i in m.group(1).split(",") if i.strip()}
    err = (y.double() - _on_circle(x)).norm(dim=-1)
    silent = [i for i in range(24) if err[i] > 1e-3 and i not in named]
    assert not silent, (silent, err[silent])


def test_float64_handles_the_same_constraints_silently():
    """In float64 ε = 10⁻⁴ is well resolved: a y at the solution gives no warning."""
    class AtSolution(Near):
        def solve(self, x):
            return _on_circle(x), {}

    x = _x()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AtSolution().vjp(x, v=torch.ones_like(x))


@pytest.mark.parametrize("eps", [1e-2, 3e-3])
@pytest.mark.parametrize("singular", [None, "pinv"])
def test_float32_gradient_with_nearly_parallel_constraints_at_the_exact_y_is_named(eps, singular):
    """y exact (rounded to float32), cond(A) ~ 10³: the float32 gradient was 1e-2..1e-1 wrong and
    nothing was said (the constraints are regular, below the rank-deficiency threshold)."""
    class AtSolution(Near):
        def solve(self, x):
            return _on_circle(x.double()).to(x.dtype), {}

    AtSolution.eps = eps
    x = 2 * torch.randn(8, M, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always", DDNWarning)
        AtSolution(singular=singular).vjp(x.float(), v=torch.ones(8, M))
    assert any("nearly parallel" in str(w.message) and "float64" in str(w.message) for w in rec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float64 resolves it: silent
        AtSolution(singular=singular).vjp(x, v=torch.ones(8, M, dtype=torch.float64))
