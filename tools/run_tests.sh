#!/usr/bin/env bash
# `make test`: the whole test suite, the optional mmdet3d bridge's tests included.
#
# The bridge needs mmdet3d, whose mmcv has no wheel for torch 2.9 and builds from source (about
# 12 min on 2 cores, once; tools/setup_env.sh steps 5a and 5). The build starts as soon as torch is
# installed, beside the rest of the set-up (mostly downloads), and the suite leaves part of a core
# idle (113 % CPU on 2 cores), so that install runs in the background at the lowest priority while
# every other test runs (phase 1: pytest -m "not mmdet3d", DENSE3D_WITH_MMDET3D=0, nothing
# imports mmdet3d); then the tests marked mmdet3d run (phase 2). The install changes no package
# phase 1 uses (setup_env.sh installs it under a constraint on everything already installed).
# Once installed, it is skipped (stamp file) and both phases just run.
#   bash tools/run_tests.sh [PYTEST_ARGS...]
# PYTEST_ARGS go to both phases; a `-m EXPR` among them narrows both. A phase that selects no
# test (pytest's exit status 5) is not a failure. Exit status: 1 if either phase failed.
set -uo pipefail
cd "$(dirname "$0")/.."
# One OpenMP thread per test process (unless set): the suite is mostly small tensors, where a
# second thread buys little and its spin-waits take the core the background mmcv build needs
# (in a fresh-clone run pytest held both cores for its 24 min and the build compiled 36 of its
# files meanwhile). Tests that spawn processes (DDP, sweeps) inherit it.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
PY=.venv/bin/python
LOG=.venv/mmdet3d_install.log
READY=.venv/.setup_ready_$$

trap 'kill 0' INT TERM  # Ctrl-C stops the background install too (its stamp is not written)
DENSE3D_SETUP_UNTIL=torch bash tools/setup_env.sh || exit 1  # steps 1-2: torch (a second when done)
# In the background, at the lowest priority: mmcv's wheel right away (it needs torch only, and
# builds while steps 3-4 download), then, once the foreground set-up is done, the rest of the
# mmdet3d install (it changes the venv, and holds every package the set-up installed).
(
  DENSE3D_MMCV_WHEEL=1 nice -n 19 bash tools/setup_env.sh || echo "[setup] mmcv's wheel failed: step 5 builds it"
  while [ ! -e "$READY" ]; do sleep 2; done
  rm -f "$READY"
  DENSE3D_WITH_MMDET3D=1 nice -n 19 bash tools/setup_env.sh
) >"$LOG" 2>&1 &
install=$!
if ! bash tools/setup_env.sh; then  # steps 3-4 in the foreground (a second or so when done)
  trap - INT TERM
  kill 0  # the background install too; this script ends with it (a failed status)
fi
touch "$READY"

# a user's -m EXPR joins each phase's marker expression (pytest keeps only the last -m)
args=() user_m=""
while [ $# -gt 0 ]; do
  case "$1" in
    -m) user_m="$2"; shift 2 ;;
    -m*) user_m="${1#-m}"; user_m="${user_m#=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
marks() { if [ -n "$user_m" ]; then echo "($1) and ($user_m)"; else echo "$1"; fi; }
ok() { [ "$1" = 0 ] || [ "$1" = 5 ]; }  # 5: the phase selected no test

DENSE3D_WITH_MMDET3D=0 "$PY" -m pytest -m "$(marks "not mmdet3d")" "${args[@]}"
first=$?

echo "[test] waiting for the mmdet3d install (log: $LOG) ..."
if ! wait "$install"; then
  tail -30 "$LOG"
  echo "[test] installing mmdet3d failed (full log: $LOG)"
  exit 1
fi
DENSE3D_WITH_MMDET3D=1 "$PY" -m pytest -m "$(marks mmdet3d)" "${args[@]}"
second=$?
ok "$first" && ok "$second"
