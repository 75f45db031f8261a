"""Linear algebra behind the implicit-function step: solves with H = D²_YY L that know what to
do when H is singular (Sec. 4.7.4), and with the constraint Jacobian A = D_Y h̃ when the point is
not regular (Sec. 4.7.3). Private: the nodes and :func:`ddn.reference.implicit_vjp` use it.
"""
import warnings

import numpy as np
import scipy.linalg
import scipy.sparse.linalg as spla

from .. import DDNError, DDNWarning

SINGULAR_MODES = ("error", "pinv", "proximal")
LINEAR_SOLVERS = ("dense", "minres")
NONREGULAR_MODES = ("error", "lstsq", "drop", "pinv")

#: H with a condition number above this is treated as singular.
COND_MAX = 1e12
#: relative singular-value threshold for the rank of A.
RANK_RTOL = 1e-9


def check_mode(name, value, allowed):
    if value not in allowed:
        raise DDNError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}.")
    return value


def condition_number(H):
    """2-norm condition number of ``H`` (``inf`` when singular or zero, or not finite: the SVD
    of a matrix with Inf/NaN raised LinAlgError 'SVD did not converge' before the solvers could
    name the problem)."""
    H = np.atleast_2d(H)
    if not np.all(np.isfinite(H)):
        return float("inf")
    s = np.linalg.svd(H, compute_uv=False)
    return float(s[0] / s[-1]) if s[-1] > 0 else float("inf")


def matrix_rank(A):
    """Numerical rank of ``A`` with relative tolerance :data:`RANK_RTOL`."""
    if A is None or A.size == 0:
        return 0
    if not np.all(np.isfinite(A)):
        raise DDNError("D_Y h̃ contains NaN/Inf: the constraints are not differentiable at y "
                       "(or y is not finite).")
    s = np.linalg.svd(A, compute_uv=False)
    return int(np.sum(s > RANK_RTOL * max(s[0], np.finfo(float).tiny)))


def independent_rows(A):
    """Indices of a maximal set of linearly independent rows of ``A`` (QR with pivoting on Aᵀ),
    in increasing order."""
    r = matrix_rank(A)
    _, _, piv = scipy.linalg.qr(A.T, pivoting=True, mode="economic")
    return np.sort(piv[:r])


class HessianSolve:
    """Applies H⁻¹ (or its chosen replacement) to vectors and matrices; factor once, reuse.

    singular="error": H must be non-singular (cond(H) ≤ COND_MAX), else DDNError naming the
        remedies.
    singular="pinv": H⁺ (Eq. 51/56: −H⁺B is a descent direction, the minimum-norm member of the
        family −H⁺B + (I − H⁺H)Z).
    singular="proximal": H + δI, i.e. the proximal term (δ/2)‖u − y‖² added to the objective
        at the solution (which does not move y).
    """

    def __init__(self, H, singular="error", proximal_delta=1e-6):
        check_mode("singular", singular, SINGULAR_MODES)
        self.mode = singular
        if isinstance(H, spla.LinearOperator):  # matrix-free: Hessian-vector products
            self._init_operator(H, singular, proximal_delta)
            return
        H = np.asarray(H, dtype=float)
        if not np.all(np.isfinite(H)):
            raise DDNError("H = D²_YY L contains NaN/Inf: the objective is not twice "
                           "differentiable at this y (or y is not finite).")
        self.cond = condition_number(H)
        if singular == "proximal":
            if not proximal_delta > 0:
                raise DDNError(f"proximal_delta must be > 0, got {proximal_delta!r}.")
            H = H + proximal_delta * np.eye(H.shape[0])
        elif self.cond > COND_MAX:
            if singular == "error":
                raise DDNError(
                    f"H = D²_YY L is singular (cond ≈ {self.cond:.3g}): the solution is not "
                    "isolated and Dy is undefined (Sec. 4.7.4). Choose a remedy: "
                    "singular='pinv' (pseudo-inverse, minimum-norm descent direction, Eq. 51), "
                    "singular='proximal' with proximal_delta=δ (H + δI), or reparametrize / "
                    "add constraints so that y is isolated (e.g. normalize it, Eq. 55).")
        self.H = H
        if singular == "pinv":
            self._pinv = np.linalg.pinv(H, rcond=1.0 / COND_MAX)
        else:
            self._lu = scipy.linalg.lu_factor(H, check_finite=False)

    def _init_operator(self, H, singular, proximal_delta):
        if singular == "pinv":
            raise DDNError("singular='pinv' needs the dense H: use linear_solver='dense', or "
                           "singular='proximal' with the matrix-free solver.")
        self.shift = proximal_delta if singular == "proximal" else 0.0
        self.H = H
        self.cond = float("nan")
        if singular == "error":  # estimate cond(H) by Lanczos (matvecs only) to catch singular H
            self.cond = _lanczos_condition(H)
            if np.isnan(self.cond):
                warnings.warn(
                    "could not estimate cond(H) for the matrix-free solve (Lanczos did not "
                    "converge): a singular H = D²_YY L is not ruled out, only MINRES's residual "
                    "is checked. Use linear_solver='dense' for a reliable check, or "
                    "singular='proximal' with proximal_delta=δ.", DDNWarning, stacklevel=3)
            if self.cond > COND_MAX:
                raise DDNError(
                    f"H = D²_YY L is singular (Lanczos estimate cond ≈ {self.cond:.3g}): the "
                    "solution is not isolated (Sec. 4.7.4). Choose singular='proximal' with "
                    "proximal_delta=δ, or linear_solver='dense' with singular='pinv', or "
                    "reparametrize / add constraints (e.g. normalize y, Eq. 55).")

    def _minres(self, b):
        """H b by MINRES (H symmetric, possibly indefinite); DDNError if it stalls."""
        x, info = spla.minres(self.H, b, rtol=1e-13, shift=-self.shift, maxiter=20 * b.size)
        r = np.linalg.norm(self.H.matvec(x) + self.shift * x - b)
        if info != 0 and r > 1e-8 * max(1.0, np.linalg.norm(b)):
            raise DDNError(
                f"MINRES did not converge on H = D²_YY L (residual {r:.3g}): H may be singular. "
                "Choose singular='proximal', or linear_solver='dense' with singular='pinv'.")
        return x

    def solve(self, rhs, trans=False):
        """H⁻¹ rhs (``trans=True``: H⁻ᵀ rhs); rhs of shape (m,) or (m, k)."""
        if isinstance(self.H, spla.LinearOperator):  # H is symmetric: trans changes nothing
            rhs = np.asarray(rhs, dtype=float)
            if rhs.ndim == 1:
                return self._minres(rhs)
            return np.column_stack([self._minres(c) for c in rhs.T]) if rhs.shape[1] else rhs
        if self.mode == "pinv":
            P = self._pinv.T if trans else self._pinv
            return P @ rhs
        return scipy.linalg.lu_solve(self._lu, rhs, trans=1 if trans else 0, check_finite=False)


