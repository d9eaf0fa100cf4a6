// The admin panel's /api/health, answered from Guardian's cached /api/health.
//
// Replaces a route that ran `sc query` and `wmic` on every request: no shell, no child
// process, one HTTP GET to Guardian on loopback with a short timeout. Guardian never runs a
// check to answer it (it serves its cached results), so the panel's health route costs
// about a millisecond and cannot hang on a dead ComfyUI.
//
// Plain JavaScript with JSDoc types so Node's own test runner can import exactly this file;
// app/api/health/route.ts is a two-line wrapper around `handleHealth`.

/** @typedef {"healthy"|"degraded"|"unhealthy"|"unknown"} Overall */

export const DEFAULT_GUARDIAN_URL = "http://127.0.0.1:8787";
export const DEFAULT_TIMEOUT_MS = 1500;
export const MAX_BODY_BYTES = 1024 * 1024;

const OVERALL = new Set(["healthy", "degraded", "unhealthy"]);

function obj(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v) ? v : {};
}

function num(v) {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

function str(v) {
  return typeof v === "string" ? v : null;
}

/**
 * Map Guardian's /api/health body to the panel's shape: status/overall, services, comfy,
 * system (plus guardian: where the answer came from).
 * @param {unknown} body
 * @param {string} url
 */
export function toPanelHealth(body, url) {
  const g = obj(body);
  /** @type {Overall} */
  const overall = OVERALL.has(g.status) ? g.status : "unknown";
  const services = {};
  for (const [name, raw] of Object.entries(obj(g.services))) {
    const s = obj(raw);
    const state = str(s.state) ?? "unknown";
    services[name] = {
      status: ["running", "up"].includes(state) ? "running" : state,
      state,
      pid: num(s.pid),
      restarts: num(s.restarts) ?? 0,
      breaker_open: s.breaker_open === true,
      last_restart: str(s.last_restart),
    };
  }
  const c = g.comfyui === null || g.comfyui === undefined ? null : obj(g.comfyui);
  const devices = c && Array.isArray(c.devices) ? c.devices.map(obj) : [];
  const comfy = c === null ? null : {
    online: c.online === true,
    status: str(c.status) ?? "unknown",
    reason: str(c.reason) ?? "",
    version: str(c.version),
    cuda: c.cuda === true,
    queue: { running: num(obj(c.queue).running), pending: num(obj(c.queue).pending) },
    vram: devices.length ? {
      free_mb: num(devices[0].vram_free_mb),
      total_mb: num(devices[0].vram_total_mb),
    } : null,
    devices: devices.map((d) => ({
      index: str(d.index), name: str(d.name), type: str(d.type),
      vram_free_mb: num(d.vram_free_mb), vram_total_mb: num(d.vram_total_mb),
    })),
    checked_at: str(c.checked_at),
  };
  const sys = obj(g.system);
  const system = {
    disks: Array.isArray(sys.disks) ? sys.disks.map(obj).map((d) => ({
      path: str(d.path), free_gb: num(d.free_gb), total_gb: num(d.total_gb),
      free_percent: num(d.free_percent),
    })) : [],
    memory: sys.memory ? {
      available_mb: num(obj(sys.memory).available_mb), total_mb: num(obj(sys.memory).total_mb),
      used_percent: num(obj(sys.memory).used_percent),
    } : null,
    gpus: Array.isArray(sys.gpus) ? sys.gpus.map(obj) : [],
  };
  const guardian = obj(g.guardian);
  return {
    status: overall,
    overall,
    timestamp: str(g.timestamp) ?? new Date().toISOString(),
    services,
    comfy,
    system,
    guardian: {
      reachable: true,
      url,
      ok: guardian.ok !== false,
      problems: obj(guardian.problems),
      uptime_seconds: num(g.uptime_seconds),
    },
  };
}

/** The answer when Guardian cannot be asked: say so, never guess the stack's health. */
export function unreachable(url, error) {
  return {
    status: "unknown",
    overall: "unknown",
    timestamp: new Date().toISOString(),
    services: {},
    comfy: null,
    system: { disks: [], memory: null, gpus: [] },
    guardian: { reachable: false, url, error: String(error) },
  };
}

async function readLimited(resp, limit) {
  const reader = resp.body?.getReader();
  if (!reader) return "";
  const chunks = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel();
      throw new Error(`Guardian's answer is larger than ${limit} bytes`);
    }
    chunks.push(value);
  }
  return new TextDecoder().decode(Buffer.concat(chunks));
}

/**
 * Ask Guardian once. Never throws: an unreachable, slow or malformed Guardian gives
 * status "unknown" with the reason.
 * @param {{url?: string, timeoutMs?: number, fetchImpl?: typeof fetch}} [opts]
 * @returns {Promise<{httpStatus: number, body: ReturnType<typeof toPanelHealth> | ReturnType<typeof unreachable>}>}
 */
export async function guardianHealth(opts = {}) {
  const base = (opts.url ?? process.env.GUARDIAN_URL ?? DEFAULT_GUARDIAN_URL).replace(/\/+$/, "");
  const envTimeout = Number(process.env.GUARDIAN_HEALTH_TIMEOUT_MS);
  const timeoutMs = opts.timeoutMs ?? (envTimeout > 0 ? envTimeout : DEFAULT_TIMEOUT_MS);
  const url = `${base}/api/health`;
  const doFetch = opts.fetchImpl ?? fetch;
  try {
    const signal = AbortSignal.timeout(timeoutMs);
    const resp = await doFetch(url, { signal, cache: "no-store", redirect: "error",
      headers: { accept: "application/json" } });
    // 503 is Guardian's "unhealthy" and still carries the full body.
    if (resp.status !== 200 && resp.status !== 503) {
      throw new Error(`Guardian answered HTTP ${resp.status}`);
    }
    const text = await readLimited(resp, MAX_BODY_BYTES);
    const body = toPanelHealth(JSON.parse(text), base);
    if (body.status === "unknown") throw new Error("Guardian's answer has no status");
    return { httpStatus: body.status === "unhealthy" ? 503 : 200, body };
  } catch (e) {
    const why = e && e.name === "TimeoutError" ? `no answer within ${timeoutMs} ms` : e?.message ?? e;
    return { httpStatus: 503, body: unreachable(base, why) };
  }
}

/** The route handler body: a Response (Web API), as App Router route handlers return. */
export async function handleHealth(opts = {}) {
  const { httpStatus, body } = await guardianHealth(opts);
  return new Response(JSON.stringify(body), {
    status: httpStatus,
    headers: { "content-type": "application/json", "cache-control": "no-store" },
  });
}
