// The page talks to the same /v1 endpoints as any client: POST v1/convert/
// (multipart), then POST v1/results/ with the uuid until "finished".
"use strict";

const KEY_STORE = "bgrm.apiKey";
const POLL_MS = 800;
// Formats whose output is shown with <img>; <video> for those a browser plays.
const IMAGE_EXT = ["png", "webp", "jpg", "jpeg", "gif"];
const VIDEO_EXT = ["mp4", "webm"];
// Video formats that composite over an uploaded picture, a video or a colour.
const OVER_PICTURE = ["video_over_image", "gif_with_bg"];

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

function kind() {
  return $("input[name=kind]:checked").value;
}

function extension(name) {
  const dot = name.lastIndexOf(".");
  return dot < 0 ? "" : name.slice(dot + 1).toLowerCase();
}

function stem(name) {
  const dot = name.lastIndexOf(".");
  return dot <= 0 ? name : name.slice(0, dot);
}

// Show the options that apply to the chosen kind, background and format.
function syncForm() {
  const k = kind();
  $$("[data-for]").forEach((el) => { el.hidden = el.dataset.for !== k; });
  const files = $("#files");
  files.accept = k === "image" ? "image/*" : "video/*";
  files.multiple = true;
  const bgType = $("input[name=bg_type]:checked").value;
  const fmt = $("#video_format").value;
  const show = {
    color: k === "image" && bgType === "color",
    picture: (k === "image" && bgType === "image") || (k === "video" && OVER_PICTURE.includes(fmt)),
    video_color: k === "video" && fmt === "mp4_with_color",
    bgvideo: k === "video" && fmt === "video_over_video",
  };
  $$("[data-bg]").forEach((el) => { el.hidden = !show[el.dataset.bg]; });
  $("#only_mask").disabled = bgType !== "transparent";
  showChosen();
}

function showChosen() {
  const names = Array.from($("#files").files).map((f) => f.name);
  $("#chosen").textContent = names.length
    ? names.join(", ")
    : "or drop files here";
}

function formError(text) {
  const el = $("#form-error");
  el.textContent = text || "";
  el.hidden = !text;
}

// The request's fields, by their API names; only what differs from the
// server's defaults is sent, so the server's own defaults stay in charge.
function buildRequest() {
  const k = kind();
  const files = Array.from($("#files").files);
  if (!files.length) throw new Error(k === "image" ? "Choose one or more images first." : "Choose a video first.");
  const data = new FormData();
  data.append("convert_to", k === "image" ? "image-backgroundremover" : "video-backgroundremover");
  if ($("#model").value) data.append("model", $("#model").value);
  if ($("#alpha_matting").checked) data.append("alpha_matting", "true");
  const picture = $("#bg_image").files[0];
  if (k === "image") {
    const bgType = $("input[name=bg_type]:checked").value;
    data.append("bg_type", bgType);
    if (bgType === "color") data.append("bg_color_value", $("#bg_color_value").value);
    if (bgType === "image") {
      if (!picture) throw new Error("Choose a background picture, or another background.");
      data.append("bg_image", picture, picture.name);
    }
    if (bgType === "transparent" && $("#only_mask").checked) data.append("only_mask", "true");
  } else {
    const fmt = $("#video_format").value;
    data.append("video_format", fmt);
    if (fmt === "mp4_with_color") data.append("video_bg_color", $("#video_bg_color").value);
    if (OVER_PICTURE.includes(fmt)) {
      if (!picture) throw new Error("Choose a background picture for " + fmt + ".");
      data.append("bg_image", picture, picture.name);
    }
    if (fmt === "video_over_video") {
      const clip = $("#bg_video").files[0];
      if (!clip) throw new Error("Choose a background video for video_over_video.");
      data.append("bg_video", clip, clip.name);
    }
    const limit = $("#frame_limit").value.trim();
    if (limit) data.append("frame_limit", limit);
  }
  files.forEach((f) => data.append("files", f, f.name));
  return { kind: k, files, data };
}

// XMLHttpRequest rather than fetch: it reports upload progress, which matters
// for a large video.
function upload(data, key, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "v1/convert/");
    if (key) xhr.setRequestHeader("Authorization", key);
    xhr.responseType = "text";
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => resolve({ status: xhr.status, body: parseJson(xhr.responseText) });
    xhr.onerror = () => reject(new Error("Could not reach the server."));
    xhr.send(data);
  });
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch (e) {
    return { error: text ? text.slice(0, 300) : "empty answer" };
  }
}

