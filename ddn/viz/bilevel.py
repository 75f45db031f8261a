"""Picture for notebook 08 (learning as bi-level optimisation, Eq. 10-11, Fig. 2).

Lower level (one declarative node per data point, parameter ``theta`` shared)::

    y_i(theta) = argmin_u 1/2 (u - x_i)^2 + theta sqrt(1 + u^2)

Upper level: ``J(theta) = 1/2 sum_i (y_i(theta) - t_i)^2``, with targets ``t_i`` made by the
same node at ``theta* = 0.8``. Gradient descent on ``theta`` uses the implicit gradient
``dy_i/dtheta = -H_i^{-1} B_i`` with ``H_i = 1 + theta (1 + y_i^2)^{-3/2}`` and
``B_i = D²_{theta u} f = y_i / sqrt(1 + y_i^2)`` (Prop. 4.4), so
``dJ/dtheta = sum_i (y_i - t_i) dy_i/dtheta`` (chain rule, Eq. 11).
"""
from __future__ import annotations

import numpy as np

from ._interactive import InteractiveFigure
from .unconstrained import shrinkage_solve

__all__ = ["shrinkage_data", "bilevel_loss_and_grad", "BilevelDescent", "draw_bilevel"]

THETA_STAR = 0.8


def shrinkage_data(n=25, seed=0):
    """Inputs ``x`` (uniform in [-3, 3]) and targets ``t = y(x; theta*)``."""
    x = np.random.default_rng(seed).uniform(-3, 3, n)
    return x, shrinkage_solve(x, THETA_STAR)


def bilevel_loss_and_grad(theta, x, t):
    """``(J, dJ/dtheta)`` for the upper problem in the module docstring."""
    y = shrinkage_solve(x, theta)
    s = np.sqrt(1 + y * y)
    H = 1 + theta / s ** 3          # H = D²_YY f
    B = y / s                        # B = D²_{theta Y} f
    return 0.5 * np.sum((y - t) ** 2), np.sum((y - t) * (-B / H))


def _descend(theta0, lr, steps, x, t):
    th = [float(theta0)]
    for _ in range(int(steps)):
        th.append(th[-1] - lr * bilevel_loss_and_grad(th[-1], x, t)[1])
    return np.array(th)


class BilevelDescent(InteractiveFigure):
    """Left: the upper objective ``J(theta)`` and the gradient-descent iterates. Right: the
    data ``(x_i, t_i)`` and the lower-level solution curve ``y(x; theta)`` at the last iterate.

    Parameters: ``theta0`` (start), ``lr`` (step size), ``steps`` (iterations).
    """

    defaults = {"theta0": 2.5, "lr": 0.05, "steps": 10}

    def __init__(self, x=None, t=None, **values):
        if x is None:
            x, t = shrinkage_data()
        self.x, self.t = np.asarray(x, float), np.asarray(t, float)
        super().__init__(**values)

    def _build(self):
        self.ax_j, self.ax_d = self.fig.subplots(1, 2)
        self._grid = np.linspace(0.0, 3.0, 121)
        self._J = np.array([bilevel_loss_and_grad(th, self.x, self.t)[0] for th in self._grid])

    def _draw(self):
        v = self.values
        th = _descend(v["theta0"], float(v["lr"]), v["steps"], self.x, self.t)
        self.iterates = th
        J = np.array([bilevel_loss_and_grad(a, self.x, self.t)[0] for a in th])
        ax = self.ax_j
        ax.clear()
        ax.plot(self._grid, self._J, "k-", lw=1, label=r"upper objective $J(\theta)$")
        ax.plot(th, J, "C3o-", ms=4, label="gradient descent")
        ax.axvline(THETA_STAR, color="0.6", ls=":", label=r"$\theta^\star$")
        ax.set_xlim(self._grid[0], self._grid[-1])
        ax.set_xlabel(r"$\theta$")
        ax.set_ylabel(r"$J(\theta)$")
        ax.set_title(rf"$\theta_{{{len(th) - 1}}}$ = {th[-1]:.4f}")
        ax.legend(fontsize=8)
        ax = self.ax_d
        ax.clear()
        xs = np.linspace(-3, 3, 200)
        ax.plot(self.x, self.t, "k.", label=r"targets $t_i$")
        ax.plot(xs, shrinkage_solve(xs, th[0]), "C0--", lw=1, label=r"$y(x;\theta_0)$")
        ax.plot(xs, shrinkage_solve(xs, th[-1]), "C3", label=r"$y(x;\theta_{last})$")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.set_title("lower level: one declarative node per input")
        ax.legend(fontsize=8)


def draw_bilevel(x=None, t=None):
    """Fig. 2 in spirit: the lower problem's landscape over (theta, u) for one input, with its
    solution curve ``y(theta)`` (the node), next to the upper objective ``J(theta)`` and its
    implicit gradient. Returns a Figure."""
    from matplotlib.figure import Figure

    if x is None:
        x, t = shrinkage_data()
    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    ax0, ax1 = fig.subplots(1, 2)
    xi = x[np.argmax(np.abs(x))]
    th = np.linspace(0, 3, 150)
    u = np.linspace(-3.5, 3.5, 150)
    TH, U = np.meshgrid(th, u)
    F = 0.5 * (U - xi) ** 2 + TH * np.sqrt(1 + U * U)
    F -= F.min(axis=0, keepdims=True)
    ax0.contourf(TH, U, np.log1p(F), levels=20, cmap="Blues_r")
    ax0.plot(th, shrinkage_solve(np.full_like(th, xi), th), "C3", lw=2,
             label=rf"lower level: $y(\theta)$ for $x_i$ = {xi:.2f}")
    ax0.set_xlabel(r"$\theta$")
    ax0.set_ylabel("u")
    ax0.set_title(r"lower: $y \in \mathrm{argmin}_u f(x, u; \theta)$")
    ax0.legend(fontsize=8)
    J = np.array([bilevel_loss_and_grad(a, x, t) for a in th])
    ax1.plot(th, J[:, 0], "k", label=r"upper: $J(\theta) = \frac{1}{2}\sum_i (y_i - t_i)^2$")
    for a in (0.3, 1.6, 2.6):
        j, g = bilevel_loss_and_grad(a, x, t)
        s = np.array([a - 0.25, a + 0.25])
        ax1.plot(s, j + g * (s - a), "C3", lw=2)
    ax1.plot([], [], "C3", label=r"implicit $dJ/d\theta$ (tangents)")
    ax1.axvline(THETA_STAR, color="0.6", ls=":")
    ax1.set_xlabel(r"$\theta$")
    ax1.set_ylabel(r"$J(\theta)$")
    ax1.set_title(r"upper: $\min_\theta J(x, y(x; \theta))$")
    ax1.legend(fontsize=8)
    return fig
