// pixelwise label: draw labels with a brush, the server saves every stroke and trains a model
// on them; its prediction and uncertainty come back as layers. No external resources.
"use strict";

const $ = (id) => document.getElementById(id);
const ERASE = 255;
const S = {
  classes: [], images: [], skipped: [], counts: null, lut: null,
  cls: 0, eraser: false, brush: 8, order: "uncertain",
  cur: null, // {name, w, h, labels, version, img, labelCanvas, predCanvas, uncCanvas, predVersion, locked}
  view: { scale: 1, ox: 0, oy: 0 },
  queue: [], sending: false, flushTimer: null, needReload: false,
  undo: {}, redo: {},
  drawing: null, panning: null, space: false, mouse: null,
  trainer: null, predLoading: false, frame: 0,
  points: [], pointsFor: "", // suggested pixels [[x, y], ...] of "name:version"
};

// ---- small helpers --------------------------------------------------------------------------

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function request(url, options = {}) {
  let res;
  try {
    res = await fetch(url, options);
  } catch (err) {
    throw new HttpError(0, `the server does not answer (${err.message}); is 'pixelwise label' still running?`);
  }
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`;
    try { message = (await res.json()).error || message; } catch (_) { /* not JSON */ }
    throw new HttpError(res.status, message);
  }
  return res;
}

async function getJSON(url) { return (await request(url)).json(); }

async function postJSON(url, body) {
  const res = await request(url, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  return res.json();
}

const enc = encodeURIComponent;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const round2 = (v) => Math.round(v * 100) / 100;

function makeLut(classes) {
  const lut = new Uint8ClampedArray(256 * 4);
  classes.forEach((c) => lut.set([c.color[0], c.color[1], c.color[2], 255], 4 * c.index));
  return lut; // 255 (unlabelled) and unknown values stay transparent
}

function newCanvas(w, h) {
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  return c;
}

// ---- the stroke footprint: the same formula as pixelwise/label/project.py ------------------

function footprint(points, r, h, w) {
  let minx = Infinity, miny = Infinity, maxx = -Infinity, maxy = -Infinity;
  for (const [x, y] of points) {
    minx = Math.min(minx, x); maxx = Math.max(maxx, x);
    miny = Math.min(miny, y); maxy = Math.max(maxy, y);
  }
  const top = Math.max(0, Math.floor(miny - r)), left = Math.max(0, Math.floor(minx - r));
  const bottom = Math.min(h, Math.ceil(maxy + r) + 1), right = Math.min(w, Math.ceil(maxx + r) + 1);
  if (top >= bottom || left >= right) return null;
  const bw = right - left, hit = new Uint8Array((bottom - top) * bw);
  const r2 = r * r;
  const segs = points.length === 1 ? [[points[0], points[0]]] : points.slice(1).map((p, i) => [points[i], p]);
  for (const [[x0, y0], [x1, y1]] of segs) {
    const t0 = Math.max(top, Math.floor(Math.min(y0, y1) - r));
    const l0 = Math.max(left, Math.floor(Math.min(x0, x1) - r));
    const b0 = Math.min(bottom, Math.ceil(Math.max(y0, y1) + r) + 1);
    const r0 = Math.min(right, Math.ceil(Math.max(x0, x1) + r) + 1);
    const dx = x1 - x0, dy = y1 - y0, len2 = dx * dx + dy * dy;
    for (let i = t0; i < b0; i++) {
      const cy = i + 0.5;
      for (let j = l0; j < r0; j++) {
        const cx = j + 0.5;
        let t = 0;
        if (len2 > 0) {
          t = ((cx - x0) * dx + (cy - y0) * dy) / len2;
          t = t < 0 ? 0 : (t > 1 ? 1 : t);
        }
        const ex = cx - (x0 + t * dx), ey = cy - (y0 + t * dy);
        if (ex * ex + ey * ey <= r2) hit[(i - top) * bw + (j - left)] = 1;
      }
    }
  }
  return { top, left, bottom, right, hit };
}

function paintLocal(points, radius, value) {
  const cur = S.cur;
  const fp = footprint(points, radius, cur.h, cur.w);
  if (!fp) return;
  const bw = fp.right - fp.left;
  for (let k = 0; k < fp.hit.length; k++) {
    if (fp.hit[k]) cur.labels[(fp.top + Math.floor(k / bw)) * cur.w + fp.left + (k % bw)] = value;
  }
  repaintLabels(fp.top, fp.left, fp.bottom, fp.right);
}

function repaintLabels(top = 0, left = 0, bottom = S.cur.h, right = S.cur.w) {
  const cur = S.cur, bw = right - left, bh = bottom - top;
  if (bw <= 0 || bh <= 0) return;
  const ctx = cur.labelCanvas.getContext("2d");
  const out = ctx.createImageData(bw, bh);
  const px = new Uint32Array(out.data.buffer), lut = new Uint32Array(S.lut.buffer);
  for (let i = 0; i < bh; i++) {
    const row = (top + i) * cur.w + left;
    for (let j = 0; j < bw; j++) px[i * bw + j] = lut[cur.labels[row + j]];
  }
  ctx.putImageData(out, left, top);
  requestRender();
}

// ---- drawing and the queue of strokes to save ----------------------------------------------

function toImage(ev) {
  const v = S.view;
  return [round2((ev.offsetX - v.ox) / v.scale), round2((ev.offsetY - v.oy) / v.scale)];
}

function brushValue() { return S.eraser ? ERASE : S.cls; }
function brushRadius() { return Math.max(0.5, S.brush / 2); }

function startStroke(ev) {
  if (!S.cur || S.cur.locked) {
    if (S.cur && S.cur.locked) setStatus(S.cur.locked, true);
    return;
  }
  const p = toImage(ev);
  S.drawing = { name: S.cur.name, value: brushValue(), radius: brushRadius(), points: [p], id: null, inflight: false };
  paintLocal([p], S.drawing.radius, S.drawing.value);
}

function extendStroke(ev) {
  const st = S.drawing, p = toImage(ev);
  const last = st.points[st.points.length - 1];
  const step = Math.max(0.5, 1.5 / S.view.scale);
  if (Math.hypot(p[0] - last[0], p[1] - last[1]) < step) return;
  st.points.push(p);
  paintLocal([last, p], st.radius, st.value);
  if (st.points.length >= 5000) { endStroke(); S.drawing = { ...st, points: [p], id: null }; }
}

function endStroke() {
  const st = S.drawing;
  S.drawing = null;
  if (!st) return;
  S.queue.push(st);
  stack(S.undo, st.name).push({ kind: "stroke", stroke: st });
  S.redo[st.name] = [];
  mark();
  scheduleFlush(150);
}

function stack(store, name) { return (store[name] = store[name] || []); }

function scheduleFlush(delay) {
  clearTimeout(S.flushTimer);
  S.flushTimer = setTimeout(flush, delay);
}

async function flush() {
  if (S.sending || !S.queue.length) return true;
  const name = S.queue[0].name;
  const batch = [];
  for (const st of S.queue) { if (st.name !== name || batch.length >= 200) break; batch.push(st); }
  S.sending = true;
  batch.forEach((st) => { st.inflight = true; });
  mark();
  let ok = true;
  try {
    const res = await postJSON("/api/strokes", {
      name, strokes: batch.map((st) => ({ class: st.value, radius: st.radius, points: st.points })),
    });
    S.queue.splice(0, batch.length);
    batch.forEach((st, k) => { st.id = res.ids[k]; });
    saved(name, res);
  } catch (err) {
    ok = false;
    if (err.status >= 400 && err.status < 500) { // refused: these strokes can never be saved
      S.queue = S.queue.filter((st) => st.name !== name);
      S.undo[name] = (S.undo[name] || []).filter((it) => it.kind !== "stroke" || it.stroke.id);
      setStatus(`not saved: ${err.message}`, true);
      if (err.status === 404 || err.status === 410) markMissing(name);
      if (S.cur && S.cur.name === name) S.needReload = err.status !== 404 && err.status !== 410;
    } else {
      setStatus(`not saved yet, retrying: ${err.message}`, true);
      scheduleFlush(2000);
    }
  } finally {
    S.sending = false;
    batch.forEach((st) => { st.inflight = false; });
    mark();
  }
  if (S.queue.length && ok) scheduleFlush(0);
  if (!S.queue.length && S.needReload) { S.needReload = false; await reloadMask(); }
  return ok;
}

function saved(name, res) {
  if (!S.cur || S.cur.name !== name) return;
  const expected = res.changed ? S.cur.version + 1 : S.cur.version;
  if (res.version !== expected) S.needReload = true; // another tab drew on this image too
  S.cur.version = res.version;
  const img = S.images.find((i) => i.name === name);
  if (img) { img.labelled = res.labelled; img.version = res.version; updateListItem(img); }
  setStatus(`saved (${res.labelled} labelled pixels)`);
  refreshPoints();
}

async function drain() {
  clearTimeout(S.flushTimer);
  for (let i = 0; i < 500 && (S.queue.length || S.sending); i++) {
    if (S.sending) { await sleep(20); continue; }
    if (!(await flush())) return false;
  }
  return !S.queue.length;
}

async function reloadMask() {
  const cur = S.cur;
  if (!cur) return;
  if (S.sending) { // after the strokes in flight are saved
    S.needReload = true;
    return;
  }
  try {
    const res = await request(`/api/mask/${enc(cur.name)}`);
    const labels = new Uint8Array(await res.arrayBuffer());
    if (S.cur !== cur) return;
    cur.labels = labels;
    cur.version = Number(res.headers.get("X-Version"));
    cur.locked = null;
    for (const st of S.queue) if (st.name === cur.name) applyStroke(st);
    repaintLabels();
    mark();
    refreshPoints();
  } catch (err) {
    cur.locked = err.message;
    setStatus(err.message, true);
  }
}

function applyStroke(st) {
  const fp = footprint(st.points, st.radius, S.cur.h, S.cur.w);
  if (!fp) return;
  const bw = fp.right - fp.left;
  for (let k = 0; k < fp.hit.length; k++) {
    if (fp.hit[k]) S.cur.labels[(fp.top + Math.floor(k / bw)) * S.cur.w + fp.left + (k % bw)] = st.value;
  }
}

async function undo() {
  if (!S.cur) return;
  const name = S.cur.name, items = stack(S.undo, name);
  const item = items.pop();
  if (!item) { setStatus("nothing to undo"); return; }
  stack(S.redo, name).push(item);
  const pending = S.queue.indexOf(item.stroke);
  if (item.kind === "stroke" && pending >= 0 && !item.stroke.inflight) {
    S.queue.splice(pending, 1);
    await reloadMask();
    setStatus("undone");
    return;
  }
  if (!(await drain())) return;
  const id = item.kind === "stroke" ? item.stroke.id : item.id;
  try {
    const res = await postJSON("/api/undo", { name, id });
    setStatus(`undone (${res.labelled} labelled pixels)`);
  } catch (err) {
    setStatus(`cannot undo: ${err.message}`, true);
  }
  await reloadMask();
}

async function redo() {
  if (!S.cur) return;
  const name = S.cur.name, item = stack(S.redo, name).pop();
  if (!item) { setStatus("nothing to redo"); return; }
  if (item.kind === "accept") { await acceptPrediction(); return; }
  const st = { ...item.stroke, id: null, inflight: false };
  paintLocal(st.points, st.radius, st.value);
  S.queue.push(st);
  stack(S.undo, name).push({ kind: "stroke", stroke: st });
  mark();
  scheduleFlush(0);
}

async function acceptPrediction() {
  if (!S.cur || S.cur.locked) return;
  if (!(await drain())) return;
  const threshold = Number($("threshold").value) || 0.9;
  try {
    const res = await postJSON("/api/accept", { name: S.cur.name, threshold });
    stack(S.undo, res.name).push({ kind: "accept", id: res.ids[0] });
    setStatus(`accepted ${res.pixels} confident pixels (p >= ${threshold}); correct them with the brush`);
  } catch (err) {
    setStatus(err.message, true);
  }
  await reloadMask();
}

// ---- images ---------------------------------------------------------------------------------

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new HttpError(410, "the image cannot be loaded (deleted or unreadable?)"));
    img.src = url;
  });
}

async function openImage(name) {
  await drain();
  const info = S.images.find((i) => i.name === name);
  if (!info) return;
  setStatus(`opening ${name}…`);
  let img;
  try {
    img = await loadImage(`/api/image/${enc(name)}?v=${Date.now()}`);
  } catch (err) {
    setStatus(`${name}: ${err.message}`, true);
    markMissing(name);
    return;
  }
  const w = img.naturalWidth, h = img.naturalHeight;
  S.cur = {
    name, w, h, img, labels: new Uint8Array(w * h).fill(ERASE), version: -1,
    labelCanvas: newCanvas(w, h), predCanvas: null, uncCanvas: null, predVersion: 0, locked: null,
  };
  S.points = [];
  S.pointsFor = "";
  document.querySelectorAll("#images li").forEach((li) => li.classList.toggle("current", li.dataset.name === name));
  fit();
  await reloadMask();
  if (S.cur && S.cur.locked) setStatus(S.cur.locked, true);
  else setStatus(`${name}: ${w}×${h}`);
  history.replaceState(null, "", `#${enc(name)}`);
  refreshPrediction();
}

