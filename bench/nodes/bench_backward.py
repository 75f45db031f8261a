"""Backward time and peak memory of the generic unconstrained torch node against its baselines.

    python bench/nodes/bench_backward.py            # full run (~3-5 min on a 2-core CPU)
    python bench/nodes/bench_backward.py --quick    # m ∈ {8, 32} only (also under DDN_SMOKE=1)

Problem (batch b = 16, x and y in R^m):

    f(x, y) = Σ_i ρ(y_i − x_i) + (α/2) ‖W y‖²,   ρ(z) = √(1 + z²) − 1 (pseudo-Huber),  W (m, m)/√m

so H = diag(ρ''(y − x)) + α WᵀW is dense and B = D²_XY f = −diag(ρ''(y − x)).

Methods (all on the same x, y, v, measured in the same run):
  closed-form  hand-written backward: H built from the formula, Cholesky, vᵀDy = (H⁻¹v) ⊙ ρ''.
  naive        implicit backward that builds H and B with one autograd call per output
               coordinate (m calls), then Dy = −H⁻¹B (m right-hand sides) and vᵀDy.
  dense        DeclarativeLayer(node, linear_solver="dense"): H from one vmapped batch of
               Hessian–vector products, Cholesky, one VJP of ∇_y f.
  cg           linear_solver="cg": conjugate gradients on Hessian–vector products (tol 1e-10).
  unroll       linear_solver="unroll": autograd through the Newton iterations of the forward.

Time: median wall time of the backward only (the forward solve is done beforehand and not timed).
Peak memory: the largest sum of bytes allocated and not yet freed by torch's CPU allocator during
the backward, from torch.profiler's memory events (profile_memory=True) in time order; memory held
before the backward starts (x, y, the saved graph) is not counted. For unroll the graph kept by
the forward is reported separately ("graph kept"), since that is where unrolling pays.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from ddn.torch import DeclarativeLayer, DeclarativeNode

HERE = Path(__file__).resolve().parent
ALPHA = 0.5


def rho2(z):  # ρ''(z) for the pseudo-Huber penalty with α = 1
    return (1 + z * z) ** -1.5


class Bench(DeclarativeNode):
    """f(x, y) = Σ ρ(y − x) + (α/2)‖Wy‖²; the solve returns a cached solution (not timed)."""

    def __init__(self, W, y_star=None, **kw):
        super().__init__(W.shape[0], **kw)
        self.W, self.y_star = W, y_star

    def objective(self, x, y):
        z = y - x
        return (torch.sqrt(1 + z * z) - 1).sum(-1) + 0.5 * ALPHA * ((y @ self.W.T) ** 2).sum(-1)

    def solve(self, x):
        if self.y_star is not None and self.linear_solver != "unroll":
            return self.y_star.clone(), {}
        return super().solve(x)


def closed_form_backward(x, y, v, W):
    r2 = rho2(y - x)
    H = torch.diag_embed(r2) + ALPHA * (W.T @ W)  # H = D²_YY f
    L = torch.linalg.cholesky(H)
    w = torch.cholesky_solve(v.unsqueeze(-1), L).squeeze(-1)  # H w = v
    return w * r2  # vᵀDy = −wᵀB, B = −diag(ρ'')


def naive_backward(node, x, y, v):
    b, m = y.shape
    with torch.enable_grad():
        xr = x.detach().requires_grad_()
        yr = y.detach().requires_grad_()
        (g,) = torch.autograd.grad(node.objective(xr, yr).sum(), yr, create_graph=True)
        H = torch.empty(b, m, m, dtype=y.dtype)
        B = torch.empty(b, m, m, dtype=y.dtype)
        for i in range(m):  # one autograd call per output coordinate: row i of H and of B
            Hi, Bi = torch.autograd.grad(g[:, i].sum(), (yr, xr), retain_graph=True)
            H[:, i], B[:, i] = Hi, Bi
    Dy = -torch.linalg.solve(H, B)  # Dy = −H⁻¹B, (b, m, n)
    return torch.einsum("bm,bmn->bn", v, Dy)


def peak_bytes(fn):
    """Peak of (allocated − freed) bytes over torch CPU memory events while fn() runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    evs = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                 if e.name() == "[memory]")
    cur = peak = 0
    for _, nb in evs:
        cur += nb
        peak = max(peak, cur)
    return peak, cur


