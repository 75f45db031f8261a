"""The interactive pictures of notebooks 09–11 (``ddn.viz.pooling``, ``.projections``,
``.torch_layer``): ``update(...)`` redraws what the widgets ask for, and the numbers they show
are the library's. Fast: no notebook is executed (run with ``-p no:nbval``)."""
import numpy as np
import pytest

import ddn.reference as ref
from ddn.viz.pooling import (PENALTIES, RobustPoolingExplorer, penalty_functions,
                             penalty_table_figure)
from ddn.viz.projections import (P_VALUES, ProjectionExplorer, finite_difference_jacobian,
                                 lp_boundary, lp_projection_figure)
from ddn.viz.torch_layer import (RobustFitExplorer, measure, polynomial_features,
                                 solver_comparison_figure)

INF = float("inf")


# -- robust pooling ---------------------------------------------------------------------------
def test_penalty_functions_match_the_table():
    z = np.array([-2.5, -0.4, 0.3, 1.7])
    a = 1.3
    phi, d1, d2 = penalty_functions("pseudo-huber", a)
    assert np.allclose(phi(z), a**2 * (np.sqrt(1 + (z / a) ** 2) - 1))
    assert np.allclose(d2(z), (1 + (z / a) ** 2) ** -1.5)
    phi, d1, d2 = penalty_functions("welsch", a)
    assert np.allclose(d1(z), z / a**2 * np.exp(-(z**2) / (2 * a**2)))
    assert np.allclose(d2(z), (1 - z**2 / a**2) * np.exp(-(z**2) / (2 * a**2)) / a**2)
    _, d1, d2 = penalty_functions("huber", a)
    assert np.allclose(d1(z), np.clip(z, -a, a))
    assert np.allclose(d2(z), np.abs(z) <= a)
    _, d1, d2 = penalty_functions("truncated-quadratic", a)
    assert np.allclose(d2(z), np.abs(z) < a)


def test_penalty_functions_reject_unknown_names():
    with pytest.raises(ValueError, match="pseudo-huber"):
        penalty_functions("cauchy")


def test_penalty_table_figure_has_one_row_per_penalty():
    fig = penalty_table_figure(alpha=0.5)
    assert len(fig.axes) == 3 * len(PENALTIES)
    # the φ'' column of the quadratic row is constant 1, of the Huber row an indicator of |z| ≤ α
    z, w = fig.axes[2].lines[0].get_data()
    assert np.allclose(w, 1.0)
    z, w = fig.axes[3 * 2 + 2].lines[0].get_data()
    assert np.allclose(w[np.abs(z) < 0.49], 1.0) and np.allclose(w[np.abs(z) > 0.51], 0.0)


def test_robust_pooling_explorer_redraws_and_uses_the_library():
    e = RobustPoolingExplorer(n=30, penalty="quadratic", outlier_fraction=0.0)
    assert np.isclose(e.y, e.x.mean()) and np.allclose(e.dy, 1 / 30)
    before = e.obj_line.get_ydata().copy()
    line_y = e.line_y.get_xdata()[0]

    e.update(penalty="huber", alpha=0.5, outlier_fraction=0.3)
    assert e.is_outlier.sum() == 9
    assert np.isclose(e.y, ref.robust_pool(e.x, "huber", alpha=0.5))
    assert np.allclose(e.dy, ref.RobustPoolNode("huber", 0.5).jacobian(e.x).ravel())
    assert not np.allclose(e.obj_line.get_ydata(), before)
    assert e.line_y.get_xdata()[0] != line_y
    assert np.allclose(e.w_out.get_offsets()[:, 1], e.dy[e.is_outlier])
    assert np.isclose(e.dy.sum(), 1.0)
    assert np.allclose(e.dy[e.is_outlier], 0.0)  # outliers beyond α get no weight under Huber


def test_robust_pooling_explorer_shows_two_minima_for_welsch():
    e = RobustPoolingExplorer(penalty="welsch", alpha=1.0, outlier_fraction=0.45)
    assert len(e.local_minima) == 2
    # the library returns the deeper minimum (mean and median starts, keep the lower)
    f = lambda u: ref.RobustPoolNode("welsch", 1.0).objective(e.x, u)  # noqa: E731
    best = min(e.local_minima, key=f)
    assert abs(e.y - best) < 0.01
    e.update(penalty="pseudo-huber")  # strictly convex: one minimum
    assert len(e.local_minima) == 1


def test_robust_pooling_explorer_rejects_unknown_parameters():
    e = RobustPoolingExplorer(n=10)
    with pytest.raises(TypeError, match="outlier_fraction"):
        e.update(fraction=0.2)


# -- Lp projections ---------------------------------------------------------------------------
@pytest.mark.parametrize("p", P_VALUES)
def test_lp_boundary_lies_on_the_sphere(p):
    b = lp_boundary(p, radius=1.7)
    assert np.allclose(np.linalg.norm(b, ord=p, axis=1), 1.7)


def test_lp_projection_figure_draws_three_panels():
    fig = lp_projection_figure(radius=1.0, n_outside=6)
    assert len(fig.axes) == 3


