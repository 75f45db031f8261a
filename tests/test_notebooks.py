"""Fast checks of the notebooks and their interactive pictures (no kernel; run with
``-p no:nbval``):

- every ``notebooks/NN_*.py`` (jupytext percent, the source) has a paired ``.ipynb`` with the
  same cells, and every ``.ipynb`` has its ``.py``;
- every committed ``.ipynb`` is output-free;
- every notebook checks itself with at least one ``assert``;
- the ``update(...)`` callbacks behind the widgets of notebooks 01-08 change what is drawn,
  and what they draw agrees with finite differences where it shows a derivative.
"""
import re
from pathlib import Path

import numpy as np
import pytest

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("matplotlib")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SOURCES = sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.py"))
IPYNBS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_there_are_notebooks():
    assert len(SOURCES) >= 8, f"expected the numbered notebooks in {NOTEBOOKS}"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_py_source_is_paired_with_ipynb(src):
    ipynb = src.with_suffix(".ipynb")
    assert ipynb.exists(), (f"{ipynb.name} missing: run `.venv/bin/jupytext --sync "
                            f"notebooks/{src.name}`")
    from_py = _cells(jupytext.read(src))
    from_nb = _cells(nbformat.read(ipynb, as_version=4))
    assert from_py == from_nb, (f"{src.name} and {ipynb.name} differ: run "
                                f"`.venv/bin/jupytext --sync notebooks/{src.name}`")


@pytest.mark.parametrize("ipynb", IPYNBS, ids=lambda p: p.name)
def test_ipynb_has_py_source(ipynb):
    assert ipynb.with_suffix(".py").exists(), f"{ipynb.name} has no jupytext .py source"


