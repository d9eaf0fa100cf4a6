"""Writing a file that holds a secret (an API token, a service's environment): mode 0600.

The file is created 0600 before a byte is written (never world-readable, not even for a
moment) under an unguessable temporary name, then renamed over the old one within its
directory, so an existing 0644 copy is replaced, not reused, and a link planted at the
name is replaced rather than written through (:mod:`guardian.support.safe_open`).
On Windows the mode bits mean little; the file inherits its folder's ACL there.
"""

from __future__ import annotations

from pathlib import Path

from guardian.support.safe_open import write_atomic_text

PRIVATE_MODE = 0o600


def write_private_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` readable and writable by its owner only."""
    write_atomic_text(path, text, PRIVATE_MODE)
