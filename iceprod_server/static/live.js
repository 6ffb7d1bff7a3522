// Live updates: subscribes to the page's server-sent event stream and hands each snapshot
// to the page's update function (iceprodOverview.update, iceprodDataset.update).
//
// The stream comes from an element with data-live-url (and data-live-page: "overview" or
// "dataset"); without one, the page's path decides: / -> /live/overview,
// /dataset/<id> -> /live/dataset/<id>.
"use strict";

const iceprodLive = (() => {
  let source = null;

  function pageTarget(page) {
    // classic scripts share one global scope, but a top-level const is not on window
    /* global iceprodOverview, iceprodDataset */
    if (page === "dataset") {
      return typeof iceprodDataset !== "undefined" ? iceprodDataset : window.iceprodDataset;
    }
    return typeof iceprodOverview !== "undefined" ? iceprodOverview : window.iceprodOverview;
  }

  function setStatus(state, text) {
    const node = document.getElementById("live-status");
    if (!node) return;
    node.className = `live-status ${state}`;
    node.textContent = text;
    node.dataset.state = state;
  }

  // Open an EventSource on `url` and call onSnapshot(snapshot) for every message.
  function subscribe(url, onSnapshot) {
    const stream = new EventSource(url, {withCredentials: true});
    stream.onopen = () => setStatus("live", "live");
    stream.onmessage = (event) => {
      let snapshot;
      try { snapshot = JSON.parse(event.data); } catch (e) { return; }
      setStatus("live", "live");
      onSnapshot(snapshot);
    };
    stream.onerror = () => {
      if (stream.readyState === EventSource.CLOSED) setStatus("stopped", "live updates stopped");
      else setStatus("reconnecting", "reconnecting…");
    };
    return stream;
  }

  function discover() {
    const node = document.querySelector("[data-live-url]");
    if (node) return {url: node.dataset.liveUrl, page: node.dataset.livePage || "overview"};
    const path = window.location.pathname;
    if (path === "/") return {url: "/live/overview", page: "overview"};
    const match = path.match(/^\/dataset\/([^/]+)\/?$/);
    if (match) return {url: `/live/dataset/${match[1]}`, page: "dataset"};
    return null;
  }

  function start() {
    const found = discover();
    if (!found || !window.EventSource || source) return;
    source = subscribe(found.url, (snapshot) => {
      const target = pageTarget(found.page);
      if (target && typeof target.update === "function") target.update(snapshot);
    });
    // leave the server's list of viewers at once rather than when the socket times out
    window.addEventListener("pagehide", () => { if (source) source.close(); source = null; });
  }
  // a page restored from the back/forward cache needs its stream again
  window.addEventListener("pageshow", (event) => { if (event.persisted) start(); });

  function stop() {
    if (source) source.close();
    source = null;
    setStatus("stopped", "live updates stopped");
  }

  start();
  return {subscribe, start, stop};
})();
