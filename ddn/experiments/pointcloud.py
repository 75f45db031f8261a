"""Point-cloud classification with robust pooling (paper §7.1, Tables II and III).

PointNet without its transform nets: shared per-point MLP 3→64→64→64→128→1024 (1×1
convolutions, batch norm, ReLU), a **global pooling** over the points, then 1024→512→256→C
with dropout — about 0.8M parameters at full width. The global pooling is max pooling (the
PointNet baseline) or robust pooling ``y ∈ argmin_u Σ_i φ(u − x_i; α)`` per feature channel
(``ddn.torch.RobustPool``), with the penalties Q, PH, H, W, TQ and α = 1.

Outlier protocol: a fraction ρ of each cloud's points is *replaced* by points drawn uniformly
in the unit ball (exactly ``round(ρ n)`` points per cloud). Table II: outliers at training and
test time (the same ρ); Table III: trained without outliers, tested with them.

Data: the standard ``modelnet40_ply_hdf5_2048`` HDF5 files (``--data modelnet40
--data-root DIR``), or — the default — a synthetic data set of parametric 3-D shape families
(:func:`make_synthetic_shapes`) so that the pipeline runs anywhere.

Command line::

    python -m ddn.experiments.pointcloud --preset cpu          # the whole table, CPU-sized
    python -m ddn.experiments.pointcloud --preset paper --data modelnet40 --data-root DIR
    python -m ddn.experiments.pointcloud --render-only         # tables from results/ CSV

Presets: ``paper`` (the paper's optimizer and schedule: SGD, 60 epochs, lr 0.01 halved every
20 epochs, momentum 0.9, batch 24, 2048 points, full width), ``cpu`` (minutes: reduced width,
fewer points and epochs, synthetic data) and ``smoke`` (seconds; the default under
``DDN_SMOKE``).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ddn import DDNError, DDNWarning

from .common import (append_results, apply_preset, checkpoint_lock, choose_device, run_cli, classification_metrics,
                    config_hash, run_training, epoch_generator, format_table, paper_table,
                    read_results, results_dir, timestamp)

__all__ = [
    "PointCloudConfig", "PRESETS", "preset", "SHAPE_FAMILIES", "make_synthetic_shapes",
    "load_modelnet40", "load_data", "add_outliers", "sample_unit_ball", "PointNet", "make_pool",
    "train_model", "evaluate", "run_experiment", "render_tables", "plot_outliers", "main",
    "check_config",
]

POOLINGS = {"max": None, "Q": "quadratic", "PH": "pseudo-huber", "H": "huber", "W": "welsch",
            "TQ": "truncated-quadratic"}


# ============================================================================ configuration
@dataclass
class PointCloudConfig:
    """Everything that determines a point-cloud run (one preset = one of these)."""
    preset: str = "cpu"
    data: str = "synthetic"            # "synthetic" or "modelnet40"
    data_root: str | None = None
    n_train_per_class: int = 100       # synthetic only
    n_test_per_class: int = 40         # synthetic only
    npoints: int = 2048
    width: float = 1.0                 # multiplies every hidden width of PointNet
    dropout: float = 0.3
    alpha: float = 1.0
    epochs: int = 60
    batch_size: int = 24
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step: int = 20
    lr_gamma: float = 0.5
    seed: int = 0
    poolings: list = field(default_factory=lambda: list(POOLINGS))
    rates: list = field(default_factory=lambda: [0, 10, 50, 90])   # outlier percent
    iii_rates: list | None = None      # Table III test rates (evaluation only); None: rates
    settings: list = field(default_factory=lambda: ["II", "III"])

    def training_key(self) -> dict:
        """The fields that determine a trained model (for its checkpoint's name)."""
        d = dataclasses.asdict(self)
        for k in ("preset", "poolings", "rates", "iii_rates", "settings", "data_root"):
            d.pop(k)
        return d


PRESETS = {
    "paper": dict(data="modelnet40", npoints=2048, width=1.0, epochs=60, batch_size=24, lr=0.01,
                  lr_step=20, lr_gamma=0.5, rates=[0, 10, 20, 50, 90],
                  iii_rates=[0, 1, 10, 20, 30, 40, 50, 60, 70, 80, 90]),
    "cpu": dict(data="synthetic", n_train_per_class=100, n_test_per_class=50, npoints=256,
                width=0.25, epochs=15, batch_size=24, lr=0.01, lr_step=5, lr_gamma=0.5),
    "smoke": dict(data="synthetic", n_train_per_class=4, n_test_per_class=3, npoints=32,
                  width=0.0625, epochs=2, batch_size=8, lr=0.01, lr_step=1, lr_gamma=0.5,
                  poolings=["max", "Q"], rates=[0, 50]),
}


def preset(name: str | None = None, **overrides) -> PointCloudConfig:
    """The configuration of preset ``name`` (default: ``smoke`` under ``DDN_SMOKE``, else
    ``cpu``), with ``overrides`` applied; checked by :func:`check_config`."""
    return check_config(apply_preset(PointCloudConfig, PRESETS, name, overrides, "point-cloud"))


def check_config(cfg: PointCloudConfig) -> PointCloudConfig:
    """DDNError naming the setting when ``cfg`` cannot give a meaningful run (before any
    training: a bad outlier rate used to fail only when its model started training, an unknown
    setting crashed after training, zero epochs evaluated untrained models)."""
    def bad(msg):
        raise DDNError(f"point-cloud experiment: {msg}")
    if cfg.data not in ("synthetic", "modelnet40"):
        bad(f"unknown data {cfg.data!r}; use 'synthetic' or 'modelnet40'")
    if not cfg.poolings:
        bad("no pooling given; choose from " + ",".join(POOLINGS))
    short = {v: k for k, v in POOLINGS.items() if v}
    for name in cfg.poolings:
        if name not in POOLINGS and name not in short:
            bad(f"unknown pooling {name!r}; choose from {list(POOLINGS)}")
    # full penalty names become the short ones: the tables only know those
    cfg.poolings = [short.get(name, name) for name in cfg.poolings]
    for what, rates in (("rates", cfg.rates), ("iii_rates", cfg.iii_rates or [])):
        for r in rates:
            if not isinstance(r, (int, float)) or not 0 <= r <= 100:
                bad(f"{what} are outlier percents in [0, 100]; got {r!r}")
    if not cfg.rates:
        bad("no outlier rate given (rates, in percent)")
    if not cfg.settings or not set(cfg.settings) <= {"II", "III"}:
        bad(f"settings must be a non-empty list of 'II' and 'III'; got {cfg.settings!r}")
    for k in ("epochs", "npoints", "lr_step", "n_train_per_class", "n_test_per_class"):
        v = getattr(cfg, k)
        if int(v) != v or v < 1:
            bad(f"{k} must be a positive integer; got {v!r}")
    if int(cfg.batch_size) != cfg.batch_size or cfg.batch_size < 2:
        bad(f"batch_size must be an integer >= 2 (batch norm); got {cfg.batch_size!r}")
    if not (cfg.width > 0 and cfg.lr > 0 and cfg.alpha > 0 and 0 <= cfg.dropout < 1):
        bad(f"need width > 0, lr > 0, alpha > 0 and 0 <= dropout < 1; got width={cfg.width}, "
            f"lr={cfg.lr}, alpha={cfg.alpha}, dropout={cfg.dropout}")
    return cfg


# ============================================================================ data
def _rotations(m, g):
    """(m, 3, 3) rotations uniform on SO(3) (QR of a Gaussian with sign fix)."""
    q, r = torch.linalg.qr(torch.randn(m, 3, 3, generator=g))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    det = torch.linalg.det(q)
    q[:, :, 0] *= det.sign().unsqueeze(-1)
    return q


def _u(g, *shape):
    return torch.rand(*shape, generator=g)


def _pick(weights, m, n, g):
    """(m, n) indices of faces drawn with probabilities ∝ ``weights`` (m, F)."""
    p = weights / weights.sum(-1, keepdim=True)
    return torch.searchsorted(p.cumsum(-1).contiguous(),
                              _u(g, m, n).contiguous()).clamp_max(weights.shape[-1] - 1)


def _sphere(m, n, g):
    x = torch.randn(m, n, 3, generator=g)
    return x / x.norm(dim=-1, keepdim=True)


def _box(m, n, g):
    # surface of a box with random side lengths: a face by area, then a point on it
    s = 0.5 + 0.5 * _u(g, m, 1, 3)                       # half-sides
    area = torch.stack([s[..., 1] * s[..., 2], s[..., 0] * s[..., 2], s[..., 0] * s[..., 1]],
                       -1).squeeze(1)                    # (m, 3) per axis
    axis = _pick(area, m, n, g)                          # (m, n) which axis the face is normal to
    x = (2 * _u(g, m, n, 3) - 1)
    sign = torch.where(_u(g, m, n) < 0.5, -1.0, 1.0)
    x = x.scatter(-1, axis.unsqueeze(-1), sign.unsqueeze(-1))
    return x * s


def _cylinder(m, n, g):
    r = 0.3 + 0.7 * _u(g, m, 1)
    h = 0.6 + 1.4 * _u(g, m, 1)
    face = _pick(torch.cat([2 * r * h, 2 * r * r], -1), m, n, g)   # lateral ∝ 2πrh, caps 2πr²
    th = 2 * math.pi * _u(g, m, n)
    rad = torch.where(face == 0, r, r * _u(g, m, n).sqrt())
    z = torch.where(face == 0, h * (_u(g, m, n) - 0.5), h * (torch.where(_u(g, m, n) < .5, -.5, .5)))
    return torch.stack([rad * th.cos(), rad * th.sin(), z], -1)


def _cone(m, n, g):
    r = 0.4 + 0.6 * _u(g, m, 1)
    h = 0.6 + 1.4 * _u(g, m, 1)
    face = _pick(torch.cat([r * (r * r + h * h).sqrt(), r * r], -1), m, n, g)
    th = 2 * math.pi * _u(g, m, n)
    t = _u(g, m, n).sqrt()                                # uniform on the lateral surface
    rad = torch.where(face == 0, r * t, r * _u(g, m, n).sqrt())
    z = torch.where(face == 0, h / 2 - h * t, -h / 2 * torch.ones_like(t))
    return torch.stack([rad * th.cos(), rad * th.sin(), z], -1)


def _torus(m, n, g):
    a = 0.2 + 0.3 * _u(g, m, 1)                           # tube radius (major radius 1)
    th, ph = 2 * math.pi * _u(g, m, n), 2 * math.pi * _u(g, m, n)
    rho = 1 + a * ph.cos()
    return torch.stack([rho * th.cos(), rho * th.sin(), a * ph.sin()], -1)


def _octahedron(m, n, g):
    e = -torch.log(_u(g, m, n, 3).clamp_min(1e-12))       # Dirichlet(1,1,1): uniform on a face
    x = e / e.sum(-1, keepdim=True)
    return x * torch.where(_u(g, m, n, 3) < 0.5, -1.0, 1.0)


def _pyramid(m, n, g):
    h = 0.8 + 1.2 * _u(g, m, 1)                           # square base [-1,1]², apex at height h
    slant = (1 + h * h).sqrt()
    face = _pick(torch.cat([slant.expand(m, 4), 4 * torch.ones(m, 1)], -1), m, n, g)                                 # 4 triangles of area slant, base 4
    u, v = _u(g, m, n), _u(g, m, n)
    flip = u + v > 1                                      # uniform in a triangle
    u, v = torch.where(flip, 1 - u, u), torch.where(flip, 1 - v, v)
    # triangle k: base corners c_k, c_{k+1} and the apex
    corners = torch.tensor([[1., 1.], [-1., 1.], [-1., -1.], [1., -1.]])
    k = face.clamp_max(3)
    c0, c1 = corners[k], corners[(k + 1) % 4]
    xy = c0 * (1 - u - v).unsqueeze(-1) + c1 * u.unsqueeze(-1)   # apex has xy = 0
    z = h * v
    tri = torch.cat([xy, z.unsqueeze(-1)], -1)
    base = torch.stack([2 * _u(g, m, n) - 1, 2 * _u(g, m, n) - 1, torch.zeros(m, n)], -1)
    x = torch.where((face == 4).unsqueeze(-1), base, tri)
    return x


def _annulus(m, n, g):
    a = 0.2 + 0.5 * _u(g, m, 1)                           # inner radius (outer 1)
    rad = (a * a + (1 - a * a) * _u(g, m, n)).sqrt()      # uniform in area
    th = 2 * math.pi * _u(g, m, n)
    return torch.stack([rad * th.cos(), rad * th.sin(), 0.03 * torch.randn(m, n, generator=g)], -1)


SHAPE_FAMILIES = {"sphere": _sphere, "box": _box, "cylinder": _cylinder, "cone": _cone,
                  "torus": _torus, "octahedron": _octahedron, "pyramid": _pyramid,
                  "annulus": _annulus}


def normalize_unit_ball(x: torch.Tensor) -> torch.Tensor:
    """Centre each cloud (B, N, 3) at its centroid and scale it so its farthest point has
    norm 1."""
    x = x - x.mean(dim=-2, keepdim=True)
    return x / x.norm(dim=-1).amax(dim=-1).clamp_min(1e-12)[:, None, None]


def make_synthetic_shapes(n_per_class: int, npoints: int, seed: int = 0, noise: float = 0.02,
                          families=None):
    """A synthetic 3-D shape classification set: ``n_per_class`` clouds of ``npoints`` points
    from each parametric family in :data:`SHAPE_FAMILIES` (sphere, box, cylinder, cone, torus,
    octahedron, pyramid, annulus), each with random shape parameters (side lengths, radii,
    heights), a random mild anisotropic scaling, a uniform random rotation, Gaussian surface
    noise (σ = ``noise`` relative to the shape's size), then normalized into the unit ball.

    Returns:
        ``(points (C·n_per_class, npoints, 3) float32, labels (C·n_per_class,) int64,
        class_names)``; deterministic given ``seed``.
    """
    families = list(families or SHAPE_FAMILIES)
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c, name in enumerate(families):
        x = SHAPE_FAMILIES[name](n_per_class, npoints, g)
        x = x * (0.8 + 0.4 * _u(g, n_per_class, 1, 3))                   # anisotropic scale
        x = x @ _rotations(n_per_class, g).transpose(-1, -2)             # random pose
        x = x * (0.5 + _u(g, n_per_class, 1, 1))                         # random size
        scale = x.norm(dim=-1).amax(-1)[:, None, None]
        x = x + noise * scale * torch.randn(x.shape, generator=g)        # surface noise
        xs.append(normalize_unit_ball(x))
        ys.append(torch.full((n_per_class,), c, dtype=torch.int64))
    return torch.cat(xs).float(), torch.cat(ys), families


MODELNET_HELP = (
    "ModelNet40 (HDF5, 2048 points) not found in {root!r}. Download "
    "'modelnet40_ply_hdf5_2048.zip' (the PointNet authors' HDF5 release of ModelNet40, "
    "https://shapenet.cs.stanford.edu/media/modelnet40_ply_hdf5_2048.zip or a mirror), unzip "
    "it and pass the folder holding ply_data_train*.h5 / train_files.txt with --data-root. "
    "Or run with --data synthetic (the default) to use the built-in shapes.")


def _h5_files(root: Path, split: str):
    listing = root / f"{split}_files.txt"
    if listing.is_file():
        files = [root / Path(line.strip()).name for line in listing.read_text().splitlines()
                 if line.strip()]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DDNError(f"{listing} lists files that are not there: {missing[:3]}. "
                           + MODELNET_HELP.format(root=str(root)))
        return files
    return sorted(root.glob(f"ply_data_{split}*.h5"))


def load_modelnet40(root, split: str = "train", npoints: int | None = None):
    """Load a split of the ``modelnet40_ply_hdf5_2048`` HDF5 release.

    Files: ``{split}_files.txt`` listing ``ply_data_{split}K.h5`` (or, without the listing, the
    ``ply_data_{split}*.h5`` in ``root``), each with ``data`` (N, 2048, 3) and ``label`` (N, 1).
    Clouds are truncated to the first ``npoints`` points and normalized into the unit ball.

    Returns:
        ``(points (N, npoints, 3) float32, labels (N,) int64, class_names or None)``.
    Raises:
        DDNError with download instructions when the files are absent.
    """
    import h5py
    import numpy as np
    if split not in ("train", "test"):
        raise DDNError(f"ModelNet40 has the splits 'train' and 'test'; got {split!r}")
    root = Path(root) if root else None
    if root is None or not root.is_dir():
        raise DDNError(MODELNET_HELP.format(root=str(root)))
    files = _h5_files(root, split)
    if not files:
        raise DDNError(MODELNET_HELP.format(root=str(root)))
    if npoints is not None and (int(npoints) != npoints or npoints < 1):
        raise DDNError(f"npoints must be a positive integer; got {npoints!r}")
    names_file = root / "shape_names.txt"
    names = names_file.read_text().split() if names_file.is_file() else None
    n_classes = len(names) if names else 40
    xs, ys = [], []
    for f in files:
        try:
            h = h5py.File(f, "r")
        except OSError as e:
            raise DDNError(f"{f} is not a readable HDF5 file ({e}); download and unzip "
                           f"modelnet40_ply_hdf5_2048.zip again") from None
        with h:
            if "data" not in h or "label" not in h:
                raise DDNError(f"{f} lacks the 'data' and 'label' datasets of the ModelNet "
                               f"HDF5 layout")
            d, lab = h["data"], h["label"]
            if d.ndim != 3 or d.shape[2] != 3:
                raise DDNError(f"{f}: 'data' must be (clouds, points, 3); got {d.shape}")
            if npoints is not None and npoints > d.shape[1]:
                raise DDNError(f"{f} holds {d.shape[1]} points per cloud but npoints={npoints} "
                               f"were asked for; use npoints <= {d.shape[1]}")
            x = np.asarray(d[:, :npoints], dtype=np.float32)
            y = np.asarray(lab[()]).reshape(-1)
        if y.dtype.kind not in "iub" and not np.array_equal(y, np.round(y)):
            raise DDNError(f"{f}: labels must be integer class indices; got {y.dtype} values "
                           f"such as {y[y != np.round(y)][:3].tolist()}")   # not truncated
        y = y.astype(np.int64)
        if len(y) != len(x):
            raise DDNError(f"{f}: {len(x)} clouds but {len(y)} labels")
        if not np.isfinite(x).all():
            raise DDNError(f"{f}: the point coordinates hold NaN or infinite values")
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise DDNError(f"{f}: labels must be in 0..{n_classes - 1}; got {y.min()}..{y.max()}")
        xs.append(x)
        ys.append(y)
    x = torch.from_numpy(np.concatenate(xs))
    if len(x) == 0:
        raise DDNError(f"the {split} files in {root} hold no point clouds")
    return normalize_unit_ball(x).float(), torch.from_numpy(np.concatenate(ys)), names


def load_data(cfg: PointCloudConfig):
    """``(train_x, train_y, test_x, test_y, class_names)`` for ``cfg.data``."""
    if cfg.data == "synthetic":
        xtr, ytr, names = make_synthetic_shapes(cfg.n_train_per_class, cfg.npoints, cfg.seed)
        xte, yte, _ = make_synthetic_shapes(cfg.n_test_per_class, cfg.npoints, cfg.seed + 10_007)
        return xtr, ytr, xte, yte, names
    if cfg.data == "modelnet40":
        xtr, ytr, names = load_modelnet40(cfg.data_root, "train", cfg.npoints)
        xte, yte, _ = load_modelnet40(cfg.data_root, "test", cfg.npoints)
        return xtr, ytr, xte, yte, names or [str(i) for i in range(40)]
    raise DDNError(f"unknown data {cfg.data!r}; use 'synthetic' or 'modelnet40'")


def sample_unit_ball(shape, generator=None, dtype=torch.float32) -> torch.Tensor:
    """Points uniform in the unit 3-ball: Gaussian direction times radius ``U^{1/3}``."""
    d = torch.randn(*shape, 3, generator=generator, dtype=dtype)
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return d * torch.rand(*shape, 1, generator=generator, dtype=dtype) ** (1 / 3)


def add_outliers(points: torch.Tensor, fraction: float, generator=None):
    """Replace ``round(fraction·N)`` random points of each cloud (B, N, 3) by points uniform
    in the unit ball (the paper's protocol). Vectorized; deterministic given ``generator``.

    Returns:
        ``(corrupted (B, N, 3), mask (B, N) bool — True at the replaced points)``.
    """
    if not 0 <= fraction <= 1:
        raise DDNError(f"outlier fraction must be in [0, 1]; got {fraction}")
    B, N, _ = points.shape
    k = int(round(fraction * N))
    mask = torch.zeros(B, N, dtype=torch.bool)
    if k == 0:
        return points, mask.to(points.device)
    idx = torch.rand(B, N, generator=generator).argsort(dim=1)[:, :k]          # k distinct
    mask.scatter_(1, idx, True)
    mask = mask.to(points.device)
    out = sample_unit_ball((B, N), generator, points.dtype).to(points.device)
    return torch.where(mask.unsqueeze(-1), out, points), mask


# ============================================================================ model
class _MaxPool(nn.Module):
    def __init__(self, dim=-1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return x.amax(dim=self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


def make_pool(name: str, alpha: float = 1.0) -> nn.Module:
    """Global pooling over the last dimension: ``"max"`` or a robust penalty (``"Q"``,
    ``"PH"``, ``"H"``, ``"W"``, ``"TQ"`` or the full penalty names) via ``ddn.torch.RobustPool``."""
    if name == "max":
        return _MaxPool(-1)
    penalty = POOLINGS.get(name, name)
    if penalty not in POOLINGS.values():
        raise DDNError(f"unknown pooling {name!r}; choose from {list(POOLINGS)}")
    import ddn.torch as dt
    if not hasattr(dt, "RobustPool"):
        raise DDNError("ddn.torch.RobustPool is not available in this checkout; only 'max' "
                       "pooling can be used")
    return dt.RobustPool(penalty, alpha=alpha, dim=-1)


class PointNet(nn.Module):
    """PointNet without transform nets; ``pooling`` selects the global pooling.

    Shapes: input (B, N, 3) → per-point features (B, 1024·width, N) → pooled (B, 1024·width)
    → logits (B, num_classes).
    """

    def __init__(self, num_classes: int = 40, pooling: str = "max", alpha: float = 1.0,
                 width: float = 1.0, dropout: float = 0.3):
        super().__init__()
        w = lambda c: max(4, int(round(c * width)))  # noqa: E731
        chans = [3, w(64), w(64), w(64), w(128), w(1024)]
        layers = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv1d(a, b, 1), nn.BatchNorm1d(b), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.pool = make_pool(pooling, alpha)
        self.head = nn.Sequential(
            nn.Linear(chans[-1], w(512)), nn.BatchNorm1d(w(512)), nn.ReLU(),
            nn.Linear(w(512), w(256)), nn.BatchNorm1d(w(256)), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(w(256), num_classes))

    def forward(self, x):
        f = self.features(x.transpose(1, 2))     # (B, C, N)
        return self.head(self.pool(f))


# ============================================================================ training
def _batches(n, batch_size, generator=None, shuffle=True):
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        if shuffle and len(idx) < 2:      # batch norm needs two samples in training mode
            continue
        yield idx


def checkpoint_path(cfg: PointCloudConfig, pooling: str, train_outlier_pct: float,
                    checkpoint_dir) -> Path:
    # the rate as a float: the command line parses "10" as 10.0, the API's presets give the int
    # 10, and both must name the same checkpoint (float is what the CLI always wrote)
    key = dict(cfg.training_key(), pooling=pooling, train_outlier_pct=float(train_outlier_pct))
    return Path(checkpoint_dir) / f"pointcloud-{pooling}-out{train_outlier_pct:g}-{config_hash(key)}.pt"


def train_model(cfg: PointCloudConfig, pooling: str, train_outlier_pct: float, data,
                device=None, checkpoint_dir=None, show_progress=True, stop_after_epochs=None):
    if checkpoint_dir is None:
        return _train_model(cfg, pooling, train_outlier_pct, data, device, None, show_progress,
                            stop_after_epochs)
    with checkpoint_lock(checkpoint_path(cfg, pooling, train_outlier_pct, checkpoint_dir)):
        return _train_model(cfg, pooling, train_outlier_pct, data, device, checkpoint_dir,
                            show_progress, stop_after_epochs)


def _train_model(cfg: PointCloudConfig, pooling: str, train_outlier_pct: float, data,
                device=None, checkpoint_dir=None, show_progress=True, stop_after_epochs=None):
    """Train PointNet with ``pooling`` for ``cfg.epochs`` epochs with ``train_outlier_pct``
    percent outliers in every training cloud (fresh outliers each epoch, drawn from
    ``seed``+``epoch``). Resumes from the checkpoint in ``checkpoint_dir`` when there is one
    and saves one after every epoch.

    ``stop_after_epochs`` stops after that many epochs of *this call* (a simulated kill, for
    the resume test). Returns ``(model, finished_epochs)``.
    """
    device = choose_device(device)
    xtr, ytr = data[0], data[1]
    num_classes = len(data[4])
    path = checkpoint_path(cfg, pooling, train_outlier_pct, checkpoint_dir) if checkpoint_dir else None

    def batches(epoch):
        g = epoch_generator(cfg.seed, epoch)
        idxs = list(_batches(len(xtr), cfg.batch_size, g))

        def gen():
            for idx in idxs:
                x = xtr[idx]
                if train_outlier_pct > 0:
                    x, _ = add_outliers(x, train_outlier_pct / 100, g)
                yield x, ytr[idx]
        return gen(), len(idxs)

    return run_training(
        cfg, lambda: PointNet(num_classes, pooling, cfg.alpha, cfg.width, cfg.dropout), batches,
        device=device, path=path, name=f"{pooling} out{train_outlier_pct:g}%",
        show_progress=show_progress, stop_after_epochs=stop_after_epochs)


@torch.no_grad()
def evaluate(model, x, y, outlier_pct: float = 0.0, seed: int = 0, batch_size: int = 64,
             device=None) -> dict:
    """Top-1 accuracy and mAP (percent) of ``model`` on clouds ``x`` (N, n, 3) with
    ``outlier_pct`` percent outliers (the same corrupted test set for every model: outliers
    drawn from ``seed`` and the rate)."""
    device = device or next(model.parameters()).device
    model.eval()
    g = epoch_generator(seed, 10**6 + int(round(outlier_pct * 100)), stream=2)
    scores = []
    for idx in _batches(len(x), batch_size, shuffle=False):
        xb = x[idx]
        if outlier_pct > 0:
            xb, _ = add_outliers(xb, outlier_pct / 100, g)
        scores.append(model(xb.to(device)).float().cpu())
    return classification_metrics(torch.cat(scores), y, ks=(1,))


def run_experiment(cfg: PointCloudConfig | None = None, device=None, results_csv=None,
                   checkpoint_dir=None, show_progress=True, data=None) -> list[dict]:
    """Train and evaluate every pooling of ``cfg.poolings`` in the settings ``cfg.settings``
    ("II": outliers at train and test; "III": trained clean, tested with outliers) at the
    outlier rates ``cfg.rates`` (Table III at ``cfg.iii_rates`` when given, evaluation only);
    append one row per (setting, pooling, rate) to
    ``results_csv`` (default ``results/pointcloud.csv``) and return the rows.

    The clean model (0 %) serves Table II's first row and every row of Table III.
    """
    cfg = check_config(cfg or preset())
    device = choose_device(device)
    results_csv = Path(results_csv or results_dir() / "pointcloud.csv")
    checkpoint_dir = Path(checkpoint_dir or results_csv.parent / "checkpoints")
    data = data or load_data(cfg)
    n = data[0].shape[1]
    none = sorted({r for r in [*cfg.rates, *(cfg.iii_rates or [])] if r > 0 and round(r / 100 * n) == 0})
    if none:
        warnings.warn(f"outlier rates {none} % of {n} points replace no point at all: those rows "
                      f"measure the clean data; use more points or higher rates", DDNWarning,
                      stacklevel=2)
    rows = []
    for pooling in cfg.poolings:
        # the clean model only when a row needs it (Table III, or Table II at 0 %)
        train_rates = sorted({*([0] if "III" in cfg.settings else []),
                              *(cfg.rates if "II" in cfg.settings else [])})
        for tr in train_rates:
            t0 = time.time()
            model, _ = train_model(cfg, pooling, tr, data, device, checkpoint_dir, show_progress)
            tests = []
            if "II" in cfg.settings and (tr in cfg.rates):
                tests.append(("II", tr))
            if "III" in cfg.settings and tr == 0:
                tests += [("III", r) for r in (cfg.iii_rates or cfg.rates)]
            new = []
            for setting, te in tests:
                try:
                    m = evaluate(model, data[2], data[3], te, cfg.seed, device=device)
                except DDNError as e:         # say which model and test set
                    raise DDNError(f"{pooling} pooling trained with {tr:g} % outliers, tested "
                                   f"with {te:g} %: {e}") from e
                new.append(dict(preset=cfg.preset, data=cfg.data, seed=cfg.seed, setting=setting,
                                pooling=pooling, train_outlier_pct=tr, test_outlier_pct=te,
                                top1=round(m["top1"], 2), map=round(m["map"], 2),
                                epochs=cfg.epochs, npoints=cfg.npoints, width=cfg.width,
                                params=sum(p.numel() for p in model.parameters()),
                                device=str(device), train_eval_s=round(time.time() - t0, 1),
                                timestamp=timestamp()))
            append_results(results_csv, new)
            rows += new
            if show_progress:
                for r in new:
                    print(f"[{r['setting']}] {pooling:>3} train {tr:>3}% test "
                          f"{r['test_outlier_pct']:>3}%: top1 {r['top1']:.1f}  mAP {r['map']:.1f}",
                          flush=True)
    return rows


train_model.__doc__ = _train_model.__doc__


# ============================================================================ tables, plot
def _latest(rows, **match):
    out = {}
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            out[(r["setting"], r["pooling"], float(r["test_outlier_pct"]))] = r
    return out


def render_tables(results_csv=None, preset_name: str = "cpu", data: str | None = None) -> str:
    """Markdown tables in the paper's layout (rows: outlier %, columns: top-1 then mAP for each
    pooling), each cell ``ours (paper)``; the paper's value is shown where the paper has that
    row."""
    rows = read_results(results_csv or results_dir() / "pointcloud.csv")
    match = {"preset": preset_name}
    if data:
        match["data"] = data
    latest = _latest(rows, **match)
    out = []
    for setting, tname, title in [("II", "table2", "Table II — outliers at train and test time"),
                                  ("III", "table3", "Table III — trained clean, tested with outliers")]:
        paper = {float(r["outlier_pct"]): r for r in paper_table(tname)}
        rates = sorted({k[2] for k in latest if k[0] == setting})
        pools = [p for p in POOLINGS if any(k[0] == setting and k[1] == p for k in latest)]
        if not rates:
            continue
        header = ["outliers %"] + [f"top-1 {p}" for p in pools] + [f"mAP {p}" for p in pools]
        body = []
        for rate in rates:
            line = [f"{rate:g}"]
            for metric in ("top1", "map"):
                for p in pools:
                    r = latest.get((setting, p, rate))
                    ours = f"{r[metric]:.1f}" if r else "–"
                    pv = paper.get(rate, {}).get(f"{metric}_{p}")
                    line.append(ours + (f" ({pv:.1f})" if isinstance(pv, float) else ""))
            body.append(line)
        out.append(format_table(header, body, f"{title}: ours (paper), preset {preset_name}"))
    if not out:             # say so, rather than print nothing (a mistyped --results or preset)
        return (f"(no point-cloud results for preset {preset_name!r}"
                + (f" and data {data!r}" if data else "")
                + f" in {results_csv or results_dir() / 'pointcloud.csv'})")
    return "\n\n".join(out)


def plot_outliers(results_csv=None, preset_name: str = "cpu", path=None):
    """Top-1 accuracy against outlier rate, one panel per setting; ours solid, the paper's
    dashed. Returns the figure (saved to ``path`` when given)."""
    import matplotlib
    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    latest = _latest(read_results(results_csv or results_dir() / "pointcloud.csv"),
                     preset=preset_name)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (setting, tname) in zip(axes, [("II", "table2"), ("III", "table3")]):
        paper = paper_table(tname)
        for i, p in enumerate(POOLINGS):
            pts = sorted((k[2], r["top1"]) for k, r in latest.items() if k[:2] == (setting, p))
            color = f"C{i}"
            if pts:
                ax.plot(*zip(*pts), "o-", color=color, label=f"{p} (ours)")
            ax.plot([r["outlier_pct"] for r in paper], [r[f"top1_{p}"] for r in paper], "--",
                    color=color, alpha=0.5, label=f"{p} (paper)")
        ax.set_title({"II": "Table II: outliers train + test",
                      "III": "Table III: trained clean"}[setting])
        ax.set_xlabel("outlier rate (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 accuracy (%)")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


# ============================================================================ command line
def _list(s, conv=str):
    return [conv(v.strip()) for v in s.split(",") if v.strip()] if s else None


def _percent(v):
    try:
        return float(v)
    except ValueError:
        raise DDNError(f"outlier rates are comma-separated percents such as 0,10,50; "
                       f"got {v!r}") from None


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m ddn.experiments.pointcloud",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="paper | cpu | smoke (default: smoke under DDN_SMOKE, else cpu)")
    ap.add_argument("--data", choices=["synthetic", "modelnet40"], default=None)
    ap.add_argument("--data-root", default=None, help="folder of modelnet40_ply_hdf5_2048")
    ap.add_argument("--poolings", default=None, help="comma list of max,Q,PH,H,W,TQ")
    ap.add_argument("--rates", default=None, help="comma list of outlier percents")
    ap.add_argument("--iii-rates", default=None,
                    help="comma list of Table III test rates (evaluation only; default --rates)")
    ap.add_argument("--settings", default=None, help="comma list of II,III")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: auto)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--results", default=None, help="CSV to append to (default results/pointcloud.csv)")
    ap.add_argument("--checkpoints", default=None, help="checkpoint folder (default next to the CSV)")
    ap.add_argument("--render-only", action="store_true", help="print the tables and exit")
    ap.add_argument("--plot", default=None, help="also save the accuracy-vs-outliers plot here")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    def render(cfg):
        print(render_tables(a.results, cfg.preset, cfg.data))   # not another data set's rows
        if a.plot:
            plot_outliers(a.results, cfg.preset, a.plot)

    return run_cli(
        ap, a,
        lambda: preset(a.preset, data=a.data, data_root=a.data_root, poolings=_list(a.poolings),
                       rates=_list(a.rates, _percent), iii_rates=_list(a.iii_rates, _percent),
                       settings=_list(a.settings), epochs=a.epochs, seed=a.seed),
        lambda cfg: run_experiment(cfg, a.device, a.results, a.checkpoints,
                                   show_progress=not a.no_progress),
        render)


if __name__ == "__main__":
    sys.exit(main())
