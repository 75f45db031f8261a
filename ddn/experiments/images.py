"""Image classification with Lp-sphere and Lp-ball feature projection (paper §7.2, Table IV).

ResNet-18 (written here; no torchvision) whose 8w-dimensional penultimate features (w = 64
in the paper: 512-d) pass through a batch norm **without learnable parameters** and then an
Lp-sphere or Lp-ball projection (p = 1, 2, ∞; ``ddn.torch.project_sphere`` /
``project_ball``) before the final linear layer:

    y = argmin_u ½‖u − x̂‖²  s.t.  ‖u‖_p = s   (sphere)   or   ‖u‖_p ≤ s   (ball),

with x̂ the batch-normalized features and s the **pre-scale** (the paper divides the features
by s and projects onto the unit sphere/ball, "which can be thought of as varying the radius";
we project onto the radius-s sphere/ball, the same thing up to the FC layer's scale, so that
the FC layer sees features of the baseline's magnitude).

Pre-scale rule (``scale="auto"``): ``s_p = γ · E‖z‖_p`` with ``z ~ N(0, I_d)`` (what
batch-normalized features look like, to first order) and ``γ = 0.65`` (the ratio of the
paper's factors to ``E‖z‖_p`` for p = 1, 2). Norms of Gaussian vectors concentrate, so the
ball projection is then active for essentially every feature (the paper: "affects most
features") while shrinking a typical one only by the factor γ ("not too aggressive"). ``E‖z‖_1 = d √(2/π)``,
``E‖z‖_2 = √2 Γ((d+1)/2) / Γ(d/2)``, ``E‖z‖_∞ = ∫_0^∞ 1 − (2Φ(t) − 1)^d dt``. For d = 512 this
gives 265, 14.7, 2.0 against the paper's 250, 15, 3 (which the paper derived from the
pre-trained model's features); the ``paper`` preset uses the paper's numbers.

Data: an ImageNet-layout folder (``train/<class>/*``, ``val/<class>/*``) with the standard
random-resized-crop + flip (training) and resize + centre crop (evaluation), or Fashion-MNIST
from Debian's ``dataset-fashion-mnist`` (the real small-scale data set; ``make data``).

Command line::

    python -m ddn.experiments.images --preset cpu          # Fashion-MNIST, CPU-sized
    python -m ddn.experiments.images --preset paper --data imagenet --data-root DIR
    python -m ddn.experiments.images --render-only
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import math
import struct
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from ddn import DDNError, DDNWarning

from .common import (append_results, apply_preset, checkpoint_lock, choose_device, run_cli, classification_metrics,
                    config_hash, run_training, epoch_generator, format_table, paper_table,
                    read_results, results_dir, timestamp)

__all__ = [
    "ImageConfig", "PRESETS", "preset", "VARIANTS", "variant_name", "parse_variant", "expected_norm", "auto_scale",
    "FeatureProjection", "BasicBlock", "ResNet18", "load_fashion_mnist", "ImageFolderDataset",
    "TensorImages", "random_resized_crop", "resize_shorter", "center_crop", "load_data",
    "train_model", "evaluate", "run_experiment", "render_table", "main", "check_config",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
PAPER_SCALES = {1.0: 250.0, 2.0: 15.0, math.inf: 3.0}
VARIANTS = [("none", None), ("sphere", 1.0), ("sphere", 2.0), ("sphere", math.inf),
            ("ball", 1.0), ("ball", 2.0), ("ball", math.inf)]


# ============================================================================ pre-scale
def expected_norm(d: int, p: float) -> float:
    """``E‖z‖_p`` for ``z ~ N(0, I_d)`` (exact for p = 1, 2; quadrature for p = ∞)."""
    if p == 1:
        return d * math.sqrt(2 / math.pi)
    if p == 2:
        return math.sqrt(2) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))
    if p == math.inf:
        from scipy import integrate, special
        f = lambda t: 1 - special.erf(t / math.sqrt(2)) ** d  # noqa: E731  (2Φ(t)−1 = erf(t/√2))
        return integrate.quad(f, 0, 50, limit=200)[0]
    raise DDNError(f"p must be 1, 2 or inf; got {p}")


def auto_scale(d: int, p: float, gamma: float = 0.65) -> float:
    """The pre-scale rule ``s_p = γ · E‖z‖_p`` (see the module docstring)."""
    return gamma * expected_norm(d, p)


def _parse_p(p):
    if p in (None, "", "none"):
        return None
    if isinstance(p, str):
        p = p.strip().lower()
        return math.inf if p in ("inf", "infinity", "∞") else float(p)
    return float(p)


class FeatureProjection(nn.Module):
    """Batch norm without learnable parameters, then projection onto the Lp sphere or ball of
    radius ``scale`` (see the module docstring). Input and output (B, d)."""

    def __init__(self, d: int, kind: str, p: float, scale: float):
        super().__init__()
        if kind not in ("sphere", "ball"):
            raise DDNError(f"projection kind must be 'sphere' or 'ball'; got {kind!r}")
        import ddn.torch as dt
        fn = getattr(dt, f"project_{kind}", None)
        if fn is None:
            raise DDNError(f"ddn.torch.project_{kind} is not available in this checkout; "
                           f"only the baseline (no projection) can be trained")
        self.kind, self.p, self.scale, self._fn = kind, p, float(scale), fn
        self.bn = nn.BatchNorm1d(d, affine=False)

    def forward(self, x):
        return self._fn(self.bn(x), p=self.p, radius=self.scale, dim=-1)

    def extra_repr(self):
        return f"kind={self.kind}, p={self.p}, scale={self.scale:.4g}"


# ============================================================================ ResNet-18
class BasicBlock(nn.Module):
    """Two 3×3 conv–BN layers with an identity (or 1×1 conv–BN) shortcut, ReLU after the sum."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016): stem, four stages of two :class:`BasicBlock` (widths w, 2w,
    4w, 8w; w = 64 gives the standard 11.7M-parameter model), global average pool, optional
    :class:`FeatureProjection`, linear classifier.

    Args:
        stem: ``"imagenet"`` (7×7 stride-2 conv + 3×3 max pool, for 224² inputs) or
            ``"small"`` (3×3 stride-1 conv, no pool, for 28²–32² inputs).
        projection: ``None``/``"none"``, ``"sphere"`` or ``"ball"``; ``p`` in {1, 2, inf};
            ``scale`` the radius (``None``: :func:`auto_scale`).
    """

    def __init__(self, num_classes=1000, in_channels=3, width=64, stem="imagenet",
                 projection=None, p=2.0, scale=None):
        super().__init__()
        w = width
        if stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        elif stem == "small":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(w), nn.ReLU())
        else:
            raise DDNError(f"stem must be 'imagenet' or 'small'; got {stem!r}")
        blocks, cin = [], w
        for i, cout in enumerate([w, 2 * w, 4 * w, 8 * w]):
            blocks += [BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = cin
        if projection in (None, "none"):
            self.project = nn.Identity()
        else:
            p = _parse_p(p)
            s = auto_scale(cin, p) if scale is None else float(scale)
            self.project = FeatureProjection(cin, projection, p, s)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x):
        return self.blocks(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x):
        return self.fc(self.project(self.features(x)))


# ============================================================================ data
FMNIST_HELP = ("Fashion-MNIST not found in {root!r} (need train-images-idx3-ubyte.gz, "
               "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz). "
               "Install Debian's package with `make data` (or `sudo apt-get install "
               "dataset-fashion-mnist`), or pass --data-root to a folder holding those files.")
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot"]


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:           # not gzip, or cut short
        raise DDNError(f"{path} is not a complete gzip file ({e}); download it again, or "
                       f"reinstall dataset-fashion-mnist") from None
    if len(raw) < 4:
        raise DDNError(f"{path}: {len(raw)} bytes, too short for an idx header")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DDNError(f"{path} is not an unsigned-byte idx file (magic {raw[:4].hex()})")
    if len(raw) < 4 + 4 * ndim:
        raise DDNError(f"{path}: the idx header is cut short ({len(raw)} bytes for {ndim} dims)")
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise DDNError(f"{path}: header says {shape} but holds {data.size} bytes")
    return data.reshape(shape)


def load_fashion_mnist(root=None, split="train"):
    """Fashion-MNIST from the idx.gz files (``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``).

    Returns:
        ``(images (N, 28, 28) uint8 tensor, labels (N,) int64 tensor)``.
    Raises:
        DDNError naming the remedy when the files are absent.
    """
    root = Path(root or FASHION_MNIST_DIR)
    stems = {"train": "train", "test": "t10k", "val": "t10k", "t10k": "t10k"}
    if split not in stems:
        raise DDNError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'")
    stem = stems[split]
    fi, fl = root / f"{stem}-images-idx3-ubyte.gz", root / f"{stem}-labels-idx1-ubyte.gz"
    if not (fi.is_file() and fl.is_file()):
        raise DDNError(FMNIST_HELP.format(root=str(root)))
    x, y = _read_idx(fi), _read_idx(fl)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise DDNError(f"Fashion-MNIST files in {root} have inconsistent shapes {x.shape}, {y.shape}")
    if len(y) == 0:
        raise DDNError(f"the Fashion-MNIST {split} files in {root} hold no images")
    if y.max() >= len(FMNIST_CLASSES):
        raise DDNError(f"{fl}: labels must be in 0..{len(FMNIST_CLASSES) - 1}; got up to {y.max()}")
    return torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64))


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMG_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".webp", ".tif", ".tiff"}


def random_resized_crop(img, size, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Crop a random area fraction in ``scale`` with aspect ratio (log-uniform) in ``ratio``,
    resized to ``size``×``size``; falls back to a centre crop after 10 failed draws."""
    from PIL import Image
    W, H = img.size
    area = W * H
    for _ in range(10):
        a = area * rng.uniform(*scale)
        r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = int(round(math.sqrt(a * r))), int(round(math.sqrt(a / r)))
        if 0 < w <= W and 0 < h <= H:
            x0, y0 = rng.integers(0, W - w + 1), rng.integers(0, H - h + 1)
            return img.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + w, y0 + h))
    return center_crop(resize_shorter(img, size), size)


