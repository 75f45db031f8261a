"""Default forward solvers, so that a user writes only the objective and the constraints.

- :func:`newton_solve`: damped Newton with a backtracking (Armijo) line search, for small
  unconstrained problems.
- :func:`constrained_solve`: ``scipy.optimize.minimize`` (SLSQP by default, or trust-constr),
  then a few Newton steps on the KKT system of the active constraints, which takes the answer
  to machine precision (finite-difference checks of Dy need that) and gives the multipliers.
- :func:`feasibility_solve`: least squares on the constraint residuals.

All raise :class:`ddn.DDNError` when they fail: infeasible constraints, or no convergence (the
message gives the residual and what to try). Private: nodes call these from ``solve``.
"""
import warnings

import autograd.numpy as anp
import numpy as np
import scipy.optimize
from autograd import grad, hessian, jacobian

from .. import DDNError

_QUIET = "Output seems independent of input"


def quiet(fn, *args):
    """Call an autograd-transformed ``fn`` without autograd's 'independent of input' warning
    (a zero derivative is a legitimate answer here), translating autograd's errors for the two
    usual mistakes into DDNErrors that say what to do."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_QUIET)
        try:
            return fn(*args)
        except (TypeError, ValueError, AttributeError) as e:
            text = str(e)
            if "ArrayBox" in text or "ArrayVSpace" in text:
                raise DDNError(
                    "autograd cannot trace the objective or constraints: write them with "
                    "`import autograd.numpy as anp` (anp.sum, anp.exp, ...), not plain numpy, "
                    "and do not convert to float or assign into arrays inside them. "
                    f"(autograd said: {text})") from e
            if "scalar-output" in text:
                raise DDNError("objective(x, y) must return a scalar (a float, not an array "
                               f"of shape (1,)). (autograd said: {text})") from e
            raise


def _objective(node, x, y0):
    """u ↦ f(x, u), after checking that f returns a finite scalar at the starting point."""
    f0 = node.objective(x, y0)
    if np.ndim(f0) != 0:
        raise DDNError(f"{type(node).__name__}.objective(x, y) must return a scalar, got shape "
                       f"{np.shape(f0)} (use anp.sum(...) or index [0]).")
    if not np.isfinite(f0):
        raise DDNError(f"{type(node).__name__}.solve: f is not finite at the initial guess "
                       f"y0 = {y0} (f = {f0}); give an initial_guess(x) inside the domain.")
    return lambda u: node.objective(x, u)


def newton_solve(node, x):
    """Minimize ``node.objective(x, ·)`` from ``node.initial_guess(x)`` by damped Newton.

    Step: (H + τI) d = −∇f with the smallest τ ≥ 0 that makes the matrix positive definite,
    then backtrack until f decreases (Armijo). Converged when ‖∇_Y f‖∞ ≤ tol·(min(1, s) +
    ‖∇_Y f(y₀)‖∞), s = ‖|H(y₀)|(1 + |y₀|)‖∞ (a small objective c·f converges as f does), or
    when H ≻ 0 and the Newton step is at the rounding level of y (the gradient is then
    rounding noise: with a good initial guess and large terms, e.g. Σeᵘ − xᵀu at x ~ 1e6, that
    noise is above the first threshold, and y could not be improved).

    Returns (y, ctx) with ctx = {"iterations", "residual"}; raises DDNError when it does not
    converge in ``node.max_iter`` iterations.
    """
    y = np.array(node.initial_guess(x), dtype=float).reshape(node.m)
    f = _objective(node, x, y)
    g, Hf = grad(f), hessian(f)
    with np.errstate(all="ignore"):  # a non-finite start is handled just below
        fy, gy = float(f(y)), quiet(g, y)
    if not (np.isfinite(fy) and np.all(np.isfinite(gy))):
        # e.g. a norm ‖u‖ in f at the default guess y0 = 0, where D_Y f is 0/0 = NaN: start
        # from a fixed perturbation of y0 instead, if f is differentiable there
        y1 = _perturbed(y)
        f1, g1 = float(f(y1)), quiet(g, y1)
        if np.isfinite(f1) and np.all(np.isfinite(g1)):
            y, fy, gy = y1, f1, g1
    if not (np.isfinite(fy) and np.all(np.isfinite(gy))):
        raise DDNError(f"{type(node).__name__}.solve: f or D_Y f is not finite at the initial "
                       f"guess y0 = {y} (f = {fy}); give an initial_guess(x) inside the domain.")
    # converged at ‖∇f‖∞ ≤ tol·(min(1, s) + ‖∇f(y0)‖∞), s = ‖|H(y0)|(1 + |y0|)‖∞ the size of
    # D_Y f's terms: for objectives of ordinary size tol·(1 + ‖∇f(y0)‖∞) as before; for a small
    # one proportionally less (f ×1e-12 was 'converged' at y0, ×1e-9 stopped 3.5e-3 off)
    with np.errstate(all="ignore"):
        H0 = np.asarray(quiet(Hf, y), dtype=float).reshape(node.m, node.m)
        s0 = float(np.max(np.abs(H0) @ (1.0 + np.abs(y))))
    s0 = min(1.0, s0) if np.isfinite(s0) else 1.0
    gtol = node.tol * (s0 + np.max(np.abs(gy)))
    for it in range(node.max_iter):
        if not np.all(np.isfinite(gy)) or not np.isfinite(fy):
            break
        H = quiet(Hf, y).reshape(node.m, node.m)
        H = 0.5 * (H + H.T)
        d, tau = _descent_direction(H, gy, s0)
        at_rounding = tau == 0.0 and np.max(np.abs(d)) <= 4 * np.finfo(float).eps * (
            1.0 + np.max(np.abs(y)))
        if np.max(np.abs(gy)) <= gtol or at_rounding:
            # converged; one more full step takes y to machine precision (quadratic
            # convergence), which finite-difference checks of Dy need
            g_new = quiet(g, y + d)
            if np.max(np.abs(g_new)) < np.max(np.abs(gy)):
                y, gy = y + d, g_new
            return y, {"iterations": it, "residual": float(np.max(np.abs(gy)))}
        t, slope = 1.0, float(gy @ d)
        # a trial point may overflow f (e.g. exp of a long first step): that is f = inf, a
        # rejected step, not a numpy RuntimeWarning for the user
        with np.errstate(over="ignore", invalid="ignore"):
            while t > 1e-12 and not float(f(y + t * d)) <= fy + 1e-4 * t * slope:
                t *= 0.5
        if t <= 1e-12:  # no decrease left in f: accept a step only if it shrinks the gradient
            g_new = quiet(g, y + d)
            if np.max(np.abs(g_new)) < np.max(np.abs(gy)):
                t = 1.0
            else:
                break
        y = y + t * d
        fy, gy = float(f(y)), quiet(g, y)
    res = float(np.max(np.abs(gy)))
    if res <= gtol:
        return y, {"iterations": node.max_iter, "residual": res}
    raise DDNError(
        f"{type(node).__name__}.solve: Newton did not converge in {node.max_iter} iterations "
        f"(‖∇_Y f‖∞ = {res:.3g} > {gtol:.3g}). Give a better initial_guess(x), raise max_iter, "
        "or override solve(x).")


def _descent_direction(H, g, floor=1.0):
    """(d, τ): d = −(H + τI)⁻¹ g with the smallest τ in {0, 1e-8·s, 1e-6·s, …} making H + τI
    positive definite (s = max(floor, ‖H‖), floor the size of the objective capped at 1: with
    max(1, ‖H‖) a non-convex objective ×1e-12 took steps 1e-8 of Newton's from an indefinite
    start and did not converge); τ = inf and d = −g when none does."""
    m = H.shape[0]
    s = max(floor, float(np.max(np.abs(H))))
    s = s if 0 < s < np.inf else 1.0
    for tau in (0.0, *(s * 10.0 ** k for k in range(-8, 4))):
        try:
            L = np.linalg.cholesky(H + tau * np.eye(m))
        except np.linalg.LinAlgError:
            continue
        return -np.linalg.solve(L.T, np.linalg.solve(L, g)), tau
    return -g, float("inf")


def _objective_scale(f, y0):
    """max(‖∇f(y0)‖∞, max|∇²f(y0)|), or 1 where that is 0 or not finite: the factor that
    brings a scaled objective (×1e4, ×1e-4) back to size one for scipy's solvers."""
    try:
        g = np.asarray(quiet(grad(f), y0), dtype=float)
        H = np.asarray(quiet(hessian(f), y0), dtype=float)
        s = max(float(np.max(np.abs(g), initial=0.0)), float(np.max(np.abs(H), initial=0.0)))
    except (TypeError, ValueError, ArithmeticError, DDNError):
        return 1.0
    return s if np.isfinite(s) and s > 0 else 1.0


