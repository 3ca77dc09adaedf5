"""Chooses between the compiled extension ``dense3d._C`` and the pure-torch references.

Every public op takes ``backend="auto" | "ext" | "torch"``:

* ``"torch"``: the reference in ``dense3d/ops/_ref/`` (always available, slow, readable);
* ``"ext"``: the C++ (CPU) or CUDA kernel of ``dense3d._C`` (an error if it is missing, or if
  the inputs are on CUDA and the extension was built without CUDA);
* ``"auto"``: ``"ext"`` when it can run the inputs, else ``"torch"``.

A missing extension never breaks ``import dense3d``: the first op that would have used it
warns once and falls back to the references.
"""
from __future__ import annotations

import warnings

import torch

from dense3d.errors import OpInputError

__all__ = ["ext", "ext_available", "ext_has_cuda", "backend_info", "resolve_backend"]

_EXT = None
_EXT_ERROR: str | None = None
_WARNED = False

try:  # the extension is optional: built by `pip install -e .` unless DENSE3D_NO_EXTENSION=1
    from dense3d import _C as _EXT  # type: ignore[attr-defined]
except ImportError as e:  # pragma: no cover - depends on the build
    _EXT_ERROR = str(e)


def ext():
    """The loaded ``dense3d._C`` module, or None."""
    return _EXT


def ext_available() -> bool:
    return _EXT is not None


def ext_has_cuda() -> bool:
    return _EXT is not None and bool(_EXT.with_cuda())


def backend_info() -> str:
    """One line saying which backend ops use: for logs and ``dense3d demo``."""
    if _EXT is None:
        return f"dense3d._C missing ({_EXT_ERROR}); ops use the pure-torch references"
    return "dense3d._C loaded (C++ CPU kernels" + (" + CUDA kernels)" if ext_has_cuda() else ", no CUDA kernels)")


def resolve_backend(backend: str, op: str, *tensors: torch.Tensor) -> str:
    """Return ``"ext"`` or ``"torch"`` for an op call (see the module docstring)."""
    global _WARNED
    if backend not in ("auto", "ext", "torch"):
        raise OpInputError(op, "backend", "'auto', 'ext' or 'torch'", got=repr(backend))
    if backend == "torch":
        return "torch"
    on_cuda = any(t.is_cuda for t in tensors if isinstance(t, torch.Tensor))
    usable = _EXT is not None and (not on_cuda or ext_has_cuda()) and hasattr(_EXT, op)
    if backend == "ext":
        if not usable:
            why = "dense3d._C is missing" if _EXT is None else (
                f"dense3d._C has no op '{op}'" if not hasattr(_EXT, op) else "dense3d._C was built without CUDA"
            )
            raise OpInputError(op, "backend", "an available extension for backend='ext'", got=why)
        return "ext"
    if not usable and _EXT is None and not _WARNED:
        warnings.warn(f"dense3d: {backend_info()}", RuntimeWarning, stacklevel=3)
        _WARNED = True
    return "ext" if usable else "torch"
