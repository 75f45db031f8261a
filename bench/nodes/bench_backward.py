"""Backward time and peak memory of the generic unconstrained torch node against its baselines.

    python bench/nodes/bench_backward.py            # full run (~3 min on the shared 2-core CPU)
    python bench/nodes/bench_backward.py --quick    # m ∈ {8, 32} only (also under DDN_SMOKE=1)
    python bench/nodes/bench_backward.py --device cuda   # on a GPU: writes results-cuda.json

Two problems (batch b = 16, x and y in R^m, pseudo-Huber ρ(z) = √(1 + z²) − 1):

  dense-W  f(x, y) = Σ_i ρ(y_i − x_i) + (α/2)‖W y‖²,  W (m, m)/√m, α = 1/2:
           H = diag(ρ''(y − x)) + α WᵀW is dense; one Hessian–vector product costs O(m²).
  smooth   f(x, y) = Σ_i ρ(y_i − x_i) + (μ/2)‖D y‖²,  D the (m − 1, m) first difference, μ = 1
           (robust smoothing / denoising): H = diag(ρ'') + μ DᵀD is tridiagonal; one
           Hessian–vector product costs O(m). ddn does not know that: it treats H as dense.
  In both B = D²_XY f = −diag(ρ''(y − x)).

Methods (all on the same x, y, v, measured in the same run):
  closed-form  hand-written backward, vᵀDy = (H⁻¹v) ⊙ ρ'': dense-W builds H from the formula
               and uses Cholesky; smooth solves the tridiagonal system (Thomas algorithm, O(b·m)).
  naive        the common per-coordinate implicit backward: for each output coordinate i, one
               autograd call for row i of H = D²_YY f and one for row i of B = D²_XY f (both
               batched over the b elements by differentiating Σ_e ∂f/∂y_i; 2m calls), then
               Dy = −H⁻¹B (Cholesky of H, m right-hand sides) and vᵀDy.
  dense        DeclarativeLayer(node, linear_solver="dense"): H from batched Hessian–vector
               products, Cholesky, one VJP of ∇_y f (B never formed).
  cg           linear_solver="cg": conjugate gradients on Hessian–vector products (tol 1e-10).
  unroll       linear_solver="unroll": autograd through the Newton iterations of the forward.

Time: wall time of the backward only (the forward solve is done beforehand and not timed), in
interleaved rounds (each round runs every method once, order rotated, so all see the same load
on a shared machine); the median per method. Peak memory: the largest sum of bytes allocated and
not yet freed by torch's CPU allocator during the backward, from torch.profiler's memory events
(profile_memory=True) in time order; memory held before the backward starts (x, y, the saved
graph) is not counted. For unroll the graph kept by the forward is reported separately ("graph
kept"). At m = 256 the dense backward is also timed step by step (dense_breakdown in the JSON).

On CUDA (--device cuda) every timed call is bracketed by torch.cuda.synchronize(), and the peak
memory is torch.cuda.max_memory_allocated() during the backward minus what was allocated before.
"""
import argparse
import json
import math
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
ALPHA = 0.5  # weight of the dense coupling term, problem "dense-W"
MU = 1.0     # weight of the smoothness term, problem "smooth"


def rho(z):  # pseudo-Huber ρ(z) = √(1 + z²) − 1
    return torch.sqrt(1 + z * z) - 1


def rho2(z):  # ρ''(z) = (1 + z²)^(−3/2)
    return (1 + z * z) ** -1.5


class DenseW(DeclarativeNode):
    """f(x, y) = Σ ρ(y − x) + (α/2)‖Wy‖²: H = diag(ρ'') + α WᵀW dense, a Hessian–vector product
    costs O(m²). The solve returns a cached solution (not timed)."""

    name = "dense-W"

    def __init__(self, W, y_star=None, **kw):
        super().__init__(W.shape[0], **kw)
        self.W, self.y_star = W, y_star

    def objective(self, x, y):
        return rho(y - x).sum(-1) + 0.5 * ALPHA * ((y @ self.W.T) ** 2).sum(-1)

    def solve(self, x):
        if self.y_star is not None and self.linear_solver != "unroll":
            return self.y_star.clone(), {}
        return super().solve(x)

    def closed_form_backward(self, x, y, v):
        r2 = rho2(y - x)
        H = torch.diag_embed(r2) + ALPHA * (self.W.T @ self.W)  # H = D²_YY f
        L = torch.linalg.cholesky(H)
        w = torch.cholesky_solve(v.unsqueeze(-1), L).squeeze(-1)  # H w = v
        return w * r2  # vᵀDy = −wᵀB, B = D²_XY f = −diag(ρ'')