def timed(fn, reps):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def machine():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                     if line.startswith("Model name"))
    except Exception:
        model = platform.processor() or "unknown"
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sizes", type=int, nargs="*", default=[8, 32, 128, 256, 512])
    ap.add_argument("--naive-max", type=int, default=512, help="largest m for the naive method")
    ap.add_argument("--unroll-max", type=int, default=256, help="largest m for unroll (memory)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="default: bench/nodes/results.json (a temporary "
                    "file for --quick, so that a smoke run never overwrites the measured table)")
    args, _ = ap.parse_known_args(argv)
    if args.quick or os.environ.get("DDN_SMOKE", "") not in ("", "0"):
        args.sizes = [8, 32]
        args.quick = True
    if args.out is None:
        import tempfile
        args.out = (str(Path(tempfile.gettempdir()) / "ddn-bench-nodes-quick.json") if args.quick
                    else str(HERE / "results.json"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dt = torch.float64
    b = args.batch
    rows = []
    print(f"machine: {machine()}")
    hdr = f"{'m':>5} {'method':>12} {'backward ms':>12} {'× closed':>9} {'peak MiB':>10} {'note':>24}"
    print(hdr)
    print("-" * len(hdr))
    for m in args.sizes:
        W = torch.randn(m, m, dtype=dt) / m ** 0.5
        x = torch.randn(b, m, dtype=dt)
        v = torch.randn(b, m, dtype=dt)
        y_star, info = Bench(W).solve(x)
        assert info["converged"].all(), "forward solve did not converge"
        reps = 5 if m <= 128 else 3
        res = {}

        # closed form (the baseline)
        ref = closed_form_backward(x, y_star, v, W)
        res["closed-form"] = (timed(lambda: closed_form_backward(x, y_star, v, W), reps),
                              peak_bytes(lambda: closed_form_backward(x, y_star, v, W))[0], "")

        # naive
        if m <= args.naive_max:
            node = Bench(W, y_star)
            g = naive_backward(node, x, y_star, v)
            assert torch.allclose(g, ref, atol=1e-8), "naive disagrees with the closed form"
            res["naive"] = (timed(lambda: naive_backward(node, x, y_star, v), reps if m <= 128 else 1),
                            peak_bytes(lambda: naive_backward(node, x, y_star, v))[0], "")
        else:
            res["naive"] = (float("nan"), float("nan"), f"skipped (m > {args.naive_max})")

        # dense, cg, unroll through DeclarativeLayer
        for method in ("dense", "cg", "unroll"):
            if method == "unroll" and m > args.unroll_max:
                res[method] = (float("nan"), float("nan"), f"skipped (m > {args.unroll_max})")
                continue
            layer = DeclarativeLayer(Bench(W, y_star, linear_solver=method, tol=1e-10))
            note = ""
            if method == "unroll":
                hold = []
                kept = peak_bytes(lambda: hold.append(layer(x.clone().requires_grad_())))[1]
                del hold
                note = f"graph kept {kept / 2**20:.0f} MiB"

            def fwd():
                xr = x.clone().requires_grad_()
                return xr, layer(xr)

            xr, y = fwd()
            y.backward(v)
            assert torch.allclose(xr.grad, ref, atol=1e-6), f"{method} disagrees with the closed form"
            ts = []
            for _ in range(reps if m <= 128 or method != "unroll" else 1):
                xr, y = fwd()
                t0 = time.perf_counter()
                y.backward(v)
                ts.append(time.perf_counter() - t0)
            xr, y = fwd()
            res[method] = (statistics.median(ts), peak_bytes(lambda: y.backward(v))[0], note)
            del xr, y, layer

        base = res["closed-form"][0]
        for method, (t, pk, note) in res.items():
            rows.append({"m": m, "batch": b, "method": method, "backward_s": t, "peak_bytes": pk,
                         "ratio_to_closed_form": t / base, "note": note})
            print(f"{m:>5} {method:>12} {t * 1e3:>12.2f} {t / base:>9.1f} {pk / 2**20:>10.2f} {note:>24}",
                  flush=True)
    # the done-when checks
    summary = {}
    by = {(r["m"], r["method"]): r for r in rows}
    if (256, "dense") in by and (256, "naive") in by:
        summary["naive_over_dense_at_256"] = by[(256, "naive")]["backward_s"] / by[(256, "dense")]["backward_s"]
        print(f"\nat m = 256, batch {b}: dense backward is "
              f"{summary['naive_over_dense_at_256']:.1f}× faster than naive")
    for method in ("closed-form", "naive", "dense", "cg", "unroll"):
        pts = [(r["m"], r["peak_bytes"]) for r in rows if r["method"] == method
               and r["peak_bytes"] == r["peak_bytes"] and r["peak_bytes"] > 0 and r["m"] >= 32]
        if len(pts) >= 2:
            (m0, p0), (m1, p1) = pts[0], pts[-1]
            import math
            k = math.log(p1 / p0) / math.log(m1 / m0)
            summary[f"peak_memory_exponent_{method}"] = k
            print(f"peak memory of {method:>11} grows like m^{k:.2f} (m = {m0}..{m1})")
    Path(args.out).write_text(json.dumps({"machine": machine(), "rows": rows, "summary": summary},
                                         indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
