"""Generic batched declarative nodes and the layer that back-propagates through them.

A declarative node defines ``y(x) ∈ argmin_u f(x, u)`` subject to optional constraints; the user
writes the objective (and constraints, and optionally a ``solve``), the node supplies the gradient by
implicit differentiation (Gould et al., Deep Declarative Networks, Prop. 4.4–4.6):

    vᵀ Dy(x) = −wᵀ D_x F(x, z),   K w = [v; 0],   F = ∇_z ℒ,   K = ∇²_zz ℒ,

with ``z = y`` and ``ℒ = f`` (unconstrained, ``K = H = D²_YY f``) or ``z = (y, λ)`` and
``ℒ = f − λᵀh̃`` (``h̃``: equalities and active inequalities; ``K`` the KKT matrix). See
:func:`implicit_vjp`.

Contract (batched over dim 0; ``xs`` are one or more tensors ``(b, ...)``, ``y`` is ``(b, ...)``):

- ``objective(*xs, y) -> (b,)``, separable over the batch.
- ``solve(*xs) -> (y, ctx)``: ``ctx`` a dict, may carry ``"multipliers"`` ``(b, p + q)`` in the
  convention ``L = f − λᵀ[h; g]`` (so active inequalities have ``λ ≤ 0``), ``"active"`` ``(b, q)``
  bool and ``"converged"`` ``(b,)`` bool. A default solver is provided for every node class.
- ``equality_constraints(*xs, y) -> (b, p)`` or ``(b,)``: ``h = 0``.
- ``inequality_constraints(*xs, y) -> (b, q)`` or ``(b,)``: ``g ≤ 0``.
- ``linear_constraints() -> (A, b)``: ``A y = b``, ``A`` ``(p, m)`` or ``(batch, p, m)``.

Parameters θ of the objective are inputs like any other: pass them to the layer,
``layer(x, theta)``; an input that does not require grad gets None. A node that is also an
``nn.Module`` may instead hold θ as ``nn.Parameter``s: ``DeclarativeLayer`` back-propagates to them.
"""
import numbers
import warnings

import torch
from torch import nn

from ddn import DDNError
from ._implicit import implicit_vjp, report, default_tol, batched_jacobian, LINEAR_SOLVERS
from . import _linalg, _solvers

__all__ = ["DeclarativeNode", "EqConstrainedNode", "IneqConstrainedNode", "LinEqConstrainedNode",
           "DeclarativeLayer", "implicit_vjp"]

_ALL_SOLVERS = LINEAR_SOLVERS + ("unroll",)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _upcast(t):
    """float16/bfloat16 tensors (or a tuple of them) as float32: solved and differentiated there."""
    if isinstance(t, tuple):
        return tuple(_upcast(u) for u in t)
    return t.float() if torch.is_tensor(t) and t.dtype in _LOW_PRECISION else t


def _as_2d(c, b):
    if c is None:
        return None
    if c.dim() == 1:
        c = c.unsqueeze(-1)
    if c.dim() != 2 or c.shape[0] != b:
        raise DDNError(f"constraints must return shape (batch, k) or (batch,), got {tuple(c.shape)} "
                       f"for batch {b}")
    return c


# A near-dependency of the active constraints: a direction with σ_k < σ_max / _NEAR_KAPPA
_NEAR_KAPPA = 100.0
# constraint values along it below _NEAR_NOISE · eps · (1 + ‖y‖∞) are round-off (not evidence)
_NEAR_NOISE = 3.0


def _nearly_dependent(A, c, mask, y, tol_y):
    """Active constraints that are nearly (not exactly) dependent at ``y``, and a y this precision
    cannot pin down. ``A`` (b, P, m) their Jacobian, ``c`` (b, P) their values, ``mask`` (b, P) the
    active ones. With the rows scaled to unit norm, ``Â = U S Vᵀ``, the constraint values along a
    near-null direction, ``u_kᵀĉ``, call for a move of ``|u_kᵀĉ| σ_max / σ_k`` of y to satisfy them:
    the distance of y from the feasible point that the constraints define, which a residual test
    ``‖c‖ ≤ tol`` cannot see (h₂ = φ·h₁ + 10⁻⁴·ℓ in float32 was 'solved' by a y where ℓ ≠ 0, O(1)
    from the answer). Exactly dependent constraints (h₂ = φ·h₁) have ``u_kᵀĉ`` at round-off,
    which is not counted. Returns ``(flag (b,), move (b,), kappa (b,), cond (b,))``, no graph;
    ``cond`` is :func:`_unit_row_cond` of the active rows, from the same SVD."""
    with torch.no_grad():
        Ad = A.detach().double() * mask.unsqueeze(-1)
        rn = Ad.norm(dim=-1)
        act = mask & (rn > 0)
        rs = torch.where(act, rn, torch.ones_like(rn))
        An = Ad / rs.unsqueeze(-1)
        cn = torch.where(act, c.detach().double() / rs, torch.zeros_like(rs))
        U, S, _ = torch.linalg.svd(An, full_matrices=False)
        smax = S[:, :1]
        proj = (U * cn.unsqueeze(-1)).sum(-2).abs()  # |u_kᵀĉ|, (b, k)
        ysc = (1 + y.detach().double().abs().amax(-1)).unsqueeze(-1)
        eps = torch.finfo(y.dtype).eps
        Ss = torch.where(S > 0, S, torch.ones_like(S))
        move = torch.where(S > 0, proj * smax / Ss, torch.zeros_like(S))
        near = (S < smax / _NEAR_KAPPA) & (proj > _NEAR_NOISE * eps * ysc) & (move > tol_y * ysc)
        near = near & torch.isfinite(move)
        flag = near.any(-1) & torch.isfinite(y.detach()).all(-1)
        move = torch.where(near, move, torch.zeros_like(move)).amax(-1)
        kappa = torch.where(smax[:, 0] > 0, smax[:, 0] / torch.where(near, S, smax).amin(-1),
                            torch.ones_like(move))
    return flag, move, kappa, _cond_of_unit_rows(S, act.sum(-1))


def _cond_of_unit_rows(S, nonzero_rows):
    """σ_max / σ_k from the singular values ``S`` (b, ·) of a matrix with ``nonzero_rows`` (b,)
    nonzero unit rows (the zero rows' singular values left out); inf where σ_k = 0."""
    k = nonzero_rows.clamp_min(1)
    smin = S.gather(-1, (k.clamp_max(S.shape[-1]) - 1).unsqueeze(-1)).squeeze(-1)
    return torch.where(smin > 0, S[:, 0] / torch.where(smin > 0, smin, torch.ones_like(smin)),
                       torch.full_like(smin, float("inf")))


