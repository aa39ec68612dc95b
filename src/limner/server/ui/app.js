// limner playground: plain JavaScript, no build step, nothing fetched from anywhere but this server.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "limner.apiKey";
const OP_LABEL = { generate: "Generate", edit: "Edit", vary: "Make variations" };
const OP_PATH = { generate: "/v1/images/generations", edit: "/v1/images/edits", vary: "/v1/images/variations" };

const state = {
  op: "generate",
  models: [],
  inputs: [], // [{blob, name}] for edits and variations
  controller: null,
};

// ---------------------------------------------------------------------------------------------------
// The API

function headers() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// A 401 speaks of curl's Authorization header; on this page the key goes into its own field, so say
// that, point at the field, and keep the server's reason (missing or wrong key) after it.
async function errorText(response) {
  if (response.status === 401) return keyMessage(response);
  try {
    const body = await response.json();
    const error = body.error || {};
    return `${error.message || response.statusText}${error.param ? ` (param: ${error.param})` : ""}`;
  } catch (_) {
    return `HTTP ${response.status}`;
  }
}

async function keyMessage(response) {
  let reason = "";
  try {
    const code = ((await response.json()).error || {}).code;
    reason = code === "invalid_api_key" ? "The key in the API key field was not accepted. " : "";
  } catch (_) { /* the body is not JSON: the generic message is enough */ }
  const field = $("api-key");
  field.setAttribute("aria-invalid", "true");
  field.focus();
  return `${reason}This server needs an API key: paste yours into the API key field at the top of the ` +
    "page (an operator makes one with `limner keys create`).";
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
  if (!text) $("api-key").removeAttribute("aria-invalid");
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) {
    showError(await errorText(response));
    // The menus say why they are empty rather than looking broken.
    const why = response.status === 401 ? "needs an API key" : "unavailable";
    $("model").replaceChildren(new Option(why, "", true, true));
    $("size").replaceChildren(new Option("–", "", true, true));
    return;
  }
  showError("");
  state.models = (await response.json()).data;
  fillModels();
}

function capabilities() {
  const model = state.models.find((m) => m.id === $("model").value);
  return model ? model.capabilities || {} : {};
}

function fillModels() {
  const select = $("model");
  const previous = select.value || sessionStorage.getItem("limner.model");
  select.replaceChildren();
  for (const model of state.models) {
    const ops = (model.capabilities || {}).operations || ["generate", "edit", "vary"];
    if (!ops.includes(state.op)) continue;
    select.append(new Option(model.id, model.id));
  }
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
  applyModel();
}

function setOptions(select, values, keep) {
  const old = keep ? select.value : "";
  select.replaceChildren(...values.map((v) => new Option(v, v)));
  if (values.includes(old)) select.value = old;
}

function applyModel() {
  const caps = capabilities();
  sessionStorage.setItem("limner.model", $("model").value);
  const fields = new Set(caps.fields || []);
  for (const label of document.querySelectorAll("[data-field]")) {
    const name = label.dataset.field;
    if (name === "custom-size") continue;
    let shown = name === "quality" ? (caps.qualities || []).length > 0 : fields.has(name);
    if (state.op === "vary" && !["response_format", "negative_prompt", "num_inference_steps", "guidance_scale"].includes(name)) shown = false;
    if (name === "input_fidelity" && state.op !== "edit") shown = false;
    if (name === "style" || name === "moderation") shown = shown && state.op === "generate";
    if (name === "partial_images") shown = shown && $("stream").checked;
    label.hidden = !shown;
  }
  const sizes = [...(caps.sizes || [])];
  if (caps.size_rule) sizes.push("custom");
  if (caps.auto_size || state.op === "edit") sizes.unshift("auto");
  setOptions($("size"), [...new Set(sizes)], true);
  if (!$("size").value && caps.default_size) $("size").value = caps.default_size;
  if ((caps.sizes || []).includes(caps.default_size) && !$("size").dataset.touched) $("size").value = caps.default_size;
  $("size").closest("label").hidden = false;
  showCustomSize();
  setOptions($("quality"), caps.qualities || ["auto"], true);
  $("response_format").options[0].textContent = `default (${caps.default_response_format || "b64_json"})`;
  $("n").max = caps.max_n || 10;
  $("prompt-row").hidden = state.op === "vary";
  // Edits: several images where the model takes them (references), a mask where it can use one.
  const editing = state.op === "edit";
  $("images").multiple = editing && (caps.max_images ?? 16) > 1;
  $("images-note").hidden = !editing;
  $("images-note").textContent = caps.edits === "reference images"
    ? `up to ${caps.max_images} reference images`
    : caps.mask === false ? "the first one is edited" : "the first one is edited; paint on it to mask";
  const maskable = editing && caps.mask !== false && state.inputs.length > 0;
  if (!maskable) $("mask-tools").hidden = true;
  else if ($("mask-tools").hidden) startMask(state.inputs[0].blob); // keeps a mask already painted
  $("submit").textContent = OP_LABEL[state.op];
}

