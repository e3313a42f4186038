// pdmtrack annotate: the page. Everything it shows comes from the server (/api/state, frames,
// label maps); every change it makes is a request, and every change anyone makes comes back
// through /api/events, so two tabs on one project stay consistent.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const context = canvas.getContext("2d");
const view = {
  summary: null, frame: 0, object: null, tool: "click", radius: 8,
  image: null, labels: null, labelsFrame: -1, playing: null, drag: null, stroke: [],
};
const images = new Map(); // frame -> HTMLImageElement, a few kept

async function api(path, body, method) {
  const response = await fetch(path, {
    method: method || (body === undefined ? "GET" : "POST"),
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) {
    const message = data.error || (Array.isArray(data.detail) ? data.detail.map((d) => d.msg).join("; ") : String(data.detail));
    status(message, true);
    throw new Error(message);
  }
  return data;
}

function status(text, error) {
  $("status").textContent = text;
  $("status").style.color = error ? "#f88" : "#9cf";
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("cannot load " + url));
    image.src = url;
  });
}

async function frameImage(frame) {
  if (!images.has(frame)) {
    images.set(frame, loadImage(`/api/frames/${frame}.jpg`));
    if (images.size > 64) images.delete(images.keys().next().value);
  }
  return images.get(frame);
}

async function frameLabels(frame) {
  const version = (view.summary.frame_versions || {})[frame] || 0;
  const image = await loadImage(`/api/labels/${frame}.png?v=${version}`);
  const scratch = document.createElement("canvas");
  scratch.width = image.width;
  scratch.height = image.height;
  const scratchContext = scratch.getContext("2d");
  scratchContext.drawImage(image, 0, 0);
  const pixels = scratchContext.getImageData(0, 0, image.width, image.height).data;
  const labels = new Uint8Array(image.width * image.height);
  for (let i = 0; i < labels.length; i++) labels[i] = pixels[4 * i];
  return labels;
}

