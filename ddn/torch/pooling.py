r"""Robust pooling layers (paper §5.1), batched, any pooled dim, CPU and CUDA.

    y ∈ argmin_u Σ_i φ(u − x_i; α)            over the pooled dim of size n

Optimality: ``g(y) = Σ_i φ'(y − x_i) = 0``. Backward (Prop. 4.4, Eq. 78), O(n) memory:

    H = Σ_j φ''(y − x_j)                        # H = D²_YY f (a scalar per pooled row)
    ∂L/∂x_i = v · φ''(y − x_i) / H              # −H⁻¹ B with B_i = −φ''(y − x_i)
    ∂L/∂α   = −v · Σ_i ∂_α φ'(y − x_i) / H      # α may be a learnable tensor

Solvers (rows in parallel, reaching ``g(y) ≈ 0`` to the dtype's precision in a few iterations):

* quadratic: the mean;
* pseudo-Huber, Huber (convex): Newton from the mean, safeguarded by the bracket ``[min x, max x]``
  (bisection when a Newton step leaves it or ``H = 0``);
* Welsch: from the mean and from the lower median ``sort(x)[(n−1)//2]`` (the paper's protocol),
  Newton steps accepted only when they lower ``f``, otherwise the always-descending
  majorize–minimize step ``y ← Σ w_i x_i / Σ w_i``, doubled while ``f`` keeps dropping (it crawls on
  flat stretches); stop when the step or ``g`` reaches rounding level (the latter ends degenerate
  minima, ``H → 0``, where Newton is only linear); the lower objective wins (objectives equal to rounding, ``8 ε n`` in units of φ's ceiling, keep
  the smaller y: symmetric data, e.g. n = 2 far-apart points, have two exactly tied minima);
* truncated quadratic: the same two starts, each iterating ``y ← mean{x_i : |y − x_i| < α}`` (exact MM,
  finitely many steps). Its kink is concave, so no local minimum has a point at exactly
  ``|y − x_i| = α``; a fixed point that does (quantized data: it was returned, though no local
  minimum, for 39% of rows of 8 integers in 0..5 with α = 1) takes one more MM step with
  the kink points on one side (the side with more; the left on a tie) counted as inliers, a
  valid majorizer there, which lowers ``f`` strictly.

Kinks: Huber's φ'' jumps at ``|z| = α``. A point exactly there at the solution makes ``y`` only
one-sidedly differentiable; we take ``φ''(±α) = 1`` (the point counts as an inlier, kernel and
eager alike, and so does a point within rounding of it, ``|z| ≤ α + 8ε(|y| + α)``: Newton ends
within ulps of such a root, on either side). That is the one-sided derivative along
perturbations of ``x`` (or α) that move it into ``|y − x_i| < α``: e.g. ``x = (0, 0, 1.5)``,
α = 1: ``y = 0.5``, ``∂y/∂x = (⅓, ⅓, ⅓)`` and ``∂y/∂α = 0``, the derivatives as ``x_3``
decreases or α increases; from the other side ``x_3`` is an outlier: ``(½, ½, 0)`` and ``½``.

Degenerate points (``H = Σφ'' = 0``), handled explicitly:

* Huber with no inlier: the minimizers form an interval exactly when n is even and the middle
  order statistics ``x_j = sort(x)[n/2 − 1]``, ``x_k = sort(x)[n/2]`` are more than 2α apart; we
  return its midpoint ``(x_j + x_k)/2``, whose derivative is ``½(e_j + e_k)`` (split over ties)
  and ``dy/dα = 0``;
* truncated quadratic with no inlier: the objective is flat, ``y`` stays at the mean, gradient
  ``1/n`` (cannot win over the median start, which always has an inlier);
* otherwise (pseudo-Huber underflow, Welsch at a flat point): zero gradient and a ``DDNWarning``.
  Welsch's degenerate minima (``H = 0`` at a minimum, e.g. ``x = (0, 2)``, α = 1: two points 2α
  apart) are found to ``y ± ε^⅓`` only, where ``H ≈ ε^⅔ Σw`` is rounding and gave gradients of
  ±1e5; as y is found to ``≈ εΣw/H``, which moves H by percents once ``H < 10√ε Σw``
  (``w = e^{−u²/2}``; 3.5e-3 in float32, 1.5e-7 in float64), such an H counts as ``H = 0``.

Bad input: empty pooled dim, NaN/Inf, non-positive α, α outside the dtype's normal range
(subnormal: ``1/α`` overflows and the kernel returned wrong results), ``|x|/α`` so large that
``(x/α)²`` overflows, or ``x`` so large that ``Σx`` or ``max x − min x`` overflow raise
``DDNError``. A pooled dim of size 1 returns ``y = x`` (gradient 1); all-equal
values return that value (gradient ``1/n``). Tiny or huge α (with x on its scale) are fine: the
Welsch and truncated-quadratic solvers and weights work in ``u = z/α`` and never form α².

On CPU a compiled kernel (``ddn.torch._kernels``) runs every iteration of a row while it sits in
cache; the eager torch implementation below is the fallback (CUDA, or no compiler) and the oracle.

Second derivatives: under ``create_graph=True`` the backward runs the eager formulas in torch ops,
so gradient penalties and hypergradients through the layer are exact (gradgradcheck-tested).
"""
import numbers
import operator
import warnings