def resize_shorter(img, size):
    """Resize so that the shorter side is ``size`` (aspect kept)."""
    from PIL import Image
    W, H = img.size
    if W <= H:
        return img.resize((size, max(1, round(H * size / W))), Image.BILINEAR)
    return img.resize((max(1, round(W * size / H)), size), Image.BILINEAR)


def center_crop(img, size):
    """The central ``size``×``size`` crop."""
    W, H = img.size
    x0, y0 = (W - size) // 2, (H - size) // 2
    return img.crop((x0, y0, x0 + size, y0 + size))


class ImageFolderDataset(torch.utils.data.Dataset):
    """ImageNet layout: ``root/<split>/<class>/<image>``; classes are the sorted folder names.

    Training transform: random-resized-crop to ``size`` + horizontal flip (p = ½); evaluation:
    resize the shorter side to ``resize`` then centre-crop ``size``. Randomness comes from a
    generator seeded by (seed, epoch, index), so the data do not depend on worker scheduling.
    Items: ``(float tensor (3, size, size) normalized by the ImageNet mean/std, label)``.
    """

    def __init__(self, root, split="train", train=None, size=224, resize=256, classes=None,
                 seed=0):
        d = Path(root) / split
        if not d.is_dir():
            raise DDNError(f"no folder {d}: an ImageNet-layout data set needs "
                           f"{Path(root) / 'train'}/<class>/* and {Path(root) / 'val'}/<class>/*")
        found = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.classes = list(classes or found)
        missing = [c for c in self.classes if c not in found]
        if missing:
            loose = sum(1 for p in d.iterdir() if p.suffix.lower() in IMG_EXT)
            raise DDNError(
                f"{d} lacks the class folders {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                f"({len(missing)} of {len(self.classes)})"
                + (f"; it holds {loose} loose images: the ImageNet validation images must be "
                   f"sorted into {d}/<class>/ folders named as in train/" if loose else ""))
        unknown = [c for c in found if c not in self.classes]
        if unknown:
            raise DDNError(f"{d} has class folders {unknown[:5]} that the training classes "
                           f"lack; their images would be ignored")
        self.samples = [(f, c) for c, name in enumerate(self.classes)
                        for f in sorted((d / name).iterdir()) if f.suffix.lower() in IMG_EXT]
        if not self.samples:
            raise DDNError(f"no images under {d}/<class>/ (extensions {sorted(IMG_EXT)})")
        counts = np.bincount([c for _, c in self.samples], minlength=len(self.classes))
        empty = [self.classes[c] for c in np.nonzero(counts == 0)[0]]
        if empty:
            warnings.warn(f"{d}: class folders without images: {empty[:5]}"
                          f"{' ...' if len(empty) > 5 else ''}; those classes have no "
                          f"{split} sample", DDNWarning, stacklevel=2)
        self.train = split == "train" if train is None else train
        self.size, self.resize, self.seed, self.epoch = size, resize, seed, 0
        self.labels = torch.tensor([c for _, c in self.samples])

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image
        path, label = self.samples[i]
        with Image.open(path) as im:
            img = im.convert("RGB")
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            img = random_resized_crop(img, self.size, rng)
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            img = center_crop(resize_shorter(img, self.resize), self.size)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        return x, label


