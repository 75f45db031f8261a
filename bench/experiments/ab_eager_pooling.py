"""A/B of the eager robust-pooling solvers (the CUDA path) in the full-scale PointNet step: the
current ddn.torch.pooling against an older copy of the module, in the same run.

    git show <commit>:ddn/torch/pooling.py > .ab/pool_old.py      # the version to compare with
    python bench/experiments/ab_eager_pooling.py                  # on a CUDA machine

Used for the truncated-quadratic row-dropping change (results-tq-ab-h200.txt: compared with
the module as of commit 53d9c4c).
"""
import importlib.util, sys, torch
sys.path.insert(0, "bench/experiments"); sys.path.insert(0, ".")
import bench_full_scale as F
from ddn.experiments import pointcloud
import ddn.torch.pooling as P
spec = importlib.util.spec_from_file_location("ddn.torch.pool_old", ".ab/pool_old.py")
old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
class OldPool(torch.nn.Module):
    def __init__(self, pen): super().__init__(); self.pen = pen
    def forward(self, x): return old.robust_pool(x, self.pen, 1.0, dim=-1)
g = torch.Generator().manual_seed(0)
b, n = 24, 2048
x = pointcloud.sample_unit_ball((b, n), generator=g) * 0.8
x, _ = pointcloud.add_outliers(x, 0.1, g)
y = torch.randint(0, 40, (b,), generator=g)
x, y = x.to(dev), y.to(dev)
models = {}
for name in ["max", "W", "TQ", "W-old", "TQ-old"]:
    torch.manual_seed(0)
    m = pointcloud.PointNet(40, name.split("-")[0], 1.0, 1.0)
    if name.endswith("-old"):
        m.pool = OldPool({"W": "welsch", "TQ": "truncated-quadratic"}[name[:-4]])
    models[name] = F.make_step(m, x, y, dev)
res = F.time_models(models, dev, 3, 10)
F.report("PointNet full scale, old vs new eager W/TQ (same run)", res, "max", b, "clouds")
# equality of the pooled output on a feature tensor
f = torch.relu(torch.randn(24, 1024, 2048, device=dev))
for pen in ("welsch", "truncated-quadratic"):
    a = P.robust_pool(f, pen, 1.0); c = old.robust_pool(f, pen, 1.0)
    print(pen, "max |new - old| =", (a - c).abs().max().item())