async function refreshPrediction() {
  const cur = S.cur;
  if (!cur || S.predLoading) return;
  S.predLoading = true;
  try {
    const res = await request(`/api/prediction/${enc(cur.name)}`);
    if (res.status === 204 || S.cur !== cur) return;
    const version = Number(res.headers.get("X-Model-Version"));
    const data = new Uint8Array(await res.arrayBuffer());
    const n = cur.w * cur.h;
    if (data.length !== 2 * n) return;
    cur.predCanvas = cur.predCanvas || newCanvas(cur.w, cur.h);
    cur.uncCanvas = cur.uncCanvas || newCanvas(cur.w, cur.h);
    const pctx = cur.predCanvas.getContext("2d"), uctx = cur.uncCanvas.getContext("2d");
    const pred = pctx.createImageData(cur.w, cur.h), unc = uctx.createImageData(cur.w, cur.h);
    const p32 = new Uint32Array(pred.data.buffer), lut = new Uint32Array(S.lut.buffer);
    const u = unc.data;
    for (let i = 0; i < n; i++) {
      p32[i] = lut[data[i]];
      const e = data[n + i];
      u[4 * i] = 255; u[4 * i + 1] = 0; u[4 * i + 2] = 255; u[4 * i + 3] = e;
    }
    pctx.putImageData(pred, 0, 0);
    uctx.putImageData(unc, 0, 0);
    cur.predVersion = version;
    mark();
    requestRender();
  } catch (err) {
    if (err.status !== 404 && err.status !== 410) setStatus(`prediction: ${err.message}`, true);
  } finally {
    S.predLoading = false;
  }
}

