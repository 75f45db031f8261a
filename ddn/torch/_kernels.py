"""Compiled CPU row kernels for robust pooling and projections (``_kernels.cpp``), via ctypes.

Why: the eager torch solvers make several passes over memory per Newton iteration; the kernel
runs all iterations of one row while it sits in cache, so forward and backward each read the
input once. The eager code in ``pooling.py`` / ``projections.py`` implements the same algorithms
and is the fallback and the test oracle.

Build: ``g++ -O3 -march=native -fopenmp-simd`` (see ``_FLAGS``; if the compiler rejects those, once more
with ``_PORTABLE_FLAGS``) (no torch headers, about a second), cached in
``$DDN_KERNEL_CACHE`` or ``~/.cache/ddn/kernels/<hash of source, flags, compiler, CPU>`` (if that
folder cannot be written, ``$TMPDIR/ddn-kernels-<uid>/...``).
Threads: rows are split over ``torch.get_num_threads()`` Python threads (ctypes releases the
GIL) when the input is large enough.

Fallback: set ``DDN_KERNELS=0`` (or ``ddn.torch._kernels.ENABLED = False``) to use the eager
code; if the compiler or the source is missing, or the build fails, a ``RuntimeWarning`` says so
once and the eager code is used.
"""
import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .. import DDNError

__all__ = []

ENABLED = os.environ.get("DDN_KERNELS", "1") not in ("0", "")
_SRC = Path(__file__).with_name("_kernels.cpp")
_FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp-simd",
          "-fno-math-errno", "-fno-trapping-math", "-std=c++20", "-shared", "-fPIC"]
_PORTABLE_FLAGS = ["-O3", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-std=c++20",
                   "-shared", "-fPIC"]
_PEN = {"quadratic": 0, "pseudo-huber": 1, "huber": 2, "welsch": 3, "truncated-quadratic": 4}
_lock = threading.Lock()
_state = {"lib": None, "tried": False, "pool": None, "error": None}
_PAR_MIN = 1 << 18  # split rows over threads above this many elements


def _forget_pool():
    # a forked child inherits the pool object but not its threads: submitting to it would wait
    # forever (e.g. robust_pool in a multiprocessing worker after the parent used the threads)
    _state["pool"] = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _cpu_id():
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _build():
    cxx = os.environ.get("CXX", "g++")
    src = _SRC.read_text()
    ver = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    root = Path(os.environ.get("DDN_KERNEL_CACHE", Path.home() / ".cache" / "ddn" / "kernels"))
    # a read-only or unusable cache (e.g. a shared home) falls back to a per-user temp folder
    fallback = Path(tempfile.gettempdir()) / f"ddn-kernels-{getattr(os, 'getuid', lambda: 0)()}"
    # the tuned flags are x86/GCC-specific (-mprefer-vector-width): elsewhere retry portably
    for flags in (_FLAGS, _PORTABLE_FLAGS):
        key = hashlib.sha256("\n".join([src, " ".join(flags), ver, _cpu_id()]).encode()).hexdigest()[:16]
        try:
            for base in (root, fallback):
                so = base / key / "libddn_kernels.so"
                try:
                    if not so.exists():
                        _compile(cxx, so, flags)
                    break
                except OSError:
                    if base == fallback:
                        raise
            break
        except subprocess.CalledProcessError:
            if flags is _PORTABLE_FLAGS:
                raise
    lib = ctypes.CDLL(str(so))
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for s in ("f32", "f64"):
        getattr(lib, f"pool_forward_{s}").argtypes = [p, p, p, p, p, i64, i32, i64, i64]
        getattr(lib, f"pool_backward_{s}").argtypes = [p, p, p, p, p, p, p, p, i64, i32, i32, i64,
                                                       i64]
        getattr(lib, f"proj_forward_{s}").argtypes = [p, p, p, p, p, i64, i32, i32, i64, i64]
        getattr(lib, f"proj_backward_{s}").argtypes = [p, p, p, p, p, p, i64, i32, i32, i32, i64, i64]
    return lib


def _compile(cxx, so, flags):
    so.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=so.parent)
    os.close(fd)
    try:
        subprocess.run([cxx, *flags, str(_SRC), "-o", tmp], check=True, capture_output=True,
                       text=True)
        os.replace(tmp, so)  # atomic: concurrent builders race harmlessly
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def lib():
    """The loaded library, building it on first use; None if it cannot be built."""
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                try:
                    _state["lib"] = _build()
                except (OSError, subprocess.CalledProcessError, FileNotFoundError) as e:
                    msg = getattr(e, "stderr", "") or str(e)
                    _state["error"] = msg
                    warnings.warn(f"ddn: compiled CPU kernels unavailable, using the eager torch "
                                  f"code ({msg.strip()[:300]})", RuntimeWarning, stacklevel=3)
                _state["tried"] = True
    return _state["lib"]


def usable(x):
    """True when the compiled kernel handles this (B, n) tensor."""
    return (ENABLED and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and x.is_contiguous() and lib() is not None)


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr())