def _unit_row_cond(A):
    """cond of ``A`` (b, P, m) with its rows scaled to unit norm (zero rows left out), no graph."""
    with torch.no_grad():
        Ad = A.detach().double()
        rn = Ad.norm(dim=-1, keepdim=True)
        S = torch.linalg.svdvals(Ad / torch.where(rn > 0, rn, torch.ones_like(rn)))
        return _cond_of_unit_rows(S, (rn.squeeze(-1) > 0).sum(-1))


def _report_nearly_dependent(flag, move, kappa, on_degenerate):
    report(f"the active constraints are nearly dependent (their gradients almost parallel: "
           f"cond(A) ≈ {float(kappa[flag].max()):.1e}, A = D_Y [h; g] with unit rows) and y does "
           f"not satisfy them to the accuracy that this needs: the constraint values along the "
           f"near-dependency put y up to {float(move[flag].max()):.1e} from the point they define. "
           "y and its gradient are unreliable (singular='pinv'/'proximal' treat the constraints "
           "as exactly dependent and do not mend this)", flag,
           "Remedy: compute in float64 (torch.float64 inputs), or reformulate the constraints so "
           "that they are well separated, or drop the redundant one.", on_degenerate)


class DeclarativeNode:
    """Unconstrained declarative node ``y(x) ∈ argmin_u f(x, u)``; ``Dy = −H⁻¹B`` (Prop. 4.4), applied
    as ``vᵀDy = −wᵀB`` with ``Hw = v`` (``H = D²_YY f``, ``B = D²_XY f``; ``B`` is never formed).

    Subclass and implement ``objective(*xs, y) -> (b,)``; optionally ``solve(*xs) -> (y, ctx)`` and
    ``initial_guess(*xs)``. The default solver is batched Newton with a line search from
    ``initial_guess`` (zeros of shape ``(b, *output_shape)``).

    Args:
        output_shape: shape of one ``y`` (int or tuple); needed only by the default ``initial_guess``.
        linear_solver: ``"dense"`` (default: ``H`` from vmapped Hessian–vector products, batched
            Cholesky, LU fallback with residual check), ``"cg"`` (matrix-free conjugate gradients,
            MINRES for KKT systems), ``"minres"`` (MINRES always) or ``"unroll"``
            (``DeclarativeLayer`` differentiates through the solver's iterations instead; teaching
            and testing). A constrained node's point is checked to be a minimum (not a saddle
            or maximum) exactly by the dense solver (inertia of the KKT matrix); cg/minres only
            by a certificate, ``w_yᵀv < 0`` for the solution ``w`` of ``K w = [v; 0]``, which
            misses a saddle whose negative direction the incoming gradient ``v`` does not see.
        tol, max_iter: of the iterative linear solvers.
        singular: ``None`` (report singular ``H``), ``"pinv"`` or ``"proximal"`` (opt-in remedies).
        proximal_delta: δ of ``H + δI`` for ``singular="proximal"``. A constrained node then
            solves the regularised KKT matrix ``[[H + δI, −Aᵀ], [−A, −δI]]`` with least-norm
            multipliers: nonsingular also where the active constraints are rank-deficient (the
            primal block alone cannot mend a dependent ``A``), an O(δ) bias as for ``H + δI``.
            None (default): relative to the problem's scale, ``δ = r‖H‖`` (``r‖A‖²/‖H‖`` on the
            multiplier block), ``r = max(1e-6, 0.3√eps)``: 1e-6 in float64, 1e-4 in float32 (an
            absolute 1e-6 left cond(H + δI) ~ 10⁶ there, above float32's singular threshold, and
            was lost next to ‖H‖ = 10³: NaN gradient). A number is that absolute δ.
        on_degenerate: ``"warn"`` (DDNWarning) or ``"error"`` (DDNError).
        residual_tol: the gradient is reported where the optimality residual ‖∇ℒ‖ exceeds
            ``residual_tol · s`` (1e-6 / 1e-3 by dtype), ``s = ‖K (1 + |z|)‖_∞`` the size of
            the gradient's terms (``K = ∇²ℒ``, ``z = y`` or ``(y, λ)``): scale-aware, so the
            objective multiplied by 10⁴ gives the same verdict. A constrained node's stationarity
            block ``∇f − Aᵀλ`` is also judged on its own scale (``max(‖H(1 + |y|)‖, ‖Aᵀλ‖)``),
            so an objective multiplied by 10⁻⁴ does too.
        active_tol: an inequality is active when ``g > −active_tol`` (1e-6 / 1e-3 by dtype); also the
            tolerance of the multiplier sign and weak-activity checks (relative to ‖∇_Y f‖).
        solver_tol, solver_max_iter: of the default forward solver (converged when
            ‖∇ℒ‖ ≤ solver_tol · s, the same scale s; 1e-10 / 1e-5 by dtype).
    """

    floor = "torch"
    constrained = False

    def __init__(self, output_shape=None, *, linear_solver="dense", tol=None, max_iter=None,
                 singular=None, proximal_delta=None, on_degenerate="warn", residual_tol=None,
                 active_tol=None, solver_tol=None, solver_max_iter=100):
        if linear_solver not in _ALL_SOLVERS:
            raise DDNError(f"linear_solver={linear_solver!r}: choose one of {_ALL_SOLVERS}")
        if singular not in (None, "pinv", "proximal"):
            raise DDNError(f"singular={singular!r}: choose None, 'pinv' or 'proximal'")
        if on_degenerate not in ("warn", "error"):
            raise DDNError(f"on_degenerate={on_degenerate!r}: choose 'warn' or 'error'")
        if isinstance(output_shape, numbers.Integral):  # an int, numpy integer, 0-d tensor
            output_shape = (output_shape,)
        self.output_shape = None if output_shape is None else tuple(int(d) for d in output_shape)
        self.linear_solver = linear_solver
        self.tol, self.max_iter = tol, max_iter
        self.singular, self.proximal_delta = singular, proximal_delta
        self.on_degenerate = on_degenerate
        self.residual_tol, self.active_tol = residual_tol, active_tol
        self.solver_tol, self.solver_max_iter = solver_tol, solver_max_iter

    # ---- the problem (user) -------------------------------------------------------------------
    def objective(self, *xs_and_y):
        """``f(*xs, y) -> (b,)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement objective(*xs, y)")

    def equality_constraints(self, *xs_and_y):
        return None

    def inequality_constraints(self, *xs_and_y):
        return None

    def initial_guess(self, *xs):
        """Starting point of the default solver: zeros ``(b, *output_shape)``."""
        if self.output_shape is None:
            raise DDNError(f"{type(self).__name__}: the default solver needs output_shape=... in the "
                           "constructor, or an initial_guess(*xs) method, or your own solve(*xs)")
        x0 = next((x for x in xs if x.is_floating_point()), xs[0])  # dtype of the first float input
        return torch.zeros(x0.shape[0], *self.output_shape, dtype=x0.dtype, device=x0.device)

    def solve(self, *xs):
        """Default: batched Newton with a backtracking line search (Levenberg shift where ``H`` is
        not positive definite). Finds a local minimum near ``initial_guess``."""
        y0 = self.initial_guess(*xs)
        b, shape = y0.shape[0], y0.shape[1:]
        diff = self._differentiable(xs)
        y, info = _solvers.newton(lambda yf: self._f(xs, yf.reshape(b, *shape)),
                                  y0.reshape(b, -1), tol=self._solver_tol(y0),
                                  max_iter=self.solver_max_iter, differentiable=diff)
        return y.reshape(b, *shape), {"converged": info["converged"], "grad_norm": info["grad_norm"]}

    # ---- public gradient helpers --------------------------------------------------------------
    def __call__(self, *xs):
        """``y`` with the implicit backward (same as ``DeclarativeLayer(self)(*xs)``)."""
        return DeclarativeLayer(self)(*xs)

    def vjp(self, *xs, v, y=None, ctx=None, linear_solver=None):
        """``vᵀ Dy(x)`` for every input (a tuple, one ``(b, ...)`` tensor per floating input).
        float16/bfloat16 are computed in float32 (as by the layer) and cast back."""
        low = [x.dtype if x.dtype in _LOW_PRECISION else None for x in xs]
        if any(low):
            xs, y, v = _upcast(xs), _upcast(y), _upcast(v)
            grads = self.vjp(*xs, v=v, y=y, ctx=ctx, linear_solver=linear_solver)
            return tuple(gr if gr is None or d is None else gr.to(d) for gr, d in zip(grads, low))
        if y is None:
            y, ctx = self._solve_detached(xs)
        if not torch.is_tensor(v) or v.shape[0] != y.shape[0] or v[0].numel() != y[0].numel():
            raise DDNError(f"vjp: v must have y's shape {tuple(y.shape)} (one incoming gradient per "
                           f"entry of y), got {tuple(getattr(v, 'shape', ()))}")
        xs_r = tuple(x.detach().requires_grad_(x.is_floating_point()) for x in xs)
        grads, _ = self._backward(xs_r, y, ctx, v, linear_solver=linear_solver)
        return grads

    def jacobian(self, *xs, y=None, ctx=None):
        """``Dy(x)`` per input as ``(b, m, n_i)`` (flattened y and x_i), from m VJPs. For tests and
        small problems; back-propagation never builds it. A single input gives a tensor; an input
        that is not floating point gives None. Each distinct warning of the m VJPs (a degenerate
        point is found by every one of them) is emitted once per call."""
        low = [x.dtype for x in xs if x.dtype in _LOW_PRECISION]
        if low:  # float16/bfloat16: in float32 (no half Cholesky/LU), cast back
            out = self.jacobian(*_upcast(xs), y=_upcast(y), ctx=ctx)
            return (out.to(low[0]) if torch.is_tensor(out) else
                    tuple(None if t is None else t.to(low[0]) for t in out))
        if y is None:
            y, ctx = self._solve_detached(xs)
        b = y.shape[0]
        m = y[0].numel()
        rows = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for j in range(m):
                v = torch.zeros(b, m, dtype=y.dtype, device=y.device)
                v[:, j] = 1
                rows.append(self.vjp(*xs, v=v.reshape(y.shape), y=y, ctx=ctx, linear_solver="dense"))
        seen = set()
        for w in caught:  # re-emitted outside the catch: the caller's filters apply, once each
            key = (w.category, str(w.message))
            if key not in seen:
                seen.add(key)
                warnings.warn(w.message, stacklevel=2)
        # an input that is not floating point (an index, a count) has no Jacobian: None
        out = tuple(None if rows[0][i] is None else torch.stack([r[i].reshape(b, -1) for r in rows], 1)
                    for i in range(len(xs)))
        return out[0] if len(out) == 1 else out

    def diagnose(self, *xs, y=None, ctx=None):
        """Per-element findings at the solution: ``residual`` ‖∇ℒ‖, ``cond_H`` (of ``H`` reduced to the
        tangent space of the active constraints), ``active_rank`` and ``n_active`` (rank and rows of
        the equality + active inequality Jacobian), ``weakly_active``
        (list of (element, constraint) pairs), ``multipliers``, ``residual_scale`` (s, which
        ``residual_tol`` multiplies); constrained nodes also ``residual_primal`` ‖∇_y ℒ‖ and its
        scale ``residual_primal_scale`` (else None). Warnings are raised as usual. float16/bfloat16 inputs are
        examined in float32."""
        xs, y = _upcast(xs), _upcast(y)
        if y is None:
            y, ctx = self._solve_detached(xs)
        xs_d = tuple(x.detach() for x in xs)
        b = y.shape[0]
        v = torch.zeros(b, y[0].numel(), dtype=y.dtype, device=y.device)
        _, info = self._backward(xs_d, y, ctx, v, linear_solver="dense")
        m = v.shape[1]
        K = info["K"]
        H = K[:, :m, :m]
        cond, rank, n_act = [], [], []
        for e in range(b):
            Z = None
            if "A" in info:
                Ae = info["A"][e][info["mask"][e]]
                r = int(torch.linalg.matrix_rank(Ae)) if Ae.shape[0] else 0
                rank.append(r)
                n_act.append(int(info["mask"][e].sum()))
                if Ae.shape[0]:
                    _, S, Vh = torch.linalg.svd(Ae, full_matrices=True)
                    Z = Vh[r:].T
            He = H[e] if Z is None else Z.T @ H[e] @ Z
            if He.numel() == 0 or not torch.isfinite(He).all():
                cond.append(float("nan") if He.numel() else 1.0)
                continue
            ev = torch.linalg.eigvalsh(0.5 * (He + He.T)).abs()
            cond.append(float(ev.max() / ev.min()) if ev.min() > 0 else float("inf"))
        return {"residual": info["residual"], "residual_scale": info["residual_scale"],
                "residual_primal": info.get("residual_primal"),
                "residual_primal_scale": info.get("residual_primal_scale"),
                "cond_H": torch.tensor(cond, dtype=torch.float64),
                "active_rank": rank or None, "n_active": n_act or None,
                "weakly_active": info.get("weakly_active", []), "multipliers": info.get("lam"),
                "y": y, "ctx": ctx}

    # ---- internals ------------------------------------------------------------------------------
    def _solver_tol(self, y):
        return self.solver_tol if self.solver_tol is not None else default_tol(y.dtype, 1e-10, 1e-5)

    def _active_tol(self, y):
        return self.active_tol if self.active_tol is not None else default_tol(y.dtype, 1e-6, 1e-3)

    def _differentiable(self, xs):
        """Whether the solve must keep its graph (unroll): an input or, for a node that is an
        ``nn.Module``, one of its parameters requires grad."""
        return torch.is_grad_enabled() and (any(torch.is_tensor(x) and x.requires_grad for x in xs)
                                            or any(q.requires_grad for q in self._own_params()))

    def _own_params(self):
        return tuple(self.parameters()) if isinstance(self, nn.Module) else ()

    def _constraints(self, xs, y):
        b = y.shape[0]
        h, g = (_as_2d(self.equality_constraints(*xs, y), b),
                _as_2d(self.inequality_constraints(*xs, y), b))
        if self.constrained and h is None and g is None:
            self._no_constraints()
        return h, g

    def _no_constraints(self):
        raise DDNError(f"{type(self).__name__} is a constrained node but its constraints returned "
                       "None (no constraints): derive from DeclarativeNode for an unconstrained "
                       "problem, or return the constraints")

    def _f(self, xs, y):
        """``objective(*xs, y)``, checked to be ``(b,)`` (the default solvers need it per element)."""
        f = self.objective(*xs, y)
        if not torch.is_tensor(f) or f.shape != (y.shape[0],):
            raise DDNError(f"{type(self).__name__}.objective must return shape (batch,) = "
                           f"({y.shape[0]},), one value per batch element, got "
                           f"{tuple(getattr(f, 'shape', ()))}; e.g. sum over the non-batch dims")
        return f

    def _solve_detached(self, xs):
        """The forward solve for vjp/jacobian/diagnose: no graph through the solver (an input that
        requires grad must not make the default solvers unroll, or refuse to)."""
        with torch.no_grad():
            y, ctx = self._solve_checked(xs)
        return y.detach(), ctx

    def _solve_checked(self, xs):
        if not xs:
            raise DDNError("a declarative node needs at least one input tensor")
        for x in xs:
            if not torch.is_tensor(x):
                raise DDNError(f"inputs must be tensors batched over dim 0, got {type(x).__name__}")
        b = xs[0].shape[0] if xs[0].dim() else None
        if b is None or any(x.dim() == 0 or x.shape[0] != b for x in xs):
            raise DDNError(f"inputs must share the batch size on dim 0, got shapes "
                           f"{[tuple(x.shape) for x in xs]}")
        if b == 0:
            raise DDNError(f"{type(self).__name__}: empty batch (inputs of shapes "
                           f"{[tuple(x.shape) for x in xs]}); skip the layer for an empty batch")
        if not any(x.is_floating_point() for x in xs):
            raise DDNError(f"{type(self).__name__}: no floating-point input (dtypes "
                           f"{[str(x.dtype) for x in xs]}); y and its gradient need a float dtype. "
                           "Remedy: cast the input, e.g. x.double() or x.float()")
        bad = torch.zeros(b, dtype=torch.bool, device=xs[0].device)
        for x in xs:
            if x.is_floating_point():
                bad |= ~torch.isfinite(x.detach().reshape(b, -1)).all(1)
        if bad.any():
            report("non-finite input (NaN or Inf)", bad, "Their outputs and gradients will be "
                   "NaN. Remedy: clean or mask the input before the layer.", self.on_degenerate)
        out = self.solve(*xs)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise DDNError(f"{type(self).__name__}.solve must return (y, ctx), got {type(out).__name__}")
        y, ctx = out
        ctx = {} if ctx is None else dict(ctx)
        if not torch.is_tensor(y) or not y.is_floating_point() or y.dim() == 0 or y.shape[0] != b:
            raise DDNError(f"solve must return a floating tensor y of shape (batch={b}, ...), got "
                           f"{getattr(y, 'shape', type(y).__name__)}")
        x0 = next(x for x in xs if x.is_floating_point())
        if y.device != x0.device:
            raise DDNError(f"{type(self).__name__}.solve returned y on {y.device} for inputs on "
                           f"{x0.device}: return y on the inputs' device")
        dts = sorted({str(x.dtype) for x in xs if x.is_floating_point()})
        if str(y.dtype) not in dts:
            raise DDNError(f"{type(self).__name__}.solve returned y of dtype {y.dtype} for inputs of "
                           f"dtype {', '.join(dts)}: return y in the inputs' dtype (a float32 y "
                           "for float64 inputs would make the gradient float32-accurate silently)")
        if self.output_shape is not None and tuple(y.shape[1:]) != self.output_shape:
            raise DDNError(f"{type(self).__name__}.solve returned y of shape {tuple(y.shape)}, but "
                           f"output_shape={self.output_shape} says ({b}, {', '.join(map(str, self.output_shape))})")
        # a NaN/Inf y from finite inputs would pass silently: the implicit gradient need not be NaN
        nonfinite = ~torch.isfinite(y.detach().reshape(b, -1)).all(1) & ~bad.to(y.device)
        if nonfinite.any():
            report("the solver returned a non-finite y (NaN or Inf) for finite inputs", nonfinite,
                   "Its gradient is meaningless. Remedy: check the solve (or the objective's domain "
                   "at initial_guess), or give a better initial_guess.", self.on_degenerate)
        conv = ctx.get("converged")
        if conv is not None:
            conv = torch.as_tensor(conv, device=y.device).reshape(-1)
            if conv.numel() not in (1, b):
                raise DDNError(f"ctx['converged'] must be (batch,) = ({b},) bool, got shape "
                               f"{tuple(conv.shape)}")
            conv = conv.bool()
            nc = ~conv & ~bad
            if nc.any():
                hint = (" The constraints may also have no common feasible point for these "
                        "inputs: check them." if self.constrained else "")
                report("the forward solver did not converge", nc, "Remedy: raise solver_max_iter "
                       "or solver_tol, give a better initial_guess, or write your own solve." + hint,
                       self.on_degenerate)
        return y, ctx

    def _multipliers(self, xs, yf, shape, ctx, create_graph):
        """Active set, multipliers λ (b, p + q) with ``λᵀA = D_Y f`` and the checks on them."""
        b, m = yf.shape
        eps_scale = self._active_tol(yf)
        with torch.enable_grad():
            y_ = yf if (create_graph and yf.requires_grad) else yf.detach().requires_grad_(True)
            y_s = y_.reshape(b, *shape)
            fval = self.objective(*xs, y_s)
            (gf,) = torch.autograd.grad(fval.sum(), y_, create_graph=create_graph)  # D_Y f
            h, g = self._constraints(xs, y_s)
            p = 0 if h is None else h.shape[1]
            q = 0 if g is None else g.shape[1]
            c = torch.cat([t for t in (h, g) if t is not None], 1)
            P = p + q
            A = batched_jacobian(c, y_, create_graph=create_graph)  # A = D_Y [h; g], (b, P, m)
        ones = torch.ones(b, p, dtype=torch.bool, device=yf.device)
        if q:
            if ctx.get("active") is not None:
                act = torch.as_tensor(ctx["active"], device=yf.device)
                if act.numel() != b * q:
                    raise DDNError(f"ctx['active'] must be (batch, q) = ({b}, {q}) bool (one flag per "
                                   f"inequality constraint), got shape {tuple(act.shape)}")
                act = act.reshape(b, q).bool()
            else:
                act = g.detach() > -eps_scale
        else:
            act = torch.zeros(b, 0, dtype=torch.bool, device=yf.device)
        mask = torch.cat([ones, act], 1)
        maskf = mask.to(yf.dtype)
        Am = A * maskf.unsqueeze(-1)
        # Gram matrix of the active constraint gradients, identity rows for inactive ones
        M = Am @ Am.transpose(1, 2) + torch.diag_embed(1 - maskf)
        rhs = (Am @ gf.unsqueeze(-1)).squeeze(-1)
        # least-norm multipliers under both remedies: a plain solve of the singular Gram matrix
        # returns multipliers of size 1/eps along the dependency, which swamp D²_YY L
        sing = "pinv" if self.singular in ("pinv", "proximal") else None
        lam_ls, minfo = _linalg.solve_dense(M, rhs, singular=sing)
        finite = torch.isfinite(yf.detach()).all(1)
        rank_def = minfo["singular"] & finite
        # nearly (not exactly) dependent constraints that y does not satisfy to the accuracy they
        # need: reported whatever `singular` says (pinv/proximal would treat them as dependent)
        tol_y = self.residual_tol if self.residual_tol is not None else default_tol(yf.dtype, 1e-6, 1e-3)
        near, move, kappa, kap = _nearly_dependent(A, c, mask, yf, tol_y)
        done = ctx.get("_near_dependent_reported")  # by the default solver, in the forward
        todo = near if done is None else near & ~torch.as_tensor(done, device=near.device)
        if todo.any():
            _report_nearly_dependent(todo, move, kappa, self.on_degenerate)
        rank_def_named = rank_def & ~near
        # Regular but ill-conditioned: the multipliers (and D²_YY L = D²f − Σλ_i D²c_i with them)
        # lose about cond(Â)² · eps relative (Â: the active rows at unit norm); in float32 two
        # constraints 0.1° apart (cond ~ 10³) gave a gradient 1% wrong at the exact y, silently
        # (above loss 10³, cond(Â) ~ 10⁵ in float32 and 10⁹ in float64, the rows count as
        # dependent to working precision: exactly dependent ones computed with their own round-off
        # show 10⁶ and 10¹² there; the rank-deficient case, where the user's `singular` applies)
        loss = kap * kap * _linalg.eps_of(yf.dtype)
        illc = (loss > 1e-2) & (loss <= 1e3) & ~rank_def & ~near & finite
        if illc.any():
            report(f"the gradients of the active constraints are nearly parallel (cond(A) ≈ "
                   f"{float(kap[illc].max()):.1e} with unit rows): the multipliers and the gradient "
                   f"lose about cond(A)²·eps ≈ {float((kap[illc] ** 2).max()) * _linalg.eps_of(yf.dtype):.0e} "
                   "relative accuracy in this dtype", illc,
                   "Remedy: compute in float64 (torch.float64 inputs), or reformulate the "
                   "constraints so that they are well separated.", self.on_degenerate)
        if rank_def_named.any() and sing is None:  # with singular="pinv"/"proximal" the remedy was chosen
            report("the gradients of the equality and active inequality constraints are linearly "
                   "dependent (rank-deficient, or too nearly dependent for this precision to tell; "
                   "not a regular point, Def. 4.3); the gradient is unreliable", rank_def_named,
                   "Remedy: remove redundant constraints, or opt in to singular='pinv' (least-norm "
                   "multipliers and a pseudo-inverse of the KKT matrix) or singular='proximal' "
                   "(regularised KKT matrix, O(proximal_delta) bias). If they are distinct "
                   "constraints whose gradients are only nearly parallel, compute in float64 "
                   "instead: pinv/proximal would drop one of them.", self.on_degenerate)
        given = ctx.get("multipliers")
        if given is not None and not create_graph:
            lam = torch.as_tensor(given, dtype=yf.dtype, device=yf.device)
            if lam.numel() != b * P:
                raise DDNError(f"ctx['multipliers'] must be (batch, p + q) = ({b}, {P}) (p = {p} "
                               f"equality, q = {q} inequality constraints, in that order), got shape "
                               f"{tuple(lam.shape)}")
            lam = lam.reshape(b, P) * maskf
            # NaN/Inf multipliers from a finite y would make the gradient NaN without a word
            badlam = ~torch.isfinite(lam.detach()).all(1) & finite
            if badlam.any():
                report("ctx['multipliers'] is not finite (NaN or Inf); the least-squares multipliers "
                       "(Eq. 32) are used instead", badlam,
                       "Remedy: check the multipliers your solve returns.", self.on_degenerate)
                lam = torch.where(badlam.unsqueeze(-1), lam_ls * maskf, lam)
        else:
            lam = lam_ls * maskf
        # relative to ‖∇_Y f‖ (the size of λᵀA), no floor at 1: an objective scaled by 10⁻⁴ has
        # multipliers of 10⁻⁴ that are not weakly active
        scale = eps_scale * gf.detach().norm(dim=-1).clamp_min(torch.finfo(yf.dtype).tiny ** 0.5)
        weak = []
        if q:
            li = lam.detach()[:, p:]
            wrong = act & (li > scale.unsqueeze(-1))
            if wrong.any():
                report("an active inequality constraint has a multiplier of the wrong sign (λ > 0 "
                       "with L = f − λᵀg, g ≤ 0): y is not a constrained minimum, or the constraint "
                       "should be inactive", wrong.any(1), "Remedy: check the solver and the sign "
                       "convention of ctx['multipliers'] (L = f − λᵀ[h; g]).", self.on_degenerate)
            wk = act & (li.abs() <= scale.unsqueeze(-1)) & finite.unsqueeze(-1)
            if wk.any():
                weak = [tuple(t) for t in wk.nonzero().tolist()]
                report(f"weakly active inequality constraints (g = 0 and λ = 0; (element, "
                       f"constraint) = {weak}): y is not differentiable there and the gradient is "
                       "one-sided (the constraint is treated as active)", wk.any(1),
                       "Remedy: none needed if a one-sided gradient is acceptable (as ReLU at 0); "
                       "otherwise perturb the input.", self.on_degenerate)
        # elements already named (not under a chosen remedy, which must not hide other findings)
        reported = (rank_def if sing is None else torch.zeros_like(rank_def)) | near
        return lam, mask, {"A": A.detach(), "mask": mask, "p": p, "q": q, "weakly_active": weak,
                           "rank_deficient": rank_def, "rank_deficient_reported": reported}

    def _backward(self, xs, y, ctx, v, create_graph=False, linear_solver=None, params=()):
        """The implicit gradient: tuple of per-input gradients and the diagnostics dict."""
        ctx = ctx or {}
        ls = linear_solver or self.linear_solver
        if ls == "unroll":
            ls = "dense"
        b, shape = y.shape[0], y.shape[1:]
        yf = y.reshape(b, -1)
        if not create_graph:
            xs = tuple(x.detach().requires_grad_(x.requires_grad) for x in xs)
            yf = yf.detach()
        vf = v.reshape(b, -1).to(y.dtype)
        opts = dict(linear_solver=ls, tol=self.tol, max_iter=self.max_iter, singular=self.singular,
                    proximal_delta=self.proximal_delta, on_degenerate=self.on_degenerate,
                    residual_tol=self.residual_tol, create_graph=create_graph, params=params)
        if not self.constrained:
            def f(*a):
                return self.objective(*a[:-1], a[-1].reshape(b, *shape))
            return implicit_vjp(f, xs, yf, vf, spd=True, **opts)
        xs_m = xs if create_graph else tuple(x.detach() for x in xs)
        lam, mask, minfo = self._multipliers(xs_m, yf, shape, ctx, create_graph)
        m = yf.shape[1]
        maskf = mask.to(y.dtype)

        def lagrangian(*a):
            # ℒ = f − Σ_{eq, active} λ_i c_i − ½ Σ_{inactive} λ_i²  (masked identity rows in K)
            zz = a[-1]
            yy, ll = zz[:, :m].reshape(b, *shape), zz[:, m:]
            h, g = self._constraints(a[:-1], yy)
            c = torch.cat([t for t in (h, g) if t is not None], 1)
            return (self.objective(*a[:-1], yy) - (maskf * ll * c).sum(-1)
                    - 0.5 * ((1 - maskf) * ll * ll).sum(-1))

        z = torch.cat([yf, lam if create_graph else lam.detach()], 1)
        grads, info = implicit_vjp(lagrangian, xs, z, vf, spd=False, n_primal=m,
                                   known_degenerate=minfo["rank_deficient_reported"],
                                   expected_singular=minfo["rank_deficient"], **opts)
        if "n_negative" in info:
            # Second-order check (dense K): at a constrained minimum with regular constraints the
            # KKT matrix has exactly p + q negative eigenvalues (k from the active block, −1 for
            # each inactive row); one more means D²_YY L has a negative direction on the tangent
            # space of the active constraints: y is a saddle or maximum, not the argmin.
            P = minfo["p"] + minfo["q"]
            finite = torch.isfinite(z.detach()).all(1) & torch.isfinite(vf).all(1)
            sad = (info["n_negative"] > P) & ~info["singular"] & ~minfo["rank_deficient"] & finite
        else:
            # cg/minres: no inertia without K; the certificate w_yᵀv < 0 (see implicit_vjp) proves
            # a saddle, but misses one where v has no component along the negative direction
            sad = info["negative_direction"] & ~minfo["rank_deficient"]
        if sad.any():
            report("y is a KKT point but not a minimum (D²_YY L has a negative direction on "
                   "the tangent space of the active constraints: a saddle or maximum); the "
                   "gradient is that of this stationary point", sad,
                   "Remedy: give the solver a better initial_guess, or write a solve that "
                   "returns the minimum.", self.on_degenerate)
        info.update(minfo)
        info["lam"] = lam.detach()
        return grads, info

    def _unrolled(self, *xs):
        """Forward with autograd through the solver's iterations (linear_solver="unroll")."""
        y, ctx = self._solve_checked(xs)
        if self._differentiable(xs) and not y.requires_grad:
            raise DDNError(f"{type(self).__name__}: linear_solver='unroll' needs a solve written in "
                           "differentiable torch ops, but y came back without a graph. Use "
                           "linear_solver='dense' or 'cg' (implicit differentiation) instead.")
        return y


