"""Batched linear solvers for the implicit-function step (private).

Every solver takes a batch of symmetric systems ``K w = r`` (``K`` is ``(b, N, N)`` or given as a
matrix-free product ``u -> K u``, ``r`` is ``(b, N)``) and returns ``w`` together with a dict of
per-element diagnostics, so that the caller can name the degenerate batch elements.

- :func:`solve_dense`: Cholesky; elements whose ``K`` is not positive definite fall back to LU with
  a residual check, then to an unbatched float64 solve (a guard against the batched-LU trouble
  seen on some MKL builds); optional pseudo-inverse for singular elements.
- :func:`cg`: conjugate gradients (``K`` symmetric positive definite), flags negative curvature.
- :func:`minres`: MINRES (``K`` symmetric, possibly indefinite: KKT systems).

All are written in torch ops, so they are differentiable (double-backward) where the factorisations
are.
"""
import torch

__all__ = []


def eps_of(dtype):
    return torch.finfo(dtype).eps


def default_cond_max(dtype):
    """Condition number above which a matrix is called singular: ``0.1 / eps``."""
    return 0.1 / eps_of(dtype)


def _rel_residual(K, w, r):
    Kw = (K @ w.unsqueeze(-1)).squeeze(-1)
    num = (Kw - r).norm(dim=-1)
    den = K.flatten(1).norm(dim=-1) * w.norm(dim=-1) + r.norm(dim=-1)
    return num / torch.where(den > 0, den, torch.ones_like(den))


