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

  function time(iso) {
    return iso ? new Date(iso).toLocaleTimeString() : "";
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : "";
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

  // What a person needs at a glance, from the cross-team result values.
  function badges(t) {
    const out = [];
    const r = t.recovery || {};
    for (const chk of t.checks) {
      const v = chk.values || {};
      if (v.busy === true) {
        const id = v.running_prompt_id ? ` ${String(v.running_prompt_id).slice(0, 8)}` : "";
        out.push(["busy", `busy${id} · ${seconds(v.running_for_s)}`]);
      }
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
    const recovery = el("div", "recovery");
    const checks = el("ul", "checks");
    const msg = el("div", "msg");
    msg.setAttribute("role", "status");
    root.append(head, reason, up, bar, recovery, checks, msg);
    document.getElementById("targets").appendChild(root);
    c = { root, pill, flags, button, reason, up, bar, recovery, checks, msg };
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
    c.up.replaceChildren(
      ...WINDOWS.map((w) => {
        const info = u.windows[w] || { percent: null, ok: 0, total: 0 };
        const span = el("span", "window");
        span.dataset.window = w;
        span.append(el("span", "muted", `${w} `), el("strong", "", pct(info.percent)));
        span.title = `${info.ok} of ${info.total} results up`;
        return span;
      }),
    );
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
    const rows = t.checks.map((chk) => {
      const li = el("li", "check");
      li.dataset.check = chk.check;
      const dot = el("span", "dot");
      setState(dot, chk.status);
      dot.title = chk.status;
      const line = el("div", "line");
      line.append(
        dot,
        el("span", "cname", chk.check),
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

  function renderIncidents(list) {
    const box = document.getElementById("incidents");
    box.dataset.state = "loaded";
    if (!list.length) {
      box.replaceChildren(el("p", "muted", "no incidents recorded"));
      return;
    }
    const open = list.filter((i) => i.status !== "resolved");
    const head = el("p", "muted", open.length ? `${open.length} open` : "none open");
    box.replaceChildren(
      head,
      ...list.map((i) => {
        const d = el("details", "incident");
        d.dataset.incident = String(i.id);
        d.dataset.status = i.status;
        d.open = i.status !== "resolved";
        const s = el("summary");
        const pill = el("span", "pill " + ({ escalated: "failed", resolved: "ok" }[i.status] || "degraded"), i.status);
        s.append(pill, el("strong", "", ` #${i.id} ${i.target}`), document.createTextNode(` ${i.summary || ""}`));
        s.append(el("span", "muted", ` · ${when(i.opened_at)}`));
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
      }),
    );
  }

  function render(data) {
    const overall = document.getElementById("overall");
    setState(overall, data.status);
    overall.textContent = data.status;
    document.getElementById("updated").textContent =
      `updated ${time(data.timestamp)} · refresh ${refreshMs / 1000}s`;
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
      renderIncidents((await getJson("/api/incidents?all=true&limit=20")).incidents || []);
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
