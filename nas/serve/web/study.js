/* lightnas web page: one study. Progress, the Pareto plot of accuracy against a cost with the budget's
 * limits, over-budget samples apart and refined candidates with their lineage; the `where` filter of
 * `nas pareto`; the front's table; a trial's architecture, cost, learning curve, downloads; jobs.
 *
 * Reads: GET /studies/{name}, .../points, .../pareto, .../jobs, .../trials/{n}, exports (int8 ones with what the
 * server measured of them, its X-Lightnas-Deploy header).
 * Writes (with the user's token): PATCH /studies/{name} (target), POST .../trials/{n}/refine.
 */
"use strict";

(function () {
  const L = window.lightnas;
  const el = L.el;
  const $ = (id) => document.getElementById(id);
  const name = decodeURIComponent(location.pathname.replace(/^\/ui\/studies\//, "").replace(/\/+$/, ""));
  const base = "/studies/" + encodeURIComponent(name);
  const query = new URLSearchParams(location.search);
  const S = {
    info: null, points: null, front: [], jobs: [], sig: null, selected: null,
    x: query.get("x") || null, where: query.get("where") || "", includeRefined: query.get("refined") === "1",
  };
  document.title = "lightnas: " + name;
  $("name").textContent = name;
  $("where").value = S.where;
  $("include-refined").checked = S.includeRefined;

  // ---------------------------------------------------------------- loading
  async function load() {
    const info = await L.api(base);
    S.info = info;
    renderSummary(info);
    if (info.unreadable) {
      L.notice(info.unreadable);
      return;
    }
    L.notice("");
    const sig = JSON.stringify([info.target, info.finished, info.rejected, info.counts, info.jobs]);
    const jobsActive = (info.jobs.queued || 0) + (info.jobs.running || 0) > 0;
    if (sig !== S.sig) {
      const [points] = await Promise.all([L.api(base + "/points"), loadFront(), loadJobs()]);
      S.points = points;
      renderAxes();
      renderFront();
      renderPlot();
      if (S.sig !== null && S.selected) show(S.selected[0], S.selected[1], true);
      S.sig = sig;
    } else if (jobsActive) {
      await loadJobs();
    }
  }

  async function loadFront() {
    const q = new URLSearchParams();
    if (S.where) q.set("where", S.where);
    if (S.includeRefined) q.set("include_refined", "true");
    const answer = await L.api(base + "/pareto" + (q.toString() ? "?" + q : ""));
    S.front = answer.rows;
    renderFront();
  }

  async function loadJobs() {
    S.jobs = (await L.api(base + "/jobs")).jobs;
    renderJobs();
  }

  function syncUrl() {
    const q = new URLSearchParams();
    if (S.x) q.set("x", S.x);
    if (S.where) q.set("where", S.where);
    if (S.includeRefined) q.set("refined", "1");
    history.replaceState(null, "", location.pathname + (q.toString() ? "?" + q : ""));
  }

  // ---------------------------------------------------------------- summary and target
  function renderSummary(s) {
    const [state, why] = L.studyState(s);
    const c = s.counts || {};
    const part = (cls, n, text) => el("span", { class: cls }, el("b", {}, n), " " + text);
    $("progress").replaceChildren(el("span", {},
      el("span", { class: "badge " + state, title: why }, L.LABELS[state]), " ",
      el("progress", { max: Math.max(s.target, 1), value: Math.min(s.finished, Math.max(s.target, 1)) }),
      part("finished", s.finished + " / " + s.target, "networks within the budget"), " · ",
      part("rejected", s.rejected, "rejected over the budget"), " · ",
      part("running", c.running || 0, "running"), " · ",
      part("failed", c.fail || 0, "failed"),
      c.pruned ? [" · ", part("pruned", c.pruned, "stopped early")] : null,
      s.pareto_size !== null && s.pareto_size !== undefined ? [" · front of ", el("b", {}, s.pareto_size)] : null));
    const spec = s.spec || {};
    const share = s.feasibility && s.feasibility.share_within_budget;
    $("spec").replaceChildren(el("span", {},
      "space ", el("b", {}, spec.space || "?"), " on ", el("b", {}, spec.data || "?"),
      " · budget ", el("b", {}, spec.budget || "none"),
      " · objectives ", (spec.objectives || []).join(", "),
      " · sampler ", spec.sampler || "?",
      spec.fidelity ? " · " + spec.fidelity.epochs + " epochs" : "",
      spec.precision === "int8" ? " · int8 (" + spec.calibration + " calibration images)" : "",
      typeof share === "number" ? " · " + (100 * share).toPrecision(3) + "% of the space within the budget" : ""));
    const target = $("target");
    if (document.activeElement !== target) target.value = s.target;
    target.min = s.finished;
  }

  $("target-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const msg = $("target-msg");
    const value = Number($("target").value);
    if (!Number.isInteger(value) || value < 0) {
      L.report(new L.ApiError(0, "target: a whole number, at least " + S.info.finished), msg);
      return;
    }
    try {
      const info = await L.api(base, { method: "PATCH", body: { target: value } });
      L.ok(msg, "target set to " + info.target + "; workers pick it up");
      poller.now();
    } catch (err) {
      L.report(err, msg);
    }
  });

  // ---------------------------------------------------------------- the plot
  function costLabel(key) {
    return key === "hw_cost" ? "hw_cost (FS-DNN: mean of resource / limit)" : key;
  }

  function renderAxes() {
    const select = $("xaxis");
    const costs = S.points.costs;
    if (!S.x || !costs.includes(S.x)) S.x = costs[0] || null;
    const have = Array.from(select.options).map((o) => o.value).join(",");
    if (have !== costs.join(",")) {
      select.replaceChildren(...costs.map((c) => el("option", { value: c }, c)));
    }
    select.value = S.x;
  }

  function withinBudget(t) {
    return (t.state === "complete" && t.status !== "over_budget") || t.state === "pruned";
  }

  /** Text for plotly's labels, which read a little HTML: shown as typed, never as markup. */
  function esc(v) {
    return String(v).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function trialText(t, x) {
    const lines = ["trial " + t.number + " · " + esc(t.status || t.state)];
    if (t.accuracy !== null && t.status !== "over_budget") lines.push("accuracy " + L.fmt(t.accuracy, "accuracy"));
    lines.push(x + " " + L.fmt(t.cost[x], x));
    if (t.violations) {
      lines.push("over budget: " + Object.entries(t.violations)
        .map(([k, v]) => esc(k) + " +" + (100 * v).toPrecision(3) + "%").join(", "));
    }
    return lines.join("<br>");
  }

  function isLog(values, key) {
    const v = values.filter((a) => typeof a === "number");
    if (key === "hw_cost" || !v.length || Math.min(...v) <= 0) return false;
    return Math.max(...v) / Math.min(...v) > 30;
  }

  function renderPlot() {
    const box = $("plot");
    if (typeof Plotly === "undefined") {
      box.textContent = "The plot needs plotly.min.js, which this server does not have (pip install 'lightnas[api]').";
      return;
    }
    const P = S.points;
    const x = S.x;
    if (!x) {
      box.textContent = "No trials yet.";
      return;
    }
    const cx = (c) => (c && typeof c[x] === "number" ? c[x] : null);
    const within = P.trials.filter(withinBudget);
    const rejected = P.trials.filter((t) => t.status === "over_budget");
    const byNumber = new Map(P.trials.map((t) => [t.number, t]));
    const traces = [];
    traces.push({
      uid: "within", name: "within budget (" + within.length + ")", type: "scatter", mode: "markers",
      x: within.map((t) => cx(t.cost)), y: within.map((t) => t.accuracy),
      customdata: within.map((t) => ["trial", t.number]), text: within.map((t) => trialText(t, x)),
      hovertemplate: "%{text}<extra></extra>",
      marker: { size: 8, color: "#4c78a8", opacity: 0.8,
                symbol: within.map((t) => (t.state === "pruned" ? "circle-open" : "circle")) },
    });
    const onlyCost = P.objectives.filter((o) => o !== "accuracy");
    const front = S.front.slice().sort((a, b) => cx(a.cost) - cx(b.cost));
    traces.push({
      uid: "front", name: "Pareto front (" + front.length + ")" + (S.where ? " where " + esc(S.where) : ""),
      type: "scatter", mode: onlyCost.length === 1 && onlyCost[0] === x ? "lines+markers" : "markers",
      line: { shape: "hv", color: "#d62728", width: 1.5 },
      x: front.map((r) => cx(r.cost)), y: front.map((r) => r.accuracy),
      customdata: front.map((r) => (r.refined !== null && r.refined !== undefined ? ["refined", r.refined]
        : ["trial", r.trial])),
      text: front.map((r) => esc(r.source || "trial " + r.trial) + "<br>accuracy " + L.fmt(r.accuracy, "accuracy")
        + "<br>" + x + " " + L.fmt(r.cost[x], x)),
      hovertemplate: "%{text}<extra>front</extra>",
      marker: { size: 14, symbol: "diamond-open", color: "#d62728", line: { width: 2 } },
    });
    if (P.refined.length) {
      const lx = [];
      const ly = [];
      for (const r of P.refined) {
        let from = null;
        if (r.parent_step !== null) {
          from = P.refined.filter((o) => o.trial === r.trial && o.step === r.parent_step && o.refined < r.refined)
            .pop() || null;
        }
        if (!from) from = byNumber.get(r.trial) || null;
        if (!from || cx(from.cost) === null || from.accuracy === null) continue;
        lx.push(cx(from.cost), cx(r.cost), null);
        ly.push(from.accuracy, r.accuracy, null);
      }
      traces.push({
        uid: "lineage", name: "refinement lineage", type: "scatter", mode: "lines", x: lx, y: ly,
        hoverinfo: "skip", line: { dash: "dot", color: "#9467bd", width: 1.2 },
      });
      traces.push({
        uid: "refined", name: "refined (" + P.refined.length + ")", type: "scatter", mode: "markers",
        x: P.refined.map((r) => cx(r.cost)), y: P.refined.map((r) => r.accuracy),
        customdata: P.refined.map((r) => ["refined", r.refined]),
        text: P.refined.map((r) => esc(r.source) + "<br>from trial " + r.trial + ", step " + r.step
          + (r.parent_step !== null ? " after step " + r.parent_step : "") + "<br>accuracy "
          + L.fmt(r.accuracy, "accuracy") + "<br>" + x + " " + L.fmt(r.cost[x], x)),
        hovertemplate: "%{text}<extra>refined</extra>",
        marker: { size: 12, symbol: "star", color: "#9467bd", line: { width: 0.5, color: "#fff" } },
      });
    }
    traces.push({
      uid: "rejected", name: "over budget, not trained (" + rejected.length + ")", type: "scatter",
      mode: "markers", xaxis: "x", yaxis: "y2",
      x: rejected.map((t) => cx(t.cost)), y: rejected.map((t) => ((t.number * 0.618034) % 1) - 0.5),
      customdata: rejected.map((t) => ["trial", t.number]), text: rejected.map((t) => trialText(t, x)),
      hovertemplate: "%{text}<extra>rejected</extra>",
      marker: { size: 7, symbol: "x", color: "#98a2b3" },
    });
    const shapes = [];
    const annotations = [];
    const limit = P.limits[x];
    if (typeof limit === "number") {
      shapes.push({ type: "line", xref: "x", yref: "paper", x0: limit, x1: limit, y0: 0, y1: 1,
                    line: { color: "#b42318", width: 1.5, dash: "dash" } });
      annotations.push({ xref: "x", yref: "paper", x: limit, y: 1, yanchor: "bottom", showarrow: false,
                         font: { color: "#b42318", size: 12 },
                         text: x === "hw_cost" ? "every resource at its limit (hw_cost " + L.fmt(limit, x) + ")"
                           : "budget " + x + " ≤ " + L.fmt(limit, x) });
    }
    const xs = P.trials.map((t) => cx(t.cost)).concat(typeof limit === "number" ? [limit] : []);
    const layout = {
      margin: { l: 64, r: 24, t: 36, b: 48 },
      xaxis: { title: { text: costLabel(x) }, type: isLog(xs, x) ? "log" : "linear", anchor: "y2", zeroline: false },
      yaxis: { title: { text: isInt8() ? "validation accuracy (int8)" : "validation accuracy" }, domain: [0.2, 1],
               zeroline: false },
      yaxis2: { domain: [0, 0.13], range: [-0.8, 0.8], showticklabels: false, showgrid: false, zeroline: false,
                title: { text: "over<br>budget", font: { size: 11 } }, fixedrange: true },
      shapes, annotations, hovermode: "closest", uirevision: x,
      legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom", xanchor: "left" },
      plot_bgcolor: "#fff", paper_bgcolor: "#fff",
    };
    if (typeof limit === "number") layout.margin.t = 64;
    Plotly.react(box, traces, layout, { displaylogo: false, responsive: true });
    if (!box.dataset.wired) {
      box.dataset.wired = "1";
      box.on("plotly_click", (ev) => {
        const cd = ev.points && ev.points[0] && ev.points[0].customdata;
        if (cd) show(cd[0], cd[1]);
      });
    }
  }

  $("xaxis").addEventListener("change", () => {
    S.x = $("xaxis").value;
    syncUrl();
    renderPlot();
  });

  // ---------------------------------------------------------------- the where filter and the front
  $("plot-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const before = [S.where, S.includeRefined];
    S.where = $("where").value.trim();
    S.includeRefined = $("include-refined").checked;
    const error = $("where-error");
    try {
      await loadFront();
      error.hidden = true;
      syncUrl();
      renderPlot();
    } catch (err) {
      [S.where, S.includeRefined] = before;
      L.report(err, error);
      error.className = "error";
    }
  });
  $("include-refined").addEventListener("change", () => $("plot-form").requestSubmit());
  $("where-clear").addEventListener("click", () => {
    $("where").value = "";
    $("plot-form").requestSubmit();
  });

  /** A study searched with precision int8: its accuracies are the int8 networks'. */
  function isInt8() {
    return !!(S.info && S.info.spec && S.info.spec.precision === "int8");
  }

  /** A row's value of a cost: in its cost totals, or beside them (the deploy figures). */
  function costOf(r, c) {
    const v = r.cost && r.cost[c] !== undefined ? r.cost[c] : r[c];
    return v === undefined ? null : v;
  }

  const COLUMN_NAMES = { ram_bytes: ["RAM", "ram_bytes: int8 network's RAM in TFLM (tensor arena)"],
                         flash_bytes: ["flash", "flash_bytes: int8 network's flash (the .tflite file)"] };

  function frontColumns() {
    const P = S.points;
    const costs = P ? P.objectives.filter((o) => o !== "accuracy") : [];
    for (const k of Object.keys(P ? P.limits : {})) if (!costs.includes(k)) costs.push(k);
    for (const k of ["flops", "params"]) if (!costs.includes(k)) costs.push(k);
    for (const k of ["ram_bytes", "flash_bytes"]) {  // when the rows have them (a device with a TFLM runtime)
      if (!costs.includes(k) && S.front.some((r) => typeof costOf(r, k) === "number")) costs.push(k);
    }
    return costs;
  }

  function renderFront() {
    const table = $("front");
    const costs = frontColumns();
    const int8 = isInt8();
    const num = (text, title) => el("th", { class: "num", title }, text);
    table.tHead.replaceChildren(el("tr", {}, el("th", {}, "network"),
      int8 ? [num("int8 accuracy", "validation accuracy of the int8 network (the search's accuracy)"),
              num("fp32 accuracy", "validation accuracy before quantization"),
              num("int8 drop", "fp32 accuracy - int8 accuracy")]
        : num("accuracy"),
      num("test accuracy"),
      costs.map((c) => (COLUMN_NAMES[c] ? num(COLUMN_NAMES[c][0], COLUMN_NAMES[c][1]) : num(c))),
      el("th", {}, "spec")));
    const rows = S.front.map((r) => {
      const refined = r.refined !== null && r.refined !== undefined;
      const what = refined ? ["refined", r.refined] : ["trial", r.trial];
      const int8Acc = r.int8_accuracy !== undefined && r.int8_accuracy !== null ? r.int8_accuracy : r.accuracy;
      return el("tr", { class: "front-row", dataset: refined ? { refined: r.refined } : { trial: r.trial },
                        tabindex: 0, onclick: () => show(what[0], what[1]),
                        onkeydown: (e) => { if (e.key === "Enter") show(what[0], what[1]); } },
        el("td", {}, r.source || "trial " + r.trial),
        int8 ? [el("td", { class: "num int8-accuracy" }, L.fmt(int8Acc, "accuracy")),
                el("td", { class: "num fp32-accuracy" }, L.fmt(r.fp32_accuracy, "accuracy")),
                el("td", { class: "num int8-drop" }, L.fmt(r.int8_drop, "accuracy"))]
          : el("td", { class: "num" }, L.fmt(r.accuracy, "accuracy")),
        el("td", { class: "num" }, L.fmt(r.test_accuracy, "accuracy")),
        costs.map((c) => el("td", { class: "num", dataset: { cost: c } }, L.fmt(costOf(r, c), c))),
        el("td", { class: "muted" }, r.spec_hash));
    });
    table.tBodies[0].replaceChildren(...rows);
    $("front-count").textContent = "(" + S.front.length + (S.where ? " where " + S.where : "")
      + (S.includeRefined ? ", refined candidates included" : "") + ")";
  }

  // ---------------------------------------------------------------- a trial or a refined candidate
  async function show(kind, id, quiet) {
    S.selected = [kind, id];
    for (const tr of document.querySelectorAll("#front tr.selected")) tr.classList.remove("selected");
    const sel = document.querySelector(`#front tr[data-${kind}="${Number(id)}"]`);
    if (sel) sel.classList.add("selected");
    const box = $("detail");
    try {
      if (kind === "trial") renderTrial(await L.api(base + "/trials/" + Number(id)));
      else renderRefined(id);
      box.hidden = false;
      if (!quiet) box.scrollIntoView({ behavior: "smooth", block: "start" });
    } catch (err) {
      box.replaceChildren(el("p", { class: "error" }, err.message));
      box.hidden = false;
    }
  }

  const FORMATS = ["json", "onnx", "state_dict", "tflite", "onnx-int8"];
  const INT8_FORMATS = ["tflite", "onnx-int8"];

  function downloads(prefix, formats, label) {
    const msg = el("span", { class: "msg" });
    const measured = el("p", { class: "deploy muted", hidden: true });
    const names = { json: "spec JSON", onnx: "ONNX", state_dict: "weights (state_dict)", tflite: "int8 TFLite",
                    "onnx-int8": "int8 ONNX" };
    const titles = { tflite: "full-integer int8 .tflite for TFLM and LiteRT: calibrated, converted and measured "
                       + "on the server (seconds)",
                     "onnx-int8": "int8 QDQ ONNX for ONNX Runtime: calibrated and measured on the server" };
    return el("div", {}, el("div", { class: "buttons" }, "Download " + label + ":",
      formats.map((f) => el("button", {
        type: "button", class: "download" + (INT8_FORMATS.includes(f) ? " int8" : ""), dataset: { format: f },
        title: titles[f],
        onclick: async () => {
          msg.textContent = "preparing " + names[f] + (INT8_FORMATS.includes(f) ? " (quantizing, measuring)…" : "…");
          msg.className = "msg";
          try {
            const got = await L.download(prefix + "/export?format=" + encodeURIComponent(f));
            L.ok(msg, "downloaded " + got.name);
            showDeploy(measured, got.deploy);
          } catch (err) {
            L.report(err, msg);
          }
        },
      }, names[f])), msg), measured);
  }

  /** What an int8 export measured (the X-Lightnas-Deploy header): RAM and flash against the prediction and the
   * budget, accuracies in the runtimes, anything over the budget. */
  function showDeploy(box, d) {
    if (!d) return;
    const acc = (o) => (o && typeof o.accuracy === "number" ? L.fmt(o.accuracy, "accuracy") : "–");
    const of = (limit, key) => (typeof limit === "number" ? " of " + L.fmt(limit, key) : "");
    const fp32 = d.fp32 && typeof d.fp32.accuracy === "number" ? " (fp32 " + acc(d.fp32) + ")" : "";
    const parts = [];
    const t = d.tflite;
    if (t) {
      parts.push("RAM " + L.fmt(t.ram_bytes, "ram_bytes") + of(t.ram_bytes_limit, "ram_bytes")
        + " (TFLM arena; predicted " + L.fmt(t.ram_predicted, "ram_bytes") + ")");
      parts.push("flash " + L.fmt(t.flash_bytes, "flash_bytes") + of(t.flash_bytes_limit, "flash_bytes")
        + " (predicted " + L.fmt(t.flash_predicted, "flash_bytes") + ")");
      parts.push("accuracy LiteRT " + acc(t.litert) + ", TFLM " + acc(t.tflm) + fp32);
    }
    const o = d["onnx-int8"];
    if (o) parts.push("accuracy ONNX Runtime " + acc(o.onnxruntime) + fp32 + " · " + L.fmt(o.bytes, "flash_bytes"));
    const over = d.over_budget || [];
    box.replaceChildren(el("span", {}, "Measured on the " + (d.split || "test") + " split (" + d.calibration
      + " calibration images): " + parts.join(" · "),
      over.length ? el("span", { class: "over" }, " · over the budget: " + over.join("; ")) : null));
    box.hidden = false;
  }

  function specTable(spec, report) {
    const rows = [];
    const td = (v) => el("td", { class: "num" }, v === null || v === undefined ? "–" : v);
    rows.push(el("tr", {}, el("td", {}, "stem"), el("td", {}, "conv"), td(spec.stem.out_channels), td(null),
      td(null), td(spec.stem.kernel), td(spec.stem.stride), td(1)));
    spec.stages.forEach((stage, i) => stage.blocks.forEach((b, j) => {
      rows.push(el("tr", {}, el("td", {}, "stage " + i + " block " + j), el("td", {}, b.type),
        td(b.out_channels), td(b.mid_channels), td(b.mid2_channels), td(b.kernel), td(b.stride), td(b.rank_ratio)));
    }));
    const h = spec.head;
    rows.push(el("tr", {}, el("td", {}, "head"), el("td", {}, h.hidden ? "linear, hidden " + h.hidden : "linear"),
      td(report ? report.num_classes : null), td(h.hidden), td(null), td(null), td(null), td(h.rank_ratio)));
    return el("table", { class: "grid arch" },
      el("thead", {}, el("tr", {}, ["part", "type", "out", "mid", "mid2", "kernel", "stride", "rank ratio"]
        .map((c) => el("th", {}, c)))),
      el("tbody", {}, rows));
  }

  function costTable(totals) {
    const limits = S.points ? S.points.limits : {};
    const keys = Object.keys(totals);
    return el("table", { class: "grid cost" },
      el("thead", {}, el("tr", {}, el("th", {}, "resource"), el("th", { class: "num" }, "value"),
        el("th", { class: "num" }, "budget"), el("th", { class: "num" }, "of the limit"))),
      el("tbody", {}, keys.map((k) => {
        const limit = limits[k];
        const share = typeof limit === "number" && typeof totals[k] === "number" ? totals[k] / limit : null;
        return el("tr", { class: share !== null && share > 1 ? "over" : null }, el("td", {}, k),
          el("td", { class: "num" }, L.fmt(totals[k], k)),
          el("td", { class: "num" }, typeof limit === "number" ? L.fmt(limit, k) : ""),
          el("td", { class: "num" }, share === null ? "" : (100 * share).toPrecision(3) + "%"));
      })));
  }

  function layerTable(rows) {
    const cols = ["name", "kind", "in_shape", "out_shape", "macs", "params", "traffic_bytes", "live_bytes",
                  "latency_ms"];
    return el("details", {}, el("summary", {}, "per-layer cost (" + rows.length + " layers)"),
      el("table", { class: "grid layers" }, el("thead", {}, el("tr", {}, cols.map((c) => el("th", {}, c)))),
        el("tbody", {}, rows.map((r) => el("tr", {}, cols.map((c) => el("td", { class: c === "name" || c === "kind"
          ? null : "num" }, Array.isArray(r[c]) ? r[c].join("×") : typeof r[c] === "number" ? L.fmt(r[c], c)
          : r[c])))))));
  }

  function refineForm(number) {
    const msg = el("span", { class: "msg" });
    const reuse = el("input", { type: "checkbox", checked: true });
    const ft = el("input", { type: "number", min: 1, placeholder: "8", class: "small" });
    const it = el("input", { type: "number", min: 1, placeholder: "3", class: "small" });
    const lr = el("input", { type: "text", placeholder: "e.g. params<=20k", spellcheck: "false" });
    return el("form", {
      class: "inline write refine", autocomplete: "off",
      onsubmit: async (e) => {
        e.preventDefault();
        const body = { reuse_weights: reuse.checked };
        if (ft.value) body.finetune_epochs = Number(ft.value);
        if (it.value) body.iterations = Number(it.value);
        if (lr.value.trim()) body.low_rank = lr.value.trim();
        try {
          const job = await L.api(base + "/trials/" + number + "/refine", { method: "POST", body });
          L.ok(msg, "job " + job.id + " " + job.state + (job.state === "queued" ? ": a worker will run it" : ""));
          poller.now();
        } catch (err) {
          L.report(err, msg);
        }
      },
    }, el("button", { type: "submit", class: "primary" }, "Refine"),
      el("label", {}, reuse, " reuse the search's weights"),
      el("label", {}, "fine-tune epochs ", ft), el("label", {}, "iterations ", it),
      el("label", {}, "low rank ", lr), msg);
  }

  function renderTrial(d) {
    const box = $("detail");
    const m = d.metrics || {};
    const trained = d.status === "trained" || d.status === "reused" || d.status === "finetuned";
    const head = el("h2", {}, "Trial " + d.number + " ", el("span", { class: "badge" }, d.status || d.state));
    const facts = [];
    if (d.accuracy !== null && d.status !== "over_budget") {
      facts.push("validation accuracy " + (typeof m.fp32_accuracy === "number" ? "(int8) " : "")
        + L.fmt(d.accuracy, "accuracy"));
    }
    if (d.accuracy_source) facts.push("accuracy: " + d.accuracy_source);
    if (typeof m.fp32_accuracy === "number") {
      facts.push("fp32 " + L.fmt(m.fp32_accuracy, "accuracy") + ", drop " + L.fmt(m.int8_drop, "accuracy"));
    }
    if (m.test_accuracy !== null && m.test_accuracy !== undefined) facts.push("test " + L.fmt(m.test_accuracy, "accuracy"));
    if (m.epochs_run) facts.push(m.epochs_run + " epochs");
    if (typeof m.train_seconds === "number") facts.push(m.train_seconds.toFixed(1) + " s training");
    if (d.spec_hash) facts.push("spec " + d.spec_hash.slice(0, 12));
    if (d.fail_reason) facts.push("failed: " + d.fail_reason);
    const parts = [head, el("p", { class: "muted" }, facts.join(" · "))];
    if (m.violations) {
      parts.push(el("p", { class: "over" }, "Over the budget, rejected before training: " + Object.entries(m.violations)
        .map(([k, v]) => k + " +" + (100 * v).toPrecision(3) + "%").join(", ")));
    }
    const prefix = base + "/trials/" + d.number;
    parts.push(downloads(prefix, trained ? FORMATS : ["json"], "trial " + d.number));
    if (trained && L.writes !== "none") parts.push(refineForm(d.number));
    const cols = el("div", { class: "cols" });
    if (d.spec) cols.append(el("div", {}, el("h3", {}, "Architecture"), specTable(d.spec, d.cost_report)));
    if (d.cost_report) cols.append(el("div", {}, el("h3", {}, "Cost"), costTable(d.cost_report.totals)));
    const curve = el("div", { class: "curve", id: "curve" });
    if (m.curve && m.curve.length) cols.append(el("div", {}, el("h3", {}, "Learning curve"), curve));
    parts.push(cols);
    if (d.cost_report && d.cost_report.rows) parts.push(layerTable(d.cost_report.rows));
    parts.push(lineage(d));
    box.replaceChildren(...parts);
    if (m.curve && m.curve.length && typeof Plotly !== "undefined") {
      Plotly.newPlot(curve, [{ x: m.curve.map((_, i) => i + 1), y: m.curve, mode: "lines+markers", type: "scatter",
                               name: "validation accuracy", line: { color: "#4c78a8" } }],
        { margin: { l: 52, r: 12, t: 10, b: 40 }, xaxis: { title: { text: "epoch" }, dtick: 1 },
          yaxis: { title: { text: "validation accuracy" } }, showlegend: false },
        { displaylogo: false, responsive: true });
    }
  }

  function lineage(d) {
    const l = d.lineage || {};
    const items = [];
    if (l.retry_of !== null && l.retry_of !== undefined) items.push(el("li", {}, "a retry of trial " + l.retry_of));
    if (l.worker) items.push(el("li", {}, "worker " + l.worker));
    if (l.jobs && l.jobs.length) items.push(el("li", {}, "refinement jobs: " + l.jobs.map((j) => "#" + j).join(", ")));
    const out = [el("h3", {}, "Lineage"), el("ul", {}, items.length ? items : el("li", { class: "muted" }, "searched"))];
    if (l.refined && l.refined.length) {
      out.push(el("table", { class: "grid clickable refined" },
        el("thead", {}, el("tr", {}, ["candidate", "step", "after step", "accuracy", "flops", "params"]
          .map((c) => el("th", {}, c)))),
        el("tbody", {}, l.refined.map((r) => el("tr", { onclick: () => show("refined", r.refined) },
          el("td", {}, "refined " + r.refined + " (" + r.method + ")"), el("td", { class: "num" }, r.step),
          el("td", { class: "num" }, r.parent_step === null ? "–" : r.parent_step),
          el("td", { class: "num" }, L.fmt(r.val_accuracy, "accuracy")),
          el("td", { class: "num" }, L.fmt(r.flops, "flops")), el("td", { class: "num" }, L.fmt(r.params, "params")))))));
    }
    return el("div", {}, out);
  }

  function renderRefined(id) {
    const r = (S.points ? S.points.refined : []).find((o) => o.refined === Number(id));
    const box = $("detail");
    if (!r) {
      box.replaceChildren(el("p", { class: "error" }, "refined candidate " + id + " is not within the budget"));
      return;
    }
    box.replaceChildren(
      el("h2", {}, "Refined candidate " + r.refined + " ", el("span", { class: "badge" }, r.method)),
      el("p", { class: "muted" }, r.source + " · from ",
        el("a", { href: "#", onclick: (e) => { e.preventDefault(); show("trial", r.trial); } }, "trial " + r.trial),
        ", step " + r.step + (r.parent_step !== null ? " after step " + r.parent_step : "")
          + " · validation accuracy " + L.fmt(r.accuracy, "accuracy") + " · spec " + r.spec_hash),
      downloads(base + "/refined/" + r.refined, FORMATS, "candidate " + r.refined),
      el("div", { class: "cols" }, el("div", {}, el("h3", {}, "Cost"), costTable(r.cost))));
  }

  // ---------------------------------------------------------------- jobs
  function renderJobs() {
    const rows = S.jobs.map((j) => el("tr", { dataset: { job: j.id } },
      el("td", {}, "#" + j.id), el("td", {}, el("a", { href: "#", onclick: (e) => { e.preventDefault(); show("trial", j.trial); } },
        "trial " + j.trial)),
      el("td", {}, el("span", { class: "badge " + (j.state === "failed" ? "failed" : j.state === "done" ? "done" : "searching") },
        j.state)),
      el("td", { class: "num" }, j.attempts), el("td", {}, (j.progress && j.progress.message) || ""),
      el("td", { class: "error" }, j.error || ""), el("td", {}, L.when(j.created_at))));
    $("jobs").tBodies[0].replaceChildren(...rows);
    $("no-jobs").hidden = S.jobs.length > 0;
  }

  const poller = L.poll(load, () => !!S.info && L.busy(S.info));
  L.onToken(() => {
    S.sig = null;
    poller.now();
  });
})();
