"""Audit regressions for the point-cloud experiment: malformed ModelNet40 HDF5 files, settings
checked before training, the command line's errors, the outlier-rate warning."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from ddn import DDNError, DDNWarning
from ddn.experiments import pointcloud as pc


def _h5(path, data=None, label=None):
    import h5py
    data = np.random.default_rng(0).normal(size=(4, 100, 3)).astype(np.float32) if data is None else data
    label = np.arange(len(data), dtype=np.uint8)[:, None] if label is None else label
    with h5py.File(path, "w") as h:
        h["data"] = data
        h["label"] = label


@pytest.mark.parametrize("case, kw, npoints, msg", [
    ("too few points", {}, 2048, "holds 100 points"),                       # silently 100
    ("labels short", dict(label=np.zeros((3, 1), np.uint8)), 50, "4 clouds but 3 labels"),
    ("2-D data", dict(data=np.zeros((4, 100), np.float32)), 50, r"\(clouds, points, 3\)"),
    ("normals", dict(data=np.ones((4, 100, 6), np.float32)), 50, r"\(clouds, points, 3\)"),
    ("label 45", dict(label=np.array([[0], [1], [45], [3]])), 50, r"0\.\.39"),
    ("NaN", dict(data=np.full((4, 100, 3), np.nan, np.float32)), 50, "NaN"),
    ("no clouds", dict(data=np.zeros((0, 100, 3), np.float32), label=np.zeros((0, 1))), 50,
     "no point clouds"),
    ("npoints 0", {}, 0, "positive integer"),
])
def test_modelnet_malformed_files_are_named(tmp_path, case, kw, npoints, msg):
    _h5(tmp_path / "ply_data_train0.h5", **kw)
    with pytest.raises(DDNError, match=msg):
        pc.load_modelnet40(tmp_path, "train", npoints)


def test_modelnet_labels_checked_against_shape_names(tmp_path):
    _h5(tmp_path / "ply_data_train0.h5")                      # labels 0..3
    (tmp_path / "shape_names.txt").write_text("a\nb\nc\n")
    with pytest.raises(DDNError, match=r"0\.\.2"):
        pc.load_modelnet40(tmp_path, "train", 50)
    (tmp_path / "shape_names.txt").write_text("a\nb\nc\nd\n")
    x, y, names = pc.load_modelnet40(tmp_path, "train", 50)
    assert x.shape == (4, 50, 3) and names == ["a", "b", "c", "d"]


def test_modelnet_garbage_file(tmp_path):
    (tmp_path / "ply_data_train0.h5").write_bytes(b"not hdf5")
    with pytest.raises(DDNError, match="not a readable HDF5"):
        pc.load_modelnet40(tmp_path, "train", 50)


@pytest.mark.parametrize("kw, msg", [
    (dict(rates=[0, 150]), r"\[0, 100\]"), (dict(iii_rates=[-1]), r"\[0, 100\]"),
    (dict(settings=["IV"]), "settings"), (dict(settings=[]), "settings"),
    (dict(poolings=["median"]), "unknown pooling"), (dict(poolings=[]), "no pooling"),
    (dict(epochs=0), "epochs"), (dict(batch_size=1), "batch_size"), (dict(rates=[]), "no outlier"),
    (dict(data="shapenet"), "unknown data"), (dict(dropout=1.0), "dropout"),
])
def test_bad_settings_fail_before_training(kw, msg):
    with pytest.raises(DDNError, match=msg):
        pc.preset("smoke", **kw)


def test_settings_checked_by_run_experiment_too(tmp_path):
    # a config edited after preset(): unknown setting used to train, then crash in the CSV
    cfg = pc.preset("smoke", poolings=["max"])
    cfg.settings = ["IV"]
    with pytest.raises(DDNError, match="settings"):
        pc.run_experiment(cfg, "cpu", tmp_path / "r.csv", tmp_path / "ck", show_progress=False)
    assert not (tmp_path / "ck").exists()


def test_rate_that_replaces_no_point_warns(tmp_path):
    cfg = pc.preset("smoke", poolings=["max"], rates=[0], iii_rates=[0, 1], epochs=1)
    with pytest.warns(DDNWarning, match="replace no point"):        # 1 % of 32 points = 0
        pc.run_experiment(cfg, "cpu", tmp_path / "r.csv", tmp_path / "ck", show_progress=False)


@pytest.mark.parametrize("args, msg", [
    (["--rates", "abc"], "comma-separated percents"),
    (["--rates", "150"], r"\[0, 100\]"),
    (["--settings", "IV"], "settings"),
    (["--epochs", "0"], "epochs"),
    (["--device", "nonsense"], "unknown device"),
    (["--threads", "-1"], "threads"),
])
def test_cli_bad_arguments_are_usage_errors(tmp_path, capsys, args, msg):
    # --results in tmp_path: if the check regresses, the run must not write into results/
    with pytest.raises(SystemExit) as e:
        pc.main(["--preset", "smoke", "--no-progress", "--results", str(tmp_path / "r.csv")]
                + args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and __import__("re").search(msg, err)


def test_cli_device_cuda_without_cuda_and_missing_data(tmp_path, capsys):
    base = ["--preset", "smoke", "--no-progress", "--results", str(tmp_path / "r.csv")]
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as e:
            pc.main(base + ["--device", "cuda"])
        assert e.value.code == 2 and "CUDA is not available" in capsys.readouterr().err
    # a run-time error (no data): one line and exit status 1, not a traceback
    assert pc.main(base + ["--data", "modelnet40", "--data-root", str(tmp_path / "none"),
                           "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("python -m ddn.experiments.pointcloud: error:") and "--data-root" in err


def test_cli_table_is_of_the_requested_data(tmp_path, capsys):
    # rows of another data set under the same preset used to fill the printed table
    from ddn.experiments.common import append_results
    row = dict(preset="smoke", data="modelnet40", seed=0, setting="II", pooling="max",
               train_outlier_pct=0, test_outlier_pct=0, top1=12.3, map=45.6)
    append_results(tmp_path / "r.csv", [row, dict(row, data="synthetic", top1=77.7)])
    assert pc.main(["--render-only", "--preset", "smoke", "--data", "modelnet40",
                    "--results", str(tmp_path / "r.csv")]) == 0
    out = capsys.readouterr().out
    assert "12.3" in out and "77.7" not in out


def test_pointnet_eval_mode_is_deterministic_and_moves_dtype():
    m = pc.PointNet(5, "max", width=0.0625).double().eval()
    x = torch.randn(1, 20, 3, dtype=torch.float64)
    assert m(x).dtype == torch.float64 and torch.equal(m(x), m(x))     # dropout off, BN frozen
    m.train()
    with pytest.raises(ValueError):                     # BN cannot train on one sample
        m(x)


def test_full_penalty_names_reach_the_tables():
    # make_pool takes "pseudo-huber", but the tables only know "PH": rows went missing
    assert pc.preset("smoke", poolings=["max", "pseudo-huber"]).poolings == ["max", "PH"]


def test_render_without_rows_says_so(tmp_path):
    assert "no point-cloud results" in pc.render_tables(tmp_path / "nothing.csv", "cpu")


def test_resume_after_a_real_kill_in_another_process(tmp_path):
    # a process killed right after its first checkpoint (os._exit: no cleanup, the lock file
    # stays with a dead pid) is resumed by a fresh process to the same weights as a straight run
    # (bitwise only at the same thread count: parallel reductions round differently)
    code = f"""