import torch

from .. import DDNError, DDNWarning
from . import _kernels

__all__ = ["PENALTIES", "robust_pool", "RobustPool"]

PENALTIES = ("quadratic", "pseudo-huber", "huber", "welsch", "truncated-quadratic")
_MAX_ITER = 100
_HALF = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- penalties
def _phi(z, pen, a):
    """φ(z; α) elementwise."""
    if pen == "quadratic":
        return 0.5 * z * z
    if pen == "pseudo-huber":
        return a * a * (torch.sqrt(1 + (z / a) ** 2) - 1)
    if pen == "huber":
        return torch.where(z.abs() <= a, 0.5 * z * z, a * (z.abs() - 0.5 * a))
    if pen == "welsch":
        return 1 - torch.exp(-0.5 * (z / a) ** 2)
    return torch.minimum(0.5 * z * z, 0.5 * a * a)


def _d1d2(z, pen, a):
    """(φ'(z), φ''(z)) elementwise (a.e. for Huber and the truncated quadratic)."""
    if pen == "quadratic":
        return z, torch.ones_like(z)
    if pen == "pseudo-huber":
        s = torch.rsqrt(1 + (z / a) ** 2)
        return z * s, s * s * s
    if pen == "huber":
        inl = z.abs() <= a
        return torch.maximum(torch.minimum(z, a), -a), inl.to(z.dtype)
    if pen == "welsch":
        u2 = (z / a) ** 2
        w = torch.exp(-0.5 * u2) / (a * a)
        return z * w, (1 - u2) * w
    inl = z.abs() < a
    return torch.where(inl, z, 0), inl.to(z.dtype)


def _d2(z, pen, a):
    """φ''(z) elementwise."""
    if pen == "quadratic":
        return torch.ones_like(z)
    if pen == "pseudo-huber":
        return (1 + (z / a) ** 2) ** -1.5
    if pen == "huber":
        return (z.abs() <= a).to(z.dtype)
    if pen == "welsch":
        u2 = (z / a) ** 2
        return (1 - u2) * torch.exp(-0.5 * u2) / (a * a)
    return (z.abs() < a).to(z.dtype)


def _scaled_d2_dalpha(z, pen, a, need_alpha):
    """(c·φ''(z), c·∂_α φ'(z) or None) with c > 0 a per-row factor: c = α² for Welsch, whose φ''
    = (1 − u²)e^{−u²/2}/α² and ∂_α φ' = u e^{−u²/2}(u² − 2)/α² (u = z/α) would under/overflow
    through α² when α is tiny or huge (α < 1e-154 or > 1e154 in float64, 1e±19 in float32); c = 1
    otherwise. The backward only uses their ratios to H = Σφ'', which c cancels from."""
    if pen == "welsch":
        u = z / a
        u2 = u * u
        e = torch.exp(-0.5 * u2)
        return (1 - u2) * e, (u * e * (u2 - 2) if need_alpha else None)
    return _d2(z, pen, a), (_d1_dalpha(z, pen, a) if need_alpha else None)


