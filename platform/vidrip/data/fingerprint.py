"""Content fingerprints of data sets: the same files with the same bytes give the same fingerprint.

    fingerprint_tree("work/sample")                   # every file under the folder
    cache = DigestCache("work/cache/digests.json")
    fingerprint_tree("work/sample", cache=cache)      # a file unchanged since (path, size, mtime) is not re-read

Lineage tags in MLflow carry these, so a run says exactly which data it saw.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

__all__ = ["DigestCache", "file_sha256", "fingerprint_digests", "fingerprint_tree"]

_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class DigestCache:
    """Each file's sha256 by its absolute path, size and mtime (ns), kept in a JSON file, so that a later
    job (or the next stage of the same one) does not read the same bytes again. A file rewritten in place
    changes its mtime and is hashed anew; a lost or unreadable cache file only costs the hashing."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._entries: dict[str, list] | None = None
        self._dirty = False
        self._lock = threading.Lock()

    def _load(self) -> dict[str, list]:
        if self._entries is None:
            try:
                self._entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self._entries = {}
        return self._entries

    def digest(self, file: str | Path, stat: os.stat_result | None = None) -> str:
        """The file's sha256 (``file`` absolute; ``stat``: its ``os.stat`` when the caller has it)."""
        key = os.fspath(file)
        stat = stat or os.stat(key)
        with self._lock:
            hit = self._load().get(key)
        if hit is not None and hit[0] == stat.st_size and hit[1] == stat.st_mtime_ns:
            return hit[2]
        sha = file_sha256(key)
        with self._lock:
            self._load()[key] = [stat.st_size, stat.st_mtime_ns, sha]
            self._dirty = True
        return sha

    def save(self) -> None:
        """Write what was learned (atomically: a reader never sees half a file)."""
        with self._lock:
            if not self._dirty:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
            tmp.write_text(json.dumps(self._entries))
            tmp.replace(self.path)
            self._dirty = False


def fingerprint_digests(digests: Mapping[str, str]) -> str:
    """The fingerprint of files already hashed: ``{path relative to the root: sha256}``."""
    h = hashlib.sha256()
    for rel in sorted(digests, key=lambda r: r.split("/")):  # the order of their Paths (their parts)
        h.update(rel.encode() + b"\0" + digests[rel].encode() + b"\n")
    return h.hexdigest()[:16]


def _walk(folder: str, prefix: str) -> Iterator[tuple[str, str, os.DirEntry]]:
    """(absolute path, path relative to the root, entry) of every file under ``folder``; one ``scandir`` per
    folder, no per-file path resolution (the root is resolved once)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            if entry.is_dir(follow_symlinks=True):
                yield from _walk(entry.path, f"{rel}/")
            elif entry.is_file(follow_symlinks=True):
                yield entry.path, rel, entry


def fingerprint_tree(root: str | Path, exclude: Iterable[str] = (), cache: DigestCache | None = None) -> str:
    """Every file under ``root`` but those whose path relative to it is in ``exclude``."""
    skip = set(exclude)
    files = [(path, rel, entry) for path, rel, entry in _walk(str(Path(root).resolve()), "") if rel not in skip]
    if cache is None:
        return fingerprint_digests({rel: file_sha256(path) for path, rel, _ in files})
    out = fingerprint_digests({rel: cache.digest(path, entry.stat()) for path, rel, entry in files})
    cache.save()
    return out
