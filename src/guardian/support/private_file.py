"""Writing a file that holds a secret (an API token, a service's environment): mode 0600.

The file is created 0600 before a byte is written (never world-readable, not even for a
moment), then moved over the old one, so an existing 0644 copy is replaced, not reused.
On Windows the mode bits mean little; the file inherits its folder's ACL there.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE_MODE = 0o600


def write_private_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` readable and writable by its owner only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, PRIVATE_MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), PRIVATE_MODE)  # a leftover tmp kept its old mode
            fh.write(text.encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
