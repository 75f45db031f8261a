"""singular="proximal" with the default proximal_delta: an absolute δ = 1e-6 in float32 left
cond(H + δI) ~ 10⁶, above float32's singular threshold 0.1/eps ≈ 8e5: on a singular H the gradient
came with a 'singular' warning and was 3% wrong, and next to ‖H‖ = 10³ (δ lost in round-off) it was
NaN; next to ‖H‖ = 10⁻³ it was biased by 1e-3 in float64 too. The default (None) is now relative to
the problem's scale, r‖H‖ with r = 1e-6 in float64 and 1e-4 in float32; an explicit number is
still an absolute δ."""
import warnings

import pytest
import torch

from ddn import DDNError
from ddn.torch import DeclarativeNode
from sphere_problems import QuarticSphere


class Sphere(QuarticSphere):
    def __init__(self, **kw):
        super().__init__(3, **kw)


class Repeated(Sphere):
    """The sphere twice, the second computed on its own (its own round-off)."""

    def equality_constraints(self, x, y):
        return torch.stack([(y * y).sum(-1) - 1,
                            3.7 * (y[:, 0] ** 2 + y[:, 2] ** 2 + y[:, 1] ** 2) - 3.7], -1)


def _x(b):
    return 2 * torch.randn(b, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


class Flat(DeclarativeNode):
    """s·(½(y₀ + y₁ − x₀)² + ½(y₂ − x₁)² + 0.05 y₂⁴): H singular along (1, −1, 0)."""

    def __init__(self, s=1.0, **kw):
        super().__init__((3,), **kw)
        self.s = s

    def objective(self, x, y):
        return self.s * (0.5 * (y[:, 0] + y[:, 1] - x[:, 0]) ** 2 + 0.5 * (y[:, 2] - x[:, 1]) ** 2
                         + 0.05 * y[:, 2] ** 4)

    def solve(self, x):
        y2 = x[:, 1].clone()  # y₂ − x₁ + 0.2 y₂³ = 0 by Newton; (y₀, y₁) least norm
        for _ in range(50):
            y2 = y2 - (y2 - x[:, 1] + 0.2 * y2 ** 3) / (1 + 0.6 * y2 ** 2)
        return torch.stack([x[:, 0] / 2, x[:, 0] / 2, y2], -1), {}


def _x2():
    return torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("s", [1.0, 1e3, 1e-3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ls", ["dense", "cg"])
def test_default_proximal_is_right_at_every_scale(s, dtype, ls):
    x = _x2()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Jr = Flat(s, singular="pinv").jacobian(x)  # least norm, float64
    node = Flat(s, singular="proximal", linear_solver=ls)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the remedy was chosen: no 'singular' warning
        v = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        (gx,) = node.vjp(x.to(dtype), v=v.to(dtype))
    gr = torch.einsum("bi,bij->bj", v, Jr)
    err = float(((gx.double() - gr).norm(dim=-1) / gr.norm(dim=-1)).max())
    # float32: bias δ/‖H‖ = 1e-4 plus round-off eps·‖H‖/δ along the null direction, ~1e-3
    assert err < (1e-5 if dtype == torch.float64 else 3e-3), err


def test_default_proximal_rank_deficient_constraints_float32_is_silent():
    """Repeated constraints (each with its own round-off): the regularised KKT matrix was called
    singular (cond ~ 4e6) in float32 with δ = 1e-6."""
    x = _x(8).float()
    v = torch.ones_like(x)
    gref = torch.einsum("bi,bij->bj", v.double(), Sphere().jacobian(x.double()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (gx,) = Repeated(singular="proximal").vjp(x, v=v)
    assert float(((gx.double() - gref).norm(dim=-1) / gref.norm(dim=-1)).max()) < 1e-3


def test_explicit_proximal_delta_is_absolute_and_checked():
    x = _x2()
    v = torch.ones(6, 3, dtype=torch.float64)
    a = Flat(1e3, singular="proximal", proximal_delta=1e-6).vjp(x, v=v)[0]
    b = Flat(1e3, singular="proximal").vjp(x, v=v)[0]  # δ = 1e-6·‖H‖ = 1e-3
    assert not torch.allclose(a, b, rtol=0, atol=0)
    with pytest.raises(DDNError, match="proximal_delta must be > 0"):
        Flat(singular="proximal", proximal_delta=0.0).vjp(x, v=v)