function showCustomSize() {
  document.querySelector('[data-field="custom-size"]').hidden = $("size").value !== "custom";
}

// ---------------------------------------------------------------------------------------------------
// Building a request

function chosenSize() {
  const size = $("size").value;
  return size === "custom" ? $("custom-size").value.trim() : size;
}

function randomSeed() {
  return Math.floor(Math.random() * 2 ** 31);
}

function collectFields() {
  const fields = { model: $("model").value };
  if (state.op !== "vary") fields.prompt = $("prompt").value;
  const n = parseInt($("n").value, 10);
  if (n > 1) fields.n = n;
  const size = chosenSize();
  if (size) fields.size = size;
  // A seed always travels, so that a result can be made again byte for byte from the gallery.
  fields.seed = $("seed").value === "" ? randomSeed() : parseInt($("seed").value, 10);
  for (const label of document.querySelectorAll("[data-field]")) {
    if (label.hidden) continue;
    const name = label.dataset.field;
    if (name === "custom-size") continue;
    const input = $(name);
    if (input.type === "checkbox") {
      if (input.checked) fields[name] = true;
    } else if (input.value !== "") {
      fields[name] = input.type === "number" ? Number(input.value) : input.value;
    }
  }
  if (!fields.stream) delete fields.partial_images;
  return fields;
}

async function requestBody(fields, inputs, mask) {
  if (state.op === "generate") {
    return { body: JSON.stringify(fields), type: "application/json" };
  }
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) form.append(name, String(value));
  if (state.op === "edit") {
    for (const input of inputs) form.append(inputs.length > 1 ? "image[]" : "image", input.blob, input.name);
    if (mask) form.append("mask", mask, "mask.png");
  } else {
    form.append("image", inputs[0].blob, inputs[0].name);
  }
  return { body: form, type: null };
}

// ---------------------------------------------------------------------------------------------------
// Running it

function b64ToBlob(b64, type) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

function mimeOf(fields) {
  return `image/${fields.output_format || "png"}`;
}

function progress(text) {
  $("progress").textContent = text;
}

function showImage(blob, caption, replace) {
  const live = $("live");
  if (replace) live.replaceChildren();
  const figure = document.createElement("figure");
  const img = document.createElement("img");
  img.src = URL.createObjectURL(blob);
  img.alt = caption;
  const text = document.createElement("figcaption");
  text.textContent = caption;
  figure.append(img, text);
  live.append(figure);
  return figure;
}

async function run(op, fields, inputs, mask, { fromGallery = false } = {}) {
  showError("");
  state.op = op;
  const controller = new AbortController();
  state.controller = controller;
  $("cancel").disabled = false;
  $("submit").disabled = true;
  const started = performance.now();
  progress(fields.stream ? "waiting for the first image…" : "working…");
  $("live").replaceChildren();
  try {
    const { body, type } = await requestBody(fields, inputs, mask);
    const init = { method: "POST", body, headers: headers(), signal: controller.signal };
    if (type) init.headers["Content-Type"] = type;
    const response = await fetch(OP_PATH[op], init);
    if (!response.ok) {
      showError(await errorText(response));
      progress("");
      return [];
    }
    const blobs = fields.stream ? await readStream(response, fields) : await readImages(response, fields);
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    progress(`${blobs.length} image${blobs.length === 1 ? "" : "s"} in ${seconds} s`);
    for (const [index, blob] of blobs.entries()) {
      await saveResult({ op, fields, inputs, mask, blob, index, created: Date.now() });
    }
    await renderGallery();
    return blobs;
  } catch (error) {
    if (error.name === "AbortError") {
      progress("cancelled");
    } else {
      showError(String(error.message || error));
      progress("");
    }
    return [];
  } finally {
    state.controller = null;
    $("cancel").disabled = true;
    $("submit").disabled = false;
    if (fromGallery) window.scrollTo({ top: 0 });
  }
}

