// The JSON-RPC console: lists the methods rpc.discover describes that the current caller
// may call, with their params and documentation, and a form to try each.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const root = $("console");
  if (!root) return;
  const {el} = iceprod;
  const role = root.dataset.role || null;
  const publicRead = root.dataset.publicRead === "true";

  // The same rule as the server's registry (Method.allows).
  function allowed(roles) {
    if (roles.includes("anyone")) return true;
    if (roles.includes("public")) return role !== null || publicRead;
    return role !== null && roles.includes(role);
  }

  function typeName(schema) {
    if (!schema || !Object.keys(schema).length) return "any";
    if (schema.description === "identifier") return "id";
    if (schema.enum) return `one of ${schema.enum.map((v) => JSON.stringify(v)).join(", ")}`;
    if (schema.oneOf) return schema.oneOf.map(typeName).join(" or ");
    if (schema.type === "array" && schema.items && Object.keys(schema.items).length) {
      return `array of ${typeName(schema.items)}`;
    }
    return schema.type || "any";
  }

  // a value of the right shape to start from, for a required param
  function placeholder(schema) {
    const type = schema && (schema.type || (schema.oneOf && schema.oneOf[0].type));
    if (schema && schema.enum) return schema.enum[0];
    return {integer: 0, number: 0, boolean: false, array: [], object: {}, null: null}[type] ?? "";
  }

  // Docstrings: paragraphs split by blank lines, ``literal`` spans shown as code.
  function docText(text) {
    const paragraphs = (text || "(no description)").split(/\n\s*\n/);
    return el("div", {class: "doc"}, ...paragraphs.map((para) => {
      const parts = para.replace(/\s*\n\s*/g, " ").split("``");
      return el("p", {}, ...parts.map((part, i) => (i % 2 ? el("code", {text: part}) : part)));
    }));
  }

  function paramsTable(params) {
    if (!params.length) return el("p", {class: "muted", text: "No params."});
    return el("table", {class: "params"},
      el("thead", {}, el("tr", {}, el("th", {text: "Param"}), el("th", {text: "Type"}),
                                  el("th", {text: "Required"}), el("th", {text: "Default"}))),
      el("tbody", {}, ...params.map((p) => el("tr", {"data-param": p.name},
        el("td", {}, el("code", {text: p.name})),
        el("td", {text: typeName(p.schema)}),
        el("td", {text: p.required ? "required" : "optional"}),
        el("td", {}, p.required || !("default" in (p.schema || {})) ? null
          : el("code", {text: JSON.stringify(p.schema.default)}))))));
  }

  function tryForm(method) {
    const start = {};
    for (const p of method.params) if (p.required) start[p.name] = placeholder(p.schema);
    const input = el("textarea", {class: "params-input", spellcheck: "false",
                                  "aria-label": `params of ${method.name}`,
                                  "data-testid": `params-${method.name}`});
    input.value = JSON.stringify(start, null, 2);
    const output = el("pre", {class: "output", "data-testid": `output-${method.name}`,
                              "aria-live": "polite"});
    output.textContent = "The result appears here.";
    const button = el("button", {type: "submit", "data-testid": `call-${method.name}`,
                                 text: `Call ${method.name}`});
    const form = el("form", {class: "try"},
      el("div", {}, el("label", {text: "Params (a JSON object, or an array for positional params)"}),
         input, el("div", {class: "toolbar"}, button)),
      el("div", {}, el("label", {text: "Answer"}), output));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      let params;
      try {
        params = input.value.trim() ? JSON.parse(input.value) : {};
        if (params === null || typeof params !== "object") throw new Error("expected an object or an array");
      } catch (e) {
        output.className = "output error";
        output.textContent = `The params are not valid: ${e.message}`;
        return;
      }
      button.disabled = true;
      output.className = "output";
      output.textContent = "Calling…";
      try {
        const result = await iceprod.rpc(method.name, params);
        output.textContent = JSON.stringify(result, null, 2) ?? "null";
      } catch (e) {
        output.className = "output error";
        const data = e.data && Object.keys(e.data).length ? `\n${JSON.stringify(e.data, null, 2)}` : "";
        output.textContent = `error ${e.code}: ${e.message}${data}`;
      } finally {
        button.disabled = false;
      }
    });
    return form;
  }

  function methodEntry(method) {
    const roles = method["x-roles"] || [];
    const errors = method["x-errors"] || [];
    const details = el("details", {id: `method-${method.name}`, "data-method": method.name,
                                   "data-testid": `method-${method.name}`},
      el("summary", {},
        el("code", {text: method.name}),
        el("span", {class: "summary", text: (method.summary || "").replaceAll("``", "")}),
        el("span", {class: "roles"}, ...roles.map((r) => el("span", {class: "badge", text: r})))),
      el("div", {class: "body"},
        docText(method.description),
        paramsTable(method.params || []),
        errors.length ? el("p", {class: "errors muted",
          text: `Errors: ${errors.map((e) => `${e.code} ${e.message}`).join(", ")}`}) : null,
        tryForm(method)));
    return details;
  }

  function applyFilter() {
    const words = $("method-filter").value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const details of $("methods").querySelectorAll("details")) {
      const text = details.dataset.search;
      const match = words.every((w) => text.includes(w));
      details.hidden = !match;
      if (match) shown += 1;
    }
    $("method-count").textContent = `${shown} of ${$("methods").children.length} methods`;
  }

  async function load() {
    let doc;
    try {
      doc = await iceprod.rpc("rpc.discover");
    } catch (e) {
      $("methods").replaceChildren();
      $("console-error").hidden = false;
      $("console-error").textContent = `rpc.discover failed: ${e.message}`;
      return;
    }
    const methods = doc.methods.filter((m) => allowed(m["x-roles"] || []));
    const entries = methods.map((m) => {
      const entry = methodEntry(m);
      entry.dataset.search = `${m.name} ${m.description || ""}`.toLowerCase();
      return entry;
    });
    $("methods").replaceChildren(...entries);
    applyFilter();
    const wanted = decodeURIComponent(window.location.hash.slice(1));
    const target = wanted && document.getElementById(wanted);
    if (target && target.tagName === "DETAILS") { target.open = true; target.scrollIntoView(); }
  }

  $("method-filter").addEventListener("input", applyFilter);
  load();
})();
