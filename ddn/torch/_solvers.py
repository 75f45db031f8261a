"""Default forward solvers, batched and written in torch ops (private).

So that a user can write only the objective (and constraints):

- :func:`newton`: unconstrained ``min_y f(y)``, Newton with a Levenberg shift where ``H`` is not
  positive definite and a backtracking (Armijo) line search, per batch element; a stationary point
  with a negative curvature direction (a saddle or maximum, e.g. the start ``y0 = 0`` of a
  symmetric problem) is left along that direction.
- :func:`newton_kkt`: ``∇_z ℒ(z) = 0`` for ``z = (y, λ)`` (equality-constrained SQP), Newton on the
  KKT system with a backtracking line search on ``‖∇ℒ‖``. Converges locally; it finds a KKT point
  (not necessarily a minimum) from the initial guess.
- :func:`augmented_lagrangian`: adds inequalities ``g ≤ 0`` by the method of multipliers (inner
  :func:`newton`), then polishes the active set with :func:`newton_kkt`.

With ``differentiable=True`` (linear_solver="unroll") every step keeps its graph, so autograd can
differentiate through the iterations; one extra full Newton step is taken at the end so that the
derivative of the iterates has converged too.
"""
import torch

from ._implicit import batched_hessian, gradient_scale
from . import _linalg

__all__ = []


def _grad_and_hessian(fn, y, differentiable):
    with torch.enable_grad():
        if differentiable and y.requires_grad:
            yk = y
        else:
            yk = y.detach().requires_grad_(True)
        f = fn(yk)
        (g,) = torch.autograd.grad(f.sum(), yk, create_graph=True)
        H = batched_hessian(g, yk, create_graph=differentiable)
    if not differentiable:
        f, g = f.detach(), g.detach()
    return f, g, H


def _shifted_cholesky(H):
    """Cholesky of ``H + μI`` with the smallest μ in {0, 1e-8·s, 1e-7·s, …} that works, per element."""
    b, m, _ = H.shape
    eye = torch.eye(m, dtype=H.dtype, device=H.device)
    scale = 1.0 + H.detach().diagonal(dim1=-2, dim2=-1).abs().amax(-1)
    mu = torch.zeros_like(scale)
    L, info = torch.linalg.cholesky_ex(H)
    k = 0
    while bool((info != 0).any()) and k < 20:
        bad = info != 0
        mu = torch.where(bad, torch.where(mu == 0, 1e-8 * scale, 10 * mu), mu)
        L, info = torch.linalg.cholesky_ex(H + mu[:, None, None] * eye)
        k += 1
    return L, mu


def _scale(K, z):
    """``‖K (1 + |z|)‖_∞`` per element: the size of the gradient's terms (gradient_scale)."""
    Kd = K.detach()
    return gradient_scale((Kd @ (1 + z.detach().abs()).unsqueeze(-1)).squeeze(-1))


