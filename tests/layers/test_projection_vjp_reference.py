"""The reference projection nodes' vjp is O(n) (never forms Dy) and equals vᵀ·jacobian."""
import numpy as np
import pytest

from ddn.reference import BallProjectionNode, SimplexProjectionNode, SphereProjectionNode

INF = float("inf")


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("p", [1, 2, INF])
@pytest.mark.parametrize("node_cls", [SphereProjectionNode, BallProjectionNode])
@pytest.mark.parametrize("scale", [0.3, 3.0])  # inside and outside the ball
def test_vjp_matches_jacobian(node_cls, p, masked, scale):
    rng = np.random.default_rng(7)
    node = node_cls(p=p, radius=1.3, masked=masked)
    for _ in range(5):
        x = scale * rng.standard_normal(9)
        x[2] = 0.0  # a zero coordinate: pinned for p = 1 after shrinking
        v = rng.standard_normal(9)
        np.testing.assert_allclose(node.vjp(x, v), v @ node.jacobian(x), rtol=1e-13, atol=1e-13)


def test_simplex_vjp_matches_jacobian():
    rng = np.random.default_rng(8)
    node = SimplexProjectionNode(radius=2.0)
    for _ in range(5):
        x, v = rng.standard_normal(11), rng.standard_normal(11)
        np.testing.assert_allclose(node.vjp(x, v), v @ node.jacobian(x), rtol=1e-13, atol=1e-13)


def test_vjp_never_calls_jacobian(monkeypatch):
    node = SphereProjectionNode(p=1, radius=1.0)
    monkeypatch.setattr(node, "jacobian", lambda *a, **k: pytest.fail("vjp formed Dy"))
    node.vjp(np.array([2.0, -1.0, 0.5]), np.ones(3))