function pointCount() { return Math.max(0, Math.min(100, Math.floor(Number($("points").value) || 0))); }

async function refreshPoints() { // the server's suggested pixels of the open image's saved mask
  const cur = S.cur, n = pointCount();
  if (!cur || cur.locked) return;
  const key = `${cur.name}:${cur.version}:${n}`;
  if (key === S.pointsFor) return;
  S.pointsFor = key;
  let points = [];
  if (n > 0) {
    try {
      points = (await getJSON(`/api/suggest/${enc(cur.name)}?n=${n}`)).points;
    } catch (err) {
      S.pointsFor = "";
      return;
    }
  }
  if (S.cur !== cur || S.pointsFor !== key) return; // another image or version since
  S.points = points;
  mark();
  requestRender();
}

function shownPoints() { // the suggestions not yet labelled here (strokes show before they save)
  const cur = S.cur;
  if (!cur) return [];
  return S.points.filter(([x, y]) => cur.labels[y * cur.w + x] === ERASE);
}

function drawPoints(ctx, dpr) {
  const v = S.view;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  for (const [x, y] of shownPoints()) {
    const sx = v.ox + (x + 0.5) * v.scale, sy = v.oy + (y + 0.5) * v.scale;
    const r = Math.max(6, 1.5 * v.scale);
    for (const [color, width] of [["#000", 3.5], ["#fff", 1.5]]) {
      ctx.beginPath();
      ctx.arc(sx, sy, r, 0, 2 * Math.PI);
      ctx.strokeStyle = color;
      ctx.lineWidth = width;
      ctx.stroke();
    }
  }
}

