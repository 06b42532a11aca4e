"""Which videos to curate: folders, globs and manifests, resolved to a sorted list of paths.

Each entry of ``inputs`` is one of:

- a folder: every video file under it (``.mp4 .mov .mkv .avi .webm .m4v``, recursively);
- a glob: ``/data/lectures/**/*.mp4``;
- a manifest: a ``.txt`` file with one path per line (``#`` comments; relative paths are relative to
  the manifest) or a ``.json`` list of paths;
- a single file (any extension: a file that is not a video is rejected later with its reason).

A manifest may name files that do not exist: they are kept, and become rejects ("file not found").
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

__all__ = ["VIDEO_SUFFIXES", "InputError", "resolve_inputs"]

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


class InputError(ValueError):
    """An ``inputs`` entry that matches nothing; the message names it."""


def _manifest(path: Path) -> list[Path]:
    if path.suffix == ".json":
        items = json.loads(path.read_text())
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise InputError(f"{path}: a JSON manifest must be a list of paths")
    else:
        items = [ln.strip() for ln in path.read_text().splitlines()]
        items = [i for i in items if i and not i.startswith("#")]
    return [p if p.is_absolute() else path.parent / p for p in map(Path, items)]


def resolve_inputs(specs: list[str]) -> list[Path]:
    """Every input video named by ``specs``, absolute, de-duplicated, sorted."""
    found: set[Path] = set()
    for spec in specs:
        p = Path(spec).expanduser()
        if p.is_dir():
            hits = [f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES]
        elif p.is_file() and p.suffix in (".txt", ".json"):
            hits = _manifest(p)
        elif p.is_file():
            hits = [p]
        else:
            hits = [Path(h) for h in glob.glob(str(p), recursive=True) if Path(h).is_file()]
        if not hits:
            raise InputError(f"inputs: {spec!r} matches no file (a folder, glob, manifest or video path)")
        found.update(h.resolve() for h in hits)
    return sorted(found)