import os, torch
import ddn.experiments.common as c
from ddn.experiments import pointcloud as pc
real = c.save_checkpoint
def save(*a, **k):
    real(*a, **k)
    os._exit(9)
c.save_checkpoint = save
torch.set_num_threads({torch.get_num_threads()}); torch.manual_seed(777); torch.rand(13)
cfg = pc.preset("smoke", epochs=3)
pc.train_model(cfg, "max", 50, pc.load_data(cfg), "cpu", {str(tmp_path / "b")!r}, False)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 9, r.stderr
    cfg = pc.preset("smoke", epochs=3)
    lock = pc.checkpoint_path(cfg, "max", 50, tmp_path / "b").with_suffix(".pt.lock")
    assert lock.is_file()                                   # left behind by the killed run
    data = pc.load_data(cfg)
    straight, _ = pc.train_model(cfg, "max", 50, data, "cpu", tmp_path / "a", False)
    resumed, n = pc.train_model(cfg, "max", 50, data, "cpu", tmp_path / "b", False)
    assert n == 3 and not lock.exists()
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_table_ii_alone_trains_no_unused_clean_model(tmp_path):
    # settings II at rate 50 only: the clean model was trained anyway and never evaluated
    cfg = pc.preset("smoke", poolings=["max"], rates=[50], settings=["II"], epochs=1)
    rows = pc.run_experiment(cfg, "cpu", tmp_path / "r.csv", tmp_path / "ck", show_progress=False)
    assert [(r["setting"], r["train_outlier_pct"]) for r in rows] == [("II", 50)]
    assert [p.name.split("-")[2] for p in (tmp_path / "ck").glob("*.pt")] == ["out50"]


def test_modelnet_fractional_labels_are_not_truncated(tmp_path):
    _h5(tmp_path / "ply_data_train0.h5", label=np.array([[0.0], [1.0], [2.5], [3.0]]))
    with pytest.raises(DDNError, match="integer class indices"):      # 2.5 became 2 silently
        pc.load_modelnet40(tmp_path, "train", 50)
    _h5(tmp_path / "ply_data_train0.h5", label=np.array([[0.0], [1.0], [2.0], [3.0]]))
    assert pc.load_modelnet40(tmp_path, "train", 50)[1].tolist() == [0, 1, 2, 3]


def test_nan_scores_at_evaluation_name_the_model(tmp_path):
    cfg = pc.preset("smoke", poolings=["max"], rates=[0], settings=["III"], epochs=1)
    xtr, ytr, xte, yte, names = pc.load_data(cfg)
    xte = xte.clone()
    xte[0, 0, 0] = float("nan")                         # a broken test cloud
    with pytest.raises(DDNError, match=r"max pooling trained with 0 % outliers.*NaN"):
        pc.run_experiment(cfg, "cpu", tmp_path / "r.csv", tmp_path / "ck", show_progress=False,
                          data=(xtr, ytr, xte, yte, names))


def test_modelnet_unknown_split(tmp_path):
    _h5(tmp_path / "ply_data_train0.h5")
    with pytest.raises(DDNError, match="splits 'train' and 'test'"):   # was "not found, download"
        pc.load_modelnet40(tmp_path, "val", 50)
