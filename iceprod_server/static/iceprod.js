// Shared page helpers: JSON-RPC calls with the XSRF token, messages, small formatting.
"use strict";

const iceprod = (() => {
  const xsrf = () => {
    const meta = document.querySelector('meta[name="xsrf-token"]');
    return meta ? meta.content : "";
  };
  let nextId = 1;

  class RpcError extends Error {
    constructor(error) {
      const reason = error.data && error.data.reason ? error.data.reason : "";
      super(reason && reason !== error.message ? `${error.message}: ${reason}` : error.message);
      this.code = error.code;
      this.data = error.data || {};
    }
  }

  // Call a JSON-RPC method as the logged-in user; rejects with RpcError.
  async function rpc(method, params) {
    const response = await fetch("/jsonrpc", {
      method: "POST",
      credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-XSRFToken": xsrf()},
      body: JSON.stringify({jsonrpc: "2.0", method, params: params || {}, id: nextId++}),
    });
    if (!response.ok) {
      let text = `HTTP ${response.status}`;
      try { text = (await response.json()).error || text; } catch (e) { /* not JSON */ }
      throw new RpcError({code: response.status, message: text});
    }
    const answer = await response.json();
    if (answer.error) throw new RpcError(answer.error);
    return answer.result;
  }

  // Show a message at the top of the page; kind is "ok" or "error".
  function say(text, kind) {
    const box = document.getElementById("messages");
    const item = document.createElement("div");
    item.className = `message ${kind || "ok"}`;
    item.textContent = text;
    const close = document.createElement("button");
    close.type = "button";
    close.className = "link";
    close.textContent = "×";
    close.setAttribute("aria-label", "dismiss");
    close.addEventListener("click", () => item.remove());
    item.appendChild(close);
    box.appendChild(item);
    if (kind !== "error") setTimeout(() => item.remove(), 8000);
  }

  // Run an action and report its outcome; returns the result or undefined on failure.
  async function act(label, method, params) {
    try {
      const result = await rpc(method, params);
      say(`${label}: done`, "ok");
      return result;
    } catch (e) {
      say(`${label} failed: ${e.message}`, "error");
      return undefined;
    }
  }

  const number = (n) => (n === null || n === undefined) ? "" : Number(n).toLocaleString("en-US");
  const when = (t) => t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "";
  const duration = (s) => {
    if (s === null || s === undefined) return "";
    if (s < 60) return `${s.toFixed(1)} s`;
    if (s < 3600) return `${(s / 60).toFixed(1)} min`;
    return `${(s / 3600).toFixed(2)} h`;
  };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  return {rpc, act, say, number, when, duration, el, RpcError};
})();
