"""Degenerate points are named (DDNWarning, or DDNError with on_degenerate="error"), remedies are
opt-in, bad configuration is a DDNError."""
import pytest
import torch

from ddn import DDNError, DDNWarning
from ddn.torch import (DeclarativeLayer, DeclarativeNode, EqConstrainedNode, IneqConstrainedNode)

D = torch.float64


class Direction(DeclarativeNode):
    """f(x, y) = −xᵀy/‖y‖ (Eq. 52–56): solutions y = βx, so H = D²_YY f is singular."""

    def objective(self, x, y):
        return -(x * y).sum(-1) / y.norm(dim=-1)

    def solve(self, x):
        return x / x.norm(dim=-1, keepdim=True), {}


def _direction_closed_form(x, v):
    y = x / x.norm(dim=-1, keepdim=True)  # Dy = (1/‖x‖)(I − yyᵀ) (Eq. 55/56)
    return (v - (v * y).sum(-1, keepdim=True) * y) / x.norm(dim=-1, keepdim=True)


def _grad(layer, *xs, v=None):
    a = tuple(x.clone().requires_grad_() for x in xs)
    y = layer(*a)
    v = torch.ones_like(y) if v is None else v
    return torch.autograd.grad((y * v).sum(), a)


def test_singular_hessian_is_named_and_remedies_are_opt_in():
    x = torch.randn(4, 3, dtype=D)
    v = torch.randn(4, 3, dtype=D)
    with pytest.warns(DDNWarning, match=r"singular.*batch element\(s\) \[0, 1, 2, 3\].*pinv"):
        _grad(DeclarativeLayer(Direction()), x, v=v)
    with pytest.raises(DDNError, match="singular"):
        _grad(DeclarativeLayer(Direction(on_degenerate="error")), x, v=v)
    (g,) = _grad(DeclarativeLayer(Direction(singular="pinv")), x, v=v)
    torch.testing.assert_close(g, _direction_closed_form(x, v), atol=1e-7, rtol=1e-7)
    (g,) = _grad(DeclarativeLayer(Direction(singular="proximal", proximal_delta=1e-8)), x, v=v)
    torch.testing.assert_close(g, _direction_closed_form(x, v), atol=1e-6, rtol=1e-6)
    with pytest.raises(DDNError, match="pinv.*dense"):
        _grad(DeclarativeLayer(Direction(singular="pinv", linear_solver="cg")), x, v=v)


def test_indefinite_hessian_is_named():
    class Maximum(DeclarativeNode):
        def objective(self, x, y):
            return -0.5 * ((y - x) ** 2).sum(-1)

        def solve(self, x):
            return x.clone(), {}

    x = torch.randn(3, 2, dtype=D)
    with pytest.warns(DDNWarning, match="indefinite"):
        (g,) = _grad(DeclarativeLayer(Maximum()), x)
    torch.testing.assert_close(g, torch.ones_like(x))  # still the stationary point's gradient
    with pytest.warns(DDNWarning, match="negative curvature"):
        _grad(DeclarativeLayer(Maximum(linear_solver="cg")), x)


class TwiceTheSame(EqConstrainedNode):
    """min ½‖y − x‖² s.t. Σy = 1 stated twice: rank-deficient constraint Jacobian."""

    def objective(self, x, y):
        return 0.5 * ((y - x) ** 2).sum(-1)

    def equality_constraints(self, x, y):
        s = y.sum(-1) - 1
        return torch.stack([s, 2 * s], -1)

    def solve(self, x):
        return x - (x.sum(-1, keepdim=True) - 1) / x.shape[-1], {}


def test_rank_deficient_constraints_are_named():
    x = torch.randn(3, 4, dtype=D)
    v = torch.randn(3, 4, dtype=D)
    with pytest.warns(DDNWarning, match="linearly dependent"):
        _grad(DeclarativeLayer(TwiceTheSame()), x, v=v)
    (g,) = _grad(DeclarativeLayer(TwiceTheSame(singular="pinv")), x, v=v)
    torch.testing.assert_close(g, v - v.mean(-1, keepdim=True))  # Dy = I − 11ᵀ/m


class Quartic(DeclarativeNode):
    def objective(self, x, y):
        return (0.25 * y ** 4 + 0.5 * y ** 2 - x * y).sum(-1)


def test_non_converged_solve_and_large_residual_are_named():
    x = torch.randn(3, 2, dtype=D) * 3
    with pytest.warns(DDNWarning) as rec:
        _grad(DeclarativeLayer(Quartic(2, solver_max_iter=1)), x)
    text = " ".join(str(w.message) for w in rec)
    assert "did not converge" in text and "residual" in text


def test_cg_not_converged_is_named():
    class IllConditioned(DeclarativeNode):
        def objective(self, x, y):
            w = torch.logspace(0, 6, y.shape[-1], dtype=y.dtype)
            return (0.5 * w * y * y - x * y).sum(-1)

        def solve(self, x):
            return x / torch.logspace(0, 6, x.shape[-1], dtype=x.dtype), {}

    x = torch.randn(2, 30, dtype=D)
    with pytest.warns(DDNWarning, match="cg linear solve.*did not converge"):
        _grad(DeclarativeLayer(IllConditioned(linear_solver="cg", max_iter=3)), x)


