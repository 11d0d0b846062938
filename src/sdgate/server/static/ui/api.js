// The native API (/api/v1), as any client calls it: the key as a Bearer header, errors as
// ApiError, a job's events read from its SSE stream with fetch (so the key stays in a header).

const KEY = "sdgate.key";
export const BASE = new URL("api/v1/", document.baseURI).href;

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export const auth = {
  get key() { return localStorage.getItem(KEY) || ""; },
  set key(value) { value ? localStorage.setItem(KEY, value) : localStorage.removeItem(KEY); },
  onUnauthorized: () => {},
};

function headers(extra = {}) {
  const h = { ...extra };
  if (auth.key) h.Authorization = `Bearer ${auth.key}`;
  return h;
}

async function fail(res) {
  let message = `${res.status} ${res.statusText}`;
  try {
    const body = await res.json();
    message = body.error?.message || body.detail || body.message || message;
    if (typeof message !== "string") message = JSON.stringify(message);
  } catch { /* not JSON */ }
  if (res.status === 401) auth.onUnauthorized(message);
  throw new ApiError(res.status, message);
}

export async function api(path, { method = "GET", json, body, contentType } = {}) {
  const init = { method, headers: headers() };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
    init.headers["Content-Type"] = contentType || "application/octet-stream";
  }
  const res = await fetch(BASE + path, init);
  if (!res.ok) await fail(res);
  if (res.status === 204) return null;
  return res.json();
}

// An image the caller may see, as a blob: URL (an <img> cannot send the key).
export async function imageBlob(url) {
  const res = await fetch(url, { headers: headers() });
  if (!res.ok) await fail(res);
  return res.blob();
}

export const upload = async (blob) => (await api("uploads", { method: "POST", body: blob,
  contentType: blob.type || "application/octet-stream" })).id;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Follows one job's events until its terminal event, calling onEvent(kind, data) for each.
// A dropped stream (the server restarted, the network went away, the stream's time limit) is
// reopened with Last-Event-ID after a growing pause, so nothing is missed or shown twice;
// onStatus(text) says when it is reconnecting. Resolves with the terminal event's kind.
export async function followJob(jobId, { onEvent, onStatus = () => {}, signal } = {}) {
  let lastId = null;
  let delay = 500;
  while (!signal?.aborted) {
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (lastId !== null) h["Last-Event-ID"] = lastId;
      // previews=1: a live preview with each progress event (they come a few times a second at most).
      const url = `${BASE}jobs/${encodeURIComponent(jobId)}/events?previews=1`;
      const res = await fetch(url, { headers: h, signal });
      if (res.status === 404 || res.status === 401 || res.status === 403) await fail(res);
      if (!res.ok) throw new Error(`${res.status}`);
      onStatus("");
      delay = 500;
      const ended = await readStream(res.body, (id, kind, data) => {
        if (id) lastId = id;
        onEvent(kind, data);
        return ["succeeded", "failed", "cancelled"].includes(kind) ? kind : null;
      });
      if (ended) return ended;
    } catch (err) {
      if (err instanceof ApiError || signal?.aborted) throw err;
      onStatus("reconnecting…");
    }
    await sleep(delay);
    delay = Math.min(delay * 2, 5000);
  }
  return null;
}

async function readStream(stream, handle) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return null;
    buffer += value.replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let id = null, kind = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("id:")) id = line.slice(3).trim();
        else if (line.startsWith("event:")) kind = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (!data.length) continue;
      const ended = handle(id, kind, JSON.parse(data.join("\n")));
      if (ended) {
        reader.cancel().catch(() => {});
        return ended;
      }
    }
  }
}