def _escape_saddles(fn, y, f0, H, conv):
    """At converged elements whose ``H`` has a clearly negative eigenvalue (a saddle or maximum:
    ``∇f = 0`` there, e.g. ``y0 = 0`` for a symmetric double well), a step along the eigenvector of
    the most negative eigenvalue (either sign, halved until ``f`` decreases). Returns ``(step,
    moved)`` or None. Newton alone never leaves such a point: its step is ``−H⁻¹∇f = 0``."""
    idx = conv.nonzero().squeeze(1)
    if idx.numel() == 0:
        return None
    Hc = H[idx]
    _, info = torch.linalg.cholesky_ex(Hc)
    keep = info != 0  # only elements that are not positive definite need the eigenvalues
    if not bool(keep.any()):
        return None
    idx, Hc = idx[keep], Hc[keep]
    ev, V = torch.linalg.eigh(0.5 * (Hc + Hc.mT))
    neg = ev[:, 0] < -torch.finfo(H.dtype).eps ** 0.5 * ev.abs().amax(-1).clamp_min(1.0)
    if not bool(neg.any()):
        return None  # positive semidefinite to round-off: a (flat) minimum
    idx, d, lmin = idx[neg], V[neg][:, :, 0], ev[neg, 0]
    t = 1.0 + y[idx].norm(dim=-1)
    ok = torch.zeros_like(lmin, dtype=torch.bool)
    best = torch.zeros_like(d)
    with torch.no_grad():
        for _ in range(40):
            trial = []
            for sgn in (1.0, -1.0):
                Y = y.clone()
                Y[idx] = y[idx] + sgn * t.unsqueeze(-1) * d
                trial.append(fn(Y)[idx])
            sgn = torch.where(trial[0] <= trial[1], 1.0, -1.0)
            fnew = torch.minimum(trial[0], trial[1])
            dec = ~ok & (fnew < f0[idx] - 1e-4 * t * t * lmin.abs())
            best = torch.where(dec.unsqueeze(-1), (sgn * t).unsqueeze(-1) * d, best)
            ok = ok | dec
            if bool(ok.all()):
                break
            t = torch.where(ok, t, 0.5 * t)
    if not bool(ok.any()):
        return None
    step = torch.zeros_like(y)
    step[idx[ok]] = best[ok]
    moved = torch.zeros_like(conv)
    moved[idx[ok]] = True
    return step, moved


def newton(fn, y0, *, tol, max_iter, differentiable=False, max_backtrack=40, scale=None):
    """Minimise ``fn(y) -> (b,)`` over ``y`` (b, m) from ``y0``.

    Returns ``(y, info)``, ``info = {"converged": (b,) bool, "iterations": int, "grad_norm": (b,),
    "scale": (b,)}``; converged means ``‖∇f‖ ≤ tol · s`` with ``s = ‖H (1 + |y|)‖_∞``,
    ``H = D²_YY f`` (see ``_implicit.gradient_scale``): relative to the size of the gradient's terms,
    so an objective multiplied by 10⁴ converges at the same iterate (an absolute test would ask
    float32 for a gradient below its round-off). ``scale`` (b,) fixes ``s`` instead (the
    augmented Lagrangian passes that of ``f``: its penalty term must not loosen the test).
    """
    y = y0 if differentiable else y0.detach()
    b = y.shape[0]
    rt = 100 * torch.finfo(y.dtype).eps  # f is flat to round-off within rt·(1 + |f|)
    gn = torch.full((b,), float("inf"), dtype=y.dtype, device=y.device)
    sc = torch.ones_like(gn)
    it = 0
    for it in range(max_iter + 1):
        f, g, H = _grad_and_hessian(fn, y, differentiable)
        gn = g.detach().norm(dim=-1)
        sc = _scale(H, y) if scale is None else scale  # s = ‖H (1 + |y|)‖_∞
        conv = gn <= tol * sc
        if it < max_iter:
            esc = _escape_saddles(fn, y.detach(), f.detach(), H.detach(), conv)
            if esc is not None:  # leave the saddles and maxima, then Newton again
                y = y + esc[0]
                continue
        if bool(conv.all()) or it == max_iter:
            if differentiable and y.requires_grad:
                # one full Newton step for all: the derivative of the iterate converges too
                L, _ = _shifted_cholesky(H)
                y = y - torch.cholesky_solve(g.unsqueeze(-1), L).squeeze(-1)
            break
        L, _ = _shifted_cholesky(H.detach())
        d = -torch.cholesky_solve(g.detach().unsqueeze(-1), L).squeeze(-1)
        with torch.no_grad():
            t = torch.ones_like(gn)
            f0 = f.detach()
            slope = (g.detach() * d).sum(-1)
            yd = y.detach()
            for _ in range(max_backtrack):
                fn_new = fn(yd + t.unsqueeze(-1) * d)
                ok = (fn_new <= f0 + 1e-4 * t * slope) | conv
                # round-off near the minimum: accept a step that does not increase f
                ok = ok | ((fn_new - f0).abs() <= rt * (1 + f0.abs()))
                if bool(ok.all()):
                    break
                t = torch.where(ok, t, 0.5 * t)
            t = torch.where(conv | ~ok, torch.zeros_like(t), t)
        if differentiable:
            # Newton step with graph: y ← y − t H⁻¹ ∇f
            Ld, _ = _shifted_cholesky(H)
            d = -torch.cholesky_solve(g.unsqueeze(-1), Ld).squeeze(-1)
        y = y + t.unsqueeze(-1) * d
        if not bool((t > 0).any()):
            break  # every unconverged element stalled (round-off); report below
    if not differentiable:
        y = y.detach()
    return y, {"converged": gn <= tol * sc, "iterations": it, "grad_norm": gn, "scale": sc}


