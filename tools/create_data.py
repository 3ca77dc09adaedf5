"""Generate the synthetic benchmark: ``python tools/create_data.py synth --kind outdoor --out DIR``
(the same as ``dense3d convert``; see ``docs/synthetic.md``)."""
import sys

from dense3d.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