class TensorImages:
    """In-memory images (N, H, W) or (N, C, H, W) uint8 with labels; batches are normalized
    by ``mean``/``std`` and, in training, flipped horizontally with probability ½ (drawn from
    the epoch's generator)."""

    def __init__(self, images, labels, mean, std, flip=True):
        x = images if images.ndim == 4 else images[:, None]
        self.images, self.labels, self.mean, self.std, self.flip = x, labels, mean, std, flip

    def __len__(self):
        return len(self.labels)

    def batch(self, idx, generator=None):
        x = (self.images[idx].float() / 255.0 - self.mean) / self.std
        if generator is not None and self.flip:
            f = torch.rand(len(idx), generator=generator) < 0.5
            x = torch.where(f[:, None, None, None], x.flip(-1), x)
        return x, self.labels[idx]


def _stratified_subset(labels, n, seed):
    """Sorted indices of exactly ``n`` samples (all when ``n`` is None or too large) with counts
    per class as equal as possible: every class gets ``n // C`` (or all it has), the remainder
    goes one by one to classes drawn at random. (It used to return ``C·(n // C)`` samples:
    60 for n = 65, and C for n < C.)"""
    if n is None or n >= len(labels):
        return torch.arange(len(labels))
    if n < 1:
        raise DDNError(f"a subset needs n >= 1 samples; got {n}")
    g = torch.Generator().manual_seed(seed)
    C = int(labels.max()) + 1
    idx, rank = [], []
    for c in range(C):                    # a random order within each class ...
        i = torch.nonzero(labels == c).flatten()
        idx.append(i[torch.randperm(len(i), generator=g)])
        rank.append(torch.arange(len(i)))
    idx, rank = torch.cat(idx), torch.cat(rank)
    cls = labels[idx].long()
    # ... then round robin over the classes (in a random class order within a round)
    key = rank * C + torch.randperm(C, generator=g)[cls]
    return idx[key.argsort()[:n]].sort().values


