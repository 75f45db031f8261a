"""Point-cloud experiment: loaders, outlier protocol, model, smoke training, exact resume, CLI."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import ddn.torch as dt
from ddn import DDNError
from ddn.experiments import pointcloud as pc

HAS_ROBUST = hasattr(dt, "RobustPool")
needs_robust = pytest.mark.skipif(not HAS_ROBUST, reason="ddn.torch.RobustPool not there yet")


def _write_h5(path, n, npts=2048, seed=0, label_offset=0):
    import h5py
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as h:
        h["data"] = rng.normal(size=(n, npts, 3)).astype(np.float32) * 3 + 1
        h["label"] = ((np.arange(n) + label_offset) % 40).astype(np.uint8)[:, None]


@pytest.mark.parametrize("listing", [True, False])
def test_modelnet_loader(tmp_path, listing):
    _write_h5(tmp_path / "ply_data_train0.h5", 5, seed=1)
    _write_h5(tmp_path / "ply_data_train1.h5", 3, seed=2, label_offset=5)
    _write_h5(tmp_path / "ply_data_test0.h5", 4, seed=3)
    if listing:
        (tmp_path / "train_files.txt").write_text(
            "data/modelnet40_ply_hdf5_2048/ply_data_train0.h5\n"
            "data/modelnet40_ply_hdf5_2048/ply_data_train1.h5\n")
    x, y, names = pc.load_modelnet40(tmp_path, "train", npoints=512)
    assert x.shape == (8, 512, 3) and x.dtype == torch.float32
    assert y.tolist() == [0, 1, 2, 3, 4, 5, 6, 7] and y.dtype == torch.int64
    # normalized into the unit ball: centred, farthest point at norm 1
    assert torch.allclose(x.norm(dim=-1).amax(-1), torch.ones(8), atol=1e-5)
    assert x.mean(1).abs().max() < 1e-5
    xt, yt, _ = pc.load_modelnet40(tmp_path, "test")
    assert xt.shape == (4, 2048, 3)


def test_modelnet_missing_says_what_to_do(tmp_path):
    with pytest.raises(DDNError, match="modelnet40_ply_hdf5_2048"):
        pc.load_modelnet40(tmp_path / "nowhere")
    with pytest.raises(DDNError, match="--data-root"):
        pc.load_modelnet40(tmp_path)                      # empty folder
    (tmp_path / "train_files.txt").write_text("ply_data_train0.h5\n")
    with pytest.raises(DDNError, match="not there"):
        pc.load_modelnet40(tmp_path)


def test_synthetic_shapes():
    x, y, names = pc.make_synthetic_shapes(3, 200, seed=5)
    assert x.shape == (3 * len(pc.SHAPE_FAMILIES), 200, 3) and len(names) == 8
    assert torch.isfinite(x).all()
    assert torch.allclose(x.norm(dim=-1).amax(-1), torch.ones(len(x)), atol=1e-5)
    x2, _, _ = pc.make_synthetic_shapes(3, 200, seed=5)
    x3, _, _ = pc.make_synthetic_shapes(3, 200, seed=6)
    assert torch.equal(x, x2) and not torch.equal(x, x3)
    assert torch.bincount(y).tolist() == [3] * 8


@pytest.mark.parametrize("frac", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_outliers_exact_fraction_inside_ball(frac):
    x, _, _ = pc.make_synthetic_shapes(2, 100, seed=0)
    xo, mask = pc.add_outliers(x, frac, torch.Generator().manual_seed(1))
    assert (mask.sum(1) == round(frac * 100)).all()
    assert torch.equal(xo[~mask], x[~mask])                      # inliers untouched
    assert (xo.norm(dim=-1) <= 1 + 1e-6).all()
    if frac > 0:
        assert not torch.equal(xo[mask], x[mask])
    # seeded: the same generator seed gives the same corruption
    xo2, mask2 = pc.add_outliers(x, frac, torch.Generator().manual_seed(1))
    assert torch.equal(xo, xo2) and torch.equal(mask, mask2)
    with pytest.raises(DDNError):
        pc.add_outliers(x, 1.5)


def test_unit_ball_samples_are_uniform():
    # uniform in the ball: P(‖u‖ ≤ r) = r³
    u = pc.sample_unit_ball((20000,), torch.Generator().manual_seed(0))
    r = u.norm(dim=-1)
    assert abs((r <= 0.5).float().mean().item() - 0.125) < 0.01
    assert abs(u.mean(0)).max() < 0.02


def test_pointnet_size_and_pooling_names():
    n = sum(p.numel() for p in pc.PointNet(40).parameters())
    assert 0.75e6 < n < 0.9e6                                   # "~0.8M parameters"
    out = pc.PointNet(8, "max", width=0.125)(torch.randn(3, 50, 3))
    assert out.shape == (3, 8)
    with pytest.raises(DDNError):
        pc.make_pool("median")


@needs_robust
@pytest.mark.parametrize("pooling", ["Q", "PH", "H", "W", "TQ"])
def test_pointnet_robust_pooling_gradient_flows(pooling):
    model = pc.PointNet(8, pooling, width=0.0625)
    x = torch.randn(4, 40, 3)
    model(x).square().sum().backward()
    g = model.features[0].weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def _smoke_cfg(**kw):
    return pc.preset("smoke", **kw)


def test_smoke_run_and_tables(tmp_path):
    cfg = _smoke_cfg(poolings=["max"] + (["PH"] if HAS_ROBUST else []), rates=[0, 50],
                     iii_rates=[0, 20, 50])
    rows = pc.run_experiment(cfg, "cpu", tmp_path / "pc.csv", tmp_path / "ck", show_progress=False)
    # per pooling: II at 0 and 50, III at 0, 20 and 50; two trainings
    assert len(rows) == 5 * len(cfg.poolings)
    assert len(list((tmp_path / "ck").glob("*.pt"))) == 2 * len(cfg.poolings)
    # a second call reuses the finished checkpoints and reproduces the numbers
    again = pc.run_experiment(cfg, "cpu", tmp_path / "pc.csv", tmp_path / "ck", show_progress=False)
    assert [(r["top1"], r["map"]) for r in again] == [(r["top1"], r["map"]) for r in rows]
    for r in rows:
        assert 0 <= r["top1"] <= 100 and 0 <= r["map"] <= 100
    table = pc.render_tables(tmp_path / "pc.csv", "smoke")
    assert "Table II" in table and "Table III" in table and "(88.4)" in table
    fig = pc.plot_outliers(tmp_path / "pc.csv", "smoke", tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_resume_after_kill_is_exact(tmp_path):
    cfg = _smoke_cfg()
    data = pc.load_data(cfg)
    straight, n = pc.train_model(cfg, "max", 10, data, "cpu", tmp_path / "a", False)
    assert n == 2
    _, n1 = pc.train_model(cfg, "max", 10, data, "cpu", tmp_path / "b", False, stop_after_epochs=1)
    assert n1 == 1
    torch.manual_seed(1234); np.random.seed(99); torch.rand(17)      # a new process's state
    resumed, n2 = pc.train_model(cfg, "max", 10, data, "cpu", tmp_path / "b", False)
    assert n2 == 2
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    ma = pc.evaluate(straight, data[2], data[3], 50)
    mb = pc.evaluate(resumed, data[2], data[3], 50)
    assert ma == mb


def test_cli_smoke(tmp_path):
    env = dict(os.environ, DDN_SMOKE="1")
    r = subprocess.run([sys.executable, "-m", "ddn.experiments.pointcloud", "--poolings", "max",
                        "--rates", "0,90", "--device", "cpu", "--no-progress", "--threads", "1",
                        "--results", str(tmp_path / "r.csv"), "--plot", str(tmp_path / "p.png")],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Table II" in r.stdout and (tmp_path / "p.png").is_file()
    assert len(pc.read_results(tmp_path / "r.csv")) == 4
    assert list((tmp_path / "checkpoints").glob("pointcloud-max-*.pt"))


def test_second_live_writer_is_refused(tmp_path):
    import os
    from ddn.experiments.common import checkpoint_lock
    cfg = _smoke_cfg(epochs=1)
    path = pc.checkpoint_path(cfg, "max", 0, tmp_path)
    lock = tmp_path / (path.name + ".lock")
    parent = os.getppid()                                   # a live process that is not us
    lock.write_text(str(parent))
    with pytest.raises(DDNError, match="being trained by process"):
        pc.train_model(cfg, "max", 0, pc.load_data(cfg), "cpu", tmp_path, False)
    lock.write_text("999999999")                           # stale lock of a killed run
    _, n = pc.train_model(cfg, "max", 0, pc.load_data(cfg), "cpu", tmp_path, False)
    assert n == 1 and not lock.exists()
    with checkpoint_lock(tmp_path / "x.pt"):
        assert (tmp_path / "x.pt.lock").read_text() == str(os.getpid())
