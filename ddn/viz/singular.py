"""Pictures for notebook 07 (non-unique solutions and singular Hessians, §4.7.4, Eq. 49-56).

- ``TwoSolutionView``: ``y(x) in argmin_u (x u^2 - 1)^2`` for ``x > 0`` has the two minimisers
  ``y = +-1/sqrt(x)`` with ``Dy = -+ 1/(2 x^{3/2})`` (Eq. 49-50): the gradient of a downstream
  loss flips with the solution the forward pass returned.
- ``SingularRemediesView``: ``f(x, u) = -x^T u / ||u||`` depends only on the direction of
  ``u``, so every ``beta x`` (``beta > 0``) is a minimiser and ``H = D²_YY f`` is singular. At
  ``y = x / ||x||``: ``H = ||x|| (I - y y^T)`` and ``B = -(I - y y^T)``. The three remedies:
  pseudo-inverse ``-H^+ B = (I - y y^T) / ||x||`` (Eq. 56); normalising the output (minimise
  ``-x^T u`` on ``||u|| = 1``, Eq. 55) gives the same; a proximal term ``(delta/2)||u - y||^2``
  gives ``(I - y y^T) / (||x|| + delta)``, biased by ``delta``.
"""
from __future__ import annotations

import numpy as np

from ._interactive import InteractiveFigure

__all__ = ["alignment_remedies", "TwoSolutionView", "SingularRemediesView"]


def alignment_remedies(x, delta):
    """``dict`` of the ``Dy`` (m x m) given by the pseudo-inverse, the normalised problem and
    the proximal term at ``y = x / ||x||``, and the reference ``(I - y y^T) / ||x||``.

    ``H`` and ``B`` are formed from their closed forms above; the notebook checks them against
    autograd and finite differences."""
    x = np.asarray(x, dtype=float)
    nx = np.linalg.norm(x)
    y = x / nx
    P = np.eye(len(x)) - np.outer(y, y)
    H, B = nx * P, -P                                   # H = D²_YY f, B = D²_XY f
    # normalised: L = -x^T u - lam (||u||^2 - 1), lam = -||x|| / 2, H_L = ||x|| I, a = 2 y
    HL = nx * np.eye(len(x))
    a = 2 * y
    Hia = np.linalg.solve(HL, a)
    normalised = (np.outer(Hia, Hia) / (a @ Hia) - np.linalg.inv(HL)) @ B   # Cor. 4.7
    return dict(
        reference=P / nx,
        pinv=-np.linalg.pinv(H) @ B,
        normalised=normalised,
        proximal=-np.linalg.solve(H + delta * np.eye(len(x)), B),
        y=y,
    )


class TwoSolutionView(InteractiveFigure):
    """Left: ``f(x, u) = (x u^2 - 1)^2`` with both minimisers, the returned one filled.
    Right: both branches ``y = +-1/sqrt(x)`` and the tangent at the returned one; the title
    gives the gradient of ``J(y) = 1/2 (y - 2)^2`` through the node, whose sign depends on the
    branch (for ``x > 1/4``).

    Parameters: ``x`` (> 0), ``branch`` (+1 or -1: which minimiser the forward pass returns).
    """

    defaults = {"x": 0.5, "branch": 1}

    def _build(self):
        self.ax_f, self.ax_y = self.fig.subplots(1, 2)

    def _draw(self):
        x, s = float(self.values["x"]), int(np.sign(self.values["branch"]) or 1)
        y = s / np.sqrt(x)
        dy = -s / (2 * x ** 1.5)
        self.gradient = (y - 2.0) * dy          # dJ/dx = D_Y J * Dy
        u = np.linspace(-3, 3, 600)
        ax = self.ax_f
        ax.clear()
        ax.plot(u, (x * u * u - 1) ** 2)
        ax.plot([y], [0], "ko", ms=8, label="returned y")
        ax.plot([-y], [0], "o", mfc="none", mec="k", ms=8, label="other minimiser")
        ax.set_ylim(-0.2, 3)
        ax.set_xlabel("u")
        ax.set_ylabel(r"$f(x, u)$")
        ax.set_title(rf"$f(x, u) = (x u^2 - 1)^2$, x = {x:.2f}")
        ax.legend(fontsize=8)
        ax = self.ax_y
        ax.clear()
        xs = np.linspace(0.15, 3, 200)
        ax.plot(xs, 1 / np.sqrt(xs), "C0", label=r"$+1/\sqrt{x}$")
        ax.plot(xs, -1 / np.sqrt(xs), "C1", label=r"$-1/\sqrt{x}$")
        t = np.array([x - 0.5, x + 0.5])
        ax.plot(t, y + dy * (t - x), "C3", lw=2, label=rf"tangent, $Dy$ = {dy:+.3f}")
        ax.plot([x], [y], "ko")
        ax.set_ylim(-3, 3)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.set_title(rf"$dJ/dx$ for $J = \frac{{1}}{{2}}(y - 2)^2$: {self.gradient:+.3f}")
        ax.legend(fontsize=8)


