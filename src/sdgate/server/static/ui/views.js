// The history view (the caller's jobs, a page at a time, by state and prompt text) and the queue
// view (what waits and runs, with positions and cancel buttons). app.js fills in `hooks`.

import { api } from "./api.js";

export const hooks = {};
const $ = (id) => document.getElementById(id);
const PAGE = 20;
const SCAN_PAGES = 10;  // a text filter reads at most this many pages of jobs for one page of matches
const TERMINAL = ["succeeded", "failed", "cancelled"];

function cell(text, cls = "") {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function button(text, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

async function cancel(job, after) {
  try {
    await api(`jobs/${job.id}/cancel`, { method: "POST" });
  } catch (err) {
    if (err.status !== 409) hooks.showError?.(err);
  }
  after();
}

function when(iso) {
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

// -- history -----------------------------------------------------------------------------------------

const history = { cursors: [null], page: 0, next: null };

function historyQuery(cursor) {
  const q = new URLSearchParams({ limit: String(PAGE * (($("history-text").value.trim()) ? 2.5 : 1)) });
  if ($("history-state").value) q.append("state", $("history-state").value);
  if (cursor) q.set("cursor", cursor);
  return q;
}

// One page of jobs whose prompt holds the filter text (the API filters by state; the text is
// matched here, reading further pages until a page is full or SCAN_PAGES were read).
async function fetchPage(cursor) {
  const text = $("history-text").value.trim().toLowerCase();
  const found = [];
  let next = cursor;
  for (let read = 0; read < SCAN_PAGES; read++) {
    const page = await api(`jobs?${historyQuery(next)}`);
    next = page.next_cursor;
    found.push(...page.jobs.filter((j) => !text || (j.request?.prompt || "").toLowerCase().includes(text)));
    if (!text || found.length >= PAGE || !next) break;
  }
  return { jobs: found, next };
}

export async function renderHistory(reset = false) {
  if (reset) Object.assign(history, { cursors: [null], page: 0 });
  const { jobs, next } = await fetchPage(history.cursors[history.page]);
  history.next = next;
  const rows = jobs.map((job) => {
    const tr = document.createElement("tr");
    tr.dataset.job = job.id;
    tr.dataset.state = job.state;
    const seed = job.result?.images?.[0]?.seed ?? job.request?.seed ?? "";
    const actions = document.createElement("td");
    actions.className = "actions";
    if (job.state === "succeeded") {
      actions.append(button("Show", () => { hooks.showTab("txt2img"); hooks.addToGallery(job); }));
      const info = job.result?.images?.[0]?.infotext;
      if (info) actions.append(button("Load parameters", () => { hooks.applyInfotext(info); hooks.showTab("txt2img"); }));
    }
    if (!TERMINAL.includes(job.state)) {
      actions.append(button("Watch", () => { hooks.showTab("txt2img"); hooks.show(job); }),
        button("Cancel", () => cancel(job, () => renderHistory())));
    }
    tr.append(cell(when(job.created_at)), cell(job.state, `state ${job.state}`),
      cell(job.request?.prompt || "", "prompt"), cell(String(seed)), actions);
    return tr;
  });
  if (!rows.length) {
    const tr = document.createElement("tr");
    tr.append(Object.assign(cell("no jobs"), { colSpan: 5 }));
    rows.push(tr);
  }
  $("history-rows").replaceChildren(...rows);
  $("history-newer").disabled = history.page === 0;
  $("history-older").disabled = !next;
  $("history-page").textContent = `page ${history.page + 1}`;
}

$("history-form").addEventListener("submit", (e) => {
  e.preventDefault();
  renderHistory(true).catch((err) => hooks.showError?.(err));
});
$("history-state").addEventListener("change", () => renderHistory(true).catch((err) => hooks.showError?.(err)));
$("history-older").addEventListener("click", () => {
  history.cursors[++history.page] = history.next;
  renderHistory().catch((err) => hooks.showError?.(err));
});
$("history-newer").addEventListener("click", () => {
  history.page = Math.max(0, history.page - 1);
  renderHistory().catch((err) => hooks.showError?.(err));
});

// -- queue -------------------------------------------------------------------------------------------

let queueTimer = null;

export async function renderQueue() {
  const [queue, mine] = await Promise.all([
    api("queue"), api("jobs?state=queued&state=running&limit=100"),
  ]);
  const eta = queue.eta_s !== null ? `, about ${Math.ceil(queue.eta_s)} s to drain` : "";
  $("queue-summary").textContent = `${queue.depth} waiting, ${queue.running.length} of yours running, ` +
    `${queue.workers} worker${queue.workers === 1 ? "" : "s"}${eta}`;
  const jobs = mine.jobs.sort((a, b) => (a.state === "running" ? -1 : b.state === "running" ? 1 : 0)
    || (a.position ?? 0) - (b.position ?? 0));
  const rows = jobs.map((job) => {
    const tr = document.createElement("tr");
    tr.dataset.job = job.id;
    tr.dataset.state = job.state;
    const p = job.progress;
    const actions = document.createElement("td");
    actions.className = "actions";
    actions.append(button("Watch", () => { hooks.showTab("txt2img"); hooks.show(job); }),
      button("Cancel", () => cancel(job, renderQueue)));
    tr.append(cell(job.state === "running" ? "running" : String((job.position ?? 0) + 1)),
      cell(job.state, `state ${job.state}`), cell(job.request?.prompt || "", "prompt"),
      cell(p ? `${p.step}/${p.total}` : ""), actions);
    return tr;
  });
  if (!rows.length) {
    const tr = document.createElement("tr");
    tr.append(Object.assign(cell("nothing of yours is waiting or running"), { colSpan: 5 }));
    rows.push(tr);
  }
  $("queue-rows").replaceChildren(...rows);
}

export function startQueue() {
  stopQueue();
  const tick = () => renderQueue().catch(() => {}).finally(() => {
    if (queueTimer !== null) queueTimer = setTimeout(tick, 1500);
  });
  queueTimer = 0;
  tick();
}

export function stopQueue() {
  if (queueTimer) clearTimeout(queueTimer);
  queueTimer = null;
}
