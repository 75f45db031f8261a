"""The proposition formulas and implicit_vjp against a different implementation: the full KKT
system of the differentiated first-order conditions,

    [[H, −Aᵀ], [A, 0]] [Dy; Dλ] = −[B; C],

on random well-posed problems (hypothesis), and the singular / non-regular remedies."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ddn import DDNError
from ddn.reference import (cor_4_7_jacobian, cor_4_9_jacobian, feasibility_jacobian,
                           implicit_vjp, prop_4_4_jacobian, prop_4_5_jacobian)


def _kkt_jacobian(H, A, B, C):
    m, p = H.shape[0], A.shape[0]
    K = np.block([[H, -A.T], [A, np.zeros((p, p))]])
    return -np.linalg.solve(K, np.vstack([B, C]))[:m]


def _problem(seed, m, p, n):
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((m, m))
    H = M @ M.T + m * np.eye(m)  # SPD, well conditioned
    return H, rng.standard_normal((p, m)), rng.standard_normal((m, n)), \
        rng.standard_normal((p, n)), rng.standard_normal(m)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), m=st.integers(2, 6), n=st.integers(1, 4), data=st.data())
def test_prop_4_5_and_implicit_vjp_match_the_kkt_system(seed, m, n, data):
    p = data.draw(st.integers(0, m - 1))
    H, A, B, C, v = _problem(seed, m, p, n)
    J = prop_4_5_jacobian(H, A, B, C)
    J_kkt = _kkt_jacobian(H, A, B, C)
    np.testing.assert_allclose(J, J_kkt, atol=1e-9 * max(1.0, np.abs(J_kkt).max()))
    # implicit_vjp only sees pullback(u, μ) = uᵀB + μᵀC
    np.testing.assert_allclose(implicit_vjp(v, H, lambda u, mu: u @ B + mu @ C, A), v @ J_kkt,
                               atol=1e-9 * max(1.0, np.abs(v @ J_kkt).max()))
    if p:  # Cor. 4.9 is Prop. 4.5 with C = 0
        np.testing.assert_allclose(cor_4_9_jacobian(H, A, B), _kkt_jacobian(H, A, B, 0 * C),
                                   atol=1e-9 * max(1.0, np.abs(J_kkt).max()))
        # Cor. 4.7 is the p = 1 case
        J47 = cor_4_7_jacobian(H, A[0], B)
        np.testing.assert_allclose(J47, _kkt_jacobian(H, A[:1], B, 0 * C[:1]),
                                   atol=1e-9 * max(1.0, np.abs(J47).max()))
    else:
        np.testing.assert_allclose(J, prop_4_4_jacobian(H, B), atol=1e-12)


def test_feasibility_jacobian_is_minus_a_inverse_c():
    _, A, _, C, v = _problem(0, 3, 3, 2)
    J = feasibility_jacobian(A, C)
    np.testing.assert_allclose(A @ J, -C, atol=1e-12)
    np.testing.assert_allclose(implicit_vjp(v, None, lambda u, mu: mu @ C, A), v @ J,
                               atol=1e-12)


def test_pinv_remedy_is_minimum_norm_solution_of_eq_51():
    """H singular: −H⁺B solves H Dy = −B in the least-squares sense with minimum norm; adding
    (I − H⁺H)Z gives the other members of the family (Eq. 51)."""
    rng = np.random.default_rng(1)
    Q = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    H = Q @ np.diag([3.0, 2.0, 1.0, 0.0]) @ Q.T
    B = H @ rng.standard_normal((4, 2))  # in range(H): consistent
    with pytest.raises(DDNError, match="pinv"):
        prop_4_4_jacobian(H, B)
    J = prop_4_4_jacobian(H, B, singular="pinv")
    np.testing.assert_allclose(H @ J, -B, atol=1e-12)
    Z = rng.standard_normal((4, 2))
    J2 = J + (np.eye(4) - np.linalg.pinv(H) @ H) @ Z
    np.testing.assert_allclose(H @ J2, -B, atol=1e-12)
    assert np.linalg.norm(J) < np.linalg.norm(J2)


def test_unknown_option_names_the_choices():
    H = np.eye(2)
    with pytest.raises(DDNError, match="'error', 'pinv', 'proximal'"):
        prop_4_4_jacobian(H, np.eye(2), singular="ridge")
    with pytest.raises(DDNError, match="'error', 'lstsq', 'drop', 'pinv'"):
        prop_4_5_jacobian(H, np.ones((1, 2)), np.eye(2), np.ones((1, 2)), nonregular="x")


# ---- matrix-free solves (Sec. 6.1): MINRES with Hessian-vector products -----------------------
def _nodes_for_minres():
    from ddn.reference import (ProbabilitySimplexNode, QuadraticNode, UnitBallNode,
                               UnitSphereNode)
    rng = np.random.default_rng(7)
    M = rng.standard_normal((6, 6))
    P, Q = M @ M.T + np.eye(6), rng.standard_normal((6, 4))
    x6 = 2.0 * rng.standard_normal(6)
    return [(lambda **kw: QuadraticNode(P, Q, **kw), rng.standard_normal(4)),
            (lambda **kw: UnitSphereNode(6, **kw), x6),
            (lambda **kw: UnitBallNode(6, **kw), x6),
            (lambda **kw: ProbabilitySimplexNode(6, **kw), x6)]


@pytest.mark.parametrize("k", range(4), ids=["quadratic", "sphere", "ball", "simplex"])
def test_matrix_free_solver_matches_dense(k):
    make, x = _nodes_for_minres()[k]
    dense, free = make(), make(linear_solver="minres")
    y, ctx = dense.solve(x)
    v = np.linspace(-1.0, 1.0, dense.m)
    np.testing.assert_allclose(free.jacobian(x, y, ctx), dense.jacobian(x, y, ctx), atol=1e-10)
    np.testing.assert_allclose(free.vjp(x, v, y, ctx), dense.vjp(x, v, y, ctx), atol=1e-10)
    opt_free, opt_dense = free.optimality(x, y, ctx), dense.optimality(x, y, ctx)
    assert opt_free.cond_H == pytest.approx(opt_dense.cond_H, rel=1e-6)


def test_matrix_free_solver_detects_singular_h():
    from ddn.reference import DirectionAlignmentNode
    x = np.array([0.5, -1.0, 2.0, 0.3])
    with pytest.raises(DDNError, match="singular.*proximal"):
        DirectionAlignmentNode(4, linear_solver="minres").vjp(x, np.ones(4))
    with pytest.raises(DDNError, match="linear_solver='dense'"):
        DirectionAlignmentNode(4, linear_solver="minres", singular="pinv").jacobian(x)
    free = DirectionAlignmentNode(4, linear_solver="minres", singular="proximal",
                                  proximal_delta=0.1)
    dense = DirectionAlignmentNode(4, singular="proximal", proximal_delta=0.1)
    np.testing.assert_allclose(free.jacobian(x), dense.jacobian(x), atol=1e-10)


def test_eq_32_multipliers():
    from ddn.reference import eq_32_multipliers
    rng = np.random.default_rng(2)
    A, lam = rng.standard_normal((2, 4)), np.array([0.5, -1.5])
    np.testing.assert_allclose(eq_32_multipliers(lam @ A, A), lam, atol=1e-12)
    g = rng.standard_normal(4)  # not in the row space: Eq. 32 is the least-squares answer
    np.testing.assert_allclose(eq_32_multipliers(g, A), np.linalg.solve(A @ A.T, A @ g),
                               atol=1e-12)


def test_matrix_free_solve_says_when_cond_h_could_not_be_estimated(monkeypatch):
    # the Lanczos estimate returned nan when ARPACK did not converge, and the singular-H check
    # was skipped without a word
    import scipy.sparse.linalg as spla

    from ddn import DDNWarning
    from ddn.reference import _linalg

    def no_convergence(*a, **k):
        raise spla.ArpackNoConvergence("no convergence", np.array([]), np.array([]))
    monkeypatch.setattr(_linalg.spla, "eigsh", no_convergence)
    H = np.diag([1.0, 2.0, 3.0, 4.0])
    op = spla.aslinearoperator(H)
    with pytest.warns(DDNWarning, match="could not estimate cond"):
        Hs = _linalg.HessianSolve(op, "error")
    np.testing.assert_allclose(Hs.solve(np.ones(4)), 1 / np.diag(H), rtol=1e-10)
