// The page: tabs, the generation form, live progress, the gallery, history and queue views.
// Everything goes through the native API (api.js); the job being shown is remembered in
// localStorage so a reload, or a server restart, picks it up again.

import { ApiError, api, auth, followJob, imageBlob, upload } from "./api.js";
import { controlUnits, initControlNet, listControlNets } from "./controlnet.js";
import { MaskPainter } from "./mask.js";
import { fieldsFromInfotext, parseInfotext, pngTexts } from "./png.js";
import { hooks, renderHistory, startQueue, stopQueue } from "./views.js";

const $ = (id) => document.getElementById(id);
const CURRENT = "sdgate.current";
const TERMINAL = ["succeeded", "failed", "cancelled"];
const painter = new MaskPainter($("init-canvas"), $("mask-canvas"));
const state = { tab: "txt2img", job: null, lastSeed: null, initBitmap: false, follow: null };

// -- tabs ------------------------------------------------------------------------------------------

function showTab(tab) {
  state.tab = tab;
  for (const b of document.querySelectorAll("[data-tab]")) b.setAttribute("aria-selected", b.dataset.tab === tab);
  $("generate").hidden = !["txt2img", "img2img"].includes(tab);
  $("img2img-inputs").hidden = tab !== "img2img";
  $("history").hidden = tab !== "history";
  $("queue").hidden = tab !== "queue";
  document.body.dataset.tab = tab;
  if (tab === "history") renderHistory(true).catch(showError);
  if (tab === "queue") startQueue(); else stopQueue();
}

for (const b of document.querySelectorAll("[data-tab]")) b.addEventListener("click", () => showTab(b.dataset.tab));

// -- login -------------------------------------------------------------------------------------------

auth.onUnauthorized = (message) => {
  $("login-error").textContent = auth.key ? message : "";
  if (!$("login").open) $("login").showModal();
};
$("login-form").addEventListener("submit", () => {
  auth.key = $("login-key").value.trim();
  $("logout").hidden = false;
  start().catch(showError);
});
$("logout").addEventListener("click", () => {
  auth.key = "";
  location.reload();
});

// -- listings ----------------------------------------------------------------------------------------

function fill(select, items, { keep = [] } = {}) {
  const first = [...select.options].slice(0, keep.length);
  select.replaceChildren(...first, ...items.map(([value, text]) => new Option(text, value)));
}

async function loadListings() {
  const [models, samplers, schedulers, loras, styles, controlnets, preprocessors] = await Promise.all(
    ["models", "samplers", "schedulers", "loras", "styles", "controlnets", "controlnet/preprocessors"]
      .map((p) => api(p).catch(() => [])),
  );
  fill($("model"), models.map((m) => [m.name, m.title || m.name]));
  const dflt = models.find((m) => m.default);
  if (dflt) {
    $("model").value = dflt.name;
    if (!localStorage.getItem("sdgate.touched")) {
      [$("width").value, $("height").value, $("steps").value] = [dflt.width, dflt.height, dflt.steps];
    }
  }
  fill($("sampler"), samplers.map((s) => [s.name, s.name]));
  fill($("scheduler"), schedulers.map((s) => [s.name, s.label]), { keep: [""] });
  fill($("lora-pick"), loras.map((l) => [l.name, l.alias && l.alias !== l.name ? `${l.name} (${l.alias})` : l.name]),
    { keep: [""] });
  $("lora-pick").closest("label").hidden = !loras.length;
  $("styles").hidden = !styles.length;
  listControlNets(controlnets, preprocessors, fill);
  $("styles").replaceChildren($("styles").firstElementChild, ...styles.map((s) => {
    const label = document.createElement("label");
    label.innerHTML = `<input type="checkbox" name="style"> <span></span>`;
    label.firstChild.value = s.name;
    label.querySelector("span").textContent = s.name;
    return label;
  }));
}

$("lora-pick").addEventListener("change", () => {
  const name = $("lora-pick").value;
  if (!name) return;
  const p = $("prompt");
  p.value = `${p.value.trimEnd()}${p.value.trim() ? " " : ""}<lora:${name}:1>`;
  $("lora-pick").value = "";
});

// -- the form ----------------------------------------------------------------------------------------

function setField(id, value) {
  const el = $(id);
  if (!el || value === undefined || value === null) return;
  if (el.tagName === "SELECT") {
    const text = String(value).toLowerCase();
    const match = [...el.options].find((o) => o.value.toLowerCase() === text || o.text.toLowerCase() === text);
    if (match) el.value = match.value;
  } else {
    el.value = value;
  }
  el.dispatchEvent(new Event("input"));
}

function num(id) { return Number($(id).value); }

