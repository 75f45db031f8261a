"""Audit regressions for the shared experiment machinery: metrics on bad input, devices,
RNG restore after a GPU checkpoint, CSV appends."""
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ddn import DDNError
from ddn.experiments import common
from ddn.experiments.common import (append_results, average_precision, choose_device,
                                    mean_average_precision, read_results, topk_accuracy)


def test_metrics_refuse_nan_scores():
    # a NaN score used to be ranked arbitrarily: AP 1.0, top-1 1/3, mAP 2/3, all silently
    s = torch.tensor([[0.1, float("nan")], [0.5, 0.2], [0.3, 0.9]])
    y = torch.tensor([0, 1, 1])
    with pytest.raises(DDNError, match="NaN"):
        topk_accuracy(s, y)
    with pytest.raises(DDNError, match="NaN"):
        average_precision(s[:, 1], y == 1)
    with pytest.raises(DDNError, match="NaN"):
        mean_average_precision(s, y)
    with pytest.raises(DDNError, match="NaN"):
        average_precision([1.0, float("inf")], [True, False])


def test_metrics_refuse_labels_outside_the_classes():
    s = torch.rand(4, 3)
    with pytest.raises(DDNError, match="0..2"):
        mean_average_precision(s, torch.tensor([0, 1, 5, 2]))     # was silently 'a negative'
    with pytest.raises(DDNError, match="0..2"):
        topk_accuracy(s, torch.tensor([0, 1, 2, -1]))             # was silently 'a miss'
    with pytest.raises(DDNError, match="num_classes"):
        mean_average_precision(s, torch.tensor([0, 1, 1, 2]), num_classes=5)   # IndexError
    with pytest.raises(DDNError, match="empty"):
        topk_accuracy(torch.rand(0, 3), torch.zeros(0, dtype=torch.long))       # was NaN
    with pytest.raises(DDNError, match="k >= 1"):
        topk_accuracy(s, torch.tensor([0, 1, 1, 2]), k=0)                       # was 0.0
    with pytest.raises(DDNError, match="integer"):
        topk_accuracy(s, torch.tensor([0.5, 1, 1, 2]))


def test_map_matches_sklearn_when_available():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    for t in range(200):
        n = int(rng.integers(1, 30))
        s = rng.integers(0, 4, size=n).astype(float) if t % 2 else rng.normal(size=n)
        y = rng.random(n) < 0.4
        if y.any():
            assert average_precision(s, y) == pytest.approx(skm.average_precision_score(y, s))


def test_map_by_hand_with_a_class_absent():
    # class 2 has no sample: left out with a warning; the others by hand
    s = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0], [0.3, 0.7, 0.0]])
    y = torch.tensor([0, 1, 1, 0])
    # class 0: ranking .9(+) .6(-) .3(+) .2(-): (1 + 2/3)/2; class 1: .8(+) .7(-) .4(+): same
    from ddn import DDNWarning
    with pytest.warns(DDNWarning, match=r"\[2\]"):
        assert mean_average_precision(s, y) == pytest.approx(5 / 6)


@pytest.mark.parametrize("dev, msg", [("cuda", "CUDA is not available"), ("mps", "MPS"),
                                      ("gpu0", "unknown device")])
def test_choose_device_errors_are_clear(dev, msg):
    if dev == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is here")
    if dev == "mps" and torch.backends.mps.is_available():
        pytest.skip("MPS is here")
    with pytest.raises(DDNError, match=msg):
        choose_device(dev)


def test_set_rng_state_accepts_states_moved_off_the_cpu(monkeypatch):
    # torch.load(map_location="cuda") moves the RNG byte tensors to the GPU, and
    # torch.set_rng_state refuses those; set_rng_state must bring them back to the CPU.
    st = common.rng_state()
    seen = []

    class Moved(torch.Tensor):          # stands for a tensor on another device
        def cpu(self, *a, **k):
            seen.append(True)
            return torch.Tensor(self).clone()

    real = torch.set_rng_state

    def strict(t):
        assert type(t) is torch.Tensor, "set_rng_state got the device tensor itself"
        real(t)
    monkeypatch.setattr(torch, "set_rng_state", strict)
    st["torch"] = st["torch"].as_subclass(Moved)
    common.set_rng_state(st)
    assert seen


