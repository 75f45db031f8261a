"""``InteractiveFigure.interact`` must show the picture it was given: building the sliders may
not change a parameter (no kernel needed; run with ``-p no:nbval``)."""
import numpy as np
import pytest

pytest.importorskip("matplotlib")
ipywidgets = pytest.importorskip("ipywidgets")


def _sliders(fn):
    return {w.description: w for w in fn.widget.children if hasattr(w, "description")}


def test_float_parameter_with_an_int_range_gets_a_float_slider():
    from ddn.viz.singular import TwoSolutionView

    view = TwoSolutionView(x=0.7)
    before = view.gradient
    s = _sliders(view.interact(x=(0, 3)))["x"]       # an IntSlider used to truncate 0.7 to 0
    assert isinstance(s, ipywidgets.FloatSlider) and s.value == pytest.approx(0.7)
    assert view.values["x"] == pytest.approx(0.7) and np.isfinite(view.gradient)
    assert view.gradient == pytest.approx(before)
    s.value = 2                                        # and it still moves
    assert view.values["x"] == pytest.approx(2.0)


def test_current_value_outside_the_range_is_kept_not_clamped():
    from ddn.viz.bilevel import BilevelDescent

    view = BilevelDescent(theta0=2.5, steps=50)
    s = _sliders(view.interact(theta0=(0.0, 2.0, 0.05), steps=(0, 40)))
    assert s["theta0"].value == pytest.approx(2.5) and s["theta0"].max >= 2.5
    assert isinstance(s["steps"], ipywidgets.IntSlider) and s["steps"].value == 50
    assert view.values["theta0"] == pytest.approx(2.5) and view.values["steps"] == 50
    assert len(view.iterates) == 51


def test_int_parameter_keeps_an_int_slider():
    from ddn.viz.declarative import UnrollingExplorer

    view = UnrollingExplorer(np.array([0.3, -1.0, 2.0]), steps=np.int64(5))
    s = _sliders(view.interact(steps=(0, 60), lr=(0.05, 1.0, 0.05)))
    assert isinstance(s["steps"], ipywidgets.IntSlider) and s["steps"].value == 5
    assert isinstance(s["lr"], ipywidgets.FloatSlider)
