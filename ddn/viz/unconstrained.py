"""Picture for notebook 02 (unconstrained nodes, Prop. 4.4).

``ImplicitTangent`` draws the scalar problem
``f(x, u) = 1/2 (u - x)^2 + lam * sqrt(1 + u^2)`` in the (x, u) plane: its level sets at the
chosen ``x``, the solution curve ``y(x)``, and the tangent line of slope
``Dy(x) = -B / H = 1 / (1 + lam (1 + y^2)^(-3/2))`` (Prop. 4.4 with
``H = 1 + lam (1 + y^2)^(-3/2)`` and ``B = -1``).
"""
from __future__ import annotations

import numpy as np

from ._interactive import InteractiveFigure

__all__ = ["shrinkage_solve", "shrinkage_derivative", "ImplicitTangent"]


def shrinkage_solve(x, lam, iters=50):
    """``y(x) = argmin_u 1/2 (u - x)^2 + lam sqrt(1 + u^2)`` by Newton's method (elementwise;
    the objective is strictly convex for ``lam >= 0``, so the minimiser is unique)."""
    x = np.asarray(x, dtype=float)
    u = x / (1.0 + lam)
    for _ in range(iters):
        s = np.sqrt(1.0 + u * u)
        g = u - x + lam * u / s          # D_Y f
        h = 1.0 + lam / s ** 3           # H = D²_YY f
        u = u - g / h
    return u


def shrinkage_derivative(x, lam):
    """``Dy(x) = -H^{-1} B`` with ``H = 1 + lam (1 + y^2)^(-3/2)`` and ``B = D²_XY f = -1``."""
    y = shrinkage_solve(x, lam)
    return 1.0 / (1.0 + lam * (1.0 + y * y) ** -1.5)


class ImplicitTangent(InteractiveFigure):
    """Left: ``f(x, .)`` as a function of ``u`` at the chosen ``x`` with its minimiser ``y``.
    Right: the solution curve ``y(x)`` and its tangent of slope ``Dy`` from Prop. 4.4.

    Parameters: ``x`` (the input), ``lam`` (regularisation strength >= 0).
    """

    defaults = {"x": 1.5, "lam": 1.0}

    def _build(self):
        self.ax_f, self.ax_y = self.fig.subplots(1, 2)

    def _draw(self):
        x, lam = float(self.values["x"]), float(self.values["lam"])
        y = float(shrinkage_solve(x, lam))
        dy = float(shrinkage_derivative(x, lam))
        u = np.linspace(-4, 4, 400)
        xs = np.linspace(-4, 4, 200)
        ax = self.ax_f
        ax.clear()
        ax.plot(u, 0.5 * (u - x) ** 2 + lam * np.sqrt(1 + u * u), label=r"$f(x, u)$")
        ax.plot([y], [0.5 * (y - x) ** 2 + lam * np.sqrt(1 + y * y)], "ko", label=r"$y(x)$")
        ax.set_xlabel("u")
        ax.set_ylabel(r"$f(x, u)$")
        ax.set_ylim(0, 12)
        ax.set_title(f"objective at x = {x:.2f}")
        ax.legend()
        ax = self.ax_y
        ax.clear()
        ax.plot(xs, shrinkage_solve(xs, lam), label=r"$y(x)$")
        ax.plot(xs, xs, ":", color="gray", label=r"$u = x$ ($\lambda = 0$)")
        t = np.linspace(x - 1.2, x + 1.2, 2)
        ax.plot(t, y + dy * (t - x), "C3-", lw=2, label=rf"tangent, $Dy = {dy:.3f}$")
        ax.plot([x], [y], "ko")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.set_xlim(-4, 4)
        ax.set_ylim(-4, 4)
        ax.set_title(r"Prop. 4.4: $Dy = -H^{-1}B$")
        ax.legend(fontsize=8, loc="upper left")