def _scaled_objective(z, pen, a):
    """Σ-able φ(z)/c in units of φ's ceiling, free of α² (which under/overflows for tiny/huge α):
    Welsch 1 − e^{−u²/2}, truncated quadratic ½ min(u², 1), u = z/α."""
    if pen == "welsch":
        return _phi(z, pen, a)
    u = z * (1 / a)  # as the kernel
    return 0.5 * torch.minimum(u * u, torch.ones_like(u))


def _d1_dalpha(z, pen, a):
    """∂φ'(z; α)/∂α elementwise (zero for quadratic and, a.e., the truncated quadratic)."""
    if pen == "pseudo-huber":
        u = z / a
        return u ** 3 * (1 + u * u) ** -1.5
    if pen == "huber":
        return torch.where(z.abs() <= a, 0, torch.sign(z))
    if pen == "welsch":
        u2 = (z / a) ** 2
        return z * torch.exp(-0.5 * u2) * (u2 - 2) / a ** 3
    return torch.zeros_like(z)


# ----------------------------------------------------------------------------- eager solver
def _newton_bracket(x, y, pen, a, eps):
    """Safeguarded Newton for a monotone g on [min x, max x]; returns (y, converged)."""
    lo, hi = x.amin(-1), x.amax(-1)
    done = lo == hi
    a1 = a.squeeze(-1)
    for _ in range(_MAX_ITER):
        d1, d2 = _d1d2(y[:, None] - x, pen, a)
        g, H = d1.sum(-1), d2.sum(-1)
        lo = torch.where(g < 0, y, lo)
        hi = torch.where(g > 0, y, hi)
        yn = y - g / H
        tol = 2 * eps * (y.abs() + a1)
        # converged once the Newton step is below tol (that last step is still taken: it costs
        # no pass and brings g to rounding level), g = 0, or the bracket is below tol
        small = (H > 0) & ((yn - y).abs() <= tol) & (g != 0)
        conv = (g == 0) | small | (hi - lo <= tol)
        # Newton strictly inside the bracket (a step onto its end can 2-cycle on Huber's
        # piecewise-linear g), else bisection
        newton = (H > 0) & (yn > lo) & (yn < hi)
        ynew = torch.where(small, yn, torch.where(conv, y, torch.where(newton, yn, 0.5 * lo + 0.5 * hi)))
        done = done | conv
        y = torch.where(done, y, ynew)
        if bool(done.all()):
            return y, done
    return y, done


def _rows_of_alpha(a, x, b):
    """α as a (b, 1) tensor (one value per row) whatever its broadcastable form."""
    a = torch.as_tensor(a, dtype=x.dtype, device=x.device)
    return a.reshape(-1, 1).expand(b, 1) if a.numel() in (1, b) else a


