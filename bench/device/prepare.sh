#!/usr/bin/env bash
# Run HERE (the development machine, with network access to PyPI) before a GPU check.
# It fills two git-ignored folders that the GPU machine cannot fetch for itself:
#   .whl/      wheels of the pure-Python dependencies its image lacks (autograd)
#   .devdata/  a small Fashion-MNIST subset (idx.gz, same layout as the full set) for the
#              image experiment's smoke run
# Then run bench/device/check.sh there with both folders carried (see bench/device/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .whl "autograd>=1.6"
"$PY" - <<'PY'
import gzip, struct
from pathlib import Path
src = Path("/usr/share/datasets/fashion-mnist")
dst = Path(".devdata/fashion-mnist")
dst.mkdir(parents=True, exist_ok=True)
keep = {"train": 2000, "t10k": 1000}
for stem, n in keep.items():
    for kind in ("images-idx3", "labels-idx1"):
        name = f"{stem}-{kind}-ubyte.gz"
        raw = gzip.open(src / name).read()
        ndim = raw[3]
        dims = list(struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim]))
        item = 1
        for d in dims[1:]:
            item *= d
        body = raw[4 + 4 * ndim: 4 + 4 * ndim + n * item]
        dims[0] = n
        with gzip.open(dst / name, "wb") as f:
            f.write(raw[:4] + struct.pack(f">{ndim}I", *dims) + body)
print("wrote", sorted(p.name for p in dst.iterdir()))
PY
du -sh .whl .devdata
