"""Where vidrip keeps things on disk.

- the work directory (every job config's ``workdir``, ``./work`` by default): a job's outputs, the MLflow
  store, Ray's temp folder.
- the cache (``$VIDRIP_CACHE_DIR`` or ``~/.cache/vidrip``): things built once and reused by every run,
  such as the converted Qwen2 tokenizer and files taken out of wheels.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["cache_dir", "console_script", "repo_root"]


def cache_dir() -> Path:
    env = os.environ.get("VIDRIP_CACHE_DIR")
    path = Path(env) if env else Path.home() / ".cache" / "vidrip"
    path.mkdir(parents=True, exist_ok=True)
    return path


def console_script(name: str) -> str:
    """A command installed beside this interpreter (``.venv/bin/ray``), else ``name`` as found on PATH."""
    path = Path(sys.executable).with_name(name)
    return str(path) if path.exists() else name


def repo_root() -> Path | None:
    """The source checkout this package runs from, when it runs from one (for git lineage)."""
    here = Path(__file__).resolve().parent.parent.parent
    return here if (here / "pyproject.toml").is_file() else None
