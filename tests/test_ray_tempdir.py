"""The session check on Ray's default temp dir (``ray_tempdir``) sees every kind of write a test could make
there; a tmp_path stands in for the folder."""

from __future__ import annotations

import os

from ray_tempdir import changes, default_ray_temp_dir, snapshot


def touch_later(path, before):
    """Give ``path`` an mtime after ``before`` (ns), whatever the file system's clock resolution."""
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_an_untouched_folder_shows_no_change(tmp_path):
    (tmp_path / "session_1").mkdir()
    (tmp_path / "session_1" / "logs").mkdir()
    assert changes(snapshot(tmp_path), snapshot(tmp_path)) == []


def test_creating_the_folder_is_a_change(tmp_path):
    root = tmp_path / "ray"
    before = snapshot(root)
    root.mkdir()
    (root / "ray_current_cluster").write_text("127.0.0.1:6379")
    assert before == {}
    assert changes(before, snapshot(root)) == [f"created {root}", f"created {root / 'ray_current_cluster'}"]


def test_a_file_written_and_removed_again_is_seen_in_the_folders_mtime(tmp_path):
    before = snapshot(tmp_path)
    address = tmp_path / "ray_current_cluster"
    address.write_text("127.0.0.1:6379")
    address.unlink()
    touch_later(tmp_path, before[str(tmp_path)])  # the kernel's clock may not have ticked since the snapshot
    assert changes(before, snapshot(tmp_path)) == [f"changed {tmp_path}"]


def test_new_and_changed_entries_of_a_session_folder_are_seen(tmp_path):
    session = tmp_path / "session_2026"
    (session / "logs").mkdir(parents=True)
    (tmp_path / "session_latest").symlink_to(session)
    before = snapshot(tmp_path)
    (session / "sockets").mkdir()
    touch_later(session / "logs", before[str(session / "logs")])
    found = changes(before, snapshot(tmp_path))
    assert f"created {session / 'sockets'}" in found
    assert f"changed {session / 'logs'}" in found
    assert not any("session_latest" in line for line in found)  # a symlink, recorded but not followed


def test_removing_an_entry_is_a_change(tmp_path):
    (tmp_path / "session_old").mkdir()
    before = snapshot(tmp_path)
    (tmp_path / "session_old").rmdir()
    touch_later(tmp_path, before[str(tmp_path)])
    assert changes(before, snapshot(tmp_path)) == [f"changed {tmp_path}", f"removed {tmp_path / 'session_old'}"]


def test_ray_tmpdir_moves_the_default_folder(monkeypatch, tmp_path):
    """What the multinode fixture relies on to keep `Cluster`'s address file in its own folder."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert default_ray_temp_dir() == tmp_path / "ray"
