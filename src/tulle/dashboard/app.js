// Tulle dashboard (ADR 0056): topology, golden signals with sparklines, routes and policies
// per Service, and a live tap.  Plain browser JavaScript, no build step.  Every value that
// came from the mesh is put in the page as text (textContent), never as HTML: a request path
// is whatever a client sent.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const HISTORY = 60; // points per sparkline (two minutes at the refresh interval)
  const TAP_ROWS = 200;
  const state = { token: "", history: {}, nodeKey: "", tap: null, refreshes: 0, errors: 0,
                  selected: "" };
  const $ = (id) => document.getElementById(id);

  // -- the token: from the fragment `tulle dashboard` opens, kept for this tab only --------
  function takeToken() {
    const m = /(?:^|[#&])token=([^&]+)/.exec(window.location.hash);
    if (m) {
      sessionStorage.setItem("tulle-token", decodeURIComponent(m[1]));
      history.replaceState(null, "", window.location.pathname + window.location.search);
    }
    return sessionStorage.getItem("tulle-token") || "";
  }

  async function api(path) {
    const r = await fetch(path, { headers: { authorization: "Bearer " + state.token },
                                  cache: "no-store" });
    if (r.status === 401) {
      sessionStorage.removeItem("tulle-token");
      showLogin("the token was not accepted");
      throw new Error("unauthorized");
    }
    if (!r.ok) {
      let msg = "HTTP " + r.status;
      try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    return r.json();
  }

  function setStatus(text, ok) {
    const s = $("status");
    s.textContent = text;
    s.className = "status " + (ok ? "ok" : "error");
  }

  function showLogin(why) {
    $("main").hidden = true;
    $("login").hidden = false;
    if (why) setStatus(why, false);
  }

  // -- formatting -----------------------------------------------------------------------------
  const pct = (v) => (v === null || v === undefined ? "-" : (v * 100).toFixed(2) + "%");
  const ms = (v) => (v === null || v === undefined ? "-" : v < 10 ? v.toFixed(1) + "ms"
                                                                   : v.toFixed(0) + "ms");
  const rps = (v) => (v === undefined ? "-" : v.toFixed(1));

  function edgeLabel(e) {
    if (e.kind === "serves") return e.mtls ? "mTLS " + e.mtls : "";
    const lock = e.mtls === true ? "mTLS" : e.mtls === false ? "plaintext" : "";
    return rps(e.rps) + " rps · " + pct(e.successRate) + " · p99 " +
      ms(e.latencyMs && e.latencyMs.p99) + (lock ? " · " + lock : "");
  }

  // -- the graph --------------------------------------------------------------------------------
  let cy = null;

  function graphStyle() {
    return [
      { selector: "node", style: { label: "data(label)", "font-size": 11, "text-valign": "bottom",
        "text-margin-y": 4, "background-color": "#5b7bd5", width: 26, height: 26 } },
      { selector: "node[kind = 'Service']", style: { shape: "round-rectangle",
        "background-color": "#2e9e6b", width: 44, height: 24 } },
      { selector: "node[?outside]", style: { opacity: 0.55 } },
      { selector: "node:selected", style: { "border-width": 3, "border-color": "#f0a000" } },
      { selector: "edge", style: { width: 2, "curve-style": "bezier",
        "target-arrow-shape": "triangle", label: "data(label)", "font-size": 9,
        "text-background-color": "#fff", "text-background-opacity": 0.85,
        "line-color": "#9aa5b8", "target-arrow-color": "#9aa5b8" } },
      { selector: "edge[mtlsText = 'yes']", style: { "line-color": "#1a7f37",
        "target-arrow-color": "#1a7f37" } },
      { selector: "edge[mtlsText = 'no']", style: { "line-color": "#b35900",
        "target-arrow-color": "#b35900" } },
      { selector: "edge[kind = 'serves']", style: { "line-style": "dashed", width: 1 } },
      { selector: "edge[failing = 'yes']", style: { width: 4 } },
    ];
  }

  function mtlsText(e) {
    if (e.mtls === true || e.mtls === "strict") return "yes";
    if (e.mtls === false || e.mtls === "off") return "no";
    return "unknown";
  }

  function drawGraph(doc) {
    const elements = [];
    for (const n of doc.nodes) {
      elements.push({ group: "nodes", data: { id: n.id, kind: n.kind, label: n.name,
        namespace: n.namespace, outside: !!n.outside, rps: n.rps,
        successRate: n.successRate } });
    }
    for (const e of doc.edges) {
      elements.push({ group: "edges", data: { id: e.id, source: e.source, target: e.target,
        kind: e.kind, label: edgeLabel(e), mtls: e.mtls, mtlsText: mtlsText(e),
        rps: e.rps, successRate: e.successRate,
        p99: e.latencyMs ? e.latencyMs.p99 : null,
        failing: e.successRate !== null && e.successRate !== undefined && e.successRate < 0.95
          ? "yes" : "no" } });
    }
    const key = elements.map((x) => x.data.id).sort().join("|");
    if (cy === null) {
      cy = window.cytoscape({ container: $("graph"), elements: elements, style: graphStyle(),
                              wheelSensitivity: 0.2 });
      cy.on("tap", "node[kind = 'Service']", (evt) => selectService(evt.target.id().slice(4)));
      layout();
    } else if (key !== state.nodeKey) {
      cy.elements().remove();
      cy.add(elements);
      layout();
    } else {
      for (const x of elements) cy.getElementById(x.data.id).data(x.data);
    }
    state.nodeKey = key;
    window.tulleDashboard.cy = cy;
  }

  function layout() {
    const name = window.cytoscapeDagre ? "dagre" : "breadthfirst";
    cy.layout({ name: name, rankDir: "LR", nodeSep: 40, rankSep: 120, padding: 20 }).run();
  }

  // -- golden signals ---------------------------------------------------------------------------
  function sparkline(values, max) {
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", "0 0 120 24");
    const line = document.createElementNS(NS, "polyline");
    const top = max || Math.max(1e-9, ...values);
    const step = 120 / Math.max(1, HISTORY - 1);
    const start = HISTORY - values.length;
    line.setAttribute("points", values.map((v, i) =>
      ((start + i) * step).toFixed(1) + "," + (23 - (v / top) * 22).toFixed(1)).join(" "));
    svg.appendChild(line);
    return svg;
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    if (text instanceof Node) td.appendChild(text); else td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function drawServices(doc) {
    const body = $("services").querySelector("tbody");
    const rows = [];
    for (const n of doc.nodes) {
      if (n.kind !== "Service" || n.outside) continue;
      const key = n.namespace + "/" + n.name;
      const h = state.history[key] || (state.history[key] = { rps: [], success: [] });
      h.rps.push(n.rps || 0);
      h.success.push(n.successRate === null || n.successRate === undefined ? 1 : n.successRate);
      if (h.rps.length > HISTORY) { h.rps.shift(); h.success.shift(); }
      const tr = document.createElement("tr");
      tr.className = "clickable";
      tr.dataset.service = key;
      cell(tr, key);
      cell(tr, rps(n.rps), "rps");
      cell(tr, pct(n.successRate), "success");
      cell(tr, ms(n.latencyMs && n.latencyMs.p50));
      cell(tr, ms(n.latencyMs && n.latencyMs.p99), "p99");
      cell(tr, String(n.tcpConnections || 0), "tcp");
      cell(tr, String(n.meshed));
      cell(tr, sparkline(h.rps, 0));
      cell(tr, sparkline(h.success, 1));
      tr.addEventListener("click", () => selectService(key));
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }

  // -- routes and policies of one Service -------------------------------------------------------
  async function selectService(key) {
    state.selected = key;
    const [ns, name] = key.split("/");
    $("detail").hidden = false;
    $("detail-name").textContent = key;
    $("tap-kind").value = "svc";
    $("tap-name").value = name;
    const box = $("attached");
    box.replaceChildren();
    let doc;
    try {
      doc = await api("/api/v1/services/" + encodeURIComponent(ns) + "/" +
                      encodeURIComponent(name) + "/attached");
    } catch (e) {
      box.textContent = "cannot read: " + e.message;
      return;
    }
    for (const [title, items] of [["Routes", doc.routes], ["Policies", doc.policies]]) {
      const h = document.createElement("h3");
      h.textContent = title + " (" + items.length + ")";
      box.appendChild(h);
      for (const it of items) {
        const d = document.createElement("details");
        d.className = "attached";
        d.dataset.kind = it.kind;
        const s = document.createElement("summary");
        s.textContent = it.kind + " " + it.metadata.namespace + "/" + it.metadata.name;
        const pre = document.createElement("pre");
        pre.textContent = JSON.stringify({ spec: it.spec, status: it.status }, null, 2);
        d.append(s, pre);
        box.appendChild(d);
      }
    }
  }

  // -- live tap ---------------------------------------------------------------------------------
  async function startTap(evt) {
    evt.preventDefault();
    stopTap();
    const params = new URLSearchParams({ kind: $("tap-kind").value, name: $("tap-name").value,
                                         rate: "20" });
    const sel = state.selected || "";
    params.set("namespace", $("namespace").value || sel.split("/")[0] || "default");
    if ($("tap-path").value) params.set("path", $("tap-path").value);
    if ($("tap-status").value) params.set("status", $("tap-status").value);
    const ctrl = new AbortController();
    state.tap = ctrl;
    $("tap-stop").disabled = false;
    $("tap-state").textContent = "starting…";
    try {
      const r = await fetch("/api/v1/tap?" + params, { signal: ctrl.signal,
        headers: { authorization: "Bearer " + state.token } });
      if (!r.ok) {
        let msg = "HTTP " + r.status;
        try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
        $("tap-state").textContent = msg;
        return;
      }
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (line) tapItem(JSON.parse(line));
        }
        if (buf.length > 1 << 20) break; // not a line this API sends
      }
      $("tap-state").textContent = "ended";
    } catch (e) {
      if (e.name !== "AbortError") $("tap-state").textContent = "failed: " + e.message;
    } finally {
      if (state.tap === ctrl) { state.tap = null; $("tap-stop").disabled = true; }
    }
  }

  function stopTap() {
    if (state.tap) { state.tap.abort(); state.tap = null; }
    $("tap-stop").disabled = true;
    $("tap-state").textContent = "stopped";
  }

  function tapItem(item) {
    if (item.type === "started") {
      const untapped = item.untapped || [];  // an older build without tap (ADR 0122)
      $("tap-state").textContent = "tapping " + item.proxies.length + " proxies" +
        (untapped.length ? "; not tapped (no tap in their build): " + untapped.join(", ") : "");
      return;
    }
    if (item.type === "dropped") {
      $("tap-state").textContent = item.count + " requests over the rate not shown";
      return;
    }
    if (item.type !== "request") return;
    const tr = document.createElement("tr");
    const grpcFailed = item.grpc_status !== undefined && item.grpc_status !== "0";
    if (item.status >= 500 || !item.status || grpcFailed) tr.className = "fail";
    cell(tr, new Date(item.ts_ms).toLocaleTimeString());
    cell(tr, item.direction);
    cell(tr, item.proxy);
    cell(tr, item.method);
    cell(tr, item.authority || "");
    cell(tr, item.path, "path");
    cell(tr, String(item.status || "-") +
      (item.grpc_status !== undefined ? " grpc " + item.grpc_status : ""));
    cell(tr, ms(item.latency_ms));
    cell(tr, item.source || "");
    cell(tr, item.mtls ? "yes" : "no");
    const body = $("tap").querySelector("tbody");
    body.prepend(tr);
    while (body.rows.length > TAP_ROWS) body.deleteRow(-1);
  }

  // -- refresh loop -------------------------------------------------------------------------------
  async function refresh() {
    const params = new URLSearchParams({ window: $("window").value });
    if ($("namespace").value) params.set("namespace", $("namespace").value);
    try {
      const doc = await api("/api/v1/topology?" + params);
      drawGraph(doc);
      drawServices(doc);
      state.refreshes += 1;
      $("updated").textContent = new Date().toLocaleTimeString();
      setStatus(doc.nodes.length ? "live" : "no traffic reported yet", true);
    } catch (e) {
      state.errors += 1;
      if (e.message !== "unauthorized") setStatus("cannot read the API: " + e.message, false);
    }
  }

  function start() {
    $("login").hidden = true;
    $("main").hidden = false;
    refresh();
    if (!state.timer) state.timer = setInterval(refresh, REFRESH_MS);
  }

  window.tulleDashboard = { state: state, cy: null };
  document.addEventListener("DOMContentLoaded", () => {
    if (window.cytoscapeDagre) window.cytoscape.use(window.cytoscapeDagre);
    $("login-form").addEventListener("submit", (evt) => {
      evt.preventDefault();
      state.token = $("token").value.trim();
      sessionStorage.setItem("tulle-token", state.token);
      start();
    });
    $("tap-form").addEventListener("submit", startTap);
    $("tap-stop").addEventListener("click", stopTap);
    $("window").addEventListener("change", refresh);
    $("namespace").addEventListener("change", refresh);
    state.token = takeToken();
    if (state.token) start(); else showLogin("");
  });
})();
