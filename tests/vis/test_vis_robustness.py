"""Pictures of awkward input: no renderer, boxes partly behind the camera, blank captions, empty scenes."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dense3d.structures import Boxes3D

RED = np.array([1.0, 0.0, 0.0])


def test_render_without_a_vulkan_device_is_one_line_error_not_an_abort(tmp_path):
    # Filament aborts the process (SIGABRT, status 134, a C++ panic) when it finds no Vulkan
    # device; render_scene must say so in one line instead (or render, where Open3D finds another
    # backend on this machine).
    script = textwrap.dedent("""
        import sys, numpy as np
        from dense3d.errors import DependencyError
        from dense3d.vis import render_scene
        try:
            render_scene(np.random.rand(50, 3) * 10, width=32, height=24)
        except DependencyError as e:
            print(f"DependencyError: {e}", file=sys.stderr)
            sys.exit(2)
    """)
    env = dict(os.environ, VK_ICD_FILENAMES=str(tmp_path / "no_such_icd.json"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode in (0, 2), f"status {proc.returncode}: {proc.stderr[-500:]}"
    if proc.returncode == 2:
        line = [ln for ln in proc.stderr.splitlines() if ln.startswith("DependencyError")]
        assert len(line) == 1 and "Open3D offscreen renderer" in line[0] and "vulkan" in line[0].lower()
