"""Declarative nodes in numpy + autograd: the ground truth of ddn.

A declarative node outputs y(x) ∈ argmin_{u ∈ C(x)} f(x, u). The user writes the objective
(and constraints) with ``autograd.numpy``; the node solves the problem (or calls the user's
``solve``) and differentiates the solution by the implicit function theorem:

    first-order conditions  D_Y L(x, y, λ) = 0,  h̃(x, y) = 0,   L = f − λᵀh̃
    ⇒ vᵀ Dy  = −uᵀB − μᵀC,  with  B = D²_XY L,  C = D_X h̃  and (u, μ) from one solve with
      H = D²_YY L  and  A = D_Y h̃                                        (:func:`implicit_vjp`)

Shapes: x (n,), y (m,), v (m,), Dy (m, n), p equality and q inequality constraints; h̃ stacks the
equality constraints and the active inequality constraints (p̃ rows). Every node is built with its
sizes, ``Node(n, m, **options)``, and has ``solve(x) -> (y, ctx)``, ``objective(x, y) -> float``,
``jacobian(x, y=None, ctx=None) -> (m, n)`` and ``vjp(x, v, y=None, ctx=None) -> (n,)``.
``vjp`` never forms Dy. Passing ``y`` (and ``ctx``) makes the backward pass use exactly the
forward pass's solution; without it the node solves again.

Options shared by all nodes (chosen explicitly, never silently):
``singular="error"|"pinv"|"proximal"`` with ``proximal_delta`` (singular H, Sec. 4.7.4) and, for
constrained nodes, ``nonregular="error"|"lstsq"|"drop"|"pinv"`` (Sec. 4.7.3).
Failures raise :class:`ddn.DDNError`: NaN/Inf or wrongly shaped input, singular H or non-regular
constraints with no remedy chosen, infeasible constraints, a solver that does not converge.
Degenerate but usable points warn with :class:`ddn.DDNWarning`: a weakly active inequality
(one-sided gradient) or an active inequality whose multiplier has the wrong sign.

Reference: Gould, Hartley, Campbell, "Deep Declarative Networks", TPAMI 2021, Sec. 4.
"""
import warnings
from dataclasses import dataclass, field

import autograd.numpy as anp
import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.sparse.linalg as spla
from autograd import grad, jacobian

from .. import DDNError, DDNWarning
from ._linalg import (COND_MAX, LINEAR_SOLVERS, NONREGULAR_MODES, SINGULAR_MODES, ConstraintSolve,
                      HessianSolve, check_mode, condition_number, matrix_rank)
from ._solvers import constrained_solve, feasibility_solve, newton_solve, quiet

__all__ = [
    "DeclarativeNode", "EqConstrainedNode", "IneqConstrainedNode", "LinEqConstrainedNode",
    "FixedEqConstrainedNode", "FeasibilityNode", "ImperativeNode", "ComposedNode",
    "Optimality", "implicit_vjp", "eq_32_multipliers", "prop_4_4_jacobian", "prop_4_5_jacobian",
    "cor_4_7_jacobian", "cor_4_9_jacobian", "feasibility_jacobian",
    "upper_gradient", "shortcut_gradient",
]


# ----------------------------------------------------------------------------------------------
# The implicit-function step
# ----------------------------------------------------------------------------------------------
def implicit_vjp(v, H, pullback, A=None, *, singular="error", proximal_delta=1e-6,
                 nonregular="error"):
    """vᵀ Dy(x) by the implicit function theorem, without forming Dy (Sec. 6.1).

    Solve with H, then pull the result back through the first-order conditions:

    - unconstrained (Prop. 4.4, Dy = −H⁻¹B): solve Hᵀw = v; vᵀDy = −wᵀB = −pullback(w, ∅).
    - constrained (Prop. 4.5, A = D_Y h̃ of full row rank): w = H⁻ᵀv,
      μ = (A H⁻¹ Aᵀ)⁻ᵀ A w, u = H⁻ᵀ(v − Aᵀμ); vᵀDy = −uᵀB − μᵀC = −pullback(u, μ).
    - constraints only (H is None, feasibility Eq. 46, A Dy = −C): Aᵀμ = v; vᵀDy = −μᵀC.
    - H singular but K = [[H, −Aᵀ], [A, 0]] not (y isolated, ``_regular_kkt``):
      [u; μ] = K⁻ᵀ[v; 0]; vᵀDy = −uᵀB − μᵀC, the same u, μ as above when H is invertible.

    ``pullback(u, μ)`` must return D_X[uᵀ D_Y L(x, y, λ)ᵀ + μᵀ h̃(x, y)] at fixed y and λ, an
    (n,) vector (``μ`` is empty when there are no constraints): one vector–Jacobian product of
    the first-order conditions with respect to x, e.g. ``autograd.grad`` of that scalar.

    Args:
        v: (m,) incoming gradient.
        H: (m, m) H = D²_YY L, or None for a feasibility problem.
        pullback: callable (u (m,), μ (p̃,)) -> (n,).
        A: (p̃, m) A = D_Y h̃ of the equality and active inequality constraints, or None.
        singular, proximal_delta: what to do when H is singular (see ``HessianSolve``).
        nonregular: what to do when A is not of full row rank (see ``ConstraintSolve``).
    Returns:
        (n,) array vᵀ Dy.
    """
    v = np.asarray(v, dtype=float)
    m = v.shape[0]
    if A is None or A.shape[0] == 0:
        Hs = HessianSolve(H, singular, proximal_delta)
        w = Hs.solve(v, trans=True)  # Hᵀ w = v
        return -pullback(w, np.zeros(0))  # vᵀDy = −wᵀB
    cs = ConstraintSolve(A, nonregular)
    if H is None or cs.pinned:  # the constraints alone fix y: A Dy = −C
        mu = _solve_transpose_constraints(cs, v)  # Aᵀ μ = v
        return -pullback(np.zeros(m), mu)
    Ak = A[cs.keep]  # A = D_Y h̃ (independent rows)
    K = _regular_kkt(H, Ak, singular)
    if K is not None:  # H singular, y isolated: [u; μ] = K⁻ᵀ [v; 0]
        sol = scipy.linalg.solve(K.T, np.concatenate([v, np.zeros(Ak.shape[0])]))
        mu = np.zeros(A.shape[0])
        mu[cs.keep] = sol[m:]
        return -pullback(sol[:m], mu)  # vᵀDy = −uᵀB − μᵀC
    Hs = HessianSolve(H, singular, proximal_delta)
    w = Hs.solve(v, trans=True)  # w = H⁻ᵀ v
    S = Ak @ Hs.solve(Ak.T)  # S = A H⁻¹ Aᵀ
    mu_k = _solve_small(S.T, Ak @ w, pinv=cs.mode == "pinv",  # Sᵀ μ = A w
                        fallback="pinv" in (cs.choice, singular))
    u = w - Hs.solve(Ak.T @ mu_k, trans=True)  # u = H⁻ᵀ (v − Aᵀ μ)
    mu = np.zeros(A.shape[0])
    mu[cs.keep] = mu_k
    return -pullback(u, mu)  # vᵀDy = −uᵀB − μᵀC


def _shapes(**mats):
    """Check the shapes of the propositions' matrices against each other (H (m, m), A (p̃, m),
    B (m, n), C (p̃, n), a (m,)); a mismatch was a numpy/scipy ValueError about 'lu' and 'b'."""
    H, A, B, C = (mats.get(k) for k in "HABC")
    m = H.shape[0] if H is not None else A.shape[1]
    n = B.shape[1] if B is not None else (C.shape[1] if C is not None else None)
    want = {"H": (m, m), "A": (None, m), "B": (m, n), "C": (A.shape[0] if A is not None else
                                                          None, n), "a": (m,)}
    for k, M in mats.items():
        if M is None or not isinstance(M, np.ndarray):
            continue
        if M.ndim != len(want[k]) or any(w is not None and w != d for w, d in zip(want[k],
                                                                                   M.shape)):
            shape = "(" + ", ".join("·" if w is None else str(w) for w in want[k]) + \
                ("," if len(want[k]) == 1 else "") + ")"
            raise DDNError(f"{k} has shape {M.shape}, expected {shape} (H (m, m), A (p̃, m), "
                           f"B (m, n), C (p̃, n), a (m,)).")


def _regular_kkt(H, A, singular):
    """K = [[H, −Aᵀ], [A, 0]] when H is singular but K is not, else None.

    The first-order conditions differentiate to K [Dy; Dλ] = [−B; −C]; Prop. 4.5 eliminates Dλ
    with H⁻¹, which needs H non-singular, but Dy is unique whenever K is (A of full row rank and
    H non-singular on the tangent space, ZᵀHZ ≻ 0 or ≺ 0): y is isolated even though H is not
    invertible on R^m (e.g. f = ½(u₁ − x)² s.t. u₁ = u₂). Then Dy comes from K, with no remedy
    needed, for singular="error" and "pinv" (whose H⁺ is no descent direction there: it
    returned Dy = 0); "proximal" keeps H + δI, as chosen. Matrix-free H is left to its solver.
    """
    if singular == "proximal" or not isinstance(H, np.ndarray) or A.shape[0] == 0:
        return None
    if not np.all(np.isfinite(H)) or condition_number(H) <= COND_MAX:
        return None
    m, k = H.shape[0], A.shape[0]
    K = np.block([[H, -A.T], [A, np.zeros((k, k))]])
    d = 1.0 / np.sqrt(np.maximum(np.max(np.abs(K), axis=1), np.finfo(float).tiny))
    return K if condition_number(d[:, None] * K * d[None, :]) <= COND_MAX else None


