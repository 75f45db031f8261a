"""Picture for notebook 03 (equality constraints, Prop. 4.5, Cor. 4.9, Obs. 4.8).

``SimplexSoftmaxView``: the node
``y(x) = argmin_u  T sum_i u_i log u_i - x^T u   s.t.  1^T u = 1``
(whose solution is ``softmax(x / T)``) drawn on the probability simplex. The columns of
``Dy = (diag(y) - y y^T) / T`` are the directions in which ``y`` moves when one input grows;
they lie in the simplex plane because ``A Dy = 0`` for a fixed constraint ``A u = b``
(Observation 4.8).
"""
from __future__ import annotations

import numpy as np

from ._interactive import InteractiveFigure

__all__ = ["softmax_jacobian", "SimplexSoftmaxView"]

_VERTICES = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])


def softmax_jacobian(x, temperature=1.0):
    """Closed form ``(y, Dy)`` for ``y = softmax(x / T)``: ``Dy = (diag(y) - y y^T) / T``."""
    z = np.asarray(x, dtype=float) / temperature
    y = np.exp(z - z.max())
    y /= y.sum()
    return y, (np.diag(y) - np.outer(y, y)) / temperature


class SimplexSoftmaxView(InteractiveFigure):
    """Left: the simplex with ``y`` and the columns of ``Dy`` as arrows. Right: ``Dy``.

    Parameters: ``x1``, ``x2``, ``x3`` (the input), ``temperature`` (> 0).
    """

    defaults = {"x1": 0.5, "x2": 0.0, "x3": -0.3, "temperature": 1.0}
    figsize = (9.0, 4.0)

    def _build(self):
        self.ax_s, self.ax_j = self.fig.subplots(1, 2)
        self._cbar = None

    def _draw(self):
        v = self.values
        x = np.array([v["x1"], v["x2"], v["x3"]], dtype=float)
        y, dy = softmax_jacobian(x, float(v["temperature"]))
        ax = self.ax_s
        ax.clear()
        tri = np.vstack([_VERTICES, _VERTICES[:1]])
        ax.plot(tri[:, 0], tri[:, 1], "k-", lw=1)
        for i, (px, py) in enumerate(_VERTICES):
            ax.text(px, py + (0.05 if i == 2 else -0.08), f"$e_{i + 1}$", ha="center")
        p = y @ _VERTICES
        ax.plot(*p, "ko", ms=7, label=r"$y = \mathrm{softmax}(x/T)$")
        d = dy.T @ _VERTICES                        # row j: where y moves when x_j grows
        # Column j of Dy moves y towards the vertex e_j: d_j = y_j (e_j - y) / T. Drawn times
        # k <= 2, with k small enough (k y_j / T <= 0.9) that every arrow ends inside the
        # simplex; at low temperature a fixed factor would run far outside the picture.
        k = min(2.0, 0.9 * float(v["temperature"]) / max(float(y.max()), 1e-300))
        self.arrow_scale = k
        self.arrows = ax.quiver(np.full(3, p[0]), np.full(3, p[1]), k * d[:, 0], k * d[:, 1],
                                color=["C0", "C1", "C2"], angles="xy", scale_units="xy",
                                scale=1.0, width=0.012)
        for j in range(3):
            ax.text(*(p + k * d[j] * 1.15), rf"$\partial y/\partial x_{j + 1}$",
                    color=f"C{j}", fontsize=9, ha="center", clip_on=True)
        ax.set_aspect("equal")
        ax.set_xlim(-0.15, 1.15)
        ax.set_ylim(-0.15, 1.0)
        ax.axis("off")
        ax.set_title(rf"$y$ and the columns of $Dy$ ($\times {k:.2g}$) stay on the simplex")
        ax = self.ax_j
        ax.clear()
        lim = max(np.abs(dy).max(), 1e-12)
        self.image = ax.imshow(dy, cmap="RdBu_r", vmin=-lim, vmax=lim)
        for (i, j), val in np.ndenumerate(dy):
            ax.text(j, i, f"{val:+.3f}", ha="center", va="center", fontsize=9)
        ax.set_xticks(range(3), [f"$x_{j + 1}$" for j in range(3)])
        ax.set_yticks(range(3), [f"$y_{i + 1}$" for i in range(3)])
        ax.set_title(r"$Dy$ (each column sums to 0)")
