"""The panel's drop-in /api/health route (deploy/nextjs) against real Guardian APIs.

Node's own test runner imports the handler module itself (deploy/nextjs/lib/
guardian-health.mjs, which route.ts wraps) and calls it against two real uvicorn-served
Guardian APIs started here. Skipped cleanly without ``node`` (.ci/run installs Debian's).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from guardian.api.app import create_app, serve
from guardian.core.result import Status
from testkit.api import healthy_results, make_view, result

NEXTJS = Path(__file__).resolve().parents[2] / "deploy" / "nextjs"
NODE = shutil.which("node")


def test_route_is_a_thin_wrapper_without_shell() -> None:
    route = (NEXTJS / "app" / "api" / "health" / "route.ts").read_text(encoding="utf-8")
    assert 'from "../../../lib/guardian-health.mjs"' in route
    assert "handleHealth()" in route
    for source in (route, (NEXTJS / "lib" / "guardian-health.mjs").read_text(encoding="utf-8")):
        assert not re.search(r"child_process|\bexec(Sync|File)?\(|spawn|wmic|sc(\.exe)? query",
                             source.split("\n", 12)[-1])  # code, past the header comment


@pytest.mark.slow
@pytest.mark.skipif(NODE is None, reason="no node")
async def test_node_test_runner_against_real_guardian() -> None:
    assert NODE is not None
    healthy = await serve(create_app(make_view()), "127.0.0.1", 0)
    down = [r for r in healthy_results() if r.target != "comfyui"] + [
        result("comfyui", "service", Status.FAILED, "service stopped",
               values={"state": "stopped"}),
    ]
    unhealthy = await serve(create_app(make_view(results=down)), "127.0.0.1", 0)
    try:
        env = {**os.environ, "GUARDIAN_URL": healthy.url, "GUARDIAN_UNHEALTHY_URL": unhealthy.url}
        proc = await asyncio.create_subprocess_exec(
            NODE, "--test", str(NEXTJS / "test" / "health.test.mjs"), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        await healthy.stop()
        await unhealthy.stop()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    assert re.search(r"# pass 5\b", text), text
    assert re.search(r"# skipped 0\b", text), text
    print(text, file=sys.stderr)
