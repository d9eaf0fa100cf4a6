"""Rotating a supervised log under a running writer: limits, backups, nothing lost."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from guardian.services.process.collapse import block_size, collapse_head
from guardian.services.process.logfile import SupervisedLog, tail_rotated


def collapses_here(tmp: Path) -> bool:
    """Whether this filesystem can cut a file's head (ext4, XFS: yes; tmpfs: no)."""
    probe = tmp / "probe"
    with open(probe, "wb+") as fh:
        block = block_size(fh.fileno())
        fh.write(b"x" * block * 2 + b"y")
        fh.flush()
        try:
            ok = collapse_head(fh.fileno(), block)
        except OSError:
            return False
    ok = ok and probe.read_bytes() == b"x" * block + b"y"
    probe.unlink()
    return ok


def write_rounds(log: SupervisedLog) -> bytes:
    fd = log.open_for_child()
    data = b""
    try:
        for round_ in range(3):
            chunk = b"".join(b"r%d line %05d\n" % (round_, i) for i in range(400))
            os.write(fd, chunk)
            data += chunk
            assert log.rotate_if_needed()
        os.write(fd, b"after\n")  # O_APPEND: lands at the end of what the cut left
        data += b"after\n"
    finally:
        os.close(fd)
    return data


def test_copy_truncate_keeps_the_limit_and_backups(tmp_path: Path) -> None:
    log = SupervisedLog(tmp_path / "x.log", max_bytes=4096, backups=2)
    log.collapse = False  # as on a filesystem that cannot cut a file's head
    write_rounds(log)
    assert (tmp_path / "x.log").read_bytes() == b"after\n"
    assert (tmp_path / "x.log.1").read_bytes().startswith(b"r2 line 00000")
    assert (tmp_path / "x.log.2").read_bytes().startswith(b"r1 line 00000")
    assert not (tmp_path / "x.log.3").exists()
    assert log.tail(2) == ["r2 line 00399", "after"]


def test_collapse_rotation_loses_nothing_and_keeps_whole_blocks(tmp_path: Path) -> None:
    if not collapses_here(tmp_path):
        pytest.skip("this filesystem cannot collapse a file range")
    log = SupervisedLog(tmp_path / "x.log", max_bytes=4096, backups=2)
    data = write_rounds(log)
    assert log.collapse is True
    files = [tmp_path / n for n in ("x.log.2", "x.log.1", "x.log")]
    joined = b"".join(p.read_bytes() for p in files)
    assert data.endswith(joined)  # the backups and the file, in order: no gap, no copy
    assert not (tmp_path / "x.log.3").exists()
    block = 4096
    assert all(p.stat().st_size % block == 0 for p in files[:2])
    assert (tmp_path / "x.log").stat().st_size < block + len(b"after\n")
    assert log.tail(3) == ["r2 line 00398", "r2 line 00399", "after"]


def test_tail_joins_a_line_cut_at_the_rotation(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    (tmp_path / "x.log.2").write_bytes(b"one\ntw")
    (tmp_path / "x.log.1").write_bytes(b"o\nthr")
    path.write_bytes(b"ee\nfour\n")
    assert tail_rotated(path, 2, 10) == ["one", "two", "three", "four"]
    assert tail_rotated(path, 2, 3) == ["two", "three", "four"]
    assert tail_rotated(path, 2, 2) == ["three", "four"]  # reaches .1 for its head
    path.write_bytes(b"\nfour\n")  # the cut fell just before a newline
    assert tail_rotated(path, 2, 3) == ["two", "thr", "four"]


WRITER = "import os\nfor i in range(10**9):\n    os.write(1, b'%d\\n' % i)\n"


def test_fast_writer_loses_no_line_across_many_rotations(tmp_path: Path) -> None:
    if not collapses_here(tmp_path):
        pytest.skip("this filesystem cannot collapse a file range (copy-truncate: see bench)")
    path = tmp_path / "out.log"
    log = SupervisedLog(path, max_bytes=64 * 1024, backups=1)
    fd = log.open_for_child()
    proc = subprocess.Popen([sys.executable, "-c", WRITER], stdout=fd, stdin=subprocess.DEVNULL)
    os.close(fd)
    chunks: list[bytes] = []
    try:
        deadline = time.monotonic() + 20
        while len(chunks) < 10 and time.monotonic() < deadline:
            if log.rotate_if_needed():
                chunks.append((tmp_path / "out.log.1").read_bytes())
            time.sleep(0.001)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    chunks.append(path.read_bytes())
    assert len(chunks) > 5, "too few rotations to say anything"
    seqs = [int(x) for x in b"".join(chunks).split(b"\n") if x]
    assert seqs == list(range(len(seqs))), "a line was lost, doubled or broken at a rotation"


def test_a_filesystem_without_collapse_falls_back_to_copy_truncate_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm")
    tmp = Path(tempfile.mkdtemp(dir=shm))
    try:
        if collapses_here(tmp):
            pytest.skip("this tmpfs can collapse ranges")
        log = SupervisedLog(tmp / "x.log", max_bytes=4096, backups=2)
        with caplog.at_level(logging.INFO, logger="guardian.services.process.logfile"):
            data = write_rounds(log)
        assert log.collapse is False
        assert (tmp / "x.log").read_bytes() == b"after\n"
        assert data.endswith((tmp / "x.log.1").read_bytes() + b"after\n")  # nothing doubled
        said = [r for r in caplog.records if "copy-truncate" in r.getMessage()]
        assert len(said) == 1, said
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
