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


CASES = [  # (node, x): p = 1 with coordinates pinned at 0, p = ∞ with ties on the face
    (R.SphereProjectionNode(1), np.array([0.3, 0.1, 0.5, 2.0, -0.7])),
    (R.BallProjectionNode(1), np.array([0.3, 0.1, 0.5, 2.0, -0.7])),
    (R.SphereProjectionNode(1, radius=3.0), np.array([0.3, -0.1, 0.5])),  # inside: pushed out
    (R.BallProjectionNode(float("inf")), np.array([3.0, -2.0, 0.5, 0.2])),
    (R.SphereProjectionNode(float("inf")), np.array([3.0, -2.0, 0.5, 0.2])),
]


@pytest.mark.parametrize("node, x", CASES, ids=[f"{type(n).__name__}-p{n.p}-{i}"
                                              for i, (n, _) in enumerate(CASES)])
def test_check_gradient_passes_exact_nonsmooth_projections(node, x):
    # the optimality residual was the smooth |y − x − λ∇h| with autograd's ∇|0| = 0, about τ at
    # the exact p = 1 projection, so check_gradient reported FAILED for a correct node
    rep = check_gradient(node, x)
    assert rep.ok, rep
    assert rep.residual < 1e-12
    y_bad = node.solve(x)[0] + np.array([1e-3, -1e-3] + [0.0] * (x.size - 2))
    assert node.optimality(x, y_bad).residual > 1e-4  # a wrong y is still seen


def test_pooling_and_projection_nodes_check_v_and_y():
    # RobustPoolNode.vjp read a v of any length as v[0] (a silently wrong gradient) and a y of
    # any length as y[0]; the projection nodes returned NaN for a NaN v and broadcast a wrongly
    # shaped y into a numpy ValueError
    x = np.array([0.3, 0.1, 0.5, 2.0, -0.7])
    pool = R.RobustPoolNode("pseudo-huber")
    for v in (np.ones(3), np.array([]), np.array([np.nan])):
        with pytest.raises(DDNError, match="v"):
            pool.vjp(x, v)
    with pytest.raises(DDNError, match="y must have shape"):
        pool.jacobian(x, np.array([0.2, 0.4]))
    with pytest.raises(DDNError, match="alpha"):
        R.RobustPoolNode("huber", float("nan"))
    np.testing.assert_allclose(pool.vjp(x, 2.0), 2.0 * pool.jacobian(x)[0])  # a scalar v is fine
    for node in (R.SphereProjectionNode(2), R.BallProjectionNode(1), R.SimplexProjectionNode()):
        with pytest.raises(DDNError, match="NaN"):
            node.vjp(x, np.array([np.nan, 0, 0, 0, 0]))
        with pytest.raises(DDNError, match="y must have the shape"):
            node.jacobian(x, np.ones(2))
        with pytest.raises(DDNError, match="v must have the shape"):
            node.vjp(x, np.ones(4))


def test_compose_a_layer_with_pooling_and_projections():
    # RobustPoolNode and the projection nodes take any input size (n = None); ComposedNode
    # compared m = 5 with n = None and refused "cannot compose" the paper's layer → pool chain
    W = np.random.default_rng(0).standard_normal((5, 3))
    layer = R.ImperativeNode(lambda x: anp.tanh(anp.dot(W, x)), 3, 5)
    x = np.array([0.3, -0.2, 0.5])
    for tail in [(R.RobustPoolNode("pseudo-huber"),),
                 (R.SphereProjectionNode(1), R.SimplexProjectionNode())]:
        chain = R.ComposedNode(layer, *tail)
        rep = check_gradient(chain, x)
        assert rep.ok, rep
    with pytest.raises(DDNError, match="cannot compose"):
        R.ComposedNode(layer, R.ImperativeNode(anp.tanh, 4, 4))
