"""Shared machinery of the experiments: metrics, devices, seeds, resumable checkpoints,
result CSVs and the paper's tables.

Metrics (N samples, C classes, ``scores`` of shape (N, C), ``labels`` of shape (N,)):

- top-k accuracy: the fraction of samples whose label is among the k highest scores
  (ties broken by ``torch.topk``'s order).
- average precision of class c: rank the N samples by ``scores[:, c]`` (descending) and sum
  ``(R_k - R_{k-1}) P_k`` over the distinct score thresholds, with ``P_k`` and ``R_k`` the
  precision and recall of "score >= threshold k" (the non-interpolated definition that
  scikit-learn's ``average_precision_score`` uses; tied scores enter together).
- mAP: the mean of the per-class APs over **all** C classes (not only the predicted ones).
  A class with no positive sample has no AP; it is left out of the mean with a
  :class:`ddn.DDNWarning` naming it.

Exact resume: a run's checkpoint holds the model, optimizer, scheduler, the RNG states of
torch, numpy and python, and the number of finished epochs; the data order of epoch e is drawn
from a generator seeded with ``seed`` and ``e`` alone, so a killed run restarted with the same
command ends with the same numbers as an uninterrupted one (bit for bit on the same machine,
device and number of threads: parallel reductions round differently at another thread count).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: checkpoint_lock falls back to its pid check
    fcntl = None

import numpy as np
import torch

from ddn import DDNError, DDNWarning
from ddn.utils import repo_root

__all__ = [
    "topk_accuracy", "average_precision", "mean_average_precision", "classification_metrics",
    "choose_device", "run_cli", "seed_everything", "epoch_generator", "rng_state", "set_rng_state",
    "save_checkpoint", "load_checkpoint", "checkpoint_lock", "config_hash", "append_results", "read_results",
    "paper_table", "format_table", "results_dir", "progress",
]

PAPER_TABLES = Path(__file__).parent / "paper_tables"


# ----------------------------------------------------------------------------- metrics
def topk_accuracy(scores, labels, k: int = 1) -> float:
    """Fraction of rows of ``scores`` (N, C) whose ``labels`` (N,) is among the top ``k``."""
    scores, labels = torch.as_tensor(scores), torch.as_tensor(labels)
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise DDNError(f"scores must be (N, C) and labels (N,); got {tuple(scores.shape)} "
                       f"and {tuple(labels.shape)}")
    if int(k) != k or k < 1:
        raise DDNError(f"top-k accuracy needs an integer k >= 1; got {k!r}")
    _check_scores_labels(scores, labels, scores.shape[1])
    k = min(int(k), scores.shape[1])
    top = scores.topk(k, dim=1).indices
    return (top == labels[:, None]).any(dim=1).double().mean().item()


def average_precision(scores, positive) -> float:
    """Non-interpolated AP of one class: ``Σ_k (R_k − R_{k−1}) P_k`` over distinct thresholds.

    Args:
        scores: (N,) scores for the class.
        positive: (N,) bool, True where the sample belongs to the class.
    Returns:
        AP in [0, 1], or NaN when there is no positive sample.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    if s.ndim != 1 or pos.shape != s.shape:
        raise DDNError(f"average_precision needs scores (N,) and positive (N,); got "
                       f"{s.shape} and {pos.shape}")
    if not np.isfinite(s).all():
        raise DDNError(f"average_precision: {int((~np.isfinite(s)).sum())} of {s.size} scores "
                       f"are NaN or infinite, so the ranking is undefined; check the model's "
                       f"outputs (a diverged model or a failed layer)")
    n_pos = pos.sum()
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s, pos = s[order], pos[order]
    tp = np.cumsum(pos)
    # last index of each block of tied scores: tied samples are accepted together
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = tp[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    d_recall = np.diff(np.r_[0.0, recall])
    return float(np.sum(d_recall * precision))


def mean_average_precision(scores, labels, num_classes: int | None = None) -> float:
    """mAP over all classes: mean of :func:`average_precision` of each column of ``scores``.

    The experiments pass the model's raw outputs (logits): class c ranks the samples by their
    c-th logit, not by the softmax probability (which also depends on the other logits and can
    order the samples differently). The authors' public ImageNet script ranks raw outputs too,
    but with the interpolated (VOC "precision envelope") AP and averaging only the first six
    classes (``range(6)`` in its ``mean_average_precision``); here AP is non-interpolated and
    every class counts, so our mAP and the paper's are comparable in trend, not in value.

    Classes without a positive sample are left out with a :class:`ddn.DDNWarning`.
    """
    scores, labels = torch.as_tensor(scores).detach(), torch.as_tensor(labels).detach()
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise DDNError(f"scores must be (N, C) and labels (N,); got {tuple(scores.shape)} "
                       f"and {tuple(labels.shape)}")
    C = scores.shape[1]
    if num_classes is not None and num_classes != C:
        raise DDNError(f"mAP over all classes: num_classes={num_classes} but scores have {C} "
                       f"columns (one per class)")
    _check_scores_labels(scores, labels, C)
    scores = scores.double().cpu().numpy()
    labels = labels.cpu().numpy()
    aps = np.array([average_precision(scores[:, c], labels == c) for c in range(C)])
    missing = np.nonzero(np.isnan(aps))[0]
    if len(missing) == len(aps):
        raise DDNError("mAP: no class has a positive sample; pass labels in 0..C-1")
    if len(missing):
        warnings.warn(f"mAP: classes {missing.tolist()} have no positive sample in the "
                      f"evaluation set and are left out of the mean", DDNWarning, stacklevel=2)
    return float(np.nanmean(aps))


def _check_scores_labels(scores, labels, C):
    """DDNError unless there are samples, every score is finite and every label is an integer
    class index in 0..C-1 (a label outside that range would silently count as a miss)."""
    if scores.shape[0] == 0:
        raise DDNError("no samples to evaluate: scores and labels are empty")
    bad = ~torch.isfinite(scores)
    if bad.any():
        raise DDNError(f"{int(bad.sum())} of {scores.numel()} scores are NaN or infinite; the "
                       f"metrics are undefined (check the model's outputs: a diverged model or a "
                       f"failed layer)")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise DDNError("labels must be integer class indices")
    if labels.min() < 0 or labels.max() >= C:
        raise DDNError(f"labels must be class indices in 0..{C - 1} (one per column of scores); "
                       f"got values from {labels.min().item():g} to {labels.max().item():g}")


def classification_metrics(scores, labels, ks=(1,)) -> dict:
    """``{"top1": .., "top5": .., "map": ..}`` in percent for the requested ``ks``."""
    out = {f"top{k}": 100.0 * topk_accuracy(scores, labels, k) for k in ks}
    out["map"] = 100.0 * mean_average_precision(scores, labels, torch.as_tensor(scores).shape[1])
    return out


# ----------------------------------------------------------------------------- devices, seeds
def choose_device(device: str | None = None) -> torch.device:
    """``device`` if given (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``), else CUDA when
    available, else Apple's MPS when available, else the CPU."""
    if device not in (None, "", "auto"):
        try:
            d = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise DDNError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps, or leave "
                           f"it out (auto)") from None
        if d.type == "cuda":
            if not torch.cuda.is_available():
                raise DDNError(f"device {device!r} requested but CUDA is not available; "
                               f"use --device cpu or leave it out")
            if d.index is not None and d.index >= torch.cuda.device_count():
                raise DDNError(f"device {device!r} requested but there are only "
                               f"{torch.cuda.device_count()} CUDA devices (cuda:0.."
                               f"cuda:{torch.cuda.device_count() - 1})")
        if d.type == "mps":
            mps = getattr(torch.backends, "mps", None)
            if mps is None or not mps.is_available():
                raise DDNError(f"device {device!r} requested but Apple's MPS is not available "
                               f"here; use --device cpu or leave it out")
        return d
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU ``torch.Generator`` determined by (seed, epoch, stream) alone: the data order
    and the outliers of an epoch do not depend on what ran before it."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 7919 + stream * 104_729) % (2**63 - 1))
    return g