def _residual_scale(r, y0):
    """max(‖r(y0)‖∞, max|D r(y0)|), or 1 where that is 0 or not finite."""
    try:
        with np.errstate(all="ignore"):
            s = max(float(np.max(np.abs(np.asarray(r(y0), dtype=float)), initial=0.0)),
                    float(np.max(np.abs(np.asarray(quiet(jacobian(r), y0), dtype=float)),
                                 initial=0.0)))
    except (TypeError, ValueError, ArithmeticError, DDNError):
        return 1.0
    return s if np.isfinite(s) and s > 0 else 1.0


def constrained_solve(node, x):
    """Minimize ``node.objective(x, ·)`` subject to the node's constraints.

    ``scipy.optimize.minimize`` (``node.method``: "SLSQP" or "trust-constr") from
    ``node.initial_guess(x)``, then Newton on the KKT conditions of the active set
    [∇_Y f − Aᵀλ; h̃] = 0 (a polish to machine precision).

    Returns (y, ctx) with ctx = {"multipliers": (p + q,), "residual", "active"}; raises DDNError
    if no feasible point is found (constraint set empty for this x) or if the KKT residual stays
    above tolerance.
    """
    y0 = np.array(node.initial_guess(x), dtype=float).reshape(node.m)
    f = _objective(node, x, y0)
    # SLSQP is not scale invariant: it stops short of feasibility when f is ×1e4 ("Positive
    # directional derivative for linesearch") and short of stationarity when f is ×1e-4. Hand
    # it f / s with s the size of f's first and second derivatives at y0 (the minimizer does
    # not change); the polish and the checks use f. (trust-constr, an interior-point method,
    # is left unscaled: there scaling moves the point where its barrier iterations stop.)
    s_slsqp = _objective_scale(f, y0)
    s = s_slsqp if node.method == "SLSQP" else 1.0
    sc = min(1.0, s_slsqp)  # stationarity of a small objective is judged ÷ sc (see _scaled)
    cons = []
    p, q = node.num_constraints(x, y0)
    if p:
        heq = lambda u: node._eq(x, u)  # noqa: E731
        cons.append({"type": "eq", "fun": heq, "jac": jacobian(heq)})
    if q:
        neg_g = lambda u: -node._ineq(x, u)  # noqa: E731  scipy wants c(u) >= 0
        cons.append({"type": "ineq", "fun": neg_g, "jac": jacobian(neg_g)})

    def attempt(start, method=node.method, scale=s):
        opts = {"maxiter": node.max_iter}
        if method == "SLSQP":
            opts["ftol"] = 1e-15
        else:
            opts.update(gtol=1e-12, xtol=1e-14)
        fs = lambda u: f(u) / scale  # noqa: E731
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's own chatter; we check the result ourselves
            r = scipy.optimize.minimize(lambda u: float(fs(u)), start, jac=grad(fs),
                                        method=method, constraints=cons, options=opts)
        yy = np.asarray(r.x, dtype=float)
        return r, yy, (node.violation(x, yy) if np.all(np.isfinite(yy)) else np.inf)

    # SLSQP's linearized constraints are singular where the constraint Jacobian is rank
    # deficient, and the default initial guess (zeros) is often such a point (∇‖y‖² = 0 at y = 0)
    res, y, viol = _attempt_with_retry(attempt, y0, node.feas_tol)
    if not viol <= node.feas_tol and p > 1:
        # linearly dependent equality constraints (a row repeated or scaled, consistent) make
        # SLSQP's LSQ subproblem singular ('Singular matrix C'): it stopped at once and a
        # feasible problem was reported as 'no feasible point', even with nonregular='drop'.
        # Hand it a maximal independent set of rows (at y0); the answer is checked on all.
        keep = _independent_equalities(node, x, y0, p)
        if keep is not None:
            cons[0] = {"type": "eq", "fun": (lambda u: node._eq(x, u)[keep]),
                       "jac": jacobian(lambda u: node._eq(x, u)[keep])}
            res2, y2, viol2 = _attempt_with_retry(attempt, y0, node.feas_tol)
            if not viol2 >= viol:
                res, y, viol = res2, y2, viol2
    if not viol <= node.feas_tol and np.isfinite(viol) and np.all(np.isfinite(y)):
        # SLSQP can stop a few hundred ulps outside a constraint ×1e9 ('Positive directional
        # derivative'), above the rounding allowance: the KKT polish (Newton, the constraints
        # linearized) takes such a point onto the surface
        y_p = polish_kkt(node, x, y, scale=s)
        viol_p = node.violation(x, y_p)
        if viol_p < viol:
            y, viol = y_p, viol_p
    if not viol <= node.feas_tol:
        raise DDNError(
            f"{type(node).__name__}.solve: no feasible point found (max constraint violation "
            f"{viol:.3g} > {node.feas_tol:.3g}; {node.method}: {res.message!s}). The constraint "
            "set may be empty for this x: check the constraints, or give an initial_guess(x) / "
            "your own solve(x).")
    y = polish_kkt(node, x, y, scale=s)
    if node.method == "trust-constr":
        def better(start, method, scale, y, res, kkt):
            """Run ``method`` on f/scale from ``start``; keep its polished answer if better."""
            res2, y2, viol2 = attempt(start, method, scale)
            if viol2 <= node.feas_tol:
                y2 = polish_kkt(node, x, y2, scale=scale)
                kkt2 = node.kkt_residual(x, y2)
                if _scaled(kkt2, sc) < _scaled(kkt, sc):
                    return y2, res2, kkt2
            return y, res, kkt

        kkt = node.kkt_residual(x, y)
        if not _scaled(kkt, sc) <= kkt["tol"]:
            # trust-constr (interior point) stops strictly inside an active inequality (g ≈
            # −1e-6, far outside the active tolerance), so the KKT conditions miss it and a
            # plain projection onto a ball was "did not converge"; on f ×1e-4 it stops on xtol
            # before stationarity. An active-set method (SLSQP, on f/s) run from that point
            # identifies the active set; keep its answer if it is better.
            y, res, kkt = better(y, "SLSQP", s_slsqp, y, res, kkt)
        if not _scaled(kkt, sc) <= kkt["tol"] and s_slsqp != 1.0:
            # on f ×1e-6 its steps are as small as the gradient: it ran out of iterations 0.5
            # away from the answer (1 random ball projection in 20), too far for SLSQP to end
            # feasible. Run it once more on f/s (only now, so that answers it finds are
            # unchanged), then SLSQP from there as above.
            y, res, kkt = better(y0, "trust-constr", s_slsqp, y, res, kkt)
            if not _scaled(kkt, sc) <= kkt["tol"]:
                y, res, kkt = better(y, "SLSQP", s_slsqp, y, res, kkt)
    return _finish(node, x, y, res.message, sc)