def _welsch_local(x, y, a, eps):
    """Descent from y: Newton when it lowers f, else the MM step; returns (y, converged)."""
    # g and H are carried scaled by α and α² (g = Σuw, H = Σ(1 − u²)w, u = (y − x_i)/α): the
    # Newton step α g/H and the MM step α g/Σw then never form α², which under/overflows when α
    # is tiny or huge (the kernel does the same)
    n = x.shape[-1]
    a1 = a.squeeze(-1)

    def ev(y):
        u = (y[:, None] - x) / a
        u2 = u * u
        w = torch.exp(-0.5 * u2)
        s0 = w.sum(-1)
        return n - s0, (u * w).sum(-1), ((1 - u2) * w).sum(-1), s0, (u.abs() * w).sum(-1)

    f, g, H, s0, _ = ev(y)
    done = torch.zeros_like(y, dtype=torch.bool)
    ftol = 8 * eps * n
    for _ in range(5 * _MAX_ITER):  # a degenerate minimum (H → 0) converges only linearly
        ymm = torch.where(s0 > 0, y - a1 * g / s0.clamp_min(torch.finfo(y.dtype).tiny), y)
        yn = torch.where(H > 0, y - a1 * g / H, ymm)
        fn, gn, Hn, s0n, gan = ev(yn)
        rej = ~(fn <= f + ftol)
        if bool(rej.any()):
            fm, gm, Hm, s0m, gam = ev(ymm)
            yn, fn, gn, Hn, s0n, gan = (torch.where(rej, p, q) for p, q in
                                        ((ymm, yn), (fm, fn), (gm, gn), (Hm, Hn), (s0m, s0n),
                                         (gam, gan)))
        # the MM step descends but crawls on flat stretches: double it while f drops
        grow = (rej | ~(H > 0)) & ~done
        d, t = ymm - y, 2.0
        for _ in range(40):
            if not bool(grow.any()):
                break
            yt = y + t * d
            ft, gt, Ht, s0t, gat = ev(yt)
            grow = grow & (s0t > s0n)  # f = n − Σw: compare Σw, free of the constant's rounding
            yn, fn, gn, Hn, s0n, gan = (torch.where(grow, p, q) for p, q in
                                        ((yt, yn), (ft, fn), (gt, gn), (Ht, Hn), (s0t, s0n),
                                         (gat, gan)))
            t *= 2
        # a step at rounding level, or g at rounding level (ends a degenerate minimum)
        conv = ((yn - y).abs() <= 4 * eps * (y.abs() + a1)) | (s0 == 0) | \
            (gn.abs() <= 4 * eps * gan)
        keep = done
        y, f, g, H, s0 = (torch.where(keep, p, q) for p, q in
                          ((y, yn), (f, fn), (g, gn), (H, Hn), (s0, s0n)))
        # one last Newton correction when it is tiny (as the kernel: no new evaluation)
        st = torch.where(H > 0, a1 * g / H, 0)
        fix = conv & ~keep & (st.abs() <= 1000 * eps * (y.abs() + a1))
        y = torch.where(fix, y - st, y)
        done = done | conv
        if bool(done.all()):
            break
    return y, done


def _tq_local(x, y, a):
    """MM for the truncated quadratic: y ← mean of the inliers |y − x_i| < α, to its fixed point.

    Rows leave the iteration once they are at a fixed point with no point on a kink (MM leaves
    such a row unchanged, so dropping it changes nothing): most rows converge in 4–7 steps and a
    few take 10–15, so the eager code (the CUDA path) no longer drags every row through every
    step, nor through the kink test. Measured on an H200, full-scale PointNet training step with
    TQ pooling: 66.0 → 49.5 ms (max pooling 5.6 ms). (The same for Welsch gained nothing
    measurable, 29.6 vs 30.7 ms, and was not kept.)"""
    y = y.clone()
    done = torch.zeros_like(y, dtype=torch.bool)
    rows = torch.arange(y.shape[0], device=y.device)
    xa, ya, aa = x, y, _rows_of_alpha(a, x, y.shape[0])
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    for _ in range(4 * _MAX_ITER):
        z = ya[:, None] - xa
        az = z.abs()
        inl = az < aa  # masks stay bool: no float copy of them, no multiply (where instead)
        cnt, s = inl.sum(-1, dtype=x.dtype), torch.where(inl, xa, zero).sum(-1)
        yn = torch.where(cnt > 0, s / cnt.clamp_min(1), ya)
        fixed = yn == ya
        if bool(fixed.any()):
            # a fixed point with points exactly at |y − x_i| = α (quantized data) is no minimum:
            # the concave kink of min(z², α²) lets f drop toward them. Counting the kink points
            # on one side (the side with more, the left on a tie) as inliers is a valid majorizer
            # at y, whose minimizer lowers f strictly (as the kernel)
            kink = az == aa
            left, right = kink & (z > 0), kink & (z < 0)
            side = torch.where((left.sum(-1) >= right.sum(-1))[:, None], left, right)
            ck = cnt + side.sum(-1, dtype=x.dtype)
            yk = torch.where(ck > 0, (s + torch.where(side, xa, zero).sum(-1)) / ck.clamp_min(1), ya)
            yn = torch.where(fixed, yk, yn)
        d = yn == ya
        y[rows] = yn
        if bool(d.all()):
            done[rows] = True
            break
        if bool(d.any()):  # drop the rows that are done
            done[rows[d]] = True
            keep = ~d
            rows, xa, ya, aa = rows[keep], xa[keep], yn[keep], aa[keep]
        else:
            ya = yn
    return y, done


