"""Pictures for robust pooling (paper §5.1, Eq. 60–64 and its table; notebook 09).

``penalty_table_figure`` draws φ, φ' and φ'' for the five penalties (the paper's table as
curves). ``RobustPoolingExplorer`` pools one set of scalars (inliers plus a cluster of
outliers) and shows where the pooled value ``y`` lands, the objective ``u ↦ Σ φ(u − x_i)``
with all its local minima and the mean / median starts, and the gradient weights
``D_{x_i} y = φ''(y − x_i) / Σ_j φ''(y − x_j)``. Its ``update(**values)`` redraws, so the
notebook's ipywidgets and the tests drive the same code.

matplotlib is imported here, so ``import ddn`` never pulls it in (``ddn.viz`` is imported
only by notebooks and scripts).
"""
import numpy as np
from matplotlib.figure import Figure

from ._interactive import InteractiveFigure

__all__ = ["PENALTIES", "penalty_functions", "penalty_table_figure", "RobustPoolingExplorer"]

#: The five penalties of §5.1, in the paper's order (least to most robust).
PENALTIES = ("quadratic", "pseudo-huber", "huber", "welsch", "truncated-quadratic")

_SHORT = {"quadratic": "Q", "pseudo-huber": "PH", "huber": "H", "welsch": "W",
          "truncated-quadratic": "TQ"}
_PROPERTIES = {  # (convex, smooth) as in the paper's table
    "quadratic": "convex, smooth",
    "pseudo-huber": "strictly convex, smooth",
    "huber": "convex, C¹",
    "welsch": "non-convex, smooth",
    "truncated-quadratic": "non-convex, non-smooth",
}
_COLORS = {"quadratic": "C0", "pseudo-huber": "C1", "huber": "C2", "welsch": "C3",
           "truncated-quadratic": "C4"}


def penalty_functions(penalty, alpha=1.0):
    """``(φ, φ', φ'')`` of one penalty as vectorised numpy functions of ``z = u − x_i``.

    φ is ``ddn.reference.penalty`` (paper Eq. 59, 61–64); its derivatives are taken by
    autograd, so the curves drawn are those of the library (on the kinks ``|z| = α`` of Huber
    and truncated quadratic autograd picks one side).
    """
    from autograd import elementwise_grad
    from ddn.reference import penalty as phi_lib

    def phi(z):
        return phi_lib(z, penalty, alpha)
    d1 = elementwise_grad(phi)
    d2 = elementwise_grad(d1)

    def as_float(f):
        return lambda z: np.asarray(f(np.asarray(z, dtype=float)), dtype=float)
    phi_lib(np.zeros(1), penalty, alpha)  # raises DDNError naming the choices for a bad name
    return as_float(phi), as_float(d1), as_float(d2)