def _independent_equalities(node, x, y0, p):
    """Indices of a maximal set of linearly independent rows of D_Y h at y0 (or at the perturbed
    start where D_Y h(y0) = 0), or None when the rows are independent or D_Y h is not usable."""
    from ._linalg import independent_rows
    try:
        for y in (y0, _perturbed(y0)):  # D_Y h = 0 at y0 (‖y‖² = 1 at 0): the second start
            A = np.asarray(quiet(jacobian(lambda u: node._eq(x, u)), y), dtype=float)
            A = A.reshape(p, -1)
            if np.any(A):
                break
        if not np.all(np.isfinite(A)) or not np.any(A):
            return None
        keep = independent_rows(A)
    except (TypeError, ValueError, ArithmeticError, DDNError, np.linalg.LinAlgError):
        return None
    return keep if 0 < keep.size < p else None


def _attempt_with_retry(attempt, y0, feas_tol):
    """``attempt(start) -> (res, y, violation)`` from ``y0``; if that ends infeasible, once more
    from a fixed small perturbation of ``y0`` (a degenerate default guess), keeping the better."""
    res, y, viol = attempt(y0)
    if not viol <= feas_tol:
        res2, y2, viol2 = attempt(_perturbed(y0))
        if viol2 <= feas_tol or not viol2 >= viol:
            res, y, viol = res2, y2, viol2
    return res, y, viol


