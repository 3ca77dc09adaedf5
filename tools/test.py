"""Evaluate predictions with a published protocol: ``python tools/test.py tod3cap --pred P.json --gt G.json``
(the same as ``dense3d eval``; see ``docs/eval.md``)."""
import sys

from dense3d.errors import exit_status
from dense3d.eval.cli import main

if __name__ == "__main__":
    sys.exit(exit_status(main, "tools/test.py"))