class Smooth(DenseW):
    """Robust smoothing f(x, y) = Σ ρ(y_i − x_i) + (μ/2)‖Dy‖², D the (m−1, m) first difference:
    H = diag(ρ'') + μ DᵀD is tridiagonal and a Hessian–vector product costs O(m), but ddn treats
    the node as generic (dense H). Closed form: a tridiagonal (Thomas) solve, O(b·m)."""

    name = "smooth"

    def __init__(self, m, y_star=None, **kw):
        DeclarativeNode.__init__(self, m, **kw)
        self.y_star = y_star

    def objective(self, x, y):
        d = y[:, 1:] - y[:, :-1]
        return rho(y - x).sum(-1) + 0.5 * MU * (d * d).sum(-1)

    def closed_form_backward(self, x, y, v):
        r2 = rho2(y - x)
        b, m = y.shape
        # H = D²_YY f: diagonal ρ'' + μ·(1, 2, …, 2, 1), off-diagonals −μ; solve H w = v (Thomas)
        diag = r2 + MU * 2
        diag[:, 0] -= MU
        diag[:, -1] -= MU
        e = -MU
        cp, vp = [None] * m, [None] * m
        cp[0], vp[0] = e / diag[:, 0], v[:, 0] / diag[:, 0]
        for i in range(1, m):
            den = diag[:, i] - e * cp[i - 1]
            cp[i], vp[i] = e / den, (v[:, i] - e * vp[i - 1]) / den
        w = [None] * m
        w[-1] = vp[-1]
        for i in range(m - 2, -1, -1):
            w[i] = vp[i] - cp[i] * w[i + 1]
        return torch.stack(w, 1) * r2  # vᵀDy = −wᵀB, B = −diag(ρ'')


def naive_rows(node, x, y):
    """H and B row by row: 2m autograd calls (see naive_backward)."""
    b, m = y.shape
    with torch.enable_grad():
        xr = x.detach().requires_grad_()
        yr = y.detach().requires_grad_()
        (g,) = torch.autograd.grad(node.objective(xr, yr).sum(), yr, create_graph=True)  # ∇_Y f
        H = torch.empty(b, m, m, dtype=y.dtype, device=y.device)
        B = torch.empty(b, m, x.shape[1], dtype=y.dtype, device=y.device)
        for i in range(m):
            gi = g[:, i].sum()
            H[:, i] = torch.autograd.grad(gi, yr, retain_graph=True)[0]  # row i of H
            B[:, i] = torch.autograd.grad(gi, xr, retain_graph=True)[0]  # row i of B
    return H, B


def naive_solve(H, B, v):
    L = torch.linalg.cholesky(H)
    Dy = -torch.cholesky_solve(B, L)  # Dy = −H⁻¹B, (b, m, n)
    return torch.einsum("bm,bmn->bn", v, Dy)


def naive_backward(node, x, y, v):
    """The common per-coordinate implicit backward: for each output coordinate i, one autograd call
    for row i of H = D²_YY f and one for row i of B = D²_XY f (each batched over the b elements by
    differentiating Σ_e ∂f/∂y_i, the objective being separable over the batch): 2m calls. Then
    Dy = −H⁻¹B (Cholesky of H, m right-hand sides) and vᵀDy."""
    H, B = naive_rows(node, x, y)
    return naive_solve(H, B, v)


DEVICE = torch.device("cpu")  # set by main(--device)


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timed(fn):
    """Wall time of fn() in seconds (the device synchronized before and after)."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def peak_bytes(fn):
    """Peak of (allocated − freed) bytes while fn() runs, and the net bytes it leaves allocated.
    CPU: torch CPU allocator memory events, in time order. CUDA: the allocator's peak counter."""
    if DEVICE.type == "cuda":
        sync()
        base = torch.cuda.memory_allocated(DEVICE)
        torch.cuda.reset_peak_memory_stats(DEVICE)
        fn()
        sync()
        return (torch.cuda.max_memory_allocated(DEVICE) - base,
                torch.cuda.memory_allocated(DEVICE) - base)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    evs = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                 if e.name() == "[memory]")
    cur = peak = 0
    for _, nb in evs:
        cur += nb
        peak = max(peak, cur)
    return peak, cur


