"""Pictures and measurements for notebook 11 (a custom ``ddn.torch`` node, trained).

``RobustFitExplorer`` fits a polynomial to noisy points with outliers by a user-supplied
``fit(features, targets, log_lambda, log_alpha) -> coefficients`` (in the notebook: the custom
declarative layer) and draws the fit next to the truth and the plain least-squares fit;
``update(log_lambda=..., log_alpha=...)`` redraws. ``measure`` times a forward and a backward
pass and records their peak memory; ``solver_comparison_figure`` draws such measurements for the
``linear_solver`` options against the problem size.
"""
import time

import numpy as np
from matplotlib.figure import Figure

from ._interactive import InteractiveFigure

__all__ = ["polynomial_features", "RobustFitExplorer", "measure", "solver_comparison_figure"]


def polynomial_features(s, degree):
    """``[1, s, s², …, s^degree]`` for each sample: ``(..., k) -> (..., k, degree + 1)``, for
    numpy arrays and torch tensors alike."""
    cols = [s**d for d in range(degree + 1)]
    if isinstance(s, np.ndarray):
        return np.stack(cols, axis=-1)
    import torch
    return torch.stack(cols, dim=-1)


class RobustFitExplorer(InteractiveFigure):
    """A 1-D polynomial fit to ``k`` noisy samples of a smooth curve, a fraction of which are
    gross outliers. Draws the truth, the samples, the least-squares fit (``fit`` with a huge
    ``log_alpha``: the pseudo-Huber penalty is then quadratic) and the robust fit at the
    current ``log_lambda`` (ridge weight) and ``log_alpha`` (inlier scale).

    ``fit(F, t, log_lambda, log_alpha) -> (m,)`` takes features ``F`` of shape ``(k, m)`` and
    targets ``t`` of shape ``(k,)`` as numpy arrays. Parameters (``update`` takes any of
    them): ``log_lambda``, ``log_alpha``. After a redraw ``coefficients`` and ``rms_error``
    (to the truth, on a grid) hold what is drawn.
    """

    defaults = {"log_lambda": -3.0, "log_alpha": -1.0}
    figsize = (7.0, 4.0)

    def __init__(self, fit, degree=7, k=40, outlier_fraction=0.25, *, noise=0.1, seed=0,
                 **values):
        rng = np.random.default_rng(seed)
        self.fit, self.degree = fit, int(degree)
        self.s = np.sort(rng.uniform(-1, 1, k))
        t = self.truth(self.s) + noise * rng.normal(size=k)
        out = rng.random(k) < outlier_fraction
        t[out] += rng.choice([-1, 1], out.sum()) * rng.uniform(1.5, 3.0, out.sum())
        self.t, self.is_outlier = t, out
        self.F = polynomial_features(self.s, self.degree)
        self.grid = np.linspace(-1, 1, 301)
        self.G = polynomial_features(self.grid, self.degree)
        super().__init__(**values)

    @staticmethod
    def truth(s):
        """The curve the samples come from."""
        return np.sin(3 * s) + 0.5 * s

    def _build(self):
        ax = self.ax = self.fig.subplots()
        ax.plot(self.grid, self.truth(self.grid), color="0.6", lw=3, label="truth")
        o = self.is_outlier
        ax.plot(self.s[~o], self.t[~o], "o", color="C0", ms=4, label="samples")
        ax.plot(self.s[o], self.t[o], "x", color="C3", label="outliers")
        (self.ls_line,) = ax.plot([], [], color="C1", ls="--", label="least squares (α → ∞)")
        (self.fit_line,) = ax.plot([], [], color="k", lw=2, label="robust fit")
        ax.set_ylim(self.t.min() - 0.3, self.t.max() + 0.3)
        ax.set_xlabel("s")
        ax.set_ylabel("target t")
        ax.legend(loc="lower right", fontsize=8)

    def _draw(self):
        ll, la = float(self.values["log_lambda"]), float(self.values["log_alpha"])
        y = np.asarray(self.fit(self.F, self.t, ll, la), dtype=float).reshape(-1)
        y_ls = np.asarray(self.fit(self.F, self.t, ll, 10.0), dtype=float).reshape(-1)
        self.coefficients = y
        self.fit_line.set_data(self.grid, self.G @ y)
        self.ls_line.set_data(self.grid, self.G @ y_ls)
        self.rms_error = float(np.sqrt(np.mean((self.G @ y - self.truth(self.grid)) ** 2)))
        self.ax.set_title(f"log λ = {ll:.2f}, log α = {la:.2f}: "
                          f"RMS error to the truth {self.rms_error:.3f}", fontsize=10)


def _peak_cpu_bytes(fn):
    """Peak bytes allocated by torch on the CPU while ``fn()`` runs (from the profiler's
    allocation events, relative to the start)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def measure(forward, loss=None, repeats=3, device="cpu", warmup=True):
    """Time and memory of one forward and backward pass.

    ``forward()`` returns a tensor ``y``; the backward pass back-propagates ``loss(y)``
    (default ``Σ y²``). Each phase is timed separately over ``repeats`` runs after one warm-up
    run (skipped with ``warmup=False``; medians), then one more run records the peak memory of both phases together
    (``torch.cuda.max_memory_allocated`` on CUDA, the profiler's allocation trace on the CPU).
    Returns ``{"forward_seconds", "backward_seconds", "seconds", "bytes"}``.
    """
    import torch
    loss = loss or (lambda y: y.square().sum())
    cuda = str(device).startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def run():
        loss(forward()).backward()

    if warmup:
        run()
    tf, tb = [], []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        y = forward()
        sync()
        t1 = time.perf_counter()
        loss(y).backward()
        sync()
        tf.append(t1 - t0)
        tb.append(time.perf_counter() - t1)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        sync()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _peak_cpu_bytes(run)
    f, b = float(np.median(tf)), float(np.median(tb))
    return {"forward_seconds": f, "backward_seconds": b, "seconds": f + b, "bytes": int(peak)}


def solver_comparison_figure(rows):
    """Time and peak memory against problem size, one colour per linear solver. ``rows`` is a
    list of dicts with keys ``solver``, ``size``, ``seconds`` (forward + backward) and
    ``bytes``, optionally ``backward_seconds`` (then the backward alone is drawn dashed), as
    ``measure`` returns them."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_t, ax_m = fig.subplots(1, 2)
    for i, solver in enumerate(dict.fromkeys(r["solver"] for r in rows)):
        rs = sorted((r for r in rows if r["solver"] == solver), key=lambda r: r["size"])
        m = [r["size"] for r in rs]
        ax_t.plot(m, [1e3 * r["seconds"] for r in rs], "o-", color=f"C{i}",
                  label=f"{solver}: forward + backward")
        if all("backward_seconds" in r for r in rs):
            back = [1e3 * r["backward_seconds"] for r in rs]
            ax_t.plot(m, back, "s--", color=f"C{i}", alpha=0.7, label=f"{solver}: backward")
        ax_m.plot(m, [r["bytes"] / 2**20 for r in rs], "o-", color=f"C{i}", label=solver)
    for ax, lab in ((ax_t, "time (ms)"), (ax_m, "peak memory, forward + backward (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("unknowns m")
        ax.set_ylabel(lab)
        ax.legend(fontsize=7)
    return fig
