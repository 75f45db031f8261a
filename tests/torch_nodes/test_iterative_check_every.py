"""cg/minres ask whether the whole batch is done every ``check_every`` iterations (default 1;
each ask is a host sync on CUDA, and asking less often was measured to gain nothing there).
The iterations past the point where every element is done must change nothing: the solution,
``converged``, the negative-curvature flags and the reported ``iterations`` (the most steps any
element took) are those of checking every iteration."""
import pytest
import torch

from ddn.torch import _linalg


def _spd(b, n, g, dtype=torch.float64):
    G = torch.randn(b, n, n, dtype=dtype, generator=g)
    return G @ G.mT / n + 0.05 * torch.eye(n, dtype=dtype)


def _kkt(b, m, p, g, dtype=torch.float64):
    H = _spd(b, m, g, dtype)
    A = torch.randn(b, p, m, dtype=dtype, generator=g)
    Z = torch.zeros(b, p, p, dtype=dtype)
    return torch.cat([torch.cat([H, -A.mT], 2), torch.cat([-A, Z], 2)], 1)


def _run(solver, K, r, k, **kw):
    calls = []

    def matvec(u):
        calls.append(1)
        return (K @ u.unsqueeze(-1)).squeeze(-1)
    w, info = solver(matvec, r, check_every=k, **kw)
    return w, info, len(calls)


@pytest.mark.parametrize("solver,spd", [(_linalg.cg, True), (_linalg.minres, True),
                                        (_linalg.minres, False)])
@pytest.mark.parametrize("max_iter", [3, 11, 200])
def test_checking_every_8_iterations_changes_nothing(solver, spd, max_iter):
    g = torch.Generator().manual_seed(0)
    K = _spd(6, 12, g) if spd else _kkt(6, 9, 3, g)
    # elements that converge at very different iterations: an identity, a scaled identity, zero r
    K[0] = torch.eye(12, dtype=K.dtype)
    K[1] = 3 * torch.eye(12, dtype=K.dtype)
    r = torch.randn(6, 12, dtype=K.dtype, generator=g)
    r[2] = 0
    w1, i1, n1 = _run(solver, K, r, 1, tol=1e-10, max_iter=max_iter)
    w8, i8, n8 = _run(solver, K, r, 8, tol=1e-10, max_iter=max_iter)
    assert torch.equal(w1, w8)
    assert i1["iterations"] == i8["iterations"] <= max_iter
    assert n8 >= n1  # the extra iterations past "all done" are the only difference
    for key in i1:
        if torch.is_tensor(i1[key]):
            assert torch.equal(i1[key], i8[key]), key
    if max_iter == 200:
        assert bool(i8["converged"].all())
        torch.testing.assert_close(w8, torch.linalg.solve(K, r), rtol=1e-7, atol=1e-8)
    else:
        assert not bool(i8["converged"].all())


def test_iterations_is_the_true_count():
    """Identity systems converge in one step; r = 0 in none."""
    r = torch.randn(4, 5, dtype=torch.float64)
    for solver in (_linalg.cg, _linalg.minres):
        for k in (1, 8):
            w, info = solver(lambda u: u, r, tol=1e-12, max_iter=50, check_every=k)
            assert info["iterations"] == 1 and bool(info["converged"].all())
            torch.testing.assert_close(w, r)
            w0, info0 = solver(lambda u: u, torch.zeros_like(r), tol=1e-12, max_iter=50,
                               check_every=k)
            assert info0["iterations"] == 0 and torch.equal(w0, torch.zeros_like(r))


def test_negative_curvature_is_flagged_alike():
    g = torch.Generator().manual_seed(2)
    K = _spd(3, 8, g)
    K[1] = K[1] - 2 * torch.eye(8, dtype=K.dtype) * K[1].diagonal().max()  # negative definite
    r = torch.randn(3, 8, dtype=K.dtype, generator=g)
    _, a, _ = _run(_linalg.cg, K, r, 1, tol=1e-10, max_iter=100)
    _, b, _ = _run(_linalg.cg, K, r, 8, tol=1e-10, max_iter=100)
    assert a["negative_curvature"].tolist() == b["negative_curvature"].tolist() == [False, True, False]
    assert a["iterations"] == b["iterations"]


def test_default_checks_every_iteration_on_every_device():
    # the every-8 default on CUDA was measured (bench/nodes/cg_check_every.py, H200) to change
    # nothing beyond noise, so the default is the simple one everywhere
    r = torch.zeros(2, 3)
    assert _linalg._check_every(r, None) == 1
    assert _linalg._check_every(r, 8) == 8
