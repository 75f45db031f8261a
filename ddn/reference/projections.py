r"""Euclidean projection onto the Lp sphere and the Lp ball (paper §5.2), one vector at a time.

    sphere:  y(x) ∈ argmin_u ½‖u − x‖²₂  s.t.  ‖u‖_p = r          p ∈ {1, 2, ∞}
    ball:    y(x) ∈ argmin_u ½‖u − x‖²₂  s.t.  ‖u‖_p ≤ r
    simplex: y(x) ∈ argmin_u ½‖u − x‖²₂  s.t.  u ≥ 0, Σ u = r

Prop. 4.5 with ``H = I − λ D²h``, ``B = −I``, ``C = D_r h = −1`` (the radius is an input too):

* p = 2: ``y = r x/‖x‖``; ``Dy = (r/‖x‖)(I − y yᵀ/r²)``, ``dy/dr = y/r``.
* p = 1: ``y_i = sign(x_i) max(|x_i| − τ, 0)`` with ``Σ_i max(|x_i| − τ, 0) = r`` (Duchi et al. 2008,
  sort-based); ``s = sign(y)``, ``S = supp y``: ``Dy = I − s sᵀ/|S|``, ``dy/dr = s/|S|``.
* p = ∞: ``y = clamp(x, −r, r)``; ``T`` = coordinates on the face (|y_i| = r), ``s_T`` their signs:
  ``Dy = I − s_T s_Tᵀ/|T|``, ``dy/dr = s_T/|T|``.

Non-smooth faces (p = 1, ∞). The formulas above are the paper's (``masked=False``): a valid Clarke
descent direction. With ``masked=True`` (**the default**) the rows and columns of coordinates pinned
by the face (``y_i = 0`` for p = 1, ``|y_i| = r`` for p = ∞) are zeroed; then ``Dy`` is the true
derivative almost everywhere (it matches finite differences), which is what a gradient check — and
a user who wants ``y`` to move as predicted — expects. For p = 1 masked: ``Dy = diag(1_S) − s sᵀ/|S|``;
for p = ∞ masked: ``Dy = diag(1 − 1_T)``, ``dy/dr = s_T`` (the derivative of clamp).

Inside the ball (‖x‖_p < r):
* the ball returns ``y = x`` (constraint inactive, ``Dy = I``, ``dy/dr = 0``);
* the sphere pushes outward: p = 2 scales; p = 1 adds ``τ sign(x_i)`` with ``τ = (r − ‖x‖₁)/n`` to
  every coordinate (so ``S`` is everything, ``Dy = I − s sᵀ/n``); p = ∞ moves the largest-magnitude
  coordinate (the first on ties) to the face. ``sign(0)`` is taken as +1.
* ``x = 0`` on the p = 2 sphere: every point is nearest; we return ``r·1/√n`` and a zero gradient
  w.r.t. ``x`` (the derivative does not exist) with a ``DDNWarning``. On the p = 1 (∞) sphere every
  ``(±r/n, …)`` (every ``±r e_i``) is nearest: the gradient is that of the branch returned,
  ``(r/n)·1`` (``r e_1``), with a ``DDNWarning`` too (as in ``ddn.torch``).
"""
import warnings

import autograd.numpy as anp
import numpy as np

from .. import DDNError, DDNWarning

try:  # the generic base classes, once ddn.reference.core provides them
    from .core import EqConstrainedNode as _EqBase
except ImportError:  # pragma: no cover
    _EqBase = object
try:
    from .core import IneqConstrainedNode as _IneqBase
except ImportError:  # pragma: no cover
    _IneqBase = object

__all__ = ["project_sphere", "project_ball", "project_simplex", "SphereProjectionNode",
           "BallProjectionNode", "SimplexProjectionNode"]

INF = float("inf")


def _sgn(x):
    return np.where(x >= 0, 1.0, -1.0)


