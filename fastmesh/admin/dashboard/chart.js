// Small SVG line charts drawn at the element's pixel size: time on x, one or more series on y, gaps where null.
"use strict";

window.fmChart = (function () {
  const NS = "http://www.w3.org/2000/svg";
  const PAD = { top: 6, right: 42, bottom: 5, left: 2 };   // the axis labels live in the right-hand gutter

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  // 1, 2 or 5 times a power of ten at or above v: axis tops that read as round numbers.
  function niceCeil(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v * 0.999) return m * p;
    return 10 * p;
  }

  // opts: t (Unix seconds per point), start, end (the x range), lines [{values, cls}], format (axis labels),
  // axisFormat (else format), range [lo, hi] to fix the y axis (else 0..nice max), area (fill under the first line).
  function draw(svg, opts) {
    const w = Math.max(40, svg.clientWidth || 240);
    const h = Math.max(30, svg.clientHeight || 64);
    svg.setAttribute("viewBox", "0 0 " + w + " " + h);
    while (svg.firstChild) svg.removeChild(svg.firstChild);

    let lo = 0, hi;
    if (opts.range) {
      [lo, hi] = opts.range;
    } else {
      let max = 0;
      for (const line of opts.lines) for (const v of line.values) if (v !== null && v > max) max = v;
      hi = niceCeil(max);
    }
    const x = (t) => PAD.left + (w - PAD.left - PAD.right) * (t - opts.start) / Math.max(1e-9, opts.end - opts.start);
    const y = (v) => PAD.top + (h - PAD.top - PAD.bottom) * (1 - (Math.min(hi, Math.max(lo, v)) - lo) / (hi - lo || 1));

    const grid = el("g", { class: "grid" }, svg);
    for (const f of [0, 0.5, 1]) {
      const gy = Math.round(y(lo + (hi - lo) * f)) + 0.5;
      el("line", { x1: 0, x2: w - PAD.right + 4, y1: gy, y2: gy }, grid);
    }
    const axis = opts.axisFormat || opts.format;
    for (const v of [hi, lo]) {
      if (v === 0 && !opts.range) continue;       // a plain 0 at the bottom says nothing
      const label = el("text", { x: w - 1, y: y(v) + 3.5, class: "axis", "text-anchor": "end" }, svg);
      label.textContent = axis(v);
    }

    let drawn = 0;
    opts.lines.forEach((line, n) => {
      let d = "", area = "", run = [];
      const flush = () => {
        if (run.length && n === 0 && opts.area) {
          area += "M" + run[0][0] + "," + y(lo) + run.map((p) => "L" + p[0] + "," + p[1]).join("") +
                  "L" + run[run.length - 1][0] + "," + y(lo) + "Z";
        }
        run = [];
      };
      line.values.forEach((v, i) => {
        if (v === null || v === undefined || opts.t[i] < opts.start) { flush(); return; }
        const px = x(opts.t[i]).toFixed(1), py = y(v).toFixed(1);
        d += (run.length ? "L" : "M") + px + "," + py;
        run.push([px, py]);
        drawn++;
      });
      flush();
      if (area) el("path", { d: area, class: "area " + line.cls }, svg);
      if (d) el("path", { d: d, class: "line " + line.cls }, svg);
      const last = line.values.length - 1;
      if (last >= 0 && line.values[last] !== null) {
        el("circle", { cx: x(opts.t[last]), cy: y(line.values[last]), r: 2.5, class: "dot " + line.cls }, svg);
      }
    });
    svg.dataset.points = String(drawn);
    return drawn;
  }

  return { draw, niceCeil };
})();
