"""Gradient and optimality check for the torch floor (``ddn.check.check_gradient`` dispatches here).

For a ``ddn.torch`` node or :class:`DeclarativeLayer`: the implicit Jacobian ``Dy`` (from VJPs,
per batch element) against central finite differences of the node's solver in float64, the
node's own ``vjp`` (its configured linear solver) against ``vᵀDy``, and what
:meth:`DeclarativeNode.diagnose` finds at the solution: optimality residual, condition of ``H``
on the tangent space of the active constraints, rank and number of the active constraints,
weakly active inequalities. For any other ``nn.Module`` ``y = module(*xs)``: autograd's Jacobian
against finite differences (no optimality information).
"""
import copy
import warnings

import torch

from ddn import DDNError, DDNWarning

__all__ = ["check_gradient_torch"]


def _report_cls():
    # imported late: ddn.check imports this module lazily, for torch nodes only
    from ddn.check import GradientReport
    return GradientReport


def _fd_jacobian(fun, xs, eps, side="central"):
    """Per-element finite-difference Jacobian of ``y = fun(*xs)`` (batch-separable): (b, m, Σn_i).
    One coordinate of every batch element is perturbed at once."""
    y0 = fun(*xs)
    b = y0.shape[0]
    cols = []
    for i, x in enumerate(xs):
        if not x.is_floating_point():
            continue
        xf = x.reshape(b, -1)
        for j in range(xf.shape[1]):
            h = eps * xf[:, j].abs().clamp_min(1.0)

            def shifted(s):
                xp = xf.clone()
                xp[:, j] = xp[:, j] + s * h
                args = list(xs)
                args[i] = xp.reshape(x.shape)
                return fun(*args).reshape(b, -1)

            if side == "central":
                d = (shifted(1) - shifted(-1)) / (2 * h[:, None])
            else:  # second-order one-sided: (∓3y(x) ± 4y(x ± h) ∓ y(x ± 2h)) / 2h
                sg = 1 if side == "forward" else -1
                d = sg * (-3 * y0.reshape(b, -1) + 4 * shifted(sg) - shifted(2 * sg)) / (2 * h[:, None])
            cols.append(d)
    return torch.stack(cols, -1)


