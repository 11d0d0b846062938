// The ControlNet panel: a control image, the map the chosen preprocessor makes of it (shown as
// the server computes it: POST controlnet/detect), the ControlNet model, its weight and the share
// of the steps it guides. Shown only when the server lists a ControlNet (GET controlnets).

import { api, upload } from "./api.js";

const $ = (id) => document.getElementById(id);
const panel = { blob: null, detecting: 0 };

// The server's ControlNets and preprocessors (GET controlnets, controlnet/preprocessors, which
// app.js reads with its other listings) into the panel's selects, with ``fill`` (app.js's).
export function listControlNets(models, modules, fill) {
  $("controlnet").hidden = !models.length;
  const keep = [$("control-model").value, $("control-module").value];
  fill($("control-model"), models.map((m) => [m.name, m.name]));
  fill($("control-module"), modules.map((p) => [p.name, p.label === p.name ? p.name : `${p.name} (${p.label})`]));
  if (keep[0] && models.some((m) => m.name === keep[0])) $("control-model").value = keep[0];
  const module = keep[1] || (modules.some((p) => p.name === "canny") ? "canny" : "none");
  if (modules.some((p) => p.name === module)) $("control-module").value = module;
  status();
}

function status() {
  const on = panel.blob && $("control-enabled").checked;
  $("control-status").textContent = on ? `· ${$("control-module").value} → ${$("control-model").value}` : "· off";
}

async function showMap(showError) {
  if (!panel.blob) return;
  const ticket = ++panel.detecting;  // a later choice wins over an earlier answer still on its way
  $("control-map-caption").textContent = "map …";
  try {
    const image = await upload(panel.blob);
    const out = await api("controlnet/detect", { method: "POST", json: { module: $("control-module").value, image } });
    if (ticket !== panel.detecting) return;
    $("control-map").src = out.image;
    $("control-map").dataset.module = out.module;
    $("control-map-caption").textContent = `map (${out.module}, ${out.width}×${out.height})`;
  } catch (err) {
    if (ticket === panel.detecting) $("control-map-caption").textContent = "map: failed";
    showError(err);
  }
}

async function setImage(blob, showError) {
  panel.blob = blob;
  $("control-image").src = URL.createObjectURL(blob);
  $("control-images").hidden = false;
  $("drop-control").hidden = true;
  $("controlnet").open = true;
  status();
  await showMap(showError);
}

export function initControlNet(dropZone, showError) {
  dropZone($("drop-control"), $("control-file"), (file) => setImage(file, showError));
  $("control-module").addEventListener("change", () => { status(); showMap(showError); });
  for (const id of ["control-model", "control-enabled"]) $(id).addEventListener("change", status);
  $("control-remove").addEventListener("click", () => {
    panel.blob = null;
    panel.detecting++;
    $("control-images").hidden = true;
    $("drop-control").hidden = false;
    $("control-map").removeAttribute("src");
    status();
  });
}

// The job's ``controlnets``: one unit while an image is set and "Use it" is ticked.
export async function controlUnits() {
  if ($("controlnet").hidden || !panel.blob || !$("control-enabled").checked) return [];
  const num = (id) => Number($(id).value);
  return [{
    model: $("control-model").value, module: $("control-module").value, image: await upload(panel.blob),
    weight: num("control-weight"), guidance_start: num("control-start"), guidance_end: num("control-end"),
  }];
}
