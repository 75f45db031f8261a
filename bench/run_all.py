"""Run every benchmark of the project in turn (each prints its own table and writes its JSON).

    python bench/run_all.py            # or: make bench

Benchmarks are scripts, not timed tests: each measures its baseline in the same run and prints
ratios against it, together with the machine it ran on.
"""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [HERE / "nodes" / "bench_backward.py", HERE / "layers" / "bench_layers.py"]


def main(argv=None):
    failed = []
    for script in SCRIPTS:
        if not script.exists():
            print(f"skip {script.relative_to(HERE)} (not present)")
            continue
        print(f"=== {script.relative_to(HERE)} ===", flush=True)
        rc = subprocess.call([sys.executable, str(script), *(argv or [])])
        if rc:
            failed.append(script.name)
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main(sys.argv[1:])