async function buildRequest() {
  const body = {
    prompt: $("prompt").value, negative_prompt: $("negative_prompt").value,
    model: $("model").value || null, sampler: $("sampler").value || null,
    scheduler: $("scheduler").value || null, steps: num("steps"), cfg_scale: num("cfg_scale"),
    width: num("width"), height: num("height"), seed: $("seed").value === "" ? -1 : num("seed"),
    n_iter: num("n_iter"), styles: [...document.querySelectorAll("[name=style]:checked")].map((c) => c.value),
  };
  if (state.tab === "img2img") {
    if (!state.initBitmap) throw new Error("img2img: choose or drop an image first");
    body.init_image = await upload(await painter.imageBlob());
    body.denoising_strength = num("denoising_strength");
    if (painter.painted) body.mask = await upload(await painter.maskBlob());
  }
  const units = await controlUnits();
  if (units.length) body.controlnets = units;
  return body;
}

function showError(err) {
  if (err instanceof ApiError && err.status === 401) return;
  $("gen-error").textContent = err?.message || String(err);
}

$("gen-form").addEventListener("input", () => localStorage.setItem("sdgate.touched", "1"));
$("denoising_strength").addEventListener("input", () => { $("denoise-out").value = $("denoising_strength").value; });
$("seed-random").addEventListener("click", () => setField("seed", -1));
$("seed-reuse").addEventListener("click", () => { if (state.lastSeed !== null) setField("seed", state.lastSeed); });

$("gen-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("gen-error").textContent = "";
  $("generate-btn").disabled = true;
  try {
    const job = await api("jobs", { method: "POST", json: await buildRequest() });
    show(job);
    // One column on a phone: the progress is below the form, so bring it into view.
    if (matchMedia("(max-width: 760px)").matches) $("progress").scrollIntoView({ behavior: "smooth" });
  } catch (err) {
    showError(err);
    $("generate-btn").disabled = false;
  }
});

$("interrupt-btn").addEventListener("click", async () => {
  if (!state.job) return;
  $("interrupt-btn").disabled = true;
  try {
    await api(`jobs/${state.job}/cancel`, { method: "POST" });
  } catch (err) {
    if (err.status !== 409) showError(err);  // 409: it ended meanwhile
  }
});

// -- one job: progress, then its images --------------------------------------------------------------

function progress({ state: st, step, total, eta }) {
  $("progress").hidden = false;
  $("progress").dataset.state = st;
  $("progress-state").textContent = st;
  $("progress-step").textContent = total ? `step ${step}/${total}` : "";
  const going = !TERMINAL.includes(st) && eta !== null && eta !== undefined;
  $("progress-eta").textContent = going ? `ETA ${eta.toFixed(1)} s` : "";
  $("progress-bar").style.width = total ? `${Math.round((100 * step) / total)}%` : "0%";
}

async function show(job) {
  state.follow?.abort();
  const follow = new AbortController();
  state.follow = follow;
  state.job = job.id;
  localStorage.setItem(CURRENT, job.id);
  $("generate-btn").disabled = true;
  $("interrupt-btn").disabled = false;
  $("preview").hidden = true;
  $("progress").dataset.job = job.id;
  progress({ state: job.state, step: 0, total: job.request?.steps || 0 });
  let ended = null;
  try {
    ended = await followJob(job.id, {
      signal: follow.signal,
      onStatus: (text) => { $("conn").textContent = text; },
      onEvent: (kind, data) => onJobEvent(kind, data),
    });
  } catch (err) {
    if (follow.signal.aborted) return;
    showError(err);
  }
  if (state.follow !== follow) return;
  localStorage.removeItem(CURRENT);
  state.job = null;
  $("generate-btn").disabled = false;
  $("interrupt-btn").disabled = true;
  return ended;
}

function onJobEvent(kind, data) {
  if (kind === "progress") {
    progress({ state: "running", step: data.step, total: data.total, eta: data.eta_s });
    if (data.preview) {
      $("preview").src = data.preview;
      $("preview").hidden = false;
    }
    return;
  }
  const p = data.progress;
  progress({ state: data.state, step: p?.step || 0, total: p?.total || data.request?.steps || 0,
    eta: data.state === "queued" ? null : p?.eta_s });
  if (data.state === "queued" && data.position !== null) {
    $("progress-step").textContent = `position ${data.position + 1} in the queue`;
  }
  if (data.state === "failed") $("gen-error").textContent = data.error?.message || "the job failed";
  if (data.state === "succeeded" && data.result) {
    $("preview").hidden = true;
    addToGallery(data).catch(showError);
  }
}

// -- the gallery -------------------------------------------------------------------------------------

const objectUrls = new Map();