async function nextImage() {
  if (!(await drain())) return;
  const after = S.cur ? S.cur.name : "";
  try {
    const res = await getJSON(`/api/next?order=${S.order}&after=${enc(after)}`);
    if (!res.name) { setStatus(`no unlabelled image left (${res.reason})`); return; }
    await openImage(res.name);
    const why = res.score !== undefined ? `mean entropy ${res.score.toFixed(3)}` : res.reason;
    setStatus(`${res.name}: next by ${res.order === "uncertain" ? "uncertainty" : "order"} (${why})`);
  } catch (err) {
    setStatus(err.message, true);
  }
}

// ---- the image list -------------------------------------------------------------------------

function updateListItem(info) {
  const li = document.querySelector(`#images li[data-name="${CSS.escape(info.name)}"]`);
  if (!li) return;
  li.classList.toggle("labelled", info.labelled > 0);
  li.classList.toggle("broken", !!info.error || !!info.missing);
  const badge = li.querySelector(".badge");
  if (info.missing) badge.textContent = "image gone";
  else if (info.error) badge.textContent = "mask unreadable";
  else badge.textContent = info.labelled > 0 ? `${info.labelled} px labelled` : "unlabelled";
  li.title = info.error || info.file;
}

function markMissing(name) {
  const info = S.images.find((i) => i.name === name);
  if (info) { info.missing = true; updateListItem(info); }
}

