"""The benchmark scripts still run (smallest sizes; the numbers themselves are not checked here:
benchmarks are scripts that measure their baseline in the same run, never timed tests)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, tmp_path):
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, *args, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout


def test_node_backward_bench_runs_and_checks_every_method(tmp_path):
    # the script asserts each method against the closed form before timing it
    data, stdout = _run(["bench/nodes/bench_backward.py", "--sizes", "8", "--breakdown-m", "8"],
                        tmp_path)
    methods = {(r["problem"], r["method"]) for r in data["rows"]}
    for prob in ("dense-W", "smooth"):
        for meth in ("closed-form", "naive", "dense", "cg", "unroll"):
            assert (prob, meth) in methods
    assert all(r["backward_s"] > 0 for r in data["rows"])
    assert data["machine"]["device"] == "cpu"
    assert set(data["dense_breakdown"]) == {"dense-W", "smooth"}
    assert "naive" in stdout


def test_node_backward_bench_refuses_missing_cuda(tmp_path):
    if __import__("torch").cuda.is_available():
        pytest.skip("CUDA present")
    proc = subprocess.run([sys.executable, "bench/nodes/bench_backward.py", "--device", "cuda",
                           "--sizes", "8", "--out", str(tmp_path / "x.json")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "CUDA is not available" in proc.stderr


def test_device_check_script_runs_on_cpu(tmp_path):
    """bench/device/check.sh is meant for a GPU machine; DDN_CHECK_DEVICE=cpu runs its steps here
    so that the script cannot rot between the sessions that have a GPU."""
    import os
    from pathlib import Path as P
    if not (P(ROOT / ".devdata/fashion-mnist").is_dir()
            or P("/usr/share/datasets/fashion-mnist").is_dir()):
        pytest.skip("no Fashion-MNIST (make data)")
    env = dict(os.environ, DDN_CHECK_DEVICE="cpu", DDN_CHECK_SIZES="8", PYTHON=sys.executable,
               OUT=str(tmp_path / "out"))
    proc = subprocess.run(["bash", "bench/device/check.sh"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "device check: passed" in proc.stdout
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["bench-full-scale-cpu.json", "bench-nodes-cpu.json", "env.txt",
                     "images-smoke-cpu.csv", "pointcloud-smoke-cpu.csv", "steps.log"]
    log = (tmp_path / "out" / "steps.log").read_text()
    for step in ("bench-nodes", "bench-full-scale", "pointcloud-smoke", "images-smoke"):
        assert f"=== {step}: exit 0" in log
    assert len(names) <= 8  # the device tool returns at most 8 files


def test_op_counts_script_runs():
    proc = subprocess.run([sys.executable, "bench/nodes/op_counts.py", "--m", "16", "--batch", "4"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] in (["dense-W"], ["smooth"])]
    assert len(rows) == 2
    for _, naive, chunks, one in rows:
        assert int(naive) > int(chunks) >= int(one) > 0  # 2m autograd calls dispatch the most ops


def _table_rows(md):
    return [ln for ln in md.splitlines() if ln.startswith("| ") and ln[2:5].strip().isdigit()]


@pytest.mark.parametrize("name, sizes", [("results.json", None), ("results-threads2.json", [256, 512]),
                                         ("results-cuda.json", None),
                                         ("results-cuda-h200.json", [256, 512])])
def test_node_readme_tables_are_the_committed_measurements(name, sizes):
    # bench/nodes/README.md reports measured tables; each must be exactly what render_table.py
    # prints from the committed JSON, so a figure cannot be edited by hand or go stale
    sys.path.insert(0, str(ROOT / "bench" / "nodes"))
    try:
        from render_table import render
    finally:
        sys.path.pop(0)
    data = json.loads((ROOT / "bench" / "nodes" / name).read_text())
    readme = (ROOT / "bench" / "nodes" / "README.md").read_text()
    rows = _table_rows(render(data, sizes))
    assert rows
    missing = [r for r in rows if r not in readme]
    assert not missing, f"{name}: README rows not matching the JSON: {missing[:3]}"


def test_node_readme_done_when_ratios_are_the_committed_measurements():
    # the naive ÷ dense ratios quoted in the "Done when" table come from the JSON summaries
    readme = (ROOT / "bench" / "nodes" / "README.md").read_text()
    done = readme[readme.index("## Done when"):readme.index("## Why the 20×")]
    for name in ("results-cuda.json", "results-cuda-repeat.json", "results-cuda-h200.json",
                 "results-cuda-h200-final.json",
                 "results.json",
                 "results-threads2.json"):
        s = json.loads((ROOT / "bench" / "nodes" / name).read_text())["summary"]
        line = next(ln for ln in done.splitlines() if f"`{name}`" in ln)
        for prob in ("dense-W", "smooth"):
            assert f"{s[f'{prob}: naive_over_dense_at_256']:.1f}×" in line, (name, prob, line)


def test_cg_check_every_ab_script_runs():
    proc = subprocess.run([sys.executable, "bench/nodes/cg_check_every.py", "--sizes", "8",
                           "--reps", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "k=1 / k=8" in proc.stdout and "smooth" in proc.stdout


def test_full_scale_experiment_bench_runs_quick(tmp_path):
    out = tmp_path / "fs.json"
    proc = subprocess.run([sys.executable, "bench/experiments/bench_full_scale.py", "--quick",
                           "--rounds", "1", "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert [r["model"] for r in data["pointcloud"]["rows"]] == ["max", "Q", "PH", "H", "W", "TQ"]
    assert data["images"]["rows"][0]["model"] == "none" and len(data["images"]["rows"]) == 7
    assert all(r["step_s"] > 0 for part in ("pointcloud", "images") for r in data[part]["rows"])


def test_full_scale_readme_tables_are_the_committed_measurement():
    readme = (ROOT / "bench" / "experiments" / "README.md").read_text()
    data = json.loads((ROOT / "bench" / "experiments" / "results-h200.json").read_text())
    assert data["machine"]["gpu"] in readme
    for part in ("pointcloud", "images"):
        for r in data[part]["rows"]:
            cells = (f"| {r['step_s'] * 1e3:.1f} | {r['samples_per_s']:.0f} | "
                     f"{r['ratio_to_base']:.2f} | {r['peak_bytes'] / 2**30:.2f} |")
            assert cells in readme, (part, r["model"], cells)
