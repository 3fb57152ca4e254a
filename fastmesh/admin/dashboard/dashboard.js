// The dashboard's page logic: polls /dashboard/data every second and renders cards, charts and tables from it.
"use strict";

(function () {
  const F = window.fmFormat, C = window.fmChart;
  const POLL_MS = 1000;
  const MIN_SPAN = 30;      // seconds the x axis spans at least, so the first few points do not fill a chart

  // Lowest y of the success chart: 90% while every point is above it, so a dip of a few percent is visible.
  function successRange(values) {
    let min = 1;
    for (const v of values) if (v !== null && v < min) min = v;
    return [min >= 0.9 ? 0.9 : Math.floor(min * 5) / 5, 1];
  }

  // What a card shows, by kind: tiles of a headline value (from `now`) over a chart (from `series`).
  const TILES = {
    http: [
      { id: "rps", label: "requests/s", lines: [["rps", "c-rps"]], area: true, fmt: F.rate,
        value: (n) => F.rate(n.rps) },
      { id: "success", label: "success (non-5xx)", lines: [["success", "c-ok"]], fmt: F.share, range: successRange,
        axis: (v) => Math.round(v * 100) + "%",
        value: (n) => F.share(n.success) },
      { id: "latency", label: "latency ms", legend: [["p50", "c-p50"], ["p99", "c-p99"]],
        lines: [["p50", "c-p50"], ["p99", "c-p99"]], fmt: F.ms,
        value: (n) => F.ms(n.p50) + " / " + F.ms(n.p99) },
    ],
    tcp: [
      { id: "cps", label: "connections/s", lines: [["cps", "c-rps"]], area: true, fmt: F.rate,
        value: (n) => F.rate(n.cps) },
      { id: "bytes", label: "bytes/s", legend: [["in", "c-in"], ["out", "c-out"]],
        lines: [["in", "c-in"], ["out", "c-out"]], fmt: F.bytes, value: (n) => F.bytes(n.in) + " / " + F.bytes(n.out) },
      { id: "open", label: "open connections", lines: [["open", "c-open"]], area: true, fmt: F.count,
        value: (n) => F.count(n.open) },
    ],
    upstream: [
      { id: "cps", label: "upstream connections/s", lines: [["cps", "c-rps"]], area: true, fmt: F.rate,
        value: (n) => F.rate(n.cps) },
    ],
  };

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.dataset[k.slice(5).replace(/-(.)/g, (_, c) => c.toUpperCase())] = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function svg(metric) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    node.setAttribute("class", "chart");
    node.setAttribute("data-metric", metric);
    node.setAttribute("role", "img");
    return node;
  }

  // ---- cards (listeners and clusters) ----

  const cards = new Map();          // "listener:web" -> {node, tiles: {id: {value, chart}}, sub}

  function tilesFor(group, item) {
    if (item.kind === "http") return TILES.http;
    return group === "listener" ? TILES.tcp : TILES.upstream;
  }

  function makeCard(group, item) {
    const tiles = {};
    const sub = h("span", { class: "sub" });
    const side = h("span", { class: "side" });
    const body = h("div", { class: "tiles" });
    for (const tile of tilesFor(group, item)) {
      const value = h("div", { class: "value", "data-metric": tile.id }, F.DASH);
      const legend = tile.legend
        ? h("span", { class: "legend" }, ...tile.legend.map(([k, cls]) => h("span", { class: "key " + cls }, k)))
        : null;
      const chart = svg(tile.id);
      const label = h("div", { class: "label" }, tile.label, legend);
      body.append(h("div", { class: "tile" }, label, value, chart));
      tiles[tile.id] = { value, chart, label, spec: tile };
    }
    const badge = h("span", { class: "badge " + item.kind }, group === "listener" ? item.protocol : item.kind);
    const head = h("header", {}, h("h3", {}, item.name), badge, sub, side);
    const node = h("article", { class: "card", "data-kind": group, "data-name": item.name }, head, body);
    return { node, tiles, sub, side };
  }

  function renderCards(container, group, items, span) {
    const keys = items.map((i) => i.name + ":" + i.kind).join("|");
    if (container.dataset.keys !== keys) {          // listeners or clusters changed (a reload): build anew
      container.dataset.keys = keys;
      container.replaceChildren();
      for (const item of items) {
        const card = makeCard(group, item);
        cards.set(group + ":" + item.name, card);
        container.append(card.node);
      }
      if (!items.length) container.append(h("p", { class: "empty" }, "none configured"));
    }
    for (const item of items) {
      const card = cards.get(group + ":" + item.name);
      if (group === "listener") {
        const target = item.cluster || (item.service ? "service " + item.service : "");
        const split = item.clusters ? Object.entries(item.clusters).filter(([, n]) => n > 0)
          .map(([c, n]) => c + " " + F.count(n)).join(", ") : "";
        card.sub.textContent = (item.address || "") + (target ? "  →  " + target : "") + (split ? " (" + split + ")" : "");
        card.side.textContent = F.count(item.active) + " open";
      } else {
        card.sub.textContent = item.balancer;
        const up = item.endpoints_up + "/" + item.endpoints.length + " up";
        card.side.textContent = up + (item.ejections ? " · " + F.count(item.ejections) + " ejections" : "");
        card.side.classList.toggle("warn", item.endpoints_up < item.endpoints.length);
      }
      const now = item.now || {};
      const series = item.series || { t: [] };
      for (const tile of Object.values(card.tiles)) {
        const spec = tile.spec;
        const ownLatency = !(spec.id === "latency" && group === "listener" && item.latency_own === false);
        tile.value.textContent = ownLatency ? spec.value(now) : "see clusters";
        tile.value.classList.toggle("muted", !ownLatency);
        tile.value.title = ownLatency ? "" : "latency is kept per cluster and this listener shares a cluster";
        const lines = spec.lines.map(([key, cls]) => ({ values: series[key] || [], cls }));
        C.draw(tile.chart, {
          t: series.t, start: span[0], end: span[1], lines, area: spec.area,
          format: spec.fmt, axisFormat: spec.axis,
          range: spec.range ? spec.range(lines[0].values) : null,
        });
      }
    }
  }

  // ---- endpoints ----

  function renderEndpoints(clusters) {
    const body = document.querySelector("#endpoints tbody");
    const rows = [];
    for (const c of clusters) {
      rows.push(h("tr", { class: "group" }, h("td", { colspan: "5" },
        h("strong", {}, c.name), h("span", { class: "dim" }, "  " + c.endpoints_up + "/" + c.endpoints.length + " up" +
          (c.ejections ? " · " + F.count(c.ejections) + " ejections" : "") +
          (c.checks_ok || c.checks_failed ? " · checks " + F.count(c.checks_ok) + " ok / " +
            F.count(c.checks_failed) + " failed" : "")))));
      for (const e of c.endpoints) {
        const states = Object.entries(e.workers || {});
        const split = new Set(states.map(([, s]) => s)).size > 1;
        const stateCell = h("td", { class: "state-cell" },
          h("span", { class: "state state-" + e.state, "data-state": e.state }, e.state),
          split ? h("div", { class: "workers" }, states.map(([w, s]) => "w" + w + " " + s).join(" · ")) : null);
        rows.push(h("tr", { "data-cluster": c.name, "data-address": e.address },
          h("td", { class: "mono" }, e.address, e.weight !== 1 ? h("span", { class: "dim" }, " ×" + e.weight) : null),
          stateCell,
          h("td", { class: "num" }, F.count(e.active)),
          h("td", { class: "num" }, F.count(e.connections)),
          h("td", { class: "num" + (e.connect_failures ? " bad" : "") }, F.count(e.connect_failures))));
      }
    }
    body.replaceChildren(...rows);
  }

  // ---- routes and reloads ----

  function renderRoutes(tables) {
    const box = document.getElementById("routes");
    if (!tables.length) { box.replaceChildren(h("p", { class: "empty" }, "no http listener")); return; }
    box.replaceChildren(...tables.map((t) => {
      const rows = t.routes.map((r, i) => h("tr", {},
        h("td", { class: "dim num" }, String(i + 1)),
        h("td", { class: "mono" }, F.match(r.match), r.edits && F.edits(r.edits)
          ? h("div", { class: "dim" }, F.edits(r.edits)) : null),
        h("td", { class: "mono" }, "→ " + (r.cluster || "service " + r.service))));
      rows.push(h("tr", { class: "default" }, h("td", { class: "dim num" }, "*"), h("td", { class: "dim" }, "otherwise"),
        h("td", { class: "mono" }, t.default ? "→ " + t.default : "404")));
      return h("div", { class: "routes", "data-listener": t.listener },
        h("h3", {}, t.listener), h("table", { class: "grid compact" }, h("tbody", {}, ...rows)));
    }));
  }

  function renderNaming(n) {
    const box = document.getElementById("naming");
    if (!n || (!n.rules.length && !Object.keys(n.services).length && !Object.keys(n.templates || {}).length)) {
      box.replaceChildren(h("p", { class: "empty" }, "no naming table"));
      return;
    }
    const parts = [h("ol", { class: "rules mono" }, ...n.rules.map((r) => h("li", {}, r)))];
    if (n.source) {
      const s = n.source;
      parts.push(h("div", { class: "kv" }, h("span", { class: "dim" }, s.kind + " " + s.target),
        h("span", { class: s.last_error ? "bad" : "" }, s.last_error || (s.updates + " updates"))));
    }
    for (const [name, svc] of Object.entries(n.services)) {
      const shares = Object.entries(svc.shares).map(([c, v]) => c + " " + Math.round(v * 100) + "%").join(", ");
      parts.push(h("div", { class: "kv", "data-service": name }, h("span", { class: "mono" }, svc.name),
        h("span", { class: svc.fallback ? "warn" : "" }, "→ " + (shares || "nothing"))));
    }
    for (const [pattern, t] of Object.entries(n.templates || {})) {   // clusters made from [cluster_templates]
      const made = t.clusters.length + "/" + t.max_clusters + (t.clusters.length ? ": " + t.clusters.join(", ") : "");
      parts.push(h("div", { class: "kv", "data-template": pattern }, h("span", { class: "mono" }, "template " + pattern),
        h("span", { class: t.refused ? "warn" : "" }, made + (t.refused ? " · " + t.refused + " refused" : ""))));
    }
    box.replaceChildren(...parts);
  }

  function renderReloads(data) {
    const r = data.reloads;
    const box = document.getElementById("reloads");
    const parts = [
      h("div", { class: "kv" }, h("span", { class: "dim" }, "config hash"), h("span", { class: "mono" }, data.config_hash)),
      h("div", { class: "kv" }, h("span", { class: "dim" }, "reloads"),
        h("span", {}, h("span", { class: "ok" }, F.count(r.ok) + " ok"), " · ",
          h("span", { class: r.failed ? "bad" : "" }, F.count(r.failed) + " failed"))),
    ];
    if (Array.isArray(r.history)) {
      if (!r.history.length) parts.push(h("p", { class: "empty" }, "no reload since the start"));
      for (const entry of r.history.slice().reverse()) {       // newest first
        const ok = entry.result === "ok" || entry.result === "success";
        const took = entry.took_ms !== undefined ? F.ms(entry.took_ms) + " ms" : "";
        parts.push(h("div", { class: "reload", "data-result": ok ? "ok" : "failed" },
          h("span", { class: "mono" }, entry.time ? F.clock(entry.time) : ""),
          h("span", { class: ok ? "ok" : "bad" }, ok ? "ok" : "failed"),
          h("span", { class: "dim" }, [entry.trigger, took].filter(Boolean).join(" · ")),
          entry.message ? h("div", { class: "why" + (ok ? " dim" : " bad") }, entry.message) : null));
      }
    }
    box.replaceChildren(...parts);
  }

  // ---- the header and the polling loop ----

  function renderHeader(data) {
    document.getElementById("version").textContent = data.version;
    document.getElementById("uptime").textContent = F.duration(data.uptime);
    const w = data.workers;
    const workers = document.getElementById("workers");
    if (w.single_process) {         // workers = 0: no worker process; the supervisor itself serves
      workers.textContent = w.process_serving ? "none · one process serves" : "none · one process, not serving yet";
      workers.classList.toggle("warn", !w.process_serving);
    } else {
      workers.textContent = w.serving + "/" + w.configured + (data.restarts ? " · " + data.restarts + " restarts" : "");
      workers.classList.toggle("warn", w.serving < w.configured);
    }
    document.getElementById("config-hash").textContent = data.config_hash;
    const r = data.reloads;
    document.getElementById("reload-counts").textContent = r.ok + " ok · " + r.failed + " failed";
  }

  function xSpan(data) {
    let first = data.time;
    for (const item of [...data.listeners, ...data.clusters]) {
      if (item.series && item.series.t.length) { first = Math.min(first, item.series.t[0]); break; }
    }
    const span = Math.min(data.window, Math.max(MIN_SPAN, data.time - first));
    return [data.time - span, data.time];
  }

  function render(data) {
    const span = xSpan(data);
    renderHeader(data);
    renderCards(document.getElementById("listeners"), "listener", data.listeners, span);
    renderCards(document.getElementById("clusters"), "cluster", data.clusters, span);
    renderEndpoints(data.clusters);
    renderRoutes(data.routes);
    renderNaming(data.naming);
    renderReloads(data);
    for (const node of document.querySelectorAll(".span")) node.textContent = "last " + F.duration(span[1] - span[0]);
    document.body.dataset.updated = String(data.time);
  }

  function setStatus(ok, text) {
    const s = document.getElementById("status");
    s.textContent = text;
    s.classList.toggle("down", !ok);
  }

  async function poll() {
    let data = null;
    try {
      const response = await fetch("/dashboard/data", { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      data = await response.json();
    } catch (err) {
      setStatus(false, "admin server not answering (" + err.message + ")");
    }
    try {
      if (data) {
        render(data);
        setStatus(true, "live · " + F.clock(data.time));
      }
    } finally {
      setTimeout(poll, POLL_MS);          // a rendering bug still surfaces (console) but polling goes on
    }
  }

  poll();
})();