function renderList() {
  const ul = $("images");
  const have = new Set([...ul.children].map((li) => li.dataset.name));
  for (const info of S.images) {
    if (!have.has(info.name)) {
      const li = document.createElement("li");
      li.dataset.name = info.name;
      const img = document.createElement("img");
      img.loading = "lazy";
      img.alt = "";
      img.src = `/api/thumb/${enc(info.name)}`;
      const meta = document.createElement("div");
      meta.className = "meta";
      const nm = document.createElement("span");
      nm.className = "name";
      nm.textContent = info.name;
      const badge = document.createElement("span");
      badge.className = "badge";
      meta.append(nm, badge);
      li.append(img, meta);
      li.addEventListener("click", () => openImage(info.name));
      ul.append(li);
    }
    updateListItem(info);
  }
  const c = S.counts;
  if (c) $("counts").textContent = `${c.labelled} labelled · ${c.unlabelled} unlabelled`;
}

function renderSkipped() {
  const box = $("skipped");
  box.hidden = !S.skipped.length;
  box.querySelector("summary").textContent = `${S.skipped.length} file(s) skipped`;
  const ul = box.querySelector("ul");
  ul.replaceChildren(...S.skipped.map((s) => {
    const li = document.createElement("li");
    li.textContent = `${s.file}: ${s.reason}`;
    return li;
  }));
}

