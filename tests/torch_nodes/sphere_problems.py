"""Test problems shared by several files of this folder (imported as a plain module: this folder's
conftest.py puts it on sys.path)."""
from ddn.torch import EqConstrainedNode


def quartic(x, y):
    """½‖y − x‖² + 0.1 Σ y⁴ per batch element: strictly convex, smooth, not a plain projection."""
    return 0.5 * ((y - x) ** 2).sum(-1) + 0.1 * (y ** 4).sum(-1)


class QuarticSphere(EqConstrainedNode):
    """c · quartic(x, y) s.t. ‖y‖² = 1 with y ∈ R^m, started from x/‖x‖."""

    def __init__(self, m, c=1.0, **kw):
        super().__init__((m,), **kw)
        self.c = c

    def objective(self, x, y):
        return self.c * quartic(x, y)

    def equality_constraints(self, x, y):
        return (y * y).sum(-1) - 1

    def initial_guess(self, x):
        return x / x.norm(dim=-1, keepdim=True)
