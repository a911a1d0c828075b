// The dashboard: polls the JSON API with the tenant's key (kept in this tab's sessionStorage only) and renders
// queues, workers, the tenant's recent jobs and a job's preview. Data is written with textContent, never as HTML.
"use strict";

const KEY = "tumorsynth.apiKey";
const POLL_MS = 1500;
let selected = location.hash.startsWith("#job_") ? location.hash.slice(1) : null;
let previewFor = null;
let timer = null;

const $ = (sel) => document.querySelector(sel);

function headers() {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

class AuthError extends Error {}

async function api(path, as = "json") {
  const resp = await fetch(path, { headers: headers(), cache: "no-store" });
  if (resp.status === 401) throw new AuthError("enter your API key");
  if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
  return as === "blob" ? resp.blob() : resp.json();
}

function setStatus(text, error = false) {
  const el = $("#status");
  el.textContent = text;
  el.classList.toggle("error", error);
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 90) return `${s.toFixed(1)} s`;
  if (s < 5400) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function ago(iso) {
  return iso ? `${seconds((Date.now() - Date.parse(iso)) / 1000)} ago` : "–";
}

function renderQueues(data) {
  const body = $("#queues tbody");
  body.replaceChildren(...data.queues.map((q) => {
    const tr = document.createElement("tr");
    tr.dataset.queue = q.name;
    cell(tr, q.name);
    cell(tr, String(q.depth), "depth");
    cell(tr, String(q.queued_jobs));
    cell(tr, seconds(q.oldest_queued_seconds));
    cell(tr, String(q.running), "running");
    cell(tr, String(q.workers_online), "workers-online");
    return tr;
  }));
  $("#workers tbody").replaceChildren(...data.workers.map((w) => {
    const tr = document.createElement("tr");
    cell(tr, w.id);
    cell(tr, (w.queues || []).join(", "));
    cell(tr, w.device || "–");
    cell(tr, w.seen_at ? `${seconds(Date.now() / 1000 - w.seen_at)} ago` : "–");
    return tr;
  }));
}

function renderJobs(jobs) {
  $("#jobs tbody").replaceChildren(...jobs.map((j) => {
    const tr = document.createElement("tr");
    tr.dataset.jobId = j.id;
    tr.dataset.status = j.status;
    if (j.id === selected) tr.classList.add("selected");
    cell(tr, j.id, "job-id");
    cell(tr, j.model);
    const st = cell(tr, j.status, `status status-${j.status}`);
    if (j.error) st.title = `${j.error.code}: ${j.error.message}`;
    const td = cell(tr, "", "progress");
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = j.progress.fraction;
    const label = document.createElement("span");
    label.textContent = ` ${j.progress.completed_steps}/${j.progress.total_steps}`;
    td.append(bar, label);
    cell(tr, ago(j.created_at));
    cell(tr, j.metrics && j.metrics.run_seconds !== undefined ? seconds(j.metrics.run_seconds) : "–");
    tr.addEventListener("click", () => select(j.id));
    return tr;
  }));
  const current = jobs.find((j) => j.id === selected);
  if (current) showPreview(current);
}

async function showPreview(job) {
  $("#preview-job").textContent = job.id;
  const note = $("#preview-note");
  const img = $("#preview-img");
  if (job.status !== "succeeded") {
    note.textContent = job.error ? `${job.status}: ${job.error.message}` : `${job.status}; the preview appears once it succeeds`;
    note.hidden = false;
    img.hidden = true;
    return;
  }
  if (previewFor === job.id) return;
  previewFor = job.id;
  note.textContent = "rendering…";
  try {
    const blob = await api(`/v1/jobs/${encodeURIComponent(job.id)}/preview.png`, "blob");
    if (img.src) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(blob);
    img.dataset.jobId = job.id;
    img.hidden = false;
    note.hidden = true;
  } catch (err) {
    previewFor = null;
    note.textContent = `no preview: ${err.message}`;
  }
}

function select(id) {
  selected = id;
  history.replaceState(null, "", `#${id}`);
  document.querySelectorAll("#jobs tbody tr").forEach((tr) => tr.classList.toggle("selected", tr.dataset.jobId === id));
  refresh();
}

async function refresh() {
  clearTimeout(timer);
  try {
    const [queues, jobs] = await Promise.all([api("/v1/queues"), api("/v1/jobs?limit=20")]);
    renderQueues(queues);
    renderJobs(jobs.jobs);
    setStatus(`updated ${new Date().toLocaleTimeString()}`);
    timer = setTimeout(refresh, POLL_MS);
  } catch (err) {
    if (err instanceof AuthError) {
      setStatus(sessionStorage.getItem(KEY) ? "that key was not accepted" : "enter your API key", true);
      $("#api-key").focus();
      return; // nothing to poll until a key is accepted
    }
    setStatus(`cannot reach the service (${err.message}); retrying`, true);
    timer = setTimeout(refresh, POLL_MS * 2);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("#api-key").value.trim();
    if (key) sessionStorage.setItem(KEY, key);
    $("#api-key").value = "";
    refresh();
  });
  $("#forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    for (const sel of ["#queues tbody", "#workers tbody", "#jobs tbody"]) $(sel).replaceChildren();
    $("#preview-img").hidden = true;
    previewFor = null;
    refresh();
  });
  refresh();
});
