"""Gradient and optimality checks for nodes of either floor.

``check_gradient(node, x)`` compares the node's implicit Jacobian Dy(x) with central finite
differences of its own solver, (y(x + εe_j) − y(x − εe_j)) / 2ε, checks ``vjp`` against vᵀDy for
a random v, and reports what it found at the solution: the KKT / optimality residual, the
condition number of H = D²_YY L, the rank of the active-constraint Jacobian and any weakly active
inequality (where the gradient is one-sided and is compared with one-sided differences).

Nodes of the torch floor (``node.floor == "torch"`` or an ``nn.Module``) are handed to
``ddn.torch.check.check_gradient_torch``, which builds the same :class:`GradientReport`.
"""
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import DDNError, DDNWarning

__all__ = ["GradientReport", "check_gradient", "finite_difference_jacobian"]


@dataclass
class GradientReport:
    """Result of :func:`check_gradient`; ``str(report)`` is a short readable summary.

    Fields: ``ok`` (all checks passed), ``max_abs_error`` / ``max_rel_error`` (implicit Dy vs
    finite differences; relative to max |Dy_fd|), ``residual`` (optimality/KKT residual at y),
    ``cond_H`` (condition of D²_YY L, nan when there is none), ``active_rank`` and ``n_active``
    (rank and rows of the equality + active inequality Jacobian), ``weakly_active`` (indices of
    active inequalities with zero multiplier), ``messages`` (what went wrong or is worth knowing,
    in words), ``details`` (the Jacobians, the vjp error, tolerances, ...).
    """

    ok: bool
    max_abs_error: float
    max_rel_error: float
    residual: float
    cond_H: float = float("nan")
    active_rank: int = 0
    n_active: int = 0
    weakly_active: list = field(default_factory=list)
    messages: list = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def __str__(self):
        d = self.details
        where = ", ".join(str(d[k]) for k in ("node", "rule") if d.get(k))
        lines = [f"GradientReport: {'OK' if self.ok else 'FAILED'}"
                 + (f"  [{where}]" if where else "")]
        if np.isnan(self.max_abs_error):  # the check could not run: say why, nothing else
            return "\n".join(lines + [f"  - {m}" for m in self.messages])
        lines.append(
            f"  Dy vs finite differences : max abs err {self.max_abs_error:.2e}, "
            f"max rel err {self.max_rel_error:.2e} (rtol {d.get('rtol', float('nan')):.0e})")
        if "vjp_error" in d:
            lines.append(f"  vjp vs vᵀDy              : {d['vjp_error']:.2e}")
        lines += [
            f"  optimality residual      : {self.residual:.2e}",
            f"  cond(H)                  : {self.cond_H:.2e}",
            f"  active constraints       : {self.n_active} (rank {self.active_rank})"
            + (f", weakly active {self.weakly_active} (one-sided)" if self.weakly_active else ""),
        ]
        lines += [f"  - {m}" for m in self.messages]
        return "\n".join(lines)

    __repr__ = __str__


def finite_difference_jacobian(solve, x, eps=1e-5, side="central", directions=None):
    """Jacobian of ``solve: (n,) -> (m,)`` by finite differences, (m, n) — or, with
    ``directions`` U (n, k), the directional derivatives Dy·U, (m, k).

    side="central": (y(x + h u) − y(x − h u)) / 2h; "forward" / "backward": one-sided,
    second order ((−3y(x) + 4y(x ± h u) − y(x ± 2h u)) / ±2h), for points where y is smooth
    on one side only (weakly active constraints). h = eps · max(1, |x_j|) along e_j, eps along
    a direction u.
    """
    x = np.asarray(x, dtype=float)
    if side not in ("central", "forward", "backward"):
        raise DDNError(f"side must be 'central', 'forward' or 'backward', got {side!r}.")
    if directions is None:
        U, hs = np.eye(x.size), [eps * max(1.0, abs(xj)) for xj in x]
    else:
        U = np.asarray(directions, dtype=float).reshape(x.size, -1)
        hs = [eps] * U.shape[1]
    y0 = solve(x) if side != "central" else None
    cols = []
    for u, h in zip(U.T, hs):
        e = h * u
        if side == "central":
            cols.append((solve(x + e) - solve(x - e)) / (2 * h))
        elif side == "forward":
            cols.append((-3 * y0 + 4 * solve(x + e) - solve(x + 2 * e)) / (2 * h))
        else:
            cols.append((3 * y0 - 4 * solve(x - e) + solve(x - 2 * e)) / (2 * h))
    return np.column_stack(cols)