def _huber_gap(x, y, a):
    """Rows whose Huber minimizers form an interval of positive length: n even and the middle
    order statistics ``x_j``, ``x_k`` more than 2α apart (every point an outlier, g = α(#below −
    #above) = 0 on ``[x_j + α, x_k − α]``). Decided on order statistics, not on ``|y − x_i| ≤ α``
    at the root (Newton lands on the interval's end, where a boundary point counts as an inlier
    and hides the interval). ``x_j``, ``x_k`` are found as the neighbours of a minimizer ``y``
    (``x_j = max{x ≤ y}``, ``x_k = min{x > y}``; the middle order statistics iff
    ``#{x ≤ x_j} = n/2``): three passes, no sort. -> (flat (B,), x_j, x_k) or None."""
    n = x.shape[-1]
    if n % 2:
        return None
    inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
    yc = y[:, None]
    xj = torch.where(x <= yc, x, -inf).amax(-1)
    xk = torch.where(x > yc, x, inf).amin(-1)
    flat = (xk - xj > 2 * a.squeeze(-1)) & (2 * (x <= xj[:, None]).sum(-1) == n)
    return (flat, xj, xk) if bool(flat.any()) else None


def _solve_eager(x, pen, a):
    """x (B, n), a (B, 1) -> (y (B,), converged (B,) bool)."""
    eps = torch.finfo(x.dtype).eps
    mean = x.mean(-1)
    if pen == "quadratic":
        return mean, torch.ones_like(mean, dtype=torch.bool)
    if pen in ("pseudo-huber", "huber"):
        y, ok = _newton_bracket(x, mean, pen, a, eps)
        if pen == "huber":
            gap = _huber_gap(x, y, a)
            if gap is not None:  # the midpoint of the interval of minimizers
                flat, xj, xk = gap
                y = torch.where(flat, 0.5 * xj + 0.5 * xk, y)
        return y, ok
    median = x.median(-1).values  # the lower median
    if pen == "welsch":
        (y1, ok1), (y2, ok2) = _welsch_local(x, mean, a, eps), _welsch_local(x, median, a, eps)
    else:
        (y1, ok1), (y2, ok2) = _tq_local(x, mean, a), _tq_local(x, median, a)
    f1 = _scaled_objective(y1[:, None] - x, pen, a).sum(-1)  # f/α² for the truncated quadratic
    f2 = _scaled_objective(y2[:, None] - x, pen, a).sum(-1)
    tol = 8 * eps * x.shape[-1] * (1.0 if pen == "welsch" else 0.5)
    pick2 = (f2 < f1 - tol) | (((f2 - f1).abs() <= tol) & (y2 < y1))
    return torch.where(pick2, y2, y1), torch.where(pick2, ok2, ok1)


def _weights_eager(x, y, pen, a, need_alpha):
    """(w (B, n) = D_x y, dy/dα (B,) or None, number of bad rows)."""
    z = y[:, None] - x
    # Huber: a point within rounding of the kink |z| = α counts as an inlier (as the kernel's
    # huber_kink: Newton ends within ulps of a root on a kink, on either side)
    ad = a + 8 * torch.finfo(x.dtype).eps * (y.abs()[:, None] + a) if pen == "huber" else a
    d2, d1a = _scaled_d2_dalpha(z, pen, ad, need_alpha)  # both times the same c > 0 (α² for Welsch)
    H = d2.sum(-1, keepdim=True)  # c·H, H = D²_YY f
    pos = H > 0
    if pen == "welsch":  # a degenerate minimum: H below 10√ε·Σw is rounding (see _kernels.cpp)
        sw = torch.exp(-0.5 * (z / a) ** 2).sum(-1, keepdim=True)
        pos = H > 10 * torch.finfo(x.dtype).eps ** 0.5 * sw
    w = d2 / torch.where(pos, H, 1)  # Dy = −H⁻¹B, B_i = −φ''(y − x_i)
    da = None
    if need_alpha:
        da = torch.where(pos, -d1a.sum(-1, keepdim=True) / torch.where(pos, H, 1), 0).squeeze(-1)
    nbad = 0
    if pen == "huber":
        gap = _huber_gap(x, y, a)
        if gap is not None:  # y is the midpoint (x_j + x_k)/2: Dy = ½(e_j + e_k), split over ties
            flat, xj, xk = (t[:, None] for t in gap)
            wj = (x == xj).to(x.dtype)
            wk = (x == xk).to(x.dtype)
            wmid = 0.5 * wj / wj.sum(-1, keepdim=True) + 0.5 * wk / wk.sum(-1, keepdim=True)
            w = torch.where(flat, wmid, w)
            if need_alpha:
                da = torch.where(flat.squeeze(-1), 0, da)
            pos = pos | flat
    if not bool(pos.all()):
        bad = ~pos  # (B, 1)
        if pen == "truncated-quadratic":
            w = torch.where(bad, torch.full_like(w, 1.0 / x.shape[-1]), w)
        else:
            w = torch.where(bad, 0, w)
            nbad = int(bad.sum())
    return w, da, nbad