def _kkt_step(K, g, differentiable):
    """The Newton step ``d = −K⁺g`` on the KKT system. Where ``K`` is singular (rank-deficient or
    vanishing constraint gradients, e.g. a repeated linear constraint, or ``∇‖y‖² = 0`` at ``y = 0``)
    the least-norm (pseudo-inverse) step is taken: a plain LU solve there returns a step with
    multipliers of size 1/eps, whose terms then swamp the scale of the convergence test, so that an
    infeasible y was reported as converged. Under ``differentiable`` the pseudo-inverse steps carry
    no graph (the derivative of ``pinv`` where the rank changes is NaN); the final full Newton step
    at a regular solution gives the iterate its derivative. Returns ``(d, singular)``."""
    d0, info = _linalg.solve_dense(K.detach(), g.detach(), singular="pinv")
    piv = info["pinv"]
    if not differentiable:
        return -d0, piv
    if not bool(piv.any()):
        return -_linalg.solve_dense(K, g)[0], piv
    eye = torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)
    dg = _linalg.solve_dense(torch.where(piv[:, None, None], eye, K), g)[0]
    return -torch.where(piv[:, None], d0, dg), piv


def _blocks_converged(K, z, g, tol, n_primal):
    """Each block of the KKT residual on its own scale: ``‖∇_y ℒ‖ ≤ tol · s_y`` and ``‖h‖ ≤ tol · s_h``
    with ``s = ‖|K| u‖_∞`` over the block's rows, ``u = [1 + |y|; |λ|]``: ``s_y`` is the size of the
    terms of ``∇f − Aᵀλ`` (``|H|(1 + |y|) + |A|ᵀ|λ|``), ``s_h`` that of the constraints' terms
    (``|A|(1 + |y|)``). The joint scale ``s`` of the whole residual mixes them:
    - for an objective ``c·f`` with ``c ≪ 1`` it is set by the constraint rows (O(‖A‖)) and the
      ``1 +`` of the multipliers, so ``∇_y ℒ`` stopped at ``tol · ‖A‖``: multipliers (of size ``c``)
      wrong by ``tol / c`` relative, a float32 gradient wrong by ~1e-3 at ``c = 10⁻⁴``;
    - near rank-deficient constraints the multipliers grow huge (1e7) and ``Aᵀ|λ|`` in ``s`` let a
      constraint violation of 1e-3 pass as converged in float64."""
    m = n_primal
    zd = z.detach()
    u = torch.cat([1 + zd[:, :m].abs(), zd[:, m:].abs()], -1)
    Ku = (K.detach().abs() @ u.unsqueeze(-1)).squeeze(-1)
    gd = g.detach()
    return ((gd[:, :m].norm(dim=-1) <= tol * gradient_scale(Ku[:, :m]))
            & (gd[:, m:].norm(dim=-1) <= tol * gradient_scale(Ku[:, m:])))