def _solve_small(S, rhs, pinv=False, fallback=False):
    """S⁻¹ rhs for the small p̃ × p̃ Schur complement (or S⁺ rhs). ``fallback``: S⁺ where S is
    singular, for a pseudo-inverse the user chose (singular='pinv' or nonregular='pinv'; at a
    regular A nonregular='pinv' did not reach S, so the remedy this error named failed too)."""
    if pinv:
        return np.linalg.pinv(S, rcond=1e-12) @ rhs
    if condition_number(S) > 1e12:
        if fallback:
            return np.linalg.pinv(S, rcond=1e-12) @ rhs
        raise DDNError("A H⁻¹ Aᵀ is singular: H is not invertible on the constraints "
                       "(Prop. 4.5 needs it). Choose singular='proximal', or singular='pinv' / "
                       "nonregular='pinv' for the minimum-norm substitute.")
    return np.linalg.solve(S, rhs)


def _solve_transpose_constraints(cs, v):
    """μ with Aᵀμ = v when the constraints alone fix y (feasibility, or pinned by lstsq)."""
    A = cs.A
    if cs.rank < cs.m:
        if cs.choice != "pinv":
            raise DDNError(
                f"y is not isolated: the {cs.p} active constraints have rank {cs.rank} < m = "
                f"{cs.m}, so D_Y h̃ Dy = −D_X h̃ has many solutions. Add constraints, or choose "
                "nonregular='pinv' for the minimum-norm Dy (Sec. 4.7.1).")
        return np.linalg.pinv(A.T, rcond=1e-12) @ v
    if cs.mode == "drop":
        mu = np.zeros(cs.p)
        mu[cs.keep] = np.linalg.solve(A[cs.keep].T, v)
        return mu
    return np.linalg.lstsq(A.T, v, rcond=None)[0]


def eq_32_multipliers(grad_f, A):
    """Lagrange multipliers from stationarity λᵀA = D_Y f (Eq. 32):

        λ = (A Aᵀ)⁻¹ A D_Y fᵀ      (A = D_Y h̃ (p̃, m) of full row rank, grad_f (m,))

    computed by least squares, which is the same for full-rank A and gives the minimum-norm λ
    at non-regular points (Sec. 4.7.3). Returns (p̃,).
    """
    if A.shape[0] == 0:
        return np.zeros(0)
    return np.linalg.lstsq(A.T, grad_f, rcond=None)[0]


# ----------------------------------------------------------------------------------------------
# The propositions, as full Jacobians (teaching and testing; nodes' vjp uses implicit_vjp)
# ----------------------------------------------------------------------------------------------
def prop_4_4_jacobian(H, B, *, singular="error", proximal_delta=1e-6):
    """Prop. 4.4 (unconstrained): Dy = −H⁻¹B with H = D²_YY f (m, m), B = D²_XY f (m, n)."""
    B = np.asarray(B, dtype=float)
    _shapes(H=H, B=B)
    return -HessianSolve(H, singular, proximal_delta).solve(B)


def prop_4_5_jacobian(H, A, B, C, *, singular="error", proximal_delta=1e-6, nonregular="error"):
    """Prop. 4.5 (equality constrained, also Prop. 4.6 with the active set stacked into h̃):

        Dy = H⁻¹Aᵀ (A H⁻¹ Aᵀ)⁻¹ (A H⁻¹ B − C) − H⁻¹ B

    with H = D²_YY L (m, m), A = D_Y h̃ (p̃, m), B = D²_XY L (m, n), C = D_X h̃ (p̃, n),
    L = f − λᵀh̃. Non-regular A follows ``nonregular`` (Sec. 4.7.3).
    """
    A, B, C = (np.asarray(M, dtype=float) for M in (A, B, C))
    _shapes(H=H, A=A, B=B, C=C)
    if A.shape[0] == 0:  # nothing active: Prop. 4.4
        return prop_4_4_jacobian(H, B, singular=singular, proximal_delta=proximal_delta)
    cs = ConstraintSolve(A, nonregular)
    if cs.pinned:  # rank A = m < p̃: y is fixed by the constraints, Dy = −A⁺C
        return -np.linalg.lstsq(A, C, rcond=None)[0]
    Ak, Ck = A[cs.keep], C[cs.keep]
    K = _regular_kkt(H, Ak, singular)
    if K is not None:  # H singular, y isolated: K [Dy; Dλ] = [−B; −C]
        return scipy.linalg.solve(K, -np.vstack([B, Ck]))[: H.shape[0]]
    Hs = HessianSolve(H, singular, proximal_delta)
    HiAT, HiB = Hs.solve(Ak.T), Hs.solve(B)  # H⁻¹Aᵀ, H⁻¹B
    S = Ak @ HiAT  # A H⁻¹ Aᵀ
    return HiAT @ _solve_small(S, Ak @ HiB - Ck, pinv=cs.mode == "pinv",
                               fallback="pinv" in (cs.choice, singular)) - HiB


def cor_4_7_jacobian(H, a, B, *, singular="error", proximal_delta=1e-6):
    """Cor. 4.7 (one fixed equality constraint h(y) = 0):

        Dy = ( H⁻¹ a aᵀ H⁻¹ / (aᵀ H⁻¹ a) − H⁻¹ ) B

    with a = D_Y h(y)ᵀ (m,), H = D²_YY f − λ D²_YY h (m, m), B = D²_XY f (m, n).
    """
    a, B = np.asarray(a, dtype=float), np.asarray(B, dtype=float)
    _shapes(H=H, a=a, B=B)
    if _regular_kkt(H, np.atleast_2d(a), singular) is not None:  # H singular, y isolated
        return prop_4_5_jacobian(H, np.atleast_2d(a), B, np.zeros((1, B.shape[1])),
                                 singular=singular)
    Hs = HessianSolve(H, singular, proximal_delta)
    Hia, HiB = Hs.solve(a), Hs.solve(B)  # H⁻¹a, H⁻¹B
    aHia = float(a @ Hia)
    # 0 relative to its terms (a cancellation, or a = 0); not against max(1, ·): that refused
    # the unit sphere written ×1e-9 next to an O(1) objective (aᵀH⁻¹a ~ 1e-18)
    if abs(aHia) <= 1e-12 * float(np.abs(a) @ np.abs(Hia)):
        raise DDNError("aᵀH⁻¹a = 0 in Cor. 4.7: D_Y h = 0 at y (is the constraint a sum of "
                       "squares?) or H is singular on its normal; keep the constraints separate.")
    return np.outer(Hia, a @ HiB) / aHia - HiB


def cor_4_9_jacobian(H, A, B, *, singular="error", proximal_delta=1e-6, nonregular="error"):
    """Cor. 4.9 (fixed linear equality constraints Au = b, A (p, m) of full row rank):

        Dy = ( H⁻¹Aᵀ (A H⁻¹ Aᵀ)⁻¹ A H⁻¹ − H⁻¹ ) B,   H = D²_YY f, B = D²_XY f.
    """
    A, B = np.atleast_2d(np.asarray(A, dtype=float)), np.asarray(B, dtype=float)
    C = np.zeros((A.shape[0], B.shape[1] if B.ndim == 2 else 0))
    return prop_4_5_jacobian(H, A, B, C, singular=singular, proximal_delta=proximal_delta,
                             nonregular=nonregular)


def feasibility_jacobian(A, C, *, nonregular="error"):
    """Feasibility (Sec. 4.7.1, Eq. 46): D_Y h̃ · Dy = −D_X h̃, i.e. Dy = −A⁻¹C with
    A = D_Y h̃ (p̃, m) and C = D_X h̃ (p̃, n); unique when A is square and invertible. Otherwise
    least squares (p̃ > m) or the minimum-norm solution (nonregular='pinv')."""
    A, C = np.asarray(A, dtype=float), np.asarray(C, dtype=float)
    _shapes(A=A, C=C)
    cs = ConstraintSolve(A, nonregular)
    if cs.rank < cs.m:
        if cs.choice != "pinv":
            _solve_transpose_constraints(cs, np.zeros(cs.m))  # raises the "not isolated" error
        return -np.linalg.pinv(A, rcond=1e-12) @ C
    if cs.mode == "drop":
        return -np.linalg.solve(A[cs.keep], C[cs.keep])
    return -np.linalg.lstsq(A, C, rcond=None)[0]