class SingularRemediesView(InteractiveFigure):
    """Left: ``x``, the ray of minimisers ``{beta x}``, ``y = x/||x||`` and, for a unit
    perturbation of ``x`` perpendicular to it, the motion ``Dy e`` under each remedy.
    Right: the error of each remedy against ``(I - y y^T)/||x||`` as ``delta`` varies.

    Parameters: ``angle`` (direction of ``x``), ``norm`` (``||x||`` > 0), ``delta`` (> 0).
    """

    defaults = {"angle": 0.6, "norm": 1.5, "delta": 0.5}
    figsize = (10.0, 4.4)

    def _build(self):
        self.ax_g, self.ax_e = self.fig.subplots(1, 2)

    def _draw(self):
        a, nx, delta = (float(self.values[k]) for k in ("angle", "norm", "delta"))
        x = nx * np.array([np.cos(a), np.sin(a)])
        r = alignment_remedies(x, delta)
        self.remedies = r
        y = r["y"]
        e = np.array([-np.sin(a), np.cos(a)])
        ax = self.ax_g
        ax.clear()
        th = np.linspace(0, 2 * np.pi, 200)
        ax.plot(np.cos(th), np.sin(th), color="0.8", lw=1)
        # the view is centred and large enough to hold x in every direction; an annotation
        # arrow whose head leaves the axes is not drawn at all, so the motions Dy e (length
        # up to 1/||x||, e.g. 5 at ||x|| = 0.2) are drawn times k <= 1 to stay inside
        lim = max(2.0, 1.2 * nx)
        ax.plot([0, lim * np.cos(a)], [0, lim * np.sin(a)], "k:", lw=1,
                label=r"all minimisers $\beta x$")
        ax.annotate("", xy=x, xytext=(0, 0), arrowprops=dict(arrowstyle="-|>", color="0.4"))
        ax.text(*(x + 0.08 * lim * x / nx), "x", color="0.4", clip_on=True)
        ax.plot(*y, "ko")
        names = ("pinv", "normalised", "proximal")
        longest = max(np.linalg.norm(r[name] @ e) for name in names)
        k = min(1.0, 0.9 * (lim - 1.0) / max(longest, 1e-300))
        self.arrow_scale = k
        self.motion_arrows = {}
        for (name, col, ls) in zip(names, ("C0", "C2", "C3"), ("-", "--", "-")):
            d = k * (r[name] @ e)
            self.motion_arrows[name] = ax.annotate(
                "", xy=y + d, xytext=y, arrowprops=dict(arrowstyle="-|>", color=col, ls=ls, lw=1.8))
            ax.plot([], [], color=col, ls=ls, label=rf"{name}: $Dy\,e$")
        ax.set_aspect("equal")
        ax.set_xlabel(r"$u_1$")
        ax.set_ylabel(r"$u_2$")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.legend(fontsize=8, loc="lower left")
        ax.set_title(r"motion of $y$ for a unit push of $x$ sideways"
                     + ("" if k == 1.0 else rf" ($\times{k:.2g}$)"))
        ax = self.ax_e
        ax.clear()
        ds = np.logspace(-4, 1, 60)
        err = [np.abs(alignment_remedies(x, d)["proximal"] - r["reference"]).max() for d in ds]
        ax.loglog(ds, err, "C3", label="proximal term")
        cur = np.abs(r["proximal"] - r["reference"]).max()
        ax.loglog([delta], [cur], "C3o")
        floor = 1e-17
        for name, col in (("pinv", "C0"), ("normalised", "C2")):
            ax.axhline(np.abs(r[name] - r["reference"]).max() + floor, color=col,
                       ls="--", label=name)
        ax.set_ylim(1e-17, 10)
        ax.set_xlabel(r"proximal weight $\delta$")
        ax.set_ylabel(r"max error against $(I - yy^\top)/\|x\|$")
        ax.legend(fontsize=8)
        ax.set_title(rf"$\delta$ = {delta:.3g}")