class EqConstrainedNode(DeclarativeNode):
    """``y(x) ∈ argmin_u f(x, u)  s.t.  h(x, u) = 0`` (Prop. 4.5); backward solves the KKT system
    ``[[H, −Aᵀ], [−A, 0]] w = [v; 0]`` (``H = D²_YY L``, ``A = D_Y h``) and takes one VJP of the
    first-order conditions. Implement ``objective`` and ``equality_constraints(*xs, y) -> (b, p)``.
    The default solver is Newton on the KKT system (local SQP) from ``initial_guess`` and ``λ = 0``;
    elements where it stalls (e.g. ``∇h = 0`` at the initial guess, as for ``‖y‖² = 1`` at ``y = 0``)
    or runs out of ``solver_max_iter`` are solved again by an augmented Lagrangian (not under
    ``linear_solver="unroll"``); the latter keep its answer only where the constraints are well
    conditioned (``cond(A)·solver_tol ≤ residual_tol``, rows of ``A`` at unit norm).
    Multipliers: ``ctx["multipliers"]`` if the solver gives them (convention ``L = f − λᵀh``), else
    least squares ``λ = (AAᵀ)⁻¹ A ∇_Y f`` (Eq. 32). Nearly (not exactly) dependent constraints whose
    values at y leave y measurably far from the point they define (``‖h‖`` within tolerance, but
    along a near-dependency of ``A``) are reported by the default solver and by the backward,
    whatever ``singular`` says.
    """

    constrained = True

    def equality_constraints(self, *xs_and_y):
        raise NotImplementedError(f"{type(self).__name__} must implement equality_constraints(*xs, y)")

    def _flat_problem(self, xs, b, shape):
        """``f``, ``h``, ``g`` of a flattened ``y`` (b, m) for the default solvers (``g`` calls
        ``inequality_constraints``, which only IneqConstrainedNode has)."""
        def f(yf):
            return self._f(xs, yf.reshape(b, *shape))

        def h(yf):
            return _as_2d(self.equality_constraints(*xs, yf.reshape(b, *shape)), b)

        def g(yf):
            return _as_2d(self.inequality_constraints(*xs, yf.reshape(b, *shape)), b)

        return f, h, g

    def solve(self, *xs):
        y0 = self.initial_guess(*xs)
        b, shape = y0.shape[0], y0.shape[1:]
        m = y0[0].numel()
        h0 = _as_2d(self.equality_constraints(*xs, y0), b)
        if h0 is None:
            self._no_constraints()
        p = h0.shape[1]

        def lagr(z):
            yy = z[:, :m].reshape(b, *shape)
            return self._f(xs, yy) - (z[:, m:] * _as_2d(self.equality_constraints(*xs, yy), b)).sum(-1)

        z0 = torch.cat([y0.reshape(b, m), y0.new_zeros(b, p)], 1)
        differentiable = self._differentiable(xs)
        z, info = _solvers.newton_kkt(lagr, z0, tol=self._solver_tol(y0), max_iter=self.solver_max_iter,
                                      differentiable=differentiable, n_primal=m)
        conv = info["converged"]
        if differentiable and bool(info["singular_end"].any()):
            raise DDNError(f"{type(self).__name__}: linear_solver='unroll' cannot differentiate the "
                           "solve where the KKT matrix is singular at the solution (rank-deficient "
                           "constraints, e.g. a repeated one) at batch element(s) "
                           f"{info['singular_end'].nonzero().flatten().tolist()}. Remedy: use "
                           "linear_solver='dense' with singular='pinv', or remove the redundant "
                           "constraints.")
        if not differentiable and bool((~conv).any()):
            # Local SQP stalled for some elements (its line search found no decrease), typically
            # from a KKT matrix that is singular at the initial guess (h = ‖y‖² − 1 at y = 0 has
            # ∇h = 0), or crept along for solver_max_iter iterations: a small objective c·f next
            # to O(1) constraints (c = 10⁻⁴ from a point on the sphere), whose line search on
            # ‖∇ℒ‖ is ruled by the constraint block. Retry those with the augmented Lagrangian,
            # which needs no regular starting point, then polishes with Newton-KKT.
            f, h, _ = self._flat_problem(xs, b, shape)
            y_al, lam_al, _, al_info = _solvers.augmented_lagrangian(
                f, h, None, y0.reshape(b, m), tol=self._solver_tol(y0),
                max_iter=self.solver_max_iter, active_tol=self._active_tol(y0),
                max_outer=min(40, self.solver_max_iter),  # within the user's budget
                polish_max_iter=min(20, self.solver_max_iter))
            # An element that ran out of iterations (not stalled) takes the retry's answer only
            # where the constraints are well conditioned, cond(A)·solver_tol ≤ residual_tol: on
            # nearly dependent constraints a residual within tolerance leaves y up to cond(A)
            # times further off (float32 'converged' 4e-2 from the answer at cond(A) ~ 10³).
            tol_y = self.residual_tol if self.residual_tol is not None else default_tol(y0.dtype, 1e-6, 1e-3)
            with torch.enable_grad():
                ya = y_al.detach().requires_grad_(True)
                Aa = batched_jacobian(_as_2d(self.equality_constraints(*xs, ya.reshape(b, *shape)), b), ya)
            well = _unit_row_cond(Aa) * self._solver_tol(y0) <= tol_y
            use = (info["stalled"] | well) & ~conv & al_info["converged"]
            z = torch.where(use.unsqueeze(-1), torch.cat([y_al, lam_al], -1), z)
            conv = conv | use
        ctx = {"multipliers": z[:, m:].detach(), "converged": conv}
        # Converged to tolerance is not y right where the constraints are nearly dependent: a
        # residual ‖h‖ ≤ tol can leave y far from the point they define (see _nearly_dependent)
        with torch.enable_grad():
            yk = z[:, :m].detach().requires_grad_(True)
            hk = _as_2d(self.equality_constraints(*xs, yk.reshape(b, *shape)), b)
            Ak = batched_jacobian(hk, yk)
        tol_y = self.residual_tol if self.residual_tol is not None else default_tol(y0.dtype, 1e-6, 1e-3)
        near, move, kappa, _ = _nearly_dependent(Ak, hk.detach(), torch.ones_like(hk, dtype=torch.bool),
                                              yk.detach(), tol_y)
        if near.any():
            _report_nearly_dependent(near, move, kappa, self.on_degenerate)
            ctx["_near_dependent_reported"] = near
        return z[:, :m].reshape(b, *shape), ctx