def _lanczos_condition(op):
    """|λ|max / |λ|min of a symmetric operator from two short Lanczos runs (nan if they do not
    converge; inf for a zero eigenvalue). Exact for m ≤ 2 by forming the tiny matrix."""
    m = op.shape[0]
    if m <= 2:
        return condition_number(op.matmat(np.eye(m)))
    kw = {"k": 1, "return_eigenvectors": False, "tol": 1e-10, "maxiter": 100 * m}
    try:
        big = abs(spla.eigsh(op, which="LM", **kw)[0])
        small = abs(spla.eigsh(op, which="SM", **kw)[0])
    except spla.ArpackNoConvergence:
        return float("nan")
    return float(big / small) if small > 0 else float("inf")


class ConstraintSolve:
    """Solves with a constraint Jacobian A (p × m) or its Schur complement S = A H⁻¹ Aᵀ, following
    the choice made for non-regular points (Sec. 4.7.3).

    A regular point has rank A = p ≤ m. Otherwise:
    nonregular="error": DDNError naming the remedies.
    nonregular="lstsq": A has full column rank (p > m = rank A, overdetermined): y is pinned by
        the constraints alone and Dy = −A⁺C, with multipliers by least squares.
    nonregular="drop": keep a maximal set of independent rows (λ = 0 on the dropped ones).
    nonregular="pinv": replace inverses by pseudo-inverses.
    """

    def __init__(self, A, nonregular="error"):
        check_mode("nonregular", nonregular, NONREGULAR_MODES)
        self.A = A
        self.p, self.m = A.shape
        self.rank = matrix_rank(A)
        self.regular = self.rank == self.p
        self.choice = nonregular  # what the user chose, even at a regular point
        self.mode = "regular" if self.regular else nonregular
        self.keep = np.arange(self.p)
        if self.regular:
            return
        if nonregular == "error":
            raise DDNError(
                f"the active constraints are not regular at y (Def. 4.3): D_Y h̃ is {self.p}×"
                f"{self.m} with rank {self.rank}. Choose a remedy (Sec. 4.7.3): "
                "nonregular='lstsq' (overdetermined, full column rank), nonregular='drop' "
                "(drop linearly dependent rows) or nonregular='pinv' (pseudo-inverse).")
        if nonregular == "lstsq" and self.rank < self.m:
            raise DDNError(
                f"nonregular='lstsq' needs D_Y h̃ of full column rank (rank {self.rank} < m = "
                f"{self.m}); use nonregular='drop' or nonregular='pinv' for rank-deficient "
                "constraints.")
        if nonregular == "drop":
            self.keep = independent_rows(A)

    @property
    def pinned(self):
        """True when the constraints alone fix y (rank A = m and least squares chosen)."""
        return self.mode == "lstsq"
