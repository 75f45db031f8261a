r"""Lp-sphere, Lp-ball and simplex projections (paper §5.2), batched over every dim but ``dim``.

    sphere:  y ∈ argmin_u ½‖u − x‖²  s.t. ‖u‖_p = r        ball: ‖u‖_p ≤ r        p ∈ {1, 2, ∞}
    simplex: y ∈ argmin_u ½‖u − x‖²  s.t. u ≥ 0, Σu = r

Backward (Prop. 4.5 with ``H = I − λD²h``, ``B = −I``, ``C = D_r h = −1``; Table I), as VJPs, O(n):

* p = 2: ``∂L/∂x = (r/‖x‖)(v − ŷ ŷᵀv)`` with ``ŷ = y/r``; ``∂L/∂r = vᵀy/r``;
* p = 1: ``s = sign(y)``, ``S = supp y``: ``∂L/∂x = v − s sᵀv/|S|``, ``∂L/∂r = sᵀv/|S|``;
* p = ∞: ``T`` the coordinates on the face, ``s_T`` their signs: ``∂L/∂x = v − s_T s_Tᵀv/|T|``,
  ``∂L/∂r = s_Tᵀv/|T|``;
* ball with ``‖x‖_p ≤ r``: ``∂L/∂x = v``, ``∂L/∂r = 0`` (constraint inactive);
* simplex: ``∂L/∂x = 1_S ⊙ (v − 1_Sᵀv/|S|)``, ``∂L/∂r = 1_Sᵀv/|S|`` with ``S = {y_i > 0}``.

``masked=True`` (**default**) zeroes the rows/columns of coordinates pinned to a face (``y_i = 0``
for p = 1, ``|y_i| = r`` for p = ∞): p = 1 gives ``1_S ⊙ v − s sᵀv/|S|``, p = ∞ gives
``(1 − 1_T) ⊙ v`` and ``∂L/∂r = s_Tᵀv`` — the true derivative almost everywhere, equal to finite
differences. ``masked=False`` is the paper's Prop. 4.5 form, a Clarke descent direction that
differs from the derivative on pinned coordinates; it is kept for comparison with the paper.
(The masked form is the default because a gradient should predict how ``y`` moves.)

Forward: p = 2 closed form; p = 1 Duchi et al. (2008) sort-based threshold (the CPU kernel finds
the same threshold by Michelot's pivoting, expected O(n)); p = ∞ clamp.
Inside the ball the sphere pushes outward (p = 2 scales; p = 1 adds ``τ sign(x_i)``,
``τ = (r − ‖x‖₁)/n``; p = ∞ moves the first largest-magnitude coordinate ``x_k`` to the face;
``sign(0) = +1``). Where that nearest point is not unique (p = 1 with some ``x_i = 0``: ``−τ`` is
as near; p = ∞ with ties for the largest ``|x_i|``) ``y`` jumps, and the gradient is that of the
branch chosen (``s = sign(x)``, resp. ``k``, held fixed): p = 1: ``∂L/∂x = v − s sᵀv/n``,
``∂L/∂r = sᵀv/n``; p = ∞: ``∂L/∂x = v`` with ``v_k`` zeroed, ``∂L/∂r = sign(x_k) v_k`` (masked or
not alike). It is the one-sided derivative along every direction ``u`` that keeps the choice
(``u_i ≥ 0`` where ``x_i = 0``; no tied ``|x_j|`` overtaking ``|x_k|``). Such rows are common
(ReLU features) and do not warn; a row ``x = 0`` warns (one ``DDNWarning`` per call, with the
number of rows) for p = 1, 2 and ∞: every point of the L2 sphere is nearest there (we return
``r·1/√n`` with a zero x-gradient), for p = 1 every ``(±r/n, …)`` (we return ``(r/n)·1``, gradient
``v − mean(v)``), for p = ∞ every ``±r e_i`` (we return ``r e_1``, gradient ``v`` with ``v_1``
zeroed). NaN/Inf in ``x``, a non-positive radius or one that rounds to 0 or inf in the dtype, an
empty dim or an unknown p raise ``DDNError``; a subnormal radius is fine. Huge or tiny ``x``
are fine for p = 2 (the norm is rescaled when ``Σx²`` would overflow or underflow). For p = 1 and
the simplex the threshold is found on values shifted by their maximum, so ``|x| ≫ r`` keeps its
accuracy; as a safety net, rows whose result misses the radius by more than 1% raise a
``DDNWarning`` (rescale ``x`` or use float64).

Second derivatives: under ``create_graph=True`` the backward runs in differentiable torch ops
(double backward, gradgradcheck-tested); for p = 1, ∞ and the simplex the Jacobian is piecewise
constant, so their second derivative is zero away from the faces' boundaries.
"""
import warnings

