"""Every plot the notebooks draw from ``ddn.viz`` names what its axes show: each visible
axes with a data scale has a title and x and y labels (no kernel; run with ``-p no:nbval``).
Exempt: the penalty table (a grid with column titles and row labels), heat maps (their
ticks are labelled) and the robust-pooling data strip (its y axis is a jitter)."""
import warnings

import numpy as np
import pytest

pytest.importorskip("matplotlib")


def _figures():
    from ddn.viz.bilevel import BilevelDescent, draw_bilevel
    from ddn.viz.declarative import UnrollingExplorer
    from ddn.viz.equality import SimplexSoftmaxView
    from ddn.viz.feasibility import FeasibilityView
    from ddn.viz.geometry import ConstrainedGradientGeometry
    from ddn.viz.inequality import InequalityRegimes, draw_three_regimes
    from ddn.viz.pooling import RobustPoolingExplorer
    from ddn.viz.projections import ProjectionExplorer, lp_projection_figure
    from ddn.viz.singular import SingularRemediesView, TwoSolutionView
    from ddn.viz.torch_layer import RobustFitExplorer
    from ddn.viz.unconstrained import ImplicitTangent

    def lstsq(F, t, log_lambda, log_alpha):
        return np.linalg.lstsq(F, t, rcond=None)[0]

    return {
        "UnrollingExplorer": UnrollingExplorer(np.array([0.3, -1.0, 2.0])).fig,
        "ImplicitTangent": ImplicitTangent().fig,
        "SimplexSoftmaxView": SimplexSoftmaxView().fig,
        "ConstrainedGradientGeometry": ConstrainedGradientGeometry().fig,
        "InequalityRegimes": InequalityRegimes().fig,
        "draw_three_regimes": draw_three_regimes(),
        "FeasibilityView": FeasibilityView().fig,
        "TwoSolutionView": TwoSolutionView().fig,
        "SingularRemediesView": SingularRemediesView().fig,
        "BilevelDescent": BilevelDescent(steps=2).fig,
        "draw_bilevel": draw_bilevel(),
        "RobustPoolingExplorer": RobustPoolingExplorer(n=20).fig,
        "ProjectionExplorer": ProjectionExplorer().fig,
        "lp_projection_figure": lp_projection_figure(n_outside=4),
        "RobustFitExplorer": RobustFitExplorer(lstsq).fig,
    }


def test_every_data_axes_has_a_title_and_axis_labels():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    missing = []
    for name, fig in _figures().items():
        FigureCanvasAgg(fig)
        with warnings.catch_warnings():
            warnings.simplefilter("error")          # e.g. a collapsed constrained layout
            fig.canvas.draw()
        for i, ax in enumerate(fig.axes):
            if not ax.axison or ax.get_images():
                continue
            if name == "RobustPoolingExplorer" and i == 0:
                continue
            for what, text in (("title", ax.get_title()), ("xlabel", ax.get_xlabel()),
                               ("ylabel", ax.get_ylabel())):
                if not text:
                    missing.append(f"{name} axes {i}: no {what}")
    assert not missing, "\n".join(missing)