class IneqConstrainedNode(EqConstrainedNode):
    """``y(x) ∈ argmin_u f(x, u)  s.t.  h(x, u) = 0, g(x, u) ≤ 0`` (Prop. 4.6). Active constraints
    (``g > −active_tol``, or ``ctx["active"]``) join ``h`` per batch element; inactive ones get a
    masked identity row in the KKT system. Multiplier signs (``λ ≤ 0`` for active ``g``) are checked
    and weakly active constraints (``λ = 0``) reported: the gradient is then one-sided.

    Implement ``objective`` and ``inequality_constraints(*xs, y) -> (b, q)``; ``equality_constraints``
    is optional. The default solver is an augmented Lagrangian (method of multipliers with Newton
    inner solves) polished by Newton on the active set's KKT system: fine for small smooth problems;
    for anything else (large q, non-smooth, degenerate) write ``solve`` (e.g. a closed form or a QP
    solver) and return ``ctx["multipliers"]`` when you have them. It cannot be unrolled.
    """

    def equality_constraints(self, *xs_and_y):
        return None

    def inequality_constraints(self, *xs_and_y):
        raise NotImplementedError(f"{type(self).__name__} must implement inequality_constraints(*xs, y)")

    def solve(self, *xs):
        if self._differentiable(xs):
            raise DDNError(f"{type(self).__name__}: the default inequality solver cannot be unrolled; "
                           "write a solve in torch ops, or use linear_solver='dense' or 'cg'")
        y0 = self.initial_guess(*xs)
        b, shape = y0.shape[0], y0.shape[1:]

        f, h, g = self._flat_problem(xs, b, shape)
        has_h = self.equality_constraints(*xs, y0) is not None
        if self.inequality_constraints(*xs, y0) is None:
            if not has_h:
                self._no_constraints()
            return EqConstrainedNode.solve(self, *xs)  # equalities only: Newton-KKT
        y, lam, active, info = _solvers.augmented_lagrangian(
            f, h if has_h else None, g, y0.reshape(b, -1), tol=self._solver_tol(y0),
            max_iter=self.solver_max_iter, active_tol=self._active_tol(y0))
        return y.reshape(b, *shape), {"multipliers": lam, "active": active, "converged": info["converged"]}


