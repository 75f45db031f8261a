"""Root pytest settings; they act only when notebooks run under nbval (``make test-notebooks``):

    DDN_SMOKE=1 python -m pytest -q --nbval-lax -p no:cacheprovider notebooks

- nbval runs each notebook in a kernel of *this* interpreter (``--nbval-current-env``), so the
  notebooks see the virtualenv's ``ddn`` whatever ``python`` is first on PATH.
- At the end of the run, a table of wall time per notebook (sum of its cells' setup, call
  and teardown, so the kernel start is included) and the notebooks slower than the budget.
  Slow notebooks are a named exception: list them in ``SLOW_NOTEBOOKS`` with the reason; any
  other notebook over ``BUDGET_SECONDS`` is flagged as unexpected.
"""
from collections import defaultdict
from pathlib import Path

# Budget per notebook at smoke size (DDN_SMOKE=1) on a 2-core CPU machine.
BUDGET_SECONDS = 30.0

# The named exceptions: notebook file name -> why it is allowed to exceed the budget.
SLOW_NOTEBOOKS: dict[str, str] = {}

_times: dict[str, float] = defaultdict(float)
_cells: dict[str, int] = defaultdict(int)
_failed: dict[str, int] = defaultdict(int)


def pytest_configure(config):
    if hasattr(config.option, "nbval_current_env"):
        config.option.nbval_current_env = True


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    if not path.endswith(".ipynb"):
        return
    _times[path] += report.duration
    if report.when == "call":
        _cells[path] += 1
    if report.failed:
        _failed[path] += 1


def pytest_terminal_summary(terminalreporter):
    if not _times:
        return
    tr = terminalreporter
    tr.section("notebook wall times")
    width = max(len(Path(p).name) for p in _times)
    total = 0.0
    for path, seconds in sorted(_times.items()):
        name = Path(path).name
        total += seconds
        flag = ""
        if seconds > BUDGET_SECONDS:
            flag = "  slow (named exception)" if name in SLOW_NOTEBOOKS else "  SLOW: over budget"
        fail = f"  {_failed[path]} failed" if _failed[path] else ""
        tr.write_line(f"{name:<{width}}  {seconds:7.1f} s  {_cells[path]:3d} cells{flag}{fail}")
    tr.write_line(f"{'total':<{width}}  {total:7.1f} s")
    slow = {Path(p).name: s for p, s in _times.items() if s > BUDGET_SECONDS}
    if slow:
        tr.write_line(f"notebooks over the {BUDGET_SECONDS:.0f} s budget:")
        for name, seconds in sorted(slow.items(), key=lambda kv: -kv[1]):
            why = SLOW_NOTEBOOKS.get(name, "not a named exception: shrink it under DDN_SMOKE")
            tr.write_line(f"  {name}: {seconds:.1f} s ({why})")
    elif SLOW_NOTEBOOKS:
        tr.write_line("named slow notebooks: " + ", ".join(sorted(SLOW_NOTEBOOKS)) +
                      f" (all within {BUDGET_SECONDS:.0f} s this run)")
