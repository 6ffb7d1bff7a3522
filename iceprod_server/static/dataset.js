// The dataset page: redraws its progress bar, counts table and chart from a snapshot
// (iceprodDataset.update, also called by the live updates), runs the dataset actions after
// a confirmation that says how many tasks they touch, and edits the config.
"use strict";

const iceprodDataset = (() => {
  const STATES = ["complete", "processing", "queued", "waiting", "idle", "reset", "resume",
    "suspended", "failed"];
  const LIVE = ["idle", "waiting", "queued", "processing", "reset", "resume"];
  const SVG = "http://www.w3.org/2000/svg";
  const root = document.getElementById("dataset-page");
  if (!root) return {update() {}, reload() {}};
  const datasetId = root.dataset.datasetId;
  const byId = (id) => document.getElementById(id);
  let state = JSON.parse(root.dataset.state);

  const sum = (counts, states) =>
    (states || Object.keys(counts)).reduce((total, s) => total + (counts[s] || 0), 0);

  // tasks of jobs not made yet count as idle, but no action touches them
  function pending() {
    const d = state.dataset;
    if (d.status === "truncated") return 0;
    return Math.max(0, d.njobs - d.jobs_materialized) * d.ntasks;
  }

  function drawProgress(counts) {
    const bar = byId("progress-bar");
    const total = sum(counts);
    const complete = counts.complete || 0;
    // tenths of a percent, rounded down: never 100% while a task is left
    const percent = total ? Math.floor(complete * 1000 / total) / 10 : 0;
    bar.dataset.completeFraction = (total ? complete / total : 0).toFixed(6);
    bar.setAttribute("aria-valuenow", String(percent));
    const shown = STATES.filter((s) => counts[s]);
    bar.replaceChildren(...shown.map((s) => iceprod.el("span", {
      class: s, style: `width: ${(100 * counts[s] / total).toFixed(3)}%`,
      title: `${s}: ${iceprod.number(counts[s])}`})));
    byId("progress-percent").textContent = `${percent}%`;
    byId("progress-text").textContent =
      `${iceprod.number(complete)} of ${iceprod.number(total)} tasks`;
    byId("progress-legend").replaceChildren(...shown.map((s) => iceprod.el("span", {},
      iceprod.el("i", {class: s}), `${s} ${iceprod.number(counts[s])}`)));
  }

  function tasksLink(name, status) {
    const query = new URLSearchParams({task_name: name});
    if (status) query.set("status", status);
    return `/dataset/${encodeURIComponent(datasetId)}/tasks?${query}`;
  }

  function drawCounts(byName) {
    const rows = Object.entries(byName).map(([name, counts]) => iceprod.el("tr",
      {"data-task-name": name},
      iceprod.el("td", {}, iceprod.el("a", {href: tasksLink(name), text: name})),
      ...STATES.map((s) => iceprod.el("td", {class: "num", "data-state": s}, counts[s]
        ? iceprod.el("a", {href: tasksLink(name, s), text: iceprod.number(counts[s])})
        : iceprod.el("span", {class: "zero", text: "0"}))),
      iceprod.el("td", {class: "num", "data-state": "total", text: iceprod.number(sum(counts))})));
    byId("counts-table").tBodies[0].replaceChildren(...rows);
  }

  const svg = (tag, attrs, text) => {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const hourOf = (start) => new Date(start * 1000).toISOString().slice(11, 13) + ":00";

  // the same drawing as chart() in handlers/pages_datasets.py
  function drawChart(throughput) {
    const chart = byId("throughput-chart");
    const box = chart.viewBox.baseVal;
    const [width, height, left, bottom, top] = [box.width, box.height, 34, 18, 10];
    const plotH = height - bottom - top;
    const base = top + plotH;
    const buckets = throughput.buckets || [];
    const peak = Math.max(1, ...buckets.map((b) => Math.max(b.complete, b.failed)));
    const slot = (width - left) / Math.max(1, buckets.length);
    const nodes = [
      svg("line", {class: "axis", x1: left, y1: base, x2: width, y2: base}),
      svg("text", {class: "tick", x: left - 4, y: top + 8, "text-anchor": "end"}, String(peak)),
      svg("text", {class: "tick", x: left - 4, y: base, "text-anchor": "end"}, "0"),
    ];
    buckets.forEach((b, i) => {
      const x = left + i * slot;
      const label = `${hourOf(b.start)} UTC: ${b.complete} complete, ${b.failed} failed`;
      for (const [kind, offset] of [["complete", 0.1], ["failed", 0.5]]) {
        const h = b[kind] ? Math.max(1, plotH * b[kind] / peak) : 0;
        if (!h) continue;
        const rect = svg("rect", {class: kind, x: (x + offset * slot).toFixed(1),
          y: (base - h).toFixed(1), width: (0.4 * slot).toFixed(1), height: h.toFixed(1)});
        rect.appendChild(svg("title", {}, label));
        nodes.push(rect);
      }
      if (i % 6 === 0) {
        nodes.push(svg("text", {class: "tick", x: (x + slot / 2).toFixed(1), y: height - 4,
          "text-anchor": "middle"}, hourOf(b.start)));
      }
    });
    chart.replaceChildren(...nodes);
    byId("throughput-complete").textContent = iceprod.number(sum(buckets.map((b) => b.complete)));
    byId("throughput-failed").textContent = iceprod.number(sum(buckets.map((b) => b.failed)));
  }

  function drawDataset(dataset) {
    const badge = byId("dataset-status");
    badge.className = `badge ${dataset.status}`;
    badge.textContent = dataset.status;
    if (dataset.priority !== undefined) {
      byId("dataset-priority").textContent = iceprod.number(dataset.priority);
    }
  }

  // Redraw from a snapshot {counts, by_name, throughput, dataset}; missing parts stay.
  function update(snapshot) {
    state = {...state, ...snapshot, dataset: {...state.dataset, ...(snapshot.dataset || {})}};
    if (snapshot.counts) drawProgress(snapshot.counts);
    if (snapshot.by_name) drawCounts(snapshot.by_name);
    if (snapshot.throughput) drawChart(snapshot.throughput);
    if (snapshot.dataset) drawDataset(state.dataset);
  }

  async function reload() {
    const params = {dataset_id: datasetId};
    try {
      const [counts, byName, dataset, throughput] = await Promise.all([
        iceprod.rpc("public_get_number_of_tasks_in_each_state", params),
        iceprod.rpc("public_get_number_of_tasks_by_name", params),
        iceprod.rpc("public_get_dataset", params),
        iceprod.rpc("public_get_throughput", {...params, hours: 24}),
      ]);
      update({counts, by_name: byName, dataset, throughput});
    } catch (e) {
      iceprod.say(`Could not reload the counts: ${e.message}`, "error");
    }
  }

  // What each action asks before it runs: how many tasks it will touch, from the counts.
  const ACTIONS = {
    "suspend": ["suspend_dataset", "Suspend", () => {
      const n = sum(state.counts, LIVE) - pending();
      return `${n} unfinished tasks (idle, waiting, queued, processing, reset, resume) will be suspended; running ones are stopped.`;
    }],
    "resume": ["resume_dataset", "Resume", () =>
      `${sum(state.counts, ["suspended"])} suspended tasks will run again (failed ones stay failed: use Reset).`],
    "reset": ["reset_dataset", "Reset", () =>
      `${sum(state.counts, ["failed", "suspended"])} failed and suspended tasks (${sum(state.counts, ["failed"])} failed + ${sum(state.counts, ["suspended"])} suspended) go back to idle with their failure counts cleared.`],
    "hard-reset": ["hard_reset_dataset", "Hard reset", () =>
      `All ${sum(state.counts) - pending()} tasks made so far, ${sum(state.counts, ["complete"])} complete ones included, start again from idle. Their results will be made again.`],
    "truncate": ["truncate_dataset", "Truncate", () => {
      const jobs = Math.max(0, state.dataset.njobs - state.dataset.jobs_materialized);
      return `0 tasks change now: no new jobs will be made, so the ${jobs} jobs not made yet (${pending()} tasks) are dropped. Jobs already made run to their end.`;
    }],
  };

  async function run(key) {
    const [method, label, explain] = ACTIONS[key];
    const name = `${label} dataset ${state.dataset.dataset_num}`;
    if (!window.confirm(`${name}?\n\n${explain()}`)) return;
    try {
      const result = await iceprod.rpc(method, {dataset_id: datasetId});
      iceprod.say(`${name}: done, ${iceprod.number(result.tasks)} tasks changed.`, "ok");
    } catch (e) {
      iceprod.say(`${name} failed: ${e.message}`, "error");
      return;
    }
    await reload();
  }

  async function setPriority() {
    const value = Number(byId("priority-input").value);
    if (byId("priority-input").value.trim() === "" || !Number.isFinite(value) || value < 0) {
      iceprod.say("The priority must be a number of 0 or more.", "error");
      return;
    }
    const queued = sum(state.counts, ["queued"]);
    if (!window.confirm(`Set the priority of dataset ${state.dataset.dataset_num} to ${value}?\n\n${queued} queued tasks are ranked again.`)) return;
    const result = await iceprod.act("Set priority", "set_dataset_priority",
      {dataset_id: datasetId, priority: value});
    if (result !== undefined) await reload();
  }

  function bindConfigEditor() {
    const form = byId("config-form");
    if (!form) return;
    const problems = byId("config-problems");
    const editing = (on) => {
      form.hidden = !on;
      byId("config-view").hidden = on;
      byId("config-edit").hidden = on;
      if (!on) problems.replaceChildren();
    };
    byId("config-edit").addEventListener("click", () => { editing(true); byId("config-editor").focus(); });
    byId("config-cancel").addEventListener("click", () => editing(false));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      problems.replaceChildren();
      const text = byId("config-editor").value;
      const description = byId("config-description").value;
      const button = byId("config-save");
      button.disabled = true;
      try {
        const result = await iceprod.rpc("update_dataset_config",
          {dataset_id: datasetId, config: text, description});
        iceprod.say(`Config saved: ${result.tasks || 0} tasks not yet started take the new requirements.`, "ok");
        byId("config-view").textContent = JSON.stringify(JSON.parse(text), null, 2);
        byId("dataset-description").textContent = description || "(no description)";
        editing(false);
      } catch (e) {
        const list = (e.data && e.data.problems) || [];
        problems.replaceChildren(...list.map((p) => iceprod.el("li", {text: p})));
        iceprod.say(`Saving the config failed: ${e.message}`, "error");
      } finally {
        button.disabled = false;
      }
    });
  }

  for (const key of Object.keys(ACTIONS)) {
    const button = byId(`action-${key}`);
    if (button) button.addEventListener("click", () => run(key));
  }
  const priority = byId("action-priority");
  if (priority) priority.addEventListener("click", setPriority);
  bindConfigEditor();

  return {update, reload, get state() { return state; }};
})();