def _warn_bad(pen, nbad):
    if nbad:
        warnings.warn(f"robust_pool({pen!r}): H = Σφ'' ≤ 0 at the solution of {nbad} row(s)"
                      + (" (or a degenerate minimum, H ≈ 0: e.g. two points 2α apart)"
                         if pen == "welsch" else "")
                      + "; y is not differentiable there, their gradient is set to zero",
                      DDNWarning, stacklevel=4)


# ----------------------------------------------------------------------------- autograd
class _RobustPoolFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha, pen, use_kernel):
        # x (B, n) contiguous, alpha (B,) positive
        if use_kernel:  # H = Σφ''(y − x_i) at the returned y, from the solver's last pass
            y, ok, H = _kernels.pool_forward(x, alpha, pen)
        else:
            (y, ok), H = _solve_eager(x, pen, alpha[:, None]), None
        nfail = int((~ok).sum())
        if nfail:
            warnings.warn(f"robust_pool({pen!r}): the solver did not converge on {nfail} row(s) "
                          f"within its iteration limit (e.g. a degenerate minimum, H = Σφ'' ≈ 0); "
                          "returning the last iterate", DDNWarning, stacklevel=3)
        ctx.save_for_backward(x, y, alpha, H)
        ctx.pen, ctx.use_kernel = pen, use_kernel
        return y

    @staticmethod
    def backward(ctx, v):
        # Grad mode is on here only under create_graph=True: then the eager formulas run, in torch
        # ops on the saved x and on the saved output y, so autograd differentiates the backward
        # itself (double backward; y's own dependence on x goes through this backward again).
        x, y, alpha, H = ctx.saved_tensors
        need_alpha = ctx.needs_input_grad[1] and ctx.pen in ("pseudo-huber", "huber", "welsch")
        if ctx.use_kernel and not torch.is_grad_enabled():
            gx, ga, nbad = _kernels.pool_backward(x, y, alpha, H, v.contiguous(), ctx.pen,
                                                  need_alpha)
        else:
            w, da, nbad = _weights_eager(x, y, ctx.pen, alpha[:, None], need_alpha)
            gx = v[:, None] * w
            ga = v * da if need_alpha else None
        _warn_bad(ctx.pen, nbad)
        if ctx.needs_input_grad[1] and ga is None:
            ga = torch.zeros_like(alpha)
        return gx, ga, None, None


def _alpha_range(alpha, dtype):
    fi = torch.finfo(dtype)
    return (f"alpha = {alpha:g} is outside the normal range [{fi.tiny:g}, {fi.max:g}] of {dtype} "
            "(a subnormal alpha has lost its precision and 1/alpha overflows; a larger one is not "
            "representable); rescale x and alpha together, y(s·x; s·alpha) = s·y(x; alpha), or "
            "use float64")


def _check_alpha_float(alpha):
    if not (alpha == alpha and abs(alpha) != float("inf") and alpha > 0):
        raise DDNError(f"alpha must be a finite positive number, got {alpha}")