def penalty_table_figure(alpha=1.0, z_max=4.0):
    """The paper's §5.1 table as a 5 × 3 grid of curves: φ(z; α), φ'(z) (the influence of a
    point on the optimality condition Σ φ'(y − x_i) = 0) and φ''(z) (the un-normalised
    gradient weight of a point), for the five penalties at one ``alpha``."""
    z = np.linspace(-z_max, z_max, 801)
    fig = Figure(figsize=(10, 11), layout="constrained")
    axes = fig.subplots(len(PENALTIES), 3, sharex=True)
    titles = ("φ(z; α)", "φ'(z)  (influence)", "φ''(z)  (gradient weight)")
    for r, name in enumerate(PENALTIES):
        fs = penalty_functions(name, alpha)
        for c in range(3):
            ax = axes[r, c]
            ax.plot(z, fs[c](z), color=_COLORS[name], lw=2)
            ax.axhline(0, color="0.7", lw=0.8)
            for s in (-alpha, alpha):
                ax.axvline(s, color="0.85", lw=0.8, ls="--")
            if r == 0:
                ax.set_title(titles[c])
        axes[r, 0].set_ylabel(f"{name} ({_SHORT[name]})\n{_PROPERTIES[name]}", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("z = u − x_i")
    fig.suptitle(f"Robust pooling penalties (paper §5.1, Eq. 59–64), α = {alpha:g}; "
                 "dashed lines at |z| = α")
    return fig


def _local_minima(f):
    """Indices of the strict-left / weak-right local minima of a sampled 1-D function (plateaus
    count once, at their left end)."""
    i = np.arange(1, len(f) - 1)
    return i[(f[i] < f[i - 1]) & (f[i] <= f[i + 1])]


def _descend(f, i):
    """Walk downhill on the grid from index ``i``: the grid point a local method started at
    ``i`` would reach (for drawing basins; the library runs the real solver)."""
    while True:
        j = i
        if i > 0 and f[i - 1] < f[j]:
            j = i - 1
        if i < len(f) - 1 and f[i + 1] < f[j]:
            j = i + 1
        if j == i:
            return i
        i = j


class RobustPoolingExplorer(InteractiveFigure):
    """Robust pooling of ``n`` scalars: inliers ``N(0, inlier_scale²)`` plus a fraction of
    points replaced by a cluster of outliers ``N(outlier_center, outlier_scale²)``.

    Three panels: (a) the data and the pooled values of the mean, the median and the chosen
    penalty; (b) the objective ``f(u) = Σ φ(u − x_i)`` with its local minima (non-convex
    penalties can have several) and the basins the mean and median starts fall into; (c) the
    gradient weights ``D_{x_i} y`` (they sum to one).

    Parameters (``update`` takes any of them): ``penalty``, ``alpha``, ``outlier_fraction``.
    ``pool(x, penalty, alpha) -> y`` and ``weights(x, penalty, alpha) -> (n,)`` default to
    ``ddn.reference.robust_pool`` and the Jacobian of ``ddn.reference.RobustPoolNode``.
    After a redraw ``x``, ``is_outlier``, ``y``, ``dy`` (the weights), ``objective`` (on the
    grid ``u``) and ``local_minima`` hold what is drawn.
    """

    defaults = {"penalty": "pseudo-huber", "alpha": 1.0, "outlier_fraction": 0.2}
    figsize = (11.0, 3.6)

    def __init__(self, n=60, *, inlier_scale=0.6, outlier_center=4.0, outlier_scale=0.4,
                 seed=0, pool=None, weights=None, **values):
        rng = np.random.default_rng(seed)
        self.n = int(n)
        self._inliers = rng.normal(0.0, inlier_scale, self.n)
        self._outliers = rng.normal(outlier_center, outlier_scale, self.n)
        self._jitter = rng.uniform(-1, 1, self.n)
        self._pool = pool or _reference_pool
        self._weights = weights or _reference_weights
        lo = min(self._inliers.min(), self._outliers.min()) - 1.5
        hi = max(self._inliers.max(), self._outliers.max()) + 1.5
        self.u = np.linspace(lo, hi, 1201)
        super().__init__(**values)

    def _build(self):
        self.ax_data, self.ax_obj, self.ax_w = self.fig.subplots(1, 3)
        ax = self.ax_data
        self.pts_in = ax.scatter([], [], s=14, color="C0", label="inliers")
        self.pts_out = ax.scatter([], [], s=14, color="C3", marker="x", label="outliers")
        self.line_mean = ax.axvline(0, color="0.4", ls=":", label="mean (Q)")
        self.line_median = ax.axvline(0, color="0.4", ls="--", label="median")
        self.line_y = ax.axvline(0, color="k", lw=2, label="y (robust pool)")
        ax.set_ylim(-1.6, 1.6)
        ax.set_yticks([])
        ax.set_xlabel("x_i")
        ax.legend(loc="upper right", fontsize=7)
        ax = self.ax_obj
        (self.obj_line,) = ax.plot([], [], color="k")
        (self.obj_minima,) = ax.plot([], [], "o", mfc="none", mec="C2", ms=9,
                                     label="local minima")
        (self.obj_starts,) = ax.plot([], [], "v", color="0.4", ms=7, label="mean / median start")
        (self.obj_y,) = ax.plot([], [], "*", color="C3", ms=14, label="y")
        ax.set_xlabel("u")
        ax.set_ylabel("f(u) − min f")
        ax.legend(loc="upper right", fontsize=7)
        ax = self.ax_w
        self.w_in = ax.scatter([], [], s=14, color="C0")
        self.w_out = ax.scatter([], [], s=14, color="C3", marker="x")
        ax.axhline(0, color="0.7", lw=0.8)
        ax.set_xlabel("x_i")
        ax.set_ylabel("D_{x_i} y")
        self.w_text = ax.text(0.02, 0.95, "", transform=ax.transAxes, va="top", fontsize=8)

    def _draw(self):
        penalty = self.values["penalty"]
        alpha = float(self.values["alpha"])
        k = int(round(float(self.values["outlier_fraction"]) * self.n))
        out = np.arange(self.n) < k
        x = np.where(out, self._outliers, self._inliers)
        y = float(self._pool(x, penalty, alpha))
        w = np.asarray(self._weights(x, penalty, alpha), dtype=float).reshape(-1)
        phi = penalty_functions(penalty, alpha)[0]
        f_raw = phi(self.u[:, None] - x[None, :]).sum(axis=1)
        f = f_raw - f_raw.min()
        mins = _local_minima(f)
        self.x, self.is_outlier, self.y, self.dy = x, out, y, w
        self.objective, self.local_minima = f, self.u[mins]

        jit = self._jitter
        self.pts_in.set_offsets(np.c_[x[~out], jit[~out]])
        self.pts_out.set_offsets(np.c_[x[out], jit[out]] if out.any() else np.empty((0, 2)))
        mean, median = float(x.mean()), float(np.median(x))
        self.line_mean.set_xdata([mean, mean])
        self.line_median.set_xdata([median, median])
        self.line_y.set_xdata([y, y])
        self.ax_data.set_xlim(self.u[0], self.u[-1])
        self.ax_data.set_title(f"{penalty}, α = {alpha:g}: y = {y:.3f}", fontsize=10)

        starts = [int(np.argmin(np.abs(self.u - s))) for s in (mean, median)]
        self.obj_line.set_data(self.u, f)
        self.obj_minima.set_data(self.u[mins], f[mins])
        self.obj_starts.set_data([self.u[i] for i in starts], [f[i] for i in starts])
        self.obj_y.set_data([y], [float(phi(y - x).sum() - f_raw.min())])
        top = max(float(f.max()), 1e-12)
        self.ax_obj.set_xlim(self.u[0], self.u[-1])
        self.ax_obj.set_ylim(-0.05 * top, 1.05 * top)
        reach = [self.u[_descend(f, i)] for i in starts]
        self.ax_obj.set_title(f"{len(mins)} local minim{'um' if len(mins) == 1 else 'a'}; "
                              f"mean start → {reach[0]:.2f}, median start → {reach[1]:.2f}",
                              fontsize=10)

        self.w_in.set_offsets(np.c_[x[~out], w[~out]])
        self.w_out.set_offsets(np.c_[x[out], w[out]] if out.any() else np.empty((0, 2)))
        self.ax_w.set_xlim(self.u[0], self.u[-1])
        pad = 0.1 * max(float(np.ptp(w)), 1e-3)
        self.ax_w.set_ylim(min(float(w.min()), 0.0) - pad, float(w.max()) + pad)
        self.w_text.set_text(f"Σ_i D_{{x_i}} y = {w.sum():.3f}\n"
                             f"outliers' share = {w[out].sum():.3f}")
        self.ax_w.set_title("gradient weights φ''(y − x_i) / Σ_j φ''(y − x_j)", fontsize=10)


def _reference_pool(x, penalty, alpha):
    from ddn.reference import robust_pool
    return robust_pool(np.asarray(x, dtype=float), penalty, alpha=alpha)


def _reference_weights(x, penalty, alpha):
    from ddn.reference import RobustPoolNode
    return RobustPoolNode(penalty, alpha).jacobian(np.asarray(x, dtype=float))
