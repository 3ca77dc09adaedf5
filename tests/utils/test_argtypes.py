"""argparse type checks shared by the command lines."""
import argparse

import pytest

from dense3d.utils.argtypes import unit_fraction


@pytest.mark.parametrize("text, ok", [("0.25", True), ("1", True), ("0", False), ("-0.5", False), ("1.5", False),
                                      ("nan", False), ("inf", False), ("abc", False)])
def test_unit_fraction(text, ok):
    if ok:
        assert unit_fraction(text) == float(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError, match=r"expected a number in \(0, 1\]"):
            unit_fraction(text)
