"""Audit regressions for the image experiment: malformed idx.gz files, ImageNet folder layouts
(flat val/, missing/extra/empty class folders), exact stratified subsets, settings checked
before training, the command line's errors."""
import gzip
import re
import struct

import numpy as np
import pytest
import torch

from ddn import DDNError, DDNWarning
from ddn.experiments import images as im


def _idx(path, arr=None, raw=None):
    if raw is None:
        arr = np.asarray(arr, dtype=np.uint8)
        raw = (struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
               + arr.tobytes())
    with gzip.open(path, "wb") as f:
        f.write(raw)


def _fm(root, labels=(0, 1, 2)):
    _idx(root / "train-images-idx3-ubyte.gz", np.zeros((len(labels), 28, 28)))
    _idx(root / "train-labels-idx1-ubyte.gz", labels)
    return root


def test_idx_labels_outside_the_ten_classes(tmp_path):
    _fm(tmp_path, labels=(0, 11, 2))                     # used to load, then crash in training
    with pytest.raises(DDNError, match=r"0\.\.9"):
        im.load_fashion_mnist(tmp_path)


@pytest.mark.parametrize("case", ["not gzip", "truncated gzip", "short header", "short dims"])
def test_idx_malformed_files_are_named(tmp_path, case):
    _fm(tmp_path)
    f = tmp_path / "train-labels-idx1-ubyte.gz"
    body = struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", 3) + bytes([0, 1, 2])
    if case == "not gzip":                               # BadGzipFile before
        f.write_bytes(body)
    elif case == "truncated gzip":                       # EOFError before
        f.write_bytes(gzip.compress(body)[:-6])
    elif case == "short header":                         # struct.error before
        _idx(f, raw=b"\0\0")
    else:
        _idx(f, raw=b"\0\0\x08\x01\0\0")
    with pytest.raises(DDNError, match=re.escape(str(f))):
        im.load_fashion_mnist(tmp_path)


def test_unknown_split_is_named(tmp_path):
    _fm(tmp_path)
    with pytest.raises(DDNError, match="split"):         # KeyError before
        im.load_fashion_mnist(tmp_path, "validation")


@pytest.mark.parametrize("n", [1, 5, 9, 65, 500])
def test_stratified_subset_has_exactly_n_balanced(n):
    y = torch.arange(600) % 10
    y[y == 3] = 4                                         # class 3 absent, class 4 doubled
    idx = im._stratified_subset(y, n, seed=0)
    assert len(idx) == n and len(set(idx.tolist())) == n  # was 10 for n = 5, 60 for n = 65
    counts = torch.bincount(y[idx], minlength=10)
    present = counts[[c for c in range(10) if c != 3]]
    assert present.max() - present.min() <= 1
    assert torch.equal(idx, im._stratified_subset(y, n, seed=0))


def test_stratified_subset_fills_from_other_classes_when_one_is_short():
    y = torch.tensor([0] * 2 + [1] * 50 + [2] * 50)
    idx = im._stratified_subset(y, 30, seed=1)
    assert len(idx) == 30 and torch.bincount(y[idx]).tolist() == [2, 14, 14]


def _png(path):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(path)


def test_flat_val_folder_says_how_to_fix(tmp_path):
    for c in ("a", "b"):
        _png(tmp_path / "train" / c / "0.png")
    _png(tmp_path / "val" / "ILSVRC2012_val_00000001.png")    # the official flat layout
    with pytest.raises(DDNError, match="loose images"):       # FileNotFoundError before
        im.ImageFolderDataset(tmp_path, "val", classes=["a", "b"])


def test_val_class_folder_unknown_to_train(tmp_path):
    for c in ("a", "b"):
        _png(tmp_path / "val" / c / "0.png")
    with pytest.raises(DDNError, match="ignored"):            # silently dropped before
        im.ImageFolderDataset(tmp_path, "val", classes=["a"])


