# The two set-up commands of the README: `make demo` and `make test`.
# Each sets up .venv from nothing (tools/setup_env.sh, idempotent), then runs.
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast cuda-check gpu-check bench clean
setup:
	@bash tools/setup_env.sh

demo: setup
	$(PY) -m dense3d.cli demo

# The whole suite, the optional mmdet3d bridge's tests included: tools/run_tests.sh sets up,
# installs mmdet3d (mmcv builds from source, about 12 min on 2 cores, once) in the background
# while the other tests run, then runs the tests marked mmdet3d.
test:
	bash tools/run_tests.sh $(PYTEST_ARGS)

# Skips tests marked slow (CI runs them all through `make test`), and the mmdet3d bridge's tests
# where mmdet3d is not installed (DENSE3D_WITH_MMDET3D=1 make test-fast installs it).
test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Compiles every .cu file with nvcc (compile only), so CUDA code never rots unseen.
cuda-check: setup
	$(PY) tools/check_cuda_compile.py

# On a GPU machine: builds dense3d._C with CUDA in place, runs the tests marked cuda and the GPU
# benchmarks (logs and JSON in gpu_check_out/; docs/ops.md "On a GPU").
gpu-check: setup
	PY=$(PY) bash tools/gpu_check.sh

clean:
	rm -rf build dense3d/_C*.so outputs .venv/.stamps/extension