def _perturbed(y0):
    """y0 moved by a fixed (seeded) random step of length 0.1·max(1, ‖y0‖∞): a second start for
    a solver that stalled where the constraint Jacobian is rank deficient (e.g. ∇‖y‖² = 0 at
    the default initial guess y0 = 0)."""
    u = np.random.default_rng(0).standard_normal(y0.size)
    return y0 + 0.1 * max(1.0, float(np.max(np.abs(y0)))) * u / np.linalg.norm(u)


def feasibility_solve(node, x):
    """Find u with h(x, u) = 0 and g(x, u) ≤ 0 by least squares on [h; max(g, 0)] from
    ``node.initial_guess(x)``, then polish by Newton on the active constraints. If that ends
    infeasible, retry once from a fixed perturbation of the initial guess (least squares stalls
    where D_Y h is rank deficient, e.g. at y0 = 0 for h = ‖y‖² − 1, the default guess)."""
    y0 = np.array(node.initial_guess(x), dtype=float).reshape(node.m)

    def r(u):
        parts = [node._eq(x, u)]
        if node.num_constraints(x, u)[1]:
            parts.append(anp.maximum(node._ineq(x, u), 0.0))
        return anp.concatenate(parts)

    # least squares on r / s, s the size of r and D_Y r at y0 (the same zeros): with the
    # constraints ×1e-9 its gradient test (gtol on Jᵀr ~ 1e-18) stopped at y0 at once
    s = _residual_scale(r, y0)
    rs = lambda u: r(u) / s  # noqa: E731

    def attempt(start):
        res = scipy.optimize.least_squares(rs, start, jac=jacobian(rs), xtol=1e-15, ftol=1e-15,
                                           gtol=1e-15, max_nfev=50 * node.max_iter)
        y = polish_kkt(node, x, np.asarray(res.x, dtype=float))
        return res, y, node.violation(x, y)

    res, y, viol = _attempt_with_retry(attempt, y0, node.feas_tol)
    if not viol <= node.feas_tol:
        raise DDNError(
            f"{type(node).__name__}.solve: no point satisfies the constraints (max violation "
            f"{viol:.3g} > {node.feas_tol:.3g}): the feasible set may be empty for this x, or "
            "initial_guess(x) is too far from it.")
    return _finish(node, x, y, res.message)


