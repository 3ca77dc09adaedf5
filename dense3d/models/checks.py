"""Constructor argument checks shared by the model parts: one-line ``ConfigError``s at build time
instead of raw torch errors in the first forward step."""
from __future__ import annotations

from dense3d.errors import ConfigError

__all__ = ["check_int", "check_heads"]


def check_int(source: str, field: str, value, minimum: int = 1) -> None:
    """``value`` is an integer (not a bool) >= ``minimum``, or a ``ConfigError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(source, field, f"an integer >= {minimum}", got=value)


def check_heads(source: str, width_field: str, width, heads_field: str, heads) -> None:
    """``width`` and ``heads`` are integers >= 1 and ``heads`` divides ``width`` (attention splits the
    width into equal heads), or a ``ConfigError``."""
    check_int(source, width_field, width)
    check_int(source, heads_field, heads)
    if width % heads:
        raise ConfigError(source, heads_field, f"a divisor of {width_field}={width}", got=heads)