async function readImages(response, fields) {
  const body = await response.json();
  const blobs = [];
  for (const [index, item] of body.data.entries()) {
    let blob;
    if (item.b64_json) {
      blob = b64ToBlob(item.b64_json, mimeOf(fields));
    } else {
      const image = await fetch(item.url);
      blob = await image.blob();
    }
    blobs.push(blob);
    showImage(blob, `image ${index + 1}`, false);
  }
  return blobs;
}

async function readStream(response, fields) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const total = fields.n || 1;
  const partials = fields.partial_images || 0;
  const blobs = [];
  let buffer = "";
  let current = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      let data = "";
      for (const line of chunk.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (!data) continue;
      const payload = JSON.parse(data);
      if (event === "error") throw new Error(`${payload.error.message}${payload.error.param ? ` (param: ${payload.error.param})` : ""}`);
      const blob = b64ToBlob(payload.b64_json, mimeOf(fields));
      const image = blobs.length + 1;
      if (event.endsWith("partial_image")) {
        progress(`image ${image}/${total}: partial ${payload.partial_image_index + 1}/${partials}`);
        if (current) current.remove();
        current = showImage(blob, `image ${image}: partial ${payload.partial_image_index + 1}`, false);
        current.dataset.partial = String(payload.partial_image_index);
      } else {
        if (current) current.remove();
        current = null;
        blobs.push(blob);
        showImage(blob, `image ${image}`, false);
        progress(`image ${image}/${total} done`);
      }
    }
  }
  return blobs;
}

// ---------------------------------------------------------------------------------------------------
// The gallery, kept in the browser (IndexedDB: images are too big for localStorage)

let dbPromise = null;

