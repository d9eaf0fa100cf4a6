// node --test: the panel's health handler against a real Guardian API.
// GUARDIAN_URL (healthy stack) and GUARDIAN_UNHEALTHY_URL are real Guardian APIs started
// by tests/deploy/test_nextjs.py; the hostile servers below are real local HTTP servers.
import assert from "node:assert/strict";
import http from "node:http";
import { test } from "node:test";

import { guardianHealth, handleHealth } from "../lib/guardian-health.mjs";

const HEALTHY = process.env.GUARDIAN_URL;
const UNHEALTHY = process.env.GUARDIAN_UNHEALTHY_URL;

function serve(handler) {
  return new Promise((resolve) => {
    const server = http.createServer(handler);
    server.listen(0, "127.0.0.1", () => resolve(server));
  });
}

function urlOf(server) {
  return `http://127.0.0.1:${server.address().port}`;
}

test("answers the plan's shape from Guardian's /api/health", { skip: !HEALTHY }, async () => {
  const resp = await handleHealth();
  assert.equal(resp.status, 200);
  assert.equal(resp.headers.get("content-type"), "application/json");
  const body = await resp.json();
  assert.equal(body.status, "healthy");
  assert.equal(body.overall, "healthy");
  assert.deepEqual(Object.keys(body.services).sort(), ["comfyui", "panel"]);
  assert.equal(body.services.comfyui.status, "running");
  assert.equal(body.services.comfyui.pid, 777);
  assert.equal(body.services.comfyui.restarts, 2);
  assert.equal(body.comfy.online, true);
  assert.equal(body.comfy.version, "0.3.40");
  assert.equal(body.comfy.cuda, true);
  assert.deepEqual(body.comfy.queue, { running: 1, pending: 2 });
  assert.deepEqual(body.comfy.vram, { free_mb: 20000, total_mb: 24563.5 });
  assert.deepEqual(body.system.disks.map((d) => d.path).sort(), ["/", "/data"]);
  assert.equal(body.system.memory.total_mb, 32768);
  assert.equal(body.guardian.reachable, true);
});

test("an unhealthy stack is a 503 with the full body", { skip: !UNHEALTHY }, async () => {
  const { httpStatus, body } = await guardianHealth({ url: UNHEALTHY });
  assert.equal(httpStatus, 503);
  assert.equal(body.status, "unhealthy");
  assert.equal(body.services.comfyui.status, "stopped");
});

test("Guardian not running: unknown, not a guess", async () => {
  const server = await serve(() => {});
  const url = urlOf(server);
  await new Promise((r) => server.close(r)); // the port is now closed
  const { httpStatus, body } = await guardianHealth({ url, timeoutMs: 1000 });
  assert.equal(httpStatus, 503);
  assert.equal(body.status, "unknown");
  assert.equal(body.guardian.reachable, false);
});

test("a Guardian that never answers is cut off by the timeout", async () => {
  const server = await serve(() => {}); // accepts, never responds
  try {
    const { httpStatus, body } = await guardianHealth({ url: urlOf(server), timeoutMs: 200 });
    assert.equal(httpStatus, 503);
    assert.equal(body.status, "unknown");
    assert.match(body.guardian.error, /no answer within 200 ms/);
  } finally {
    server.closeAllConnections();
    server.close();
  }
});

test("malformed, huge or wrong answers are unknown with a reason", async () => {
  const cases = [
    [(req, res) => res.end("<html>not json</html>"), /JSON|Unexpected/],
    [(req, res) => res.end(JSON.stringify({ status: "fine" })), /no status/],
    [(req, res) => { res.statusCode = 401; res.end("{}"); }, /HTTP 401/],
    [(req, res) => res.end("[" + "1,".repeat(700000) + "1]"), /larger than/],
  ];
  for (const [handler, reason] of cases) {
    const server = await serve(handler);
    try {
      const { httpStatus, body } = await guardianHealth({ url: urlOf(server), timeoutMs: 2000 });
      assert.equal(httpStatus, 503);
      assert.equal(body.status, "unknown");
      assert.match(body.guardian.error, reason);
    } finally {
      server.close();
    }
  }
});