def solve_dense(K, r, *, singular=None, cond_max=None, n_primal=None):
    """Solve the batch ``K w = r`` with symmetric ``K`` (b, N, N), ``r`` (b, N).

    Returns ``w`` (b, N) and ``info`` with per-element tensors: ``pd`` (Cholesky succeeded),
    ``cond`` (positive definite elements: an estimate from the Cholesky factor's diagonal, a lower
    bound; the others: exact, from the eigenvalues of ``D K D`` (``D`` diagonal, Ruiz: rows of unit max-norm),
    the symmetrically equilibrated matrix that is solved, so an objective scaled by 10⁴ in a KKT matrix
    does not read as ill-conditioned), ``singular`` (cond above ``cond_max``, non-finite,
    or a bad LU residual), ``linear_residual`` (relative residual ``‖Kw − r‖ / (‖K‖‖w‖ + ‖r‖)`` of
    the LU-solved elements; 0 for the Cholesky-solved ones, whose solve is backward stable, so the
    residual is not computed there), ``pinv`` (elements solved by pseudo-inverse), ``n_negative``
    (number of negative eigenvalues of the elements that are not positive definite; 0 for the
    others: the inertia that tells a KKT minimum from a saddle).
    ``singular="pinv"`` solves the singular elements with ``K⁺`` (singular values below
    ``σ_max / cond_max`` dropped); otherwise they keep whatever the factorisation gave.
    ``n_primal``: for a KKT matrix ``[[H, −Aᵀ], [−A, C]]``, the size of the ``H`` block. The
    equilibration then starts from the block scaling ``α = ‖H‖^{-1/2}`` (primal rows),
    ``β = 1 / (α ‖A‖)`` (the rest), which brings both blocks to unit size: an objective ``c·f``
    with ``c ≪ 1`` next to O(1) constraints has cond ~ 1/c unscaled (its rows already have unit
    max-norm through ``A``, so Ruiz alone leaves it as it is), and lost 1/c digits in float32.
    """
    b, N = r.shape
    dtype, dev = K.dtype, K.device
    if cond_max is None:
        cond_max = default_cond_max(dtype)
    eye = torch.eye(N, dtype=dtype, device=dev).expand(b, N, N)
    # one reduction per element: NaN/Inf anywhere in K or r makes the sum non-finite
    finite = torch.isfinite(K.detach().sum((-1, -2)) + r.detach().sum(-1))
    all_finite = bool(finite.all())
    Kc = K if all_finite else torch.where(finite[:, None, None], K, eye)
    rc = r if all_finite else torch.where(finite[:, None], r, torch.zeros_like(r))

    with torch.no_grad():
        L0, info0 = torch.linalg.cholesky_ex(Kc.detach())
        pd = (info0 == 0) & finite
        d = L0.diagonal(dim1=-2, dim2=-1).abs()
        dmin = d.min(-1).values
        cond = torch.where(pd & (dmin > 0), (d.max(-1).values / torch.where(dmin > 0, dmin, 1)) ** 2,
                           torch.full_like(dmin, float("inf")))
    w = torch.zeros_like(rc)
    if pd.any():
        if pd.all() and not Kc.requires_grad:
            L = L0
        else:
            L = torch.linalg.cholesky(torch.where(pd[:, None, None], Kc, eye))
        # K w = r as L (Lᵀ w) = r: two triangular solves (no copy of L, unlike cholesky_solve)
        u = torch.linalg.solve_triangular(L, rc.unsqueeze(-1), upper=False)
        wc = torch.linalg.solve_triangular(L.mT, u, upper=True).squeeze(-1)
        w = torch.where(pd[:, None], wc, w)
    n_neg = torch.zeros(b, dtype=torch.long, device=dev)  # negative eigenvalues (inertia)
    bad = (~pd) & finite
    if bad.any():
        idx = bad.nonzero().squeeze(1)
        Kb0, rb0 = Kc[idx], rc[idx]
        with torch.no_grad():
            # Symmetric (Ruiz) equilibration D K D, D ← D / √max_j |(DKD)_ij| a few times: a KKT
            # matrix [[cH, −Aᵀ], [−A, 0]] of an objective scaled by c has cond ~ c² unscaled but
            # the same cond (and, by Sylvester's law, the same inertia) after scaling. Its solve
            # w = D (DKD)⁻¹ D r is the same w.
            D = torch.ones(Kb0.shape[:2], dtype=dtype, device=dev)
            m = N if n_primal is None else int(n_primal)
            if 0 < m < N:
                # block scaling first: D = [α; β], α² ‖H‖ = 1, αβ ‖A‖ = 1 (Ruiz keeps it)
                Kd = Kb0.detach()
                hmax = Kd[:, :m, :m].abs().flatten(1).amax(-1)
                amax = Kd[:, m:, :m].abs().flatten(1).amax(-1)
                use = (hmax > 0) & (amax > 0) & torch.isfinite(hmax) & torch.isfinite(amax)
                hs = torch.where(use, hmax, torch.ones_like(hmax))
                al = hs.rsqrt()
                be = torch.where(use, hs.sqrt() / torch.where(use, amax, torch.ones_like(amax)),
                                 torch.ones_like(amax))
                D = torch.cat([al.unsqueeze(-1).expand(-1, m), be.unsqueeze(-1).expand(-1, N - m)], -1)
            for _ in range(8):
                rmax = (D.unsqueeze(-1) * Kb0.detach() * D.unsqueeze(-2)).abs().amax(-1)
                D = D * torch.where(rmax > 0, rmax.rsqrt(), torch.ones_like(rmax))
        Kb = D.unsqueeze(-1) * Kb0 * D.unsqueeze(-2)
        rb = D * rb0
        with torch.no_grad():
            # not positive definite: exact condition and inertia from the eigenvalues
            Ksym = 0.5 * (Kb + Kb.transpose(-1, -2)).detach()
            ev = torch.linalg.eigvalsh(Ksym)
            umin = ev.abs().min(-1).values
            cond_b = torch.where(umin > 0, ev.abs().max(-1).values / torch.where(umin > 0, umin, 1),
                                 torch.full_like(umin, float("inf")))
            # eigenvalues below −N·eps·max|λ| count as negative (zeros are the singular case)
            neg_b = (ev < -N * eps_of(dtype) * ev.abs().max(-1, keepdim=True).values).sum(-1)
        wb = torch.linalg.solve_ex(Kb, rb)[0]
        res_b = _rel_residual(Kb, wb, rb).detach()
        tol = 100 * N * eps_of(dtype)
        retry = ~(res_b <= tol)  # catches NaN too
        if retry.any():
            # Unbatched float64 solve per element: guards against the batched-LU trap.
            rows = []
            for j in range(wb.shape[0]):
                if retry[j]:
                    sol = torch.linalg.solve_ex(Kb[j].double(), rb[j].double())[0].to(dtype)
                    rows.append(sol)
                else:
                    rows.append(wb[j])
            wb = torch.stack(rows)
        wb = D * wb
        w = w.index_put((idx,), wb)
        cond = cond.index_put((idx,), cond_b)
        n_neg = n_neg.index_put((idx,), neg_b)
    # The residual is checked where LU was used. A successful Cholesky solve is backward stable
    # (relative residual O(N eps) whatever the conditioning), so for those elements the check
    # could never fire: they get 0 here and conditioning is judged by `cond` alone.
    residual = torch.zeros(b, dtype=dtype, device=dev)
    if bad.any():
        residual = residual.index_put((idx,), _rel_residual(Kb, wb / D, rb).detach())  # of D K D
    is_singular = (cond > cond_max) | ~torch.isfinite(w.detach().sum(-1)) | ~(residual <= 1e3 * N * eps_of(dtype))
    is_singular = is_singular | ~finite
    used_pinv = torch.zeros_like(pd)
    if singular == "pinv" and (is_singular & finite).any():
        idx = (is_singular & finite).nonzero().squeeze(1)
        P = torch.linalg.pinv(Kc[idx], rtol=1.0 / cond_max, hermitian=True)
        wp = (P @ rc[idx].unsqueeze(-1)).squeeze(-1)
        w = w.index_put((idx,), wp)
        used_pinv = used_pinv.index_put((idx,), torch.ones_like(idx, dtype=torch.bool))
    if not all_finite:
        w = torch.where(finite[:, None], w, torch.full_like(w, float("nan")))
    return w, {"pd": pd, "cond": cond, "n_negative": n_neg, "singular": is_singular,
               "linear_residual": residual,
               "pinv": used_pinv, "converged": finite & (~is_singular | used_pinv)}