def _is_default(value, default):
    if value is default:
        return True
    return isinstance(value, (int, float)) and isinstance(default, (int, float)) \
        and value == default


def _is_torch(node):
    if getattr(node, "floor", None) == "torch":
        return True
    try:
        import sys
        torch = sys.modules.get("torch")
        return torch is not None and isinstance(node, torch.nn.Module)
    except Exception:  # pragma: no cover - a broken torch install must not break the check
        return False


def _diagnose(node, x, y, ctx):
    """Optimality diagnostics: node.optimality for a single node, the worst stage of a chain."""
    if hasattr(node, "nodes"):  # ComposedNode: diagnose each stage
        out = {"residual": 0.0, "cond_H": float("nan"), "rank_A": 0, "n_active": 0,
               "weakly_active": [], "messages": [], "rule": getattr(node, "rule", ""),
               "residuals": []}
        for k, (sub, (z, yk, ck)) in enumerate(zip(node.nodes, node._stages(x, y, ctx))):
            with warnings.catch_warnings(record=True) as caught:  # said once, with its stage
                warnings.simplefilter("always", DDNWarning)
                d = _diagnose(sub, z, yk, ck)
            label = node.stage_label(k) if hasattr(node, "stage_label") else f"stage {k}"
            said = d["messages"] + [str(w.message) for w in caught
                                    if issubclass(w.category, DDNWarning)]
            out["messages"] = _unique(out["messages"] + [f"{label}: {m}" for m in said])
            out["residual"] = max(out["residual"], d["residual"])
            out["residuals"] += d["residuals"]
            out["cond_H"] = np.nanmax([out["cond_H"], d["cond_H"]])
            out["weakly_active"] += [(k, i) for i in d["weakly_active"]]
        return out
    opt = node.optimality(x, y, ctx)
    floor = getattr(opt, "residual_floor", 0.0)
    return {"residual": opt.residual, "residuals": [(opt.residual, floor)],
            "cond_H": opt.cond_H, "rank_A": opt.rank_A,
            "n_active": opt.n_active, "weakly_active": list(opt.weakly_active),
            "messages": list(opt.messages), "rule": opt.rule}


