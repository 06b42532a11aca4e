"""Snapshots of Ray's default temp dir, so that the test session can fail when a test wrote there.

Ray falls back to its default temp dir (``/tmp/ray`` unless ``$RAY_TMPDIR`` or ``$TMPDIR`` moves it) for
anything not given a temp dir of its own, and ``ray.cluster_utils.Cluster`` writes its address file there
whatever temp dir its nodes get. Every Ray the tests start must keep to its own folder: on a fresh machine
the fallback fails (the folder does not exist), and on a shared one it meddles with another Ray's files.
``conftest.py`` takes a snapshot at session start and compares at session end.
"""

from __future__ import annotations

from pathlib import Path

Snapshot = dict[str, int]  # path -> mtime in ns; empty when the folder does not exist


def default_ray_temp_dir() -> Path:
    """Ray's default temp dir, resolved by Ray itself (``get_default_ray_temp_dir`` in ``ray/_common/utils.py``).

    Imported here, not at module level: importing Ray costs about half a second.
    """
    from ray._common.utils import get_default_ray_temp_dir

    return Path(get_default_ray_temp_dir())


def snapshot(root: Path) -> Snapshot:
    """The mtimes of ``root`` itself, of its top-level entries and of the entries of its ``session_*`` folders.

    The root's own mtime catches a file written and removed again (``Cluster`` removes its address file
    at shutdown). Symlinks (``session_latest``) are recorded, not followed.
    """
    if not root.is_dir():
        return {}
    paths = [root, *root.iterdir()]
    for session in root.glob("session_*"):
        if session.is_dir() and not session.is_symlink():
            paths.extend(session.iterdir())
    found = {}
    for path in paths:
        try:
            found[str(path)] = path.lstat().st_mtime_ns
        except FileNotFoundError:  # removed since it was listed (a Ray still running)
            continue
    return found


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    """One line per path created, changed (its mtime) or removed between two snapshots; empty when none."""
    created = [f"created {p}" for p in sorted(after.keys() - before.keys())]
    changed = [f"changed {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    removed = [f"removed {p}" for p in sorted(before.keys() - after.keys())]
    return created + changed + removed
