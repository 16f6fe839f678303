// pixelwise serve: upload an image, show its segmentation over it. No external resources.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { classes: [], visible: [], labels: null, width: 0, height: 0, maskUrl: null };

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function rgb(color) {
  return `rgb(${color[0]}, ${color[1]}, ${color[2]})`;
}

function renderLegend(classes) {
  const legend = $("legend");
  legend.replaceChildren();
  classes.forEach((c) => {
    const li = document.createElement("li");
    li.dataset.index = String(c.index);
    li.classList.toggle("hidden", !state.visible[c.index]);
    const box = document.createElement("input");
    box.type = "checkbox";
    box.id = `class-${c.index}`;
    box.checked = state.visible[c.index];
    box.title = `show or hide ${c.name}`;
    box.addEventListener("change", () => {
      state.visible[c.index] = box.checked;
      li.classList.toggle("hidden", !box.checked);
      drawOverlay();
    });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = rgb(c.color);
    const name = document.createElement("label");
    name.className = "name";
    name.htmlFor = box.id;
    name.textContent = c.name;
    const share = document.createElement("span");
    share.className = "share";
    share.textContent = c.share === undefined ? "" : `${(100 * c.share).toFixed(1)}%`;
    li.append(box, swatch, name, share);
    legend.append(li);
  });
}

function drawOverlay() {
  const canvas = $("overlay");
  if (!state.labels) return;
  const ctx = canvas.getContext("2d");
  const out = ctx.createImageData(state.width, state.height);
  const lut = new Uint8ClampedArray(256 * 4);
  state.classes.forEach((c) => {
    lut.set([c.color[0], c.color[1], c.color[2], state.visible[c.index] ? 255 : 0], 4 * c.index);
  });
  const labels = state.labels;
  const px = out.data;
  for (let i = 0; i < labels.length; i++) {
    const k = 4 * labels[i];
    px[4 * i] = lut[k];
    px[4 * i + 1] = lut[k + 1];
    px[4 * i + 2] = lut[k + 2];
    px[4 * i + 3] = lut[k + 3];
  }
  ctx.putImageData(out, 0, 0);
}

// The mask PNG decodes to its palette colours: map each colour back to its class index.
function labelsFromColors(data, classes) {
  const exact = new Map();
  classes.forEach((c) => {
    const key = (c.color[0] << 16) | (c.color[1] << 8) | c.color[2];
    if (!exact.has(key)) exact.set(key, c.index);
  });
  const nearest = (r, g, b) => {
    let best = 0;
    let bestDist = Infinity;
    classes.forEach((c) => {
      const d = (c.color[0] - r) ** 2 + (c.color[1] - g) ** 2 + (c.color[2] - b) ** 2;
      if (d < bestDist) { bestDist = d; best = c.index; }
    });
    return best;
  };
  const labels = new Uint8Array(data.length / 4);
  for (let i = 0; i < labels.length; i++) {
    const r = data[4 * i], g = data[4 * i + 1], b = data[4 * i + 2];
    const key = (r << 16) | (g << 8) | b;
    let index = exact.get(key);
    if (index === undefined) { index = nearest(r, g, b); exact.set(key, index); }
    labels[i] = index;
  }
  return labels;
}

function base64Bytes(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

function safeStem(name) {
  const stem = name.replace(/\.[^.]*$/, "").replace(/[^\w.-]+/g, "_").slice(0, 80);
  return stem || "image";
}

async function handle(file) {
  if (!file) return;
  const overlay = $("overlay");
  delete overlay.dataset.ready;
  document.body.dataset.state = "working";
  setStatus(`Labelling ${file.name} (${(file.size / 1e6).toFixed(2)} MB)…`);
  const form = new FormData();
  form.append("image", file);
  let result;
  try {
    const response = await fetch("/predict", { method: "POST", body: form });
    const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    result = body;
  } catch (err) {
    document.body.dataset.state = "error";
    setStatus(`Error: ${err.message}`, true);
    return;
  }
  const { width, height } = result;
  const pngBytes = base64Bytes(result.mask_png);
  const pngBlob = new Blob([pngBytes], { type: "image/png" });
  const maskBitmap = await createImageBitmap(pngBlob);
  const scratch = document.createElement("canvas");
  scratch.width = width;
  scratch.height = height;
  const sctx = scratch.getContext("2d", { willReadFrequently: true });
  sctx.drawImage(maskBitmap, 0, 0);
  state.labels = labelsFromColors(sctx.getImageData(0, 0, width, height).data, result.classes);
  state.width = width;
  state.height = height;
  state.classes = result.classes;
  if (state.visible.length !== result.classes.length) state.visible = result.classes.map(() => true);

  const image = $("image");
  image.width = overlay.width = width;
  image.height = overlay.height = height;
  // Small images are shown enlarged by a whole factor (crisp pixels); large ones fit the page.
  const zoom = Math.max(1, Math.floor(Math.min(720 / width, 540 / height)));
  image.style.width = `${width * zoom}px`;
  const ictx = image.getContext("2d");
  try {
    const bitmap = await createImageBitmap(file);
    ictx.drawImage(bitmap, 0, 0, width, height);
  } catch (err) {
    ictx.fillStyle = "#777";  // a format the browser cannot show (e.g. TIFF): mask only
    ictx.fillRect(0, 0, width, height);
  }
  drawOverlay();
  renderLegend(result.classes);

  if (state.maskUrl) URL.revokeObjectURL(state.maskUrl);
  state.maskUrl = URL.createObjectURL(pngBlob);
  const link = $("download");
  link.href = state.maskUrl;
  link.download = `${safeStem(file.name)}_mask.png`;
  link.classList.remove("disabled");
  link.removeAttribute("aria-disabled");
  $("size").textContent = `${width} × ${height} px`;
  setStatus(`${file.name}: done.`);
  overlay.dataset.ready = "1";
  document.body.dataset.state = "done";
}

function setOpacity() {
  const value = $("opacity").value;
  $("overlay").style.opacity = String(value / 100);
  $("opacity-value").textContent = `${value}%`;
}

async function loadInfo() {
  try {
    const info = await (await fetch("/api/info")).json();
    const parts = [`model ${info.model || "?"}`];
    if (info.run) parts.push(`run ${info.run}`);
    if (info.epoch !== undefined && info.epoch !== null) parts.push(`epoch ${info.epoch}`);
    parts.push(`${info.classes.length} classes`);
    $("model").textContent = parts.join(" · ");
    state.classes = info.classes;
    state.visible = info.classes.map(() => true);
    renderLegend(info.classes);
  } catch (err) {
    setStatus(`Cannot reach the server: ${err.message}`, true);
  }
}

$("file").addEventListener("change", (e) => handle(e.target.files[0]));
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  if (e.dataTransfer.files.length) handle(e.dataTransfer.files[0]);
});
$("opacity").addEventListener("input", setOpacity);
setOpacity();
loadInfo();