def test_nan_input_is_named_and_other_elements_are_fine():
    x = torch.randn(4, 2, dtype=D)
    x[2, 1] = float("nan")
    with pytest.warns(DDNWarning, match=r"non-finite input.*\[2\]"):
        (g,) = _grad(DeclarativeLayer(Quartic(2)), x)
    ok = [0, 1, 3]
    y = DeclarativeLayer(Quartic(2))(x[ok])
    torch.testing.assert_close(g[ok], 1 / (3 * y ** 2 + 1))
    assert torch.isnan(g[2]).all()


class Ball(IneqConstrainedNode):
    """min ½‖y − x‖² s.t. ‖y‖² ≤ 1, with a deliberately wrong solve (always on the sphere)."""

    def objective(self, x, y):
        return 0.5 * ((y - x) ** 2).sum(-1)

    def inequality_constraints(self, x, y):
        return (y * y).sum(-1) - 1

    def solve(self, x):
        return x / x.norm(dim=-1, keepdim=True), {}


class DefaultBall(Ball):
    solve = IneqConstrainedNode.solve  # the default augmented Lagrangian


def test_default_solver_on_the_ball():
    x = torch.tensor([[0.3, 0.2], [2.0, 1.0]], dtype=D)
    y = DeclarativeLayer(DefaultBall(2))(x)
    torch.testing.assert_close(y, torch.stack([x[0], x[1] / x[1].norm()]), atol=1e-9, rtol=1e-9)


def test_wrong_multiplier_sign_is_named():
    x = torch.tensor([[0.3, 0.2], [2.0, 1.0]], dtype=D)  # element 0 is inside the ball
    with pytest.warns(DDNWarning, match=r"wrong sign.*\[0\]"):
        _grad(DeclarativeLayer(Ball()), x)


def test_weakly_active_is_named():
    class Relu(IneqConstrainedNode):  # ReLU = argmin ½(u − x)² s.t. u ≥ 0
        def objective(self, x, y):
            return 0.5 * ((y - x) ** 2).sum(-1)

        def inequality_constraints(self, x, y):
            return -y

        def solve(self, x):
            return torch.relu(x), {}

    x = torch.tensor([[1.0, 0.0, -1.0]], dtype=D)
    with pytest.warns(DDNWarning, match=r"weakly active.*\(0, 1\)"):
        (g,) = _grad(DeclarativeLayer(Relu()), x)
    torch.testing.assert_close(g, torch.tensor([[1.0, 0.0, 0.0]], dtype=D))  # one-sided: active


def test_bad_configuration_is_an_error():
    with pytest.raises(DDNError, match="linear_solver"):
        Quartic(2, linear_solver="qr")
    with pytest.raises(DDNError, match="singular"):
        Quartic(2, singular="yes")
    with pytest.raises(DDNError, match="output_shape"):
        DeclarativeLayer(Quartic())(torch.randn(2, 2))
    with pytest.raises(DDNError, match="ddn.torch node"):
        DeclarativeLayer(object())

    class BadShape(DeclarativeNode):
        def objective(self, x, y):
            return 0.5 * (y - x) ** 2  # (b, m), not (b,)

        def solve(self, x):
            return x.clone(), {}

    x = torch.randn(2, 3, dtype=D, requires_grad=True)
    with pytest.raises(DDNError, match=r"shape \(batch,\)"):
        DeclarativeLayer(BadShape())(x).sum().backward()

    class Detached(DeclarativeNode):
        def objective(self, x, y):
            return 0.5 * ((y - x) ** 2).sum(-1)

        def solve(self, x):
            return x.detach().clone(), {}

    with pytest.raises(DDNError, match="unroll"):
        DeclarativeLayer(Detached(linear_solver="unroll"))(x)
    with pytest.raises(DDNError, match="cannot be unrolled"):
        DeclarativeLayer(DefaultBall(2, linear_solver="unroll"))(x[:, :2])
    with pytest.raises(DDNError, match="batch size"):
        DeclarativeLayer(Quartic(2))(torch.randn(2, 2), torch.randn(3, 2))


def test_on_degenerate_error_in_the_forward():
    x = torch.randn(3, 2, dtype=D)
    x[1, 0] = float("inf")
    with pytest.raises(DDNError, match=r"non-finite input.*\[1\]"):
        DeclarativeLayer(Quartic(2, on_degenerate="error"))(x)
    with pytest.raises(DDNError, match="did not converge"):
        DeclarativeLayer(Quartic(2, solver_max_iter=1, on_degenerate="error"))(x[[0, 2]] * 3)


def test_solve_dense_checks_the_residual_where_lu_was_used():
    # Cholesky-solved elements are backward stable (residual not computed: 0); elements that are
    # not positive definite go through LU and get a real residual check; a singular one is named.
    from ddn.torch import _linalg
    torch.manual_seed(0)
    Q = torch.linalg.qr(torch.randn(3, 5, 5, dtype=torch.float64))[0]
    ev = torch.tensor([[1.0, 2, 3, 4, 5], [-1.0, 2, 3, 4, 5], [0.0, 2, 3, 4, 5]], dtype=torch.float64)
    K = Q @ torch.diag_embed(ev) @ Q.mT
    K = 0.5 * (K + K.mT)
    r = torch.randn(3, 5, dtype=torch.float64)
    w, info = _linalg.solve_dense(K, r)
    assert info["pd"].tolist() == [True, False, False]
    assert info["singular"].tolist() == [False, False, True]
    assert info["linear_residual"][0] == 0
    assert 0 < info["linear_residual"][1] < 1e-12
    for e in (0, 1):
        assert torch.allclose(w[e], torch.linalg.solve(K[e], r[e]), atol=1e-10)