# ============================================================================ configuration
@dataclass
class ImageConfig:
    """Everything that determines an image run."""
    preset: str = "cpu"
    data: str = "fashion-mnist"       # "fashion-mnist" or "imagenet"
    data_root: str | None = None
    n_train: int | None = None        # stratified subset of the training set (None: all)
    n_test: int | None = None
    width: int = 64
    stem: str = "imagenet"
    image_size: int = 224
    epochs: int = 90
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: int = 30
    lr_gamma: float = 0.1
    num_workers: int = 0
    seed: int = 0
    scales: dict | None = None        # {p: s}; None → auto_scale
    variants: list = field(default_factory=lambda: [variant_name(k, p) for k, p in VARIANTS])

    def training_key(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("preset", "variants", "data_root", "num_workers", "scales"):
            d.pop(k)
        return d


PRESETS = {
    "paper": dict(data="imagenet", width=64, stem="imagenet", image_size=224, epochs=90,
                  batch_size=256, lr=0.1, lr_step=30, lr_gamma=0.1, weight_decay=1e-4,
                  num_workers=8, scales=dict(PAPER_SCALES)),
    "cpu": dict(data="fashion-mnist", n_train=10000, n_test=None, width=16, stem="small",
                image_size=28, epochs=7, batch_size=64, lr=0.05, lr_step=3, lr_gamma=0.1,
                weight_decay=5e-4),
    "smoke": dict(data="fashion-mnist", n_train=60, n_test=40, width=4, stem="small",
                  image_size=28, epochs=2, batch_size=20, lr=0.05, lr_step=1, lr_gamma=0.1,
                  weight_decay=5e-4, variants=["none", "sphere-2"]),
}


def preset(name: str | None = None, **overrides) -> ImageConfig:
    """Configuration of preset ``name`` (default ``smoke`` under DDN_SMOKE, else ``cpu``),
    checked by :func:`check_config`."""
    return check_config(apply_preset(ImageConfig, PRESETS, name, overrides, "image"))


def check_config(cfg: ImageConfig) -> ImageConfig:
    """DDNError naming the setting when ``cfg`` cannot give a meaningful run, before any
    training (a bad variant used to fail only after the data had loaded and earlier variants
    had trained; zero epochs evaluated an untrained model)."""
    def bad(msg):
        raise DDNError(f"image experiment: {msg}")
    if cfg.data not in ("fashion-mnist", "imagenet"):
        bad(f"unknown data {cfg.data!r}; use 'fashion-mnist' or 'imagenet'")
    if not cfg.variants:
        bad("no variant given; use none, sphere-P or ball-P with P in 1, 2, inf")
    for v in cfg.variants:
        parse_variant(v)
    if cfg.stem not in ("imagenet", "small"):
        bad(f"stem must be 'imagenet' or 'small'; got {cfg.stem!r}")
    for k in ("epochs", "width", "image_size", "lr_step"):
        v = getattr(cfg, k)
        if int(v) != v or v < 1:
            bad(f"{k} must be a positive integer; got {v!r}")
    for k in ("n_train", "n_test"):
        v = getattr(cfg, k)
        if v is not None and (int(v) != v or v < 1):
            bad(f"{k} must be a positive integer or None (all); got {v!r}")
    if int(cfg.batch_size) != cfg.batch_size or cfg.batch_size < 2:
        bad(f"batch_size must be an integer >= 2 (batch norm); got {cfg.batch_size!r}")
    if cfg.num_workers < 0 or not cfg.lr > 0:
        bad(f"need num_workers >= 0 and lr > 0; got {cfg.num_workers}, {cfg.lr}")
    for p, v in (cfg.scales or {}).items():
        if _parse_p(p) not in (1.0, 2.0, math.inf) or not (v > 0 and math.isfinite(v)):
            bad(f"scales maps p in 1, 2, inf to a finite radius > 0; got {p!r}: {v!r}")
    return cfg


def variant_name(kind, p) -> str:
    """The canonical name: ``"none"``, ``"sphere-1"``, ``"sphere-2"``, ``"ball-inf"``, ..."""
    if kind in (None, "none"):
        return "none"
    p = _parse_p(p)
    return f"{kind}-{'inf' if math.isinf(p) else f'{p:g}'}"


def parse_variant(v: str):
    """``"none"`` → (None, None); ``"sphere-2"`` → ("sphere", 2.0); ``"ball-inf"`` → ("ball", inf)."""
    if v in ("none", "baseline"):
        return None, None
    kind, _, p = v.partition("-")
    if kind not in ("sphere", "ball") or not p:
        raise DDNError(f"variant {v!r}: use none, sphere-P or ball-P with P in 1, 2, inf")
    try:
        p = _parse_p(p)
    except ValueError:
        raise DDNError(f"variant {v!r}: p must be 1, 2 or inf") from None
    if p not in (1.0, 2.0, math.inf):
        raise DDNError(f"variant {v!r}: p must be 1, 2 or inf")
    return kind, p


def load_data(cfg: ImageConfig):
    """``(train, test, class_names, in_channels)``; ``train``/``test`` are
    :class:`TensorImages` (Fashion-MNIST) or :class:`ImageFolderDataset` (ImageNet layout)."""
    if cfg.data == "fashion-mnist":
        xtr, ytr = load_fashion_mnist(cfg.data_root, "train")
        xte, yte = load_fashion_mnist(cfg.data_root, "test")
        itr, ite = _stratified_subset(ytr, cfg.n_train, cfg.seed), _stratified_subset(yte, cfg.n_test, cfg.seed + 1)
        mean, std = 0.2860, 0.3530     # Fashion-MNIST training-set pixel statistics
        return (TensorImages(xtr[itr], ytr[itr], mean, std), TensorImages(xte[ite], yte[ite], mean, std, False),
                FMNIST_CLASSES, 1)
    if cfg.data == "imagenet":
        if not cfg.data_root:
            raise DDNError("--data imagenet needs --data-root DIR with DIR/train/<class>/* and "
                           "DIR/val/<class>/*")
        tr = ImageFolderDataset(cfg.data_root, "train", size=cfg.image_size,
                                resize=round(cfg.image_size * 256 / 224), seed=cfg.seed)
        te = ImageFolderDataset(cfg.data_root, "val", size=cfg.image_size,
                                resize=round(cfg.image_size * 256 / 224), classes=tr.classes)
        # n_train / n_test apply here too (they were silently ignored for this layout)
        for ds, n, seed in ((tr, cfg.n_train, cfg.seed), (te, cfg.n_test, cfg.seed + 1)):
            keep = _stratified_subset(ds.labels, n, seed)
            if len(keep) < len(ds):
                ds.samples = [ds.samples[i] for i in keep.tolist()]
                ds.labels = ds.labels[keep]
        return tr, te, tr.classes, 3
    raise DDNError(f"unknown data {cfg.data!r}; use 'fashion-mnist' or 'imagenet'")


def _iterate(ds, order, batch_size, epoch, generator, num_workers, train):
    if isinstance(ds, TensorImages):
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            if train and len(idx) < 2:
                continue
            yield ds.batch(idx, generator if train else None)
        return
    ds.epoch = epoch
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=order.tolist(),
                                         num_workers=num_workers, drop_last=train)
    yield from loader


