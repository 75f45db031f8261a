"""Small helpers shared by the library, the experiments and the notebooks."""
import os
from pathlib import Path

__all__ = ["is_smoke", "repo_root"]


def is_smoke() -> bool:
    """True when ``DDN_SMOKE`` is set to a non-empty value other than ``0``.

    Heavy notebook cells and experiment presets shrink under it (CI sets ``DDN_SMOKE=1``);
    the full size is the default for a person.
    """
    return os.environ.get("DDN_SMOKE", "") not in ("", "0")


def repo_root(start=None):
    """The checkout's root (the folder holding ``pyproject.toml``), searched upwards from
    ``start`` (default: the current directory), or ``None`` when not inside a checkout."""
    p = Path(start or os.getcwd()).resolve()
    for q in [p, *p.parents]:
        if (q / "pyproject.toml").is_file() and (q / "ddn").is_dir():
            return q
    return None
