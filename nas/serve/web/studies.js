/* lightnas web page: the studies (GET /studies), refreshed every 2 s while any has work running, and the
   supernets with their ranking check (GET /supernets). */
"use strict";

(function () {
  const L = window.lightnas;
  const el = L.el;
  const tbody = document.querySelector("#studies tbody");
  let studies = [];

  function row(s) {
    const [state, why] = L.studyState(s);
    const c = s.counts || {};
    const spec = s.spec || {};
    const jobs = Object.entries(s.jobs || {}).map(([k, v]) => v + " " + k).join(", ");
    return el("tr", { dataset: { study: s.name } },
      el("td", {}, el("a", { href: "/ui/studies/" + encodeURIComponent(s.name), class: "study-link" }, s.name)),
      el("td", {}, el("span", { class: "badge " + state, title: why }, L.LABELS[state])),
      el("td", { class: "progress" },
        el("progress", { max: Math.max(s.target, 1), value: Math.min(s.finished, Math.max(s.target, 1)) }),
        el("span", { class: "finished" }, s.finished + " / " + s.target)),
      el("td", { class: "num rejected" }, s.rejected),
      el("td", { class: "num running" }, c.running || 0),
      el("td", { class: "num failed" }, c.fail || 0),
      el("td", {}, spec.space ? spec.space + " on " + spec.data : "–"),
      el("td", {}, spec.budget || "none"),
      el("td", {}, (spec.objectives || []).join(", ")),
      el("td", {}, jobs || "–"),
      el("td", {}, L.when(s.created_at)));
  }

  function num(v) {
    return v === null || v === undefined ? "undefined" : Number(v).toFixed(3);
  }

  function supernetRow(s) {
    const check = s.check_n === null || s.check_n === undefined ? "none yet" :
      num(s.kendall_tau) + " / " + num(s.spearman_rho) + " (" + s.check_n + " subnets, " + s.check_epochs +
      " epoch(s) stand-alone)";
    return el("tr", { dataset: { supernet: s.name } },
      el("td", {}, s.name),
      el("td", {}, s.space + " on " + s.data + (s.input ? " (" + s.input + ")" : "")),
      el("td", {}, s.status + " " + s.epochs),
      el("td", { class: "num" }, s.params === null || s.params === undefined ? "-" : s.params),
      el("td", { class: "tau" }, check));
  }

  async function load() {
    const data = await L.api("/studies");
    studies = data.studies;
    L.notice("");
    tbody.replaceChildren(...studies.map(row));
    document.getElementById("empty").hidden = studies.length > 0;
    const supernets = await L.api("/supernets");
    const table = document.getElementById("supernets");
    table.querySelector("tbody").replaceChildren(...supernets.map(supernetRow));
    table.hidden = supernets.length === 0;
  }

  const poller = L.poll(load, () => studies.some(L.busy));
  L.onToken(() => poller.now());
})();
