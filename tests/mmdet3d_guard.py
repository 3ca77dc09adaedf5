"""Tests that need the optional mmdet3d (the detector bridge) are marked ``mmdet3d``.

``make test`` (tools/run_tests.sh) installs mmdet3d in the background while the tests not
marked mmdet3d run (``DENSE3D_WITH_MMDET3D=0``: nothing may import it then), then runs the
marked ones (``=1``: a missing mmdet3d is a set-up bug, so a failure). Elsewhere (``make
test-fast``, plain pytest) they skip where mmdet3d is not installed."""
from __future__ import annotations

import os

import pytest


def need_mmdet3d(module_level: bool = False) -> None:
    flag = os.environ.get("DENSE3D_WITH_MMDET3D")
    if flag == "0":
        if module_level:  # its tests are marked mmdet3d: deselected in this phase anyway
            pytest.skip("runs in the mmdet3d phase of `make test` (tools/run_tests.sh)", allow_module_level=True)
        pytest.fail("this test needs mmdet3d: mark it mmdet3d (`make test` runs those once mmdet3d is installed)")
    if flag == "1":
        import mmdet3d  # noqa: F401
        return
    pytest.importorskip("mmdet3d", reason="the optional mmdet3d bridge: `make test` installs mmdet3d")
