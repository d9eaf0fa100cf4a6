// Guardian status page: polls /api/status and updates the DOM in place.
// Only text nodes are ever written from API data (no innerHTML), so a hostile reason
// string cannot inject markup.
"use strict";

(function () {
  const params = new URLSearchParams(window.location.search);
  const requested = parseFloat(params.get("refresh") || "2");
  const refreshMs = Math.round(Math.min(300, Math.max(0.2, isFinite(requested) ? requested : 2)) * 1000);
  const TOKEN_KEY = "guardian.token";
  const SVG = "http://www.w3.org/2000/svg";
  const cards = new Map();
  const STATE_CLASSES = ["ok", "degraded", "failed", "skipped", "unknown", "healthy", "unhealthy"];

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

  function sparkline(history) {
    const w = 120, h = 24, pad = 2;
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

  function card(name) {
    let c = cards.get(name);
    if (c) return c;
    const root = el("article", "card");
    root.dataset.target = name;
    const head = el("div", "card-head");
    const title = el("span", "name", name);
    const pill = el("span", "pill unknown", "unknown");
    const button = el("button", "restart", "Restart");
    button.type = "button";
    button.hidden = true;
    button.addEventListener("click", () => restart(name, c));
    head.append(title, pill, button);
    const reason = el("div", "reason");
    const recovery = el("div", "recovery");
    const table = el("table", "checks");
    const msg = el("div", "msg");
    msg.setAttribute("role", "status");
    root.append(head, reason, recovery, table, msg);
    document.getElementById("targets").appendChild(root);
    c = { root, pill, button, reason, recovery, table, msg };
    cards.set(name, c);
    return c;
  }

  function renderTarget(t) {
    const c = card(t.name);
    setState(c.root, t.status);
    setState(c.pill, t.status);
    c.pill.textContent = t.status;
    c.reason.textContent = t.reason || "";
    c.button.hidden = !t.has_service;
    const r = t.recovery;
    if (r) {
      const parts = [`restarts: ${r.attempts}`];
      if (r.last_restart) parts.push(`last ${new Date(r.last_restart).toLocaleTimeString()}`);
      if (r.breaker_open) parts.push("breaker OPEN: automatic restarts stopped");
      c.recovery.textContent = parts.join(" · ");
      c.recovery.classList.toggle("breaker", !!r.breaker_open);
    } else {
      c.recovery.textContent = t.critical ? "" : "non-critical";
    }
    const rows = t.checks.map((chk) => {
      const tr = el("tr");
      tr.dataset.check = chk.check;
      const dot = el("span", "dot");
      setState(dot, chk.status);
      dot.title = chk.status;
      const tdDot = el("td");
      tdDot.appendChild(dot);
      const tdSpark = el("td");
      tdSpark.appendChild(sparkline(chk.history || []));
      tr.append(
        tdDot,
        el("td", "", chk.check),
        el("td", "", `${(chk.duration * 1000).toFixed(0)} ms`),
        tdSpark,
        el("td", "why", chk.reason),
      );
      return tr;
    });
    c.table.replaceChildren(...rows);
  }

  function renderIncidents(list) {
    const ul = document.getElementById("incidents");
    if (!list.length) {
      ul.replaceChildren(el("li", "muted", "none"));
      return;
    }
    ul.replaceChildren(
      ...list.map((i) => {
        const li = el("li");
        li.dataset.incident = String(i.id);
        const pill = el("span", "pill " + (i.status === "escalated" ? "failed" : "degraded"), i.status);
        li.append(pill, document.createTextNode(` #${i.id} ${i.target}: ${i.summary}`));
        if (i.opened_at) li.appendChild(el("span", "muted", ` since ${new Date(i.opened_at).toLocaleString()}`));
        return li;
      }),
    );
  }

  function render(data) {
    const overall = document.getElementById("overall");
    setState(overall, data.status);
    overall.textContent = data.status;
    document.getElementById("updated").textContent =
      `updated ${new Date(data.timestamp).toLocaleTimeString()} · refresh ${refreshMs / 1000}s`;
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
    renderIncidents(data.incidents_open || []);
  }

  function banner(text) {
    const b = document.getElementById("banner");
    b.textContent = text || "";
    b.hidden = !text;
  }

  async function poll() {
    try {
      const resp = await fetch("/api/status", { cache: "no-store" });
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      render(await resp.json());
      banner("");
    } catch (e) {
      banner(`Guardian unreachable: ${e.message}. Showing the last known state.`);
    } finally {
      window.setTimeout(poll, refreshMs);
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
  poll();
})();