// An image of a job that just ended: the server may be going down or coming back (a restart
// drains the job in hand first), so a failed connection is tried again for a while.
async function blobUrl(image) {
  for (let attempt = 0; !objectUrls.has(image.id); attempt++) {
    try {
      objectUrls.set(image.id, URL.createObjectURL(await imageBlob(image.url)));
    } catch (err) {
      if (err instanceof ApiError || attempt >= 90) throw err;
      $("conn").textContent = "reconnecting…";
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  $("conn").textContent = "";
  return objectUrls.get(image.id);
}

function button(text, onClick, cls = "") {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  if (cls) b.className = cls;
  b.addEventListener("click", onClick);
  return b;
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = Object.assign(document.createElement("textarea"), { value: text });
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

async function addToGallery(job) {
  const images = job.result?.images || [];
  if (images.length) state.lastSeed = images[0].seed;
  for (const image of [...images].reverse()) {
    const url = await blobUrl(image);
    const card = document.createElement("figure");
    card.className = "card";
    card.dataset.seed = image.seed;
    card.dataset.imageId = image.id;
    const img = Object.assign(document.createElement("img"), { src: url, alt: job.request?.prompt || "" });
    const info = Object.assign(document.createElement("pre"), { className: "infotext", hidden: true,
      textContent: image.infotext });
    const download = Object.assign(document.createElement("a"), { href: url, textContent: "Download",
      download: `${job.id}-${images.indexOf(image)}.png`, className: "button" });
    const copy = button("Copy parameters", async () => {
      info.hidden = false;
      copy.textContent = (await copyText(image.infotext)) ? "Copied ✓" : "Select and copy below";
    });
    const caption = document.createElement("figcaption");
    caption.append(`seed ${image.seed}${job.result.interrupted ? " (interrupted)" : ""}`, document.createElement("br"),
      download, button("Send to img2img", () => sendToImg2img(url)), copy,
      button("Reuse seed", () => setField("seed", image.seed)), info);
    card.append(img, caption);
    $("gallery").prepend(card);
  }
}

async function sendToImg2img(url) {
  const blob = await (await fetch(url)).blob();
  await loadInit(blob);
  showTab("img2img");
  window.scrollTo({ top: 0, behavior: "smooth" });
}

// -- img2img: the image and the mask -----------------------------------------------------------------

async function loadInit(blob) {
  const bitmap = await createImageBitmap(blob);
  painter.load(bitmap);
  state.initBitmap = true;
  $("canvas-wrap").hidden = false;
  $("drop-init").hidden = true;
}

function dropZone(zone, input, onFile) {
  for (const kind of ["dragenter", "dragover"]) {
    zone.addEventListener(kind, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) onFile(file).catch(showError);
  });
  input.addEventListener("change", () => {
    if (input.files[0]) onFile(input.files[0]).catch(showError).finally(() => { input.value = ""; });
  });
}

dropZone($("drop-init"), $("init-file"), loadInit);
initControlNet(dropZone, showError);
$("brush").addEventListener("input", () => { painter.brush = num("brush"); });
$("eraser").addEventListener("change", () => { painter.erasing = $("eraser").checked; });
$("mask-invert").addEventListener("click", () => painter.invert());
$("mask-clear").addEventListener("click", () => painter.clear());
$("init-remove").addEventListener("click", () => {
  state.initBitmap = false;
  $("canvas-wrap").hidden = true;
  $("drop-init").hidden = false;
});

// -- parameters from a PNG ---------------------------------------------------------------------------

function applyInfotext(text) {
  const fields = fieldsFromInfotext(parseInfotext(text));
  for (const [id, value] of Object.entries(fields)) setField(id, value);
  localStorage.setItem("sdgate.touched", "1");
}

dropZone($("drop-png"), $("png-file"), async (file) => {
  const texts = await pngTexts(await file.arrayBuffer());
  if (!texts.parameters) throw new Error(`${file.name}: no generation parameters in this PNG`);
  applyInfotext(texts.parameters);
  $("gen-error").textContent = "";
  $("drop-png").dataset.loaded = file.name;
});

// -- start -------------------------------------------------------------------------------------------

async function start() {
  try {
    const me = await api("me");
    $("logout").hidden = !auth.key;
    $("logout").title = me?.name ? `logged in as ${me.name}` : "";
  } catch (err) {
    if (err.status === 401) return;  // the login dialog is up; start() runs again after it
    throw err;
  }
  await loadListings();
  document.body.dataset.ready = "1";
  const current = localStorage.getItem(CURRENT);
  if (current && !state.job) {
    try {
      show(await api(`jobs/${current}`));
    } catch {
      localStorage.removeItem(CURRENT);
    }
  }
}

Object.assign(hooks, { show, addToGallery, applyInfotext, showError, showTab });
showTab("txt2img");
start().catch(async (err) => {
  // The server is not up yet (or restarting): try again until it answers.
  $("conn").textContent = "server unreachable, retrying…";
  showError(err);
  const retry = setInterval(() => {
    start().then(() => { clearInterval(retry); $("conn").textContent = ""; $("gen-error").textContent = ""; })
      .catch(() => {});
  }, 2000);
});