async function results(uuid) {
  const body = new FormData();
  body.append("uuid", uuid);
  const r = await fetch("v1/results/", { method: "POST", body });
  return { status: r.status, body: parseJson(await r.text()) };
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// One submitted request on screen: a title, a status line, a progress bar and
// one row per input (input | result).
class JobView {
  constructor(req) {
    this.root = $("#job-template").content.firstElementChild.cloneNode(true);
    this.total = req.files.length;
    this.shownFiles = 0;
    this.shownFailed = 0;
    const what = req.kind === "image" ? (this.total === 1 ? "image" : "images") : (this.total === 1 ? "video" : "videos");
    $(".job-title", this.root).textContent = this.total + " " + what + ", " + new Date().toLocaleTimeString();
    this.pairs = req.files.map((f) => this.addPair(f));
    $("#empty").hidden = true;
    $("#jobs").prepend(this.root);
  }

  addPair(file) {
    const li = $("#pair-template").content.firstElementChild.cloneNode(true);
    const name = file ? file.name : "";
    const frame = $(".input .frame", li);
    if (file) frame.append(preview(URL.createObjectURL(file), file.type.startsWith("video/") ? "mp4" : "png", name));
    $(".input figcaption", li).append(span("name", name));
    $(".output figcaption", li).append(span("name", ""));
    $(".pairs", this.root).append(li);
    return { li, name, done: false };
  }

  // Rows still waiting get ``text`` in place of "Working…".
  settle(text) {
    this.pairs.filter((p) => !p.done).forEach((p) => {
      $(".output .frame", p.li).replaceChildren(span("nopreview", text));
    });
  }

  status(text, fraction) {
    $(".job-status", this.root).textContent = text;
    if (fraction !== undefined) $(".job-progress", this.root).value = Math.max(0, Math.min(1, fraction));
  }

  // A job-wide failure; ``hint`` (optional) says what the person can do.
  error(text, hint) {
    const el = $(".job-error", this.root);
    el.replaceChildren(text);
    if (hint) el.append(document.createElement("br"), span("hint", hint));
    el.hidden = false;
    this.root.classList.add("failed");
    this.root.dataset.state = "stopped";
  }

  // The pair of the input this output or failure belongs to: its name is the
  // input's, or the input's stem + "_processed"; else the first pair left.
  pairFor(filename, isOutput) {
    const free = this.pairs.filter((p) => !p.done);
    const match = free.find((p) => (isOutput ? filename.startsWith(stem(p.name) + "_processed") : filename === p.name))
      || free.find((p) => stem(filename).startsWith(stem(p.name)))
      || free[0];
    return match || this.addPair(null);
  }

  showFile(entry) {
    const pair = this.pairFor(entry.filename, true);
    pair.done = true;
    const frame = $(".output .frame", pair.li);
    frame.replaceChildren(preview(entry.url, extension(entry.filename), entry.filename));
    const cap = $(".output figcaption", pair.li);
    const link = document.createElement("a");
    link.className = "download";
    link.href = entry.url;
    link.download = entry.filename;
    link.textContent = "Download";
    link.setAttribute("aria-label", "Download " + entry.filename);
    cap.replaceChildren(span("name", entry.filename), link);
  }

  showFailure(entry) {
    const name = entry.filename || "";
    const pair = this.pairFor(name, false);
    pair.done = true;
    pair.li.classList.add("bad");
    const reason = span("reason", entry.error || "failed");
    reason.setAttribute("role", "alert");
    $(".output .frame", pair.li).classList.remove("checker");
    $(".output .frame", pair.li).replaceChildren(reason);
    $(".output figcaption", pair.li).replaceChildren(span("name", "Failed: " + name));
  }

  render(data) {
    const files = data.files || [];
    files.slice(this.shownFiles).forEach((f) => this.showFile(f));
    this.shownFiles = files.length;
    const failed = (data.failed || []).map((f) => (typeof f === "string" ? { filename: f } : f));
    const errors = data.errors || [];
    failed.slice(this.shownFailed).forEach((f, i) => {
      if (!f.error) f.error = errors[this.shownFailed + i];
      this.showFailure(f);
    });
    this.shownFailed = failed.length;
    const done = this.shownFiles + this.shownFailed;
    const frac = progressOf(done, this.total);
    const frames = data.progress && Number(data.progress.frames);
    if (data.finished) {
      const orphans = errors.slice(this.shownFailed);
      if (orphans.length) this.error(orphans.join("\n"));
      this.root.classList.add(this.shownFailed || orphans.length ? "failed" : "done");
      this.root.dataset.state = "finished";
      this.status(summary(this.shownFiles, this.shownFailed), 1);
    } else if (Number(data.queue_count) > 0) {
      this.status("Waiting: " + data.queue_count + " " + plural(Number(data.queue_count), "file") + " ahead", frac);
    } else {
      this.status("Working: " + done + " of " + this.total + " done" + (frames ? ", " + frames + " frames made" : ""), frac);
    }
  }
}

// The fraction of files finished; a video's frames count only in the text.
function progressOf(done, total) {
  return total ? done / total : 0;
}

function percent(frac) {
  return frac > 0 && frac < 1 ? " (" + Math.round(frac * 100) + "%)" : "";
}

function plural(n, word) {
  return n === 1 ? word : word + "s";
}

function summary(ok, bad) {
  if (!bad) return "Done: " + ok + " " + plural(ok, "file");
  return "Finished: " + ok + " done, " + bad + " failed";
}

function span(cls, text) {
  const el = document.createElement("span");
  el.className = cls;
  el.textContent = text;
  return el;
}

function preview(url, ext, name) {
  if (IMAGE_EXT.includes(ext)) {
    const img = document.createElement("img");
    img.src = url;
    img.alt = name;
    img.onerror = () => img.replaceWith(span("nopreview", "No preview for " + name));
    return img;
  }
  if (VIDEO_EXT.includes(ext)) {
    const v = document.createElement("video");
    Object.assign(v, { src: url, controls: true, muted: true, loop: true, playsInline: true });
    v.setAttribute("aria-label", name);
    return v;
  }
  // ProRes .mov and folders have no in-browser preview.
  return span("nopreview", "No preview for ." + ext + " in a browser: download it.");
}

async function submit(event) {
  event.preventDefault();
  formError("");
  let req;
  try {
    req = buildRequest();
  } catch (e) {
    formError(e.message);
    return;
  }
  const key = $("#api_key").value.trim();
  const button = $("#send");
  const view = new JobView(req);
  button.disabled = true;
  view.status("Uploading…", 0);
  let answer;
  try {
    answer = await upload(req.data, key, (f) => view.status("Uploading" + percent(f), f));
  } catch (e) {
    view.error(e.message);
    view.settle("Not sent");
    view.status("Not sent", 0);
    return;
  } finally {
    button.disabled = false;
  }
  if (answer.status !== 200 || answer.body.error || !answer.body.uuid) {
    const text = answer.body.error || "The server answered " + answer.status + ".";
    const keyed = answer.status === 401 || answer.status === 403;
    if (keyed) $("#key-box").open = true;
    view.error(text, keyed ? "Enter the server's key under “API key”, then send again." : "");
    view.settle("Not sent");
    view.status("Refused", 0);
    return;
  }
  await follow(view, answer.body.uuid);
}

async function follow(view, uuid) {
  view.uuid = uuid;
  view.root.dataset.uuid = uuid;
  view.status("Queued", 0);
  let misses = 0;
  for (;;) {
    let r;
    try {
      r = await results(uuid);
      misses = 0;
    } catch (e) {
      // A restarting server comes back with the job: keep asking for a while.
      if (++misses > 30) {
        view.error("Lost the server while waiting: " + e.message);
        view.settle("No answer");
        return;
      }
      await sleep(POLL_MS * 2);
      continue;
    }
    if (r.status !== 200 || r.body.error) {
      view.error(r.body.error || "The server answered " + r.status + ".");
      view.settle("No result");
      view.status("Stopped", 1);
      return;
    }
    view.render(r.body);
    if (r.body.finished) return;
    await sleep(POLL_MS);
  }
}

function init() {
  const keyInput = $("#api_key");
  try {
    keyInput.value = localStorage.getItem(KEY_STORE) || "";
  } catch (e) {
    // Storage blocked (private mode): the key then lasts for this page only.
  }
  if (keyInput.value) $("#key-box").open = true;
  keyInput.addEventListener("change", () => {
    try {
      if (keyInput.value.trim()) localStorage.setItem(KEY_STORE, keyInput.value.trim());
      else localStorage.removeItem(KEY_STORE);
    } catch (e) { /* see above */ }
  });
  $$("input[name=kind], input[name=bg_type]").forEach((el) => el.addEventListener("change", syncForm));
  $("#video_format").addEventListener("change", syncForm);
  $("#files").addEventListener("change", showChosen);
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const dropped = Array.from(e.dataTransfer.files);
    if (!dropped.length) return;
    if (dropped[0].type.startsWith("video/") !== (kind() === "video")) {
      $("input[name=kind][value=" + (kind() === "video" ? "image" : "video") + "]").checked = true;
    }
    $("#files").files = e.dataTransfer.files;
    syncForm();
  });
  $("#convert").addEventListener("submit", submit);
  syncForm();
}

init();
