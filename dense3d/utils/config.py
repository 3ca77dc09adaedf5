"""Building objects from hydra configs with the library's one-line errors.

Hydra wraps every exception raised while it builds an object, ours included, in an
``InstantiationException`` whose message is several lines long (the call and the chained
traceback). :func:`instantiate_config` gives back our own ``Dense3DError`` when one caused it, and
turns any other failure (a string where a number belongs, a constructor refusing a value) into a
one-line ``ConfigError`` naming the config and the key.
"""
from __future__ import annotations

from typing import Any

from dense3d.errors import ConfigError, Dense3DError

__all__ = ["instantiate_config"]


def _root_cause(error: BaseException) -> BaseException:
    """The innermost exception of ``error``'s chain (``__cause__``, else ``__context__``)."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        nxt = error.__cause__ or error.__context__
        if nxt is None or isinstance(error, Dense3DError):
            break
        error = nxt
    return error


def instantiate_config(node, source: str, key: str, **kwargs) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)``; failures are one line.

    Args:
        node: the config node (with ``_target_``).
        source: the config the node came from (a file, for messages).
        key: the node's key in it (``model``, ``data``, ``trainer``, ...).
    Raises:
        the ``Dense3DError`` a constructor raised; else ``ConfigError(source, key, ...)`` with
        the root cause's type and first line.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf.errors import OmegaConfBaseException

    try:
        return instantiate(node, **kwargs)
    except (InstantiationException, OmegaConfBaseException) as e:  # the latter: ??? values, bad ${...}
        cause = _root_cause(e)
        if isinstance(cause, Dense3DError):
            raise cause.with_traceback(None) from None
        message = str(cause).strip().splitlines()
        got = f"{type(cause).__name__}: {message[0] if message else ''}"
        raise ConfigError(source, key, "values its objects accept (see the config's comments)", got=got) from None
