"""Benchmark the paper's layers against their plain counterparts, measured in the same run.

    python bench/layers/bench_layers.py            # full size (about a minute)
    python bench/layers/bench_layers.py --quick    # small shapes (CI smoke; DDN_SMOKE=1 too)

1. Robust pooling of a PointNet-sized ``(24, 1024, 2048)`` float32 tensor over the last dim,
   forward + backward, against max pooling and mean pooling; beside each time the optimality
   residual reached, ``max_rows |Σφ'(y − x_i)| / Σ|φ'(y − x_i)|`` evaluated in float64 at the
   float32 ``y`` (rounding of ``y`` itself limits it to about 1e-7).
2. Lp-sphere / Lp-ball / simplex projections of ``(256, 512)`` float32, forward + backward,
   against ``torch.nn.functional.normalize``.

Both use the compiled CPU kernel (``ddn.torch._kernels``); the eager fallback is timed too.
Timings are the minimum over interleaved repeats (robust to other load on a shared machine);
ratios are against baselines timed in the same rounds. Writes ``bench/layers/results.json``.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import ddn.torch as T
from ddn.torch import _kernels
from ddn.torch.pooling import _d1d2

HERE = Path(__file__).resolve().parent
INF = float("inf")
POOL_TARGET = {"quadratic": 2.0, "pseudo-huber": 2.0, "huber": 2.0, "welsch": 5.0,
               "truncated-quadratic": 5.0}
PROJ_TARGET = 5.0


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(ln.split(":", 1)[1].strip() for ln in out.splitlines()
                    if ln.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def fwd_bwd(f, x, v):
    def run():
        xg = x.detach().requires_grad_()
        y = f(xg)
        torch.autograd.grad(y, xg, v)
    return run


def timed(cases, reps):
    """{name: run} -> {name: (min seconds, median seconds)}; rounds interleave the cases."""
    for run in cases.values():  # warm-up (also builds the kernel)
        run()
    times = {k: [] for k in cases}
    for _ in range(reps):
        for k, run in cases.items():
            t = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - t)
    return {k: (min(t), sorted(t)[len(t) // 2]) for k, t in times.items()}


def pool_residual(x, pen, alpha=1.0, chunk=1024):
    y = T.robust_pool(x, pen, alpha).reshape(-1)
    x2 = x.reshape(-1, x.shape[-1])
    worst = 0.0
    a = torch.tensor(alpha, dtype=torch.float64)
    for i in range(0, x2.shape[0], chunk):
        z = y[i:i + chunk, None].double() - x2[i:i + chunk].double()
        d1, _ = _d1d2(z, pen, a)
        r = d1.sum(-1).abs() / d1.abs().sum(-1).clamp_min(1e-300)
        worst = max(worst, float(r.max()))
    return worst


def bench_pooling(shape, reps, eager_rows):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    v = torch.randn(*shape[:-1])
    cases = {"max": fwd_bwd(lambda t: t.max(-1).values, x, v),
             "mean": fwd_bwd(lambda t: t.mean(-1), x, v)}
    for pen in T.PENALTIES:
        cases[pen] = fwd_bwd(lambda t, pen=pen: T.robust_pool(t, pen, 1.0), x, v)
    _kernels.ENABLED = True
    res = timed(cases, reps)
    rows = []
    for k, (tmin, tmed) in res.items():
        row = {"layer": k, "ms": 1e3 * tmin, "median_ms": 1e3 * tmed,
               "vs_max": tmin / res["max"][0], "vs_mean": tmin / res["mean"][0]}
        if k in POOL_TARGET:
            row["target_vs_max"] = POOL_TARGET[k]
            row["ok"] = row["vs_max"] <= POOL_TARGET[k]
            row["residual"] = pool_residual(x, k)
        rows.append(row)
    # the eager fallback on a slice (it is several passes per iteration; CUDA uses it)
    xs, vs = x.reshape(-1, shape[-1])[:eager_rows], v.reshape(-1)[:eager_rows]
    ecases = {"max": fwd_bwd(lambda t: t.max(-1).values, xs, vs)}
    for pen in T.PENALTIES:
        ecases[pen] = fwd_bwd(lambda t, pen=pen: T.robust_pool(t, pen, 1.0), xs, vs)
    _kernels.ENABLED = False
    try:
        eres = timed(ecases, max(1, reps // 2))
    finally:
        _kernels.ENABLED = True
    for row in rows:
        if row["layer"] in T.PENALTIES:
            row["eager_vs_max"] = eres[row["layer"]][0] / eres["max"][0]
    return rows


def bench_projections(shape, reps):
    torch.manual_seed(0)
    # rows of mixed size, so that some lie inside the ball and some outside for every p
    x = torch.randn(*shape) * torch.rand(shape[0], 1) * 2 / shape[1] ** 0.5
    v = torch.randn(*shape)
    cases = {"normalize": fwd_bwd(lambda t: F.normalize(t, dim=-1), x, v)}
    for p in (1, 2, INF):
        for kind, f in (("sphere", T.project_sphere), ("ball", T.project_ball)):
            cases[f"{kind} p={p:g}"] = fwd_bwd(lambda t, f=f, p=p: f(t, p, 1.0), x, v)
    cases["simplex"] = fwd_bwd(lambda t: T.project_simplex(t, 1.0), x, v)
    _kernels.ENABLED = True
    res = timed(cases, reps)
    _kernels.ENABLED = False
    try:
        eres = timed(cases, max(3, reps // 4))
    finally:
        _kernels.ENABLED = True
    rows = []
    for k, (tmin, tmed) in res.items():
        row = {"layer": k, "us": 1e6 * tmin, "median_us": 1e6 * tmed,
               "vs_normalize": tmin / res["normalize"][0],
               "eager_vs_normalize": eres[k][0] / eres["normalize"][0]}
        if k != "normalize":
            row["target_vs_normalize"] = PROJ_TARGET
            row["ok"] = row["vs_normalize"] <= PROJ_TARGET
        rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (CI smoke)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--out", default=str(HERE / "results.json"))
    args = ap.parse_args(argv)
    quick = args.quick or os.environ.get("DDN_SMOKE", "") not in ("", "0")
    pool_shape = (2, 64, 2048) if quick else (24, 1024, 2048)
    proj_shape = (256, 512)
    reps = args.reps or (2 if quick else 5)
    if _kernels.lib() is None:
        print(f"note: compiled kernel unavailable ({_kernels._state['error']}); timing the "
              "eager fallback only")
    machine = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "python": platform.python_version(), "kernel": _kernels.lib() is not None}
    print(f"machine: {machine['cpu']}, {machine['threads']} torch threads, torch {torch.__version__}")

    pool = bench_pooling(pool_shape, reps, eager_rows=256 if quick else 2048)
    print(f"\nRobust pooling, {pool_shape} float32 over the last dim, forward+backward "
          f"(min of {reps} interleaved runs)")
    print(f"{'layer':<22}{'ms':>9}{'x max':>8}{'x mean':>8}{'target':>8}{'ok':>5}{'residual':>11}"
          f"{'eager x max':>13}")
    for r in pool:
        tgt = f"{r['target_vs_max']:.0f}" if "target_vs_max" in r else ""
        ok = ("yes" if r["ok"] else "NO") if "ok" in r else ""
        res = f"{r['residual']:.1e}" if "residual" in r else ""
        eag = f"{r['eager_vs_max']:.1f}" if "eager_vs_max" in r else ""
        print(f"{r['layer']:<22}{r['ms']:>9.1f}{r['vs_max']:>8.2f}{r['vs_mean']:>8.2f}{tgt:>8}"
              f"{ok:>5}{res:>11}{eag:>13}")

    # small tensors: torch's multi-threaded kernels can stall on a loaded machine (OpenMP
    # barriers), while ours runs one thread below _kernels._PAR_MIN; so time both settings
    proj = {}
    nt = torch.get_num_threads()
    for threads in sorted({nt, 1}, reverse=True):
        torch.set_num_threads(threads)
        try:
            proj[threads] = bench_projections(proj_shape, reps=max(20, 10 * reps))
        finally:
            torch.set_num_threads(nt)
        print(f"\nProjections, {proj_shape} float32, forward+backward vs F.normalize, "
              f"{threads} torch thread(s)")
        print(f"{'layer':<22}{'us':>9}{'x normalize':>13}{'target':>8}{'ok':>5}{'eager x norm':>14}")
        for r in proj[threads]:
            tgt = f"{r['target_vs_normalize']:.0f}" if "target_vs_normalize" in r else ""
            ok = ("yes" if r["ok"] else "NO") if "ok" in r else ""
            print(f"{r['layer']:<22}{r['us']:>9.0f}{r['vs_normalize']:>13.2f}{tgt:>8}{ok:>5}"
                  f"{r['eager_vs_normalize']:>14.1f}")

    out = {"machine": machine, "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
           "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "pool_shape": pool_shape,
           "proj_shape": proj_shape, "pooling": pool,
           "projections": {f"{k}_threads": v for k, v in proj.items()}}
    if not quick:
        Path(args.out).write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.out}")
    return out


if __name__ == "__main__":
    main()
