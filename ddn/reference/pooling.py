r"""Robust pooling (paper §5.1), one vector at a time: the ground truth for ``ddn.torch.pooling``.

    y(x) ∈ argmin_u  f(x, u) = Σ_i φ(u − x_i; α)                 x ∈ R^n, y ∈ R

Optimality: ``g(y) = Σ_i φ'(y − x_i) = 0``. Prop. 4.4 with ``H = Σ_i φ''(y − x_i)`` and
``B_i = −φ''(y − x_i)`` gives the closed form

    D_{x_i} y = φ''(y − x_i) / Σ_j φ''(y − x_j),        dy/dα = −Σ_i ∂_α φ'(y − x_i) / Σ_j φ''(y − x_j).

Solvers (deterministic; the torch floor follows the same rules):

* quadratic: the mean.
* pseudo-Huber, Huber (convex): the root of the monotone ``g`` on ``[min x, max x]`` by Brent's
  method (independent of the torch floor's Newton iterations, so it is a second oracle).
* Huber's minimizer is an interval of positive length exactly when n is even and the two middle
  order statistics ``x_j = sort(x)[n/2 − 1]``, ``x_k = sort(x)[n/2]`` are more than ``2α`` apart
  (no inlier); we return its **midpoint** ``(x_j + x_k)/2``. That choice is itself differentiable: ``Dy = ½(e_j + e_k)``, ``dy/dα = 0``.
* Welsch, truncated quadratic (non-convex): the paper's protocol — a local solve from the mean and
  from the (lower) median ``sort(x)[(n−1)//2]``, keeping the lower objective; objectives equal to rounding (``|f₁ − f₂| ≤ 8 ε n`` in units
  of φ's ceiling, e.g. symmetric data such as n = 2 far-apart points) keep the **smaller** y, so
  the choice does not depend on rounding.
  Welsch: Newton steps accepted only when they descend, else the majorize–minimize (IRLS) step
  ``y ← Σ w_i x_i / Σ w_i``, doubled while the objective keeps dropping. Truncated quadratic: the
  MM step ``y ← mean{x_i : |y − x_i| < α}`` to its fixed point (finite). If no point is an inlier the objective is flat and ``y`` stays put, so
  its derivative is that of the start (the mean: ``1/n``) — this cannot win over the median start,
  which always has an inlier, but is handled anyway.
"""
import autograd.numpy as anp
import numpy as np
from scipy.optimize import brentq

from .. import DDNError, DDNWarning

try:  # the generic base class, once ddn.reference.core provides it
    from .core import DeclarativeNode as _Base
except ImportError:  # pragma: no cover - core still being written
    _Base = object

__all__ = ["PENALTIES", "penalty", "robust_pool", "RobustPoolNode"]

PENALTIES = ("quadratic", "pseudo-huber", "huber", "welsch", "truncated-quadratic")


def _check_penalty(name):
    if name not in PENALTIES:
        raise DDNError(f"unknown penalty {name!r}; choose one of {PENALTIES}")
    return name


def penalty(z, name, alpha=1.0):
    """φ(z; α) elementwise (autograd-traceable), the penalties of Table 5.1 of ddn-math.md."""
    _check_penalty(name)
    if name == "quadratic":
        return 0.5 * z ** 2
    if name == "pseudo-huber":
        return alpha ** 2 * (anp.sqrt(1.0 + (z / alpha) ** 2) - 1.0)
    if name == "huber":
        a = anp.abs(z)
        return anp.where(a <= alpha, 0.5 * z ** 2, alpha * (a - 0.5 * alpha))
    if name == "welsch":
        return 1.0 - anp.exp(-0.5 * (z / alpha) ** 2)
    return anp.minimum(0.5 * z ** 2, 0.5 * alpha ** 2)  # truncated-quadratic


def _derivs(z, name, alpha):
    """(φ'(z), φ''(z), ∂_α φ'(z)) as numpy arrays (a.e. for the non-smooth penalties)."""
    if name == "quadratic":
        return z, np.ones_like(z), np.zeros_like(z)
    if name == "pseudo-huber":
        u = z / alpha
        s = 1.0 + u * u
        return z / np.sqrt(s), s ** -1.5, u ** 3 * s ** -1.5
    if name == "huber":
        inl = np.abs(z) <= alpha
        return (np.clip(z, -alpha, alpha), inl.astype(float),
                np.where(inl, 0.0, np.sign(z)))
    if name == "welsch":
        u = z / alpha
        w = np.exp(-0.5 * u * u)
        return z * w / alpha ** 2, (1.0 - u * u) * w / alpha ** 2, z * w * (u * u - 2.0) / alpha ** 3
    inl = np.abs(z) < alpha  # truncated-quadratic
    return np.where(inl, z, 0.0), inl.astype(float), np.zeros_like(z)


