"""Audit regressions for the reference projection nodes used through the generic machinery
(ddn.check, bi-level gradients)."""
import autograd.numpy as anp
import numpy as np
import pytest

import ddn.reference as R
from ddn import DDNError
from ddn.check import check_gradient


def test_simplex_projection_node_works_with_check_and_bilevel_helpers():
    # SimplexProjectionNode had no n, m or optimality: check_gradient, upper_gradient and
    # shortcut_gradient crashed with AttributeError (and the shortcut, meant for unconstrained
    # nodes only, would not have refused it)
    node = R.SimplexProjectionNode()
    x = np.array([0.9, -0.3, 0.5, 1.2, -1.0])
    rep = check_gradient(node, x)
    assert rep.ok and rep.n_active == 4, rep  # Σu = 1 and the three zero coordinates
    J = lambda x, y: anp.sum((y - anp.array([0.1, 0.2, 0.3, 0.4, 0.0])) ** 2)  # noqa: E731
    total = lambda z: J(z, node.solve(z)[0])  # noqa: E731
    fd = np.array([(total(x + 1e-6 * e) - total(x - 1e-6 * e)) / 2e-6 for e in np.eye(5)])
    np.testing.assert_allclose(R.upper_gradient(J, node, x), fd, atol=1e-8)
    with pytest.raises(DDNError, match="upper_gradient"):
        R.shortcut_gradient(node, x)
    with pytest.raises(DDNError, match="radius"):
        R.SimplexProjectionNode(radius=0.0)
