// Reading a PNG's "parameters" text (A1111's infotext, which sdgate writes into every image) and
// turning infotext into the form's fields.

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// Every tEXt, zTXt and iTXt chunk's text by keyword.
export async function pngTexts(buffer) {
  const bytes = new Uint8Array(buffer);
  if (!SIGNATURE.every((b, i) => bytes[i] === b)) throw new Error("not a PNG file");
  const view = new DataView(buffer);
  const latin1 = new TextDecoder("latin1");
  const utf8 = new TextDecoder("utf-8");
  const texts = {};
  for (let at = 8; at + 8 <= bytes.length;) {
    const length = view.getUint32(at);
    const type = latin1.decode(bytes.subarray(at + 4, at + 8));
    const data = bytes.subarray(at + 8, at + 8 + length);
    at += 12 + length;
    if (type === "IEND") break;
    if (!["tEXt", "zTXt", "iTXt"].includes(type)) continue;
    const nul = data.indexOf(0);
    if (nul < 0) continue;
    const keyword = latin1.decode(data.subarray(0, nul));
    if (type === "tEXt") {
      texts[keyword] = latin1.decode(data.subarray(nul + 1));
    } else if (type === "zTXt") {
      texts[keyword] = latin1.decode(await inflate(data.subarray(nul + 2)));
    } else {
      const compressed = data[nul + 1] === 1;
      let rest = data.subarray(nul + 3);
      rest = rest.subarray(rest.indexOf(0) + 1);  // language tag
      rest = rest.subarray(rest.indexOf(0) + 1);  // translated keyword
      texts[keyword] = utf8.decode(compressed ? await inflate(rest) : rest);
    }
  }
  return texts;
}

const PARAM = /\s*(\w[\w \-/]{1,63}):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)/g;

// A1111's parse_generation_parameters, the parts a form needs.
export function parseInfotext(text) {
  const lines = text.replace(/\r\n/g, "\n").trim().split("\n");
  let last = lines.pop() || "";
  if ([...last.matchAll(PARAM)].filter((m) => m[0].trim()).length < 3) {
    lines.push(last);
    last = "";
  }
  const prompt = [], negative = [];
  let inNegative = false;
  for (let line of lines) {
    line = line.trim();
    if (line.startsWith("Negative prompt:")) {
      inNegative = true;
      line = line.slice("Negative prompt:".length).trim();
    }
    const target = inNegative ? negative : prompt;
    if (target.length || line) target.push(line);
  }
  const params = { Prompt: prompt.join("\n"), "Negative prompt": negative.join("\n") };
  for (const m of last.matchAll(PARAM)) {
    if (!m[0].trim() || !m[2]) continue;
    let value = m[2];
    if (value.length > 1 && value.startsWith('"') && value.endsWith('"')) {
      try { value = JSON.parse(value); } catch { /* keep it */ }
    }
    params[m[1]] = value;
  }
  return params;
}

// The form's fields (by element id) from parsed infotext; only keys the text has.
export function fieldsFromInfotext(p) {
  const out = { prompt: p.Prompt, negative_prompt: p["Negative prompt"] };
  const copy = { Steps: "steps", "CFG scale": "cfg_scale", Seed: "seed", Sampler: "sampler",
    "Schedule type": "scheduler", Model: "model", "Denoising strength": "denoising_strength" };
  for (const [key, id] of Object.entries(copy)) if (p[key] !== undefined) out[id] = p[key];
  const size = /^(\d+)x(\d+)$/.exec(p.Size || "");
  if (size) [out.width, out.height] = [size[1], size[2]];
  return out;
}