# ============================================================================ training
def _scale_for(cfg, p, d):
    if p is None:
        return None
    if cfg.scales and p in cfg.scales:
        return cfg.scales[p]
    return auto_scale(d, p)


def build_model(cfg: ImageConfig, variant: str, num_classes: int, in_channels: int) -> ResNet18:
    kind, p = parse_variant(variant)
    d = 8 * cfg.width
    return ResNet18(num_classes, in_channels, cfg.width, cfg.stem, kind, p, _scale_for(cfg, p, d))


def checkpoint_path(cfg, variant, checkpoint_dir) -> Path:
    variant = variant_name(*parse_variant(variant))
    key = dict(cfg.training_key(), variant=variant, scale=_scale_for(cfg, parse_variant(variant)[1], 8 * cfg.width))
    return Path(checkpoint_dir) / f"images-{variant}-{config_hash(key)}.pt"


def train_model(cfg: ImageConfig, variant: str, data, device=None, checkpoint_dir=None,
                show_progress=True, stop_after_epochs=None):
    if checkpoint_dir is None:
        return _train_model(cfg, variant, data, device, None, show_progress, stop_after_epochs)
    with checkpoint_lock(checkpoint_path(cfg, variant, checkpoint_dir)):
        return _train_model(cfg, variant, data, device, checkpoint_dir, show_progress,
                            stop_after_epochs)


