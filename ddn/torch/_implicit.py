"""The implicit-function step, on its own (like jaxopt's ``root_vjp``).

A solution ``z*(x)`` of the first-order conditions ``F(x, z) = ∇_z ℒ(x, z) = 0`` of a scalar
function ``ℒ`` (per batch element) moves with ``x`` as ``D z*(x) = −K⁻¹ D_x F`` (implicit function
theorem), where ``K = D_z F = ∇²_zz ℒ`` is symmetric. For an incoming gradient ``v``:

    vᵀ D z*(x) = −wᵀ D_x F,      K w = v.

So one linear solve with ``K`` and ONE vector–Jacobian product of ``F`` with cotangent ``−w``
give the gradient of every input; ``D_x F`` (``B = D²_XY f`` and ``C = D_X h``) is never built.

- Unconstrained node: ``z = y``, ``ℒ = f`` and ``K = H = D²_YY f`` (Prop. 4.4).
- Constrained node: ``z = (y, λ)``, ``ℒ = f − λᵀh̃`` with ``h̃`` the equality and active inequality
  constraints; then ``K = [[H, −Aᵀ], [−A, 0]]`` is the (symmetric) KKT matrix and the same step is
  Prop. 4.5/4.6. Inactive inequality constraints carry ``−½λ_i²`` instead of ``−λ_i g_i``, which
  puts a ``−1`` on their diagonal (a masked identity row): the batch is never regrouped.
"""
import warnings

import torch

from ddn import DDNError, DDNWarning
from . import _linalg

__all__ = ["implicit_vjp"]

LINEAR_SOLVERS = ("dense", "cg", "minres")


def report(problem, elements, remedy, on_degenerate="warn", stacklevel=3):
    """Name a degenerate point: a DDNWarning (or DDNError when ``on_degenerate="error"``)."""
    if isinstance(elements, torch.Tensor):
        elements = elements.nonzero().flatten().tolist()
    msg = f"ddn.torch: {problem} at batch element(s) {list(elements)}. {remedy}"
    if on_degenerate == "error":
        raise DDNError(msg)
    warnings.warn(msg, DDNWarning, stacklevel=stacklevel)
    return msg


def default_tol(dtype, f64, f32):
    return f64 if dtype == torch.float64 else f32


def gradient_scale(Ku):
    """Scale of the terms that cancel in ``∇_z ℒ = 0``, per element: ``s = ‖K u‖_∞`` with
    ``u = 1 + |z|`` (the caller forms ``K u``, ``K = ∇²_zz ℒ``). For a quadratic
    ``½zᵀKz − bᵀz`` at its minimum ``K z = b``, so ``s ≈ ‖K‖·(1 + ‖z‖)`` is the size of the gradient's
    terms, and round-off in ``∇_z ℒ`` is about ``eps · s``. Convergence and residual tests compare
    ``‖∇_z ℒ‖ ≤ tol · s``: multiplying the objective by ``c`` multiplies both sides by ``c``
    (scale-invariant for every ``c > 0``). ``‖∇_z ℒ‖ / s`` is then about the relative distance of
    ``z`` from the solution. There is no floor at 1: with one, an objective scaled by 10⁻⁶ in
    float32 (tol 10⁻⁵) stopped at its initial guess as 'converged', y wrong by O(1); ``s`` is only
    kept above the square root of the dtype's tiny (``K = 0``: a linear objective)."""
    s = Ku.detach().abs().amax(-1)
    s = s.clamp_min(torch.finfo(s.dtype).tiny ** 0.5)
    return torch.where(torch.isfinite(s), s, torch.ones_like(s))  # NaN/Inf: the absolute test


def proximal_rel(dtype):
    """δ/‖H‖ of the default proximal shift: ``max(1e-6, 0.3·√eps)``. The shift biases the gradient
    by about δ/‖H‖ and leaves cond(H + δI) ≈ ‖H‖/δ, whose round-off costs up to eps·‖H‖/δ: about
    √eps balances the two. float32 gets 1e-4 (measured: bias and round-off ≤ 4e-4 on a singular
    H at scales 10⁻³..10³ and on repeated constraints; 1e-6 gave cond ~10⁶, above the singular
    threshold 0.1/eps, a warning and errors of 3e-2, and NaN at ‖H‖ = 10³); float64 keeps 1e-6."""
    return max(1e-6, 0.3 * _linalg.eps_of(dtype) ** 0.5)