# ----------------------------------------------------------------------------------------------
# What a node knows at a solution
# ----------------------------------------------------------------------------------------------
@dataclass
class Optimality:
    """The first-order conditions at (x, y), with everything the backward pass and the checks
    need. ``H = D²_YY L`` (None for feasibility), ``A = D_Y h̃`` (p̃, m) or None,
    ``multipliers`` (p + q,) in the order [equality, inequality] with L = f − Σλh (so λ ≤ 0 for
    active inequalities, 0 for inactive ones), ``active`` the indices of active inequalities,
    ``weakly_active`` those with λ = 0 (one-sided gradient), ``residual`` the KKT residual."""

    x: np.ndarray
    y: np.ndarray
    H: np.ndarray | None
    A: np.ndarray | None
    multipliers: np.ndarray
    active: list = field(default_factory=list)
    weakly_active: list = field(default_factory=list)
    residual: float = 0.0
    cond_H: float = float("nan")
    H_scale: float = float("nan")  # size of the terms H is summed from (see _hessian_terms)
    rank_A: int = 0
    rule: str = ""
    messages: list = field(default_factory=list)
    pullback: object = None
    B: object = None  # callable () -> (m, n) D²_XY L
    C: object = None  # callable () -> (p̃, n) D_X h̃

    @property
    def n_active(self):
        """Rows of h̃: equality constraints plus active inequality constraints."""
        return 0 if self.A is None else int(self.A.shape[0])

    @property
    def one_sided(self):
        """True when some active inequality has a zero multiplier: Dy is one-sided there."""
        return bool(self.weakly_active)

    @property
    def residual_floor(self):
        """The rounding level of the residual, 100·eps·max(|H|, |A|)·max(1, |y|): the first-order
        conditions cannot be met more closely in floating point (at x ~ 1e9, Σeᵘ − xᵀu has
        ‖D_Y f‖ ≈ 3e-6 at the correctly rounded y = log x). 0 for a matrix-free H."""
        mats = [M for M in (self.H, self.A) if isinstance(M, np.ndarray) and M.size]
        scale = max((float(np.max(np.abs(M))) for M in mats), default=0.0)
        if not np.isfinite(scale):
            return 0.0
        return 100 * np.finfo(float).eps * scale * max(1.0, float(np.max(np.abs(self.y))))