def _check(x, p, radius):
    x = np.asarray(x, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise DDNError(f"projection takes a non-empty 1-D vector x, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise DDNError("x contains NaN or Inf; remove or mask the non-finite values first")
    if p not in (1, 2, INF):
        raise DDNError(f"p must be 1, 2 or float('inf'), got {p!r}")
    if not (np.isfinite(radius) and radius > 0):
        raise DDNError(f"radius must be a finite positive number, got {radius}")
    return x


def _norm(x, p):
    """‖x‖_p; for p = 2 without over/underflow of the squares (‖(3e200, 4e200)‖ was inf, so the
    sphere and ball projections returned y = 0 without a word; ‖(3e-320, 4e-320)‖ was 0)."""
    with np.errstate(over="ignore", under="ignore"):  # handled just below
        nrm = float(np.linalg.norm(x, ord=p))
    if p == 2 and not 1e-150 < nrm < 1e150:
        s = float(np.max(np.abs(x), initial=0.0))
        if 0 < s < INF:
            nrm = s * float(np.linalg.norm(np.asarray(x) / s))
    return nrm


def _shrink(a, r):
    """``max(a − τ, 0)`` with ``Σ max(a_i − τ, 0) = r`` (Duchi et al. 2008, sort-based). Computed on
    ``b = a − max a`` (τ is translation-equivariant), so it stays accurate when ``a ≫ r``."""
    b = a - a.max()
    u = np.sort(b)[::-1]
    c = np.cumsum(u) - r
    k = np.arange(1, a.size + 1)
    rho = np.nonzero(u - c / k > 0)[0][-1]
    return np.maximum(b - c[rho] / (rho + 1.0), 0.0)


def project_sphere(x, p=2, radius=1.0):
    """Nearest point to ``x`` on ``{u : ‖u‖_p = radius}``; (n,) -> (n,)."""
    x = _check(x, p, radius)
    r = float(radius)
    nrm = _norm(x, p)
    if p == 2:
        if nrm == 0:
            return np.full(x.size, r / np.sqrt(x.size))
        return r * x / nrm
    if p == 1:
        if nrm >= r:
            return project_ball(x, 1, r)
        return x + (r - nrm) / x.size * _sgn(x)
    if nrm >= r:  # p = ∞
        return np.clip(x, -r, r)
    y = x.copy()
    k = int(np.argmax(np.abs(x)))
    y[k] = r * _sgn(x[k])
    return y


def project_ball(x, p=2, radius=1.0):
    """Nearest point to ``x`` in ``{u : ‖u‖_p ≤ radius}``; (n,) -> (n,)."""
    x = _check(x, p, radius)
    r = float(radius)
    if _norm(x, p) <= r:
        return x.copy()
    if p == 2:
        return r * x / _norm(x, 2)
    if p == 1:
        return np.sign(x) * _shrink(np.abs(x), r)
    return np.clip(x, -r, r)


def project_simplex(x, radius=1.0):
    """Nearest point to ``x`` in ``{u ≥ 0, Σ u = radius}``: ``y = max(x − τ, 0)``; (n,) -> (n,)."""
    x = _check(x, 2, radius)
    return _shrink(x, float(radius))


def _warn_zero_on_sphere(x, p):
    """x = 0 on the L1 / L∞ sphere: the nearest point is not unique (every (±r/n, …), resp.
    every ±r e_i), y is not differentiable; say so, as for p = 2 and as ddn.torch does (the
    reference floor returned the chosen branch's gradient without a word)."""
    if p != 2 and not np.any(x):
        which = "every (±r/n, …)" if p == 1 else "every ±r e_i"
        branch = "y = (r/n)·1" if p == 1 else "y = r e_1"
        warnings.warn(f"projection of x = 0 onto the L{'1' if p == 1 else '∞'} sphere: {which} "
                      f"is nearest, y is not differentiable; returning the gradient of the "
                      f"branch {branch}", DDNWarning, stacklevel=4)


def _proj_jacobians(x, y, p, r, masked, ball):
    """(Dy (n, n), dy/dr (n,)) at the projection y of x, per the module docstring."""
    n = x.size
    eye = np.eye(n)
    if ball and _norm(x, p) <= r:
        return eye, np.zeros(n)
    if not ball:
        _warn_zero_on_sphere(x, p)
    if p == 2:
        nrm = _norm(x, 2)
        if nrm == 0:
            warnings.warn("projection of x = 0 onto the L2 sphere: y is not differentiable; "
                          "returning a zero gradient w.r.t. x", DDNWarning, stacklevel=3)
            return np.zeros((n, n)), y / r
        return (r / nrm) * (eye - np.outer(y, y) / r ** 2), y / r
    if p == 1:
        s = np.sign(y)
        S = s != 0
        D = (np.diag(S.astype(float)) if masked else eye) - np.outer(s, s) / S.sum()
        return D, s / S.sum()
    T = np.abs(y) >= r * (1 - 1e-12)  # p = ∞: coordinates on the face
    sT = np.where(T, _sgn(y), 0.0)
    if masked:
        return np.diag((~T).astype(float)), sT
    return eye - np.outer(sT, sT) / T.sum(), sT / T.sum()


def _proj_vjp(x, y, v, p, r, masked, ball):
    """vᵀ Dy in O(n) without forming Dy: every Dy above is symmetric, diagonal minus rank one."""
    if ball and _norm(x, p) <= r:
        return v.copy()
    if not ball:
        _warn_zero_on_sphere(x, p)
    if p == 2:
        nrm = _norm(x, 2)
        if nrm == 0:
            warnings.warn("projection of x = 0 onto the L2 sphere: y is not differentiable; "
                          "returning a zero gradient w.r.t. x", DDNWarning, stacklevel=3)
            return np.zeros_like(v)
        return (r / nrm) * (v - y * (y @ v) / r ** 2)
    if p == 1:
        s = np.sign(y)
        S = s != 0
        return (np.where(S, v, 0.0) if masked else v) - s * (s @ v) / S.sum()
    T = np.abs(y) >= r * (1 - 1e-12)  # p = ∞: coordinates on the face
    if masked:
        return np.where(T, 0.0, v)
    sT = np.where(T, _sgn(y), 0.0)
    return v - sT * (sT @ v) / T.sum()


def _check_like(a, x, name):
    """a as a finite float array of x's shape, else DDNError (NaN in v gave NaN silently, a y of
    the wrong shape an unreadable broadcast error)."""
    a = np.asarray(a, dtype=float)
    if a.shape != x.shape:
        raise DDNError(f"{name} must have the shape of x {x.shape}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise DDNError(f"{name} contains NaN or Inf: {a}")
    return a


def _solution_of(node, x, y):
    """y from the forward pass (checked), or solved now."""
    return node.solve(x)[0] if y is None else _check_like(y, x, "y")


def _clarke_stationarity(x, y, lam, p, r):
    """min over subgradients s ∈ ∂‖y‖_p of ‖y − x − λ s‖∞ (a multiple of s for p = ∞, whose λ
    is rescaled to fit): p = 1, s_i = sign(y_i) or any value in [−1, 1] where y_i = 0; p = ∞,
    s = Σ_T w_i sign(y_i) e_i with w ≥ 0 on the face T = {|y_i| = r}."""
    d = y - x
    if p == 1:
        Z = y == 0
        return float(np.max(np.where(Z, np.maximum(np.abs(d) - abs(lam), 0.0),
                                     np.abs(d - lam * np.sign(y))), initial=0.0))
    T = np.abs(y) >= r * (1 - 1e-12)
    c = d * _sgn(y)  # on T: λ w_i, all of one sign (that of λ)
    sign = np.sign(np.sum(c[T])) if T.any() else 0.0
    return float(max(np.max(np.abs(d[~T]), initial=0.0),
                     np.max(np.maximum(-sign * c[T], 0.0), initial=0.0)))


class _ProjectionNode:
    ball = False

    def __init__(self, p=2, radius=1.0, masked=True):
        if p not in (1, 2, INF):
            raise DDNError(f"p must be 1, 2 or float('inf'), got {p!r}")
        self.p, self.radius, self.masked = p, float(radius), bool(masked)

    def __repr__(self):
        return f"{type(self).__name__}(p={self.p:g}, radius={self.radius:g}, masked={self.masked})"

    def objective(self, x, y):
        """f(x, y) = ½‖y − x‖²."""
        return 0.5 * anp.sum((y - x) ** 2)

    def _h(self, y):
        if self.p == 2:
            return anp.sqrt(anp.sum(y ** 2)) - self.radius
        if self.p == 1:
            return anp.sum(anp.abs(y)) - self.radius
        return anp.max(anp.abs(y)) - self.radius

    def solve(self, x):
        """Returns ``(y, ctx)``; ctx holds the multiplier ``λ`` of L = f − λ h."""
        f = project_ball if self.ball else project_sphere
        y = f(x, self.p, self.radius)
        x = np.asarray(x, dtype=float)
        # stationarity y − x − λ ∇h = 0 ⇒ λ = ⟨y − x, ∇h⟩/‖∇h‖² (∇h a subgradient of ‖·‖_p)
        gh = {2: y / max(_norm(y, 2), 1e-300), 1: np.sign(y)}.get(self.p)
        if gh is None:
            gh = np.where(np.abs(y) >= self.radius * (1 - 1e-12), _sgn(y), 0.0)
        lam = float((y - x) @ gh / max(gh @ gh, 1e-300))
        return y, {"multipliers": np.array([lam])}

    def optimality(self, x, y=None, ctx=None):
        """The generic first-order conditions, with the residual of Clarke stationarity for
        p = 1, ∞: there ‖·‖_p is not differentiable at y (y_i = 0, resp. ties on the face), the
        smooth residual |y − x − λ∇h| is not 0 at the exact projection (it was ~τ for p = 1, so
        ``ddn.check`` failed a correct node), and the subgradients ∂h must be used instead."""
        opt = super().optimality(x, y, ctx)
        if self.p != 2:
            lam = float(opt.multipliers[0])
            stat = _clarke_stationarity(opt.x, opt.y, lam, self.p, self.radius)
            opt.residual = max(stat, self.kkt_residual(opt.x, opt.y, opt.multipliers)["feasibility"])
        return opt

    def jacobian(self, x, y=None, ctx=None):
        """D y(x) as an (n, n) array (masked or Prop. 4.5 form, see module docstring)."""
        x = _check(x, self.p, self.radius)
        y = _solution_of(self, x, y)
        return _proj_jacobians(x, y, self.p, self.radius, self.masked, self.ball)[0]

    def vjp(self, x, v, y=None, ctx=None):
        """vᵀ D y(x), (n,), in O(n) (Dy is never formed)."""
        x = _check(x, self.p, self.radius)
        v = _check_like(v, x, "v")
        y = _solution_of(self, x, y)
        return _proj_vjp(x, y, v, self.p, self.radius, self.masked, self.ball)

    def jacobian_radius(self, x, y=None):
        """dy/dr as an (n,) array."""
        x = _check(x, self.p, self.radius)
        y = _solution_of(self, x, y)
        return _proj_jacobians(x, y, self.p, self.radius, self.masked, self.ball)[1]


class SphereProjectionNode(_ProjectionNode, _EqBase):
    """``y ∈ argmin ½‖u − x‖² s.t. h(u) = ‖u‖_p − r = 0`` (Prop. 4.5; see module docstring)."""

    def equality_constraints(self, x, y):
        return self._h(y)


class BallProjectionNode(_ProjectionNode, _IneqBase):
    """``y ∈ argmin ½‖u − x‖² s.t. g(u) = ‖u‖_p − r ≤ 0`` (Prop. 4.6, Eq. 75)."""
    ball = True

    def inequality_constraints(self, x, y):
        return self._h(y)


class SimplexProjectionNode(_IneqBase):
    """``y ∈ argmin ½‖u − x‖² s.t. u ≥ 0, Σu = r``; ``Dy = diag(1_S) − 1_S 1_Sᵀ/|S|``, ``dy/dr = 1_S/|S|``
    with ``S = {y_i > 0}`` (the active bounds pin their coordinates, Prop. 4.6). A node of the
    reference floor like the others (its constraints are smooth, so ``optimality``,
    ``ddn.check.check_gradient`` and ``upper_gradient`` apply; the Eq. 12 shortcut does not)."""

    def __init__(self, radius=1.0):
        if not (np.isfinite(radius) and radius > 0):
            raise DDNError(f"radius must be a finite positive number, got {radius}")
        self.radius = float(radius)

    def __repr__(self):
        return f"SimplexProjectionNode(radius={self.radius:g})"

    def objective(self, x, y):
        return 0.5 * anp.sum((y - x) ** 2)

    def equality_constraints(self, x, y):
        return anp.sum(y) - self.radius

    def inequality_constraints(self, x, y):
        return -y

    def solve(self, x):
        return project_simplex(x, self.radius), {}

    def jacobian(self, x, y=None, ctx=None):
        x = _check(x, 2, self.radius)
        y = _solution_of(self, x, y)
        S = (y > 0).astype(float)
        return np.diag(S) - np.outer(S, S) / S.sum()

    def vjp(self, x, v, y=None, ctx=None):
        """vᵀ Dy = v_S − 1_S (1_Sᵀv)/|S| in O(n) (Dy is never formed)."""
        x = _check(x, 2, self.radius)
        v = _check_like(v, x, "v")
        y = _solution_of(self, x, y)
        S = (y > 0).astype(float)
        return S * v - S * (S @ v) / S.sum()

    def jacobian_radius(self, x, y=None):
        x = _check(x, 2, self.radius)
        y = _solution_of(self, x, y)
        S = (y > 0).astype(float)
        return S / S.sum()
