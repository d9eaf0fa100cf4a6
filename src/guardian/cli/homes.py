"""Home-directory installs: who the Guardian service should run as, and what it can reach.

A user who keeps ComfyUI and its venv in ``~`` must not get a unit that runs as a separate
``guardian`` account: that account cannot traverse a 0700/0750 home (the Debian/Ubuntu
default), cannot read a 0600 config, and the old setup step ``install -d -o guardian``
would have handed the user's own folders to it. So the default account is the home's
owner, folders in a home are never chowned, and what another account would need is
printed as exact grants (ACLs) plus warnings about what it cannot reach right now.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePath

HOME_ROOTS = (PurePath("/home"),)


def home_of(path: PurePath) -> PurePath | None:
    """The home directory ``path`` lies in (``/home/<user>`` or ``/root``), else None."""
    parts = path.parts
    if len(parts) >= 2 and parts[:2] == ("/", "root"):
        return PurePath("/root")
    for root in HOME_ROOTS:
        if path.is_relative_to(root) and len(parts) > len(root.parts):
            return root / parts[len(root.parts)]
    return None


def homes(paths: Iterable[PurePath]) -> list[PurePath]:
    """The distinct home directories among ``paths``, first seen first."""
    found: list[PurePath] = []
    for p in paths:
        home = home_of(p)
        if home is not None and home not in found:
            found.append(home)
    return found


def owner_name(path: PurePath) -> str | None:
    """The user owning ``path`` (None: missing, or a uid without a name)."""
    import pwd

    try:
        return pwd.getpwuid(os.stat(path).st_uid).pw_name
    except (OSError, KeyError):
        return None


@dataclass(frozen=True, slots=True)
class Account:
    """What the permission checks need to know about a service account."""

    name: str
    uid: int | None  # None: the account does not exist yet (useradd comes later)
    gids: frozenset[int]

    @classmethod
    def lookup(cls, name: str) -> Account:
        import grp
        import pwd

        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return cls(name, None, frozenset())
        gids = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}
        return cls(name, entry.pw_uid, frozenset(gids))

    def may(self, path: PurePath, st: os.stat_result, want: int) -> bool:
        """Whether ``path`` grants ``want`` (4 read, 1 execute) to this account.

        A named-user ACL entry (what the printed setfacl steps add) counts, limited by the
        ACL mask as the kernel does; otherwise the mode bits decide.
        """
        if self.uid == 0:
            return True
        if self.uid is not None and st.st_uid == self.uid:
            return bool(st.st_mode & (want << 6))
        granted = _acl_user_perm(path, self.uid)
        if granted is not None:
            return bool(granted & want)
        if st.st_gid in self.gids:
            return bool(st.st_mode & (want << 3))
        return bool(st.st_mode & want)


ACL_USER, ACL_MASK = 0x02, 0x10


def _acl_user_perm(path: PurePath, uid: int | None) -> int | None:
    """The permission a POSIX ACL grants ``uid`` by name (masked); None without one."""
    if uid is None or not hasattr(os, "getxattr"):
        return None
    try:
        raw = os.getxattr(path, "system.posix_acl_access")
    except OSError:
        return None
    perm: int | None = None
    mask = 7
    for i in range(4, len(raw) - 7, 8):  # a 4-byte header, then (tag u16, perm u16, id u32)
        tag = int.from_bytes(raw[i:i + 2], "little")
        bits = int.from_bytes(raw[i + 2:i + 4], "little")
        ident = int.from_bytes(raw[i + 4:i + 8], "little")
        if tag == ACL_USER and ident == uid:
            perm = bits
        elif tag == ACL_MASK:
            mask = bits
    return None if perm is None else perm & mask


def _ancestors(path: PurePath) -> list[PurePath]:
    """``/``, ``/home``, ``/home/me`` ... up to the parent of ``path``."""
    return list(reversed(path.parents))


def access_warnings(account: Account, *, traverse_to: Iterable[PurePath],
                    readable: Iterable[PurePath]) -> list[str]:
    """What ``account`` cannot reach: a directory it cannot enter, a file it cannot read."""
    warnings: list[str] = []
    seen: set[PurePath] = set()
    blocked: set[PurePath] = set()
    for target in [*traverse_to, *readable]:
        for d in _ancestors(target):
            if d in blocked:
                break  # already said: one line per directory, not per path behind it
            if d in seen:
                continue
            seen.add(d)
            try:
                st = os.stat(d)
            except OSError:
                break
            if not account.may(d, st, 1):
                blocked.add(d)
                who = owner_name(d) or st.st_uid
                warnings.append(f"{account.name!r} cannot enter {d} (mode "
                                f"{stat.S_IMODE(st.st_mode):04o}, owner {who}),"
                                f" so it cannot reach {target}")
                break
    for f in readable:
        try:
            st = os.stat(f)
        except OSError:
            continue
        if not account.may(f, st, 4):
            warnings.append(f"{account.name!r} cannot read {f} (mode "
                            f"{stat.S_IMODE(st.st_mode):04o}, owner {owner_name(f) or st.st_uid})")
    return warnings


def acl_grants(account: str, *, traverse_to: Iterable[PurePath], readable: Iterable[PurePath],
               writable: Iterable[PurePath]) -> list[list[str]]:
    """The setfacl commands that let ``account`` reach a home install without chown.

    Traverse (x) on each directory from the home down, read on what it reads, and
    read-write (with a default ACL, so new files inherit it) on what it writes.
    """
    steps: list[list[str]] = []
    dirs: list[PurePath] = []
    for target in [*traverse_to, *readable, *writable]:
        home = home_of(target)
        if home is None:
            continue
        for d in _ancestors(target):
            if d.is_relative_to(home) and d not in dirs:
                dirs.append(d)
    if dirs:
        steps.append(["setfacl", "-m", f"u:{account}:x", *map(str, dirs)])
    tree: list[PurePath] = []
    for p in traverse_to:
        if home_of(p) is None:
            continue
        # a venv's interpreter: the whole venv is read (its lib, its pyvenv.cfg)
        root = p.parent.parent if p.parent.name in ("bin", "Scripts") else p
        if root not in tree:
            tree.append(root)
    tree = [p for p in tree if not any(o != p and p.is_relative_to(o) for o in tree)]
    if tree:
        steps.append(["setfacl", "-R", "-m", f"u:{account}:rX", *map(str, tree)])
    files = [str(p) for p in readable if home_of(p) is not None]
    if files:
        steps.append(["setfacl", "-m", f"u:{account}:r", *files])
    rw = [str(p) for p in writable if home_of(p) is not None]
    if rw:
        steps.append(["setfacl", "-R", "-m", f"u:{account}:rwX,d:u:{account}:rwX", *rw])
    return steps


def existing(paths: Iterable[PurePath]) -> list[PurePath]:
    return [p for p in paths if Path(p).exists()]