def proximal_shift(K, matvec, n_primal, b=None, N=None, dtype=None, device=None):
    """The diagonal (b, N) of the default proximal shift (``proximal_delta=None``), relative to the
    problem's scale: ``+r‖H‖`` on the primal block, ``−r‖A‖²/‖H‖`` on the multiplier block
    (``r = proximal_rel``), i.e. ``±r`` in the block-scaled KKT matrix (unit ``H`` and ``A``, see
    ``_linalg.kkt_block_scaling``). An absolute δ = 1e-6 was a shift of 1e-9 next to ‖H‖ = 10³
    (lost in float32 round-off: NaN gradient) and a bias of 1e-3 next to ‖H‖ = 10⁻³. ``‖H‖`` and
    ``‖A‖`` are the largest entries of ``K`` (dense) or of ``K s`` for a fixed ±1 vector ``s`` on
    the primal block (matrix-free); ``H = 0`` (a linear objective) uses ``‖A‖`` (or 1) instead."""
    if K is not None:
        b, N = K.shape[0], K.shape[-1]
        dtype, device = K.dtype, K.device
        hs = K[:, :n_primal, :n_primal].abs().flatten(1).amax(-1)
        as_ = (K[:, n_primal:, :n_primal].abs().flatten(1).amax(-1) if n_primal < N
               else torch.zeros_like(hs))
    else:
        i = torch.arange(n_primal, dtype=dtype, device=device)
        sgn = torch.where(torch.sin(1.0 + 2.399963 * i) >= 0, 1.0, -1.0).to(dtype)
        s = torch.zeros(b, N, dtype=dtype, device=device)
        s[:, :n_primal] = sgn
        Ks = matvec(s).detach()
        hs = Ks[:, :n_primal].abs().amax(-1)
        as_ = Ks[:, n_primal:].abs().amax(-1) if n_primal < N else torch.zeros_like(hs)
    good = torch.isfinite(hs) & torch.isfinite(as_)
    hs = torch.where(good, hs, torch.ones_like(hs))
    as_ = torch.where(good, as_, torch.zeros_like(as_))
    h_eff = torch.where(hs > 0, hs, torch.where(as_ > 0, as_, torch.ones_like(hs)))
    a_eff = torch.where(as_ > 0, as_, h_eff)
    r = proximal_rel(dtype)
    d = torch.empty(b, N, dtype=dtype, device=device)
    d[:, :n_primal] = (r * h_eff).unsqueeze(-1)
    d[:, n_primal:] = (-r * a_eff * a_eff / h_eff).unsqueeze(-1)
    return d


# On CPU the P products are evaluated in chunks of about this many elements (chunk·b·N, 1 MiB in
# float64): every op of the double backward then works on cache-resident temporaries instead of
# streaming (P, b, N) tensors through memory. Measured at b = 16 (bench/nodes): the Hessian build
# is 1.4× faster at N = 256 and 2–5× at N = 512; on a GPU one big batch is better, so no chunks.
_CPU_CHUNK_ELEMENTS = 2 ** 17


