// The submit page: load a config (example, file or paste), check it, submit it.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("submit-form");
  if (!form) return;
  const config = $("config");
  const description = $("description");
  const buttons = [$("validate-button"), $("submit-button")];
  // the description the page filled in from a config; replaced when another is loaded
  let filledDescription = "";

  function showResult(problems, okText) {
    const list = $("problems");
    const result = $("check-result");
    list.replaceChildren(...problems.map((p) => iceprod.el("li", {text: String(p)})));
    if (problems.length) {
      result.className = "error";
      result.textContent = problems.length === 1 ? "1 problem:" : `${problems.length} problems:`;
    } else {
      result.className = okText ? "ok" : "muted";
      result.textContent = okText || "";
    }
  }

  function useConfigText(text) {
    config.value = text;
    showResult([], "");
    $("check-result").className = "muted";
    $("check-result").textContent = "Config loaded; validate it or submit.";
    let parsed = null;
    try { parsed = JSON.parse(text); } catch (e) { return; }
    const fromConfig = parsed && typeof parsed.description === "string" ? parsed.description : "";
    if (!description.value || description.value === filledDescription) {
      description.value = fromConfig;
      filledDescription = fromConfig;
    }
  }

  // The config as a value; a problem (the server says where the JSON is broken) if empty.
  function parseConfig() {
    const text = config.value;
    if (!text.trim()) return {problem: "$: the config is empty: paste one, upload a file or choose an example"};
    try { return {value: JSON.parse(text)}; } catch (e) { return {broken: true}; }
  }

  function fields() {
    const problems = [];
    const njobs = Number($("njobs").value);
    if (!Number.isInteger(njobs) || njobs < 1) problems.push("njobs: must be a whole number, at least 1");
    const priority = $("priority").value === "" ? 0 : Number($("priority").value);
    if (!Number.isFinite(priority) || priority < 0) problems.push("priority: must be a number, at least 0");
    return {njobs, priority, problems};
  }

  async function busy(fn) {
    buttons.forEach((b) => { b.disabled = true; });
    try { return await fn(); } finally { buttons.forEach((b) => { b.disabled = false; }); }
  }

  async function validate() {
    const parsed = parseConfig();
    const checked = fields();
    if (parsed.problem) { showResult([parsed.problem, ...checked.problems]); return false; }
    // sent as text, so that broken JSON comes back with its line and column
    const meta = document.querySelector('meta[name="xsrf-token"]');
    let answer;
    try {
      const response = await fetch("/submit/validate", {
        method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-XSRFToken": meta ? meta.content : ""},
        body: JSON.stringify({config: config.value}),
      });
      answer = await response.json();
      if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
    } catch (e) {
      showResult([`could not check the config: ${e.message}`]);
      return false;
    }
    const problems = [...answer.problems, ...checked.problems];
    showResult(problems, "The config is valid.");
    return problems.length === 0;
  }

  async function submit() {
    const parsed = parseConfig();
    const checked = fields();
    if (parsed.broken) { await validate(); return; }
    if (parsed.problem || checked.problems.length) {
      showResult([parsed.problem, ...checked.problems].filter(Boolean));
      return;
    }
    const params = {
      config: parsed.value,
      description: description.value.trim() ||
        (parsed.value && typeof parsed.value.description === "string" ? parsed.value.description : ""),
      njobs: checked.njobs,
      priority: checked.priority,
      debug: $("debug").checked,
    };
    if ($("group").value) params.group = $("group").value;
    $("check-result").className = "muted";
    $("check-result").textContent = "Submitting…";
    try {
      const datasetId = await iceprod.rpc("submit_dataset", params);
      $("check-result").className = "ok";
      $("check-result").textContent = `Submitted dataset ${datasetId}.`;
      window.location.assign(`/dataset/${encodeURIComponent(datasetId)}`);
    } catch (e) {
      const problems = e.data && Array.isArray(e.data.problems) ? e.data.problems : [];
      showResult(problems.length ? problems : [e.message]);
      iceprod.say(`Not submitted: ${e.message}`, "error");
    }
  }

  $("example").addEventListener("change", async (event) => {
    const name = event.target.value;
    if (!name) return;
    try {
      const response = await fetch(`/submit/examples/${encodeURIComponent(name)}`,
                                   {credentials: "same-origin"});
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      useConfigText(await response.text());
    } catch (e) {
      iceprod.say(`Could not load the example ${name}: ${e.message}`, "error");
    }
  });

  $("config-file").addEventListener("change", async (event) => {
    const file = event.target.files && event.target.files[0];
    if (!file) return;
    try {
      useConfigText(await file.text());
      $("example").value = "";
    } catch (e) {
      iceprod.say(`Could not read ${file.name}: ${e.message}`, "error");
    }
  });

  $("validate-button").addEventListener("click", () => busy(validate));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(submit);
  });
})();
