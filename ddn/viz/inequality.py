"""Pictures for notebook 05 (inequality constraints, Prop. 4.6, Fig. 3).

The node, with scalar input ``x``::

    y(x) = argmin_u 1/2 ||u - t(x)||^2   s.t.  g(u) = ||u||^2 - 1 <= 0,    t(x) = (x, 1/2)

(projection of a moving target onto the unit disc). With ``L = f - lam g``:

- inactive (``||t|| < 1``): ``y = t``, ``lam = 0``, ``Dy = t'(x) = (1, 0)``;
- active (``||t|| > 1``): ``y = t / ||t||``, ``lam = (1 - ||t||) / 2 < 0``,
  ``Dy = (I - y y^T) t'(x) / ||t||`` (the equality-constrained formula);
- weakly active (``||t|| = 1``, here ``x = +-sqrt(3)/2``): ``g = 0`` and ``lam = 0``; ``Dy``
  jumps, and either one-sided value may be used (Prop. 4.6).
"""
from __future__ import annotations

import numpy as np

from ._interactive import InteractiveFigure

__all__ = ["disc_projection", "InequalityRegimes", "draw_three_regimes"]

_T0, _DT = np.array([0.0, 0.5]), np.array([1.0, 0.0])
X_WEAK = np.sqrt(0.75)


def disc_projection(x, side=+1):
    """``(y, Dy, lam, regime)`` for the moving-target disc projection at scalar ``x``.

    ``Dy`` is the 2-vector ``dy/dx``. At a weakly active point (``||t(x)|| = 1`` up to 1e-12)
    ``side=+1`` returns the constrained (equality) one-sided gradient, ``side=-1`` the
    unconstrained one; ``regime`` is ``"inactive"``, ``"active"`` or ``"weakly active"``.
    """
    t = _T0 + x * _DT
    nt = np.linalg.norm(t)
    if abs(nt - 1.0) <= 1e-12:
        y = t / nt
        dy = (np.eye(2) - np.outer(y, y)) @ _DT if side > 0 else _DT.copy()
        return y, dy, 0.0, "weakly active"
    if nt < 1.0:
        return t.copy(), _DT.copy(), 0.0, "inactive"
    y = t / nt
    return y, (np.eye(2) - np.outer(y, y)) @ _DT / nt, (1.0 - nt) / 2.0, "active"


def _draw_disc(ax, x):
    y, dy, lam, regime = disc_projection(x)
    t = _T0 + x * _DT
    th = np.linspace(0, 2 * np.pi, 200)
    ax.fill(np.cos(th), np.sin(th), color="C2", alpha=0.12)
    ax.plot(np.cos(th), np.sin(th), "k-", lw=1.2)
    for rr in (0.3, 0.6, 0.9, 1.2):
        ax.plot(t[0] + rr * np.cos(th), t[1] + rr * np.sin(th), color="0.75", lw=0.7)
    ax.axhline(0.5, color="0.5", ls=":", lw=0.8)
    ax.plot(*t, "x", color="0.3", ms=8, label=r"target $t(x)$")
    ax.plot(*y, "ko", ms=6, label=r"$y(x)$")
    ax.quiver([y[0]], [y[1]], [dy[0]], [dy[1]], color="C3", angles="xy", scale_units="xy",
              scale=1.0, width=0.012)
    if regime == "weakly active":   # the other one-sided gradient
        d2 = disc_projection(x, side=-1)[1]
        ax.quiver([y[0]], [y[1]], [d2[0]], [d2[1]], color="C0", angles="xy", scale_units="xy",
                  scale=1.0, width=0.012, alpha=0.7)
    ax.set_aspect("equal")
    ax.set_xlabel(r"$u_1$")
    ax.set_ylabel(r"$u_2$")
    ax.set_xlim(-2.2, 2.2)
    ax.set_ylim(-1.4, 1.8)
    ax.set_title(f"x = {x:+.2f}: {regime}" + (rf", $\lambda$ = {lam:.2f}" if lam else ""))
    return y, dy, lam, regime


