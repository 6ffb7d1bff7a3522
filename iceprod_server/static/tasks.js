// The task list's bulk actions (on the selected tasks or on the whole filter) and the task
// page's reset button. Every action asks first, saying how many tasks it will touch.
"use strict";

(() => {
  const byId = (id) => document.getElementById(id);
  // the states each action moves tasks from (db/bulk.py)
  const FROM = {
    reset: ["failed", "suspended", "processing", "queued", "waiting", "reset", "resume"],
    suspend: ["idle", "waiting", "queued", "processing", "reset", "resume"],
    resume: ["suspended", "failed"],
  };
  const METHOD = {reset: "reset_tasks", suspend: "suspend_tasks", resume: "resume_tasks"};
  const LABEL = {reset: "Reset", suspend: "Suspend", resume: "Resume"};
  const plural = (n, word) => `${iceprod.number(n)} ${word}${n === 1 ? "" : "s"}`;

  // Run an action, say how many tasks it changed (or the server's error), then reload.
  async function act(label, method, params) {
    let result;
    try {
      result = await iceprod.rpc(method, params);
    } catch (e) {
      iceprod.say(`${label} failed: ${e.message}`, "error");
      return;
    }
    iceprod.say(`${label}: ${plural(result.count, "task")} changed; reloading.`, "ok");
    setTimeout(() => window.location.reload(), 1000);
  }

  function taskList(root) {
    const datasetId = root.dataset.datasetId;
    const matching = JSON.parse(root.dataset.matching || "{}");
    const boxes = () => Array.from(document.querySelectorAll("input.task-select"));
    const selected = () => boxes().filter((b) => b.checked);

    function refresh() {
      const n = selected().length;
      byId("selection-count").textContent = `${n} selected`;
      for (const action of Object.keys(FROM)) byId(`bulk-${action}`).disabled = n === 0;
      const all = byId("select-all");
      if (all) {
        all.checked = n > 0 && n === boxes().length;
        all.indeterminate = n > 0 && n < boxes().length;
      }
    }

    async function onSelection(action) {
      const chosen = selected();
      const touched = chosen.filter((b) =>
        FROM[action].includes(b.closest("tr").dataset.status)).length;
      const text = `${LABEL[action]} ${plural(chosen.length, "selected task")}?\n\n` +
        `${plural(touched, "task")} will change (those ${FROM[action].join(", ")}); ` +
        "the others are left as they are.";
      if (!window.confirm(text)) return;
      await act(`${LABEL[action]} ${plural(chosen.length, "selected task")}`, METHOD[action],
        {task_ids: chosen.map((b) => b.value)});
    }

    async function onFilter(action) {
      const status = root.dataset.status || null;
      const taskName = root.dataset.taskName || null;
      const touched = FROM[action].reduce((n, s) => n + (matching[s] || 0), 0);
      const what = [status, taskName ? `"${taskName}"` : null].filter(Boolean).join(" ");
      const text = `${LABEL[action]} all ${what ? what + " " : ""}tasks of this dataset?\n\n` +
        `${plural(touched, "task")} will change (those ${FROM[action].join(", ")}).`;
      if (!window.confirm(text)) return;
      const params = {dataset_id: datasetId};
      if (status) params.status = status;
      if (taskName) params.task_name = taskName;
      await act(`${LABEL[action]} all matching tasks`, METHOD[action], params);
    }

    for (const box of boxes()) box.addEventListener("change", refresh);
    const all = byId("select-all");
    if (all) {
      all.addEventListener("change", () => {
        for (const box of boxes()) box.checked = all.checked;
        refresh();
      });
    }
    for (const action of Object.keys(FROM)) {
      const one = byId(`bulk-${action}`);
      if (one) one.addEventListener("click", () => onSelection(action));
      const many = byId(`filter-${action}`);
      if (many) many.addEventListener("click", () => onFilter(action));
    }
    if (byId("selection-count")) refresh();
  }

  function taskPage(root) {
    const button = byId("action-reset-task");
    if (!button) return;
    button.addEventListener("click", async () => {
      const status = root.dataset.status;
      const effect = FROM.reset.includes(status)
        ? `It is ${status}: it goes back to the queue with its failure count cleared.`
        : `It is ${status}: a reset does not change a task in this state.`;
      if (!window.confirm(`Reset this task?\n\n${effect}`)) return;
      await act("Reset task", "reset_tasks", {task_ids: [root.dataset.taskId]});
    });
  }

  const list = byId("tasks-page");
  if (list) taskList(list);
  const page = byId("task-page");
  if (page) taskPage(page);
})();