def machine():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                     if line.startswith("Model name"))
    except Exception:
        model = platform.processor() or "unknown"
    info = {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "device": str(DEVICE)}
    if DEVICE.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(DEVICE)
        info["cuda"] = torch.version.cuda
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sizes", type=int, nargs="*", default=[8, 32, 128, 256, 512])
    ap.add_argument("--naive-max", type=int, default=512, help="largest m for the naive method")
    ap.add_argument("--unroll-max", type=int, default=256, help="largest m for unroll (memory)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--breakdown-m", type=int, default=256,
                    help="m at which the dense backward is timed step by step")
    ap.add_argument("--problems", nargs="*", default=["dense-W", "smooth"],
                    choices=["dense-W", "smooth"])
    ap.add_argument("--out", default=None, help="default: bench/nodes/results.json (a temporary "
                    "file for --quick, so that a smoke run never overwrites the measured table)")
    args, _ = ap.parse_known_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available here")
    if args.quick or os.environ.get("DDN_SMOKE", "") not in ("", "0"):
        args.sizes = [8, 32]
        args.quick = True
    if args.out is None:
        import tempfile
        args.out = (str(Path(tempfile.gettempdir()) / "ddn-bench-nodes-quick.json") if args.quick
                    else str(HERE / ("results.json" if DEVICE.type == "cpu"
                                     else f"results-{DEVICE.type}.json")))
    torch.set_num_threads(args.threads)
    dt = torch.float64
    b = args.batch
    rows = []
    breakdown = {}
    print(f"machine: {machine()}")
    hdr = (f"{'problem':>8} {'m':>5} {'method':>12} {'backward ms':>12} {'× closed':>9} "
           f"{'peak MiB':>10} {'note':>24}")
    print(hdr)
    print("-" * len(hdr))
    for prob in args.problems:
        for m in args.sizes:
            x, v, make, y_star = problem(prob, m, b, dt)
            rows += bench_one(prob, m, b, x, y_star, v, make, args)
            if m == args.breakdown_m:
                bd = dense_breakdown(make(y_star), x, y_star, v)
                breakdown[prob] = {"m": m, "batch": b, "seconds": bd}
                print(f"{prob}, m = {m}: dense backward by step: " +
                      ", ".join(f"{k} {t * 1e3:.1f} ms" for k, t in bd.items()), flush=True)
    # the done-when checks, per problem
    summary = {}
    by = {(r["problem"], r["m"], r["method"]): r for r in rows}
    print()
    for prob in args.problems:
        for mm in args.sizes:
            if (prob, mm, "dense") in by and (prob, mm, "naive") in by:
                k = by[(prob, mm, "naive")]["backward_s"] / by[(prob, mm, "dense")]["backward_s"]
                summary[f"{prob}: naive_over_dense_at_{mm}"] = k
                verdict = (f" ({'meets' if k >= 20 else 'does NOT meet'} the ≥ 20× target at m = 256)"
                           if mm == 256 else "")
                if mm == 256 or args.quick:
                    print(f"{prob}, m = {mm}, batch {b}: dense backward is {k:.1f}× faster than "
                          f"naive{verdict}")
        for method in ("closed-form", "naive", "dense", "cg", "unroll"):
            pts = [(r["m"], r["peak_bytes"]) for r in rows if r["problem"] == prob and r["method"] == method
                   and r["peak_bytes"] == r["peak_bytes"] and r["peak_bytes"] > 0 and r["m"] >= 32]
            if len(pts) >= 2:
                (m0, p0), (m1, p1) = pts[0], pts[-1]
                k = math.log(p1 / p0) / math.log(m1 / m0)
                summary[f"{prob}: peak_memory_exponent_{method}"] = k
                print(f"{prob}: peak memory of {method:>11} grows like m^{k:.2f} (m = {m0}..{m1})")
    Path(args.out).write_text(json.dumps({"machine": machine(), "rows": rows, "summary": summary,
                                          "dense_breakdown": breakdown},
                                         indent=1))
    print(f"wrote {args.out}")


def problem(prob, m, b, dt):
    """The inputs of one table row, seeded by m, on DEVICE: x, v (b, m), ``make(y_star=None,
    **node_kw)`` building the node, and the forward solution y_star (asserted converged)."""
    torch.manual_seed(m)
    x = torch.randn(b, m, dtype=dt).to(DEVICE)
    v = torch.randn(b, m, dtype=dt).to(DEVICE)
    if prob == "dense-W":
        W = (torch.randn(m, m, dtype=dt) / m ** 0.5).to(DEVICE)

        def make(y_star=None, **kw):
            return DenseW(W, y_star, **kw)
    else:
        def make(y_star=None, **kw):
            return Smooth(m, y_star, **kw)
    y_star, info = make().solve(x)
    assert info["converged"].all(), "forward solve did not converge"
    return x, v, make, y_star