function renderClasses() {
  const ul = $("classes");
  ul.replaceChildren();
  S.classes.forEach((c) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.className = "class-button";
    b.dataset.index = String(c.index);
    b.id = `class-${c.index}`;
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = `rgb(${c.color.join(",")})`;
    const nm = document.createElement("span");
    nm.className = "name";
    nm.textContent = c.name;
    b.append(sw, nm);
    if (c.index < 10) {
      const k = document.createElement("kbd");
      k.textContent = String((c.index + 1) % 10);
      b.append(k);
    }
    b.addEventListener("click", () => pickClass(c.index));
    li.append(b);
    ul.append(li);
  });
  pickClass(S.cls);
}

function pickClass(index) {
  if (index === "eraser") { S.eraser = true; } else if (index < S.classes.length) { S.eraser = false; S.cls = index; }
  document.querySelectorAll(".class-button").forEach((b) => {
    b.classList.toggle("active", S.eraser ? b.id === "eraser" : b.dataset.index === String(S.cls));
  });
  requestRender();
}

function setBrush(size) {
  S.brush = Math.max(1, Math.min(200, Math.round(size)));
  $("brush").value = String(S.brush);
  $("brush-value").textContent = `${S.brush} px`;
  requestRender();
}

// ---- view: zoom, pan, render ----------------------------------------------------------------

function fit() {
  if (!S.cur) return;
  const c = $("canvas");
  const scale = Math.min(c.clientWidth / S.cur.w, c.clientHeight / S.cur.h) * 0.96;
  S.view = { scale, ox: (c.clientWidth - S.cur.w * scale) / 2, oy: (c.clientHeight - S.cur.h * scale) / 2 };
  requestRender();
}

function zoomAt(mx, my, factor) {
  const v = S.view, scale = Math.max(0.02, Math.min(64, v.scale * factor));
  const ix = (mx - v.ox) / v.scale, iy = (my - v.oy) / v.scale;
  S.view = { scale, ox: mx - ix * scale, oy: my - iy * scale };
  requestRender();
}

function requestRender() {
  if (!S.frame) S.frame = requestAnimationFrame(() => { S.frame = 0; render(); });
}

function opacity(id) { return Number($(id).value) / 100; }

function render() {
  const c = $("canvas"), dpr = window.devicePixelRatio || 1;
  const cw = Math.round(c.clientWidth * dpr), ch = Math.round(c.clientHeight * dpr);
  if (c.width !== cw || c.height !== ch) { c.width = cw; c.height = ch; }
  const ctx = c.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, cw, ch);
  const cur = S.cur;
  if (!cur) return;
  const v = S.view;
  ctx.setTransform(v.scale * dpr, 0, 0, v.scale * dpr, v.ox * dpr, v.oy * dpr);
  ctx.imageSmoothingEnabled = v.scale < 1;
  ctx.drawImage(cur.img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  const layers = [[cur.predCanvas, opacity("pred-opacity")], [cur.uncCanvas, opacity("unc-opacity")],
    [cur.labelCanvas, opacity("label-opacity")]];
  for (const [layer, alpha] of layers) {
    if (layer && alpha > 0) { ctx.globalAlpha = alpha; ctx.drawImage(layer, 0, 0); }
  }
  ctx.globalAlpha = 1;
  drawPoints(ctx, dpr);
  if (S.mouse && !S.panning) {
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.beginPath();
    ctx.arc(S.mouse[0], S.mouse[1], Math.max(1, brushRadius() * v.scale), 0, 2 * Math.PI);
    ctx.strokeStyle = S.eraser ? "#fff" : `rgb(${S.classes[S.cls].color.join(",")})`;
    ctx.lineWidth = 1.5;
    ctx.stroke();
  }
}

