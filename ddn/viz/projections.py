"""Pictures for Lp-sphere and Lp-ball projection (paper §5.2, Eq. 72 and 75, Table I;
notebook 10).

``lp_projection_figure`` draws the 2-D balls and spheres for p = 1, 2, ∞ with a ring of
points and their projections. ``ProjectionExplorer`` projects one point (its coordinates are
the widget's sliders) and draws the Jacobian ``Dy`` as the two arrows ``Dy e_1`` and
``Dy e_2`` at ``y`` — how ``y`` moves when ``x`` moves along each axis — for the unmasked
(Prop. 4.5) and the masked gradient, next to a central finite-difference Jacobian.
``update(**values)`` redraws, so the notebook's ipywidgets and the tests drive the same code.
"""
import numpy as np
from matplotlib.figure import Figure

from ._interactive import InteractiveFigure

__all__ = ["P_VALUES", "lp_boundary", "lp_projection_figure", "ProjectionExplorer"]

#: The three norms of §5.2.
P_VALUES = (1, 2, float("inf"))
_COLORS = {1: "C0", 2: "C1", float("inf"): "C2"}


def _p_label(p):
    return "∞" if np.isinf(p) else f"{p:g}"


def lp_boundary(p, radius=1.0, num=721):
    """Points of the 2-D Lp sphere ``{u : ‖u‖_p = radius}`` as an ``(num, 2)`` array, traced
    by angle (the corners of p = 1 and ∞ are on the trace exactly)."""
    t = np.linspace(0.0, 2 * np.pi, num)
    t = np.unique(np.concatenate([t, np.arange(8) * np.pi / 4]))  # hit the corners
    d = np.c_[np.cos(t), np.sin(t)]
    return radius * d / np.linalg.norm(d, ord=p, axis=1, keepdims=True)


def _default_project(x, p, radius, kind):
    import ddn.reference as ref
    fn = ref.project_sphere if kind == "sphere" else ref.project_ball
    return np.asarray(fn(np.asarray(x, dtype=float), p, radius=radius), dtype=float)


def _default_jacobian(x, p, radius, kind, masked):
    import ddn.reference as ref
    cls = ref.SphereProjectionNode if kind == "sphere" else ref.BallProjectionNode
    return cls(p, radius, masked=masked).jacobian(np.asarray(x, dtype=float))


def finite_difference_jacobian(project, x, eps=1e-6):
    """Central finite differences of ``project`` (R^n → R^n) at ``x``: the numerical
    derivative the masked gradient is meant to equal on faces of the p = 1, ∞ balls."""
    x = np.asarray(x, dtype=float)
    cols = []
    for j in range(x.size):
        e = np.zeros_like(x)
        e[j] = eps
        cols.append((project(x + e) - project(x - e)) / (2 * eps))
    return np.stack(cols, axis=1)


