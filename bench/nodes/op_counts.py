"""How many aten operations each backward dispatches (m = 256, batch 16): the quantity that
per-call overhead multiplies. On a GPU every dispatched op costs a few microseconds of host time
(dispatch + kernel launch) however small its tensors, so a backward made of many small ops is
bound by that overhead there, while on a CPU the work of the ops dominates at this size.

    python bench/nodes/op_counts.py [--m 256] [--batch 16]

Counts every aten op recorded by torch.profiler (nested ones included) during one backward. The
dense backward is counted with the CPU's chunking of the Hessian build (what runs here) and with
one chunk (what runs on a GPU, where no chunking is done)."""
import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backward import DenseW, Smooth, naive_backward  # noqa: E402

from ddn.torch import DeclarativeLayer, _implicit  # noqa: E402


def count(fn):
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--m", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args(argv)
    b, m = args.batch, args.m
    torch.manual_seed(0)
    x = torch.randn(b, m, dtype=torch.float64)
    v = torch.randn(b, m, dtype=torch.float64)
    W = torch.randn(m, m, dtype=torch.float64) / m ** 0.5
    print(f"m = {m}, batch {b}: aten ops dispatched by one backward")
    print(f"{'problem':>8} {'naive':>8} {'dense (CPU chunks)':>19} {'dense (one chunk)':>18}")
    for prob, make in (("dense-W", lambda: DenseW(W)), ("smooth", lambda: Smooth(m))):
        node = make()
        y, _ = node.solve(x)
        node.y_star = y
        layer = DeclarativeLayer(node)

        xr = x.clone().requires_grad_()
        out = layer(xr)  # the forward is not counted

        def dense():
            out.backward(v, retain_graph=True)

        n_naive = count(lambda: naive_backward(node, x, y, v))
        n_chunks = count(dense)
        saved = _implicit._CPU_CHUNK_ELEMENTS
        try:
            _implicit._CPU_CHUNK_ELEMENTS = 2 ** 62
            n_one = count(dense)
        finally:
            _implicit._CPU_CHUNK_ELEMENTS = saved
        print(f"{prob:>8} {n_naive:>8} {n_chunks:>19} {n_one:>18}")


if __name__ == "__main__":
    main(sys.argv[1:])