def robust_pool(x, penalty="pseudo-huber", alpha=1.0, dim=-1, keepdim=False):
    """Robust pooling ``y = argmin_u Σ_i φ(u − x_i; α)`` over ``dim`` (see the module docstring).

    Args:
        x: tensor of any shape, float32 or float64, CPU or CUDA; ``x.shape[dim] ≥ 1``. float16 and
            bfloat16 are solved in float32 and the result rounded back (gradients flow through).
        penalty: ``"quadratic"``, ``"pseudo-huber"``, ``"huber"``, ``"welsch"`` or
            ``"truncated-quadratic"``.
        alpha: α > 0, a float or a tensor broadcastable to the output shape (or to ``x`` with
            ``shape[dim] = 1``); a tensor that requires grad receives ``∂L/∂α``.
        dim: the pooled dimension.
        keepdim: keep ``dim`` with size 1.

    Returns:
        ``x.shape`` without ``dim`` (or with size 1 there when ``keepdim``).

    Paper: Gould et al., Deep Declarative Networks, §5.1 and Eq. 78.
    """
    if penalty not in PENALTIES:
        raise DDNError(f"unknown penalty {penalty!r}; choose one of {PENALTIES}")
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise DDNError("robust_pool expects a floating-point tensor x")
    if x.dim() == 0:
        raise DDNError("robust_pool needs at least one dimension to pool over")
    if x.dtype in _HALF:  # the solver's tolerances need float32 at least: upcast, round the result
        return robust_pool(x.float(), penalty, alpha, dim, keepdim).to(x.dtype)
    dim = _check_dim(dim, x)
    n = x.shape[dim]
    if n == 0:
        raise DDNError(f"cannot pool over an empty dimension (x.shape[{dim}] = 0)")
    pooled_shape = list(x.shape)
    pooled_shape[dim] = 1
    xt = x.movedim(dim, -1)
    batch_shape = xt.shape[:-1]
    x2 = xt.reshape(-1, n).contiguous()
    B = x2.shape[0]
    alpha = _as_number_or_tensor(alpha, "alpha")
    fi = torch.finfo(x.dtype)
    if torch.is_tensor(alpha):
        a = alpha.to(dtype=x.dtype, device=x.device)
        if not bool(torch.isfinite(alpha).all() & (alpha > 0).all()):
            raise DDNError("alpha must be finite and positive")
        if not bool(torch.isfinite(a).all() & (a >= fi.tiny).all()):  # fine before the cast
            big = not bool(torch.isfinite(a).all())
            raise DDNError(_alpha_range(float(alpha.detach().amax() if big else
                                              alpha.detach().amin()), x.dtype))
        a_rows = _rows_of(a, pooled_shape, dim, B, "alpha", keepdim)
        if not a_rows.requires_grad:
            a_rows = a_rows.contiguous()
    else:
        _check_alpha_float(float(alpha))
        if not fi.tiny <= float(alpha) <= fi.max:
            raise DDNError(_alpha_range(float(alpha), x.dtype))
        a_rows = torch.full((B,), float(alpha), dtype=x.dtype, device=x.device)
    if B == 0:  # empty batch: still in alpha's graph (a zero gradient), as torch layers are
        y = x2.sum(-1) + 0 * a_rows
    else:
        use_kernel = _kernels.usable(x2)
        if not use_kernel:  # the kernel checks its input itself while it reads it
            _check_values_eager(x2, a_rows.detach())
        y = _RobustPoolFn.apply(x2, a_rows if a_rows.requires_grad else a_rows.contiguous(),
                                penalty, use_kernel)
    y = y.reshape(batch_shape)
    return y.unsqueeze(dim) if keepdim else y


def _as_number_or_tensor(v, name):
    """A real number stays one; an array-like (numpy array, list) becomes a tensor (it failed in
    float() with an opaque TypeError); anything else is a DDNError."""
    if torch.is_tensor(v) or (isinstance(v, numbers.Real) and not isinstance(v, bool)):
        return v
    try:
        t = torch.as_tensor(v)
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise DDNError(f"{name} must be a positive number or a tensor / array of them, got "
                       f"{type(v).__name__}")
    return t


def _check_dim(dim, x):
    """``dim`` as an index in ``[0, x.dim())``; out of range (``dim % x.dim()`` silently picked
    another dim) or not an integer is a DDNError."""
    try:
        d = operator.index(dim)
    except TypeError:
        raise DDNError(f"dim must be an integer, got {dim!r}") from None
    if not -x.dim() <= d < x.dim():
        raise DDNError(f"dim {d} is out of range for x of shape {tuple(x.shape)} (expected "
                       f"{-x.dim()} <= dim < {x.dim()})")
    return d % x.dim()


