// Number and text formatting for the dashboard: rates, bytes, milliseconds, shares, durations and route rules.
"use strict";

window.fmFormat = (function () {
  const DASH = "–";

  // Rates: one decimal while small (a trickle of 0.4/s is not 0), grouped digits when large.
  function rate(v) {
    if (v === null || v === undefined) return DASH;
    if (v < 10) return v.toFixed(1);
    return Math.round(v).toLocaleString("en-US");
  }

  function bytes(v) {
    if (v === null || v === undefined) return DASH;
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return (v < 10 && i ? v.toFixed(1) : Math.round(v)) + " " + units[i];
  }

  function ms(v) {
    if (v === null || v === undefined) return DASH;
    if (v < 1) return v.toFixed(2);
    if (v < 10) return v.toFixed(1);
    return Math.round(v).toLocaleString("en-US");
  }

  // A share 0..1 as a percentage; 99.95% must not round up to a reassuring 100%.
  function share(v) {
    if (v === null || v === undefined) return DASH;
    if (v >= 1) return "100%";
    const p = Math.floor(v * 1000) / 10;
    return p.toFixed(1) + "%";
  }

  function count(v) {
    if (v === null || v === undefined) return DASH;
    return Number(v).toLocaleString("en-US");
  }

  function duration(seconds) {
    const s = Math.floor(seconds);
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m " + (s % 60) + "s";
    const h = Math.floor(m / 60);
    if (h < 24) return h + "h " + (m % 60) + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }

  function clock(unixSeconds) {
    return new Date(unixSeconds * 1000).toLocaleTimeString("en-GB");
  }

  // A route's conditions as short phrases: "prefix /api", "GET|POST", "host *.example.com".
  function match(m) {
    const parts = [];
    if (m.host) parts.push("host " + m.host);
    if (m.path) parts.push("path = " + m.path);
    if (m.path_prefix) parts.push("prefix " + m.path_prefix);
    if (m.path_regex) parts.push("regex " + m.path_regex);
    if (m.methods && m.methods.length) parts.push(m.methods.join("|"));
    if (m.headers) for (const [k, v] of Object.entries(m.headers)) parts.push(k + ": " + v);
    return parts.length ? parts.join(", ") : "any request";
  }

  function edits(e) {
    const parts = [];
    if (e.rewrite_prefix !== undefined) parts.push("rewrite → " + e.rewrite_prefix);
    for (const [k, v] of Object.entries(e)) {
      if (k === "rewrite_prefix") continue;
      const n = Array.isArray(v) ? v.length : Object.keys(v || {}).length;
      if (n) parts.push(k.replace(/_/g, " ") + " (" + n + ")");
    }
    return parts.join(", ");
  }

  return { DASH, rate, bytes, ms, share, count, duration, clock, match, edits };
})();