function mark() { // state for people and tests: which image, its version, the prediction shown
  const c = $("canvas");
  if (S.cur) {
    c.dataset.image = S.cur.name;
    c.dataset.version = String(S.cur.version);
    c.dataset.prediction = String(S.cur.predVersion);
  }
  c.dataset.pending = String(S.queue.length + (S.sending ? 1 : 0));
  c.dataset.points = String(shownPoints().length);
}

// ---- polling: the trainer, other tabs, the list ---------------------------------------------

function describeTrainer(t) {
  if (!t) return "";
  if (t.error) return t.error;
  const loss = t.loss === null ? "" : ` · loss ${t.loss.toFixed(3)}`;
  const state = t.state === "waiting" ? "waiting for labels" : t.state;
  return t.version ? `model v${t.version} · ${t.steps} steps${loss} · ${state}` : `model: ${state}`;
}

async function poll() {
  try {
    const name = S.cur ? `?name=${enc(S.cur.name)}` : "";
    const st = await getJSON(`/api/status${name}`);
    S.trainer = st.trainer;
    $("trainer").textContent = describeTrainer(st.trainer);
    $("trainer").classList.toggle("error", !!st.trainer.error);
    const countsChanged = !S.counts || S.counts.labelled !== st.counts.labelled || S.counts.images !== st.counts.images;
    S.counts = st.counts;
    if (S.cur && st.image && st.image.gone) {
      if (!S.cur.locked) { S.cur.locked = st.image.gone; setStatus(st.image.gone, true); }
      markMissing(S.cur.name);
      return;
    }
    if (S.cur && st.trainer.version > S.cur.predVersion) refreshPrediction();
    if (S.cur && st.image && st.image.version !== S.cur.version && !S.queue.length && !S.sending) await reloadMask();
    if (countsChanged) await loadProject(false);
  } catch (err) {
    if (err.status === 410 && S.cur) markMissing(S.cur.name);
    if (err.status === 0 || err.status === 410) setStatus(err.message, true);
  }
}

async function loadProject(first) {
  const p = await getJSON("/api/project");
  S.classes = p.classes;
  S.lut = makeLut(p.classes);
  const missing = new Set(S.images.filter((i) => i.missing).map((i) => i.name));
  S.images = p.images.map((i) => ({ ...i, missing: missing.has(i.name) }));
  S.skipped = p.skipped;
  S.counts = p.counts;
  $("root").textContent = p.root;
  $("root").title = p.root;
  renderList();
  renderSkipped();
  if (first) {
    renderClasses();
    $("trainer").textContent = describeTrainer(p.trainer);
    if (p.skipped.length) setStatus(`${p.skipped.length} file(s) could not be read and were skipped (see the list)`, true);
  }
}

// ---- events ---------------------------------------------------------------------------------

function bindCanvas() {
  const c = $("canvas");
  c.addEventListener("contextmenu", (e) => e.preventDefault());
  c.addEventListener("pointerdown", (e) => {
    c.focus();
    c.setPointerCapture(e.pointerId);
    if (e.button === 0 && !S.space) { startStroke(e); return; }
    S.panning = { x: e.offsetX, y: e.offsetY, ox: S.view.ox, oy: S.view.oy };
    c.classList.add("panning");
  });
  c.addEventListener("pointermove", (e) => {
    S.mouse = [e.offsetX, e.offsetY];
    if (S.drawing) extendStroke(e);
    else if (S.panning) {
      S.view.ox = S.panning.ox + e.offsetX - S.panning.x;
      S.view.oy = S.panning.oy + e.offsetY - S.panning.y;
    }
    if (S.cur) {
      const [x, y] = toImage(e);
      $("where").textContent = `x ${Math.floor(x)}  y ${Math.floor(y)}  ·  ${Math.round(S.view.scale * 100)}%`;
    }
    requestRender();
  });
  const up = () => {
    if (S.drawing) endStroke();
    S.panning = null;
    c.classList.remove("panning");
  };
  c.addEventListener("pointerup", up);
  c.addEventListener("pointercancel", up);
  c.addEventListener("pointerleave", () => { S.mouse = null; requestRender(); });
  c.addEventListener("wheel", (e) => {
    e.preventDefault();
    zoomAt(e.offsetX, e.offsetY, Math.exp(-e.deltaY * 0.0015));
  }, { passive: false });
}