class LinEqConstrainedNode(EqConstrainedNode):
    """``y(x) ∈ argmin_u f(x, u)  s.t.  A u = b`` with fixed ``A`` (Cor. 4.9). Implement ``objective``
    and ``linear_constraints() -> (A, b)``, ``A`` ``(p, m)`` or ``(batch, p, m)``, ``b`` ``(p,)`` or
    ``(batch, p)``; ``y`` is flattened to ``m`` for ``A``."""

    def linear_constraints(self):
        raise NotImplementedError(f"{type(self).__name__} must implement linear_constraints() -> (A, b)")

    def equality_constraints(self, *xs_and_y):
        y = xs_and_y[-1]
        A, b = self.linear_constraints()
        A = torch.as_tensor(A, dtype=y.dtype, device=y.device)
        b = torch.as_tensor(b, dtype=y.dtype, device=y.device)
        yf = y.reshape(y.shape[0], -1)
        if A.dim() == 2:
            if A.shape[1] != yf.shape[1]:
                raise DDNError(f"linear_constraints: A has {A.shape[1]} columns, y has {yf.shape[1]} entries")
            return yf @ A.T - b
        return (A @ yf.unsqueeze(-1)).squeeze(-1) - b


class _ImplicitFunction(torch.autograd.Function):
    """Forward: the node's solve (no graph). Backward: :func:`implicit_vjp`, written in torch ops, so
    double-backward works (the multipliers are recomputed by least squares inside the graph)."""

    @staticmethod
    def forward(fctx, node, linear_solver, n_x, *xs_and_params):
        xs, params = xs_and_params[:n_x], xs_and_params[n_x:]
        with torch.no_grad():
            y, sctx = node._solve_checked(xs)
        y = y.detach()
        # y must not share memory with an input (a solve that returns x, or a view x[:, :k]):
        # an in-place op on y would silently change the input and the tensors saved for backward
        ptr = y.untyped_storage().data_ptr()
        if any(torch.is_tensor(x) and x.untyped_storage().data_ptr() == ptr for x in xs):
            y = y.clone()
        fctx.node, fctx.sctx, fctx.linear_solver = node, sctx, linear_solver
        fctx.params = params  # the node's own nn.Parameters (leaves), used by its objective
        fctx.save_for_backward(*xs, y)
        return y

    @staticmethod
    def backward(fctx, gy):
        *xs, y = fctx.saved_tensors
        create_graph = torch.is_grad_enabled()
        needs = fctx.needs_input_grad[3:3 + len(xs)]
        if not create_graph:
            xs = [x.detach().requires_grad_(bool(n) and x.is_floating_point()) for x, n in zip(xs, needs)]
        grads, info = fctx.node._backward(tuple(xs), y, fctx.sctx, gy, create_graph=create_graph,
                                          linear_solver=fctx.linear_solver, params=fctx.params)
        grads = [gr if n else None for gr, n in zip(grads, needs)]
        return (None, None, None, *grads, *info.get("param_grads", ()))


