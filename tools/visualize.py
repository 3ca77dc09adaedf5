"""Render a scene with its boxes and captions: ``python tools/visualize.py --info infos.pkl --out scene.png``
(the same as ``dense3d vis``; see ``dense3d/engine/visualize.py``)."""
import sys

from dense3d.engine.visualize import main
from dense3d.errors import exit_status

if __name__ == "__main__":
    sys.exit(exit_status(main, "tools/visualize.py"))
