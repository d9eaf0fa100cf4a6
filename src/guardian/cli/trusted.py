"""The directories and files a Guardian running a config trusts, checked before it starts.

See :mod:`guardian.support.trust` for the rule; this module knows which paths a config
makes Guardian act on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from guardian.config.schema import Config
from guardian.store.lock import lock_path_for
from guardian.store.runfile import runtime_path
from guardian.support.trust import CHECKED, Untrusted, untrusted_dir, untrusted_file


def trusted_files(cfg: Config) -> list[Path]:
    """The files Guardian acts on: the store, its lock, the runtime file, process records."""
    store = cfg.store_path
    files = [store, store.with_name(store.name + "-wal"), store.with_name(store.name + "-shm"),
             lock_path_for(store), runtime_path(cfg)]
    with contextlib.suppress(OSError):
        files.extend(sorted(cfg.guardian.state_dir.glob("process-*.json")))
    return files


def verify_start(
    cfg: Config, inspect_dir: Callable[[Path], Untrusted | None] = untrusted_dir
) -> list[Untrusted]:
    """Every problem with the directories and files Guardian would trust; [] when none.

    ``inspect_dir`` may bound the time a directory on a hung mount takes to answer.
    """
    if not CHECKED:
        return []
    g = cfg.guardian
    problems: list[Untrusted] = []
    seen: set[Path] = set()
    for d in (g.state_dir, g.log_dir, g.report_dir, cfg.store_path.parent):
        if d in seen:
            continue
        seen.add(d)
        found = inspect_dir(d)
        if found is not None and found not in problems:
            problems.append(found)
    for f in trusted_files(cfg):
        found = untrusted_file(f)
        if found is not None:
            problems.append(found)
    return problems