function db() {
  dbPromise ||= new Promise((resolve, reject) => {
    const request = indexedDB.open("limner-playground", 1);
    request.onupgradeneeded = () => request.result.createObjectStore("results", { keyPath: "id", autoIncrement: true });
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  return dbPromise;
}

async function store(mode, action) {
  const database = await db();
  return new Promise((resolve, reject) => {
    const transaction = database.transaction("results", mode);
    const request = action(transaction.objectStore("results"));
    transaction.oncomplete = () => resolve(request && request.result);
    transaction.onerror = () => reject(transaction.error);
  });
}

function saveResult(record) {
  const inputs = (record.inputs || []).map((i) => ({ blob: i.blob, name: i.name }));
  return store("readwrite", (s) => s.add({ ...record, inputs }));
}

async function renderGallery() {
  const items = (await store("readonly", (s) => s.getAll())) || [];
  const list = $("gallery");
  list.replaceChildren();
  for (const item of items.reverse()) {
    const li = document.createElement("li");
    const img = document.createElement("img");
    img.src = URL.createObjectURL(item.blob);
    img.alt = `${item.op}: ${item.fields.prompt || "variation"}`;
    const meta = document.createElement("p");
    meta.className = "meta";
    const shown = { ...item.fields };
    meta.textContent = `${item.op} · ${Object.entries(shown).map(([k, v]) => `${k}=${v}`).join(" · ")}` +
      (item.index ? ` · image ${item.index + 1}` : "");
    const buttons = document.createElement("div");
    buttons.className = "buttons";
    const rerun = button("Re-run", () => rerunItem(item));
    rerun.dataset.action = "rerun";
    const use = button("Use as input", () => useAsInput(item.blob, `result-${item.id}.png`));
    const download = document.createElement("a");
    download.textContent = "Download";
    download.href = img.src;
    download.download = `limner-${item.id}.${(item.fields.output_format || "png").replace("jpeg", "jpg")}`;
    download.className = "small";
    buttons.append(rerun, use, download);
    li.append(img, meta, buttons);
    list.append(li);
  }
}

function button(text, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "small";
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

async function rerunItem(item) {
  selectOp(item.op);
  $("model").value = item.fields.model;
  applyModel();
  return run(item.op, { ...item.fields }, item.inputs || [], item.mask || null, { fromGallery: true });
}

function useAsInput(blob, name) {
  selectOp(state.op === "generate" ? "edit" : state.op);
  setInputs([{ blob, name }]);
}

// ---------------------------------------------------------------------------------------------------
// Inputs and the mask

const paint = { canvas: null, mask: null, image: null, erasing: false, undo: [], redo: [], drawing: false };

async function setInputs(inputs) {
  state.inputs = inputs;
  const thumbs = $("thumbs");
  thumbs.replaceChildren(
    ...inputs.map((input, index) => {
      const img = document.createElement("img");
      img.src = URL.createObjectURL(input.blob);
      img.alt = `input ${index + 1}: ${input.name}`;
      return img;
    }),
  );
  if (state.op === "edit" && inputs.length && capabilities().mask !== false) await startMask(inputs[0].blob);
  else $("mask-tools").hidden = true;
}

async function startMask(blob) {
  const image = await createImageBitmap(blob);
  const canvas = $("paint");
  canvas.width = image.width;
  canvas.height = image.height;
  const mask = document.createElement("canvas");
  mask.width = image.width;
  mask.height = image.height;
  Object.assign(paint, { canvas, mask, image, undo: [], redo: [] });
  clearMask(false);
  $("mask-tools").hidden = false;
  $("brush-size").max = String(Math.max(16, Math.round(Math.max(image.width, image.height) / 2)));
  drawPaint();
}

function clearMask(record = true) {
  if (!paint.mask) return;
  if (record) snapshot();
  const ctx = paint.mask.getContext("2d");
  ctx.globalCompositeOperation = "source-over";
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, paint.mask.width, paint.mask.height); // opaque everywhere: nothing to redraw yet
  drawPaint();
}

function painted() {
  const data = paint.mask.getContext("2d").getImageData(0, 0, paint.mask.width, paint.mask.height).data;
  for (let i = 3; i < data.length; i += 4) if (data[i] < 255) return true;
  return false;
}

function drawPaint() {
  const { canvas, mask, image } = paint;
  if (!canvas || !image) return;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if ($("show-mask").checked) {
    ctx.drawImage(mask, 0, 0); // the mask as sent: opaque = kept, transparent (checkerboard) = redrawn
    return;
  }
  ctx.drawImage(image, 0, 0);
  // Tint the painted (transparent in the mask) area.
  const tint = document.createElement("canvas");
  tint.width = canvas.width;
  tint.height = canvas.height;
  const t = tint.getContext("2d");
  t.fillStyle = getComputedStyle(document.documentElement).getPropertyValue("--paint") || "rgba(230,40,90,.45)";
  t.fillRect(0, 0, tint.width, tint.height);
  t.globalCompositeOperation = "destination-out";
  t.drawImage(mask, 0, 0);
  ctx.drawImage(tint, 0, 0);
}

function snapshot() {
  const ctx = paint.mask.getContext("2d");
  paint.undo.push(ctx.getImageData(0, 0, paint.mask.width, paint.mask.height));
  if (paint.undo.length > 40) paint.undo.shift();
  paint.redo = [];
}

function restore(from, to) {
  if (!paint.mask || !from.length) return;
  const ctx = paint.mask.getContext("2d");
  to.push(ctx.getImageData(0, 0, paint.mask.width, paint.mask.height));
  ctx.putImageData(from.pop(), 0, 0);
  drawPaint();
}

function pointAt(event) {
  const rect = paint.canvas.getBoundingClientRect();
  return {
    x: ((event.clientX - rect.left) / rect.width) * paint.canvas.width,
    y: ((event.clientY - rect.top) / rect.height) * paint.canvas.height,
  };
}

function stroke(from, to) {
  const ctx = paint.mask.getContext("2d");
  const scale = paint.canvas.width / paint.canvas.getBoundingClientRect().width;
  ctx.globalCompositeOperation = paint.erasing ? "source-over" : "destination-out";
  ctx.strokeStyle = "#000";
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.lineWidth = Number($("brush-size").value) * scale;
  ctx.beginPath();
  ctx.moveTo(from.x, from.y);
  ctx.lineTo(to.x + 0.01, to.y);
  ctx.stroke();
  drawPaint();
}

function maskBlob() {
  return new Promise((resolve) => paint.mask.toBlob(resolve, "image/png"));
}

function setupPainting() {
  const canvas = $("paint");
  let last = null;
  canvas.addEventListener("pointerdown", (event) => {
    if (!paint.mask) return;
    canvas.setPointerCapture(event.pointerId);
    snapshot();
    last = pointAt(event);
    stroke(last, last);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!last) return;
    const point = pointAt(event);
    stroke(last, point);
    last = point;
  });
  const end = () => (last = null);
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  const tool = (erasing) => {
    paint.erasing = erasing;
    $("brush").setAttribute("aria-pressed", String(!erasing));
    $("eraser").setAttribute("aria-pressed", String(erasing));
  };
  $("brush").addEventListener("click", () => tool(false));
  $("eraser").addEventListener("click", () => tool(true));
  $("undo").addEventListener("click", () => restore(paint.undo, paint.redo));
  $("redo").addEventListener("click", () => restore(paint.redo, paint.undo));
  $("clear").addEventListener("click", () => clearMask());
  $("show-mask").addEventListener("change", drawPaint);
  document.addEventListener("keydown", (event) => {
    if ($("mask-tools").hidden || ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName)) return;
    const key = event.key.toLowerCase();
    if ((event.ctrlKey || event.metaKey) && key === "z") { event.preventDefault(); restore(paint.undo, paint.redo); }
    else if ((event.ctrlKey || event.metaKey) && key === "y") { event.preventDefault(); restore(paint.redo, paint.undo); }
    else if (key === "b") tool(false);
    else if (key === "e") tool(true);
    else if (key === "[" || key === "]") {
      const size = $("brush-size");
      size.value = String(Number(size.value) * (key === "]" ? 1.25 : 0.8));
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Wiring

function selectOp(op) {
  state.op = op;
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    const selected = tab.dataset.op === op;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    if (selected) $("panel").setAttribute("aria-labelledby", tab.id);
  }
  $("inputs").hidden = op === "generate";
  fillModels();
}

async function submit(event) {
  event.preventDefault();
  const fields = collectFields();
  if (state.op !== "generate" && !state.inputs.length) {
    showError("Choose an image first.");
    return;
  }
  if (state.op !== "vary" && !fields.prompt.trim()) {
    showError("Write a prompt first.");
    $("prompt").focus();
    return;
  }
  const mask = state.op === "edit" && paint.mask && painted() ? await maskBlob() : null;
  await run(state.op, fields, state.inputs, mask);
}

function init() {
  $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    loadModels();
  });
  $("model").addEventListener("change", applyModel);
  $("size").addEventListener("change", () => { $("size").dataset.touched = "1"; showCustomSize(); });
  $("stream").addEventListener("change", applyModel);
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  for (const tab of tabs) {
    tab.addEventListener("click", () => selectOp(tab.dataset.op));
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      const next = tabs[(tabs.indexOf(tab) + step + tabs.length) % tabs.length];
      next.focus();
      selectOp(next.dataset.op);
    });
  }
  $("images").addEventListener("change", () =>
    setInputs([...$("images").files].map((file) => ({ blob: file, name: file.name }))),
  );
  $("panel").addEventListener("submit", submit);
  $("cancel").addEventListener("click", () => state.controller && state.controller.abort());
  $("clear-gallery").addEventListener("click", async () => {
    await store("readwrite", (s) => s.clear());
    renderGallery();
  });
  setupPainting();
  selectOp("generate");
  loadModels();
  renderGallery();
}

init();