import torch

from .. import DDNError, DDNWarning
from . import _kernels
from .pooling import _as_number_or_tensor, _check_dim, _rows_of

__all__ = ["project_sphere", "project_ball", "project_simplex", "SphereProjection",
           "BallProjection", "SimplexProjection"]

INF = float("inf")


_ZERO_ROW = {  # what project_sphere returns for a row x = 0 (module docstring)
    2: "r·1/√n with a zero gradient w.r.t. x",
    1: "(r/n)·1 (sign(0) = +1) with the gradient of that choice, v − 1·mean(v)",
    INF: "r·e_1 (the first coordinate on the face) with the gradient of that choice, v with "
         "v_1 zeroed",
}


def _sgn(x):
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def _l1_threshold_sort(a, r):
    """τ with Σ max(a_i − τ, 0) = r per row (a ≥ 0 (B, n), r (B,)), Duchi et al. (2008)."""
    u = a.sort(dim=-1, descending=True).values
    c = u.cumsum(-1) - r[:, None]
    k = torch.arange(1, a.shape[-1] + 1, dtype=a.dtype, device=a.device)
    rho = (u - c / k > 0).sum(-1, keepdim=True).clamp_min(1) - 1  # the condition holds on a prefix
    return (c.gather(-1, rho) / (rho + 1).to(a.dtype)).squeeze(-1)


def _forward_eager(x, r, p, kind):
    """x (B, n), r (B,) -> (y (B, n), aux (B,)): aux = ‖x‖₂ for p = 2, else 1 where the
    constraint is active (always for the sphere and the simplex) and 0 where y = x."""
    n = x.shape[-1]
    rc = r[:, None]
    if kind == "simplex":
        # τ on b = x − max x (translation-equivariant; keeps r even when |x| ≫ r)
        b = x - x.amax(-1, keepdim=True)
        tau = _l1_threshold_sort(b, r)  # the sort-based threshold works for signed values too
        return torch.clamp_min(b - tau[:, None], 0), torch.ones_like(r)
    if p == 2:
        nrm = torch.linalg.vector_norm(x, dim=-1)
        fi = torch.finfo(x.dtype)
        bad = ~torch.isfinite(nrm) | (nrm < (fi.tiny / fi.eps) ** 0.5)
        yb = None
        if bool(bad.any()):  # overflow or underflow of Σx²: rescale by max |x|
            m = x.abs().amax(-1, keepdim=True)
            xm = x / torch.where(m > 0, m, 1)
            sr = torch.linalg.vector_norm(xm, dim=-1)
            nrm = torch.where(bad, m.squeeze(-1) * sr, nrm)
            # y = (x/m)·(r/‖x/m‖), never forming r/‖x‖: ‖x‖ itself may overflow (x near the
            # dtype's largest value: x·(r/‖x‖) was 0) or be subnormal (r/‖x‖ = inf: y was inf)
            yb = xm * (r / torch.where(sr > 0, sr, 1))[:, None]
        if kind == "ball":
            scale = torch.where(nrm > r, r / nrm, 1)
            y = x * scale[:, None]
            if yb is not None:
                y = torch.where((bad & (nrm > r))[:, None], yb, y)
            return y, nrm
        y = x * (r / nrm)[:, None]
        if yb is not None:
            y = torch.where(bad[:, None], yb, y)
        zero = nrm == 0
        if bool(zero.any()):
            y = torch.where(zero[:, None], rc / n ** 0.5, y)
        return y, nrm
    if p == 1:
        a = x.abs()
        l1 = a.sum(-1)
        out = l1 > r
        b = a - a.amax(-1, keepdim=True)  # shifted as for the simplex
        tau = _l1_threshold_sort(b, torch.minimum(r, l1))
        y = torch.where(out[:, None], torch.sign(x) * torch.clamp_min(b - tau[:, None], 0), x)
        if kind == "sphere":
            y = torch.where(out[:, None], y, x + ((r - l1) / n)[:, None] * _sgn(x))
            return y, torch.ones_like(r)
        return y, out.to(x.dtype)
    m = x.abs().amax(-1)  # p = ∞
    y = torch.maximum(torch.minimum(x, rc), -rc)
    if kind == "ball":
        return y, (m > r).to(x.dtype)
    inside = m < r
    if bool(inside.any()):
        k = x.abs().argmax(-1, keepdim=True)
        xk = x.gather(-1, k)
        face = y.scatter(-1, k, rc * _sgn(xk))
        y = torch.where(inside[:, None], face, y)
    return y, torch.ones_like(r)