function onKey(e) {
  const tag = (e.target.tagName || "").toLowerCase();
  if (tag === "input" || tag === "select" || tag === "textarea" || e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key;
  if (k === " ") { S.space = true; e.preventDefault(); return; }
  if (/^[0-9]$/.test(k)) { pickClass(k === "0" ? 9 : Number(k) - 1); return; }
  const actions = {
    e: () => pickClass("eraser"), "[": () => setBrush(S.brush / 1.25), "]": () => setBrush(S.brush * 1.25 + 0.5),
    z: undo, Z: redo, y: redo, n: nextImage, a: acceptPrediction, f: fit,
    u: () => { $("unc-opacity").value = opacity("unc-opacity") > 0 ? "0" : "60"; syncOutputs(); },
    p: () => { $("points").value = pointCount() > 0 ? "0" : "5"; refreshPoints(); },
    "+": () => zoomAt(...center(), 1.25), "-": () => zoomAt(...center(), 0.8),
  };
  if (actions[k]) { e.preventDefault(); actions[k](); }
}

function center() { const c = $("canvas"); return [c.clientWidth / 2, c.clientHeight / 2]; }

function syncOutputs() {
  for (const id of ["label-opacity", "pred-opacity", "unc-opacity"]) $(`${id}-value`).textContent = `${$(id).value}%`;
  requestRender();
}

function bindControls() {
  document.addEventListener("keydown", onKey);
  document.addEventListener("keyup", (e) => { if (e.key === " ") S.space = false; });
  $("brush").addEventListener("input", () => setBrush(Number($("brush").value)));
  for (const id of ["label-opacity", "pred-opacity", "unc-opacity"]) $(id).addEventListener("input", syncOutputs);
  $("eraser").addEventListener("click", () => pickClass("eraser"));
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("accept").addEventListener("click", acceptPrediction);
  $("next").addEventListener("click", nextImage);
  $("order").addEventListener("change", () => { S.order = $("order").value; });
  $("points").addEventListener("change", refreshPoints);
  $("fit").addEventListener("click", fit);
  $("one").addEventListener("click", () => { const [x, y] = center(); zoomAt(x, y, 1 / S.view.scale); });
  window.addEventListener("resize", () => requestRender());
  window.addEventListener("pagehide", () => { // a reload or a closed tab: send what is left
    const byName = {};
    for (const st of S.queue) (byName[st.name] = byName[st.name] || []).push({ class: st.value, radius: st.radius, points: st.points });
    for (const [name, strokes] of Object.entries(byName)) {
      navigator.sendBeacon("/api/strokes", new Blob([JSON.stringify({ name, strokes })], { type: "application/json" }));
    }
    S.queue = [];
  });
}

async function main() {
  bindCanvas();
  bindControls();
  setBrush(S.brush);
  try {
    await loadProject(true);
  } catch (err) {
    setStatus(err.message, true);
    return;
  }
  const wanted = decodeURIComponent(location.hash.slice(1));
  const first = S.images.find((i) => i.name === wanted) || S.images.find((i) => !i.error) || S.images[0];
  if (first) await openImage(first.name);
  setInterval(poll, 1500);
}

window.pixelwiseLabel = { // for tests and the console
  state: S,
  toScreen: (x, y) => [S.view.ox + x * S.view.scale, S.view.oy + y * S.view.scale],
  footprint,
};

main();