def newton_kkt(lagr, z0, *, tol, max_iter, differentiable=False, max_backtrack=30, n_primal=None):
    """Solve ``∇_z ℒ(z) = 0`` (``lagr(z) -> (b,)``) by Newton's method on the (symmetric, indefinite)
    KKT matrix ``K = ∇²_zz ℒ`` with a backtracking line search on ``‖∇ℒ‖``.

    Returns ``(z, info)`` with ``converged`` (``‖∇ℒ‖ ≤ tol · s``, ``s = ‖K (1 + |z|)‖_∞``, the
    size of the gradient's terms, as in :func:`newton`), ``iterations``, ``grad_norm``, ``scale``,
    ``stalled`` (unconverged elements whose line search found no decrease at some iteration: the
    Newton direction was useless there, e.g. a singular KKT matrix — not merely out of iterations),
    ``singular_end`` (with ``differentiable``: the KKT matrix is singular at the final iterate, so
    the iterate has no derivative there). ``n_primal`` (the size of ``y`` in ``z``): converged
    also needs each block (stationarity, constraints) on its own scale (see :func:`_blocks_converged`).
    """
    z = z0 if differentiable else z0.detach()

    def F_of(zz):
        with torch.enable_grad():
            zk = zz.detach().requires_grad_(True)
            (gk,) = torch.autograd.grad(lagr(zk).sum(), zk)
        return gk

    gn = sc = None
    stalled = torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
    singular_end = torch.zeros_like(stalled)
    it = 0
    for it in range(max_iter + 1):
        _, g, K = _grad_and_hessian(lagr, z, differentiable)
        gn = g.detach().norm(dim=-1)
        sc = _scale(K, z)  # s = ‖K (1 + |z|)‖_∞
        conv = gn <= tol * sc
        if n_primal is not None and 0 < n_primal < z.shape[1]:
            conv = conv & _blocks_converged(K, z, g, tol, n_primal)
        if bool(conv.all()) or it == max_iter:
            if differentiable and z.requires_grad:
                d, singular_end = _kkt_step(K, g, True)
                z = z + d
            break
        d, _ = _kkt_step(K, g, False)
        d = torch.nan_to_num(d)
        with torch.no_grad():
            t = torch.ones_like(gn)
            zd = z.detach()
            for _ in range(max_backtrack):
                gnew = F_of(zd + t.unsqueeze(-1) * d).norm(dim=-1)
                ok = (gnew <= (1 - 1e-4 * t) * gn) | conv
                if bool(ok.all()):
                    break
                t = torch.where(ok, t, 0.5 * t)
            t = torch.where(conv | ~ok, torch.zeros_like(t), t)
            stalled = stalled | (~conv & ~ok)
        if differentiable:
            d, _ = _kkt_step(K, g, True)
        z = z + t.unsqueeze(-1) * d
        if not bool((t > 0).any()):
            break
    if not differentiable:
        z = z.detach()
    return z, {"converged": conv, "iterations": it, "grad_norm": gn, "scale": sc,
               "stalled": stalled & ~conv, "singular_end": singular_end}