@pytest.mark.parametrize("ipynb", IPYNBS, ids=lambda p: p.name)
def test_ipynb_is_output_free(ipynb):
    nb = nbformat.read(ipynb, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, (f"{ipynb.name}: cells {dirty} carry outputs; clear them "
                       f"(`.venv/bin/jupytext --to ipynb notebooks/{ipynb.stem}.py`)")


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_notebook_checks_itself(src):
    nb = jupytext.read(src)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert re.search(r"^\s*assert\b", code, re.M), f"{src.name} has no assert"


# ---------------------------------------------------------------------------------------------
# widget callbacks
# ---------------------------------------------------------------------------------------------
def _snapshot(fig):
    """Everything drawn: line data, collection offsets, quiver vectors, images, texts."""
    out = []
    for ax in fig.axes:
        for line in ax.get_lines():
            out.append(np.c_[np.asarray(line.get_xdata(), float),
                             np.asarray(line.get_ydata(), float)])
        for coll in ax.collections:
            out.append(np.asarray(coll.get_offsets(), float).ravel())
            if hasattr(coll, "U"):
                out.append(np.r_[np.ravel(coll.U), np.ravel(coll.V)])
        for im in ax.get_images():
            out.append(np.asarray(im.get_array(), float).ravel())
        out.append(ax.get_title())
    return out


def _changed(a, b):
    if len(a) != len(b):
        return True
    for u, v in zip(a, b):
        if isinstance(u, str) or isinstance(v, str):
            if u != v:
                return True
        elif np.shape(u) != np.shape(v) or not np.allclose(u, v, equal_nan=True):
            return True
    return False


def _drive(view, *updates):
    before = _snapshot(view.fig)
    for values in updates:
        fig = view.update(**values)
        assert fig is view.fig
        after = _snapshot(view.fig)
        assert _changed(before, after), f"{type(view).__name__}.update({values}) drew nothing new"
        before = after


def test_unrolling_explorer():
    from ddn.viz.declarative import UnrollingExplorer

    view = UnrollingExplorer(np.array([0.3, -1.0, 2.0, 0.5]), steps=5)
    _drive(view, {"steps": 40}, {"lr": 0.9})
    _, err_unrolled, err_implicit = view.compute()
    assert err_unrolled[-1] < 1e-8 and err_implicit.max() < 1e-12
    with pytest.raises(TypeError, match="accepted"):
        view.update(step=3)


def test_implicit_tangent():
    from ddn.viz.unconstrained import ImplicitTangent, shrinkage_derivative, shrinkage_solve

    _drive(ImplicitTangent(), {"x": -2.0}, {"lam": 0.3})
    x, lam, e = 0.7, 1.3, 1e-6
    fd = (shrinkage_solve(x + e, lam) - shrinkage_solve(x - e, lam)) / (2 * e)
    assert abs(shrinkage_derivative(x, lam) - fd) < 1e-7


def test_simplex_softmax_view():
    from ddn.viz.equality import SimplexSoftmaxView, softmax_jacobian

    _drive(SimplexSoftmaxView(), {"x1": 2.0}, {"temperature": 0.5})
    x, e = np.array([0.4, -0.2, 1.0]), 1e-6
    y, dy = softmax_jacobian(x, 0.7)
    fd = np.column_stack([(softmax_jacobian(x + e * d, 0.7)[0] - softmax_jacobian(x - e * d, 0.7)[0])
                          / (2 * e) for d in np.eye(3)])
    assert np.allclose(dy, fd, atol=1e-8) and np.allclose(dy.sum(0), 0)


@pytest.mark.parametrize("coupling", [0.0, 0.7])
def test_constrained_gradient_geometry(coupling):
    from ddn.viz.geometry import ConstrainedGradientGeometry

    view = ConstrainedGradientGeometry(coupling=coupling)
    _drive(view, {"x": 0.5}, {"radius": 1.6})
    p = view.parts
    assert np.allclose(p["dy"], p["fd"], atol=1e-6)
    assert np.allclose(p["unconstrained"] + p["correction"], p["dy"])
    if coupling == 0.0:   # fixed constraint: Dy is tangent to the circle (Obs. 4.8)
        assert abs(p["dy"] @ p["y"]) < 1e-8


def test_inequality_regimes():
    from ddn.viz.inequality import InequalityRegimes, X_WEAK, disc_projection

    view = InequalityRegimes(x=0.0)
    assert view.regime == "inactive"
    _drive(view, {"x": 1.5}, {"x": float(X_WEAK)})
    assert view.regime == "weakly active"
    for x in (0.2, 1.4, -1.7):
        e = 1e-6
        fd = (disc_projection(x + e)[0] - disc_projection(x - e)[0]) / (2 * e)
        assert np.allclose(disc_projection(x)[1], fd, atol=1e-7)


def test_feasibility_view():
    from ddn.viz.feasibility import FeasibilityView, trilaterate

    view = FeasibilityView()
    assert view.active == [0, 1, 2]       # x > 0: a non-regular vertex
    _drive(view, {"r1": 1.1}, {"x1": -1.0, "x2": 0.5})
    assert view.active == [1]
    view.update(r1=0.2, r2=0.2)           # circles apart: no feasible point, drawn as such
    assert view.dy is None
    e = 1e-6
    y, dy = trilaterate(0.9, 0.6)
    fd = np.column_stack([(trilaterate(0.9 + e * a, 0.6 + e * b)[0]
                           - trilaterate(0.9 - e * a, 0.6 - e * b)[0]) / (2 * e)
                          for a, b in np.eye(2)])
    assert np.allclose(dy, fd, atol=1e-7)


def test_two_solution_view():
    from ddn.viz.singular import TwoSolutionView

    view = TwoSolutionView(x=0.5, branch=1)
    g_plus = view.gradient
    _drive(view, {"branch": -1}, {"x": 2.0})
    view.update(x=0.5)
    assert np.sign(view.gradient) != np.sign(g_plus)


def test_singular_remedies_view():
    from ddn.viz.singular import SingularRemediesView

    view = SingularRemediesView()
    _drive(view, {"delta": 0.01}, {"angle": 2.0}, {"norm": 0.7})
    r = view.remedies
    assert np.allclose(r["pinv"], r["reference"]) and np.allclose(r["normalised"], r["reference"])
    assert not np.allclose(r["proximal"], r["reference"], atol=1e-4)


def test_bilevel_descent():
    from ddn.viz.bilevel import THETA_STAR, BilevelDescent

    view = BilevelDescent(steps=2)
    _drive(view, {"steps": 30}, {"theta0": 0.1})
    assert abs(view.iterates[-1] - THETA_STAR) < 1e-2


def test_interact_builds_sliders_at_current_values():
    pytest.importorskip("ipywidgets")
    from ddn.viz.singular import TwoSolutionView

    view = TwoSolutionView(x=0.7, branch=-1)
    fn = view.interact(x=(0.3, 3.0, 0.05), branch=[1, -1])
    sliders = {w.description: w for w in fn.widget.children if hasattr(w, "description")}
    assert sliders["x"].value == pytest.approx(0.7) and sliders["branch"].value == -1
    sliders["x"].value = 2.0            # moving a slider calls update()
    assert view.values["x"] == pytest.approx(2.0)
    with pytest.raises(TypeError, match="accepted"):
        view.interact(y=(0.0, 1.0))
