"""A ComposedNode's stage messages appear once per call and name their stage: the weakly active
ReLU stage's warning came without any stage, and check_gradient listed it four times (once as
"stage 1: ...", then once per optimality evaluation of diagnosis, jacobian and vjp)."""
import warnings

import numpy as np
import pytest

from ddn import DDNWarning
from ddn.check import check_gradient
from ddn.reference import ComposedNode, ImperativeNode, ReLUNode

X = np.array([0.0, 1.0, -1.0])  # x₀ = 0: ReLU's constraint is weakly active there


def _chain():
    return ComposedNode(ImperativeNode(lambda x: 1.0 * x, 3, 3), ReLUNode(3),
                        ImperativeNode(lambda x: 2.0 * x, 3, 3), ReLUNode(3))


def _caught(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught if issubclass(w.category, DDNWarning)]


@pytest.mark.parametrize("call", ["jacobian", "vjp"])
def test_each_stage_warns_once_naming_itself(call):
    chain = _chain()
    y, ctx = chain.solve(X)
    if call == "jacobian":
        said = _caught(lambda: chain.jacobian(X, y, ctx))
    else:
        said = _caught(lambda: chain.vjp(X, np.ones(3), y, ctx))
    # stages 1 and 3 are both ReLUs with a weakly active x₀ = 0: one message each, each named
    assert len(said) == 2, said
    assert said[0 if call == "jacobian" else 1].startswith("ComposedNode stage 1 (ReLUNode): ")
    assert said[1 if call == "jacobian" else 0].startswith("ComposedNode stage 3 (ReLUNode): ")
    assert all("weakly active" in m for m in said)


def test_stage_warning_is_a_ddn_warning_for_the_caller():
    chain = ComposedNode(ImperativeNode(lambda x: 1.0 * x, 3, 3), ReLUNode(3))
    y, ctx = chain.solve(X)
    with pytest.warns(DDNWarning, match=r"stage 1 \(ReLUNode\)"):
        chain.jacobian(X, y, ctx)


def test_check_gradient_lists_each_stage_message_once():
    report = check_gradient(_chain(), X)
    weak = [m for m in report.messages if "are weakly active" in m]
    assert len(weak) == 2, report.messages
    assert weak[0].startswith("ComposedNode stage 1 (ReLUNode): ")
    assert weak[1].startswith("ComposedNode stage 3 (ReLUNode): ")
    assert len(report.messages) == len(set(report.messages))
