"""Training-step cost of the paper's layers in the paper's full-size models, against the plain
model timed in the same run.

    python bench/experiments/bench_full_scale.py --device cuda        # the paper's sizes, a GPU
    python bench/experiments/bench_full_scale.py --quick              # tiny sizes (CPU, tests)

* PointNet (width 1, 1024-d features, 2048 points, batch 24, 40 classes), global pooling by max
  (the baseline) or robust pooling with each penalty (Q, PH, H, W, TQ), α = 1; inputs with 10 %
  outliers from the unit ball, as in Table II.
* ResNet-18 (width 64, ImageNet stem, 224 × 224, 1000 classes) without (the baseline) and with
  the Lp-sphere / Lp-ball projection head (p = 1, 2, ∞, the paper's scales 250 / 15 / 3).

One step is forward + loss + backward + SGD step (``optimizer.zero_grad(set_to_none=True)``) on
random inputs of the right shape (data loading is not timed). After warm-up steps, each model is
timed in interleaved rounds (each round runs every model once, the order rotated) and the median
step is reported, with samples/s and the ratio to the baseline. On CUDA, steps are bracketed by
``torch.cuda.synchronize()`` and the peak memory of a step is ``max_memory_allocated``.
Writes JSON (``--out``) with the machine.
"""
import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from ddn.experiments import images, pointcloud  # noqa: E402

POOLINGS = ["max", "Q", "PH", "H", "W", "TQ"]
VARIANTS = ["none", "sphere-1", "sphere-2", "sphere-inf", "ball-1", "ball-2", "ball-inf"]


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def machine(dev):
    info = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "python": platform.python_version(), "device": dev.type,
            "threads": torch.get_num_threads()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["cuda"] = torch.version.cuda
    return info


def make_step(model, x, y, dev):
    model.to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def time_models(models, dev, warmup, rounds):
    """models: {name: step}. Interleaved rounds; median seconds per step and peak bytes."""
    for step in models.values():
        for _ in range(warmup):
            loss = step()
        if not torch.isfinite(loss):
            raise RuntimeError("non-finite loss during warm-up")
    names = list(models)
    times = {k: [] for k in names}
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            sync(dev)
            t0 = time.perf_counter()
            models[k]()
            sync(dev)
            times[k].append(time.perf_counter() - t0)
    peaks = {}
    for k in names:
        if dev.type == "cuda":
            sync(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            models[k]()
            sync(dev)
            peaks[k] = torch.cuda.max_memory_allocated(dev)
        else:
            peaks[k] = float("nan")
    return {k: (statistics.median(times[k]), peaks[k], times[k]) for k in names}


def report(title, res, base, batch, unit):
    rows = []
    print(f"\n{title}")
    hdr = f"{'model':<14} {'step ms':>9} {unit + '/s':>11} {'× base':>7} {'peak GiB':>9}"
    print(hdr)
    print("-" * len(hdr))
    for k, (t, pk, ts) in res.items():
        ratio = t / res[base][0]
        print(f"{k:<14} {t * 1e3:>9.1f} {batch / t:>11.0f} {ratio:>7.2f} {pk / 2**30:>9.2f}")
        rows.append({"model": k, "step_s": t, "samples_per_s": batch / t, "ratio_to_base": ratio,
                     "peak_bytes": pk, "times_s": ts})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a CPU check of the script)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--image-batch", type=int, default=None, help="ResNet-18 batch (default 128)")
    ap.add_argument("--only", choices=["pointcloud", "images"], default=None)
    ap.add_argument("--out", default=None, help="JSON to write (default: none)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available here")
    q = args.quick
    rounds = args.rounds or (2 if q else 10)
    warmup = args.warmup or (1 if q else 3)
    g = torch.Generator().manual_seed(0)
    print(f"machine: {machine(dev)}")
    out = {"machine": machine(dev), "quick": q}

    if args.only in (None, "pointcloud"):
        b, n, width = (4, 64, 0.0625) if q else (24, 2048, 1.0)
        x = pointcloud.sample_unit_ball((b, n), generator=g) * 0.8
        x, _ = pointcloud.add_outliers(x, 0.1, g)
        y = torch.randint(0, 40, (b,), generator=g)
        x, y = x.to(dev), y.to(dev)
        models = {}
        for name in POOLINGS:
            torch.manual_seed(0)
            models[name] = make_step(pointcloud.PointNet(40, name, 1.0, width), x, y, dev)
        res = time_models(models, dev, warmup, rounds)
        out["pointcloud"] = {"batch": b, "npoints": n, "width": width,
                             "rows": report(f"PointNet, {n} points, batch {b}, width {width:g}: "
                                            f"training step (median of {rounds})", res, "max", b,
                                            "clouds")}

    if args.only in (None, "images"):
        b = args.image_batch or (2 if q else 128)
        size, width, stem = (32, 4, "small") if q else (224, 64, "imagenet")
        cfg = images.preset("paper", width=width, stem=stem, image_size=size)
        x = torch.randn(b, 3, size, size, generator=g).to(dev)
        y = torch.randint(0, 1000, (b,), generator=g).to(dev)
        models = {}
        for v in VARIANTS:
            torch.manual_seed(0)
            models[v] = make_step(images.build_model(cfg, v, 1000, 3), x, y, dev)
        res = time_models(models, dev, warmup, rounds)
        out["images"] = {"batch": b, "image_size": size, "width": width,
                         "rows": report(f"ResNet-18, {size}×{size}, batch {b}, width {width}: "
                                        f"training step (median of {rounds})", res, "none", b,
                                        "images")}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1, default=lambda o: None
                                             if isinstance(o, float) and math.isnan(o) else o))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
