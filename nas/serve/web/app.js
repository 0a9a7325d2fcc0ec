/* lightnas web page: what both pages share (API calls with the user's token, refresh, formatting).
 *
 * Plain JavaScript, no build step. Every datum comes from the JSON API of the same server. The token
 * the user types is kept in this tab's sessionStorage (gone when the tab closes) and sent only as an
 * Authorization header: never in a URL, a cookie or a log. Text from the server is set as text
 * (textContent), never parsed as HTML.
 */
"use strict";

(function () {
  const KEY = "lightnas.token";
  const FAST = 2000; // ms between refreshes while work runs
  const SLOW = 15000; // ms between refreshes otherwise
  const HIDDEN = 60000; // ms between refreshes while the tab is hidden
  const body = document.body;
  const reads = body.dataset.reads; // "open" | "token" (--protect-reads)
  const writes = body.dataset.writes; // "token" | "none" (--read-only) | "open" (--insecure)
  let memoryToken = ""; // where sessionStorage is unavailable (then the token lasts as long as the page)

  class ApiError extends Error {
    constructor(status, message, field) {
      super(message);
      this.status = status;
      this.field = field || null;
    }
  }

  function token() {
    try {
      return sessionStorage.getItem(KEY) || "";
    } catch (e) {
      return memoryToken;
    }
  }

  function setToken(value) {
    memoryToken = value;
    try {
      if (value) sessionStorage.setItem(KEY, value);
      else sessionStorage.removeItem(KEY);
    } catch (e) {
      /* memory only */
    }
  }

  /** Call the JSON API; resolves to the parsed body (or the Response with raw), throws ApiError. */
  async function api(path, opts = {}) {
    const headers = { Accept: "application/json" };
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    let payload;
    if (opts.body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(opts.body);
    }
    let r;
    try {
      r = await fetch(path, { method: opts.method || "GET", headers, body: payload, cache: "no-store",
                             credentials: "omit", redirect: "error" });
    } catch (e) {
      throw new ApiError(0, "the server does not answer; is nas serve running?");
    }
    if (r.ok && opts.raw) return r;
    const text = await r.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    if (!r.ok) {
      const message = data && typeof data.message === "string" ? data.message : "HTTP " + r.status;
      throw new ApiError(r.status, message, data && data.field);
    }
    return data;
  }

  /** A DOM element: el("td", {class: "num", onclick: f, dataset: {trial: 3}}, "text", child, ...). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "value") node.value = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  const BYTES = new Set(["weight_bytes", "activation_bytes", "mem_traffic_bytes", "peak_activation_bytes",
                         "traffic_bytes", "live_bytes", "ram_bytes", "flash_bytes"]);
  const ACCURACY = new Set(["accuracy", "val_accuracy", "test_accuracy", "fp32_accuracy", "int8_accuracy"]);

  function short(v) {
    return String(Number(v.toPrecision(3)));
  }

  function si(v) {
    const a = Math.abs(v);
    if (a >= 1e9) return short(v / 1e9) + "G";
    if (a >= 1e6) return short(v / 1e6) + "M";
    if (a >= 1e3) return short(v / 1e3) + "k";
    return Number.isInteger(v) ? String(v) : short(v);
  }

  function binary(v) {
    const a = Math.abs(v);
    if (a >= 1024 ** 3) return short(v / 1024 ** 3) + " GiB";
    if (a >= 1024 ** 2) return short(v / 1024 ** 2) + " MiB";
    if (a >= 1024) return short(v / 1024) + " KiB";
    return String(v) + " B";
  }

  /** A value as people read it: accuracy to 4 places, counts in SI, bytes in KiB/MiB, units named. */
  function fmt(v, key) {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    if (ACCURACY.has(key)) return v.toFixed(4);
    if (key === "hw_cost") return v.toFixed(3);
    if (key === "latency_ms") return short(v) + " ms";
    if (key === "energy_uj") return short(v) + " µJ";
    if (BYTES.has(key)) return binary(v);
    return si(v);
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : "–";
  }

  /** [state, why] of a study, from what GET /studies says: counts, target, running trials, jobs. */
  function studyState(s) {
    if (s.unreadable) return ["unreadable", s.unreadable];
    const running = (s.counts && s.counts.running) || 0;
    const jobs = ((s.jobs && s.jobs.queued) || 0) + ((s.jobs && s.jobs.running) || 0);
    if (s.finished < s.target) {
      return running ? ["searching", running + " trial(s) running"]
        : ["waiting", "networks left to evaluate, but no worker is running a trial of it (start nas worker)"];
    }
    if (running) return ["searching", "target met; " + running + " trial(s) still running"];
    if (jobs) return ["searching", jobs + " refinement job(s) queued or running"];
    if (s.target === 0) return ["not-started", "target 0: set a target to start the search"];
    return ["done", "target met"];
  }

  const LABELS = { searching: "searching", waiting: "waiting for a worker", done: "done",
                   "not-started": "not started", unreadable: "unreadable" };

  function busy(s) {
    const [state] = studyState(s);
    return state === "searching" || state === "waiting";
  }

  function notice(message) {
    const n = document.getElementById("notice");
    n.textContent = message || "";
    n.hidden = !message;
  }

  /** Say what went wrong; a 401 on a read means the server protects reads and wants a token. */
  function report(err, target) {
    let message = err.message;
    if (err.status === 401 && !token()) {
      message = reads === "token" || !target
        ? "This server protects reads: enter a token of NAS_API_TOKEN or NAS_API_READ_TOKEN above."
        : "Writes need a token: enter a write token (NAS_API_TOKEN) above.";
      document.getElementById("token").focus();
    }
    if (target) {
      target.textContent = message;
      target.className = "msg error";
      target.hidden = false;
    } else {
      notice(message);
    }
  }

  function ok(target, message) {
    target.textContent = message;
    target.className = "msg ok";
    target.hidden = false;
  }

  /** Run load() now and again: every 2 s while busy() says work runs, else every 15 s. */
  function poll(load, isBusy) {
    let timer = null;
    let running = false;
    let again = false;
    const live = document.getElementById("live");
    const updated = document.getElementById("updated");

    async function tick() {
      if (running) {
        again = true;
        return;
      }
      running = true;
      clearTimeout(timer);
      try {
        await load();
        updated.textContent = "Updated " + new Date().toLocaleTimeString() + ".";
      } catch (e) {
        report(e);
      } finally {
        running = false;
      }
      if (again) {
        again = false;
        tick();
        return;
      }
      const fast = isBusy();
      live.classList.toggle("on", fast);
      live.textContent = fast ? "live" : "";
      timer = setTimeout(tick, document.hidden ? HIDDEN : fast ? FAST : SLOW);
    }

    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) tick();
    });
    tick();
    return { now: tick };
  }

  /** Download an API file through fetch (so that the token travels in its header, not the URL).
   * Resolves to { name, deploy }: the file's name and, for an int8 export, what the server measured
   * (the X-Lightnas-Deploy header, parsed; null otherwise). */
  async function download(path) {
    const r = await api(path, { raw: true });
    const blob = await r.blob();
    const m = /filename="([^"]+)"/.exec(r.headers.get("Content-Disposition") || "");
    const name = m ? m[1] : "download";
    let deploy = null;
    try {
      deploy = JSON.parse(r.headers.get("X-Lightnas-Deploy") || "null");
    } catch (e) {
      deploy = null;
    }
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000); // after the browser has taken the file
    return { name, deploy };
  }

  // ---------------------------------------------------------------- the token box
  const listeners = [];

  function showTokenState() {
    const has = !!token();
    document.getElementById("token-forget").hidden = !has;
    const state = document.getElementById("token-state");
    if (writes === "none") state.textContent = has ? "token in use (read-only server)" : "read-only server";
    else if (writes === "open") state.textContent = "writes need no token here (--insecure)";
    else state.textContent = has ? "token in use (this tab only)" : "";
    for (const w of document.querySelectorAll(".write")) w.hidden = writes === "none";
  }

  function wireToken() {
    const form = document.getElementById("token-form");
    const input = document.getElementById("token");
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const value = input.value.trim();
      input.value = "";
      if (!value) return;
      setToken(value);
      notice("");
      showTokenState();
      for (const f of listeners) f();
    });
    document.getElementById("token-forget").addEventListener("click", () => {
      setToken("");
      showTokenState();
      for (const f of listeners) f();
    });
    showTokenState();
    if (reads === "token" && !token()) {
      notice("This server protects reads: enter a token of NAS_API_TOKEN or NAS_API_READ_TOKEN above.");
    }
  }

  wireToken();

  window.lightnas = {
    ApiError, api, el, fmt, when, studyState, LABELS, busy, notice, report, ok, poll, download,
    onToken: (f) => listeners.push(f), writes, reads, hasToken: () => !!token(),
  };
})();