def rng_state() -> dict:
    """The RNG states of torch (CPU and CUDA), numpy and python."""
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
          "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    """Restore what :func:`rng_state` returned. The states are CPU byte tensors; a checkpoint
    loaded with ``map_location="cuda"`` moves them to the GPU, so they are moved back first
    (``torch.set_rng_state`` refuses a CUDA tensor, which broke resuming a GPU run)."""
    torch.set_rng_state(st["torch"].cpu())
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in st["cuda"]])


# ----------------------------------------------------------------------------- checkpoints
def config_hash(cfg: dict) -> str:
    """A short hash of the settings that determine a training run (for checkpoint names)."""
    return hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:10]


def save_checkpoint(path, model, optimizer, scheduler, epoch: int, extra: dict | None = None):
    """Write model, optimizer, scheduler, RNG states and ``epoch`` (finished epochs) to
    ``path`` atomically (a temporary file then ``os.replace``): a kill mid-write leaves the
    previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict() if scheduler is not None else None,
             "rng": rng_state(), "epoch": epoch, "extra": extra or {}}
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")   # one per writer process
    torch.save(state, tmp)
    os.replace(tmp, path)


class checkpoint_lock:
    """Context manager: claim the checkpoint at ``path`` for this process (a ``.lock`` file
    holding the pid). A second live process training the same model raises DDNError — two
    writers to one checkpoint break exact resume; a lock left by a killed run is taken over.

    Where the OS has ``fcntl`` (Linux, macOS) the claim is an exclusive ``flock`` on the lock
    file, held for the duration and released by the kernel when the process dies, so of two
    processes taking over the same stale lock exactly one wins (a pid check alone let both
    through). A pid in the file that belongs to another live process is still respected (a run
    of an older version, or a system without ``fcntl``, which falls back to the pid check)."""

    def __init__(self, path):
        self.lock = Path(str(path) + ".lock")
        self._fd = None

    def _busy(self, pid):
        return DDNError(f"{self.lock.with_suffix('')} is being trained by process {pid or '?'}; "
                        f"wait for it, or delete {self.lock} if that process is gone")

    def _recorded_pid(self, fd=None):
        try:
            if fd is not None:
                os.lseek(fd, 0, os.SEEK_SET)
                text = os.read(fd, 64).decode()
            else:
                text = self.lock.read_text()
            return int(text.strip() or 0)
        except (OSError, ValueError, UnicodeDecodeError):
            return 0

    def __enter__(self):
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return self._enter_pid_only()
        for _ in range(100):
            fd = os.open(self.lock, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:                 # held by a live process of this version
                pid = self._recorded_pid(fd)
                os.close(fd)
                raise self._busy(pid) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock).st_ino
            except FileNotFoundError:
                same = False
            if not same:                    # its holder finished and removed it meanwhile
                os.close(fd)
                continue
            pid = self._recorded_pid(fd)
            if pid and pid != os.getpid() and _alive(pid):
                os.close(fd)
                raise self._busy(pid)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, str(os.getpid()).encode())
            os.fsync(fd)
            self._fd = fd
            return self
        raise DDNError(f"could not claim {self.lock}: it keeps being replaced by other processes")

    def _enter_pid_only(self):
        try:
            fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pid = self._recorded_pid()
            if pid and pid != os.getpid() and _alive(pid):
                raise self._busy(pid) from None
            self.lock.write_text(str(os.getpid()))        # stale: left by a killed run
        else:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
        return self

    def __exit__(self, *exc):
        self.lock.unlink(missing_ok=True)   # removed while still held (see __enter__'s inode check)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_checkpoint(path, model, optimizer, scheduler, map_location=None) -> dict | None:
    """Load a checkpoint written by :func:`save_checkpoint` into the given objects and restore
    the RNG states. Returns the checkpoint dict (``epoch``, ``extra``), or None if absent."""
    path = Path(path)
    if not path.is_file():
        return None
    ck = torch.load(path, map_location=map_location, weights_only=False)
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    if scheduler is not None and ck["scheduler"] is not None:
        scheduler.load_state_dict(ck["scheduler"])
    set_rng_state(ck["rng"])
    return ck