@pytest.mark.cuda
def test_resume_on_cuda_is_exact(tmp_path):
    from ddn.experiments import pointcloud as pc
    cfg = pc.preset("smoke")
    data = pc.load_data(cfg)
    a, _ = pc.train_model(cfg, "max", 10, data, "cuda", tmp_path / "a", False)
    pc.train_model(cfg, "max", 10, data, "cuda", tmp_path / "b", False, stop_after_epochs=1)
    b, n = pc.train_model(cfg, "max", 10, data, "cuda", tmp_path / "b", False)
    assert n == 2
    # before the fix the resume crashed in torch.set_rng_state; cuDNN's backward may be
    # non-deterministic, so equal up to rounding rather than bit for bit
    for (k, u), v in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(u.double(), v.double(), rtol=1e-4, atol=1e-6), k


def test_append_results_empty_and_foreign_columns(tmp_path):
    p = tmp_path / "r.csv"
    assert append_results(p, []) == p and not p.exists()          # was IndexError
    append_results(p, [dict(a=1, b=2)])
    with pytest.raises(DDNError, match="another results"):
        append_results(p, [dict(a=1, c=3)])                       # c used to vanish silently
    append_results(p, [dict(a=3)])                                # missing columns: empty
    assert [r["a"] for r in read_results(p)] == [1.0, 3.0]


def test_editing_a_config_does_not_edit_the_preset():
    # preset lists/dicts were shared: cfg.rates.append(90) changed every later smoke preset
    from ddn.experiments import images as im, pointcloud as pc
    c = pc.preset("smoke")
    c.rates.append(90)
    c.settings.remove("III")
    assert pc.preset("smoke").rates == [0, 50] and pc.preset("smoke").settings == ["II", "III"]
    c = im.preset("paper")
    c.scales[2.0] = 99.0
    c.variants.clear()
    assert im.preset("paper").scales[2.0] == 15.0 and len(im.preset("paper").variants) == 7


def test_top2_by_hand_without_ties():
    # test_topk_by_hand checks k = 3 = C only (always 1.0); here k = 2 with no ties:
    # top-2 sets {1,2}, {0,2}, {0,1}, {1,2}; labels 0, 2, 1, 0 -> hits at samples 1 and 2;
    # top-1 1, 0, 1, 1 -> a hit at sample 2 only
    s = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4], [0.3, 0.6, 0.1], [0.05, 0.5, 0.45]])
    y = torch.tensor([0, 2, 1, 0])
    assert topk_accuracy(s, y, 2) == 0.5
    assert topk_accuracy(s, y, 1) == 0.25
    assert topk_accuracy(s, y, 7) == 1.0                 # k > C: every label is in the top C


def test_checkpoint_names_do_not_depend_on_int_or_float_rates(tmp_path):
    # The command line parses "--rates 0,10" as floats, the Python API's presets use ints: a
    # model trained from a notebook (rate 10) must be found again from the CLI (rate 10.0), not
    # silently retrained under a second name. Different rates must still differ.
    from ddn.experiments import pointcloud
    cfg_api = pointcloud.preset("smoke")
    cfg_cli = pointcloud.preset("smoke", rates=[float(r) for r in cfg_api.rates])
    a = pointcloud.checkpoint_path(cfg_api, "max", 10, tmp_path)
    assert a == pointcloud.checkpoint_path(cfg_cli, "max", 10.0, tmp_path)
    assert a != pointcloud.checkpoint_path(cfg_cli, "max", 10.5, tmp_path)


def _claim(path, start, hold_s, out):
    from ddn import DDNError
    from ddn.experiments.common import checkpoint_lock
    start.wait()
    try:
        with checkpoint_lock(path):
            out.put("won")
            time.sleep(hold_s)
    except DDNError:
        out.put("busy")


def test_exactly_one_process_takes_over_a_stale_lock(tmp_path, monkeypatch):
    # A lock left by a killed run is taken over; when several processes find it at the same
    # moment only one may train (a pid check alone let every one of them through: each read the
    # dead pid, wrote its own and went on, two writers on one checkpoint). The liveness check is
    # slowed to 0.2 s so that the processes' checks overlap, as they can on a loaded machine.
    import multiprocessing as mp
    if sys.platform == "win32":
        pytest.skip("fcntl-based claim")
    real_alive = common._alive

    def slow_alive(pid):
        time.sleep(0.2)
        return real_alive(pid)
    monkeypatch.setattr(common, "_alive", slow_alive)   # inherited by the forked processes
    ctx = mp.get_context("fork")
    path = tmp_path / "m.pt"
    Path(str(path) + ".lock").write_text("999999999")       # stale: no such process
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(path, start, 1.5, out)) for _ in range(4)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(30)
    got = sorted(out.get(timeout=5) for _ in procs)
    assert got == ["busy", "busy", "busy", "won"], got
    assert not Path(str(path) + ".lock").exists()
