// Guardian status page: polls /api/status (every refresh), /api/incidents (every 5 s) and
// /api/uptime (every 30 s) and updates the DOM in place.
// Only text nodes are ever written from API data (no innerHTML), so a hostile reason
// string cannot inject markup.
"use strict";

(function () {
  const params = new URLSearchParams(window.location.search);
  const requested = parseFloat(params.get("refresh") || "2");
  const refreshMs = Math.round(Math.min(300, Math.max(0.2, isFinite(requested) ? requested : 2)) * 1000);
  const incidentsMs = Math.max(refreshMs, 5000);
  const uptimeMs = Math.max(refreshMs, 30000);
  const TOKEN_KEY = "guardian.token";
  const SVG = "http://www.w3.org/2000/svg";
  const cards = new Map();
  const STATE_CLASSES = ["ok", "degraded", "failed", "skipped", "unknown", "healthy", "unhealthy"];
  const WINDOWS = ["24h", "7d", "30d"];
  let uptime = null;

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function setState(node, state) {
    node.classList.remove(...STATE_CLASSES);
    node.classList.add(STATE_CLASSES.includes(state) ? state : "unknown");
    node.dataset.status = state;
  }

  // Every time in the viewer's own time zone, and the zone said once in the header.
  const ZONE = (Intl.DateTimeFormat().resolvedOptions().timeZone || "local time");
  const HM = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const DAY = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });

  function zoneLabel() {
    const parts = new Intl.DateTimeFormat(undefined, { timeZoneName: "short" }).formatToParts(new Date());
    const short = (parts.find((p) => p.type === "timeZoneName") || {}).value || "";
    return short && short !== ZONE ? `${ZONE} (${short})` : ZONE;
  }

  function time(iso) {
    return iso ? HM.format(new Date(iso)) : "";
  }

  function when(iso) {
    return iso ? DAY.format(new Date(iso)) : "";
  }

  // "12 s ago", "5 min ago": how fresh a reading is, against the server's clock.
  let serverSkewMs = 0;
  function ago(iso) {
    if (!iso) return "never";
    const s = (Date.now() + serverSkewMs - Date.parse(iso)) / 1000;
    return s < 1 ? "just now" : `${seconds(s)} ago`;
  }

  function seconds(s) {
    s = Math.max(0, Math.round(Number(s) || 0));
    if (s < 120) return `${s} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }

  function pct(p) {
    if (p === null || p === undefined) return "–";
    if (p >= 99.995) return "100%";
    return `${p >= 99 ? p.toFixed(2) : p.toFixed(1)}%`;
  }

  function sparkline(history) {
    const w = 96, h = 20, pad = 2;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("width", w);
    svg.setAttribute("height", h);
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    if (!history.length) return svg;
    const max = Math.max(...history.map((p) => p.duration), 1e-6);
    const step = history.length > 1 ? (w - 2 * pad) / (history.length - 1) : 0;
    const xy = history.map((p, i) => [pad + i * step, h - pad - (p.duration / max) * (h - 2 * pad)]);
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "));
    svg.appendChild(line);
    history.forEach((p, i) => {
      if (p.status === "failed" || p.status === "degraded") {
        const c = document.createElementNS(SVG, "circle");
        c.setAttribute("cx", xy[i][0].toFixed(1));
        c.setAttribute("cy", xy[i][1].toFixed(1));
        c.setAttribute("r", "2.2");
        c.setAttribute("class", p.status);
        svg.appendChild(c);
      }
    });
    const title = document.createElementNS(SVG, "title");
    title.textContent = `last ${history.length} runs, max ${(max * 1000).toFixed(1)} ms`;
    svg.appendChild(title);
    return svg;
  }

  function meter(label, used, total, text, warnAt) {
    const row = el("div", "meter");
    row.dataset.meter = label;
    const share = total > 0 ? Math.min(1, Math.max(0, used / total)) : 0;
    const track = el("span", "track");
    const fill = el("span", "fill");
    fill.style.width = `${(share * 100).toFixed(1)}%`;
    if (share >= (warnAt || 0.9)) fill.classList.add("high");
    track.append(fill);
    track.setAttribute("role", "meter");
    track.setAttribute("aria-valuemin", "0");
    track.setAttribute("aria-valuemax", String(total));
    track.setAttribute("aria-valuenow", String(used));
    track.setAttribute("aria-label", label);
    row.append(el("span", "mlabel", label), track, el("span", "mtext", text));
    return row;
  }

  function gb(mb) {
    return mb >= 1024 ? `${(mb / 1024).toFixed(1)} GB` : `${Math.round(mb)} MB`;
  }

  // The figures behind a check: ComfyUI's queue, VRAM and RAM; disk and memory use.
  function figures(chk) {
    const v = chk.values || {};
    const out = [];
    const n = (k) => (typeof v[k] === "number" ? v[k] : null);
    if (chk.kind === "comfyui") {
      const running = n("queue_running"), pending = n("queue_pending");
      if (running !== null || pending !== null) {
        const q = el("div", "queue");
        q.dataset.queue = "";
        const age = v.busy === true && n("running_for_s") !== null ? ` · running ${seconds(v.running_for_s)}` : "";
        q.append(el("strong", "", `${running || 0}`), document.createTextNode(" running · "),
          el("strong", "", `${pending || 0}`), document.createTextNode(` pending${age}`));
        out.push(q);
      }
      for (let i = 0; n(`vram_total_mb.${i}`) !== null; i++) {
        const total = n(`vram_total_mb.${i}`), free = n(`vram_free_mb.${i}`) || 0;
        out.push(meter(i ? `VRAM ${i}` : "VRAM", total - free, total, `${gb(total - free)} of ${gb(total)}`));
      }
      if (n("ram_total_mb") !== null) {
        const total = n("ram_total_mb"), free = n("ram_free_mb") || 0;
        out.push(meter("RAM", total - free, total, `${gb(total - free)} of ${gb(total)}`));
      }
    } else if (chk.kind === "memory" && n("total_mb") !== null) {
      const total = n("total_mb"), avail = n("available_mb") || 0;
      out.push(meter("memory", total - avail, total, `${gb(avail)} free of ${gb(total)}`));
    } else if (chk.kind === "disk") {
      Object.keys(v).filter((k) => k.startsWith("total_gb.")).forEach((k) => {
        const path = k.slice("total_gb.".length);
        const total = n(k), free = n(`free_gb.${path}`) || 0;
        out.push(meter(path, total - free, total, `${free.toFixed(1)} GB free of ${total.toFixed(0)} GB`));
      });
    } else if (chk.kind === "gpu") {
      Object.keys(v).filter((k) => /^gpu\d+\.vram_total_mb$/.test(k)).forEach((k) => {
        const p = k.slice(0, k.indexOf(".") + 1);
        const total = n(k), used = n(`${p}vram_used_mb`) || 0;
        const extra = [n(`${p}util_percent`) !== null ? `${n(`${p}util_percent`)}% busy` : "",
          n(`${p}temp_c`) !== null ? `${n(`${p}temp_c`)} °C` : ""].filter(Boolean).join(" · ");
        out.push(meter(`GPU ${p.slice(3, -1)}`, used, total,
          `${gb(used)} of ${gb(total)}${extra ? " · " + extra : ""}`, 0.95));
      });
    }
    return out;
  }

  // What a person needs at a glance, from the cross-team result values.
  function badges(t) {
    const out = [];
    const r = t.recovery || {};
    // One busy badge per prompt, however many checks saw it (the comfyui check and the
    // canary that skipped for it), with the longest time any of them measured.
    const busy = new Map();
    for (const chk of t.checks) {
      const v = chk.values || {};
      if (v.busy === true) {
        const key = String(v.running_prompt_id || "");
        busy.set(key, Math.max(busy.get(key) || 0, Number(v.running_for_s) || 0));
      }
    }
    busy.forEach((secs, id) => out.push(["busy", `busy${id ? " " + id.slice(0, 8) : ""} · ${seconds(secs)}`]));
    for (const chk of t.checks) {
      const v = chk.values || {};
      if (typeof v.condition === "string" && v.condition) {
        out.push([v.condition.startsWith("stuck") ? "stuck" : "condition", v.condition.replace("_", " ")]);
      }
      if (chk.startup) out.push(["startup", "starting up"]);
    }
    const q = t.queue;
    if (q) {
      let text = `queue ${q.running} running · ${q.pending} pending · ${q.journaled} journaled`;
      if (q.restore_total) text += ` · restored ${q.restored} of ${q.restore_total}`;
      out.push(["queue", text]);
      if (q.restore_due) out.push(["restarting", "restore due"]);
      if (q.quarantined) out.push(["breaker", `${q.quarantined} quarantined`]);
    }
    if (r.restarting) out.push(["restarting", "restarting"]);
    if (r.breaker_open) out.push(["breaker", "breaker open"]);
    const seen = new Set();
    return out.filter(([k, text]) => (seen.has(k + text) ? false : seen.add(k + text)));
  }

  function card(name) {
    let c = cards.get(name);
    if (c) return c;
    const root = el("article", "card");
    root.dataset.target = name;
    const head = el("div", "card-head");
    const title = el("span", "name", name);
    const pill = el("span", "pill unknown", "unknown");
    const flags = el("span", "badges");
    const button = el("button", "restart", "Restart");
    button.type = "button";
    button.hidden = true;
    button.addEventListener("click", () => restart(name, c));
    head.append(title, pill, flags, button);
    const reason = el("div", "reason");
    reason.title = "click to show all";
    reason.addEventListener("click", () => reason.classList.toggle("expanded"));
    const up = el("div", "uptime");
    const bar = el("div", "bar");
    bar.setAttribute("role", "img");
    const figs = el("div", "figures");
    const recovery = el("div", "recovery");
    const checks = el("ul", "checks");
    const msg = el("div", "msg");
    msg.setAttribute("role", "status");
    root.append(head, reason, figs, up, bar, recovery, checks, msg);
    document.getElementById("targets").appendChild(root);
    c = { root, pill, flags, button, reason, figs, up, bar, recovery, checks, msg };
    cards.set(name, c);
    renderUptime(name, c);
    return c;
  }

  function renderUptime(name, c) {
    const u = uptime && uptime.targets ? uptime.targets[name] : null;
    if (!u) {
      c.up.replaceChildren(el("span", "muted", uptime === null ? "uptime: loading…" : "uptime: not recorded"));
      c.bar.replaceChildren();
      c.bar.hidden = true;
      return;
    }
    const WINDOW_MS = { "24h": 864e5, "7d": 6048e5, "30d": 2592e6 };
    const sinceMs = u.since ? Date.parse(u.since) : null;
    let short = false;
    const spans = WINDOWS.map((w) => {
      const info = u.windows[w] || { percent: null, ok: 0, total: 0 };
      const span = el("span", "window");
      span.dataset.window = w;
      span.append(el("span", "muted", `${w} `), el("strong", "", pct(info.percent)));
      span.title = `${info.ok} of ${info.total} results up`;
      // A window reaching back before the oldest data counts only from there: marked, and
      // the date said once for all of them (the windows nest, so they share it).
      if (sinceMs !== null && Date.parse(uptime.timestamp) - WINDOW_MS[w] < sinceMs) {
        const mark = el("span", "since muted", "*");
        mark.dataset.since = u.since;
        span.append(mark);
        span.title += ` since ${when(u.since)}`;
        short = true;
      }
      return span;
    });
    if (short) spans.push(el("span", "since-note muted", `* since ${when(u.since)}`));
    c.up.replaceChildren(...spans);
    c.bar.hidden = false;
    c.bar.setAttribute("aria-label", "last 24 hours");
    // Bars come as arrays (slot i starts at start + i * seconds): small for many targets.
    const b = u.bars;
    const first = Date.parse(b.start);
    c.bar.replaceChildren(
      ...b.total.map((total, i) => {
        const ok = b.ok[i];
        const restarts = b.restarts[i];
        const start = new Date(first + i * b.seconds * 1000).toISOString();
        const s = el("span", "slot");
        let cls = "none";
        if (total) cls = ok === total ? "up" : ok === 0 ? "down" : "partial";
        s.classList.add(cls);
        const tail = restarts ? `, ${restarts} restart(s)` : "";
        s.title = total
          ? `${time(start)}: ${pct((100 * ok) / total)} (${ok}/${total})${tail}`
          : `${time(start)}: no data${tail}`;
        return s;
      }),
    );
  }

  function recoveryText(t) {
    const r = t.recovery;
    if (!r) return t.critical ? "" : "non-critical";
    const u = uptime && uptime.targets ? uptime.targets[t.name] : null;
    const parts = [];
    if (u && u.windows["24h"]) parts.push(`restarts 24h: ${u.windows["24h"].restarts}`);
    if (u && u.windows["7d"]) parts.push(`7d: ${u.windows["7d"].restarts}`);
    if (r.attempts) parts.push(`${r.attempts} attempt(s) in the breaker window`);
    if (r.last_restart) parts.push(`last restart ${when(r.last_restart)}`);
    if (r.breaker_open) parts.push("breaker OPEN: automatic restarts stopped — Restart resets it");
    return parts.join(" · ");
  }

  function renderTarget(t) {
    const c = card(t.name);
    setState(c.root, t.status);
    setState(c.pill, t.status);
    c.pill.textContent = t.status;
    c.reason.textContent = t.reason || "";
    c.button.hidden = !t.has_service;
    c.flags.replaceChildren(
      ...badges(t).map(([kind, text]) => {
        const b = el("span", `badge ${kind}`, text);
        b.dataset.badge = kind;
        return b;
      }),
    );
    c.recovery.textContent = recoveryText(t);
    c.recovery.classList.toggle("breaker", !!(t.recovery && t.recovery.breaker_open));
    c.figs.replaceChildren(...t.checks.flatMap(figures));
    c.figs.hidden = !c.figs.childElementCount;
    const rows = t.checks.map((chk) => {
      const li = el("li", "check");
      li.dataset.check = chk.check;
      const dot = el("span", "dot");
      setState(dot, chk.status);
      dot.title = chk.status;
      const line = el("div", "line");
      const last = el("span", "last muted", ago(chk.finished));
      last.dataset.finished = chk.finished || "";
      last.title = chk.finished ? `last run ${when(chk.finished)}` : "not run yet";
      line.append(
        dot,
        el("span", "cname", chk.check),
        last,
        el("span", "ms", `${(chk.duration * 1000).toFixed(0)} ms`),
        sparkline(chk.history || []),
      );
      li.append(line);
      // The target's reason already quotes its failing checks: don't say it twice.
      const quoted = (t.reason || "").includes(`${chk.check}: ${chk.reason}`);
      if (chk.reason && !quoted) li.append(el("div", "why", chk.reason));
      return li;
    });
    c.checks.replaceChildren(...rows);
  }

  const KIND_LABEL = {
    opened: "opened",
    escalated: "escalated",
    resolved: "resolved",
    restart_started: "restart started",
    restart_succeeded: "restart succeeded",
    restart_failed: "restart failed",
    dry_run: "restart (dry run)",
    breaker_open: "breaker opened",
    breaker_reset: "breaker reset",
    exited: "process exited",
    remediation_started: "remediation started",
    interrupt_sent: "interrupt sent",
    free_sent: "free sent",
    remediation_succeeded: "remediation succeeded",
    remediation_failed: "remediation failed",
  };

  function incidentDetails(i) {
    const d = el("details", "incident");
    d.dataset.incident = String(i.id);
    d.dataset.status = i.status;
    d.open = i.status !== "resolved";
    const s = el("summary");
    const pill = el("span", "pill " + ({ escalated: "failed", resolved: "ok" }[i.status] || "degraded"), i.status);
    s.append(pill, el("strong", "", ` #${i.id} ${i.target}`), document.createTextNode(` ${i.summary || ""}`));
    s.append(el("span", "muted", ` · ${when(i.opened_at)}${i.resolved_at ? " – " + when(i.resolved_at) : ""}`));
    d.append(s);
    const ol = el("ol", "timeline");
    (i.timeline || []).forEach((e) => {
      const li = el("li", `ev ${e.kind}`);
      li.dataset.kind = e.kind;
      li.append(el("time", "muted", time(e.time)), el("span", "what", KIND_LABEL[e.kind] || e.kind));
      const extra = [e.attempt ? `#${e.attempt}` : "", e.reason || "", e.detail || ""].filter(Boolean).join(" · ");
      if (extra) li.append(el("span", "detail", extra));
      ol.append(li);
    });
    d.append(ol);
    if (i.report_path) {
      const a = el("a", "report", "report");
      a.href = `/incidents/${encodeURIComponent(i.id)}/report`;
      d.append(a);
    }
    return d;
  }

  // The same cause again and again is one row: target plus the summary with its numbers
  // (ids, seconds, counts) taken out.
  function causeOf(i) {
    return `${i.target}\u0000${String(i.summary || "").replace(/[0-9a-f]{8}-[0-9a-f-]{27,}/gi, "#").replace(/\d+(\.\d+)?/g, "#")}`;
  }

  const PAGE = 8;
  let incidentPage = 0;
  let lastIncidents = [];

  function renderIncidents(list) {
    lastIncidents = list;
    const box = document.getElementById("incidents");
    box.dataset.state = "loaded";
    if (!list.length) {
      box.replaceChildren(el("p", "muted", "no incidents recorded"));
      return;
    }
    const open = list.filter((i) => i.status !== "resolved");
    const groups = new Map();
    list.filter((i) => i.status === "resolved").forEach((i) => {
      const key = causeOf(i);
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(i);
    });
    const grouped = [...groups.values()];
    const pages = Math.max(1, Math.ceil(grouped.length / PAGE));
    incidentPage = Math.min(incidentPage, pages - 1);
    const shown = grouped.slice(incidentPage * PAGE, (incidentPage + 1) * PAGE);
    const parts = [el("p", "muted", open.length ? `${open.length} open` : "none open"), ...open.map(incidentDetails)];
    if (grouped.length) {
      const resolvedCount = list.length - open.length;
      parts.push(el("h3", "resolved-head", `Resolved: ${resolvedCount} incident${resolvedCount === 1 ? "" : "s"}, ${grouped.length} cause${grouped.length === 1 ? "" : "s"}`));
      shown.forEach((g) => {
        const latest = g[0];
        if (g.length === 1) {
          parts.push(incidentDetails(latest));
          return;
        }
        const d = el("details", "incident group");
        d.dataset.group = String(g.length);
        const s = el("summary");
        s.append(el("span", "pill ok", `${g.length}×`), el("strong", "", ` ${latest.target}`),
          document.createTextNode(` ${latest.summary || ""}`),
          el("span", "muted", ` · last ${when(latest.opened_at)}, first ${when(g[g.length - 1].opened_at)}`));
        d.append(s, ...g.map(incidentDetails));
        parts.push(d);
      });
      if (pages > 1) {
        const nav = el("nav", "pager");
        const prev = el("button", "", "newer");
        const next = el("button", "", "older");
        prev.type = next.type = "button";
        prev.disabled = incidentPage === 0;
        next.disabled = incidentPage >= pages - 1;
        prev.addEventListener("click", () => { incidentPage -= 1; renderIncidents(lastIncidents); });
        next.addEventListener("click", () => { incidentPage += 1; renderIncidents(lastIncidents); });
        nav.append(prev, el("span", "muted", `page ${incidentPage + 1} of ${pages}`), next);
        parts.push(nav);
      }
    }
    // Keep what the reader opened or closed across refreshes.
    const wasOpen = new Map([...box.querySelectorAll("details[data-incident]")].map((d) => [d.dataset.incident, d.open]));
    box.replaceChildren(...parts);
    box.querySelectorAll("details[data-incident]").forEach((d) => {
      if (wasOpen.has(d.dataset.incident)) d.open = wasOpen.get(d.dataset.incident);
    });
  }

  // The header never says a bare HEALTHY while an incident or a breaker is open.
  function renderHeader(data) {
    const overall = document.getElementById("overall");
    setState(overall, data.status);
    const open = (data.incidents_open || []).length;
    const breakers = data.targets.filter((t) => t.recovery && t.recovery.breaker_open).map((t) => t.name);
    const notes = [];
    if (open) notes.push(`${open} open incident${open === 1 ? "" : "s"}`);
    if (breakers.length) notes.push(`breaker open: ${breakers.join(", ")}`);
    const attention = document.getElementById("attention");
    attention.textContent = notes.join(" · ");
    attention.hidden = !notes.length;
    attention.classList.toggle("bad", breakers.length > 0);
    // Every check passing is not "healthy" while Guardian still has something open.
    const caveat = data.status === "healthy" && notes.length > 0;
    overall.textContent = !caveat ? data.status : breakers.length ? "breaker open" : "incident open";
    overall.title = caveat ? "every check passes now; see the note beside" : "";
    overall.classList.toggle("attention", caveat);
    document.getElementById("updated").textContent =
      `updated ${time(data.timestamp)} · refresh ${refreshMs / 1000}s`;
    document.getElementById("zone").textContent = `times in ${zoneLabel()}`;
  }

  function render(data) {
    serverSkewMs = Date.parse(data.timestamp) - Date.now();
    renderHeader(data);
    const names = new Set();
    data.targets.forEach((t) => {
      names.add(t.name);
      renderTarget(t);
    });
    for (const [name, c] of cards) {
      if (!names.has(name)) {
        c.root.remove();
        cards.delete(name);
      }
    }
    document.getElementById("targets").setAttribute("aria-busy", "false");
  }

  function banner(text) {
    const b = document.getElementById("banner");
    b.textContent = text || "";
    b.hidden = !text;
  }

  async function getJson(path) {
    const resp = await fetch(path, { cache: "no-store" });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    return resp.json();
  }

  let lastStatus = null;
  async function poll() {
    try {
      lastStatus = await getJson("/api/status");
      render(lastStatus);
      banner("");
    } catch (e) {
      banner(`Guardian unreachable: ${e.message}. Showing the last known state.`);
    } finally {
      window.setTimeout(poll, refreshMs);
    }
  }

  async function pollIncidents() {
    try {
      renderIncidents((await getJson("/api/incidents?all=true&limit=200")).incidents || []);
    } catch (e) {
      const box = document.getElementById("incidents");
      if (box.dataset.state === "loading") {
        box.dataset.state = "error";
        box.replaceChildren(el("p", "error", `incidents unavailable: ${e.message}`));
      }
    } finally {
      window.setTimeout(pollIncidents, incidentsMs);
    }
  }

  async function pollUptime() {
    try {
      uptime = await getJson("/api/uptime");
    } catch (e) {
      uptime = { targets: {} };
    } finally {
      for (const [name, c] of cards) renderUptime(name, c);
      if (lastStatus) lastStatus.targets.forEach((t) => {
        const c = cards.get(t.name);
        if (c) c.recovery.textContent = recoveryText(t);
      });
      window.setTimeout(pollUptime, uptimeMs);
    }
  }

  async function restart(name, c) {
    const token = document.getElementById("token").value.trim();
    c.button.disabled = true;
    c.msg.classList.remove("error");
    c.msg.textContent = `restarting ${name}…`;
    try {
      const headers = token ? { Authorization: `Bearer ${token}` } : {};
      const resp = await fetch(`/api/targets/${encodeURIComponent(name)}/restart`, {
        method: "POST",
        headers,
      });
      const body = await resp.json().catch(() => ({}));
      if (!resp.ok) throw new Error(body.detail || `HTTP ${resp.status}`);
      c.msg.textContent = body.message || "restart requested";
    } catch (e) {
      c.msg.classList.add("error");
      c.msg.textContent = `restart failed: ${e.message}`;
    } finally {
      c.button.disabled = false;
    }
  }

  const tokenInput = document.getElementById("token");
  tokenInput.value = window.sessionStorage.getItem(TOKEN_KEY) || "";
  tokenInput.addEventListener("input", () => window.sessionStorage.setItem(TOKEN_KEY, tokenInput.value));
  pollUptime();
  poll();
  pollIncidents();
})();