def dense_breakdown(node, x, y, v, reps=5):
    """Where the dense backward's time goes (the steps of ddn.torch._implicit.implicit_vjp, timed
    one by one in interleaved rounds): ∇_Y f with its graph, H from the batched Hessian–vector
    products, the Cholesky solve with its checks, the final VJP −wᵀB."""
    from ddn.torch import _implicit, _linalg
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    with torch.enable_grad():
        def grad_f():
            return torch.autograd.grad(node.objective(xr, yr).sum(), yr, create_graph=True)[0]
        g = grad_f()
        H = _implicit.batched_hessian(g, yr)
        w = _linalg.solve_dense(H, v)[0]
        steps = {"grad f (with graph)": grad_f,
                 "H = D²_YY f (batched HVPs)": lambda: _implicit.batched_hessian(g, yr),
                 "Cholesky solve + checks": lambda: _linalg.solve_dense(H, v),
                 "VJP −wᵀB": lambda: torch.autograd.grad(g, xr, grad_outputs=-w, retain_graph=True),
                 "implicit_vjp (all)": lambda: _implicit.implicit_vjp(node.objective, (xr,), y, v),
                 "naive: 2m autograd calls": lambda: naive_rows(node, x, y),
                 "naive: Cholesky + m-column solve": lambda: naive_solve(Hn, Bn, v)}
        Hn, Bn = naive_rows(node, x, y)
        times = {k: [] for k in steps}
        for _ in range(reps):
            for k, fn in steps.items():
                times[k].append(timed(fn))
    return {k: statistics.median(t) for k, t in times.items()}


def bench_one(prob, m, b, x, y_star, v, make, args):
    """Time every method in interleaved rounds (each round runs each method once, the order
    rotated), so that all see the same machine load; median per method. Peak memory separately."""
    reps = 7 if m <= 128 else (5 if m <= 256 else 3)
    node = make(y_star)
    ref = node.closed_form_backward(x, y_star, v)
    prepare, notes, peaks = {}, {}, {}

    # each prepare() does the untimed part and returns the timed backward
    prepare["closed-form"] = lambda: (lambda: node.closed_form_backward(x, y_star, v))
    if m <= args.naive_max:
        g = naive_backward(node, x, y_star, v)
        assert torch.allclose(g, ref, atol=1e-8), "naive disagrees with the closed form"
        prepare["naive"] = lambda: (lambda: naive_backward(node, x, y_star, v))
    else:
        notes["naive"] = f"skipped (m > {args.naive_max})"
    layers = {}
    for method in ("dense", "cg", "unroll"):
        if method == "unroll" and m > args.unroll_max:
            notes[method] = f"skipped (m > {args.unroll_max})"
            continue
        layer = layers[method] = DeclarativeLayer(make(y_star, linear_solver=method, tol=1e-10))
        if method == "unroll":
            hold = []
            kept = peak_bytes(lambda: hold.append(layer(x.clone().requires_grad_())))[1]
            del hold
            notes[method] = f"graph kept {kept / 2**20:.0f} MiB"

        def prep(layer=layer):
            xr = x.clone().requires_grad_()
            y = layer(xr)  # forward (cached solve, or the unrolled Newton): not timed
            return lambda: (y.backward(v), xr)[1]

        xr = prep()()
        assert torch.allclose(xr.grad, ref, atol=1e-6), f"{method} disagrees with the closed form"
        prepare[method] = prep

    names = list(prepare)
    times = {k: [] for k in names}
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            if k == "unroll" and m > 128 and times[k]:
                continue  # one run of unroll beyond m = 128 (seconds each)
            run = prepare[k]()
            times[k].append(timed(run))
    for k in names:
        run = prepare[k]()
        peaks[k] = peak_bytes(run)[0]
    res = {}
    for k in ("closed-form", "naive", "dense", "cg", "unroll"):
        if k in times:
            res[k] = (statistics.median(times[k]), peaks[k], notes.get(k, ""), times[k])
        else:
            res[k] = (float("nan"), float("nan"), notes.get(k, ""), [])

    rows = []
    base = res["closed-form"][0]
    for method, (t, pk, note, ts) in res.items():
        rows.append({"problem": prob, "m": m, "batch": b, "method": method, "backward_s": t,
                     "peak_bytes": pk, "ratio_to_closed_form": t / base, "note": note,
                     "times_s": ts})
        print(f"{prob:>8} {m:>5} {method:>12} {t * 1e3:>12.2f} {t / base:>9.1f} {pk / 2**20:>10.2f} "
              f"{note:>24}", flush=True)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