def _train_model(cfg: ImageConfig, variant: str, data, device=None, checkpoint_dir=None,
                 show_progress=True, stop_after_epochs=None):
    """Train ResNet-18 ``variant`` (``"none"``, ``"sphere-1"``, ..., ``"ball-inf"``) with SGD +
    step schedule; checkpoint after every epoch and resume from one. ``stop_after_epochs``
    simulates a kill after that many epochs of this call. Returns ``(model, finished_epochs)``."""
    device = choose_device(device)
    train, _, classes, cin = data
    path = checkpoint_path(cfg, variant, checkpoint_dir) if checkpoint_dir else None

    def batches(epoch):
        g = epoch_generator(cfg.seed, epoch)
        order = torch.randperm(len(train), generator=g)
        return (_iterate(train, order, cfg.batch_size, epoch, g, cfg.num_workers, True),
                len(order) // cfg.batch_size)

    return run_training(cfg, lambda: build_model(cfg, variant, len(classes), cin), batches,
                        device=device, path=path, name=repr(variant),
                        show_progress=show_progress, stop_after_epochs=stop_after_epochs)


train_model.__doc__ = _train_model.__doc__


@torch.no_grad()
def evaluate(model, test, batch_size=256, device=None, num_workers=0) -> dict:
    """Top-1, top-5 and mAP (percent, over all classes) on ``test``."""
    device = device or next(model.parameters()).device
    model.eval()
    scores, labels = [], []
    order = torch.arange(len(test))
    for x, y in _iterate(test, order, batch_size, 0, None, num_workers, False):
        scores.append(model(x.to(device)).float().cpu())
        labels.append(torch.as_tensor(y))
    return classification_metrics(torch.cat(scores), torch.cat(labels), ks=(1, 5))


def run_experiment(cfg: ImageConfig | None = None, device=None, results_csv=None,
                   checkpoint_dir=None, show_progress=True, data=None) -> list[dict]:
    """Train and evaluate every variant of ``cfg.variants``; append one row per variant to
    ``results_csv`` (default ``results/images.csv``) and return the rows."""
    cfg = check_config(cfg or preset())
    device = choose_device(device)
    results_csv = Path(results_csv or results_dir() / "images.csv")
    checkpoint_dir = Path(checkpoint_dir or results_csv.parent / "checkpoints")
    data = data or load_data(cfg)
    rows = []
    for v in cfg.variants:
        v = variant_name(*parse_variant(v))
        t0 = time.time()
        model, _ = train_model(cfg, v, data, device, checkpoint_dir, show_progress)
        try:
            m = evaluate(model, data[1], device=device, num_workers=cfg.num_workers)
        except DDNError as e:                 # say which model
            raise DDNError(f"evaluating {v}: {e}") from e
        kind, p = parse_variant(v)
        row = dict(preset=cfg.preset, data=cfg.data, seed=cfg.seed, variant=v,
                   projection=kind or "none", p="" if p is None else ("inf" if p == math.inf else f"{p:g}"),
                   scale="" if p is None else round(_scale_for(cfg, p, 8 * cfg.width), 3),
                   top1=round(m["top1"], 2), top5=round(m["top5"], 2), map=round(m["map"], 2),
                   epochs=cfg.epochs, width=cfg.width, n_train=len(data[0]), n_test=len(data[1]),
                   params=sum(q.numel() for q in model.parameters()), device=str(device),
                   train_eval_s=round(time.time() - t0, 1), timestamp=timestamp())
        append_results(results_csv, [row])
        rows.append(row)
        if show_progress:
            print(f"{v:>10}: top1 {row['top1']:.2f}  top5 {row['top5']:.2f}  mAP {row['map']:.2f}",
                  flush=True)
    return rows


def render_table(results_csv=None, preset_name="cpu", data: str | None = None) -> str:
    """Markdown table in Table IV's layout: each cell ``ours (paper)``; rows of ``preset_name``
    (and of ``data`` when given)."""
    rows = read_results(results_csv or results_dir() / "images.csv")
    latest = {}
    for r in rows:                       # the latest row per variant, in the paper's order
        if r.get("preset") == preset_name and (data is None or r.get("data") == data):
            latest[variant_name(*parse_variant(r["variant"]))] = r
    order = [variant_name(k, p) for k, p in VARIANTS]
    latest = {v: latest[v] for v in sorted(latest, key=lambda v: order.index(v))}
    paper = {}
    for r in paper_table("table4"):
        if r["model"] == "ResNet-18-pt":
            continue
        kind = r["model"].split("-")[-1].lower() if r["model"] != "ResNet-18" else "none"
        p = r["p"]
        key = kind if kind == "none" else f"{kind}-{'inf' if math.isinf(float(p)) else int(p)}"
        paper[key] = r
    if not latest:          # say so, rather than print an empty table
        return (f"(no image results for preset {preset_name!r}"
                + (f" and data {data!r}" if data else "")
                + f" in {results_csv or results_dir() / 'images.csv'})")
    body = []
    for v, r in latest.items():
        name = "ResNet-18" if v == "none" else f"ResNet-18-{v.split('-')[0].capitalize()}"
        p = "" if v == "none" else v.split("-")[1].replace("inf", "∞")
        cells = [name, p]
        for k in ("top1", "top5", "map"):
            pv = paper.get(v, {}).get(k)
            cells.append(f"{r[k]:.2f}" + (f" ({pv:.2f})" if isinstance(pv, float) else ""))
        body.append(cells)
    return format_table(["model", "p", "top-1", "top-5", "mAP"], body,
                        f"Table IV layout — ours (paper, ImageNet), preset {preset_name}")


# ============================================================================ command line
def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m ddn.experiments.images",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None)
    ap.add_argument("--data", choices=["fashion-mnist", "imagenet"], default=None)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--variants", default=None,
                    help="comma list of none,sphere-1,sphere-2,sphere-inf,ball-1,ball-2,ball-inf")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-test", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: auto)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--results", default=None, help="CSV to append to (default results/images.csv)")
    ap.add_argument("--checkpoints", default=None)
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()] if a.variants else None
    return run_cli(
        ap, a,
        lambda: preset(a.preset, data=a.data, data_root=a.data_root, variants=variants,
                       epochs=a.epochs, n_train=a.n_train, n_test=a.n_test, width=a.width,
                       seed=a.seed, num_workers=a.workers),
        lambda cfg: run_experiment(cfg, a.device, a.results, a.checkpoints,
                                   show_progress=not a.no_progress),
        lambda cfg: print(render_table(a.results, cfg.preset, cfg.data)))


if __name__ == "__main__":
    sys.exit(main())
