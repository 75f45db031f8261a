"""Pictures for notebook 01 (declarative versus imperative nodes, paper Def. 4.1-4.2, Fig. 1).

- ``draw_node_schematic()``: Fig. 1 in spirit, an imperative and a declarative node with their
  forward and backward passes.
- ``logsumexp_gd_iterates(x, steps, lr)``: gradient descent on
  ``f(x, u) = sum_i exp(x_i - u) + u``, whose minimiser is ``y = log sum_i exp(x_i)``;
  autograd-traceable, so it can be differentiated "unrolled".
- ``UnrollingExplorer``: the unrolled gradient ``d u_k / dx`` after ``k`` steps against the
  implicit gradient ``Dy = softmax(x)`` (Prop. 4.4 with ``H = 1``, ``B = -softmax(x)``).
"""
from __future__ import annotations

import autograd.numpy as anp
import numpy as np
from autograd import jacobian

from ._interactive import InteractiveFigure

__all__ = ["draw_node_schematic", "logsumexp_gd_iterates", "UnrollingExplorer"]


def draw_node_schematic():
    """Fig. 1 in spirit: an imperative node ``y = f~(x; theta)`` and a declarative node
    ``y in argmin_{u in C(x)} f(x, u; theta)``, forward (left to right, black) and backward
    (right to left, red: the incoming gradient ``v`` becomes ``v^T Dy``). Returns a Figure."""
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch

    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    rows = [
        ("imperative node", r"$y = \tilde f(x;\,\theta)$",
         r"$v^\top\, D\tilde f(x)$" "\n(chain rule through the code)", "#dbe9f6"),
        ("declarative node", r"$y \in \mathrm{argmin}_{u \in C(x)}\ f(x, u;\,\theta)$",
         r"$v^\top Dy = -(v^\top H^{-1})\,B$" "\n(implicit differentiation, Prop. 4.4-4.6)",
         "#fde4cf"),
    ]
    for ax, (title, body, back, colour) in zip(axes, rows):
        ax.set_xlim(0, 10)
        ax.set_ylim(0, 6)
        ax.axis("off")
        ax.set_title(title)
        ax.add_patch(FancyBboxPatch((2.3, 2.2), 5.4, 1.8, boxstyle="round,pad=0.15",
                                    fc=colour, ec="k"))
        ax.text(5.0, 3.1, body, ha="center", va="center", fontsize=11)
        kw = dict(arrowstyle="-|>", lw=1.6, mutation_scale=14)
        ax.annotate("", xy=(2.2, 3.4), xytext=(0.4, 3.4), arrowprops=dict(color="k", **kw))
        ax.annotate("", xy=(9.6, 3.4), xytext=(7.8, 3.4), arrowprops=dict(color="k", **kw))
        ax.text(0.4, 3.7, r"$x$", fontsize=13)
        ax.text(9.3, 3.7, r"$y$", fontsize=13)
        ax.annotate("", xy=(0.4, 2.7), xytext=(2.2, 2.7), arrowprops=dict(color="C3", **kw))
        ax.annotate("", xy=(7.8, 2.7), xytext=(9.6, 2.7), arrowprops=dict(color="C3", **kw))
        ax.text(9.3, 2.1, r"$v$", color="C3", fontsize=13)
        ax.text(5.0, 1.0, back, color="C3", ha="center", va="center", fontsize=10)
        ax.text(5.0, 4.8, "forward: evaluate" if title.startswith("imp") else
                "forward: solve (any solver)", ha="center", fontsize=9)
    return fig


def logsumexp_gd_iterates(x, steps, lr=1.0):
    """Gradient descent on ``f(x, u) = sum_i exp(x_i - u) + u`` from ``u_0 = max(x) + log n``.

    ``f'(u) = 1 - sum_i exp(x_i - u)``; starting above the minimiser keeps ``0 < f'' <= 1``,
    so any ``0 < lr <= 1`` converges monotonically. Returns the iterates ``u_0..u_steps``
    (shape ``(steps + 1,)``), traceable by autograd (which also sees ``u_0`` depend on ``x``).
    """
    u = anp.max(x) + np.log(len(x))
    out = [u]
    for _ in range(int(steps)):
        u = u - lr * (1.0 - anp.sum(anp.exp(x - u)))
        out.append(u)
    return anp.stack(out)


class UnrollingExplorer(InteractiveFigure):
    """Unrolled versus implicit gradient of ``y(x) = log sum exp(x)``.

    Left: the iterates ``u_k`` and the solution ``y``. Right: the error
    ``|| d u_k / dx - softmax(x) ||`` of the gradient obtained by differentiating ``k``
    unrolled steps with autograd, and the error of the implicit gradient ``-H^{-1} B``
    evaluated at the last iterate (one line, no unrolling).

    Parameters: ``steps`` (int), ``lr`` (step size in (0, 1]).
    """

    defaults = {"steps": 20, "lr": 0.5}

    def __init__(self, x, iterates=logsumexp_gd_iterates, **values):
        self.x = np.asarray(x, dtype=float)
        self.iterates = iterates
        super().__init__(**values)

    def _build(self):
        self.ax_u, self.ax_err = self.fig.subplots(1, 2)

    def compute(self):
        """(u_k, unrolled errors, implicit errors) for the current parameters."""
        steps, lr = int(self.values["steps"]), float(self.values["lr"])
        x = self.x
        u = np.asarray(self.iterates(x, steps, lr))
        du = np.asarray(jacobian(lambda z: self.iterates(z, steps, lr))(x))  # (steps+1, n)
        exact = np.exp(x - np.logaddexp.reduce(x))                          # softmax(x)
        err_unrolled = np.linalg.norm(du - exact, axis=1)
        # implicit at u_k: H = sum exp(x - u), B = -exp(x - u)  =>  Dy = exp(x - u) / H
        w = np.exp(x[None, :] - u[:, None])
        err_implicit = np.linalg.norm(w / w.sum(1, keepdims=True) - exact, axis=1)
        return u, err_unrolled, err_implicit

    def _draw(self):
        u, eu, ei = self.compute()
        y = np.logaddexp.reduce(self.x)
        k = np.arange(len(u))
        for ax in (self.ax_u, self.ax_err):
            ax.clear()
        self.ax_u.plot(k, u, "o-", ms=3, label=r"iterate $u_k$")
        self.ax_u.axhline(y, color="k", ls="--", lw=1, label=r"$y = \log\sum e^{x_i}$")
        self.ax_u.set_xlabel("iteration k")
        self.ax_u.set_ylabel(r"$u_k$")
        self.ax_u.set_title(f"gradient descent, lr = {self.values['lr']:.2f}")
        self.ax_u.legend()
        tiny = 1e-17
        self.ax_err.semilogy(k, eu + tiny, "o-", ms=3, label="unrolled (autograd through k steps)")
        self.ax_err.semilogy(k, ei + tiny, "s-", ms=3, label=r"implicit $-H^{-1}B$ at $u_k$")
        self.ax_err.set_xlabel("iteration k")
        self.ax_err.set_ylabel(r"$\|\,\mathrm{gradient} - \mathrm{softmax}(x)\|$")
        self.ax_err.set_ylim(1e-17, 10)
        self.ax_err.set_title("gradient error")
        self.ax_err.legend(fontsize=8)