def _scaled(kkt, sc):
    """The KKT residual with stationarity ÷ sc, sc = min(1, size of f): tol·(1 + ‖D_Y f‖∞) is
    absolute for a small objective c·f, and trust-constr's answer for f ×1e-12 (0.56 from the
    ball projection, or y0 itself) passed it without a word."""
    return max(kkt["stationarity"] / sc, kkt["feasibility"])


def _finish(node, x, y, message, sc=1.0):
    kkt = node.kkt_residual(x, y)
    if not _scaled(kkt, sc) <= kkt["tol"]:
        raise DDNError(
            f"{type(node).__name__}.solve: did not converge (KKT residual {kkt['residual']:.3g}"
            f" > {kkt['tol']:.3g}; solver said: {message!s}). Raise max_iter, give a better "
            "initial_guess(x), or override solve(x).")
    return y, {"multipliers": kkt["multipliers"], "residual": kkt["residual"],
               "active": kkt["active"]}


def polish_kkt(node, x, y, iters=20, scale=1.0):
    """Newton (least-squares steps, so non-regular points do not break it) on the KKT system
    F(y, λ) = [∇_Y f − Aᵀλ; h̃] = 0 of the equality and active inequality constraints. Stops as
    soon as a step does not reduce ‖F‖ or would violate an inactive constraint, or when the step
    is at rounding level (not at a residual threshold: ‖F‖ ≤ 1e-3·tol is no accuracy in y for an
    objective ×1e-4, whose stationarity residual is 1e-4 times smaller for the same error).
    Progress is measured by max(‖∇_Y f − Aᵀλ‖∞ / scale, constraint residual), ``scale`` the size
    of f (see ``_objective_scale``), so that rounding in h does not stop it while a small f is
    still far from stationary. The constraint residual is divided likewise by the size of
    D_Y h̃ (a distance): for h ×1e-9 a y 5e-9 off the sphere had a residual of 1e-17 and the
    polish stopped there."""
    def merit(k):  # the constraints as written (not at violation()'s scale): ÷ hscale here
        return max(k["stationarity"] / scale, k["feasibility_raw"] / hscale)

    best = node.kkt_residual(x, y)
    A0 = node.active_jacobian(x, y, best["active"])
    hscale = float(np.max(np.abs(A0), initial=0.0))
    hscale = hscale if 0 < hscale < np.inf else 1.0
    for _ in range(iters):
        if max(best["stationarity"], best["feasibility_raw"]) == 0.0:
            break
        act = best["active"]
        lam = best["lam_active"]
        A = node.active_jacobian(x, y, act)
        H = node.lagrangian_hessian(x, y, lam, act)
        k = A.shape[0]
        # the constraint rows (and multipliers) ×c, c = |H|/|A|: with f ×1e9 (or h ×1e-9) K's
        # singular values were 3e9 and 1e-9, lstsq cut the small one, the step was 0 and y
        # stayed 6e-9 infeasible (2e-9 off, Dy failing its check); dy is unchanged by c
        hmax, amax = float(np.max(np.abs(H), initial=0.0)), float(np.max(np.abs(A), initial=0.0))
        c = hmax / amax if hmax > 0 and amax > 0 and np.isfinite(hmax / amax) else 1.0
        K = np.block([[H, -c * A.T], [c * A, np.zeros((k, k))]])
        F = np.concatenate([best["grad_f"] - A.T @ lam, c * node.active_constraints_np(x, y, act)])
        step = np.linalg.lstsq(K, -F, rcond=None)[0]
        y_new = y + step[: node.m]
        if not np.all(np.isfinite(y_new)):
            break
        try:
            new = node.kkt_residual(x, y_new)
        except DDNError:  # the step left the domain (D_Y f or D_Y h̃ not finite): keep y
            break
        if not (merit(new) < merit(best) and node.violation(x, y_new) <= node.feas_tol):
            break
        y, best = y_new, new
        if np.max(np.abs(step[: node.m])) <= 4 * np.finfo(float).eps * (1 + np.max(np.abs(y))):
            break
    return y