# ----------------------------------------------------------------------------------------------
# Nodes
# ----------------------------------------------------------------------------------------------
class DeclarativeNode:
    """Unconstrained declarative node, y(x) ∈ argmin_u f(x, u)                     (Prop. 4.4)

        D_Y f(x, y) = 0  ⇒  Dy = −H⁻¹B,   H = D²_YY f (m, m),  B = D²_XY f (m, n).

    Subclass and implement ``objective(x, y)`` with ``autograd.numpy``; optionally
    ``initial_guess(x)`` (default zeros) or your own ``solve(x) -> (y, ctx)`` (default: damped
    Newton with line search, DDNError when it does not converge).

    Args:
        n, m: sizes of x and y.
        tol: solver tolerance (gradient/KKT residual, relative to 1 + ‖D_Y f‖∞).
        max_iter: solver iterations.
        singular: "error" (default) | "pinv" | "proximal" — singular H (Sec. 4.7.4).
        proximal_delta: δ of the proximal remedy H + δI.
        linear_solver: "dense" (default: H formed, LU / pseudo-inverse) or "minres" (matrix-free:
            MINRES with Hessian-vector products, H never formed; cond(H) estimated by Lanczos).
    """

    floor = "reference"
    rule = "Prop. 4.4"
    # class-level defaults, so that a subclass with its own __init__ still works
    n = m = None
    tol, max_iter, singular, proximal_delta, nonregular = 1e-10, 100, "error", 1e-6, "error"
    linear_solver = "dense"

    def __init__(self, n, m, *, tol=1e-10, max_iter=100, singular="error", proximal_delta=1e-6,
                 linear_solver="dense"):
        if not (int(n) == n and n >= 1 and int(m) == m and m >= 1):
            raise DDNError(f"node sizes must be positive integers, got n={n!r}, m={m!r}.")
        self.n, self.m = int(n), int(m)
        self.tol, self.max_iter = float(tol), int(max_iter)
        self.singular = check_mode("singular", singular, SINGULAR_MODES)
        self.proximal_delta = float(proximal_delta)
        self.linear_solver = check_mode("linear_solver", linear_solver, LINEAR_SOLVERS)

    def __repr__(self):
        sizes = "" if self.n is None else f"n={self.n}, m={self.m}"
        return f"{type(self).__name__}({sizes})"

    # -- the problem ---------------------------------------------------------------------------
    def objective(self, x, y):
        """f(x, y), a float; written with autograd.numpy so that it can be differentiated."""
        raise NotImplementedError(f"{type(self).__name__} must implement objective(x, y)")

    def initial_guess(self, x):
        """Starting point of the default solver, (m,)."""
        return np.zeros(self.m)

    def solve(self, x):
        """y(x) and a ctx dict (default: damped Newton, see ``_solvers.newton_solve``)."""
        return newton_solve(self, self._check_x(x))

    def __call__(self, x):
        return self.solve(x)[0]

    # -- constraints (none here; subclasses add them) -------------------------------------------
    def _eq(self, x, y):
        return anp.zeros(0)

    def _ineq(self, x, y):
        return anp.zeros(0)

    def num_constraints(self, x, y):
        """(p, q): numbers of equality and inequality constraints."""
        return 0, 0

    constraints_depend_on_x = True

    # -- checking ------------------------------------------------------------------------------
    def _check_x(self, x):
        return _check_vector(x, self.n, "x")

    def _check_y(self, y):
        return _check_vector(y, self.m, "y")

    def _solution(self, x, y, ctx):
        x = self._check_x(x)
        if y is None:
            y, ctx = self.solve(x)
        return x, self._check_y(y), dict(ctx or {})

    # -- first-order conditions ---------------------------------------------------------------
    def active_constraints(self, x, y, active):
        """h̃(x, y): equality constraints then the active inequalities (autograd-traceable)."""
        parts = [self._eq(x, y)]
        if len(active):
            parts.append(self._ineq(x, y)[np.asarray(active, dtype=int)])
        return anp.concatenate(parts)

    def active_constraints_np(self, x, y, active):
        return np.asarray(self.active_constraints(x, y, active), dtype=float)

    def active_jacobian(self, x, y, active):
        """A = D_Y h̃ (p̃, m)."""
        if np.size(self.active_constraints(x, y, active)) == 0:
            return np.zeros((0, y.size))
        A = quiet(jacobian(lambda u: self.active_constraints(x, u, active)), y)
        return np.asarray(A, dtype=float).reshape(-1, y.size)

    def lagrangian(self, x, y, lam, active=()):
        """L(x, y, λ) = f(x, y) − λᵀ h̃(x, y) (Eq. 23)."""
        f = self.objective(x, y)
        if len(lam) == 0:
            return f
        return f - anp.dot(lam, self.active_constraints(x, y, active))

    def lagrangian_hessian(self, x, y, lam, active=(), operator=False):
        """H = D²_YY L (m, m); with operator=True a LinearOperator w ↦ Hw (Hessian-vector
        products by autograd, H never formed)."""
        dL = grad(lambda u: self.lagrangian(x, u, lam, active))  # D_Y L
        if operator:
            hvp = grad(lambda u, w: anp.dot(w, dL(u)))  # w ↦ D_Y(wᵀ D_Y L) = H w
            return spla.LinearOperator((y.size, y.size), dtype=float,
                                       matvec=lambda w: quiet(hvp, y, np.ravel(w)))
        return np.asarray(quiet(jacobian(dL), y), dtype=float).reshape(y.size, y.size)

    def _hessian(self, x, y, lam, active):
        return self.lagrangian_hessian(x, y, lam, active,
                                       operator=self.linear_solver == "minres")

    def violation(self, x, y):
        """max(|h|, max(g, 0)) on the constraints' own scale (see ``_unit_violation``): 0 when y
        is feasible."""
        h, g = np.asarray(self._eq(x, y)), np.asarray(self._ineq(x, y))
        v = np.concatenate([np.abs(h).reshape(-1), np.maximum(g, 0.0).reshape(-1)])
        if v.size == 0 or not np.any(v):  # feasible (NaN goes on, and stays NaN)
            return 0.0
        return float(np.max(self._unit_violation(x, y, v, np.arange(v.size))))

    #: constraints with ‖D_Y h_i‖∞ below 1/violation_band are measured as distances (see below)
    violation_band = 1e2

    def _unit_violation(self, x, y, v, rows):
        """Violations v ≥ 0 of the constraints ``rows`` of [h; g], in the units that ``feas_tol``
        and the KKT residual use. For constraints of ordinary size they are |h_i| and max(g_i, 0)
        unchanged, but (1) a violation at the rounding level of h_i at y, |h_i| ≤ 100·eps·t_i with
        t_i = Σ_j |∂h_i/∂y_j|·max(1, |y_j|) the size of h_i's terms, is 0: a constraint ×1e9 (or
        ‖y‖² = 1e10) cannot be met more closely in floating point, and such a feasible problem
        was 'no feasible point found'; (2) a constraint whose gradient is tiny, ‖D_Y h_i‖∞ <
        1/violation_band (×1e-12, say), is measured as violation_band × distance,
        |h_i|/(violation_band·‖D_Y h_i‖∞): bare |h_i| ≤ feas_tol accepted y = x, 8.6 from the
        sphere ‖y‖ = 10 written ×1e-12, and y = 0 for y³ = x written ×1e-12, without a word."""
        v = np.asarray(v, dtype=float)
        try:
            J = quiet(jacobian(lambda u: anp.concatenate([self._eq(x, u), self._ineq(x, u)])), y)
            J = np.abs(np.asarray(J, dtype=float).reshape(-1, y.size)[np.asarray(rows, int)])
        except (TypeError, ValueError, ArithmeticError, DDNError):
            return v
        if not np.all(np.isfinite(J)):
            return v
        t = J @ np.maximum(1.0, np.abs(y))  # size of h_i's terms
        v = np.where(v <= 100 * np.finfo(float).eps * t, 0.0, v)
        s = np.minimum(1.0, self.violation_band * np.max(J, axis=1, initial=0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(v > 0, v / s, 0.0)

    def _active_tol(self, solver_residual=0.0):
        """Tolerance for g_i ≥ −tol to count as active: tied to the solver's accuracy (its
        tolerance, and the residual it reported in ctx["residual"])."""
        return max(100.0 * self.tol, 10.0 * float(solver_residual))

    def _active_set(self, x, y, g, solver_residual=0.0):
        """Indices of the active inequalities: within the tolerance of their surface, measured
        as a distance, g_i ≥ −tol·‖D_Y g_i‖. (On g itself, a constraint written ×1e-3 counted
        as active 2e-6 away from its surface, and Dy was the constrained one where y = x.)"""
        tol = self._active_tol(solver_residual)
        near = np.flatnonzero(g >= -tol * 1e6)  # only these can be active; skip the far ones
        if near.size == 0:
            return []
        G = quiet(jacobian(lambda u: self._ineq(x, u)), y)
        G = np.asarray(G, dtype=float).reshape(g.size, y.size)[near]
        scale = np.linalg.norm(G, axis=1)
        scale = np.where(np.isfinite(scale), scale, 1.0)
        # plus the rounding level of g_i at y (eps × the size of its terms): on the ball of
        # radius 1e9 the exact projection has |g| ~ 2e-7, a distance above tol, and counted as
        # inactive (Dy = I, 'optimality residual 8.7e8')
        rnd = 100 * np.finfo(float).eps * (np.abs(G) @ np.maximum(1.0, np.abs(y)))
        rnd = np.where(np.isfinite(rnd), rnd, 0.0)
        return [int(i) for i, s, r in zip(near, scale, rnd) if g[i] >= -(tol * s + r)]

    def kkt_residual(self, x, y, multipliers=None, solver_residual=0.0):
        """KKT residual at (x, y): max of |D_Y f − Aᵀλ|, |h|, max(g, 0) and |g_i| on the active set
        {i: g_i ≥ −tol}; multipliers by least squares λᵀA = D_Y f (Eq. 32) unless given."""
        p, q = self.num_constraints(x, y)
        g = np.asarray(self._ineq(x, y), dtype=float).reshape(q)
        active = self._active_set(x, y, g, solver_residual)
        grad_f = np.asarray(quiet(grad(lambda u: self.objective(x, u)), y), dtype=float)
        grad_f = grad_f.reshape(y.size)
        A = self.active_jacobian(x, y, active)
        _check_finite_derivatives(self, y, grad_f, A)
        if multipliers is None:
            lam = eq_32_multipliers(grad_f, A)
            if active and matrix_rank(A) < A.shape[0]:
                lam = _sign_feasible_multipliers(grad_f, A, p, lam)
        else:
            lam = np.concatenate([multipliers[:p], multipliers[p:][active]])
        full = np.zeros(p + q)
        full[:p], full[p + np.asarray(active, dtype=int)] = lam[:p], lam[p:]
        stat = float(np.max(np.abs(grad_f - A.T @ lam), initial=0.0))
        h = np.asarray(self._eq(x, y), dtype=float).reshape(-1)
        raw = max(np.max(np.abs(h), initial=0.0), np.max(g, initial=0.0),
                  np.max(np.abs(g[active]), initial=0.0))  # as written, for the KKT polish
        feas = self.violation(x, y)
        if active:  # active: treated as g = 0, on the same scale as the violation
            feas = max(feas, float(np.max(self._unit_violation(
                x, y, np.abs(g[active]), p + np.asarray(active, dtype=int)))))
        res = max(stat, feas)
        tol = self.tol * (1.0 + np.max(np.abs(grad_f), initial=0.0))
        return {"residual": float(res), "tol": float(tol), "multipliers": full,
                "stationarity": stat, "feasibility": float(feas), "feasibility_raw": float(raw),
                "active": active, "lam_active": lam, "grad_f": grad_f}

    def optimality(self, x, y=None, ctx=None):
        """The first-order conditions at the solution, as an :class:`Optimality`."""
        x, y, ctx = self._solution(x, y, ctx)
        H = self._hessian(x, y, np.zeros(0), ())  # H = D²_YY f
        res = self.kkt_residual(x, y)["residual"]
        dfy = grad(lambda xx, u: self.objective(xx, u), 1)
        return Optimality(
            x=x, y=y, H=H, A=None, multipliers=np.zeros(0), residual=res,
            cond_H=_cond(H), rule=self.rule,
            pullback=lambda u, mu: _x_grad(lambda xx: anp.dot(u, dfy(xx, y)), x),
            B=lambda: _x_jac(lambda xx: dfy(xx, y), x, y.size))  # B = D²_XY f

    # -- backward ------------------------------------------------------------------------------
    def jacobian(self, x, y=None, ctx=None):
        """Dy(x), (m, n), by this node's proposition (solves first when y is None)."""
        return self._jacobian_rule(self._checked_optimality(x, y, ctx))

    # Unconstrained nodes: D_Y f(x, y) = 0 must hold at the y given to the backward pass, else
    # −H⁻¹B is not the gradient of y. The threshold is residual_tol·min(1, s), s = ‖|H|(1 + |y|)‖∞
    # the size of D_Y f's terms (as ddn.torch measures it): residual_tol for objectives of
    # ordinary size, proportionally less for a small one (with f ×1e-9 a y 0.1 from the
    # stationary point has ‖D_Y f‖ = 1e-10 and passed the bare 1e-6). Constrained
    # nodes are not checked here: at non-smooth constraints (Lp spheres, p = 1, ∞) the smooth KKT
    # residual is legitimately large; ddn.check reports it. A residual at the rounding level of
    # the first-order conditions (Optimality.residual_floor) is accepted too.
    residual_tol = 1e-6

    def _checked_optimality(self, x, y, ctx):
        opt = self.optimality(x, y, ctx)
        size = 1.0
        if isinstance(opt.H, np.ndarray) and opt.H.size and np.all(np.isfinite(opt.H)):
            size = min(1.0, float(np.max(np.abs(opt.H) @ (1.0 + np.abs(opt.y)))))
        tol = max(self.residual_tol * size, opt.residual_floor)
        if not isinstance(self, EqConstrainedNode) and not opt.residual <= tol:
            warnings.warn(
                f"{type(self).__name__}: ‖D_Y f(x, y)‖∞ = {opt.residual:.2e} > residual_tol = "
                f"{tol:g}: y is not a stationary point, so −H⁻¹B is not Dy. Solve "
                "more accurately, or pass the y returned by solve (or raise node.residual_tol).",
                DDNWarning, stacklevel=3)
        self._check_second_order(opt)
        return opt

    def _check_second_order(self, opt):
        """A minimum has D²_YY L ⪰ 0 on the tangent space of the active constraints (Z spans the
        null space of A); a clearly negative eigenvalue of ZᵀHZ means y is a saddle or maximum:
        Dy is then that stationary point's, which a caller expecting the argmin should know."""
        if not isinstance(opt.H, np.ndarray) or not np.all(np.isfinite(opt.H)):
            return  # matrix-free H (minres) or feasibility (H is None): not checked
        H = 0.5 * (opt.H + opt.H.T)
        # "clearly negative": below −1e-8 of the size of H's terms (Optimality.H_scale, ≥ ‖H‖₂),
        # so that a maximum of c·f is named for any c > 0 (an absolute floor missed it for
        # c = 1e-9) while rounding noise in an H whose terms cancel is not
        scale = opt.H_scale if np.isfinite(opt.H_scale) else float(np.linalg.norm(H, 2))
        A = opt.A
        weak = [i for i in opt.weakly_active if i not in opt.active]
        if weak:  # dropped (weakly_active="unconstrained"): H need only be ⪰ 0 where g_i = 0 too
            A = self.active_jacobian(opt.x, opt.y, sorted(opt.active + weak))
        if A is not None and A.shape[0]:
            _, sv, Vt = np.linalg.svd(A)
            r = int(np.sum(sv > 1e-10 * sv.max()))  # relative: A ×1e-12 still has rank 1
            Z = Vt[r:].T
            if Z.shape[1] == 0:
                return
            H = Z.T @ H @ Z
        ev = np.linalg.eigvalsh(H)
        if ev.min() < -1e-8 * scale:
            warnings.warn(
                f"{type(self).__name__}: y is a stationary point but not a minimum (D²_YY L has "
                f"the eigenvalue {ev.min():.3g} on the tangent space of the active constraints: a "
                "saddle or maximum); Dy is that of this stationary point. Give a better "
                "initial_guess or a solve that returns the minimum.", DDNWarning, stacklevel=4)

    def _jacobian_rule(self, opt):
        return prop_4_4_jacobian(opt.H, opt.B(), singular=self.singular,
                                 proximal_delta=self.proximal_delta)

    def vjp(self, x, v, y=None, ctx=None):
        """vᵀ Dy(x), (n,), by :func:`implicit_vjp` (one solve with H, one VJP in x)."""
        v = _check_vector(v, self.m, "v")
        opt = self._checked_optimality(x, y, ctx)
        return implicit_vjp(v, opt.H, opt.pullback, opt.A, singular=self.singular,
                            proximal_delta=self.proximal_delta,
                            nonregular=self.nonregular)


class EqConstrainedNode(DeclarativeNode):
    """Equality-constrained node, y(x) ∈ argmin_u f(x, u) s.t. h(x, u) = 0          (Prop. 4.5)

        L = f − λᵀh,  A = D_Y h (p, m),  B = D²_XY L,  C = D_X h,  H = D²_YY L
        Dy = H⁻¹Aᵀ (A H⁻¹ Aᵀ)⁻¹ (A H⁻¹ B − C) − H⁻¹ B

    Implement ``objective(x, y)`` and ``equality_constraints(x, y) -> (p,)``. Multipliers come
    from the solver's ``ctx["multipliers"]`` when present, else from λᵀA = D_Y f (Eq. 32). The
    default solver is ``scipy.optimize.minimize`` (``method="SLSQP"`` or "trust-constr") polished
    by Newton on the KKT system; it raises DDNError for infeasible or non-converged problems.

    Extra args: nonregular ("error" | "lstsq" | "drop" | "pinv", Sec. 4.7.3), method,
    feas_tol (largest constraint violation |h_i|, max(g_i, 0) accepted from the solver; a
    violation at the rounding level of h_i at y is none, and a constraint with a tiny gradient,
    ‖D_Y h_i‖∞ < 1e-2, is measured as 1e2 × its distance |h_i|/‖D_Y h_i‖∞, see ``violation``).
    """

    rule = "Prop. 4.5"
    nonregular, method, feas_tol = "error", "SLSQP", 1e-8

    def __init__(self, n, m, *, nonregular="error", method="SLSQP", feas_tol=1e-8, **kw):
        super().__init__(n, m, **kw)
        self.nonregular = check_mode("nonregular", nonregular, NONREGULAR_MODES)
        self.method = check_mode("method", method, ("SLSQP", "trust-constr"))
        self.feas_tol = float(feas_tol)

    def equality_constraints(self, x, y):
        """h(x, y), (p,) (or a scalar when p = 1); autograd-traceable."""
        raise NotImplementedError(f"{type(self).__name__} must implement "
                                  "equality_constraints(x, y)")

    def inequality_constraints(self, x, y):
        return None

    def _eq(self, x, y):
        return _constraint_vector(self.equality_constraints(x, y))

    def _ineq(self, x, y):
        return _constraint_vector(self.inequality_constraints(x, y))

    def num_constraints(self, x, y):
        return int(np.size(self._eq(x, y))), int(np.size(self._ineq(x, y)))

    def solve(self, x):
        """y(x) and ctx = {"multipliers", "residual", "active"} (SLSQP + KKT polish)."""
        return constrained_solve(self, self._check_x(x))

    def _multipliers_from_ctx(self, ctx, p, q):
        lam = ctx.get("multipliers")
        if lam is None:
            return None
        lam = np.asarray(lam, dtype=float).reshape(-1)
        if lam.shape != (p + q,) or not np.all(np.isfinite(lam)):
            raise DDNError(f"ctx['multipliers'] must be a finite ({p + q},) array "
                           f"[equality, inequality], got shape {lam.shape}.")
        return lam

    def optimality(self, x, y=None, ctx=None):
        x, y, ctx = self._solution(x, y, ctx)
        p, q = self.num_constraints(x, y)
        solver_res = ctx.get("residual", 0.0)
        given = self._multipliers_from_ctx(ctx, p, q)
        kkt = self.kkt_residual(x, y, given, solver_res)
        if given is not None:
            self._check_given_multipliers(x, y, kkt, solver_res)
        lam_all, active = kkt["multipliers"], list(kkt["active"])
        self._check_vanishing_gradients(x, y, active, kkt["grad_f"])
        lam_tol = self._active_tol(solver_res) * self._gradient_scale(x, y, kkt["grad_f"], active)
        if active:  # λ_i is judged by its term λ_i D_Y g_i in stationarity, ‖·‖ vs D_Y f's size
            gn = np.linalg.norm(self.active_jacobian(x, y, active)[p:], axis=1)
            ok = np.isfinite(gn) & (gn > 0)
            lam_tol = np.full(q, lam_tol)
            lam_tol[np.asarray(active)[ok]] /= gn[ok]
        weak, messages = self._check_inequality_multipliers(lam_all[p:], active, lam_tol)
        if weak and self.weakly_active == "unconstrained":
            active = [i for i in active if i not in weak]
        lam = np.concatenate([lam_all[:p], lam_all[p:][np.asarray(active, dtype=int)]])
        H = self._hessian(x, y, lam, active)  # H = D²_YY L
        H, H_scale = self._hessian_terms(x, y, H, lam)
        A, more = self._check_tangency(x, y, active, self.active_jacobian(x, y, active))
        messages += more
        return Optimality(
            x=x, y=y, H=H, A=A, multipliers=lam_all, active=active, weakly_active=weak,
            residual=kkt["residual"], cond_H=_cond(H), H_scale=H_scale, rank_A=matrix_rank(A),
            rule=self.rule, messages=messages, **self._pullbacks(x, y, lam, active))

    weakly_active = "constrained"

    def _gradient_scale(self, x, y, grad_f, active):
        """The size D_Y f has near y, max(‖D_Y f‖∞, max|D²_YY f|·max(1, ‖y‖∞)): what an active
        multiplier's term λ_i D_Y g_i is compared with. (1 + ‖D_Y f‖∞ made it absolute: with the
        objective ×1e-9 the ball projection's λ ~ 4e-10 was called 'weakly active'.) With no
        active inequality, or a matrix-free H, 1 + ‖D_Y f‖∞ as before."""
        g = float(np.max(np.abs(grad_f), initial=0.0))
        if not active or self.linear_solver != "dense":
            return 1.0 + g
        try:
            Hf = self.lagrangian_hessian(x, y, np.zeros(0), ())  # D²_YY f
        except (TypeError, ValueError, ArithmeticError, DDNError):
            return 1.0 + g
        s = max(g, float(np.max(np.abs(Hf), initial=0.0)) * max(1.0, float(np.max(np.abs(y)))))
        return s if np.isfinite(s) else 1.0 + g

    def _hessian_terms(self, x, y, H, lam):
        """(H, s): s = max(‖H‖₂, ‖D²_YY f‖₂, ‖Σλ_i D²_YY h̃_i‖₂), the size of the terms that
        H = D²_YY f − Σλ_i D²_YY h̃_i is summed from, and H with its eigenvalues below s/COND_MAX
        set to 0. Where the terms cancel, H is known only to ~eps·s: on the sphere with an
        objective c‖u‖² (every point a minimum, λ = c) H is rounding noise of size 1e-16·c whose
        own condition number is small, and singular='error' and 'pinv' inverted it, returning
        an O(1) random Dy without a word; now H = 0 there and the singular-H rules apply. Without
        cancellation (s = ‖H‖₂) nothing changes: those eigenvalues made cond(H) > COND_MAX
        already. A matrix-free H is returned as it is, with s = nan."""
        if not isinstance(H, np.ndarray) or not np.all(np.isfinite(H)):
            return H, float("nan")
        sH = float(np.linalg.norm(H, 2)) if H.size else 0.0
        if not np.any(lam):
            return H, sH
        Hf = self.lagrangian_hessian(x, y, np.zeros(0), ())  # D²_YY f
        s = max(sH, float(np.linalg.norm(Hf, 2)), float(np.linalg.norm(H - Hf, 2)))
        if not np.isfinite(s) or s <= sH:
            return H, sH
        ev, V = np.linalg.eigh(0.5 * (H + H.T))
        small = np.abs(ev) <= s / COND_MAX
        if small.any():
            ev[small] = 0.0
            H = (V * ev) @ V.T
        return H, s

    def _check_given_multipliers(self, x, y, kkt, solver_res):
        """ctx["multipliers"] that break stationarity (D_Y f ≠ λᵀA) where the least-squares ones
        (Eq. 32) satisfy it: a wrong sign convention or a stale λ would give a silently wrong H,
        so say so. (Where neither satisfies it, e.g. at a non-smooth constraint, stay quiet.)

        Stationarity is judged against the size of its terms, max(‖D_Y f‖∞, ‖|A|ᵀ|λ|‖∞), so
        that it does not depend on the scale of f: against 1e-6·(1 + |λ|) the negated λ of an
        objective ×1e-6 passed and Dy was silently wrong."""
        def fits(k):
            A = self.active_jacobian(x, y, k["active"])
            terms = np.abs(A.T) @ np.abs(k["lam_active"]) if A.size else np.zeros(0)
            size = max(float(np.max(np.abs(k["grad_f"]), initial=0.0)),
                       float(np.max(terms, initial=0.0)))
            return k["stationarity"] <= 1e-6 * size

        if fits(kkt):
            return
        ls = self.kkt_residual(x, y, None, solver_res)
        if fits(ls):
            warnings.warn(
                f"{type(self).__name__}: ctx['multipliers'] do not satisfy stationarity D_Y f = "
                f"λᵀA (KKT residual {kkt['residual']:.2e}; the least-squares λ of Eq. 32 gives "
                f"{ls['residual']:.1e}): H = D²_YY(f − λᵀh) and Dy are then wrong. Check the sign "
                "convention (L = f − λᵀ[h; g]) or drop them from ctx.", DDNWarning, stacklevel=4)

    def _check_vanishing_gradients(self, x, y, active, grad_f):
        """A constraint whose gradient D_Y h_i vanishes at y (e.g. two constraints merged as
        h₁² + h₂² = 0, the observation after Cor. 4.7) breaks the Lagrange conditions: Eq. 32
        would return an absurd multiplier. Refused unless a non-regular remedy was chosen.

        "Vanishes" is judged on the constraint's own scale, |D_Y h_i| ≤ 1e-8·|D²_YY h_i|·
        ‖y‖∞ (a square q² has D_Y = 2q D_Y q → 0 while D²_YY ≈ 2 D_Y q D_Y qᵀ does not),
        so it does not depend on how f or h_i is scaled. (Against 1e-8·(1 + |D_Y f|) the unit
        sphere was refused for f ×1e9 and for h ×1e-9.)"""
        if self.nonregular != "error":
            return
        A = self.active_jacobian(x, y, active)
        if A.size == 0:
            return
        norms = np.linalg.norm(A, axis=1)
        try:
            D2 = quiet(jacobian(jacobian(lambda u: self.active_constraints(x, u, active))), y)
            curv = np.max(np.abs(np.asarray(D2, dtype=float).reshape(A.shape[0], -1)), axis=1)
        except (TypeError, ValueError, ArithmeticError, DDNError):
            curv = np.zeros(A.shape[0])
        # |D_Y h_i|/|D²_YY h_i| is a length (|q|/|D q| for a square q², |y| for a sphere): judged
        # against 1e-8·‖y‖∞, not 1e-8·max(1, ‖y‖∞), which refused the sphere of radius 1e-9
        thr = 1e-8 * float(np.max(np.abs(y))) * np.where(np.isfinite(curv), curv, 0.0)
        zero = np.flatnonzero(norms <= thr)
        if zero.size:
            raise DDNError(
                f"the gradient D_Y h of active constraint(s) {zero.tolist()} vanishes at y "
                f"(|D_Y h_i| = {norms[zero].max():.1e}, against its curvature |D²_YY h_i| = "
                f"{curv[zero].max():.1e}): the Lagrange conditions do not hold (a "
                "constraint written as a square or several constraints merged into Σh_i² = 0 "
                "do this, see the observation after Cor. 4.7). Write each constraint "
                "separately, or choose nonregular='drop' or 'pinv'.")

    #: tangency estimate ρ above which the point counts as non-regular / Dy as ill-conditioned
    tangency_nonregular, tangency_warn = 1e-1, 1e-4

    def _check_tangency(self, x, y, active, A):
        """A = D_Y h̃ that is regular in floating point but within the accuracy of y of a
        rank-deficient one: the constraint surfaces are (nearly) tangent, e.g. the line u₂ = x
        touching the unit circle at x = 1 (Sec. 4.7.1), where y₁ = √(1 − x²) has Dy₁ = −x/√(1 −
        x²) → ∞. y is only known to ε_h ≈ max(|h̃(y)|, eps·‖A‖·max(1, ‖y‖)) in h̃, so along the
        weakest singular direction (σ, u, v) of A it is uncertain by δ with σδ + ½κδ² ≈ ε_h,
        κ = |vᵀ D²_YY(uᵀh̃) v|; the smallest singular value (and so Dy ~ 1/σ) is uncertain
        relatively by ρ = κ ε_h / σ². (The fixed rank threshold of A saw σ ≈ 5e-9 at x = 1 as
        regular and returned Dy₁ ≈ −1.8e8 without a word.)

        ρ > ``tangency_nonregular``: a non-regular point, DDNError with nonregular="error";
        with a remedy chosen, σ is set to 0 in A so that the remedy applies. ρ >
        ``tangency_warn``: DDNWarning, Dy is correct but has only about −log₁₀ ρ digits.
        Returns (A, messages)."""
        if A.shape[0] == 0 or not np.all(np.isfinite(A)) or matrix_rank(A) < A.shape[0]:
            return A, []  # nothing active, or rank deficient already: ConstraintSolve says so
        U, s, Vt = np.linalg.svd(A, full_matrices=False)
        sigma, u, v = s[-1], U[:, -1], Vt[-1]
        try:
            phi = lambda t: anp.dot(u, self.active_constraints(x, y + t * v, active))  # noqa
            kappa = abs(float(quiet(grad(grad(phi)), 0.0)))
            h = self.active_constraints_np(x, y, active)
        except (TypeError, ValueError, ArithmeticError, DDNError):
            return A, []
        eps_h = max(float(np.max(np.abs(h))),  # scales with h̃, as κ and σ² do
                    np.finfo(float).eps * s[0] * max(1.0, float(np.linalg.norm(y))))
        rho = kappa * eps_h / sigma ** 2
        if not np.isfinite(rho) or rho <= self.tangency_warn:
            return A, []
        name = type(self).__name__
        if rho <= self.tangency_nonregular:
            msg = (f"{name}: y is close to a non-regular point (the active constraints are "
                   f"nearly tangent: smallest singular value of D_Y h̃ is {sigma:.2e}), so Dy "
                   f"is large and ill-conditioned: its relative error may reach {rho:.0e}. "
                   "Finite differences need a step below the distance to the tangency.")
            warnings.warn(msg, DDNWarning, stacklevel=4)
            return A, [msg]
        what = (f"the active constraints are not regular at y to within its accuracy (Def. "
                f"4.3): D_Y h̃ has smallest singular value {sigma:.2e}, while the constraint "
                f"curvature {kappa:.2g} and the accuracy of h̃(y) ({eps_h:.1e}) make it "
                f"indistinguishable from 0 (relative uncertainty {rho:.1e}). The constraint "
                "surfaces are tangent here (e.g. a line touching a circle): Dy does not exist "
                "(it grows like 1/σ towards this point)")
        if self.nonregular == "error":
            raise DDNError(f"{name}: {what}. Move x away from the tangency or reformulate the "
                           "constraints; or choose nonregular='pinv' (minimum-norm substitute) "
                           "or 'drop' (Sec. 4.7.3).")
        msg = f"{name}: {what}; treated as rank deficient, nonregular={self.nonregular!r}."
        return A - sigma * np.outer(u, v), [msg]

    def _check_inequality_multipliers(self, lam_in, active, lam_tol):
        """Prop. 4.6: active inequality multipliers must be λ ≤ 0 (L = f − Σλh); λ = 0 (within
        lam_tol, a scalar or one tolerance per inequality) means weakly active, a one-sided
        gradient. Warns (DDNWarning) about both and returns (weakly active indices, messages).

        ``optimality`` gives λ_i the tolerance (active tol)·s_f / ‖D_Y g_i‖ (s_f the size of D_Y f,
        ``_gradient_scale``): λ_i is small when its term λ_i D_Y g_i in D_Y f = λᵀA is, whatever
        the scale of f or g_i (a ball constraint ×1e8, or the objective ×1e-9, has λ ~ 1e-9:
        against the bare tolerance it was 'weakly active', and weakly_active='unconstrained'
        dropped it, Dy = I instead of the sphere's)."""
        lam_tol = np.broadcast_to(np.asarray(lam_tol, dtype=float), lam_in.shape)
        wrong = [int(i) for i in active if lam_in[i] > lam_tol[i]]
        weak = [int(i) for i in active if abs(lam_in[i]) <= lam_tol[i]]
        messages = []
        if wrong:
            messages.append(
                f"active inequality constraint(s) {wrong} have multipliers λ > 0 "
                f"({lam_in[wrong]}): with L = f − Σλh a minimum needs λ ≤ 0, so y is not a "
                "KKT point of the minimization; Dy is that of a different problem.")
        if weak:
            messages.append(
                f"inequality constraint(s) {weak} are weakly active (g = 0 and λ = 0): Dy is "
                f"one-sided there; using the {self.weakly_active} side (option weakly_active=).")
        for msg in messages:
            warnings.warn(msg, DDNWarning, stacklevel=4)
        return weak, messages

    def _pullbacks(self, x, y, lam, active):
        """pullback(u, μ) = D_X[uᵀ D_Y L + μᵀ h̃]; B = D²_XY L; C = D_X h̃."""
        dLy = grad(lambda xx, u: self.lagrangian(xx, u, lam, active), 1)
        hx = lambda xx: self.active_constraints(xx, y, active)  # noqa: E731
        if self.constraints_depend_on_x:
            pull = lambda u, mu: _x_grad(  # noqa: E731
                lambda xx: anp.dot(u, dLy(xx, y)) + anp.dot(mu, hx(xx)), x)
            C = lambda: _x_jac(hx, x, len(lam))  # noqa: E731
        else:  # C = 0 (Obs. 4.8)
            pull = lambda u, mu: _x_grad(lambda xx: anp.dot(u, dLy(xx, y)), x)  # noqa: E731
            C = lambda: np.zeros((len(lam), x.size))  # noqa: E731
        return {"pullback": pull, "B": lambda: _x_jac(lambda xx: dLy(xx, y), x, y.size), "C": C}

    def _jacobian_rule(self, opt):
        return prop_4_5_jacobian(opt.H, opt.A, opt.B(), opt.C(), singular=self.singular,
                                 proximal_delta=self.proximal_delta, nonregular=self.nonregular)


class IneqConstrainedNode(EqConstrainedNode):
    """Equality and inequality constrained node                                  (Prop. 4.6)

        y(x) ∈ argmin_u f(x, u) s.t. h(x, u) = 0 (p), g(x, u) ≤ 0 (q)

    Inactive inequalities (g_i < −tol) are dropped; the equalities and the active inequalities
    are stacked into h̃ and Prop. 4.5 is applied. ``tol`` for "active" is tied to the solver's
    accuracy (max(100·tol, 10·ctx["residual"])). The active multipliers must satisfy λ ≤ 0
    (L = f − Σλh); a positive one warns (DDNWarning). An active constraint with λ = 0 is *weakly
    active*: Dy is one-sided, the node warns (DDNWarning) and lists it in
    ``optimality(...).weakly_active``; ``weakly_active="constrained"`` (default: treat it as
    active, like ReLU's 0 gradient at 0) or ``"unconstrained"`` (drop it) picks the side.

    Implement ``objective``, ``inequality_constraints(x, y) -> (q,)`` and optionally
    ``equality_constraints(x, y) -> (p,)``. ``ctx["multipliers"]`` is (p + q,), equality first.
    """

    rule = "Prop. 4.6"

    def __init__(self, n, m, *, weakly_active="constrained", **kw):
        super().__init__(n, m, **kw)
        self.weakly_active = check_mode("weakly_active", weakly_active,
                                        ("constrained", "unconstrained"))

    def equality_constraints(self, x, y):
        return None

    def inequality_constraints(self, x, y):
        """g(x, y), (q,) (or a scalar when q = 1), meaning g ≤ 0; autograd-traceable."""
        raise NotImplementedError(f"{type(self).__name__} must implement "
                                  "inequality_constraints(x, y)")

    def _jacobian_rule(self, opt):
        if opt.n_active == 0:  # every inequality inactive: the unconstrained rule
            return prop_4_4_jacobian(opt.H, opt.B(), singular=self.singular,
                                     proximal_delta=self.proximal_delta)
        return super()._jacobian_rule(opt)


class LinEqConstrainedNode(EqConstrainedNode):
    """Fixed linear equality constraints, y(x) ∈ argmin_u f(x, u) s.t. A u = b   (Cor. 4.9)

        Dy = ( H⁻¹Aᵀ (A H⁻¹ Aᵀ)⁻¹ A H⁻¹ − H⁻¹ ) B,   H = D²_YY f, B = D²_XY f

    (no multipliers needed: the constraints have no curvature and do not move with x).
    Implement ``objective`` and ``linear_constraints() -> (A (p, m), b (p,))``.
    """

    rule = "Cor. 4.9"
    constraints_depend_on_x = False

    def linear_constraints(self):
        raise NotImplementedError(f"{type(self).__name__} must implement linear_constraints()")

    def _linear(self):
        A, b = self.linear_constraints()
        A = np.atleast_2d(np.asarray(A, dtype=float))
        b = np.asarray(b, dtype=float).reshape(-1)
        if A.shape != (b.shape[0], self.m):
            raise DDNError(f"linear_constraints() must return A (p, {self.m}) and b (p,), got "
                           f"{A.shape} and {b.shape}.")
        return A, b

    def equality_constraints(self, x, y):
        A, b = self._linear()
        return anp.dot(A, y) - b

    def _jacobian_rule(self, opt):
        return cor_4_9_jacobian(opt.H, opt.A, opt.B(), singular=self.singular,
                                proximal_delta=self.proximal_delta, nonregular=self.nonregular)


class FixedEqConstrainedNode(EqConstrainedNode):
    """One fixed equality constraint, y(x) ∈ argmin_u f(x, u) s.t. h(u) = 0        (Cor. 4.7)

        a = D_Y h(y)ᵀ,  H = D²_YY f − λ D²_YY h,  B = D²_XY f
        Dy = ( H⁻¹ a aᵀ H⁻¹ / (aᵀ H⁻¹ a) − H⁻¹ ) B

    Implement ``objective`` and ``constraint(y) -> scalar`` (independent of x, so y only moves
    along the surface, A Dy = 0, Obs. 4.8). Keep several constraints separate (use
    EqConstrainedNode), never merged into Σh_i² = 0: that makes D_Y h = 0.
    """

    rule = "Cor. 4.7"
    constraints_depend_on_x = False

    def constraint(self, y):
        raise NotImplementedError(f"{type(self).__name__} must implement constraint(y)")

    def equality_constraints(self, x, y):
        h = anp.reshape(self.constraint(y), (-1,))
        if h.shape[0] != 1:  # checked here, so that solve, jacobian and vjp all say it
            raise DDNError(f"{type(self).__name__}.constraint(y) must return one scalar (Cor. "
                           f"4.7), got {h.shape[0]} values: use EqConstrainedNode for several "
                           "constraints, each separate (never merged into Σh_i² = 0).")
        return h

    def _jacobian_rule(self, opt):
        if opt.A.shape[0] != 1:
            raise DDNError("FixedEqConstrainedNode.constraint(y) must return one scalar.")
        return cor_4_7_jacobian(opt.H, opt.A[0], opt.B(), singular=self.singular,
                                proximal_delta=self.proximal_delta)


class FeasibilityNode(EqConstrainedNode):
    """Feasibility node: find y with h(x, y) = 0 and g(x, y) ≤ 0          (Sec. 4.7.1, Eq. 45–46)

        D_Y h̃ · Dy = −D_X h̃   ⇒   Dy = −A⁻¹C   (A = D_Y h̃ square, p̃ = m)

    There is no objective (it is 0). Implement ``equality_constraints(x, y)`` and optionally
    ``inequality_constraints(x, y)``; ``initial_guess(x)`` picks which solution the default
    solver (least squares on the residuals) finds. Fewer than m active constraints: y is not
    isolated, DDNError (or the minimum-norm Dy with nonregular="pinv").
    """

    rule = "Eq. 46"

    def objective(self, x, y):
        return 0.0 * anp.sum(y)

    def inequality_constraints(self, x, y):
        return None

    def solve(self, x):
        """y(x), ctx (least squares on [h; max(g, 0)] then Newton polish)."""
        return feasibility_solve(self, self._check_x(x))

    def optimality(self, x, y=None, ctx=None):
        x, y, ctx = self._solution(x, y, ctx)
        p, q = self.num_constraints(x, y)
        g = np.asarray(self._ineq(x, y), dtype=float).reshape(q)
        active = self._active_set(x, y, g, ctx.get("residual", 0.0))
        A, messages = self._check_tangency(x, y, active, self.active_jacobian(x, y, active))
        hx = lambda xx: self.active_constraints(xx, y, active)  # noqa: E731
        return Optimality(
            x=x, y=y, H=None, A=A, multipliers=np.zeros(p + q), active=active,
            residual=self.violation(x, y), rank_A=matrix_rank(A), rule=self.rule,
            messages=messages,
            pullback=lambda u, mu: _x_grad(lambda xx: anp.dot(mu, hx(xx)), x),
            C=lambda: _x_jac(hx, x, A.shape[0]))  # C = D_X h̃

    def _jacobian_rule(self, opt):
        return feasibility_jacobian(opt.A, opt.C(), nonregular=self.nonregular)


class ImperativeNode(DeclarativeNode):
    """Any explicit layer as a declarative node                                 (Prop. 4.10)

        y(x) = argmin_u ½‖u − f̃(x)‖²  ⇒  H = I, B = −D f̃(x), Dy = D f̃(x)

    Args:
        fn: f̃, (n,) -> (m,), written with autograd.numpy.
        n, m: sizes.
    """

    rule = "Prop. 4.10"

    def __init__(self, fn, n, m, **kw):
        super().__init__(n, m, **kw)
        self.fn = fn

    def objective(self, x, y):
        r = y - anp.reshape(self.fn(x), (-1,))
        return 0.5 * anp.dot(r, r)

    def solve(self, x):
        x = self._check_x(x)
        return _check_vector(np.asarray(self.fn(x), dtype=float).reshape(-1), self.m,
                             "fn(x)"), {}


class ComposedNode:
    """Nodes in a chain, z₀ = x, z_k = y_k(z_{k−1}), y = z_K                   (Eq. 39–41)

        Dy(x) = Dy_K(z_{K−1}) ⋯ Dy_1(x),   vᵀDy computed right to left: v ← v_kᵀ Dy_k.

    ``solve`` returns ctx = {"stages": [(z_{k-1}, y_k, ctx_k), ...]} so the backward pass reuses
    every stage's solution. ``objective(x, y)`` is the last node's objective at its input.
    A stage's warnings reach the caller once per call of ``solve`` / ``jacobian`` / ``vjp``,
    prefixed with the stage that raised them ("ComposedNode stage 1 (ReLUNode): ...").
    """

    floor = "reference"
    rule = "Eq. 41"

    def __init__(self, *nodes):
        if not nodes:
            raise DDNError("ComposedNode needs at least one node.")
        for a, b in zip(nodes, nodes[1:]):  # n or m None: any size (pooling, projections)
            if a.m is not None and b.n is not None and a.m != b.n:
                raise DDNError(f"cannot compose {a!r} -> {b!r}: output size {a.m} != input "
                               f"size {b.n}.")
        self.nodes = nodes
        self.n, self.m = nodes[0].n, nodes[-1].m

    def __repr__(self):
        return "ComposedNode(" + ", ".join(map(repr, self.nodes)) + ")"

    def stage_label(self, k):
        """How messages name stage k: "ComposedNode stage k (NodeClass)"."""
        return f"{type(self).__name__} stage {k} ({type(self.nodes[k]).__name__})"

    def _run_stage(self, k, fn, *args):
        """fn(*args) for stage k; its warnings are re-issued once each, naming the stage (a
        stage's message had no stage in it, and came once per optimality evaluation)."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = fn(*args)
        seen = set()
        for w in caught:
            msg = w.message
            if isinstance(msg, DDNWarning):
                msg = type(msg)(f"{self.stage_label(k)}: {msg}")
            key = (type(msg), str(msg))
            if key not in seen:
                seen.add(key)
                warnings.warn(msg, stacklevel=3)
        return out

    def solve(self, x):
        z = _check_vector(x, self.n, "x")
        stages = []
        for k, node in enumerate(self.nodes):
            y, ctx = self._run_stage(k, node.solve, z)
            stages.append((z, y, ctx))
            z = y
        return z, {"stages": stages}

    def __call__(self, x):
        return self.solve(x)[0]

    def _stages(self, x, y, ctx):
        """The stages [(z_{k−1}, y_k, ctx_k)] of ctx (solved again when ctx has none); a y given
        must be their output, else the backward pass would be that of another solution."""
        if ctx is None or "stages" not in ctx:
            _, ctx = self.solve(x)
        stages = ctx["stages"]
        if y is not None:
            y = _check_vector(y, self.m, "y")
            if not np.allclose(stages[-1][1], y, rtol=1e-8, atol=1e-12):
                raise DDNError(
                    "ComposedNode: the y given is not the output of the stages in ctx (or, "
                    "without ctx, of solving again): the backward pass must use the forward "
                    "pass's solution of every stage (Sec. 4.7.4). Pass ctx from solve(x) "
                    "together with its y.")
        return stages

    def objective(self, x, y):
        z, _, _ = self._stages(x, None, None)[-1]  # any y: f is evaluated, not differentiated
        return self.nodes[-1].objective(z, y)

    def jacobian(self, x, y=None, ctx=None):
        x = _check_vector(x, self.n, "x")
        J = np.eye(x.size)
        for k, (node, (z, yk, ck)) in enumerate(zip(self.nodes, self._stages(x, y, ctx))):
            J = self._run_stage(k, node.jacobian, z, yk, ck) @ J
        return J

    def vjp(self, x, v, y=None, ctx=None):
        x, v = _check_vector(x, self.n, "x"), _check_vector(v, self.m, "v")
        stages = list(enumerate(zip(self.nodes, self._stages(x, y, ctx))))
        for k, (node, (z, yk, ck)) in reversed(stages):
            v = self._run_stage(k, node.vjp, z, v, yk, ck)
        return v


# ----------------------------------------------------------------------------------------------
# Bi-level learning
# ----------------------------------------------------------------------------------------------
def upper_gradient(J, node, x, y=None, ctx=None):
    """Total derivative of an upper-level objective J(x, y(x))                (Eq. 10–11)

        dJ/dx = D_X J(x, y) + (D_Y J(x, y)) Dy(x)   — the second term as a vjp.

    Args: J: callable (x, y) -> float (autograd-traceable); node; x (n,); y, ctx from solve.
    Returns: (n,) array.
    """
    x = _check_vector(x, node.n, "x")
    if y is None:
        y, ctx = node.solve(x)
    y = _check_vector(y, node.m, "y")
    dJx = np.asarray(quiet(grad(J, 0), x, y), dtype=float)
    dJy = np.asarray(quiet(grad(J, 1), x, y), dtype=float)
    return dJx + node.vjp(x, dJy, y, ctx)


def shortcut_gradient(node, x, y=None):
    """Eq. 12: when J = f and the lower problem is unconstrained, D_Y f(x, y) = 0 at the
    optimum, so dJ/dx = D_X f(x, y) — no back-propagation through the node.

    Raises DDNError for constrained nodes (there D_Y f ≠ 0 in general; use upper_gradient).
    """
    if isinstance(node, (EqConstrainedNode, ComposedNode)):
        raise DDNError(f"the Eq. 12 shortcut needs an unconstrained node with J = f; "
                       f"{type(node).__name__} is not one. Use upper_gradient(J, node, x).")
    x = _check_vector(x, node.n, "x")
    if y is None:
        y, _ = node.solve(x)
    else:  # a y that is not stationary gets D_X f, not dJ/dx: say so, as jacobian/vjp do
        y = _check_vector(y, node.m, "y")
        node._checked_optimality(x, y, None)
    y = _check_vector(y, node.m, "y")
    return np.asarray(quiet(grad(node.objective, 0), x, y), dtype=float)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _constraint_vector(h):
    """Constraint values as a (k,) vector that autograd can trace. A list or tuple of traced
    scalars ([h₁, h₂]) is stacked with anp: anp.reshape turned it into a plain array, the
    derivative was silently 0, and the solver reported an ordinary problem as infeasible."""
    if h is None:
        return anp.zeros(0)
    if isinstance(h, (list, tuple)):
        return anp.concatenate([anp.reshape(hi, (-1,)) for hi in h]) if len(h) else anp.zeros(0)
    return anp.reshape(h, (-1,))


def _sign_feasible_multipliers(grad_f, A, p, lam):
    """At a non-regular point (rank A < rows, Sec. 4.7.3) λᵀA = D_Y f has many solutions and
    the minimum-norm one of Eq. 32 may give an active inequality λ > 0 although a KKT point has
    multipliers with λ ≤ 0 (e.g. three active constraints at a corner of a box in R²): the node
    then said "y is not a KKT point" and ddn.check failed a correct Dy. Prefer the solution with
    λ_ineq ≤ 0 when it satisfies stationarity as well as the minimum-norm one."""
    if np.all(lam[p:] <= 0):
        return lam
    lo = np.full(A.shape[0], -np.inf)
    hi = np.r_[np.full(p, np.inf), np.zeros(A.shape[0] - p)]  # λ_eq free, λ_ineq ≤ 0
    signed = scipy.optimize.lsq_linear(A.T, grad_f, bounds=(lo, hi), method="bvls",
                                       tol=1e-14).x
    r_min = np.max(np.abs(A.T @ lam - grad_f), initial=0.0)
    r_signed = np.max(np.abs(A.T @ signed - grad_f), initial=0.0)
    scale = 1.0 + np.max(np.abs(grad_f), initial=0.0)
    return signed if r_signed <= r_min + 1e-12 * scale else lam


def _check_finite_derivatives(node, y, grad_f, A):
    """D_Y f and D_Y h̃ must be finite at y: a constraint like −√u ≤ 0 active at u = 0 has an
    infinite gradient there, and least squares for the multipliers crashed with numpy's
    "SVD did not converge in Linear Least Squares"."""
    if np.all(np.isfinite(grad_f)) and np.all(np.isfinite(A)):
        return
    if not np.all(np.isfinite(grad_f)):
        what = "D_Y f (the objective's gradient)"
    else:
        rows = np.flatnonzero(~np.all(np.isfinite(A), axis=1)).tolist()
        what = f"D_Y h̃ (row(s) {rows} of [equalities; active inequalities])"
    raise DDNError(
        f"{type(node).__name__}: {what} contains NaN/Inf at y = {y}: the problem is not "
        "differentiable there (e.g. √u or log u at u = 0, or a y that underflowed to 0), so "
        "neither the KKT conditions nor Dy exist. Reformulate it smoothly (e.g. u ≥ 0 instead "
        "of √u ≥ 0) or rescale x.")


def _check_vector(a, size, name):
    """a as a finite float (size,) array (any 1-D size when size is None), else DDNError."""
    try:
        a = np.asarray(a, dtype=float)
    except (TypeError, ValueError) as e:
        raise DDNError(f"{name} must be a real array of shape ({size},): {e}") from None
    if a.ndim == 0 and size == 1:
        a = a.reshape(1)
    if a.shape != (size,) and not (size is None and a.ndim == 1):
        raise DDNError(f"{name} must have shape ({size},), got {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise DDNError(f"{name} contains NaN or Inf: {a}.")
    return a


def _cond(H):
    """cond(H); for a matrix-free H the Lanczos estimate (nan when it does not converge)."""
    if isinstance(H, spla.LinearOperator):
        from ._linalg import _lanczos_condition
        return _lanczos_condition(H)
    return condition_number(H)


def _x_grad(fn, x):
    """D_X of a scalar function at x, (n,)."""
    return np.asarray(quiet(grad(fn), x), dtype=float).reshape(x.shape)


def _x_jac(fn, x, rows):
    """D_X of a vector function at x, (rows, n)."""
    if rows == 0:
        return np.zeros((0, x.shape[0]))
    return np.asarray(quiet(jacobian(fn), x), dtype=float).reshape(rows, x.shape[0])