def check_gradient_torch(node_or_layer, *xs, y=None, ctx=None, eps=1e-5, rtol=1e-6, atol=1e-9,
                         residual_tol=1e-6, seed=0, linear_solver=None, directions=None, **unknown):
    """Check a torch-floor node's implicit gradient against central finite differences (float64).

    Args:
        node_or_layer: a ``ddn.torch`` node, a :class:`DeclarativeLayer`, or any ``nn.Module``.
        *xs: the inputs, batched over dim 0 (converted to float64 copies).
        y, ctx: a solution to check (solved here when None; must be float64 then).
        eps: finite-difference step (scaled by max(1, |x_j|)).
        rtol, atol: an element passes when max |Dy − Dy_fd| ≤ rtol · max |Dy_fd| or ≤ its
            absolute allowance min(atol, noise), ``noise`` = 1e3 · machine-eps · max|y| / eps the
            rounding noise of the differences (as ``ddn.check.check_gradient``): atol is for
            entries of Dy that are 0, and capped by the noise it cannot pass a Jacobian whose
            entries are all ≲ atol (y in other units, Dy ~ 1e-10) without looking at them.
            The allowances used are ``details["atol_effective"]`` (per element). The vjp must
            match vᵀDy, per element, to rtol · max(|v|ᵀ|Dy|) or the allowance times Σ|v|.
        residual_tol: largest optimality residual accepted, relative: ‖∇ℒ‖ ≤ residual_tol · s with
            s = ‖K (1 + |z|)‖_∞ the scale of the gradient's terms (``diagnose``).
        seed: for the random v of the vjp check.
        linear_solver: the solver whose vjp is checked (default: the node's).
        directions: reference floor only (a DDNError here: every coordinate is differenced).
    Returns:
        ``ddn.check.GradientReport``; scalars are worst cases over the batch (``n_active`` and
        ``active_rank`` of the element with the largest rank deficit), ``details`` holds
        per-element values. DDNWarnings are recorded in ``messages``; DDNErrors give ``ok=False``.
    """
    from .nodes import DeclarativeLayer

    if directions is not None:
        raise DDNError("check_gradient: directions=k (random directions) is for reference nodes; "
                       "a torch node is differenced along every input coordinate, per batch "
                       "element: check a small batch instead.")
    if unknown:
        raise DDNError(f"check_gradient: unknown options {sorted(unknown)} for a torch node.")
    Report = _report_cls()
    nan = float("nan")
    target = node_or_layer.node if isinstance(node_or_layer, DeclarativeLayer) else node_or_layer
    if isinstance(node_or_layer, DeclarativeLayer) and linear_solver is None:
        linear_solver = node_or_layer.linear_solver
    xs = tuple(torch.as_tensor(x).detach().to(torch.float64) if torch.as_tensor(x).is_floating_point()
               else torch.as_tensor(x) for x in xs)
    details = {"node": type(target).__name__, "rtol": rtol, "atol": atol, "eps": eps}
    messages = []
    is_node = getattr(target, "floor", None) == "torch" and hasattr(target, "_backward")
    if not is_node and not isinstance(target, torch.nn.Module):
        raise DDNError(f"check_gradient_torch needs a ddn.torch node, a DeclarativeLayer or an "
                       f"nn.Module, got {type(target).__name__}")
    g = torch.Generator().manual_seed(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DDNWarning)
        try:
            if is_node:
                node = copy.copy(target)
                if node.solver_tol is None:
                    node.solver_tol = 1e-13  # finite differences need an accurate solve
                if y is None:
                    y, ctx = node._solve_detached(xs)
                diag = node.diagnose(*xs, y=y, ctx=ctx)
                J = node.jacobian(*xs, y=y, ctx=ctx)
                J = torch.cat([t for t in J if t is not None], -1) if isinstance(J, tuple) else J
                b = y.shape[0]
                v = torch.randn(y.shape, generator=g, dtype=y.dtype)
                vj = node.vjp(*xs, v=v, y=y, ctx=ctx, linear_solver=linear_solver)
                vj = torch.cat([t.reshape(b, -1) for t in vj if t is not None], -1)
                vjp_abs = (vj - torch.einsum("bm,bmn->bn", v.reshape(b, -1), J)).abs().amax(1)
                vnorm1 = v.reshape(b, -1).abs()
                vjp_ref = torch.einsum("bm,bmn->bn", vnorm1, J.abs()).amax(1)
                vnorm1 = vnorm1.sum(1)
                y_out = y

                def fun(*a):
                    return node._solve_detached(a)[0]
                weak = diag["weakly_active"]
            else:
                module = copy.deepcopy(target).double()
                a = tuple(x.clone().requires_grad_(x.is_floating_point()) for x in xs)
                out = module(*a)
                b = out.shape[0]
                of = out.reshape(b, -1)
                rows = []
                for k in range(of.shape[1]):
                    gr = torch.autograd.grad(of[:, k].sum(), [t for t in a if t.requires_grad],
                                             retain_graph=True, allow_unused=True)
                    rows.append(torch.cat([torch.zeros_like(t).reshape(b, -1) if q is None else
                                           q.reshape(b, -1) for t, q in zip(a, gr)], -1))
                J = torch.stack(rows, 1)
                vjp_abs = None
                y_out = out.detach()
                diag = None
                weak = []

                def fun(*a):
                    with torch.no_grad():
                        return module(*a)
            sides = ["central"] + (["forward", "backward"] if weak else [])
            fds = {s: _fd_jacobian(fun, xs, eps, s) for s in sides}
        except DDNError as e:
            return Report(False, nan, nan, nan, messages=[f"DDNError: {e}"], details=details)
    for w in caught:  # each distinct message once (jacobian, vjp and diagnose all warn)
        if str(w.message) not in messages:
            messages.append(str(w.message))
    # absolute allowance per element: atol, but no more than the rounding noise of the
    # differences (1e3·eps·max|y| / step) — with a bare atol = 1e-9 a Jacobian of entries ~1e-10
    # passed whatever it was (twice the true one included)
    b = J.shape[0]
    ymax = y_out.reshape(b, -1).abs().amax(1).to(torch.float64) if y_out.numel() else \
        torch.zeros(b, dtype=torch.float64)
    atol_eff = torch.clamp(1e3 * torch.finfo(torch.float64).eps * ymax / eps, max=atol)
    details["atol_effective"] = atol_eff
    if weak:
        # a one-sided gradient must match, entry by entry of (element, input column), the forward
        # or the backward difference (with x and a bound both inputs, ∂y/∂x may be one side and
        # ∂y/∂u the other); where both sides agree, y is smooth there and either will do
        fwd, bwd = fds["forward"], fds["backward"]
        use_b = (J - bwd).abs().amax(1, keepdim=True) < (J - fwd).abs().amax(1, keepdim=True)
        kink = (fwd - bwd).abs().amax(1, keepdim=True) > torch.clamp(
            atol_eff.view(-1, 1, 1), min=rtol * float(fwd.abs().max()))
        named = sorted({"backward" if bool(u) else "forward" for u in use_b[kink].tolist()})
        weak_side = named[0] if len(named) == 1 else ("mixed" if named else "central")
        fds = {weak_side: torch.where(use_b, bwd, fwd)}
    errs = {}
    for s, Jfd in fds.items():
        abs_e = (J - Jfd).abs().flatten(1).amax(1)
        scale = Jfd.abs().flatten(1).amax(1)
        # an element whose Dy is 0 (e.g. a simplex vertex) is judged by atol alone
        rel = torch.where(scale > atol_eff, abs_e / scale.clamp_min(torch.finfo(torch.float64).tiny),
                          torch.where(abs_e <= atol_eff, torch.zeros_like(abs_e),
                                      torch.full_like(abs_e, float("inf"))))
        errs[s] = (abs_e, rel)
    if weak:
        side = weak_side
        messages.append(f"one-sided gradient (weakly active {weak}): compared with one-sided "
                        f"differences, column by column ({side})")
    else:
        side = "central"
    abs_e, rel_e = errs[side]
    max_abs, max_rel = float(abs_e.max()), float(rel_e.max())
    per_ok = (abs_e <= atol_eff) | (rel_e <= rtol)
    grad_ok = bool(per_ok.all())
    if vjp_abs is None:  # a plain module: its vjp is what the Jacobian was built from
        vjp_err, vjp_ok = 0.0, True
    else:
        vjp_err = float(vjp_abs.max())
        vjp_ok = bool((vjp_abs <= torch.maximum(rtol * vjp_ref, atol_eff * vnorm1)).all())
    if not grad_ok:
        messages.append(f"implicit Dy differs from finite differences at batch element(s) "
                        f"{(~per_ok).nonzero().flatten().tolist()} (max rel err {max_rel:.2e} > "
                        f"rtol {rtol:.0e})")
    if not vjp_ok:
        messages.append(f"vjp ({linear_solver or getattr(target, 'linear_solver', '')}) differs "
                        f"from vᵀ jacobian by {vjp_err:.2e}")
    details.update(jacobian=J, fd_jacobian=fds[side], fd_side=side, vjp_error=vjp_err,
                   abs_error=abs_e, rel_error=rel_e)
    if diag is None:
        return Report(ok=grad_ok, max_abs_error=max_abs, max_rel_error=max_rel, residual=nan,
                      messages=messages, details=details)
    res = diag["residual"]
    res_hi = res > residual_tol * diag["residual_scale"]  # relative to the gradient's scale s
    if diag.get("residual_primal") is not None:  # constrained: ∇f − Aᵀλ on its own scale too
        res_hi = res_hi | (diag["residual_primal"] > residual_tol * diag["residual_primal_scale"])
    res_ok = not bool(res_hi.any())
    if not res_ok:
        messages.append(f"optimality residual {float(res.max()):.2e} > {residual_tol:.0e} · s (s = "
                        f"the gradient's scale) at batch element(s) "
                        f"{res_hi.nonzero().flatten().tolist()}: y is not an accurate solution")
    wrong_sign = any("wrong sign" in m for m in messages)
    n_act, rank = 0, 0
    if diag["n_active"]:  # the element with the largest rank deficit (then the most active rows)
        e = max(range(len(diag["n_active"])),
                key=lambda k: (diag["n_active"][k] - diag["active_rank"][k], diag["n_active"][k]))
        n_act, rank = diag["n_active"][e], diag["active_rank"][e]
    details.update(residual=res, cond_H=diag["cond_H"], active_rank=diag["active_rank"],
                   n_active=diag["n_active"], multipliers=diag["multipliers"])
    return Report(
        ok=bool(grad_ok and vjp_ok and res_ok and not wrong_sign), max_abs_error=max_abs,
        max_rel_error=max_rel, residual=float(res.max()), cond_H=float(diag["cond_H"].max()),
        active_rank=rank, n_active=n_act,
        weakly_active=list(weak), messages=messages, details=details)