def _backward_eager(v, y, r, aux, p, kind, masked):
    """VJPs (∂L/∂x (B, n), ∂L/∂r (B,)) per the module docstring."""
    rc = r[:, None]
    if kind == "simplex":
        S = (y > 0).to(y.dtype)
        m = (S * v).sum(-1, keepdim=True) / S.sum(-1, keepdim=True).clamp_min(1)
        return S * (v - m), m.squeeze(-1)
    if p == 2:
        nrm = aux[:, None]
        act = (nrm > rc) if kind == "ball" else torch.ones_like(nrm, dtype=torch.bool)
        yh = y / rc  # ŷ = y/r
        yv = (yh * v).sum(-1, keepdim=True)
        gx = (rc / torch.where(nrm > 0, nrm, 1)) * (v - yh * yv)   # (r/‖x‖)(I − ŷŷᵀ)v
        gx = torch.where(nrm > 0, gx, 0)  # x = 0: no derivative (warned in forward)
        return torch.where(act, gx, v), torch.where(act, yv, 0).squeeze(-1)
    act = aux[:, None] > 0
    if p == 1:
        s = torch.sign(y)
        cnt = s.abs().sum(-1, keepdim=True).clamp_min(1)
        sv = (s * v).sum(-1, keepdim=True) / cnt
        gx = (v * s.abs() if masked else v) - s * sv
    else:
        T = (y.abs() >= rc).to(y.dtype)
        sT = T * _sgn(y)
        if masked:
            gx, sv = v * (1 - T), (sT * v).sum(-1, keepdim=True)
        else:
            sv = (sT * v).sum(-1, keepdim=True) / T.sum(-1, keepdim=True).clamp_min(1)
            gx = v - sT * sv
    return torch.where(act, gx, v), torch.where(act, sv, 0).squeeze(-1)


def _count_lost(y, r, aux, p, kind):
    """Rows whose thresholded result misses the radius by more than 1% (as the kernel checks)."""
    if kind == "simplex":
        s = y.sum(-1)
    elif p == 1:
        s = torch.where(aux > 0, y.abs().sum(-1), r)
    else:
        return 0
    return int(((s - r).abs() > 0.01 * r).sum())