def kkt_block_scaling(matvec, b, N, m, dtype, device):
    """Diagonal ``D = [α 1_m; β 1_{N−m}]`` that brings the blocks of a KKT matrix
    ``[[H, −Aᵀ], [−A, ·]]`` given as ``matvec`` to unit size: ``α² ‖H‖ = 1``, ``αβ ‖A‖ = 1``.
    ``‖H‖`` and ``‖A‖`` are estimated by one product with a fixed ±1 vector on the primal block
    (a deterministic sign pattern, so no cancellation as ``H·1`` can have). (b, N), no graph."""
    i = torch.arange(m, dtype=dtype, device=device)
    sgn = torch.where(torch.sin(1.0 + 2.399963 * i) >= 0, 1.0, -1.0).to(dtype)
    s = torch.zeros(b, N, dtype=dtype, device=device)
    s[:, :m] = sgn
    with torch.no_grad():
        Ks = matvec(s).detach()
    hs = Ks[:, :m].abs().amax(-1)
    as_ = Ks[:, m:].abs().amax(-1)
    use = (hs > 0) & (as_ > 0) & torch.isfinite(hs) & torch.isfinite(as_)
    hs = torch.where(use, hs, torch.ones_like(hs))
    as_ = torch.where(use, as_, torch.ones_like(as_))
    al = hs.rsqrt()
    be = hs.sqrt() / as_
    return torch.cat([al.unsqueeze(-1).expand(b, m), be.unsqueeze(-1).expand(b, N - m)], -1)


def _bdot(a, b):
    return (a * b).sum(-1)


def _check_every(r, check_every):
    """How often the loops ask whether every element is done (``bool(done.all())``, a host sync
    on CUDA). Every iteration by default: testing every 8 instead (elements already done take
    zero steps, so the result is bit-identical) was measured on an NVIDIA H200 at m = 128–512,
    b = 16 and changed the cg backward by nothing beyond noise (k=1 ÷ k=8 time 0.88–1.30,
    ``bench/nodes/cg_check_every.py``): each iteration's Hessian–vector product, an autograd
    call of some 30 ops, costs far more host time than the sync. ``check_every`` is kept for
    such experiments."""
    if check_every is not None:
        return max(1, int(check_every))
    return 1


def _iterations(iters):
    return int(iters.max()) if iters.numel() else 0


def cg(matvec, r, *, tol, max_iter, check_every=None):
    """Conjugate gradients for the batch ``K w = r``, ``K`` symmetric positive definite given as
    ``matvec(u) = K u`` on ``(b, N)`` tensors. Stops element-wise when ``‖r − Kw‖ ≤ tol ‖r‖``.

    Returns ``w`` and ``info`` with ``converged``, ``negative_curvature`` (``pᵀKp ≤ 0`` met: ``K`` is
    not positive definite) and ``iterations`` (the most steps any element took; the loop itself
    tests for the end only every ``check_every`` iterations, see :func:`_check_every`).
    """
    k = _check_every(r, check_every)
    w = torch.zeros_like(r)
    res = r
    p = r
    rs = _bdot(res, res)
    thresh = (tol * r.norm(dim=-1)).detach()
    done = (rs.detach().sqrt() <= thresh)
    neg = torch.zeros_like(done)
    iters = torch.zeros(done.shape, dtype=torch.long, device=r.device)
    for it in range(max_iter):
        if it % k == 0 and bool(done.all()):
            break
        iters = iters + (~done).long()
        Kp = matvec(p)
        pKp = _bdot(p, Kp)
        neg = neg | ((pKp.detach() <= 0) & ~done)
        stop = done | neg
        alpha = torch.where(stop, torch.zeros_like(pKp), rs / torch.where(stop, torch.ones_like(pKp), pKp))
        w = w + alpha.unsqueeze(-1) * p
        res = res - alpha.unsqueeze(-1) * Kp
        rs_new = _bdot(res, res)
        done = done | neg | (rs_new.detach().sqrt() <= thresh)
        beta = torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = res + beta.unsqueeze(-1) * p
        rs = rs_new
    converged = (rs.detach().sqrt() <= thresh) & ~neg
    return w, {"converged": converged, "negative_curvature": neg, "iterations": _iterations(iters)}


