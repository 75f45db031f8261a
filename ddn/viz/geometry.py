"""Picture for notebook 04 (the geometry of the constrained gradient, paper §4.5, Fig. 4).

The node, with scalar input ``x`` and ``u in R^2``::

    y(x) = argmin_u  1/2 (u - z(x))^T Q (u - z(x))   s.t.  h(x, u) = ||u - c(x)||^2 - r^2 = 0

with target ``z(x) = (x, 1.8)``, an anisotropic ``Q`` and a circle whose centre
``c(x) = (0, s x)`` moves with the input when ``s != 0`` (then ``C = D_X h != 0``).

Prop. 4.5 with the Lagrangian ``L = f - lam h`` (one constraint, ``A = D_Y h`` is 1x2)::

    Dy = -H^{-1} B  +  H^{-1} A^T (A H^{-1} A^T)^{-1} (A H^{-1} B - C)
         '-------'     '-----------------------------------------------'
         unconstrained        correction: removes the part of -H^{-1}B that
         part                 leaves the (moving) constraint, in the metric of H

For a fixed constraint (``s = 0``) the correction projects ``-H^{-1}B`` onto the tangent line
of the circle in the metric of ``H`` (``H^{1/2}``, project, ``H^{-1/2}``), so ``A Dy = 0``.
"""
from __future__ import annotations

import numpy as np

from ._interactive import InteractiveFigure

__all__ = ["CircleConstrainedQuadratic", "ConstrainedGradientGeometry"]


class CircleConstrainedQuadratic:
    """Solution, multiplier and the Prop. 4.5 pieces for the problem in the module docstring.

    Args:
        radius: ``r > 0``.
        coupling: ``s``, how fast the circle's centre moves with ``x``.
        Q: 2x2 symmetric positive definite weight (default: an anisotropic rotated one).
    """

    def __init__(self, radius=1.0, coupling=0.0, Q=None):
        if radius <= 0:
            raise ValueError(f"radius must be positive, got {radius}")
        self.r, self.s = float(radius), float(coupling)
        if Q is None:
            t = 0.5
            R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
            Q = R @ np.diag([1.0, 4.0]) @ R.T
        self.Q = np.asarray(Q, dtype=float)

    def target(self, x):
        return np.array([x, 1.8])

    def centre(self, x):
        return np.array([0.0, self.s * x])

    def objective(self, x, u):
        d = np.asarray(u) - self.target(x)
        return 0.5 * d @ self.Q @ d

    def solve(self, x):
        """Global minimiser on the circle: dense grid over the angle, then Newton on the angle."""
        c, r = self.centre(x), self.r
        th = np.linspace(-np.pi, np.pi, 721)
        U = c[:, None] + r * np.vstack([np.cos(th), np.sin(th)])
        D = U - self.target(x)[:, None]
        t = th[np.argmin(0.5 * np.einsum("in,ij,jn->n", D, self.Q, D))]
        for _ in range(30):
            e = np.array([np.cos(t), np.sin(t)])
            de = np.array([-np.sin(t), np.cos(t)])
            d = c + r * e - self.target(x)
            g = r * de @ self.Q @ d
            h = r * r * de @ self.Q @ de - r * e @ self.Q @ d
            t = t - g / h if h > 0 else t - 0.1 * g
        return c + r * np.array([np.cos(t), np.sin(t)])

    def pieces(self, x, y=None):
        """``dict(y, lam, H, A, B, C)`` of Prop. 4.5 at ``x`` (``lam`` from Eq. 32)."""
        y = self.solve(x) if y is None else np.asarray(y, dtype=float)
        dz = np.array([1.0, 0.0])                 # z'(x)
        dc = np.array([0.0, self.s])              # c'(x)
        A = 2.0 * (y - self.centre(x))[None, :]   # A = D_Y h            (1 x 2)
        fy = self.Q @ (y - self.target(x))        # (D_Y f)^T
        lam = float(A[0] @ fy / (A[0] @ A[0]))    # Eq. 32: lam^T = D_Y f A^T (A A^T)^{-1}
        H = self.Q - lam * 2.0 * np.eye(2)        # H = D²_YY f - lam D²_YY h
        B = (-self.Q @ dz - lam * (-2.0 * dc))[:, None]  # B = D²_XY f - lam D²_XY h  (2 x 1)
        C = np.array([[-2.0 * (y - self.centre(x)) @ dc]])  # C = D_X h            (1 x 1)
        return dict(y=y, lam=lam, H=H, A=A, B=B, C=C)

    def gradient_parts(self, x, y=None):
        """``(unconstrained, correction, Dy)`` as 2-vectors: ``-H^{-1}B``, the correction
        term of Prop. 4.5, and their sum ``Dy``."""
        p = self.pieces(x, y)
        H, A, B, C = p["H"], p["A"], p["B"], p["C"]
        HiB = np.linalg.solve(H, B)
        HiA = np.linalg.solve(H, A.T)
        corr = HiA @ np.linalg.solve(A @ HiA, A @ HiB - C)
        return -HiB[:, 0], corr[:, 0], (corr - HiB)[:, 0]


