"""Whose files Guardian believes: its own directories and the files in them, checked like sshd.

Guardian may run as root, and it acts on what its state directory says (a process record
names a pid it will signal; the runtime file names the port the CLI sends the API token
to). A directory someone else can write is a way to make it act for them. So, as OpenSSH's
``StrictModes`` and systemd do, a directory or file is trusted only when it belongs to
Guardian's own user (or root) and no other user can write it, nor any directory above it
(unless that one is sticky, like ``/tmp``: others cannot rename what is not theirs there).
A problem names the path and the command that fixes it. POSIX only: on Windows the
folders inherit the ACL of ``%PROGRAMDATA%\\Guardian`` or the user's profile.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

CHECKED = os.name != "nt"


@dataclass(frozen=True, slots=True)
class Untrusted:
    """A path Guardian will not trust, why, and how to fix it."""

    path: Path
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}; fix: {self.fix}"


def _owner_ok(uid: int) -> bool:
    return uid in (os.geteuid(), 0)


def _me() -> str:
    return "root" if os.geteuid() == 0 else str(os.geteuid())


def _mode_problem(path: Path, st: os.stat_result, *, directory: bool) -> Untrusted | None:
    if not _owner_ok(st.st_uid):
        return Untrusted(path, f"owned by uid {st.st_uid}, not by Guardian's user or root",
                         f"chown {_me()} {path}" + (" (or choose another directory)"
                                                    if directory else " (or remove it)"))
    if st.st_mode & 0o022:
        who = "others" if st.st_mode & 0o002 else "its group"
        return Untrusted(path, f"writable by {who} (mode {stat.S_IMODE(st.st_mode):o})",
                         f"chmod go-w {path}")
    return None


def file_problem(path: Path) -> str | None:
    """Why the file at ``path`` must not be trusted (None: it may be, or it is absent)."""
    found = untrusted_file(path)
    return None if found is None else f"{found.problem} (fix: {found.fix})"


def untrusted_file(path: Path) -> Untrusted | None:
    if not CHECKED:
        return None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return Untrusted(path, f"cannot be inspected ({e.strerror})", f"check {path}")
    if stat.S_ISLNK(st.st_mode):
        return Untrusted(path, "is a symbolic link", f"rm {path}")
    if not stat.S_ISREG(st.st_mode):
        return Untrusted(path, "is not a regular file", f"remove {path}")
    if st.st_nlink > 1:
        return Untrusted(path, "has other hard links", f"rm {path}")
    return _mode_problem(path, st, directory=False)


def untrusted_dir(path: Path) -> Untrusted | None:
    """The first problem with ``path`` (resolved) and the directories above it."""
    if not CHECKED:
        return None
    try:
        real = Path(os.path.realpath(path))
    except OSError as e:
        return Untrusted(path, f"cannot be resolved ({e})", f"check {path}")
    probe = real
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # not created yet: Guardian creates it; check what holds it
    first = True
    for d in (probe, *probe.parents):
        try:
            st = os.stat(d)
        except OSError as e:
            return Untrusted(d, f"cannot be inspected ({e.strerror})", f"check {d}")
        if not stat.S_ISDIR(st.st_mode):
            # Nothing can be created below a file: the writers say so; nothing to trust.
            return None
        sticky = bool(st.st_mode & stat.S_ISVTX)
        if first or not sticky:
            problem = _mode_problem(d, st, directory=True)
            # Above Guardian's own directory, only what lets others replace it matters.
            if problem is not None and (first or "group" not in problem.problem):
                return problem
        first = False
    return None


def make_dirs(path: Path, mode: int = 0o750) -> None:
    """Create ``path`` and any missing parents without group or other write access.

    ``mkdir -p`` with the default mode would give a group-writable directory under a
    ``002`` umask, which the next start would then refuse to trust.
    """
    missing: list[Path] = []
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for i, d in enumerate(reversed(missing)):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, mode if i == len(missing) - 1 else 0o755)
