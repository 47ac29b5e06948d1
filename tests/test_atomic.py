import os
import stat

import pytest

from disttgl.atomic import atomic_path


def test_atomic_path_renames_on_success_with_umask_mode(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"data")
        assert not target.exists()
    assert target.read_bytes() == b"data"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]


def test_atomic_path_removes_partial_file_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise ValueError("killed")
    assert target.read_bytes() == b"old"  # the previous valid file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped (so nothing runs under it now)."""
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_rerun_removes_the_temporary_of_a_dead_writer_only(tmp_path):
    import subprocess

    from disttgl.atomic import writer_tag

    target = tmp_path / "b600.h5"
    dead = tmp_path / f".b600.h5.{writer_tag(_dead_pid())}.ab12cd34.part"
    dead.write_bytes(b"x" * 1000)  # what `kill -9` of a cache build leaves
    live_proc = subprocess.Popen(["sleep", "60"])
    try:
        live = tmp_path / f".b600.h5.{writer_tag(live_proc.pid)}.ef56gh78.part"
        mine = tmp_path / f".b600.h5.{writer_tag()}.ij90kl12.part"  # another thread of this process
        other_host = tmp_path / f".b600.h5.{_dead_pid()}@elsewhere@1.mn34op56.part"
        untagged = tmp_path / ".b600.h5.qr78st90.part"  # written before temporaries were tagged
        other_target = tmp_path / f".b600.h5.1.{writer_tag(_dead_pid())}.uv12wx34.part"
        for f in (live, mine, other_host, untagged, other_target):
            f.write_bytes(b"y")
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"data")
        assert target.read_bytes() == b"data"
        assert not dead.exists()
        for f in (live, mine, other_host, untagged, other_target):
            assert f.exists(), f.name
    finally:
        live_proc.kill()
        live_proc.wait()
    # once its writer is gone, the next write of the target removes that one too
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"again")
    assert not live.exists() and mine.exists()


def test_a_full_disk_is_an_error_naming_the_file_and_leaves_nothing(tmp_path):
    import errno

    from disttgl.errors import DataError

    target = tmp_path / "cache.h5"
    with pytest.raises(DataError, match="no space left on device writing .*cache.h5"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []
