"""``DeclarativeNode.jacobian`` builds Dy from m VJPs; a degenerate point is found by each of them,
but each distinct warning is emitted once per call (it was repeated m times)."""
import warnings

import pytest
import torch

from ddn import DDNError, DDNWarning
from ddn.torch import DeclarativeNode

D = torch.float64


class Maximum(DeclarativeNode):
    """f = Σ (−½y² + x y): y = x is a stationary point with H = −I (a maximum, indefinite)."""

    def objective(self, x, y):
        return (-0.5 * y * y + x * y).sum(-1)


class Flat(DeclarativeNode):
    """f = (1ᵀy − 1ᵀx)²: H = 2·11ᵀ has rank 1 (singular) for m = 4."""

    def objective(self, x, y):
        return (y.sum(-1) - x.sum(-1)) ** 2


def _ddn_messages(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, [str(w.message) for w in caught if issubclass(w.category, DDNWarning)]


def test_each_distinct_warning_once_per_jacobian_call():
    x = torch.randn(2, 4, dtype=D)
    node = Maximum(4)
    # y off the stationary point by 0.1: a large residual AND an indefinite H, at every VJP
    J, msgs = _ddn_messages(lambda: node.jacobian(x, y=x + 0.1, ctx={}))
    assert len(msgs) == 2 and len(set(msgs)) == 2, msgs
    assert sum("indefinite" in m for m in msgs) == 1
    assert sum("optimality residual" in m for m in msgs) == 1
    # the Jacobian itself is still that of the stationary point: Dy = −H⁻¹B = I here
    torch.testing.assert_close(J, torch.eye(4, dtype=D).expand(2, 4, 4))
    # a second call warns again (once per call, not once per session)
    _, msgs2 = _ddn_messages(lambda: node.jacobian(x, y=x + 0.1, ctx={}))
    assert msgs2 == msgs


def test_singular_hessian_named_once_and_error_mode_still_raises():
    x = torch.randn(3, 4, dtype=D)
    y = x.clone()
    _, msgs = _ddn_messages(lambda: Flat(4).jacobian(x, y=y, ctx={}))
    assert len(msgs) == 1 and "singular" in msgs[0], msgs
    with pytest.raises(DDNError, match="singular"):
        Flat(4, on_degenerate="error").jacobian(x, y=y, ctx={})


def test_callers_filters_apply_to_the_reemitted_warnings():
    x = torch.randn(2, 4, dtype=D)
    with pytest.warns(DDNWarning, match="indefinite"):  # pyproject turns it into an error otherwise
        Maximum(4).jacobian(x, y=x, ctx={})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DDNWarning)
        Maximum(4).jacobian(x, y=x, ctx={})  # ignored: no error
