"""Files written whole or not at all (aeexp.files), on a real file system."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from aeexp import files


def _text(data: bytes):
    return lambda file: file.write(data)


def test_every_file_is_written_with_the_folders_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        files.write_atomically([(tmp_path / "a.bin", _text(b"first")), (tmp_path / "new" / "b.bin", _text(b"2nd"))])
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").read_bytes() == b"first"
    assert (tmp_path / "new" / "b.bin").read_bytes() == b"2nd"
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644  # as open() would make it, not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.bin", "b.bin", "new"]


def test_a_failing_writer_replaces_nothing_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"old a")
    (tmp_path / "b.bin").write_bytes(b"old b")

    def fails(file) -> None:
        file.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        files.write_atomically([(tmp_path / "a.bin", _text(b"new a")), (tmp_path / "b.bin", fails)])
    assert (tmp_path / "a.bin").read_bytes() == b"old a" and (tmp_path / "b.bin").read_bytes() == b"old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]


def test_an_os_error_names_the_path_asked_for(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_bytes(b"")
    target = tmp_path / "a-file" / "out.bin"  # its folder is a file
    with pytest.raises(OSError) as caught:
        files.write_atomically([(target, _text(b"x"))])
    assert caught.value.filename == str(target) and caught.value.strerror


def test_durable_files_reach_the_disk_before_their_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        synced.append(descriptor)
        assert not (tmp_path / "c.bin").exists()  # not renamed yet
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    files.write_atomically([(tmp_path / "c.bin", _text(b"kept"))], durable=True)
    files.write_atomically([(tmp_path / "d.bin", _text(b"cache"))])
    assert len(synced) == 1 and (tmp_path / "c.bin").read_bytes() == b"kept"