def _fit_scale(start, vectors, k_max, lim):
    """The largest ``k <= k_max`` with ``start + k v`` inside the box ``[-lim, lim]^2`` for
    every ``v`` in ``vectors`` (``start`` itself is assumed inside)."""
    k = float(k_max)
    for v in vectors:
        for c in range(2):
            if v[c] > 0:
                k = min(k, (lim - start[c]) / v[c])
            elif v[c] < 0:
                k = min(k, (-lim - start[c]) / v[c])
    return max(k, 0.0)


class ConstrainedGradientGeometry(InteractiveFigure):
    """Fig. 4 in spirit: level sets of ``f(x, .)``, the constraint circle, the solution ``y``,
    the unconstrained part ``-H^{-1}B`` (blue), the correction (red) and ``Dy`` (green,
    tangent to the circle when the constraint does not depend on ``x``), plus the finite
    difference direction ``(y(x + e) - y(x - e)) / 2e`` as a check (black dots).

    Parameters: ``x`` (input), ``radius`` (circle radius), ``coupling`` (``s``: centre moves
    as ``(0, s x)``).
    """

    defaults = {"x": 2.0, "radius": 1.2, "coupling": 0.0}
    figsize = (6.5, 6.0)
    arrow_scale = 2.0

    def _build(self):
        self.ax = self.fig.subplots()

    def _draw(self):
        x, r, s = (float(self.values[k]) for k in ("x", "radius", "coupling"))
        prob = CircleConstrainedQuadratic(r, s)
        y = prob.solve(x)
        unc, corr, dy = prob.gradient_parts(x, y)
        eps = 1e-5
        fd = (prob.solve(x + eps) - prob.solve(x - eps)) / (2 * eps)
        self.parts = dict(y=y, unconstrained=unc, correction=corr, dy=dy, fd=fd)
        ax = self.ax
        ax.clear()
        g = np.linspace(-3, 3, 161)
        U1, U2 = np.meshgrid(g, g)
        D1, D2 = U1 - x, U2 - 1.8
        F = 0.5 * (prob.Q[0, 0] * D1 ** 2 + 2 * prob.Q[0, 1] * D1 * D2 + prob.Q[1, 1] * D2 ** 2)
        ax.contour(U1, U2, F, levels=np.linspace(0.05, 6, 14) ** 1.5, colors="0.7",
                   linewidths=0.8)
        th = np.linspace(0, 2 * np.pi, 200)
        c = prob.centre(x)
        ax.plot(c[0] + r * np.cos(th), c[1] + r * np.sin(th), "k-", lw=1.5,
                label=r"constraint $h(x, u) = 0$")
        ax.plot(*prob.target(x), "x", color="0.3", ms=8, label=r"unconstrained min $z(x)$")
        ax.plot(*y, "ko", ms=7, label=r"solution $y(x)$")
        # tangent line of the circle at y
        n = (y - c) / r
        t = np.array([-n[1], n[0]])
        ax.plot(*np.c_[y - 2 * t, y + 2 * t], ":", color="k", lw=0.8)
        # arrows are drawn times k <= arrow_scale, shrunk when needed so that their tips (and
        # the finite-difference dot) stay inside the axes: near H singular -H^{-1}B is huge
        k = _fit_scale(y, [unc, dy, fd], self.arrow_scale, lim=2.9)
        self.arrow_scale_used = k
        vecs = k * np.array([unc, corr, dy])
        starts = np.array([y, y + k * unc, y])
        self.quiver = ax.quiver(starts[:, 0], starts[:, 1], vecs[:, 0], vecs[:, 1],
                                color=["C0", "C3", "C2"], angles="xy", scale_units="xy",
                                scale=1.0, width=0.008)
        for v, st, col, lab, off in zip(vecs, starts, ["C0", "C3", "C2"],
                                        [r"$-H^{-1}B$", "correction", r"$Dy$"],
                                        [(0.05, 0.1), (0.1, 0.0), (-0.3, -0.3)]):
            ax.text(*(st + v + np.array(off)), lab, color=col, fontsize=11, clip_on=True)
        ax.plot(*(y + k * fd), "k.", ms=8, label=rf"finite difference (arrows $\times{k:.2g}$)")
        ax.set_aspect("equal")
        ax.set_xlim(-3, 3)
        ax.set_ylim(-3, 3)
        ax.set_xlabel(r"$u_1$")
        ax.set_ylabel(r"$u_2$")
        ax.set_title(rf"x = {x:.2f}, r = {r:.2f}, s = {s:.2f}, $\lambda$ = "
                     rf"{prob.pieces(x, y)['lam']:.2f}")
        ax.legend(loc="lower left", fontsize=8)