def _run(fn, args, B, n):
    """Call ``fn(*args, r0, r1)`` over row chunks, in threads when the work is large."""
    nt = torch.get_num_threads()
    if nt <= 1 or B * n < _PAR_MIN or B < 2:
        fn(*args, 0, B)
        return
    if _state["pool"] is None or _state["pool"]._max_workers < nt:
        _state["pool"] = ThreadPoolExecutor(max_workers=nt, thread_name_prefix="ddn-kernel")
    chunks = min(nt, B)
    bounds = [B * k // chunks for k in range(chunks + 1)]
    futs = [_state["pool"].submit(fn, *args, bounds[k], bounds[k + 1]) for k in range(1, chunks)]
    fn(*args, bounds[0], bounds[1])
    for f in futs:
        f.result()


def _sfx(x):
    return "f32" if x.dtype == torch.float32 else "f64"


def _raise_status(st, what):
    if bool((st == 2).any()):
        raise DDNError(f"x contains NaN or Inf; {what} is undefined there — remove or mask the "
                       "non-finite values first")
    if bool((st == 3).any()):
        raise DDNError("|x|/alpha is so large that (x/alpha)² overflows the dtype; rescale x or "
                       "raise alpha")
    if bool((st == 5).any()):
        raise DDNError(HUGE_X)


HUGE_X = ("x is so large that Σx or max x − min x overflows the dtype (the solver needs the mean "
          "and the differences y − x_i); rescale x (e.g. divide by its largest magnitude) or use "
          "float64")


def pool_forward(x, alpha, pen):
    """x (B, n), alpha (B,) -> (y (B,), converged (B,) bool, H (B,) = Σφ''(y − x_i) from the
    solver's last pass, exact or within one converged Newton step of y; α²Σφ'' for Welsch, as
    ``pool_backward`` expects);
    raises DDNError on bad input."""
    B, n = x.shape
    alpha = alpha.detach().contiguous()
    y = torch.empty(B, dtype=x.dtype)
    H = torch.empty(B, dtype=x.dtype)
    st = torch.empty(B, dtype=torch.int8)
    _run(getattr(lib(), f"pool_forward_{_sfx(x)}"),
         (_ptr(x), _ptr(alpha), _ptr(y), _ptr(H), _ptr(st), n, _PEN[pen]), B, n)
    _raise_status(st, "robust pooling")
    return y, st == 0, H


def pool_backward(x, y, alpha, H, v, pen, need_alpha):
    """-> (∂L/∂x (B, n), ∂L/∂α (B,) or None, number of rows with H ≤ 0); one pass over x.
    ``H`` (from ``pool_forward``) decides differentiability; pseudo-Huber and Welsch divide by
    Σφ'' re-accumulated at ``y`` in that pass (the forward's is one tiny step stale)."""
    B, n = x.shape
    alpha = alpha.detach().contiguous()
    gx = torch.empty_like(x)
    ga = torch.empty(B, dtype=x.dtype) if need_alpha else torch.empty(1, dtype=x.dtype)
    st = torch.empty(B, dtype=torch.int8)
    _run(getattr(lib(), f"pool_backward_{_sfx(x)}"),
         (_ptr(x), _ptr(y), _ptr(alpha), _ptr(H), _ptr(v), _ptr(gx), _ptr(ga), _ptr(st), n,
          _PEN[pen], int(need_alpha)), B, n)
    return gx, (ga if need_alpha else None), int(st.sum())


_KIND = {"sphere": 0, "ball": 1, "simplex": 2}


def _pcode(p):
    return 0 if p == float("inf") else int(p)


def proj_forward(x, r, p, kind):
    """x (B, n), r (B,) -> (y (B, n), aux (B,), number of rows that lost accuracy, rows (B,) bool
    whose sums overflowed the dtype (finite x; the caller redoes them eagerly), number of sphere
    rows with x = 0 (nearest point not unique)) as ``projections._forward_eager``."""
    B, n = x.shape
    r = r.detach().contiguous()
    y = torch.empty_like(x)
    aux = torch.empty(B, dtype=x.dtype)
    st = torch.empty(B, dtype=torch.int8)
    _run(getattr(lib(), f"proj_forward_{_sfx(x)}"),
         (_ptr(x), _ptr(r), _ptr(y), _ptr(aux), _ptr(st), n, _pcode(p), _KIND[kind]), B, n)
    if bool((st == 2).any()):
        _raise_status(st, "the projection")
    return y, aux, int((st == 4).sum()), st == 3, int((st == 6).sum())


def proj_backward(v, y, r, aux, p, kind, masked):
    """-> (∂L/∂x (B, n), ∂L/∂r (B,)) as ``projections._backward_eager``."""
    B, n = y.shape
    r = r.detach().contiguous()
    gx = torch.empty_like(y)
    gr = torch.empty(B, dtype=y.dtype)
    _run(getattr(lib(), f"proj_backward_{_sfx(y)}"),
         (_ptr(v), _ptr(y), _ptr(r), _ptr(aux), _ptr(gx), _ptr(gr), n, _pcode(p), _KIND[kind],
          int(masked)), B, n)
    return gx, gr