def augmented_lagrangian(f, h, g, y0, *, tol, max_iter, active_tol, max_outer=40, rho0=10.0,
                         polish_max_iter=20):
    """``min_y f(y)  s.t.  h(y) = 0, g(y) ≤ 0`` (each ``(b, ·)`` or None) by the method of multipliers:

        ℒ_ρ(y) = f − λ_hᵀh + ρ/2 ‖h‖² + 1/(2ρ) Σ (max(0, μ + ρ g)² − μ²),
        λ_h ← λ_h − ρ h,   μ ← max(0, μ + ρ g),

    then Newton on the KKT system of the equality and active constraints (``μ > 0`` or
    ``g > −active_tol``) to polish. Multipliers are returned in ddn's sign convention
    (``L = f − λᵀ[h; g]``, so active inequalities have ``λ ≤ 0``). Not differentiable (no unroll).

    Returns ``(y, lam, active, info)``. ``polish_max_iter``: iterations of the final Newton-KKT.
    """
    y = y0.detach()
    b = y.shape[0]
    h0 = h(y) if h is not None else None
    g0 = g(y) if g is not None else None
    p = 0 if h0 is None else h0.shape[-1]
    q = 0 if g0 is None else g0.shape[-1]
    lam_h = y.new_zeros(b, p)
    mu = y.new_zeros(b, q)
    rho = torch.full((b,), rho0, dtype=y.dtype, device=y.device)
    prev = torch.full_like(rho, float("inf"))
    inner_ok = torch.ones(b, dtype=torch.bool, device=y.device)
    for _ in range(max_outer):
        lh, mu_, r = lam_h, mu, rho

        def aug(yy, lh=lh, mu_=mu_, r=r):
            val = f(yy)
            if p:
                hv = h(yy)
                val = val - (lh * hv).sum(-1) + 0.5 * r * (hv * hv).sum(-1)
            if q:
                gv = g(yy)
                val = val + ((torch.relu(mu_ + r.unsqueeze(-1) * gv) ** 2 - mu_ ** 2).sum(-1)) / (2 * r)
            return val

        # the inner test is relative to the scale of f's gradient terms, not of the penalty ρ‖h‖²
        # (at a constrained solution ∇f = Aᵀλ ≠ 0 is one of those terms: a linear f has D²f = 0)
        _, gf, Hf = _grad_and_hessian(f, y, False)
        sf = torch.maximum(_scale(Hf, y), gf.abs().amax(-1))
        y, ninfo = newton(aug, y, tol=tol, max_iter=max_iter, scale=sf)
        inner_ok = ninfo["converged"]
        with torch.no_grad():
            viol = y.new_zeros(b)
            if p:
                hv = h(y)
                lam_h = lam_h - rho.unsqueeze(-1) * hv
                viol = torch.maximum(viol, hv.abs().amax(-1))
            if q:
                gv = g(y)
                viol = torch.maximum(viol, torch.maximum(gv, -mu / rho.unsqueeze(-1)).abs().amax(-1))
                mu = torch.relu(mu + rho.unsqueeze(-1) * gv)
            if bool((viol <= tol).all()):
                break
            rho = torch.where(viol > 0.25 * prev, (10 * rho).clamp_max(1e8), rho)
            prev = viol
    with torch.no_grad():
        active = torch.zeros(b, q, dtype=torch.bool, device=y.device)
        if q:
            # Active: a positive AL multiplier, or g = 0 to the solver's accuracy. Not the looser
            # active_tol: the polish below forces active constraints to g = 0, which would move y
            # by up to active_tol (1e-3 in float32) for a constraint that is inactive at −5e-4.
            active = (mu > 0) | (g(y) > -min(active_tol, 10 * tol))
    mask = torch.cat([torch.ones(b, p, dtype=torch.bool, device=y.device), active], -1)

    def lagr(zz):
        yy, lam = zz[:, :y.shape[1]], zz[:, y.shape[1]:]
        cons = torch.cat([c for c in (h(yy) if p else None, g(yy) if q else None) if c is not None], -1)
        return f(yy) - (mask * lam * cons).sum(-1) - 0.5 * ((~mask) * lam * lam).sum(-1)

    lam0 = torch.cat([lam_h, -mu], -1) * mask
    z, kinfo = newton_kkt(lagr, torch.cat([y, lam0], -1), tol=tol, max_iter=polish_max_iter,
                          n_primal=y.shape[1])
    y_pol, lam_pol = z[:, :y.shape[1]], z[:, y.shape[1]:]
    # keep the polished point only where it is a valid KKT point of the original problem
    with torch.no_grad():
        good = kinfo["converged"]
        if q:
            gp = g(y_pol)
            # feasible for every constraint (an inactive one must not be crossed by the polish)
            good = good & (gp <= active_tol).all(-1) & ((lam_pol[:, p:] <= active_tol) | ~active).all(-1)
        y = torch.where(good.unsqueeze(-1), y_pol, y)
        lam = torch.where(good.unsqueeze(-1), lam_pol, lam0)
    return y, lam, active, {"converged": good | inner_ok & (viol <= 10 * tol)}
