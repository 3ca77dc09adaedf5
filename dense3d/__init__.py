"""dense3d: dense captioning from many sensors.

Finds every object in a 3D scene (LiDAR points, camera images) and every audible event in a
recording (audio, video), and writes a caption for each. See README.md and
docs/architecture.md.
"""
__version__ = "0.1.0"

from dense3d import errors, structures  # noqa: E402,F401