def lp_projection_figure(radius=1.0, n_outside=16, project=None):
    """The 2-D Lp balls (shaded) and spheres (outline) for p = 1, 2, ∞, with a ring of points
    outside (solid arrows: their projection, the same onto the sphere and the ball) and a few
    inside (dashed arrows: the sphere pushes them out; the ball leaves them where they are)."""
    project = project or _default_project
    t = np.linspace(0, 2 * np.pi, n_outside, endpoint=False) + 0.2
    outside = 1.7 * radius * np.c_[np.cos(t), np.sin(t)]
    inside = radius * np.array([[0.25, 0.1], [-0.2, 0.35], [0.05, -0.3], [-0.3, -0.15]])
    fig = Figure(figsize=(12, 4.3), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, p in zip(axes, P_VALUES):
        b = lp_boundary(p, radius)
        ax.fill(b[:, 0], b[:, 1], color=_COLORS[p], alpha=0.12, label="ball ‖u‖_p ≤ r")
        ax.plot(b[:, 0], b[:, 1], color=_COLORS[p], lw=2, label="sphere ‖u‖_p = r")
        for pts, ls in ((outside, "-"), (inside, "--")):
            for x in pts:
                y = project(x, p, radius, "sphere")
                ax.annotate("", xy=y, xytext=x,
                            arrowprops=dict(arrowstyle="->", color="0.3", ls=ls, lw=1))
                ax.plot(*x, "o", color="0.3", ms=3)
                ax.plot(*y, "o", color="k", ms=4)
        ax.set_aspect("equal")
        ax.set_xlabel(r"$u_1$")
        ax.set_ylabel(r"$u_2$")
        lim = 1.9 * radius
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.axhline(0, color="0.85", lw=0.8)
        ax.axvline(0, color="0.85", lw=0.8)
        ax.set_title(f"p = {_p_label(p)}")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle("Euclidean projection onto Lp spheres and balls (paper §5.2, Eq. 72, 75): "
                 "solid arrows from outside, dashed from inside (sphere only)")
    return fig


class ProjectionExplorer(InteractiveFigure):
    """Project one point ``x = (x0, x1)`` onto the Lp sphere or ball of radius ``radius``.

    Left: the ball and sphere, ``x``, its projection ``y``, and the arrows ``Dy e_1`` (blue)
    and ``Dy e_2`` (orange) at ``y`` for the unmasked gradient (solid) and the masked one
    (dashed). Right: the three Jacobians as numbers — unmasked, masked and central finite
    differences. On a vertex of the p = 1 ball or a corner of the p = ∞ ball the masked
    Jacobian is zero (``y`` does not move) and equals finite differences; the unmasked one is a
    valid descent direction (Clarke generalised gradient) that is not the derivative there.

    Parameters (``update`` takes any of them): ``p`` (1, 2 or ``inf``), ``radius``, ``x0``,
    ``x1``, ``kind`` ("sphere" or "ball"). ``project(x, p, radius, kind) -> y`` and
    ``jacobian(x, p, radius, kind, masked) -> (2, 2)`` default to ``ddn.reference``
    (``project_sphere`` / ``project_ball`` and the nodes' ``jacobian``). After a redraw ``x``,
    ``y``, ``jacobians`` (``{False: unmasked, True: masked}``) and ``fd_jacobian`` hold what
    is shown.
    """

    defaults = {"p": 1, "radius": 1.0, "x0": 1.2, "x1": 0.4, "kind": "sphere"}
    figsize = (10.0, 4.6)

    def __init__(self, *, project=None, jacobian=None, arrow_scale=0.5, **values):
        self._project = project or _default_project
        self._jacobian = jacobian or _default_jacobian
        self.arrow_scale = arrow_scale
        super().__init__(**values)

    def _build(self):
        self.ax, self.ax_text = self.fig.subplots(1, 2, width_ratios=[1.2, 1])
        ax = self.ax
        (self.ball,) = ax.fill([0, 1, 0], [0, 0, 1], color="C0", alpha=0.12)
        (self.sphere,) = ax.plot([], [], color="C0", lw=2)
        (self.seg,) = ax.plot([], [], color="0.5", ls=":")
        (self.pt_x,) = ax.plot([], [], "o", color="0.3", label="x")
        (self.pt_y,) = ax.plot([], [], "o", color="k", ms=8, label="y")
        self.arrows = {}
        for masked, ls in ((False, "-"), (True, "--")):
            for j, c in enumerate(("C0", "C1")):
                (self.arrows[masked, j],) = ax.plot(
                    [], [], color=c, ls=ls, lw=1.8 if masked else 2.5,
                    label=f"Dy e_{j + 1} ({'masked' if masked else 'unmasked'})")
        ax.set_aspect("equal")
        ax.set_xlabel(r"$u_1$")
        ax.set_ylabel(r"$u_2$")
        ax.axhline(0, color="0.85", lw=0.8)
        ax.axvline(0, color="0.85", lw=0.8)
        ax.legend(loc="lower left", fontsize=7)
        self.ax_text.axis("off")
        self.text = self.ax_text.text(0.0, 1.0, "", va="top", family="monospace", fontsize=9)

    def _draw(self):
        v = self.values
        p = float(v["p"]) if np.isinf(float(v["p"])) else int(v["p"])
        r, kind = float(v["radius"]), v["kind"]
        if kind not in ("sphere", "ball"):
            raise ValueError(f"kind must be 'sphere' or 'ball', got {kind!r}")
        x = np.array([v["x0"], v["x1"]], dtype=float)
        y = np.asarray(self._project(x, p, r, kind), dtype=float)
        J = {m: np.asarray(self._jacobian(x, p, r, kind, m), dtype=float) for m in (False, True)}
        Jfd = finite_difference_jacobian(lambda z: self._project(z, p, r, kind), x)
        self.x, self.y, self.jacobians, self.fd_jacobian = x, y, J, Jfd

        b = lp_boundary(p, r)
        col = _COLORS.get(p, "C0")
        self.ball.set_xy(b)
        self.ball.set_color(col)
        self.sphere.set_data(b[:, 0], b[:, 1])
        self.sphere.set_color(col)
        self.seg.set_data([x[0], y[0]], [x[1], y[1]])
        self.pt_x.set_data([x[0]], [x[1]])
        self.pt_y.set_data([y[0]], [y[1]])
        s = self.arrow_scale * r
        for (m, j), line in self.arrows.items():
            d = J[m][:, j] * s
            line.set_data([y[0], y[0] + d[0]], [y[1], y[1] + d[1]])
        lim = max(1.6 * r, 1.15 * np.abs(x).max(), 1.15 * np.abs(y).max())
        self.ax.set_xlim(-lim, lim)
        self.ax.set_ylim(-lim, lim)
        self.ax.set_title(f"{kind}, p = {_p_label(p)}, r = {r:g}: "
                          f"y = ({y[0]:.3f}, {y[1]:.3f})", fontsize=10)

        def fmt(A):
            return "\n".join("  [" + " ".join(f"{a:7.3f}" for a in row) + " ]" for row in A)
        same = {m: np.allclose(J[m], Jfd, atol=1e-4) for m in (False, True)}
        self.text.set_text(
            f"‖x‖_p = {np.linalg.norm(x, ord=p):.3f}\n\n"
            f"Dy unmasked (Prop. 4.5):\n{fmt(J[False])}\n  = finite differences? {same[False]}\n\n"
            f"Dy masked:\n{fmt(J[True])}\n  = finite differences? {same[True]}\n\n"
            f"Dy by central finite differences:\n{fmt(Jfd)}")
