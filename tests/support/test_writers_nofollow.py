"""Every writer in Guardian opens through :mod:`guardian.support.safe_open` (issue 21, 2).

A static sweep of the source: a call that creates, writes, truncates or chmods a file by
*name* (``open(path, "w")``, ``Path.write_text``, ``os.open`` without ``O_NOFOLLOW``,
``mkstemp``, ``os.chmod``, ``os.truncate``, ``shutil.copy``) would follow a link planted at
that name. Only the exemptions below, each with its reason, may do so. Plus the helpers'
own behaviour on real links and real hard links.
"""

from __future__ import annotations

import ast
import errno
import os
from pathlib import Path

import pytest

from guardian.support.private_file import write_private_text
from guardian.support.safe_open import make_private, open_append, temp_name, write_atomic

SRC = Path(__file__).resolve().parents[2] / "src" / "guardian"
EXEMPT = {
    "support/safe_open.py": "the helper itself",
    "cli/install.py": "writes unit files into system directories only root can write "
                      "(/etc/systemd/system), at the user's explicit command",
    "cli/incidents.py": "`guardian report --out FILE`: the path the user typed, as that user",
    "services/process/winappend.py": "the Windows CreateFile path (no symlink planting in "
                                     "Guardian's ACL'd folders); POSIX goes to safe_open",
}
BY_NAME = {"write_text", "write_bytes", "touch", "mkstemp", "NamedTemporaryFile", "chmod",
           "truncate", "copy", "copy2", "copyfile", "lchmod"}


def _mode(call: ast.Call) -> str | None:
    arg = call.args[1] if len(call.args) > 1 else next(
        (k.value for k in call.keywords if k.arg == "mode"), None)
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def _opens_fd(call: ast.Call) -> bool:
    first = call.args[0] if call.args else None
    return isinstance(first, ast.Name) and first.id.endswith("fd")


def writers(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) \
            else ""
        owner = fn.value.id if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name) \
            else ""
        if name == "open" and owner in ("", "io"):
            mode = _mode(node) or "r"
            if set(mode) & set("wax+") and not _opens_fd(node):
                found.append((node.lineno, f"open(..., {mode!r})"))
        elif name == "open" and owner == "os":
            flags = ast.unparse(node.args[1]) if len(node.args) > 1 else ""
            if "NOFOLLOW" not in flags and any(f in flags for f in ("WRONLY", "RDWR", "CREAT")):
                found.append((node.lineno, f"os.open({flags})"))
        elif name in BY_NAME and owner not in ("self",):
            if name == "truncate" and owner not in ("os",):
                continue  # a file object's truncate works on its descriptor
            if name.startswith("copy") and owner != "shutil":
                continue  # copy.copy() and friends copy objects, not files
            found.append((node.lineno, f"{owner + '.' if owner else ''}{name}()"))
    return found


def test_every_writer_opens_without_following_links() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel in EXEMPT or rel.startswith("services/windows/"):
            continue  # Windows only: no planted symlinks in Guardian's ACL'd folders
        for line, what in writers(ast.parse(path.read_text(encoding="utf-8"))):
            offenders.append(f"{rel}:{line}: {what}")
    assert offenders == [], "write through safe_open instead:\n" + "\n".join(offenders)


def test_the_sweep_finds_a_plain_writer() -> None:
    """The sweep itself can fail: each shape it must catch, caught."""
    code = ("open(p, 'w')\nopen(p, mode='a')\nos.open(p, os.O_WRONLY | os.O_CREAT)\n"
            "p.write_text('x')\ntempfile.mkstemp()\nos.chmod(p, 0o600)\nos.truncate(p, 0)\n"
            "shutil.copy(a, b)\n")
    assert len(writers(ast.parse(code))) == 8
    assert writers(ast.parse("open(fd, 'a')\nos.open(p, os.O_RDONLY)\n"
                             "os.open(n, os.O_WRONLY | NOFOLLOW)\n")) == []


@pytest.mark.skipif(os.name == "nt", reason="POSIX symlinks")
def test_helpers_refuse_links_and_replace_them_not_their_targets(tmp_path: Path) -> None:
    decoy = tmp_path / "decoy"
    decoy.write_text("decoy")
    decoy.chmod(0o644)
    home = tmp_path / "home"
    home.mkdir()
    link = home / "guardian.log"
    link.symlink_to(decoy)
    with pytest.raises(OSError) as e:
        open_append(link)
    assert e.value.errno == errno.ELOOP
    hard = home / "hard.log"
    os.link(decoy, hard)
    with pytest.raises(OSError) as e:
        open_append(hard)
    assert e.value.errno == errno.EMLINK
    # Whole-file writers replace the link itself; the old predictable temp names are links
    # too, and are neither followed nor reused.
    record = home / "process-x.json"
    record.symlink_to(decoy)
    (home / f".{record.name}.{os.getpid()}.tmp").symlink_to(decoy)
    write_private_text(record, "{}")
    write_atomic(home / "report.md", b"# report", 0o640)
    assert decoy.read_text() == "decoy" and oct(decoy.stat().st_mode & 0o777) == "0o644"
    assert not record.is_symlink() and record.read_text() == "{}"
    assert oct(record.stat().st_mode & 0o777) == "0o600"
    assert temp_name(record) != temp_name(record)
    # Narrowing a file's mode (the queue journal's -wal/-shm) never reaches a link's target.
    wal = home / "guardian.db-wal"
    wal.symlink_to(decoy)
    with pytest.raises(OSError) as e:
        make_private(wal)
    assert e.value.errno == errno.ELOOP and oct(decoy.stat().st_mode & 0o777) == "0o644"
    mine = home / "guardian.db"
    mine.write_text("")
    mine.chmod(0o644)
    make_private(mine)
    assert oct(mine.stat().st_mode & 0o777) == "0o600"