def _objective(x, y, name, alpha):
    return float(np.sum(penalty(y - x, name, alpha)))


def _welsch_local(x, y, alpha, max_iter=500):
    """Descent from ``y``: Newton when it lowers f, else the MM (IRLS) step; returns (y, converged)."""
    def ev(y):
        w = np.exp(-0.5 * ((y - x) / alpha) ** 2)
        z = y - x
        return (len(x) - w.sum(), (z * w).sum() / alpha ** 2,
                ((1 - (z / alpha) ** 2) * w).sum() / alpha ** 2, w.sum(), (w * x).sum(),
                (np.abs(z) * w).sum() / alpha ** 2)
    f, g, H, s0, s1, _ = ev(y)
    eps = np.finfo(float).eps
    tol = 4 * eps
    for _ in range(max_iter):
        if s0 <= 0:  # every weight underflowed: flat objective, stay
            return y, True
        y_mm = y - g * alpha ** 2 / s0  # = Σ w_i x_i / Σ w_i
        y_new = y - g / H if H > 0 else y_mm
        f_new, *rest = ev(y_new)
        mm = not H > 0
        if not f_new <= f + 8 * np.finfo(float).eps * len(x):
            y_new = y_mm
            f_new, *rest = ev(y_new)
            mm = True
        if mm:  # the MM step descends but crawls on flat stretches: double it while f drops
            t = 2.0
            for _ in range(40):
                f_t, *rest_t = ev(y + t * (y_mm - y))
                if not rest_t[2] > rest[2]:  # compare Σw (f = n − Σw) to avoid n's rounding
                    break
                y_new, f_new, rest = y + t * (y_mm - y), f_t, rest_t
                t *= 2
        step = abs(y_new - y)
        y, f = y_new, f_new
        g, H, s0, s1, gabs = rest
        # a step at rounding level, or g at rounding level (ends a degenerate minimum H → 0;
        # looser than the torch floor's 4 eps so that float64 sums in any order get there)
        if step <= tol * (abs(y) + alpha) or abs(g) <= (16 + np.sqrt(x.size)) * eps * gabs:
            return y, True
    return y, False


def _tq_local(x, y, alpha, max_iter=1000):
    """MM for the truncated quadratic: y ← mean of the inliers ``|y − x_i| < α``, to a fixed
    point that is a local minimum.

    A fixed point with samples exactly on the kink ``|y − x_i| = α`` (quantized data) is not one:
    ``min(z², α²)`` has a concave kink, so moving y toward those samples lowers f at rate α per
    sample while the inliers' terms are stationary. There the samples on one kink side (the side
    with more of them; the lower side on a tie) join the inliers for one more step — the
    quadratic through them still majorizes f at y — which lowers f strictly; finitely many
    inlier sets, so it ends."""
    for _ in range(max_iter):
        z = y - x
        inl = np.abs(z) < alpha
        y_new = x[inl].mean() if inl.any() else y
        if y_new == y:
            kink = np.abs(z) == alpha
            if not kink.any():
                return y, True
            lower, upper = kink & (z > 0), kink & (z < 0)
            side = lower if lower.sum() >= upper.sum() else upper
            y_new = x[inl | side].mean()
        y = y_new
    return y, False


