#!/usr/bin/env bash
# The checks that need a GPU, in one run: build dense3d._C with CUDA in place (for the GPU that is
# here), run the tests marked `cuda`, then the GPU benchmarks. Logs and JSON go to $OUT.
#
#     OUT=gpu_out PY=python3 bash tools/gpu_check.sh        # BENCH=0: tests only
#
# Needs torch with CUDA, nvcc, numpy, pytest, shapely (the box IoU tests), transformers (the
# captioner tests), lightning, hydra-core and omegaconf (the training test); the real nuScenes
# sample (../shared/samples or $DENSE3D_SAMPLES). CI has no GPU and does not run this;
# docs/ops.md records what it printed on a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

# without a GPU or the samples the cuda tests would skip and the run would pass having tested nothing
if ! "$PY" -c "
import sys, torch
from dense3d.utils.env import samples_dir
sys.exit(0 if torch.cuda.is_available() and samples_dir() is not None else 1)"; then
    echo "gpu_check: needs a visible GPU and the real samples (../shared/samples or DENSE3D_SAMPLES)"
    exit 1
fi

echo "== build dense3d._C with CUDA (in place)"
start=$(date +%s)
if ! FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"
    echo "build failed"
    exit 1
fi
echo "built in $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
"$PY" -c "from dense3d.ops import backend_info; print(backend_info())" | tee -a "$OUT/gpu.txt"
if ! "$PY" -c "from dense3d.ops import ext_has_cuda; import sys; sys.exit(0 if ext_has_cuda() else 1)"; then
    echo "gpu_check: dense3d._C was built without CUDA kernels (see $OUT/build.log)"
    exit 1
fi

echo "== tests marked cuda"
"$PY" -m pytest -m cuda tests/ops tests/models/test_cuda_models.py tests/engine/test_gpu_training.py -p no:cacheprovider -q --durations=8 2>&1 | tee "$OUT/cuda_tests.log" || status=1

if [ "${BENCH:-1}" = 0 ]; then
    exit $status
fi
echo "== benchmarks"
BM_REPEATS=${BM_REPEATS:-5} BM_OUT="$OUT/bm_geometry.json" "$PY" benchmarks/bm_geometry.py 2>&1 | tee "$OUT/bm_geometry.log" || status=1
"$PY" benchmarks/bm_sparse_conv.py --device cuda --out "$OUT/bm_sparse_conv_cuda.json" 2>&1 | tee "$OUT/bm_sparse_conv_cuda.log" || status=1
exit $status
