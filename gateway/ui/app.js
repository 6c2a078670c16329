// gpufaas dashboard: polls /ui/state once a second and redraws. Plain DOM, no framework, no outside file.
// Names come from the gateway and are set as text (never as HTML).
"use strict";

const PERIOD_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

function setText(id, text) {
  document.getElementById(id).textContent = text;
}

function pct(x) {
  return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %";
}

function usd(x) {
  return "$" + (x >= 1 ? x.toFixed(2) : x.toFixed(4));
}

// A sparkline of `values` (nulls are gaps) in the <svg> `svg`; `max` fixes the top (else the largest value).
function spark(svg, values, max) {
  const w = 160, h = 32;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("preserveAspectRatio", "none");  // stretch to the card's width (the line's shape is what counts)
  svg.replaceChildren();
  const n = values.length;
  if (n < 2) return;
  const top = max !== undefined ? max : Math.max(1e-9, ...values.filter((v) => v !== null));
  let d = "", pen = false;
  values.forEach((v, i) => {
    if (v === null) { pen = false; return; }
    const x = (i / (n - 1)) * w, y = h - 1 - (Math.min(v, top) / top) * (h - 2);
    d += (pen ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
    pen = true;
  });
  const p = document.createElementNS(SVG, "path");
  p.setAttribute("d", d);
  svg.append(p);
}

function bar(kind, segments, total, label) {
  const b = el("div", { class: "bar " + kind });
  let used = 0;
  for (const s of segments.filter((x) => x.amount > 0)) {
    const seg = el("div", { class: "seg st-" + s.state, title: s.title }, el("span", {}, s.text));
    seg.style.width = (100 * s.amount / total) + "%";
    for (const [k, v] of Object.entries(s.data || {})) seg.setAttribute(k, v);
    b.append(seg);
    used += s.amount;
  }
  if (used < total) {
    const free = el("div", { class: "seg st-free" });
    free.style.width = (100 * (total - used) / total) + "%";
    b.append(free);
  }
  return el("div", { class: "barrow" }, el("span", { class: "barlabel" }, label), b);
}

function renderGpus(gpus) {
  const box = document.getElementById("gpus");
  box.replaceChildren(...gpus.map((g) => {
    const insts = g.instances.map((i) => ({
      amount: i.share * g.share_units, state: i.state,
      text: `${i.function} · ${i.state}${i.backlog ? " +" + i.backlog : ""}`,
      title: `${i.id}: ${i.function}, share ${i.share}, ${i.state}${i.stopping ? " (stopping)" : ""}, backlog ${i.backlog}`,
      data: { "data-function": i.function, "data-state": i.state, "data-instance": i.id },
    }));
    const usedMb = g.memory_mb - g.free_mb;
    const gib = (mb) => (mb / 1024).toFixed(1);
    const mem = [{ amount: usedMb, state: "mem", text: "", title: `${usedMb.toFixed(0)} of ${g.memory_mb} MB in use` }];
    return el("div", { class: "gpu", "data-gpu": g.id },
      el("div", { class: "gpuname" }, `${g.id}`, el("span", { class: "hint" },
        ` ${g.type} · ${g.node} · ${g.share_units - g.free_units}/${g.share_units} share units · ${gib(usedMb)}/${gib(g.memory_mb)} GiB`)),
      bar("share", insts, g.share_units, "share"),
      bar("mem", mem, g.memory_mb, "memory"));
  }));
}

function renderWorkflows(doc) {
  const tbody = document.querySelector("#workflows tbody");
  tbody.replaceChildren(...doc.workflows.map((w) => {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "spark");
    spark(svg, doc.series.slo_hit[w.name] || [], 1);
    return el("tr", { "data-workflow": w.name, "data-hit-window": w.slo_hit_rate === null ? "" : String(w.slo_hit_rate), "data-ended-window": String(w.ended) },
      el("td", {}, w.name), el("td", { class: "num" }, String(w.ended)), el("td", { class: "num" }, pct(w.slo_hit_rate)),
      el("td", { class: "num" }, `${pct(w.total_slo_hit_rate)} of ${w.total_ended}`), el("td", {}, svg));
  }));
  if (!doc.workflows.length) tbody.append(el("tr", {}, el("td", { colSpan: 5, class: "hint" }, "no workflow has ended an invocation yet")));
}

function renderQueues(queues) {
  const tbody = document.querySelector("#queues tbody");
  tbody.replaceChildren(...queues.map((q) => el("tr", { "data-queue": `${q.workflow}/${q.stage}`, "data-length": String(q.length) },
    el("td", {}, q.workflow), el("td", {}, q.stage), el("td", {}, q.function),
    el("td", { class: "num" }, String(q.length)), el("td", { class: "num" }, q.rate_per_s.toFixed(2)))));
  if (!queues.length) tbody.append(el("tr", {}, el("td", { colSpan: 5, class: "hint" }, "no workflow deployed")));
}

function render(doc) {
  const t = doc.totals, d = doc.decisions, c = doc.cost, s = doc.series;
  const win = `last ${Math.round(doc.window_s)} s`;
  setText("meta", `policy ${doc.policy} · backend ${doc.backend} (${doc.execute}) · ${win}`);
  setText("window", win);
  setText("c-invocations", String(t.invocations));
  setText("c-inflight", `${doc.inflight} in flight · ${t.completed} completed · ${t.rejected + t.timed_out + t.failed} shed`);
  let ended = 0, hits = 0;
  for (const w of doc.workflows) if (w.slo_hit_rate !== null) { ended += w.ended; hits += w.ended * w.slo_hit_rate; }
  const slo = document.getElementById("c-slo");
  slo.textContent = ended ? pct(hits / ended) : "–";
  slo.setAttribute("data-value", ended ? String(hits / ended) : "");
  setText("c-slo-total", `${pct(t.slo_hit_rate)} since start`);
  setText("c-cost", usd(c.window_allocated_usd));
  setText("c-cost-total", `allocated · busy ${usd(c.window_busy_usd)} · ${usd(c.allocated_usd)} since start`);
  setText("c-dps", d.per_s === null ? "–" : d.per_s.toFixed(1));
  setText("c-dus", `mean ${d.mean_us === null ? "–" : d.mean_us.toFixed(0)} µs · p50 ${d.p50_us} · p99 ${d.p99_us} µs · ${d.refused} refused`);
  const queued = doc.queues.reduce((a, q) => a + q.length, 0);
  const qEl = document.getElementById("c-queued");
  qEl.textContent = String(queued);
  qEl.setAttribute("data-value", String(queued));
  setText("c-cold", `peak ${Math.max(queued, ...s.queued)} in window · ${t.cold_starts} cold starts`);
  spark(document.getElementById("s-cost"), s.allocated_usd_per_h);
  spark(document.getElementById("s-dps"), s.decisions_per_s);
  spark(document.getElementById("s-queued"), s.queued);
  renderGpus(doc.gpus);
  renderWorkflows(doc);
  renderQueues(doc.queues);
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const r = await fetch("/ui/state", { credentials: "same-origin", cache: "no-store" });
    if (r.status === 401 || r.status === 403) {
      const body = await r.json();
      status.textContent = body.error.message;
      status.className = "status bad";
      return; // a new login is needed: stop polling
    }
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    render(await r.json());
    status.textContent = "live";
    status.className = "status ok";
  } catch (e) {
    status.textContent = `gateway not answering (${e.message}); retrying`;
    status.className = "status bad";
  }
  setTimeout(poll, PERIOD_MS);
}

document.addEventListener("DOMContentLoaded", poll);