class DeclarativeLayer(nn.Module):
    """``layer(*xs)`` returns the node's solution ``y`` (batched over dim 0) and back-propagates by
    implicit differentiation (:func:`implicit_vjp`), never through the solver's iterations — unless
    ``linear_solver="unroll"`` is chosen explicitly (then autograd differentiates the solver's own
    torch ops; the default Newton/SQP solvers support it). float16/bfloat16 inputs are solved and
    differentiated in float32 (there is no half-precision Cholesky/LU) and ``y`` is cast back.

    Args:
        node: a ``ddn.torch`` node. If it is also an ``nn.Module`` it is registered as a submodule
            (so ``.to()`` moves its buffers) and its parameters get gradients from the same
            implicit VJP (first-order backward only; for double-backward pass θ as an input).
        linear_solver: overrides ``node.linear_solver`` (``"dense"``, ``"cg"``, ``"minres"``,
            ``"unroll"``).
    """

    def __init__(self, node, *, linear_solver=None):
        super().__init__()
        if getattr(node, "floor", None) != "torch":
            raise DDNError(f"DeclarativeLayer needs a ddn.torch node (floor == 'torch'), got "
                           f"{type(node).__name__}")
        if linear_solver is not None and linear_solver not in _ALL_SOLVERS:
            raise DDNError(f"linear_solver={linear_solver!r}: choose one of {_ALL_SOLVERS}")
        self.node = node
        self.linear_solver = linear_solver

    def forward(self, *xs):
        low = [x.dtype for x in xs if torch.is_tensor(x) and x.dtype in _LOW_PRECISION]
        if low:
            # float16/bfloat16: solve and differentiate in float32 (no half Cholesky/LU), cast back
            xs = tuple(x.float() if torch.is_tensor(x) and x.dtype in _LOW_PRECISION else x for x in xs)
            return self.forward(*xs).to(low[0])
        ls = self.linear_solver or self.node.linear_solver
        if ls == "unroll":
            return self.node._unrolled(*xs)
        params = ()
        if isinstance(self.node, nn.Module):  # θ held by the node: gradients by the same VJP
            params = tuple(q for q in self.node.parameters() if q.requires_grad)
        return _ImplicitFunction.apply(self.node, ls, len(xs), *xs, *params)

    def extra_repr(self):
        return f"node={type(self.node).__name__}, linear_solver={self.linear_solver or self.node.linear_solver!r}"