def batched_jacobian(g, z, *, create_graph=False):
    """``J[e] = D_z g[e]`` for a batch-separable ``g`` (b, P) of ``z`` (b, N): P vector–Jacobian
    products evaluated at once (``is_grads_batched``: a vmap over the backward; on CPU in chunks of
    about 2¹⁷ elements, see ``_CPU_CHUNK_ELEMENTS``). Returns (b, P, N). With ``g = ∇_z ℒ`` this is
    the Hessian ``K = ∇²_zz ℒ`` from N Hessian–vector products."""
    b, N = z.shape
    P = g.shape[1]
    if not g.requires_grad:  # g does not depend on z (a linear objective's gradient): J = 0
        return torch.zeros(b, P, N, dtype=z.dtype, device=z.device)
    chunk = P
    if z.device.type == "cpu":
        chunk = max(1, min(P, _CPU_CHUNK_ELEMENTS // max(1, b * N)))
    eye = torch.eye(P, dtype=z.dtype, device=z.device)
    try:
        parts = []
        out = None
        for s in range(0, P, chunk):
            basis = eye[s:s + chunk].unsqueeze(1).expand(-1, b, P)  # rows s.. of the identity
            (Kc,) = torch.autograd.grad(g, z, grad_outputs=basis, is_grads_batched=True,
                                        retain_graph=True, create_graph=create_graph,
                                        allow_unused=True)
            if Kc is None:
                return torch.zeros(b, P, N, dtype=z.dtype, device=z.device)
            if chunk < P and not create_graph:
                # several chunks: write each straight into a contiguous (b, P, N) result (no cat,
                # and the Cholesky that follows needs no copy of a transposed view)
                if out is None:
                    out = torch.empty(b, P, N, dtype=Kc.dtype, device=Kc.device)
                out[:, s:s + Kc.shape[0]] = Kc.transpose(0, 1)
            else:
                parts.append(Kc)
        if out is not None:
            return out
        K = parts[0] if len(parts) == 1 else torch.cat(parts, 0)
    except RuntimeError:
        # An op without a batching rule: fall back to one product per coordinate.
        cols = [torch.autograd.grad(g, z, grad_outputs=eye[i].expand(b, P), retain_graph=True,
                                    create_graph=create_graph, allow_unused=True)[0] for i in range(P)]
        K = None if cols[0] is None else torch.stack(cols)
    if K is None:
        return torch.zeros(b, P, N, dtype=z.dtype, device=z.device)
    return K.transpose(0, 1)


batched_hessian = batched_jacobian  # K = D_z(∇_z ℒ): (b, N, N)


def implicit_vjp(lagrangian, xs, z, v, *, linear_solver="dense", tol=None, max_iter=None,
                 singular=None, proximal_delta=None, n_primal=None, spd=True,
                 on_degenerate="warn", residual_tol=None, create_graph=False, matrix_name=None,
                 known_degenerate=None, expected_singular=None, params=()):
    """Pull ``v`` back through the solution ``z*`` of ``∇_z ℒ(x, z) = 0``.

    ``vᵀ D z*(x) = −wᵀ D_x(∇_z ℒ)`` with ``K w = v``, ``K = ∇²_zz ℒ`` (symmetric): one linear solve and
    one vector–Jacobian product of the first-order conditions with cotangent ``−w``.

    Shapes: ``z`` (b, N); ``v`` (b, N) or (b, n_primal) (zero-padded: the multipliers get no
    incoming gradient); ``lagrangian(*xs, z)`` returns (b,) and must be separable over the batch.

    Args:
        lagrangian: ``ℒ(*xs, z) -> (b,)``; ``f`` for an unconstrained problem.
        xs: the inputs; gradients are returned for those with ``requires_grad`` (None elsewhere).
        z: the solution (b, N): ``y`` or ``(y, λ)``.
        v: the incoming gradient.
        linear_solver: ``"dense"`` (``K`` from vmapped Hessian–vector products, Cholesky, LU fallback
            with residual check), ``"cg"`` (matrix-free conjugate gradients; MINRES when ``spd`` is
            False) or ``"minres"``.
        tol, max_iter: of the iterative solvers (defaults 1e-10 / 1e-5 by dtype, ``10 N``).
        singular: ``None`` (report singular ``K``), ``"pinv"`` (``w = K⁺v``, dense only) or
            ``"proximal"`` (``K + δI`` on the primal block and ``− δI`` on the multiplier block,
            ``δ = proximal_delta``: ``[[H + δI, −Aᵀ], [−A, −δI]]`` is nonsingular also for
            rank-deficient ``A``, which a primal shift alone leaves singular).
        proximal_delta: a number: that absolute δ on both blocks. None (default): relative to the
            problem's scale, ``r‖H‖`` on the primal block and ``r‖A‖²/‖H‖`` on the multiplier
            block, ``r = max(1e-6, 0.3√eps)`` (1e-6 in float64, 1e-4 in float32: with 1e-6 there
            cond(H + δI) ~ 10⁶ was above float32's singular threshold), see :func:`proximal_shift`.
        n_primal: size of ``y`` within ``z`` (default N).
        spd: whether ``K`` should be positive definite (True for an unconstrained minimum): an
            indefinite ``K`` is then reported.
        on_degenerate: ``"warn"`` (DDNWarning) or ``"error"`` (DDNError).
        residual_tol: report elements with ``‖∇_z ℒ‖ > residual_tol · s`` (default 1e-6 / 1e-3 by
            dtype), ``s = ‖K (1 + |z|)‖_∞`` the size of the gradient's terms (see
            :func:`gradient_scale`): an objective multiplied by 10⁴ is judged as the original.
            With ``n_primal < N`` also ``‖∇_y ℒ‖ > residual_tol · s_y``, ``s_y = max(‖H(1 + |y|)‖_∞,
            ‖Aᵀλ‖_∞)`` (``info["residual_primal_scale"]``): the joint ``s`` is set by the
            constraint rows, so it does not shrink with an objective multiplied by 10⁻⁴.
        create_graph: keep the graph of the result (double-backward); ``xs`` and ``z`` must then be
            the graph's tensors.
        matrix_name: how messages name ``K``.
        known_degenerate: (b,) bool, elements already reported by the caller (not named again).
        expected_singular: (b,) bool, elements whose ``K`` the caller knows to be singular (e.g.
            rank-deficient constraints under a chosen remedy): not named as singular, but still
            checked for everything else (residual, saddle).
        params: tensors that ℒ uses through a closure (e.g. a module's ``nn.Parameter``s, shared by
            the batch); their gradients (summed over the batch) are ``info["param_grads"]``.
            Not with ``create_graph``.

    Returns:
        ``(grads, info)``: a tuple with one gradient (or None) per input, and a dict of per-element
        diagnostics (``residual`` = ‖∇_z ℒ‖, ``residual_scale`` = s, ``converged``, ``singular``, ``cond``, ``K`` when dense;
        with cg/minres ``negative_direction``: ``w_yᵀv < 0``, a certificate that ``H`` (on the
        tangent space of the constraints) has a negative direction; it can miss one).

    Example (``y = x ⊙ w`` minimises ``½‖y‖² − (x ⊙ w)ᵀy``, so ``vᵀDy_x = v ⊙ w``)::

        f = lambda x, w, y: 0.5 * (y * y).sum(-1) - (x * w * y).sum(-1)
        (gx, gw), info = implicit_vjp(f, (x.requires_grad_(), w), x * w, v)   # gw is None

    Reference: Gould et al., Deep Declarative Networks, Prop. 4.4–4.6 and Sec. 6.1.
    """
    if linear_solver not in LINEAR_SOLVERS:
        raise DDNError(f"linear_solver={linear_solver!r} is not one of {LINEAR_SOLVERS} "
                       "(\"unroll\" is handled by DeclarativeLayer, not by the implicit step)")
    if singular not in (None, "pinv", "proximal"):
        raise DDNError(f"singular={singular!r}: choose None, 'pinv' or 'proximal'")
    if singular == "pinv" and linear_solver != "dense":
        raise DDNError("singular='pinv' needs linear_solver='dense' (a pseudo-inverse needs K)")
    b, N = z.shape
    n_primal = N if n_primal is None else n_primal
    dtype = z.dtype
    name = matrix_name or ("H = D²_YY f" if spd else "the KKT matrix [[H, −Aᵀ], [−A, 0]]")
    if v.dim() != 2 or v.shape[0] != b or v.shape[-1] not in (N, n_primal):
        raise DDNError(f"implicit_vjp: v must be (b, N) = ({b}, {N}) or (b, n_primal) = ({b}, "
                       f"{n_primal}), got {tuple(v.shape)}")
    if v.shape[-1] != N:  # the multipliers get no incoming gradient
        v = torch.cat([v, v.new_zeros(b, N - v.shape[-1])], dim=-1)
    if tol is None:
        tol = default_tol(dtype, 1e-10, 1e-5)
    if max_iter is None:
        max_iter = max(10 * N, 50)
    if residual_tol is None:
        residual_tol = default_tol(dtype, 1e-6, 1e-3)

    xs = tuple(xs)
    if not create_graph:
        xs = tuple(x.detach().requires_grad_(x.requires_grad) if torch.is_tensor(x) else x for x in xs)
        z = z.detach().requires_grad_(True)
        v = v.detach()
    else:
        # Aliases keep the graph (for double-backward) but make grad(·, alias) a PARTIAL derivative:
        # z may itself depend on xs (z = y(x)); differentiating through it would recurse.
        xs = tuple(x.clone() if torch.is_tensor(x) and x.requires_grad else x for x in xs)
        z = z.clone() if z.requires_grad else z.detach().requires_grad_(True)
    want = [i for i, x in enumerate(xs) if torch.is_tensor(x) and x.requires_grad]
    info = {}
    # elements to name: finite ones not already reported (NaN input is reported by the node)
    named = torch.isfinite(z.detach()).all(1) & torch.isfinite(v).all(1)
    if known_degenerate is not None:
        named = named & ~known_degenerate.to(named.device)
    with torch.enable_grad():
        if not z.requires_grad:
            z = z.requires_grad_(True)
        L = lagrangian(*xs, z)
        if L.shape != (b,):
            raise DDNError(f"the objective/Lagrangian must return shape (batch,) = ({b},), got {tuple(L.shape)}")
        (g,) = torch.autograd.grad(L.sum(), z, create_graph=True)  # F = ∇_z ℒ, (b, N)
        info["residual"] = g.detach().norm(dim=-1)
        pdiag = None
        if singular == "proximal" and proximal_delta is not None:
            delta = float(proximal_delta)
            if not delta > 0:
                raise DDNError(f"proximal_delta must be > 0 (or None: relative to ‖H‖), got {proximal_delta!r}")
            pdiag = torch.zeros(N, dtype=dtype, device=z.device)
            pdiag[:n_primal] = delta
            pdiag[n_primal:] = -delta  # regularised KKT: nonsingular for rank-deficient A too

        def K_raw(u):  # K u without the shift
            (Ku,) = torch.autograd.grad(g, z, grad_outputs=u, retain_graph=True, allow_unused=True)
            return torch.zeros_like(u) if Ku is None else Ku

        if linear_solver == "dense":
            K = batched_hessian(g, z, create_graph=create_graph)  # K = ∇²_zz ℒ  (H, or KKT)
            if singular == "proximal" and proximal_delta is None:
                pdiag = proximal_shift(K.detach(), None, n_primal)
            if pdiag is not None:
                K = K + torch.diag_embed(pdiag).expand(b, N, N)
            w, sinfo = _linalg.solve_dense(K, v, singular=singular,
                                           n_primal=n_primal if n_primal < N else None)
            info.update(sinfo)
            info["K"] = K.detach()
            sing = sinfo["singular"] & ~sinfo["pinv"] & named
            if expected_singular is not None:
                sing = sing & ~expected_singular.to(sing.device)
            if sing.any():
                report(f"{name} is singular or ill-conditioned (cond ≈ "
                       f"{float(sinfo['cond'][sinfo['singular']].max()):.1e}); y is not an isolated "
                       "solution or the constraints are degenerate, and the gradient is unreliable",
                       sing,
                       "Remedy: reparametrize or add a constraint (e.g. fix ‖y‖), or opt in to "
                       "singular='pinv' (pseudo-inverse, Eq. 51) or singular='proximal' "
                       "(H + δI, proximal_delta=δ).", on_degenerate)
            indef = ~sinfo["pd"] & ~sinfo["singular"] & named
            if spd and indef.any():
                report(f"{name} is indefinite (not positive definite): y is a saddle point or a "
                       "maximum, not a minimum; the gradient is that of this stationary point",
                       indef,
                       "Remedy: check the solver (it should return a minimum), or ignore if a "
                       "stationary point is intended.", on_degenerate)
        else:
            sc_v = sc_w = None  # norms of the system solved, when it was scaled
            if singular == "proximal" and proximal_delta is None:
                pdiag = proximal_shift(None, K_raw, n_primal, b=b, N=N, dtype=dtype, device=z.device)

            def matvec(u):  # K u, a Hessian–vector product; K never formed
                (Ku,) = torch.autograd.grad(g, z, grad_outputs=u, retain_graph=True,
                                            create_graph=create_graph, allow_unused=True)
                Ku = torch.zeros_like(u) if Ku is None else Ku
                return Ku if pdiag is None else Ku + pdiag * u
            if linear_solver == "cg" and spd:
                w, sinfo = _linalg.cg(matvec, v, tol=tol, max_iter=max_iter)
                if (sinfo["negative_curvature"] & named).any():
                    report(f"{name} is not positive definite (conjugate gradients met negative "
                           "curvature)", sinfo["negative_curvature"] & named,
                           "Remedy: use linear_solver='dense' (LU fallback) or 'minres', or check "
                           "that the solver returns a minimum.", on_degenerate)
            else:
                if n_primal < N:
                    # KKT matrix: MINRES on D K D (D = [α; β] brings H and A to unit size, as
                    # the dense solve's block scaling): an objective c·f next to O(1) constraints
                    # has cond ~ 1/c (or c) unscaled, and MINRES did not converge at c = 10⁴ in
                    # float32 or c = 10⁻⁴ in float64. w = D u solves the same system.
                    D = _linalg.kkt_block_scaling(matvec, b, N, n_primal, dtype, z.device)
                    u, sinfo = _linalg.minres(lambda q: D * matvec(D * q), D * v, tol=tol,
                                              max_iter=max_iter)
                    w = D * u
                    sc_v, sc_w = (D * v).norm(dim=-1), u.detach().norm(dim=-1)
                else:
                    w, sinfo = _linalg.minres(matvec, v, tol=tol, max_iter=max_iter)
                if spd and (sinfo["indefinite"] & named).any():
                    report(f"{name} is indefinite (MINRES met a direction of negative curvature): "
                           "y is a saddle point or a maximum, not a minimum; the gradient is that "
                           "of this stationary point", sinfo["indefinite"] & named,
                           "Remedy: check the solver (it should return a minimum), or ignore if a "
                           "stationary point is intended.", on_degenerate)
            info.update(sinfo)
            # Second-order certificate from the solution itself: K w = [v; 0] gives A w_y = 0 and
            # w_yᵀ v = w_yᵀ H w_y, so w_yᵀ v < 0 proves a direction of negative curvature of H (on
            # the tangent space of the active constraints for a KKT matrix): y is a saddle or
            # maximum. (MINRES's own certificate, vᵀKv < 0, says nothing for a KKT matrix, which is
            # always indefinite.) It can miss one (v with no component along such a direction),
            # never flags a minimum; above the solve's round-off, 100·tol·‖v‖‖w‖ (of the scaled
            # system D K D u = D v where it was scaled: the error of w_yᵀv is uᵀ(D K D u − D v)).
            # Not under "proximal" for a KKT matrix (−δI on its multiplier block: A w_y ≠ 0).
            wy, vy = w.detach()[:, :n_primal], v[:, :n_primal]
            if sc_v is None:
                sc_v, sc_w = v.norm(dim=-1), w.detach().norm(dim=-1)
            thr = 100 * max(tol, _linalg.eps_of(dtype)) * sc_v * sc_w
            cert = ((wy * vy).sum(-1) < -thr) & sinfo["converged"] & named
            if n_primal < N and singular == "proximal":
                cert = torch.zeros_like(cert)
            if spd and linear_solver == "minres" and (cert & ~sinfo["indefinite"]).any():
                report(f"{name} is indefinite (wᵀv = wᵀHw < 0 for the solution w of H w = v): y is a "
                       "saddle point or a maximum, not a minimum; the gradient is that of this "
                       "stationary point", cert & ~sinfo["indefinite"],
                       "Remedy: check the solver (it should return a minimum), or ignore if a "
                       "stationary point is intended.", on_degenerate)
            info["negative_direction"] = cert
            bad = ~sinfo["converged"] & named
            if "negative_curvature" in sinfo:
                bad = bad & ~sinfo["negative_curvature"]
            if bad.any():
                report(f"the {linear_solver} linear solve with {name} did not converge in "
                       f"{max_iter} iterations (tol {tol:g}); K may be singular or ill-conditioned",
                       bad, "Remedy: raise max_iter or tol, use linear_solver='dense', or opt in "
                       "to singular='proximal'.", on_degenerate)

        # scale of the gradient's terms, s = ‖K (1 + |z|)‖_∞: the residual test is relative
        def K_times(u):
            if "K" in info:
                return (info["K"] @ u.unsqueeze(-1)).squeeze(-1)
            (Ku,) = torch.autograd.grad(g, z, grad_outputs=u, retain_graph=True, allow_unused=True)
            return torch.zeros_like(u) if Ku is None else Ku

        u = 1 + z.detach().abs()
        info["residual_scale"] = gradient_scale(K_times(u))
        rel = info["residual"] / info["residual_scale"]
        if n_primal < N:
            # The stationarity block ∇f − Aᵀλ on its own scale s_y = max(‖H(1 + |y|)‖_∞, ‖Aᵀλ‖_∞)
            # (‖Aᵀλ‖ ≈ ‖∇f‖: the terms that cancel). The joint s is set by the constraint rows and
            # the 1 + |λ| of the multipliers (O(‖A‖) whatever the objective's scale): for an
            # objective c·f, c = 10⁻², a float32 y 5% from the constrained minimum passed silently.
            zd, m = z.detach(), n_primal
            Ku1 = K_times(torch.cat([1 + zd[:, :m].abs(), torch.zeros_like(zd[:, m:])], -1))
            Ku2 = K_times(torch.cat([torch.zeros_like(zd[:, :m]), zd[:, m:]], -1))
            s_y = gradient_scale(torch.maximum(Ku1[:, :m].abs(), Ku2[:, :m].abs()))
            info["residual_primal"] = g.detach()[:, :m].norm(dim=-1)
            info["residual_primal_scale"] = s_y
            rel = torch.maximum(rel, info["residual_primal"] / s_y)
        high = named & (rel > residual_tol)
        if high.any():
            report(f"the optimality residual ‖∇ℒ‖ is large (max {float(info['residual'][high].max()):.2e}"
                   f"; relative to the gradient's scale s, max ‖∇ℒ‖/s = {float(rel[high].max()):.2e} "
                   f"> residual_tol={residual_tol:g}): y is not a solution of the first-order "
                   "conditions, so the implicit gradient is not the gradient of y",
                   high, "Remedy: solve more accurately (tighter solver tolerance, more iterations) "
                   "or raise residual_tol.", on_degenerate)

        # One VJP of F = ∇_z ℒ with cotangent −w gives every input's gradient: −wᵀ D_x F
        # (this is −wᵀ B (and + wᵀ C for constraints) without forming B = D²_XY f or C = D_X h).
        params = [q for q in params if q.requires_grad]
        if params and create_graph:
            raise DDNError("double backward through parameters captured by the objective is not "
                           "supported: pass them to the layer as inputs, layer(x, theta)")
        targets = [xs[i] for i in want] + params
        out = [None] * len(xs)
        pg = [None] * len(params)
        if targets:
            gs = torch.autograd.grad(g, targets, grad_outputs=-w, allow_unused=True,
                                     create_graph=create_graph)
            for i, gi in zip(want, gs):
                out[i] = torch.zeros_like(xs[i]) if gi is None else gi
            for k, gk in enumerate(gs[len(want):]):
                pg[k] = torch.zeros_like(params[k]) if gk is None else gk.detach()
        if not create_graph:
            out = [None if o is None else o.detach() for o in out]
    info["param_grads"] = tuple(pg)
    info["w"] = w.detach()
    return tuple(out), info