def test_empty_and_hidden_class_folders(tmp_path):
    _png(tmp_path / "train" / "a" / "0.png")
    (tmp_path / "train" / "b").mkdir()
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    with pytest.warns(DDNWarning, match=r"without images: \['b'\]"):
        ds = im.ImageFolderDataset(tmp_path, "train", size=16)
    assert ds.classes == ["a", "b"] and len(ds) == 1           # the hidden folder is no class


@pytest.mark.parametrize("kw, msg", [
    (dict(variants=["cube-2"]), "variant"), (dict(variants=["ball-x"]), "variant"),
    (dict(variants=[]), "no variant"), (dict(epochs=0), "epochs"), (dict(n_train=0), "n_train"),
    (dict(batch_size=1), "batch_size"), (dict(stem="huge"), "stem"), (dict(data="cifar"), "data"),
    (dict(scales={2.0: -1.0}), "scales"),
])
def test_bad_settings_fail_before_training(kw, msg):
    with pytest.raises(DDNError, match=msg):
        im.preset("smoke", **kw)


@pytest.mark.parametrize("args, msg", [
    (["--variants", "cube-2"], "variant"), (["--variants", "ball-x"], "variant"),
    (["--epochs", "0"], "epochs"), (["--n-train", "0"], "n_train"),
    (["--device", "nonsense"], "unknown device"), (["--threads", "0"], "threads"),
])
def test_cli_bad_arguments_are_usage_errors(tmp_path, capsys, args, msg):
    # --results in tmp_path: if the check regresses, the run must not write into results/
    with pytest.raises(SystemExit) as e:
        im.main(["--preset", "smoke", "--no-progress", "--results", str(tmp_path / "r.csv")]
                + args)
    assert e.value.code == 2 and re.search(msg, capsys.readouterr().err)


def test_cli_missing_data_and_cuda_are_one_line_errors(tmp_path, capsys):
    base = ["--preset", "smoke", "--no-progress", "--results", str(tmp_path / "r.csv")]
    assert im.main(base + ["--data-root", str(tmp_path), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("python -m ddn.experiments.images: error:") and "make data" in err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as e:
            im.main(base + ["--device", "cuda"])
        assert e.value.code == 2 and "CUDA is not available" in capsys.readouterr().err


def test_table_keeps_to_the_requested_data(tmp_path):
    from ddn.experiments.common import append_results
    row = dict(preset="cpu", data="imagenet", variant="none", top1=11.11, top5=22.0, map=33.0)
    append_results(tmp_path / "r.csv", [row, dict(row, data="fashion-mnist", top1=88.88)])
    t = im.render_table(tmp_path / "r.csv", "cpu", "imagenet")
    assert "11.11" in t and "88.88" not in t


def _folders(root, per_class=(6, 6, 6)):
    for split in ("train", "val"):
        for c, n in zip("abc", per_class):
            for i in range(n):
                _png(root / split / c / f"{i}.png")
    return root


def test_imagenet_layout_honours_n_train_and_n_test(tmp_path):
    _folders(tmp_path)
    cfg = im.preset("smoke", data="imagenet", data_root=str(tmp_path), image_size=16,
                    n_train=9, n_test=6)
    tr, te, classes, cin = im.load_data(cfg)                  # used to keep all 18 and 18
    assert (len(tr), len(te), cin) == (9, 6, 3)
    assert torch.bincount(tr.labels).tolist() == [3, 3, 3]
    assert torch.bincount(torch.tensor([c for _, c in te.samples])).tolist() == [2, 2, 2]


def test_training_set_smaller_than_a_batch_is_an_error(tmp_path):
    _folders(tmp_path, per_class=(1, 1, 1))
    cfg = im.preset("smoke", data="imagenet", data_root=str(tmp_path), image_size=16,
                    batch_size=8, epochs=1, variants=["none"])
    # drop_last left no batch: the untrained model used to be evaluated and reported
    with pytest.raises(DDNError, match="no training batch"):
        im.train_model(cfg, "none", im.load_data(cfg), "cpu", None, False)


def test_render_without_rows_says_so(tmp_path):
    assert "no image results" in im.render_table(tmp_path / "nothing.csv", "cpu")
