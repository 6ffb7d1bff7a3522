// The overview page: draws the throughput chart and redraws the counts from a live snapshot
// {datasets: {status: n}, tasks: {status: n}, active: [...], more_active, throughput}.
"use strict";

const iceprodOverview = (() => {
  const TASK_STATES = ["idle", "waiting", "queued", "processing", "reset", "resume",
                       "suspended", "failed", "complete"];
  const DATASET_STATES = ["processing", "suspended", "truncated", "errors", "complete"];
  const SVG = "http://www.w3.org/2000/svg";
  const {el, number} = iceprod;
  let current = null;

  const sum = (counts) => Object.values(counts || {}).reduce((a, b) => a + b, 0);
  const percent = (n, total) => total ? 100 * n / total : 0;

  // every state of `order` (zeros included), then states the page does not know yet
  function every(counts, order) {
    const extra = Object.keys(counts || {}).filter((k) => !order.includes(k) && counts[k]).sort();
    return [...order, ...extra].map((s) => [s, (counts || {})[s] || 0]);
  }

  function ordered(counts, order) {
    return every(counts, order).filter(([, n]) => n);
  }

  // a .bar of spans, one per state, as wide as its share
  function fillBar(bar, counts) {
    const total = sum(counts);
    bar.replaceChildren(...ordered(counts, TASK_STATES).map(([state, n]) => el("span", {
      class: state, style: `width: ${percent(n, total).toFixed(3)}%`,
      title: `${state}: ${number(n)}`})));
  }

  function drawDatasets(counts) {
    const section = document.getElementById("overview-datasets");
    section.querySelector("tbody").replaceChildren(...every(counts, DATASET_STATES).map(
      ([state, n]) => el("tr", {"data-status": state},
        el("td", {}, el("a", {href: `/dataset?status=${encodeURIComponent(state)}`},
          el("span", {class: `badge ${state}`, text: state}))),
        el("td", {class: "num", "data-count": state, text: number(n)}))));
    section.querySelector('tfoot [data-count="total"]').textContent = number(sum(counts));
  }

  function drawTasks(counts) {
    const section = document.getElementById("overview-tasks");
    const total = sum(counts);
    fillBar(document.getElementById("overview-tasks-bar"), counts);
    section.querySelector("tbody").replaceChildren(...every(counts, TASK_STATES).map(
      ([state, n]) => el("tr", {"data-status": state},
        el("td", {}, el("span", {class: `badge ${state}`, text: state})),
        el("td", {class: "num", "data-count": state, text: number(n)}),
        el("td", {class: "num", text: `${percent(n, total).toFixed(1)}%`}))));
    section.querySelector('tfoot [data-count="total"]').textContent = number(total);
  }

  function drawActive(active, more) {
    const body = document.querySelector("#overview-active tbody");
    const rows = active.map((d) => {
      const total = sum(d.counts);
      const done = (d.counts || {}).complete || 0;
      const bar = el("div", {class: "bar"});
      fillBar(bar, d.counts);
      return el("tr", {"data-dataset": d.dataset_id},
        el("td", {}, el("a", {href: `/dataset/${encodeURIComponent(d.dataset_id)}`,
                              text: String(d.dataset_num)})),
        el("td", {text: d.description || ""}),
        el("td", {text: d.owner || ""}),
        el("td", {class: "progress"}, bar),
        el("td", {class: "num",
                  text: `${number(done)} / ${number(total)} (${percent(done, total).toFixed(0)}%)`}));
    });
    if (!rows.length) {
      rows.push(el("tr", {class: "empty"},
        el("td", {colspan: "5", class: "muted", text: "No dataset is processing."})));
    }
    body.replaceChildren(...rows);
    document.getElementById("overview-more-active").hidden = !more;
  }

  const svg = (tag, attrs, ...children) => {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const child of children) node.appendChild(child);
    return node;
  };
  const svgText = (attrs, text) => { const t = svg("text", attrs); t.textContent = text; return t; };
  const tooltip = (text) => { const t = svg("title"); t.textContent = text; return t; };

  // a round upper bound for the y axis: 1, 2, 5 times a power of ten
  function niceMax(n) {
    if (n <= 1) return 1;
    const power = 10 ** Math.floor(Math.log10(n));
    for (const step of [1, 2, 5, 10]) if (step * power >= n) return step * power;
    return 10 * power;
  }

  // Grouped bars (complete, failed) per hour, drawn at the chart's real pixel size.
  function drawChart(chart, throughput) {
    const buckets = (throughput && throughput.buckets) || [];
    const width = Math.max(chart.clientWidth, 300);
    const height = Math.max(chart.clientHeight, 120);
    const left = 48, right = 8, top = 10, bottom = 22;
    const plotW = width - left - right, plotH = height - top - bottom;
    const peak = niceMax(Math.max(0, ...buckets.map((b) => Math.max(b.complete, b.failed))));
    const y = (v) => top + plotH - plotH * v / peak;
    const slot = plotW / Math.max(buckets.length, 1);
    const barW = Math.max(1, slot * 0.38);
    chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const parts = [];
    for (const v of peak >= 2 ? [0, peak / 2, peak] : [0, peak]) {
      parts.push(svg("line", {class: "grid-line", x1: left, x2: width - right, y1: y(v), y2: y(v)}));
      parts.push(svgText({x: left - 6, y: y(v) + 4, "text-anchor": "end"}, number(v)));
    }
    buckets.forEach((b, i) => {
      const x = left + i * slot + slot * 0.1;
      const hour = new Date(b.start * 1000).toISOString().slice(11, 16);
      const label = `${hour} UTC: ${number(b.complete)} complete, ${number(b.failed)} failed`;
      parts.push(svg("rect", {class: "complete", x, y: y(b.complete), width: barW,
                              height: plotH * b.complete / peak, "data-hour": hour,
                              "data-complete": b.complete}, tooltip(label)));
      parts.push(svg("rect", {class: "failed", x: x + barW, y: y(b.failed), width: barW,
                              height: plotH * b.failed / peak, "data-hour": hour,
                              "data-failed": b.failed}, tooltip(label)));
      if (i % 3 === 0 || i === buckets.length - 1) {
        parts.push(svgText({x: x + barW, y: height - 6, "text-anchor": "middle"}, hour));
      }
    });
    chart.replaceChildren(...parts);
  }

  function drawThroughputTotal(throughput) {
    const buckets = (throughput && throughput.buckets) || [];
    const box = document.getElementById("overview-throughput-total");
    box.querySelector('[data-count="complete"]').textContent =
      number(buckets.reduce((a, b) => a + b.complete, 0));
    box.querySelector('[data-count="failed"]').textContent =
      number(buckets.reduce((a, b) => a + b.failed, 0));
  }

  function update(snapshot) {
    current = snapshot;
    drawDatasets(snapshot.datasets || {});
    drawTasks(snapshot.tasks || {});
    drawActive(snapshot.active || [], snapshot.more_active);
    drawChart(document.getElementById("overview-chart"), snapshot.throughput);
    drawThroughputTotal(snapshot.throughput);
  }

  const root = document.getElementById("overview");
  if (root) {
    try { current = {throughput: JSON.parse(root.dataset.throughput)}; } catch (e) { current = null; }
    const chart = document.getElementById("overview-chart");
    if (current) drawChart(chart, current.throughput);
    let pending = null;
    window.addEventListener("resize", () => {
      clearTimeout(pending);
      pending = setTimeout(() => { if (current) drawChart(chart, current.throughput); }, 150);
    });
  }

  return {update, drawChart};
})();