def test_projection_explorer_redraws_and_matches_finite_differences():
    e = ProjectionExplorer(p=1, radius=1.0, x0=1.5, x1=0.1)   # onto the vertex (1, 0)
    assert np.allclose(e.y, [1.0, 0.0])
    assert np.allclose(e.jacobians[True], 0.0)                 # masked: y does not move
    assert np.allclose(e.jacobians[True], e.fd_jacobian, atol=1e-6)
    assert np.allclose(e.jacobians[False], [[0, 0], [0, 1]])   # Prop. 4.5: I − s sᵀ/‖s‖²
    arrow = e.arrows[False, 1].get_xydata().copy()
    assert np.allclose(arrow[1] - arrow[0], [0.0, 0.5])        # Dy e_2, scaled by 0.5 r

    e.update(p=2, radius=1.5, x0=-1.0, x1=2.0)
    x = np.array([-1.0, 2.0])
    assert np.allclose(e.y, 1.5 * x / np.linalg.norm(x))
    closed = (1.5 / np.linalg.norm(x)) * (np.eye(2) - np.outer(e.y, e.y) / 1.5**2)
    assert np.allclose(e.jacobians[False], closed) and np.allclose(e.jacobians[True], closed)
    assert np.allclose(e.fd_jacobian, closed, atol=1e-6)
    assert not np.allclose(e.arrows[False, 1].get_xydata(), arrow)
    assert np.allclose(e.pt_y.get_xydata()[0], e.y)

    e.update(kind="ball", x0=0.3, x1=-0.2)                     # inside the ball: identity
    assert np.allclose(e.y, [0.3, -0.2]) and np.allclose(e.jacobians[False], np.eye(2))

    e.update(p=INF, kind="sphere", x0=1.8, x1=1.4)             # clipped onto the face y0 = r
    assert np.allclose(e.y, [1.5, 1.4])
    assert np.allclose(e.jacobians[True], e.fd_jacobian, atol=1e-6)


def test_projection_explorer_rejects_a_bad_kind():
    e = ProjectionExplorer()
    with pytest.raises(ValueError, match="sphere"):
        e.update(kind="cube")


def test_finite_difference_jacobian_of_a_linear_map():
    M = np.array([[1.0, 2.0], [3.0, -1.0]])
    assert np.allclose(finite_difference_jacobian(lambda z: M @ z, np.array([0.3, 0.1])), M)


# -- custom torch layer -----------------------------------------------------------------------
def _ridge(F, t, log_lambda, log_alpha):
    """Ridge regression (ignores log_alpha): enough to drive the picture."""
    m = F.shape[1]
    return np.linalg.solve(F.T @ F + np.exp(log_lambda) * np.eye(m), F.T @ t)


def test_robust_fit_explorer_redraws():
    e = RobustFitExplorer(_ridge, degree=5, k=30, log_lambda=-4.0)
    assert np.allclose(e.coefficients, _ridge(e.F, e.t, -4.0, 0.0))
    before = e.fit_line.get_ydata().copy()
    e.update(log_lambda=2.0)
    assert not np.allclose(e.fit_line.get_ydata(), before)
    assert np.allclose(e.fit_line.get_ydata(), e.G @ _ridge(e.F, e.t, 2.0, 0.0))
    assert e.is_outlier.any()


def test_polynomial_features_numpy_and_torch():
    import torch
    s = np.array([0.5, -2.0])
    assert np.allclose(polynomial_features(s, 2), [[1, 0.5, 0.25], [1, -2, 4]])
    assert torch.allclose(polynomial_features(torch.tensor(s), 2),
                          torch.tensor([[1, 0.5, 0.25], [1, -2, 4]], dtype=torch.float64))


def test_solver_comparison_figure_one_line_per_solver():
    rows = [{"solver": s, "size": m, "seconds": 1e-3 * m * (i + 1), "bytes": 1000 * m,
             "backward_seconds": 1e-4 * m}
            for i, s in enumerate(("dense", "cg")) for m in (8, 16, 32)]
    fig = solver_comparison_figure(rows)
    ax_t, ax_m = fig.axes
    assert len(ax_t.lines) == 4 and len(ax_m.lines) == 2      # total and backward per solver
    assert np.allclose(ax_t.lines[2].get_ydata(), [16, 32, 64])
    assert np.allclose(ax_t.lines[3].get_ydata(), [0.8, 1.6, 3.2])
    assert np.allclose(ax_m.lines[0].get_ydata(), np.array([8, 16, 32]) * 1000 / 2**20)


def test_measure_reports_both_phases_and_the_memory_of_a_known_allocation():
    import torch
    x = torch.randn(256, 256, requires_grad=True)
    r = measure(lambda: x @ x, repeats=1)
    assert set(r) == {"forward_seconds", "backward_seconds", "seconds", "bytes"}
    assert r["forward_seconds"] > 0 and r["backward_seconds"] > 0
    assert np.isclose(r["seconds"], r["forward_seconds"] + r["backward_seconds"])
    assert r["bytes"] >= 256 * 256 * 4                          # at least the product itself
