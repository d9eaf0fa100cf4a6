"""httpx without its command line, imported only where httpx does the work (https targets).

httpx's ``__init__`` imports ``httpx._main``, its own CLI (click, rich, pygments: ~6 MiB
and ~60 ms), whenever those are installed, as they are for Guardian's CLI. Guardian never
runs httpx's CLI, so before httpx is first imported that one submodule is marked absent
(``None`` in ``sys.modules`` makes its import fail, which httpx expects and answers with
a stub ``httpx.main``). Plain-http checks and ComfyUI need no httpx at all (``checks.httpwire``).
"""

from __future__ import annotations

import sys

if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import httpx

__all__ = ["httpx"]