def _solve(x, name, alpha):
    n = x.size
    lo, hi = float(x.min()), float(x.max())
    mean = float(x.mean())
    if name == "quadratic" or lo == hi:
        return mean
    if name in ("pseudo-huber", "huber"):
        def g(u):
            if name == "pseudo-huber":
                return _pseudo_huber_g(u - x, alpha)
            return float(_derivs(u - x, name, alpha)[0].sum())
        if g(lo) >= 0:
            y = lo
        elif g(hi) <= 0:
            y = hi
        else:
            y = brentq(g, lo, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
        if name == "huber":
            mid = _huber_gap(x, alpha)
            if mid is not None:  # the minimizers form an interval: return its midpoint
                y = 0.5 * (mid[0] + mid[1])
        return y
    median = float(np.sort(x)[(n - 1) // 2])
    local = _welsch_local if name == "welsch" else _tq_local
    (y1, ok1), (y2, ok2) = local(x, mean, alpha), local(x, median, alpha)
    if not (ok1 and ok2):
        import warnings
        warnings.warn(f"robust_pool({name!r}): local solver did not converge; returning the last "
                      "iterate", DDNWarning, stacklevel=3)
    f1, f2 = _objective(x, y1, name, alpha), _objective(x, y2, name, alpha)
    return y2 if _pick_second(f1, f2, y1, y2, n, name, alpha) else y1


def _pseudo_huber_g(z, alpha):
    """g = Σ φ'(z_i) for pseudo-Huber, φ'(z) = α u/√(1 + u²), u = z/α, summed without losing
    the small parts: for |u| > 1, φ'/α = sign(u)·(1 − 1/(s(s + |u|))), s = √(1 + u²), so g/α is
    the integer Σ sign(u_i) plus a sum of small terms, each to full relative accuracy. Summed
    as written, the ±α parts cancelled and their rounding (eps·nα) decided y where Σφ'' ≪ 1
    (α ≪ the gap between the middle samples): x ~ 1e6 with α = 1 came back 2.2 from the
    minimizer, and α = 1e-3 on unit data 2e-11 (finite differences of y then missed Dy)."""
    u = z / alpha
    s = np.sqrt(1.0 + u * u)
    far = np.abs(u) > 1.0
    sign = np.sign(u[far])
    small = np.sum(u[~far] / s[~far]) - np.sum(sign / (s[far] * (s[far] + np.abs(u[far]))))
    return float(alpha * (np.sum(sign) + small))


def _pick_second(f1, f2, y1, y2, n, name, alpha):
    """The lower objective; near-ties (rounding level of Σφ, φ ≤ 1 or α²/2) go to the smaller y."""
    tol = 8 * np.finfo(float).eps * n * (1.0 if name == "welsch" else 0.5 * alpha ** 2)
    return f2 < f1 - tol or (abs(f2 - f1) <= tol and y2 < y1)


def _huber_gap(x, alpha):
    """``(x_j, x_k)`` when Huber's minimizers form an interval of positive length, else None.

    Every point is then an outlier, each contributing ``±α`` to ``g``, so ``g = 0`` needs n even,
    half the points at or below ``x_j = sort(x)[n/2 − 1]`` and half at or above
    ``x_k = sort(x)[n/2]``, and a gap ``x_k − x_j > 2α``; the minimizers are ``[x_j + α, x_k − α]``.
    Decided on the order statistics, not on ``|y − x_i| ≤ α`` at a root (a root found on the
    interval's end has a boundary "inlier" and would hide the interval)."""
    n = x.size
    if n % 2:
        return None
    s = np.sort(x)
    xj, xk = float(s[n // 2 - 1]), float(s[n // 2])
    return (xj, xk) if xk - xj > 2 * alpha else None


def _huber_midpoint(x, xj, xk):
    """D_x of the midpoint ``(x_j + x_k)/2`` of Huber's interval of minimizers (½ split over ties
    at each end)."""
    wj = (x == xj).astype(float)
    wk = (x == xk).astype(float)
    return 0.5 * wj / wj.sum() + 0.5 * wk / wk.sum()


def _check_input(x, alpha):
    x = np.asarray(x, dtype=float)
    if x.ndim != 1:
        raise DDNError(f"robust pooling takes a 1-D vector x, got shape {x.shape}; pool rows one "
                       "at a time or use ddn.torch.robust_pool(x, dim=...)")
    if x.size == 0:
        raise DDNError("robust pooling of an empty vector is undefined; pass at least one value")
    if not np.all(np.isfinite(x)):
        raise DDNError("x contains NaN or Inf; robust pooling is undefined there — remove or "
                       "mask the non-finite values first")
    if not (np.isfinite(alpha) and alpha > 0):
        raise DDNError(f"alpha must be a finite positive number, got {alpha}")
    if np.abs(x).max() > np.sqrt(np.finfo(float).max) / 8 * alpha:
        raise DDNError("|x|/alpha is so large that (x/alpha)² overflows; rescale x or raise alpha")
    return x


def _check_scalar(a, name):
    """The one entry of a finite (1,) array (or scalar): y and v of the m = 1 pooling node. A
    longer v used to be read as v[0] silently (a wrong gradient)."""
    a = np.asarray(a, dtype=float)
    if a.size != 1 or a.ndim > 1:
        raise DDNError(f"{name} must have shape (1,) (pooling has one output), got {a.shape}")
    if not np.isfinite(a).all():
        raise DDNError(f"{name} contains NaN or Inf: {a}")
    return float(a.reshape(-1)[0])


def robust_pool(x, penalty="pseudo-huber", alpha=1.0):
    """Robust pooling ``y = argmin_u Σ_i φ(u − x_i; α)`` of a 1-D vector; returns a float.

    Args:
        x: (n,) array, n ≥ 1, finite.
        penalty: one of ``PENALTIES``.
        alpha: the penalty's scale α > 0.

    Paper: Gould et al., Deep Declarative Networks, §5.1.
    """
    return float(RobustPoolNode(penalty, alpha).solve(x)[0][0])


class RobustPoolNode(_Base):
    r"""``y ∈ argmin_u Σ_i φ(u − x_i; α)`` (n inputs, m = 1 output), Prop. 4.4 in closed form.

    ``jacobian(x) -> (1, n)`` with entries ``φ''(y − x_i)/Σ_j φ''(y − x_j)``;
    ``vjp(x, v) -> (n,)``; ``jacobian_alpha(x) -> (1,)``, ``dy/dα``. The generic
    ``DeclarativeNode.jacobian`` (autograd Hessians) applies to it too and must agree.
    """

    m = 1  # one output; n is any size (the base class accepts any 1-D x when n is None)

    def __init__(self, penalty="pseudo-huber", alpha=1.0):
        self.penalty = _check_penalty(penalty)
        if not (np.isfinite(alpha) and alpha > 0):
            raise DDNError(f"alpha must be a finite positive number, got {alpha}")
        self.alpha = float(alpha)

    def __repr__(self):
        return f"RobustPoolNode(penalty={self.penalty!r}, alpha={self.alpha:g})"

    def objective(self, x, y):
        """f(x, y) = Σ_i φ(y − x_i; α) (autograd-traceable; y has shape (1,) or is a scalar)."""
        return anp.sum(penalty(y - x, self.penalty, self.alpha))

    def solve(self, x):
        """Returns ``(y, ctx)`` with ``y`` of shape (1,) and ``ctx = {"H": Σφ''}``."""
        x = _check_input(x, self.alpha)
        y = _solve(x, self.penalty, self.alpha)
        H = float(_derivs(y - x, self.penalty, self.alpha)[1].sum())
        return np.array([y]), {"H": H}

    def _weights(self, x, y):
        """(D_x y as (n,), dy/dα as float) at the solution y."""
        x = _check_input(x, self.alpha)
        y = float(_check_scalar(y, "y"))
        if self.penalty == "huber":
            gap = _huber_gap(x, self.alpha)
            if gap is not None:  # interval of minimizers; y is its midpoint
                return _huber_midpoint(x, *gap), 0.0
        _, d2, d2a = _derivs(y - x, self.penalty, self.alpha)
        H = d2.sum()  # H = D²_YY f = Σ φ''
        if H > 0:
            return d2 / H, -d2a.sum() / H  # Dy = −H⁻¹ B with B_i = −φ''(y − x_i)
        if self.penalty == "truncated-quadratic":  # flat: y stayed at the mean
            return np.full(x.size, 1.0 / x.size), 0.0
        import warnings
        warnings.warn(f"robust_pool({self.penalty!r}): H = Σφ'' = {H:.3g} ≤ 0 at the solution, "
                      "y is not differentiable there; returning a zero gradient", DDNWarning,
                      stacklevel=3)
        return np.zeros(x.size), 0.0

    def jacobian(self, x, y=None, ctx=None):
        """D y(x) as a (1, n) array."""
        if y is None:
            y, ctx = self.solve(x)
        return self._weights(x, y)[0][None, :]

    def vjp(self, x, v, y=None, ctx=None):
        """vᵀ D y(x) as an (n,) array (O(n) memory, Eq. 78)."""
        v = _check_scalar(v, "v")
        if y is None:
            y, ctx = self.solve(x)
        return v * self._weights(x, y)[0]

    def jacobian_alpha(self, x, y=None):
        """dy/dα as a (1,) array."""
        if y is None:
            y, _ = self.solve(x)
        return np.array([self._weights(x, y)[1]])