def minres(matvec, r, *, tol, max_iter, check_every=None):
    """MINRES (Paige & Saunders, 1975) for the batch ``K w = r`` with ``K`` symmetric, possibly
    indefinite (a KKT matrix), given as ``matvec``. Stops element-wise when the residual estimate
    ``φ̄ ≤ tol ‖r‖``. Returns ``w`` and ``info`` with ``converged``, ``iterations`` and
    ``indefinite`` (a Lanczos vector with ``vᵀKv < 0`` was met: ``K`` has a negative eigenvalue; a
    certificate, so it can miss an indefinite ``K`` but never flags a positive semidefinite one).
    ``iterations`` and ``check_every`` as in :func:`cg`."""
    k = _check_every(r, check_every)
    b = r.shape[0]
    dt = r.dtype
    one = torch.ones(b, dtype=dt, device=r.device)
    zero = torch.zeros(b, dtype=dt, device=r.device)
    tiny = torch.finfo(dt).tiny ** 0.5
    beta1 = r.norm(dim=-1)
    thresh = (tol * beta1).detach()
    x = torch.zeros_like(r)
    r1 = r
    r2 = r
    y = r
    beta = beta1
    oldb = zero
    dbar = zero
    epsln = zero
    phibar = beta1
    cs = -one
    sn = zero
    w = torch.zeros_like(r)
    w2 = torch.zeros_like(r)
    done = phibar.detach() <= thresh
    # Lanczos Rayleigh quotients vᵀKv of unit vectors: one clearly negative proves K indefinite
    kmax = zero.clone()
    neg = torch.zeros(b, dtype=torch.bool, device=r.device)
    iters = torch.zeros(b, dtype=torch.long, device=r.device)
    for it in range(1, max_iter + 1):
        if (it - 1) % k == 0 and bool(done.all()):
            break
        iters = iters + (~done).long()
        bsafe = torch.where(beta.abs() > tiny, beta, one)
        v = y / bsafe.unsqueeze(-1)
        y = matvec(v)
        if it >= 2:
            osafe = torch.where(oldb.abs() > tiny, oldb, one)
            y = y - (beta / osafe).unsqueeze(-1) * r1
        alfa = _bdot(v, y)
        with torch.no_grad():
            kmax = torch.maximum(kmax, alfa.detach().abs() + beta.detach().abs())
            neg = neg | (~done & (alfa.detach() < -100 * eps_of(dt) * kmax))
        y = y - (alfa / bsafe).unsqueeze(-1) * r2
        r1 = r2
        r2 = y
        oldb = beta
        beta = y.norm(dim=-1)
        oldeps = epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        epsln = sn * beta
        dbar = -cs * beta
        gamma = torch.sqrt(gbar * gbar + beta * beta).clamp_min(tiny)
        cs = gbar / gamma
        sn = beta / gamma
        phi = cs * phibar
        phibar = sn * phibar
        w1 = w2
        w2 = w
        w = (v - oldeps.unsqueeze(-1) * w1 - delta.unsqueeze(-1) * w2) / gamma.unsqueeze(-1)
        x = torch.where(done.unsqueeze(-1), x, x + phi.unsqueeze(-1) * w)
        done = done | (phibar.detach() <= thresh) | (beta.detach() <= tiny)
    # The estimate φ̄ can be optimistic: confirm with a true residual.
    true_res = (matvec(x) - r).norm(dim=-1).detach()
    converged = true_res <= 10 * thresh + 10 * eps_of(dt) * beta1.detach()
    return x, {"converged": converged, "iterations": _iterations(iters), "indefinite": neg,
               "linear_residual": true_res / beta1.detach().clamp_min(tiny)}
