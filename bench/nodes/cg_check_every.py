"""A/B of cg's end-of-loop test frequency (ddn.torch._linalg._check_every): the cg backward of the
node benchmark's problems timed with the batch-done test every iteration (k = 1, one host sync
per iteration on CUDA) and every 8 (the CUDA default), interleaved in the same run.

    python bench/nodes/cg_check_every.py --device cuda [--sizes 128 256 512] [--reps 15]
"""
import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_backward as B  # noqa: E402
from ddn.torch import DeclarativeLayer, _linalg  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", type=int, nargs="*", default=[128, 256, 512])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args(argv)
    B.DEVICE = dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available here")
    real = _linalg._check_every
    dt, b = torch.float64, args.batch
    print(f"machine: {B.machine()}")
    print(f"{'problem':>8} {'m':>5} {'k=1 ms':>9} {'k=8 ms':>9} {'k=1 / k=8':>10}")
    for prob in ("dense-W", "smooth"):
        for m in args.sizes:
            x, v, make, y_star = B.problem(prob, m, b, dt)
            layer = DeclarativeLayer(make(y_star, linear_solver="cg", tol=1e-10))
            times = {1: [], 8: []}
            grads = {}
            for r in range(args.reps + 1):
                for k in ((1, 8) if r % 2 else (8, 1)):
                    _linalg._check_every = lambda rr, ce, k=k: k
                    xr = x.clone().requires_grad_()
                    y = layer(xr)
                    t = B.timed(lambda: y.backward(v))
                    if r:  # the first round warms up
                        times[k].append(t)
                    grads[k] = xr.grad
            _linalg._check_every = real
            assert torch.equal(grads[1], grads[8]), "check_every changed the gradient"
            t1, t8 = statistics.median(times[1]), statistics.median(times[8])
            print(f"{prob:>8} {m:>5} {t1 * 1e3:>9.2f} {t8 * 1e3:>9.2f} {t1 / t8:>10.2f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