def _curves(xs):
    out = [disc_projection(x) for x in xs]
    Y = np.array([o[0] for o in out])
    D = np.array([o[1] for o in out])
    L = np.array([o[2] for o in out])
    return Y, D, L


class InequalityRegimes(InteractiveFigure):
    """Left: the disc, the moving target, ``y(x)`` and ``Dy`` (red arrow). Middle: ``y(x)``.
    Right: ``Dy(x)`` and the multiplier ``lam(x)``, with the kinks at ``x = +-sqrt(3)/2``
    where the constraint is weakly active; a marker follows the slider.

    Parameters: ``x`` (input in [-2, 2]).
    """

    defaults = {"x": 1.3}
    figsize = (12.0, 4.0)

    def _build(self):
        self.ax_g, self.ax_y, self.ax_d = self.fig.subplots(1, 3)
        xs = np.linspace(-2, 2, 801)
        self._xs = xs
        self._Y, self._D, self._L = _curves(xs)

    def _draw(self):
        x = float(self.values["x"])
        self.ax_g.clear()
        y, dy, lam, regime = _draw_disc(self.ax_g, x)
        self.regime = regime
        xs = self._xs
        for ax in (self.ax_y, self.ax_d):
            ax.clear()
            for s in (-1, 1):
                ax.axvline(s * X_WEAK, color="0.6", ls="--", lw=0.8)
            ax.axvspan(-X_WEAK, X_WEAK, color="C2", alpha=0.08)
            ax.set_xlabel("x")
        self.ax_y.plot(xs, self._Y[:, 0], label=r"$y_1$")
        self.ax_y.plot(xs, self._Y[:, 1], label=r"$y_2$")
        self.ax_y.plot([x, x], y, "ko", ms=5)
        self.ax_y.set_ylabel(r"$y(x)$")
        self.ax_y.set_title("solution (shaded: constraint inactive)")
        self.ax_y.legend(fontsize=8)
        self.ax_d.plot(xs, self._D[:, 0], label=r"$dy_1/dx$")
        self.ax_d.plot(xs, self._D[:, 1], label=r"$dy_2/dx$")
        self.ax_d.plot(xs, self._L, "k:", label=r"multiplier $\lambda$")
        self.ax_d.plot([x, x], dy, "ko", ms=5)
        self.ax_d.set_ylabel(r"$Dy(x)$ and $\lambda(x)$")
        self.ax_d.set_title("gradient jumps where the constraint is weakly active")
        self.ax_d.legend(fontsize=8)


def draw_three_regimes():
    """Fig. 3 in spirit: the inactive, active and weakly active cases side by side, and
    ``Dy(x)`` with its kinks. Returns a Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13.0, 3.6), layout="constrained")
    axes = fig.subplots(1, 4)
    for ax, x in zip(axes[:3], (0.3, 1.5, X_WEAK)):
        _draw_disc(ax, x)
    axes[0].legend(loc="lower left", fontsize=8)
    xs = np.linspace(-2, 2, 801)
    _, D, L = _curves(xs)
    ax = axes[3]
    ax.axvspan(-X_WEAK, X_WEAK, color="C2", alpha=0.08)
    ax.plot(xs, D[:, 0], label=r"$dy_1/dx$")
    ax.plot(xs, D[:, 1], label=r"$dy_2/dx$")
    ax.plot(xs, L, "k:", label=r"$\lambda$")
    for s in (-1, 1):
        ax.axvline(s * X_WEAK, color="0.6", ls="--", lw=0.8)
    ax.set_xlabel("x")
    ax.set_ylabel(r"$Dy(x)$ and $\lambda(x)$")
    ax.set_title("Dy(x): kinks at weakly active x")
    ax.legend(fontsize=8)
    return fig