def _rows_of(a, pooled_shape, dim, B, name, keepdim=False):
    """One value per pooled row (B,) from a tensor broadcastable to ``x`` without ``dim`` or to the
    keepdim shape (``x`` with ``shape[dim] = 1``). Where both fit with different meanings (e.g. a
    (C, 1) alpha for x of shape (C, C, n)), the output's own shape wins: the keepdim shape when
    ``keepdim`` (as ``y * alpha`` would broadcast), else ``x`` without ``dim``."""
    out_shape = pooled_shape[:dim] + pooled_shape[dim + 1:]

    def drop():
        return a.expand(out_shape).reshape(B)

    def keep():
        return a.expand(pooled_shape).movedim(dim, -1).reshape(B)

    for f in ((keep, drop) if keepdim else (drop, keep)):
        try:
            return f()
        except RuntimeError:
            pass
    raise DDNError(f"{name} of shape {tuple(a.shape)} broadcasts neither to the output shape "
                   f"{tuple(out_shape)} nor to {tuple(pooled_shape)}")


def _check_values_eager(x2, a):
    # one test for the rare cases: a non-finite Σx (NaN/Inf in x, or a sum that overflows) or
    # max|x| above half the dtype's largest value (then max x − min x may overflow)
    am = x2.abs().amax(-1)
    rare = ~torch.isfinite(x2.sum(-1)) | (am > torch.finfo(x2.dtype).max / 2)
    if bool(rare.any()):
        if not bool(torch.isfinite(x2).all()):
            raise DDNError("x contains NaN or Inf; robust pooling is undefined there — remove or "
                           "mask the non-finite values first")
        if not bool((torch.isfinite(x2.sum(-1)) & torch.isfinite(x2.amax(-1) - x2.amin(-1))).all()):
            raise DDNError(_kernels.HUGE_X)  # as the kernel: the mean or y − x_i would overflow
    big = torch.finfo(x2.dtype).max ** 0.5 / 8
    if bool((am / a > big).any()):
        raise DDNError("|x|/alpha is so large that (x/alpha)² overflows the dtype; rescale x or "
                       "raise alpha")


class RobustPool(torch.nn.Module):
    """Robust pooling layer ``y = argmin_u Σ_i φ(u − x_i; α)`` over ``dim``.

    Args:
        penalty: see ``PENALTIES``.
        alpha: α > 0 (float, or tensor broadcastable to the pooled shape).
        dim, keepdim: as in ``robust_pool``.
        learn_alpha: make α a learnable parameter, stored as ``log_alpha`` so it stays positive.
    """

    def __init__(self, penalty="pseudo-huber", alpha=1.0, dim=-1, keepdim=False, learn_alpha=False):
        super().__init__()
        if penalty not in PENALTIES:
            raise DDNError(f"unknown penalty {penalty!r}; choose one of {PENALTIES}")
        self.penalty, self.dim, self.keepdim = penalty, dim, keepdim
        # a floating tensor keeps its dtype (a float64 alpha was rounded to float32, which
        # .to(float64) cannot undo); numbers and integer tensors take the default dtype
        a = torch.as_tensor(alpha)
        if not a.is_floating_point():
            a = a.to(torch.get_default_dtype())
        if not bool(torch.isfinite(a).all() & (a > 0).all()):
            raise DDNError("alpha must be finite and positive")
        if learn_alpha:
            self.log_alpha = torch.nn.Parameter(a.log())
        else:
            self.register_buffer("_alpha", a)

    @property
    def alpha(self):
        return self.log_alpha.exp() if hasattr(self, "log_alpha") else self._alpha

    def forward(self, x):
        a = self.alpha
        if a.dim() == 0 and not a.requires_grad:
            a = float(a)
        return robust_pool(x, self.penalty, a, self.dim, self.keepdim)

    def extra_repr(self):
        return f"penalty={self.penalty!r}, dim={self.dim}, keepdim={self.keepdim}"