# ----------------------------------------------------------------------------- results
def results_dir() -> Path:
    """``results/`` of the checkout (or ``./results`` outside one)."""
    root = repo_root() or repo_root(Path(__file__).parent) or Path.cwd()
    return root / "results"


def append_results(path, rows: list[dict]) -> Path:
    """Append ``rows`` to the CSV at ``path`` (header written when the file is new; the
    columns are those of the file when it exists). No rows: nothing is written. A row with a
    column the existing file lacks is a DDNError (its value would be dropped silently: the file
    was written by another experiment or an older version; append to a new file)."""
    path = Path(path)
    if not rows:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    fields = list(rows[0].keys()) if new else _csv_header(path)
    extra = sorted({k for r in rows for k in r} - set(fields))
    if extra:
        raise DDNError(f"{path} has columns {fields} but the new rows also have {extra}; it "
                       f"was written by another experiment or version: pass another results "
                       f"file (--results)")
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


def _csv_header(path):
    with open(path, newline="") as f:
        for line in f:
            if not line.startswith("#"):
                return next(csv.reader([line]))
    return []


def read_results(path) -> list[dict]:
    """Rows of a CSV (lines starting with ``#`` skipped), numbers converted to float."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    for r in rows:
        for k, v in r.items():
            try:
                r[k] = float(v)
            except (TypeError, ValueError):
                pass
    return rows


def paper_table(name: str) -> list[dict]:
    """One of the paper's tables shipped in ``ddn/experiments/paper_tables`` (``"table2"``,
    ``"table3"``, ``"table4"``)."""
    files = {p.name.split("_")[0]: p for p in PAPER_TABLES.glob("*.csv")}
    if name not in files:
        raise DDNError(f"unknown paper table {name!r}; have {sorted(files)}")
    return read_results(files[name])


def format_table(header: list[str], rows: list[list], title: str = "") -> str:
    """A GitHub-markdown table (numbers with one decimal, missing values as '–')."""
    def cell(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return f"{v:.1f}" if isinstance(v, float) else str(v)
    lines = [f"**{title}**", ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def progress(iterable, **kw):
    """tqdm progress bar (silent when ``disable=True``)."""
    from tqdm.auto import tqdm
    return tqdm(iterable, **kw)


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run_training(cfg, make_model, batches, *, device, path=None, name="model",
                 show_progress=True, stop_after_epochs=None):
    """The SGD training loop shared by the experiments, resumable exactly.

    Seeds everything from ``cfg.seed``, builds ``make_model()`` on ``device``, SGD with
    ``cfg.lr``/``momentum``/``weight_decay`` and a step schedule (``cfg.lr_step``, ``lr_gamma``),
    resumes from the checkpoint at ``path`` when there is one, then runs the remaining epochs of
    ``cfg.epochs``: ``batches(epoch) -> (iterable of (x, y), number of batches)`` (its randomness
    must come from ``epoch_generator(seed, epoch)`` alone), cross-entropy loss, a checkpoint after
    every epoch. ``stop_after_epochs`` stops after that many epochs of this call (a simulated
    kill, for the resume tests). Returns ``(model, finished_epochs)``.
    """
    import torch.nn.functional as F

    seed_everything(cfg.seed)
    model = make_model().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, cfg.lr_step, cfg.lr_gamma)
    start = 0
    if path is not None:
        ck = load_checkpoint(path, model, opt, sched, map_location=device)
        start = ck["epoch"] if ck else 0
    done = 0
    for epoch in range(start, cfg.epochs):
        if stop_after_epochs is not None and done >= stop_after_epochs:
            break
        model.train()
        it, total = batches(epoch)
        bar = progress(it, total=total, disable=not show_progress, leave=False,
                       desc=f"{name} ep {epoch + 1}/{cfg.epochs}")
        steps = 0
        for x, y in bar:
            steps += 1
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            if not torch.isfinite(loss):
                raise DDNError(f"non-finite training loss for {name} at epoch {epoch + 1}; "
                               "lower the learning rate (or, for projections, the pre-scale)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if steps == 0:       # an untrained model would be evaluated and saved as trained
            raise DDNError(f"{name}: epoch {epoch + 1} had no training batch (the training set "
                           f"is smaller than one batch, or than 2 samples); lower the batch "
                           f"size or use more data")
        sched.step()
        done += 1
        if path is not None:
            save_checkpoint(path, model, opt, sched, epoch + 1)
    return model, start + done


def run_cli(ap, args, make_config, run, render) -> int:
    """The experiments' command-line tail: ``--threads`` is applied, then ``make_config()`` and
    the device are checked (a DDNError there is a usage error, exit 2, before anything runs);
    then ``run(cfg)`` (skipped with ``--render-only``) and ``render(cfg)``, where a DDNError
    (missing data and the like) prints one line and returns 1 instead of a traceback. Returns
    the exit status."""
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1; got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = make_config()
        if not args.render_only:
            choose_device(args.device)
    except DDNError as e:
        ap.error(str(e))
    try:
        if not args.render_only:
            run(cfg)
        render(cfg)
    except DDNError as e:
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


def apply_preset(config_cls, presets: dict, name: str | None, overrides: dict, what: str):
    """``config_cls`` filled from ``presets[name]`` (default ``smoke`` under DDN_SMOKE, else
    ``cpu``), then ``overrides`` applied (``None`` values skipped); unknown names are DDNErrors."""
    from ddn.utils import is_smoke

    name = name or ("smoke" if is_smoke() else "cpu")
    if name not in presets:
        raise DDNError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
    import copy
    # a deep copy: the presets' lists and dicts must not be shared with (and edited through)
    # the configs built from them
    cfg = config_cls(preset=name, **copy.deepcopy(presets[name]))
    for k, v in overrides.items():
        if v is None:
            continue
        if not hasattr(cfg, k):
            raise DDNError(f"unknown setting {k!r} for the {what} experiment")
        setattr(cfg, k, v)
    return cfg
