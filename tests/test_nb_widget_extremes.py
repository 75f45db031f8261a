"""The notebooks' interactive pictures at the ends of their sliders (no kernel; run with
``-p no:nbval``): every setting draws without a warning (a warning from constrained layout
means labels ran off the axes and the layout collapsed), and arrows that stand for a
derivative end inside the picture while still pointing along that derivative."""
import itertools
import warnings

import numpy as np
import pytest

pytest.importorskip("matplotlib")


def _render(view):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(view.fig)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        view.fig.canvas.draw()


def _sweep(view, settings):
    """Update to each setting (a dict) in turn, render, and yield it. Rendering is the slow
    part, so the settings are a few chosen extremes rather than a full grid."""
    for values in settings:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            view.update(**values)
        _render(view)
        yield values


def _quiver_tips(q):
    return np.asarray(q.get_offsets()) + np.c_[q.U, q.V] / q.scale


def _inside(ax, pts):
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    return np.all((pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1))


def test_simplex_arrows_stay_in_the_simplex_at_any_temperature():
    from ddn.viz.equality import _VERTICES, SimplexSoftmaxView, softmax_jacobian

    view = SimplexSoftmaxView()
    settings = [dict(x1=3.0, x2=3.0, x3=3.0, temperature=0.2),     # y central, Dy large
                dict(x1=0.0, x2=-3.0, x3=0.0, temperature=0.2),
                dict(x1=3.0, x2=-3.0, x3=0.0, temperature=0.2),    # y at a vertex, Dy ~ 0
                dict(x1=-3.0, x2=3.0, x3=3.0, temperature=3.0)]
    for v in _sweep(view, settings):
        x = np.array([v["x1"], v["x2"], v["x3"]])
        y, dy = softmax_jacobian(x, v["temperature"])
        tips = _quiver_tips(view.arrows)
        # each tip is a convex combination of y and a vertex: inside the triangle
        bary = np.linalg.solve(np.c_[_VERTICES, np.ones(3)].T, np.c_[tips, np.ones(3)].T)
        assert np.all(bary > -1e-9), v
        # and still the columns of Dy, all scaled by the one factor the title reports
        d = dy.T @ _VERTICES
        assert np.allclose(tips - y @ _VERTICES, view.arrow_scale * d), v
        assert f"{view.arrow_scale:.2g}" in view.ax_s.get_title()
    view.update(x1=0.5, x2=0.0, x3=-0.3, temperature=1.0)
    assert 1.5 < view.arrow_scale <= 2.0          # an ordinary setting keeps about ×2


def test_constrained_geometry_arrows_stay_in_the_axes():
    from ddn.viz.geometry import ConstrainedGradientGeometry

    view = ConstrainedGradientGeometry()
    settings = [dict(x=-0.75, radius=1.9, coupling=-1.0),     # target inside: -H^{-1}B large
                dict(x=-0.5, radius=2.0, coupling=-1.0),
                dict(x=3.0, radius=0.3, coupling=1.0),        # y near the top edge
                dict(x=-2.5, radius=2.0, coupling=0.0)]
    for v in _sweep(view, settings):
        p, k = view.parts, view.arrow_scale_used
        assert 0 < k <= view.arrow_scale
        tips = _quiver_tips(view.quiver)
        assert _inside(view.ax, tips), v
        assert np.allclose(tips[2], p["y"] + k * p["dy"])                   # green: Dy
        assert np.allclose(tips[1], p["y"] + k * p["dy"])                   # blue + red = Dy
        dot = [ln for ln in view.ax.get_lines() if ln.get_marker() == "."][0]
        assert np.allclose(dot.get_xydata()[0], p["y"] + k * p["fd"])       # same factor
    view.update(x=2.0, radius=1.2, coupling=0.0)
    assert view.arrow_scale_used == view.arrow_scale                        # ×2 when it fits


def _product(**grid):
    return [dict(zip(grid, c)) for c in itertools.product(*grid.values())]


@pytest.mark.parametrize("name, settings", [
    ("declarative.UnrollingExplorer", _product(steps=[0, 60], lr=[0.05, 1.0])),
    ("unconstrained.ImplicitTangent", _product(x=[-3.5, 3.5], lam=[0.0, 3.0])),
    ("inequality.InequalityRegimes", _product(x=[-2.0, -float(np.sqrt(0.75)), 0.0, 2.0])),
    ("feasibility.FeasibilityView", [dict(r1=0.1, r2=0.1, x1=0.0, x2=0.0),      # apart; x = 0
                                     dict(r1=0.5, r2=0.5, x1=-2.0, x2=-2.0),    # tangent
                                     dict(r1=2.0, r2=0.1, x1=2.0, x2=-2.0),     # nested
                                     dict(r1=2.0, r2=2.0, x1=2.0, x2=2.0)]),
    ("singular.TwoSolutionView", _product(x=[0.3, 3.0], branch=[1, -1])),
    ("singular.SingularRemediesView", [dict(angle=-3.1, norm=0.2, delta=0.001),
                                       dict(angle=3.1, norm=3.0, delta=3.0)]),
    ("bilevel.BilevelDescent", [dict(theta0=0.0, lr=0.2, steps=40),
                                dict(theta0=3.0, lr=0.005, steps=0)]),
], ids=lambda v: v if isinstance(v, str) else "")
def test_widgets_draw_cleanly_at_their_slider_ends(name, settings):
    import importlib

    module, cls = name.rsplit(".", 1)
    view_cls = getattr(importlib.import_module(f"ddn.viz.{module}"), cls)
    view = view_cls(np.array([0.3, -1.0, 2.0, 0.5])) if cls == "UnrollingExplorer" else view_cls()
    for _ in _sweep(view, settings):
        pass


def test_singular_remedies_arrows_are_drawn_for_every_norm_and_angle():
    from ddn.viz.singular import SingularRemediesView

    view = SingularRemediesView()
    settings = [dict(angle=0.6, norm=0.2, delta=0.001),     # |Dy e| = 1/||x|| = 5
                dict(angle=-1.57, norm=3.0, delta=3.0),      # x points down, out of the old view
                dict(angle=3.1, norm=3.0, delta=0.5)]
    for v in _sweep(view, settings):
        ax, k = view.ax_g, view.arrow_scale
        x = v["norm"] * np.array([np.cos(v["angle"]), np.sin(v["angle"])])
        e = np.array([-np.sin(v["angle"]), np.cos(v["angle"])])
        assert _inside(ax, np.array([x])), v                # the x arrow is drawn
        y = view.remedies["y"]
        for name, ann in view.motion_arrows.items():
            tip = np.asarray(ann.xy)
            assert _inside(ax, tip[None]), (v, name)        # else matplotlib skips the arrow
            assert np.allclose(tip - y, k * (view.remedies[name] @ e)), (v, name)
        if k < 1:
            assert f"{k:.2g}" in ax.get_title()
    view.update(angle=0.6, norm=1.5, delta=0.5)
    assert view.arrow_scale == 1.0                          # drawn true size when they fit