class _ProjectFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, r, p, kind, masked, use_kernel):
        if use_kernel:
            y, aux, nlost, over, nzero = _kernels.proj_forward(x, r.contiguous(), p, kind)
            if bool(over.any()):  # finite x whose Σ overflowed in the kernel: the eager code
                ye, ae = _forward_eager(x[over], r[over], p, kind)  # works on shifted values
                y[over], aux[over] = ye, ae
                nlost += _count_lost(ye, r[over], ae, p, kind)
        else:
            y, aux = _forward_eager(x, r, p, kind)
            nlost = _count_lost(y, r, aux, p, kind)
            nzero = 0
            if kind == "sphere":
                nzero = int(((aux == 0) if p == 2 else ~x.any(-1)).sum())
        if nlost:
            what = "simplex" if kind == "simplex" else f"p={p} {kind}"
            warnings.warn(f"projection ({what}): {nlost} row(s) lost their accuracy to "
                          "cancellation (|x| is so much larger than the radius that the "
                          f"{x.dtype} threshold swamps it); rescale x first (e.g. divide by its "
                          "norm) or use float64", DDNWarning, stacklevel=3)
        if nzero:  # x = 0 on the sphere: every point of it (p = 2) or many (p = 1, ∞) are nearest
            warnings.warn(f"project_sphere(p={p}) of x = 0 in {nzero} row(s): the nearest point "
                          f"is not unique; returning {_ZERO_ROW[p]}", DDNWarning, stacklevel=3)
        ctx.save_for_backward(x, y, r, aux)
        ctx.cfg = (p, kind, masked, use_kernel)
        return y

    @staticmethod
    def backward(ctx, v):
        # Grad mode is on here only under create_graph=True: then the eager formulas run in torch
        # ops on the saved input and output, so autograd differentiates the backward itself
        # (double backward). For p = 2 the norm ‖x‖ is recomputed from x to keep it in the graph;
        # for p = 1, ∞ and the simplex the Jacobian is piecewise constant (zero second derivative).
        x, y, r, aux = ctx.saved_tensors
        p, kind, masked, use_kernel = ctx.cfg
        if use_kernel and not torch.is_grad_enabled():
            gx, gr = _kernels.proj_backward(v.contiguous(), y, r.contiguous(), aux, p, kind, masked)
        else:
            if torch.is_grad_enabled() and p == 2 and kind != "simplex":
                # ‖x‖ = m‖x/m‖ with m = max|x| held constant (exact for any m > 0): a plain
                # x.norm() over/underflows for huge/tiny x and zeroed the gradient
                m = x.detach().abs().amax(-1, keepdim=True)
                nrm = m.squeeze(-1) * torch.linalg.vector_norm(x / torch.where(m > 0, m, 1), dim=-1)
                aux = torch.where(aux > 0, nrm, aux)
            gx, gr = _backward_eager(v, y, r, aux, p, kind, masked)
        return gx, (gr if ctx.needs_input_grad[1] else None), None, None, None, None


def _radius_range(radius, dtype):
    fi = torch.finfo(dtype)
    return (f"radius = {radius:g} is not representable in {dtype}: it rounds to "
            f"{'inf' if radius > 1 else 0} (the largest is {fi.max:g}, the smallest positive "
            f"{fi.smallest_normal * fi.eps:g}); rescale x and the radius together (the "
            "projections are scale-equivariant: y(s·x; s·r) = s·y(x; r)) or use float64")


def _check_p(p):
    """p as the Python number 1, 2 or inf (a numpy scalar or a one-element tensor is accepted:
    a tensor p passed the membership test and then failed as a dict key, a bare KeyError)."""
    q = None
    if not isinstance(p, (bool, str)) and not (torch.is_tensor(p) and p.dtype == torch.bool):
        try:
            q = float(p)  # a number, numpy scalar or one-element tensor
        except (TypeError, ValueError, RuntimeError):
            pass
    if q not in (1.0, 2.0, INF):
        raise DDNError(f"p must be 1, 2 or float('inf'), got {p!r}")
    return INF if q == INF else int(q)


def _project(x, p, radius, dim, kind, masked):
    p = _check_p(p)
    if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() == 0:
        raise DDNError("projection expects a floating-point tensor x with at least one dim")
    if x.dtype in (torch.float16, torch.bfloat16):  # thresholds need float32: upcast, round back
        return _project(x.float(), p, radius, dim, kind, masked).to(x.dtype)
    dim = _check_dim(dim, x)
    n = x.shape[dim]
    if n == 0:
        raise DDNError(f"cannot project along an empty dimension (x.shape[{dim}] = 0)")
    red_shape = list(x.shape)
    red_shape[dim] = 1
    xt = x.movedim(dim, -1)
    out_shape = xt.shape
    x2 = xt.reshape(-1, n).contiguous()
    B = x2.shape[0]
    radius = _as_number_or_tensor(radius, "radius")
    fi = torch.finfo(x.dtype)
    if torch.is_tensor(radius):
        rr = radius.to(dtype=x.dtype, device=x.device)
        if not bool(torch.isfinite(radius).all() & (radius > 0).all()):
            raise DDNError("radius must be finite and positive")
        if not bool(torch.isfinite(rr).all() & (rr > 0).all()):  # fine before the cast
            big = not bool(torch.isfinite(rr).all())
            raise DDNError(_radius_range(float(radius.detach().amax() if big else
                                               radius.detach().amin()), x.dtype))
        # the shape with shape[dim] = 1 first: it is how r broadcasts against x and y (a (B, 1)
        # radius for x of shape (A, B, n) is per dim 1 even when A = B)
        r = _rows_of(rr, red_shape, dim, B, "radius", keepdim=True)
    else:
        radius = float(radius)
        if not (radius > 0 and radius != INF):
            raise DDNError(f"radius must be a finite positive number, got {radius}")
        if not (radius <= fi.max and float(torch.tensor(radius, dtype=x.dtype)) > 0):
            raise DDNError(_radius_range(radius, x.dtype))
        r = torch.full((B,), radius, dtype=x.dtype, device=x.device)
    use_kernel = _kernels.usable(x2)
    if not use_kernel and not bool(torch.isfinite(x2).all()):
        raise DDNError("x contains NaN or Inf; remove or mask the non-finite values first")
    if B:
        y = _ProjectFn.apply(x2, r, p, kind, masked, use_kernel)
    else:  # empty batch: still in radius's graph (a zero gradient), as torch layers are
        y = x2.clone() + 0 * r[:, None]
    return y.reshape(out_shape).movedim(-1, dim)


