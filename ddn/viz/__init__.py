"""Plotting and interactive helpers used by the notebooks.

Nothing here is imported by ``import ddn``; matplotlib is imported lazily.
Each notebook's interactive picture lives in its own module here (e.g. ``ddn.viz.geometry``)
as a class whose ``update(**values)`` redraws it, so tests can drive the callbacks the
ipywidgets call.
"""
from pathlib import Path

from ddn.utils import is_smoke, repo_root

__all__ = ["save_figure", "figures_dir"]


def figures_dir() -> Path:
    """``figures/`` of the checkout; under ``DDN_SMOKE`` a scratch ``build/figures-smoke``
    instead, so that smoke runs never overwrite the committed full-size figures."""
    root = repo_root() or repo_root(Path(__file__).parent) or Path.cwd()
    d = root / ("build/figures-smoke" if is_smoke() else "figures")
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_figure(fig, name: str, dpi: int = 150) -> Path:
    """Save a matplotlib figure as ``figures_dir()/name`` (PNG unless ``name`` has a suffix)."""
    path = figures_dir() / (name if Path(name).suffix else name + ".png")
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
