"""Pictures for notebook 06 (feasibility problems §4.7.1, non-regular solutions §4.7.3).

- Feasibility (Eq. 45-46): trilateration. ``y`` is the upper intersection of the circles
  ``||u|| = r1`` and ``||u - (1, 0)|| = r2``; with ``h(x, u) = 0`` stacking the two circle
  equations and ``x = (r1, r2)``, ``D_Y h Dy = -D_X h``, unique while the circles cross
  transversally (``D_Y h`` invertible); tangent circles make ``D_Y h`` singular.
- Non-regular (§4.7.3): ``y = argmin_u 1/2 ||u - x||^2  s.t.  u1 <= 0, u2 <= 0, u1 + u2 <= 0``.
  For ``x > 0`` all three constraints are active at ``y = 0``: more active constraints than
  dimensions, so ``y`` is not a regular point and the multipliers are not unique.
"""
from __future__ import annotations

import numpy as np

from ._interactive import InteractiveFigure

__all__ = ["trilaterate", "clamp_active_set", "FeasibilityView"]

ACTIVE_SET_A = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])   # rows: constraint normals


def trilaterate(r1, r2):
    """Upper intersection ``y`` of ``||u|| = r1`` and ``||u - e1|| = r2`` and its Jacobian
    ``Dy = -(D_Y h)^{-1} D_X h`` (2x2, columns d/dr1, d/dr2). Raises ``ValueError`` when the
    circles do not meet in two points (no feasible point, or tangent: ``D_Y h`` singular)."""
    y1 = (r1 * r1 - r2 * r2 + 1.0) / 2.0
    s = r1 * r1 - y1 * y1
    if s <= 1e-12:
        raise ValueError(f"circles r1={r1}, r2={r2} do not cross: no regular feasible point")
    y = np.array([y1, np.sqrt(s)])
    # h1 = ||u||^2 - r1^2, h2 = ||u - e1||^2 - r2^2
    DYh = 2.0 * np.array([y, y - np.array([1.0, 0.0])])   # D_Y h  (2 x 2)
    DXh = np.diag([-2.0 * r1, -2.0 * r2])                  # D_X h  (2 x 2)
    return y, -np.linalg.solve(DYh, DXh)


def clamp_active_set(x, tol=1e-9):
    """Solution ``y = min(x, 0)``, the indices of active constraints among
    ``u1 <= 0, u2 <= 0, u1 + u2 <= 0``, and whether ``y`` is regular (active normals
    linearly independent)."""
    x = np.asarray(x, dtype=float)
    y = np.minimum(x, 0.0)
    g = ACTIVE_SET_A @ y
    active = [i for i in range(3) if g[i] >= -tol]
    A = ACTIVE_SET_A[active]
    regular = len(active) == 0 or np.linalg.matrix_rank(A) == len(active)
    return y, active, regular


class FeasibilityView(InteractiveFigure):
    """Left: trilateration with the columns of ``Dy`` as arrows. Right: the three half-planes,
    ``x``, ``y`` and the active constraint normals; the title says whether ``y`` is regular.

    Parameters: ``r1``, ``r2`` (circle radii), ``x1``, ``x2`` (the point projected).
    """

    defaults = {"r1": 0.8, "r2": 0.7, "x1": 0.8, "x2": 0.5}
    figsize = (10.0, 4.6)

    def _build(self):
        self.ax_t, self.ax_a = self.fig.subplots(1, 2)

    def _draw(self):
        v = self.values
        r1, r2 = float(v["r1"]), float(v["r2"])
        th = np.linspace(0, 2 * np.pi, 200)
        ax = self.ax_t
        ax.clear()
        ax.plot(r1 * np.cos(th), r1 * np.sin(th), "C0-", label=r"$\|u\| = r_1$")
        ax.plot(1 + r2 * np.cos(th), r2 * np.sin(th), "C1-", label=r"$\|u - e_1\| = r_2$")
        ax.plot([0, 1], [0, 0], "k^", ms=8)
        try:
            y, dy = trilaterate(r1, r2)
        except ValueError:
            self.dy = None
            ax.set_title("no transversal intersection: infeasible or D_Y h singular")
        else:
            self.dy = dy
            ax.plot(*y, "ko")
            ax.quiver([y[0]] * 2, [y[1]] * 2, dy[0], dy[1], color=["C0", "C1"],
                      angles="xy", scale_units="xy", scale=4.0, width=0.01)
            ax.set_title(r"feasibility: $y$ and $\partial y/\partial r_1$, "
                         r"$\partial y/\partial r_2$ ($\times 1/4$)")
        ax.set_aspect("equal")
        ax.set_xlabel(r"$u_1$")
        ax.set_ylabel(r"$u_2$")
        ax.set_xlim(-1.5, 2.5)
        ax.set_ylim(-1.5, 1.8)
        ax.legend(loc="lower left", fontsize=8)
        x = np.array([v["x1"], v["x2"]], dtype=float)
        y, active, regular = clamp_active_set(x)
        self.active = active
        ax = self.ax_a
        ax.clear()
        ax.fill([-2, 0, 0, -2], [-2, -2, 0, 0], color="C2", alpha=0.15)
        ax.plot([-2, 2], [2, -2], "0.5", ls=":", lw=1)
        ax.axvline(0, color="0.5", lw=1)
        ax.axhline(0, color="0.5", lw=1)
        ax.plot(*x, "x", color="0.3", ms=8, label="x")
        ax.plot(*y, "ko", label="y")
        ax.plot(*np.c_[x, y], "k--", lw=0.8)
        for i in active:
            n = ACTIVE_SET_A[i] / np.linalg.norm(ACTIVE_SET_A[i])
            ax.quiver([y[0]], [y[1]], [n[0]], [n[1]], color=f"C{3 + i}", angles="xy",
                      scale_units="xy", scale=1.5, width=0.01)
        ax.set_aspect("equal")
        ax.set_xlabel(r"$u_1$")
        ax.set_ylabel(r"$u_2$")
        ax.set_xlim(-2, 2)
        ax.set_ylim(-2, 2)
        ax.legend(loc="lower left", fontsize=8)
        ax.set_title(f"{len(active)} active constraint(s) in $R^2$: "
                     + ("regular" if regular else "NOT regular"))