def project_sphere(x, p=2, radius=1.0, dim=-1, masked=True):
    """Nearest point on ``{‖u‖_p = radius}`` to each slice of ``x`` along ``dim``.

    Args:
        x: tensor, any shape, float32/float64, CPU or CUDA (float16/bfloat16 are computed in
            float32 and rounded back).
        p: 1, 2 or ``float("inf")``.
        radius: r > 0, float or tensor broadcastable to ``x`` with ``shape[dim] = 1`` (as it
            broadcasts against ``x``; tried first) or to ``x`` without ``dim`` (a tensor that
            requires grad receives ``∂L/∂r``).
        dim: the projected dimension.
        masked: gradient on non-smooth faces (module docstring); default True.

    Returns:
        tensor of ``x.shape``. Paper: §5.2, Table I.
    """
    return _project(x, p, radius, dim, "sphere", masked)


def project_ball(x, p=2, radius=1.0, dim=-1, masked=True):
    """Nearest point in ``{‖u‖_p ≤ radius}`` (Eq. 75): ``y = x`` inside, the sphere's outside.
    Arguments as ``project_sphere``."""
    return _project(x, p, radius, dim, "ball", masked)


def project_simplex(x, radius=1.0, dim=-1):
    """Nearest point in ``{u ≥ 0, Σu = radius}``: ``y = max(x − τ, 0)``. Arguments as
    ``project_sphere``."""
    return _project(x, 2, radius, dim, "simplex", True)


class _Projection(torch.nn.Module):
    def __init__(self, p=2, radius=1.0, dim=-1, masked=True, learn_radius=False):
        super().__init__()
        p = _check_p(p)
        self.p, self.dim, self.masked = p, dim, masked
        # a floating tensor keeps its dtype (a float64 radius was rounded to float32, which
        # .to(float64) cannot undo); numbers and integer tensors take the default dtype
        r = torch.as_tensor(radius)
        if not r.is_floating_point():
            r = r.to(torch.get_default_dtype())
        if not bool(torch.isfinite(r).all() & (r > 0).all()):
            raise DDNError("radius must be finite and positive")
        if learn_radius:
            self.log_radius = torch.nn.Parameter(r.log())
        else:
            self.register_buffer("_radius", r)

    @property
    def radius(self):
        return self.log_radius.exp() if hasattr(self, "log_radius") else self._radius

    def extra_repr(self):
        return f"p={self.p}, dim={self.dim}, masked={self.masked}"


class SphereProjection(_Projection):
    """Module form of ``project_sphere``; ``learn_radius`` makes r a parameter (as log r)."""

    def forward(self, x):
        return project_sphere(x, self.p, self.radius, self.dim, self.masked)


class BallProjection(_Projection):
    """Module form of ``project_ball``; ``learn_radius`` makes r a parameter (as log r)."""

    def forward(self, x):
        return project_ball(x, self.p, self.radius, self.dim, self.masked)


class SimplexProjection(_Projection):
    """Module form of ``project_simplex``."""

    def __init__(self, radius=1.0, dim=-1, learn_radius=False):
        super().__init__(2, radius, dim, True, learn_radius)

    def forward(self, x):
        return project_simplex(x, self.radius, self.dim)