function colourOf(id) {
  const info = view.summary.objects[String(id)];
  const hex = info && info.colour ? info.colour : "#ff0000";
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

async function showFrame(frame) {
  const summary = view.summary;
  frame = Math.max(0, Math.min(summary.frames - 1, frame));
  view.frame = frame;
  $("slider").value = frame;
  $("frame-number").textContent = `${frame} / ${summary.frames - 1}  ${summary.frame_names[frame]}`;
  const [image, labels] = await Promise.all([frameImage(frame), frameLabels(frame)]);
  if (view.frame !== frame) return; // the user moved on meanwhile
  view.image = image;
  view.labels = labels;
  view.labelsFrame = frame;
  draw();
}

function draw() {
  const { image, labels, summary } = view;
  if (!image || !labels) return;
  canvas.width = summary.width;
  canvas.height = summary.height;
  context.drawImage(image, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  const colours = {};
  for (let i = 0; i < labels.length; i++) {
    const id = labels[i];
    if (!id) continue;
    const colour = colours[id] || (colours[id] = colourOf(id));
    for (let c = 0; c < 3; c++) pixels.data[4 * i + c] = Math.round(pixels.data[4 * i + c] * 0.45 + colour[c] * 0.55);
  }
  context.putImageData(pixels, 0, 0);
  drawClicks();
  if (view.drag && view.drag.box) {
    const { x0, y0, x1, y1 } = view.drag;
    context.strokeStyle = "#fff";
    context.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
  }
}

function drawClicks() {
  const given = view.summary.given[String(view.frame)];
  if (!given) return;
  for (const [id, prompt] of Object.entries(given.clicks)) {
    prompt.points.forEach(([x, y], k) => {
      context.fillStyle = prompt.labels[k] ? "#2f2" : "#f22";
      context.beginPath();
      context.arc(x, y, 5, 0, 2 * Math.PI);
      context.fill();
    });
    if (prompt.box) {
      const [x0, y0, x1, y1] = prompt.box;
      context.strokeStyle = `rgb(${colourOf(id).join(",")})`;
      context.strokeRect(x0, y0, x1 - x0, y1 - y0);
    }
  }
}

function drawStrip() {
  const strip = $("strip");
  const summary = view.summary;
  strip.width = summary.frames;
  const stripContext = strip.getContext("2d");
  const colour = { t: "#3a7", s: "#e92", "-": "#555" };
  for (let t = 0; t < summary.frames; t++) {
    stripContext.fillStyle = colour[summary.tracked[t]];
    stripContext.fillRect(t, 5, 1, 9);
  }
  stripContext.fillStyle = "#fff";
  for (const frame of Object.keys(summary.given)) stripContext.fillRect(Number(frame), 0, 1, 5);
}

function drawObjects() {
  const list = $("objects");
  list.innerHTML = "";
  for (const [key, info] of Object.entries(view.summary.objects)) {
    const id = Number(key);
    const item = document.createElement("li");
    item.className = id === view.object ? "selected" : "";
    item.dataset.object = key;
    item.innerHTML = `<input type="radio" name="object" ${id === view.object ? "checked" : ""} title="select (${id})">
      <span>${id}</span><input type="color" value="${info.colour}"><input type="text" placeholder="class name">
      <button title="remove everywhere">&times;</button><button title="remove from this frame on">&times;&rarr;</button>`;
    const [radio, colour, name, remove, removeFrom] = item.querySelectorAll("input, button");
    name.value = info.name;
    radio.onchange = () => select(id);
    colour.onchange = () => api(`/api/objects/${id}`, { colour: colour.value }, "PATCH");
    name.onchange = () => api(`/api/objects/${id}`, { name: name.value }, "PATCH");
    remove.onclick = () => confirm(`Remove object ${id} everywhere? This cannot be undone.`) && api(`/api/objects/${id}`, undefined, "DELETE");
    removeFrom.onclick = () => api(`/api/objects/${id}?from_frame=${view.frame}`, undefined, "DELETE");
    list.appendChild(item);
  }
}

function drawJob() {
  const job = view.summary.job;
  const bar = $("progress-bar");
  if (!job) {
    bar.style.width = "0";
    $("progress-text").textContent = "";
    return;
  }
  bar.style.width = `${(100 * job.done) / Math.max(1, job.total)}%`;
  const left = job.fps > 0 ? ((job.total - job.done) / job.fps).toFixed(0) : "?";
  const error = job.error ? `: ${job.error}` : "";
  $("progress-text").textContent =
    `${job.state}${error}: ${job.done} / ${job.total} frames, ${job.fps.toFixed(2)} frames/s` + (job.state === "running" ? `, ${left} s left` : "");
  $("resume").disabled = !["interrupted", "cancelled"].includes(job.state);
}

function select(id) {
  view.object = id;
  drawObjects();
}

async function refresh() {
  view.summary = await api("/api/state");
  const summary = view.summary;
  $("video").textContent = `${summary.video} (${summary.width}x${summary.height}, ${summary.frames} frames) - project ${summary.project}`;
  $("slider").max = summary.frames - 1;
  if (view.object === null || !(String(view.object) in summary.objects)) {
    const ids = Object.keys(summary.objects).map(Number);
    view.object = ids.length ? ids[0] : null;
  }
  $("undo").disabled = !summary.undo;
  $("redo").disabled = !summary.redo;
  const formats = $("export-format");
  if (formats.options.length !== summary.export_formats.length) {
    formats.innerHTML = summary.export_formats.map((format) => `<option>${format}</option>`).join("");
  }
  $("export-where").textContent = summary.exports.length ? `in ${summary.project}/exports: ${summary.exports.join(", ")}` : "";
  drawObjects();
  drawStrip();
  drawJob();
  await showFrame(view.frame);
}

async function ensureObject() {
  if (view.object === null) {
    const { obj_id } = await api("/api/objects", {});
    view.object = obj_id;
  }
  return view.object;
}

function framePoint(event) {
  const rect = canvas.getBoundingClientRect();
  return [((event.clientX - rect.left) * canvas.width) / rect.width, ((event.clientY - rect.top) * canvas.height) / rect.height];
}

async function edit(path, body) {
  const reply = await api(path, body);
  status(`frame ${reply.frame}: objects ${reply.objects.join(", ") || "none"}`);
  await refresh();
}

canvas.addEventListener("contextmenu", (event) => event.preventDefault());
canvas.addEventListener("mousedown", (event) => {
  const [x, y] = framePoint(event);
  view.drag = { x0: x, y0: y, x1: x, y1: y, box: false, negative: event.button === 2 || event.shiftKey, screen: [event.clientX, event.clientY] };
  view.stroke = [[x, y]];
});
canvas.addEventListener("mousemove", (event) => {
  if (!view.drag) return;
  const [x, y] = framePoint(event);
  Object.assign(view.drag, { x1: x, y1: y });
  if (view.tool === "click") {
    // a drag of more than 6 screen pixels is a box (whatever the video's size on screen)
    view.drag.box = Math.hypot(event.clientX - view.drag.screen[0], event.clientY - view.drag.screen[1]) > 6;
  } else {
    view.stroke.push([x, y]);
    context.fillStyle = view.tool === "brush" ? "rgba(255,255,255,0.5)" : "rgba(0,0,0,0.5)";
    context.beginPath();
    context.arc(x, y, view.radius, 0, 2 * Math.PI);
    context.fill();
    return;
  }
  draw();
});
window.addEventListener("mouseup", async () => { // also when the drag ends outside the canvas
  const drag = view.drag;
  view.drag = null;
  if (!drag) return;
  const objectId = await ensureObject();
  const clamp = (value, high) => Math.max(0, Math.min(high, value));
  const [w, h] = [canvas.width, canvas.height];
  if (view.tool !== "click") {
    const points = view.stroke.map(([x, y]) => [clamp(x, w), clamp(y, h)]);
    await edit("/api/brush", { frame: view.frame, obj_id: objectId, points, radius: view.radius, erase: view.tool === "eraser" });
  } else if (drag.box) {
    const box = [Math.min(drag.x0, drag.x1), Math.min(drag.y0, drag.y1), Math.max(drag.x0, drag.x1), Math.max(drag.y0, drag.y1)];
    await edit("/api/box", { frame: view.frame, obj_id: objectId, box: [clamp(box[0], w), clamp(box[1], h), clamp(box[2], w), clamp(box[3], h)] });
  } else {
    await edit("/api/click", { frame: view.frame, obj_id: objectId, x: clamp(drag.x0, w), y: clamp(drag.y0, h), positive: !drag.negative });
  }
});

function track(body) {
  return api("/api/track", body).then(() => refresh());
}

function play() {
  if (view.playing) {
    clearInterval(view.playing);
    view.playing = null;
    return;
  }
  view.playing = setInterval(() => {
    if (view.frame >= view.summary.frames - 1) return play();
    showFrame(view.frame + 1);
  }, 1000 / (view.summary.fps || 24));
}

$("slider").addEventListener("input", () => showFrame(Number($("slider").value)));
$("play").onclick = play;
$("add-object").onclick = async () => select((await api("/api/objects", {})).obj_id) || refresh();
$("clear").onclick = () => view.object !== null && edit("/api/clear", { frame: view.frame, obj_id: view.object });
$("undo").onclick = () => api("/api/undo", {}).then(refresh);
$("redo").onclick = () => api("/api/redo", {}).then(refresh);
function range(direction) {
  // the range inputs: forward and both track [from, to]; backward tracks from "to" down to "from"
  const [low, high] = [$("range-start").value, $("range-end").value].map((value) => (value === "" ? null : Number(value)));
  if (direction === "backward") return { direction, start: high, end: low === null ? null : low - 1 };
  return { direction, start: low, end: high === null ? null : high + 1 };
}
$("track-forward").onclick = () => track(range("forward"));
$("track-backward").onclick = () => track(range("backward"));
$("track-both").onclick = () => track(range("both"));
$("track-here").onclick = () => track({ from_frame: view.frame });
$("resume").onclick = () => track({ resume: true });
$("cancel").onclick = () => api("/api/cancel", {});
$("export").onclick = async () => {
  const { folder } = await api("/api/export", { format: $("export-format").value });
  status(`exported to ${folder}`);
  await refresh();
};
$("radius").oninput = () => (view.radius = Number($("radius").value));
$("help-button").onclick = () => ($("help").hidden = !$("help").hidden);
for (const radio of document.querySelectorAll("input[name=tool]")) radio.onchange = () => (view.tool = radio.value);

function setTool(tool) {
  view.tool = tool;
  document.querySelector(`input[name=tool][value=${tool}]`).checked = true;
}

document.addEventListener("keydown", (event) => {
  const target = event.target;
  if (target.tagName === "SELECT" || (target.tagName === "INPUT" && ["text", "number", "color"].includes(target.type))) return;
  const key = event.key;
  const ctrl = event.ctrlKey || event.metaKey;
  const actions = {
    ArrowLeft: () => showFrame(view.frame - 1), ArrowRight: () => showFrame(view.frame + 1),
    Home: () => showFrame(0), End: () => showFrame(view.summary.frames - 1), " ": play,
    n: () => $("add-object").onclick(), b: () => setTool("brush"), e: () => setTool("eraser"), v: () => setTool("click"),
    "[": () => ($("radius").value = view.radius = Math.max(1, view.radius - 1)),
    "]": () => ($("radius").value = view.radius = Math.min(60, view.radius + 1)),
    c: () => $("clear").onclick(), f: () => $("track-forward").onclick(), B: () => $("track-backward").onclick(),
    a: () => $("track-both").onclick(), t: () => $("track-here").onclick(), Escape: () => $("cancel").onclick(),
    x: () => $("export").onclick(), "?": () => $("help-button").onclick(),
  };
  if (ctrl && key.toLowerCase() === "z") {
    (event.shiftKey ? $("redo") : $("undo")).onclick();
  } else if (!ctrl && /^[1-9]$/.test(key) && key in view.summary.objects) {
    select(Number(key));
  } else if (!ctrl && actions[key]) {
    actions[key]();
  } else {
    return;
  }
  event.preventDefault();
});

function listen() {
  const events = new EventSource("/api/events");
  let pending = null;
  events.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type === "frame") {
      view.summary.frame_versions[event.frame] = (view.summary.frame_versions[event.frame] || 0) + 1;
      view.summary.tracked = view.summary.tracked.slice(0, event.frame) + "t" + view.summary.tracked.slice(event.frame + 1);
      Object.assign(view.summary.job || {}, { done: event.done, total: event.total, fps: event.fps });
      drawJob();
      drawStrip();
      if (event.frame === view.frame) showFrame(view.frame);
    } else if (!pending) {
      pending = setTimeout(() => { pending = null; refresh(); }, 50);
    }
  };
}

// for tests and scripts: what the page shows
window.pdmtrack = {
  ready: refresh().then(listen),
  labelAt: (x, y) => view.labels[Math.floor(y) * view.summary.width + Math.floor(x)],
  labels: () => Array.from(view.labels),
  frame: () => view.labelsFrame,
  pixel: (x, y) => Array.from(context.getImageData(Math.floor(x), Math.floor(y), 1, 1).data),
  framePixel: (x, y) => {
    const scratch = document.createElement("canvas");
    scratch.width = scratch.height = 1;
    const scratchContext = scratch.getContext("2d");
    scratchContext.drawImage(view.image, -Math.floor(x), -Math.floor(y));
    return Array.from(scratchContext.getImageData(0, 0, 1, 1).data);
  },
  show: showFrame,
  view,
};
