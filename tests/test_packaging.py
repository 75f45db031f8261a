"""The install paths agree: requirements.txt (the tested pip path), environment.yml's pip section
(conda users) and pyproject.toml's extras ask for the same things."""
import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def _requirements():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _environment():
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def test_environment_yml_parses_and_pins_python():
    env = _environment()
    assert env["name"] == "ddn"
    assert "conda-forge" in env["channels"]
    deps = env["dependencies"]
    assert any(isinstance(d, str) and d.startswith("python") for d in deps)
    assert "pip" in deps


def test_environment_pip_section_matches_requirements():
    pip_sections = [d["pip"] for d in _environment()["dependencies"] if isinstance(d, dict)]
    assert len(pip_sections) == 1
    assert sorted(pip_sections[0]) == sorted(_requirements())


def test_requirements_install_every_extra():
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    (req,) = _requirements()
    m = re.fullmatch(r"-e \.\[(.*)\]", req)
    assert m, req
    asked = set(m.group(1).split(","))
    assert asked == extras - {"all"}


def test_torch_pin_avoids_cuda_builds():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["torch"] == ["torch>=2.1,<2.14"]


def test_conda_packages_are_within_pyproject_ranges():
    """Every conda-forge package named in environment.yml is also a dependency of the project."""
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=\[ ]", d)[0].lower() for d in proj["dependencies"]}
    for extra in proj["optional-dependencies"].values():
        names |= {re.split(r"[<>=\[ ]", d)[0].lower() for d in extra}
    conda = [d for d in _environment()["dependencies"] if isinstance(d, str)]
    for d in conda:
        name = re.split(r"[<>= ]", d)[0].lower()
        if name in ("python", "pip"):
            continue
        assert name in names, f"{name} is in environment.yml but not in pyproject.toml"


def test_pip_section_resolves():
    """pip resolves the pip section of environment.yml against this checkout, dependencies
    included (a dry run: nothing is installed)."""
    import subprocess
    import sys

    pip_section = [d["pip"] for d in _environment()["dependencies"] if isinstance(d, dict)][0]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", *pip_section[0].split()],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
