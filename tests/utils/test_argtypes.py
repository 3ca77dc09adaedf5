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


def test_non_negative_int():
    from dense3d.utils.argtypes import non_negative_int

    assert non_negative_int("0") == 0 and non_negative_int("7") == 7
    for bad in ("-1", "1.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected an integer >= 0"):
            non_negative_int(bad)
