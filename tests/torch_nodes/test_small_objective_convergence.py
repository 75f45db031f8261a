"""The default equality solver at a small objective scale: c·f with c = 10⁻⁴ next to ‖y‖² = 1,
started on the sphere, crept along for solver_max_iter iterations (its line search on ‖∇ℒ‖ is ruled
by the O(1) constraint block) and a few elements were reported as not converged (float64). Those
are now retried with the augmented Lagrangian, as stalled ones were, but the retry's answer is
taken only where the constraints are well conditioned (cond(A)·solver_tol ≤ residual_tol): on
nearly dependent constraints the retry 'converged' in float32 to a y 4e-2 from the answer."""
import re
import warnings

import pytest
import torch

from ddn import DDNWarning
from sphere_problems import QuarticSphere

M = 6


class OnSphere(QuarticSphere):
    def __init__(self, c, **kw):
        super().__init__(M, c, **kw)


class Near(QuarticSphere):
    """The sphere and φ·sphere + 10⁻²·(y₁ − 0.3): regular, cond(A) ~ 10³."""

    def __init__(self, **kw):
        super().__init__(3, **kw)

    def equality_constraints(self, x, y):
        h = (y * y).sum(-1) - 1
        return torch.stack([h, h * (1.5 + y[:, 0] ** 2) + 1e-2 * (y[:, 1] - 0.3)], -1)


@pytest.mark.parametrize("c", [1e-4, 1e-6])
def test_small_objective_converges_from_the_sphere(c):
    x = 2 * torch.randn(64, M, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 'did not converge' for elements 44, 52 at c = 1e-4
        y, ctx = OnSphere(c)._solve_checked((x,))
        y1, _ = OnSphere(1.0)._solve_checked((x,))
    assert bool(ctx["converged"].all())
    assert float((y - y1).norm(dim=-1).max()) < 1e-8


def _named(messages):
    out = set()
    for m in messages:
        if "nearly dependent" in m or "did not converge" in m:
            ids = re.search(r"batch element\(s\) \[([0-9, ]*)\]", m).group(1)
            out |= {int(i) for i in ids.split(",") if i.strip()}
    return out


def test_the_retry_does_not_converge_silently_on_nearly_dependent_constraints():
    x = 2 * torch.randn(24, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y64, c64 = Near().solve(x)
    assert bool(c64["converged"].all())  # float64 resolves cond(A) ~ 1e3
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always", DDNWarning)
        y32, _ = Near()._solve_checked((x.float(),))
    named = _named([str(w.message) for w in rec])
    err = (y32.double() - y64).norm(dim=-1)
    silent = [i for i in range(24) if err[i] > 1e-3 and i not in named]
    assert not silent, (silent, err[silent])