def _gap_to_solver(node, x, y):
    """max |node.solve(x) − y| (0 when the solver fails: nothing to say then)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DDNWarning)
        try:
            return float(np.max(np.abs(np.asarray(node.solve(x)[0], float) - np.asarray(y, float))))
        except DDNError:
            return 0.0


def _unique(messages):
    """The messages in order, each once."""
    return list(dict.fromkeys(messages))


_DEFAULTS = {"y": None, "ctx": None, "eps": 1e-5, "rtol": 1e-6, "atol": 1e-9,
             "residual_tol": 1e-6, "seed": 0, "directions": None}


def check_gradient(node, *xs, y=None, ctx=None, eps=1e-5, rtol=1e-6, atol=1e-9,
                   residual_tol=1e-6, seed=0, directions=None, **kwargs):
    """Check a node's implicit gradient against central finite differences of its solver.

    Args:
        node: a ``ddn.reference`` node (or a torch-floor node, handed to
            ``ddn.torch.check.check_gradient_torch`` with the options given here).
        *xs: the input x (n,) — one array for the reference floor.
        y, ctx: a solution from ``node.solve(x)`` to check (solved here when None).
        eps: finite-difference step (scaled by max(1, |x_j|)).
        rtol, atol: pass when max |Dy − Dy_fd| ≤ rtol · max |Dy_fd| or ≤ the absolute
            allowance min(atol, noise), ``noise`` = 1e3 · machine-eps · max|y| / h the
            rounding noise of the differences (h the smallest step). atol is meant for entries
            of Dy that are 0, where finite differences return rounding noise; capped by the
            noise it cannot pass a Jacobian whose entries are all ≲ atol (y in other units,
            Dy ~ 1e-10) without looking at them: such a Dy is judged relatively. The
            allowance used is ``details["atol_effective"]``. The vjp must match vᵀDy to
            rtol · max(|v|ᵀ|Dy|), or the same allowance times Σ|v|.
        residual_tol: largest optimality residual accepted (or its rounding level,
            100·eps·max(|H|, |A|)·max(1, |y|), where that is larger).
        seed: for the random v of the vjp check (and the random directions).
        directions: None (every coordinate: 2n solves) or k, to compare Dy·u with a finite
            difference along k random directions u (2k solves; for large n): unit vectors
            with coordinate j then scaled by max(1, |x_j|), like the coordinate steps.
    Returns:
        :class:`GradientReport`. DDNWarnings raised while checking are recorded in
        ``messages`` instead of propagating; DDNErrors are reported with ``ok=False``.
    """
    if _is_torch(node):
        from ddn.torch.check import check_gradient_torch
        given = dict(y=y, ctx=ctx, eps=eps, rtol=rtol, atol=atol, residual_tol=residual_tol,
                     seed=seed, directions=directions)
        given = {k: v for k, v in given.items() if not _is_default(v, _DEFAULTS[k])}
        return check_gradient_torch(node, *xs, **given, **kwargs)
    if kwargs:
        raise DDNError(f"check_gradient: unknown options {sorted(kwargs)} for a reference node.")
    if len(xs) != 1:
        raise DDNError(f"check_gradient: a reference node takes one input x, got {len(xs)}.")
    x = xs[0]
    details = {"node": repr(node), "rtol": rtol, "atol": atol, "eps": eps}
    messages = []
    nan = float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DDNWarning)
        try:
            given = y is not None
            if y is None:
                y, ctx = node.solve(x)
            x = np.asarray(x, dtype=float)
            diag = _diagnose(node, x, y, ctx)
            J = node.jacobian(x, y, ctx)
            rng = np.random.default_rng(seed)
            v = rng.standard_normal(np.size(y))
            vjp_err = float(np.max(np.abs(node.vjp(x, v, y, ctx) - v @ J)))
            U = None
            if directions is not None:
                U = rng.standard_normal((x.size, int(directions)))
                # unit directions, each coordinate then scaled by max(1, |x_j|) as the
                # coordinate steps are: with x ~ 1e8 a step of 1e-5 along a unit u was at the
                # rounding level of x, and a correct linear node failed (rel. error 1e-3)
                U /= np.linalg.norm(U, axis=0)
                U *= np.maximum(1.0, np.abs(x))[:, None]
            sides = ["central"] + (["forward", "backward"] if diag["weakly_active"] else [])
            fds = {s: finite_difference_jacobian(lambda z: node.solve(z)[0], x, eps, s, U)
                   for s in sides}
        except DDNError as e:
            return GradientReport(False, nan, nan, nan, messages=[f"DDNError: {e}"],
                                  details=details)
    # each message once: a node warns on every optimality evaluation (diagnosis, jacobian,
    # vjp), and the same text is also in diag["messages"]
    messages = _unique(messages + diag["messages"] + [str(w.message) for w in caught])
    # compare with central differences; a one-sided gradient (weakly active constraint) must
    # match, column by column, the forward or the backward difference
    J_full, J = J, (J if U is None else J @ U)  # compare Dy·U along random directions
    side, Jfd = "central", fds["central"]
    # absolute allowance: atol, but no more than the rounding noise of the differences
    # (1e3·eps·max|y| / h) — with a bare atol = 1e-9 a Jacobian of entries ~1e-10 passed
    # whatever it was (twice the true one included)
    h = eps if U is not None else eps * float(np.min(np.maximum(1.0, np.abs(x))))
    noise = 1e3 * np.finfo(float).eps * float(np.max(np.abs(y), initial=0.0)) / h
    atol_eff = min(atol, noise)
    details["atol_effective"] = atol_eff
    if diag["weakly_active"]:
        fwd, bwd = fds["forward"], fds["backward"]
        col_err = {s: np.max(np.abs(J - fds[s]), axis=0) for s in ("forward", "backward")}
        sides = np.where(col_err["forward"] <= col_err["backward"], "forward", "backward")
        kink = np.max(np.abs(fwd - bwd), axis=0) > max(atol_eff, rtol * np.max(np.abs(fwd)))
        sides = np.where(kink, sides, "both")  # columns where y is smooth: either side
        Jfd = np.where(sides == "backward", bwd, fwd)
        named = sorted(set(sides[kink].tolist()))
        side = named[0] if len(named) == 1 else ("mixed" if named else "central")
        details["fd_sides"] = [str(s) for s in sides]
        messages.append(f"one-sided gradient (weakly active {diag['weakly_active']}): compared "
                        f"with one-sided differences ({side})")
    max_abs = float(np.max(np.abs(J - Jfd)))
    max_rel = max_abs / max(float(np.max(np.abs(Jfd))), np.finfo(float).tiny)
    grad_ok = max_abs <= atol_eff or max_rel <= rtol
    vjp_tol = max(rtol * float(np.max(np.abs(v) @ np.abs(J_full))),
                  atol_eff * float(np.sum(np.abs(v))))
    vjp_ok = vjp_err <= vjp_tol
    # a residual at the rounding level of the first-order conditions (100·eps·|H|·|y|, e.g.
    # ‖D_Y f‖ ≈ 3e-6 at the correctly rounded y of Σeᵘ − xᵀu, x ~ 1e9) is as good as y gets
    res_ok = all(r <= max(residual_tol, floor) for r, floor in diag["residuals"])
    if not grad_ok:
        messages.append(f"implicit Dy differs from finite differences (max rel err "
                        f"{max_rel:.2e} > rtol {rtol:.0e})")
        # the differences follow the solver's branch: a y given from another branch (two
        # minima, Eq. 49–50) failed with "Dy differs from finite differences" and no why
        gap = _gap_to_solver(node, x, y) if given else 0.0
        if gap > 1e-6 * max(1.0, float(np.max(np.abs(y)))):
            messages.append(f"the y given differs from node.solve(x) by {gap:.2e}: the finite "
                            "differences follow the solver's solution, so they differentiate "
                            "another solution than the y given (Sec. 4.7.4)")
    if not vjp_ok:
        messages.append(f"vjp differs from vᵀ jacobian by {vjp_err:.2e}")
    if not res_ok:
        messages.append(f"optimality residual {diag['residual']:.2e} > {residual_tol:.0e}: y is "
                        "not an accurate solution")
    wrong_sign = any("λ > 0" in m for m in messages)
    details.update(jacobian=J_full, fd_jacobian=Jfd, fd_side=side, vjp_error=vjp_err,
                   rule=diag["rule"], directions=U)
    return GradientReport(
        ok=bool(grad_ok and vjp_ok and res_ok and not wrong_sign), max_abs_error=max_abs,
        max_rel_error=max_rel, residual=float(diag["residual"]), cond_H=float(diag["cond_H"]),
        active_rank=int(diag["rank_A"]), n_active=int(diag["n_active"]),
        weakly_active=diag["weakly_active"], messages=messages, details=details)
