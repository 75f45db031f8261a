#!/usr/bin/env bash
# The GPU checks of the project, as one script (about 5 minutes on one H100):
#   1. the node backward benchmark on the GPU (bench/nodes/bench_backward.py --device cuda),
#      first because it decides issue 3 and its log comes back even if the lease runs out later
#   2. one training step of the paper's full-size PointNet and ResNet-18 with each pooling /
#      projection (bench/experiments/bench_full_scale.py)
#   3. the CUDA tests (pytest -m cuda): torch nodes, pooling and projections on CUDA against CPU
#   4. the two experiments' smoke presets on the GPU
# Logs, the benchmark JSON and the experiment CSVs go to $OUT (default results/device-check).
# Prepare the carried folders first with bench/device/prepare.sh; see bench/device/README.md.
# DDN_CHECK_DEVICE=cpu runs the same steps on the CPU (to test this script without a GPU).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-results/device-check}
DEV=${DDN_CHECK_DEVICE:-cuda}
PY=${PYTHON:-python3}
SIZES=${DDN_CHECK_SIZES:-8 32 128 256 512}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import autograd" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/ddn-site .whl/*.whl || exit 1
        export PYTHONPATH="$PYTHONPATH:/tmp/ddn-site"
    else
        echo "autograd missing and no .whl/ carried: run bench/device/prepare.sh first" >&2
        exit 1
    fi
fi
status=0
step() {  # step NAME CMD...: run, append to $OUT/steps.log (one log: the tool returns 8 files)
    local name=$1
    shift
    echo "=== $name: $*" | tee -a "$OUT/steps.log"
    local t0=$SECONDS
    "$@" 2>&1 | tee -a "$OUT/steps.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/steps.log"
    [ "$rc" -eq 0 ] || status=1
}
{
    date -u
    nvidia-smi -L 2>/dev/null || true
    "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'available', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
} 2>&1 | tee "$OUT/env.txt"
# shellcheck disable=SC2086
step bench-nodes "$PY" bench/nodes/bench_backward.py --device "$DEV" --sizes $SIZES \
    --out "$OUT/bench-nodes-$DEV.json"
# the paper's full-size models, one training step each (tiny sizes when checking on the CPU)
QUICK=$([ "$DEV" = cpu ] && echo --quick)
# shellcheck disable=SC2086
step bench-full-scale "$PY" bench/experiments/bench_full_scale.py --device "$DEV" $QUICK \
    --out "$OUT/bench-full-scale-$DEV.json"
if [ "$DEV" = cuda ]; then
    step cuda-tests "$PY" -m pytest -p no:nbval -p no:cacheprovider -q -m cuda -rs tests
fi
FMNIST=.devdata/fashion-mnist
[ -d "$FMNIST" ] || FMNIST=/usr/share/datasets/fashion-mnist
CK=$(mktemp -d)
step pointcloud-smoke "$PY" -m ddn.experiments.pointcloud --preset smoke --device "$DEV" \
    --results "$OUT/pointcloud-smoke-$DEV.csv" --checkpoints "$CK/pc" --no-progress
step images-smoke "$PY" -m ddn.experiments.images --preset smoke --device "$DEV" \
    --data-root "$FMNIST" --results "$OUT/images-smoke-$DEV.csv" --checkpoints "$CK/im" --no-progress
rm -rf "$CK"
echo "device check: $([ $status -eq 0 ] && echo passed || echo FAILED)"
exit $status
