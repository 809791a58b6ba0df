// The ProReason playground: one hand-written ES module, no build step, no dependencies.
// It posts the form to /v1/reason/upload with stream=true and reads the server-sent events from
// the streamed body (EventSource cannot POST), drawing each model call as it arrives.

const KEY_STORE = "proreason.apiKey";
const ROLE_EVENTS = new Set(["dispatch", "vision", "insight", "verdict", "answer", "fallback",
  "perception", "step"]);

const $ = (id) => document.getElementById(id);
const form = $("ask");
const chosen = []; // File objects (images)
let video = null; // one video File: a request carries images or one video, not both
let videoUrl = null; // its object URL (the preview)
let controller = null;
let lastRun = null; // {params, files, video} of the last run, for "copy as"

// ------------------------------------------------------------------ small DOM helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined || child === "") continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const seconds = (s) => `${Number(s || 0).toFixed(2)} s`;

// ------------------------------------------------------------------ images or a video: pick, drop, paste

function mediaStatus(text) { $("media-status").textContent = text; }

function addFiles(files) {
  const list = [...files];
  const clip = list.find((f) => f.type.startsWith("video/"));
  const images = list.filter((f) => f.type.startsWith("image/"));
  if (clip) {
    setVideo(clip);
    if (images.length || chosen.length) mediaStatus("A question takes images or one video: kept the video.");
    chosen.length = 0;
  } else if (images.length) {
    if (video) { setVideo(null); mediaStatus("A question takes images or one video: removed the video."); }
    chosen.push(...images);
  }
  drawThumbs();
}

function setVideo(file) {
  if (videoUrl) URL.revokeObjectURL(videoUrl);
  video = file;
  videoUrl = file ? URL.createObjectURL(file) : null;
  const box = $("video-box");
  box.hidden = !file;
  const preview = $("video-preview");
  if (file) {
    preview.src = videoUrl;
    preview.setAttribute("aria-label", `Chosen video: ${file.name}`);
    $("video-name").textContent = file.name;
    $("remove-video").setAttribute("aria-label", `Remove video (${file.name})`);
  } else {
    preview.removeAttribute("src");
    preview.load();
    $("video-name").textContent = "";
  }
}

$("remove-video").addEventListener("click", () => {
  setVideo(null);
  mediaStatus("Video removed.");
  $("files").focus();
});

function drawThumbs() {
  const list = $("thumbs");
  list.replaceChildren();
  chosen.forEach((file, i) => {
    const img = el("img", { src: URL.createObjectURL(file), alt: `image ${i + 1}: ${file.name}` });
    const remove = el("button", { type: "button", class: "secondary small",
      "aria-label": `Remove image ${i + 1} (${file.name})` }, "Remove");
    remove.addEventListener("click", () => { chosen.splice(i, 1); drawThumbs(); $("files").focus(); });
    list.append(el("li", {}, img, el("span", {}, file.name), remove));
  });
}

$("files").addEventListener("change", (e) => { addFiles(e.target.files); e.target.value = ""; });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  addFiles(e.dataTransfer.files);
});
document.addEventListener("paste", (e) => {
  const files = [...(e.clipboardData?.files || [])];
  if (files.length) { e.preventDefault(); addFiles(files); }
});

// ------------------------------------------------------------------ API key (this tab only)

const keyInput = $("api-key");
keyInput.value = sessionStorage.getItem(KEY_STORE) || "";
keyInput.addEventListener("change", () => {
  if (keyInput.value) sessionStorage.setItem(KEY_STORE, keyInput.value);
  else sessionStorage.removeItem(KEY_STORE);
});
$("forget-key").addEventListener("click", () => {
  keyInput.value = "";
  sessionStorage.removeItem(KEY_STORE);
  keyInput.focus();
});

// ------------------------------------------------------------------ the request

function readParams(pipeline) {
  const options = $("options").value.split("\n").map((s) => s.trim()).filter(Boolean);
  const method = pipeline.startsWith("proreason") ? "proreason" : pipeline;
  const params = { question: $("question").value.trim(), method };
  if (pipeline === "proreason-pure") params.mode = "pure";
  if (pipeline === "proreason-assisted") params.mode = "assisted";
  if ($("max-rounds").value) params.max_rounds = Number($("max-rounds").value);
  if (method === "proreason" && $("parallel").checked) params.parallel_perception = true;
  if (method === "proreason" && $("ocr").checked) params.ocr = true;
  if (video) {
    if ($("video-frames").value) params.video_frames = Number($("video-frames").value);
    if ($("video-sampling").value) params.video_sampling = $("video-sampling").value;
  }
  if (options.length) { params.answer_format = "multiple_choice"; params.options = options; }
  return { pipeline, params };
}

function body(params, files, clip) {
  const data = new FormData();
  for (const [k, v] of Object.entries(params)) {
    if (Array.isArray(v)) v.forEach((item) => data.append(k, item));
    else data.append(k, String(v));
  }
  data.append("stream", "true");
  data.append("trace", "true");
  files.forEach((f) => data.append("files", f, f.name));
  if (clip) data.append("video_file", clip, clip.name);
  return data;
}

function headers() {
  const h = { Accept: "text/event-stream" };
  if (keyInput.value) h.Authorization = `Bearer ${keyInput.value}`;
  return h;
}

async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: data.join("\n") };
    }
  }
}

// ------------------------------------------------------------------ one run panel

class RunPanel {
  constructor(title) {
    this.root = $("run-template").content.firstElementChild.cloneNode(true);
    this.root.querySelector(".run-title").textContent = title;
    this.status = this.root.querySelector(".status");
    this.errorBox = this.root.querySelector(".error");
    this.final = this.root.querySelector(".final");
    this.stepsList = this.root.querySelector(".steps");
    this.gantt = this.root.querySelector(".gantt");
    this.steps = [];
    this.root.dataset.state = "running";
  }

  setStatus(text) { this.status.textContent = text; }

  addStep(step, role) {
    this.steps.push(step);
    this.stepsList.append(renderStep(step, role));
    this.drawTimeline();
    this.setStatus(`Running: ${this.steps.length} model call${this.steps.length > 1 ? "s" : ""} so far`);
  }

  drawTimeline() {
    const start = Math.min(...this.steps.map((s) => s.started_at || 0));
    const end = Math.max(...this.steps.map((s) => (s.started_at || 0) + (s.latency_s || 0)));
    const span = Math.max(end - start, 1e-6);
    this.gantt.replaceChildren(...this.steps.map((s) => {
      const t0 = (s.started_at || 0) - start;
      const bar = el("span", { class: `bar role-${roleClass(s.role)}` });
      bar.style.left = `${(100 * t0) / span}%`;
      bar.style.width = `${(100 * (s.latency_s || 0)) / span}%`;
      return el("li", {},
        el("span", {}, `${s.index}. ${s.role}`),
        el("span", { class: "track", "aria-hidden": "true" }, bar),
        el("span", { class: "t" }, `${t0.toFixed(2)} + ${seconds(s.latency_s)}`));
    }));
  }

  showResult(result) {
    this.final.hidden = false;
    this.final.querySelector(".answer-text").textContent = result.answer;
    const u = result.usage || {};
    const bits = [`stop reason: ${result.stop_reason}`, `rounds: ${result.rounds}`,
      `${u.total_tokens ?? 0} tokens`, `total ${seconds(result.timings?.total_s)}`];
    if (result.answer_extracted === false) bits.push("answer not matched to an option");
    if (result.parse_failures) bits.push(`parse failures: ${result.parse_failures}`);
    this.final.querySelector(".answer-meta").textContent = bits.join(" · ");
    if (!this.steps.length && result.trace) result.trace.forEach((s) => this.addStep(s));
    this.root.dataset.state = "done";
    this.root.dataset.stopReason = result.stop_reason;
    this.setStatus(`Done in ${seconds(result.timings?.total_s)}: ${this.steps.length} model calls`);
  }

  showError(status, envelope, retryAfter) {
    const err = envelope?.error || { message: String(envelope) };
    const lines = [`${status ? `HTTP ${status} ` : ""}${err.type || "error"}${err.code ? ` (${err.code})` : ""}`,
      err.message];
    if (err.param) lines.push(`field: ${err.param}`);
    if (retryAfter) lines.push(`Retry after ${retryAfter} s.`);
    if (status === 401) lines.push("Enter a valid API key above.");
    if (err.steps?.length) lines.push(`The ${err.steps.length} model calls done before it are shown below.`);
    if (err.request_id) lines.push(`request id: ${err.request_id}`);
    this.errorBox.textContent = lines.filter(Boolean).join("\n");
    this.errorBox.hidden = false;
    if (!this.steps.length) (err.steps || []).forEach((s) => this.addStep(s));
    this.root.dataset.state = "error";
    this.root.dataset.status = String(status || "stream");
    this.setStatus("Failed.");
  }
}

function roleClass(role) {
  if (["direct", "cot", "ccot_answer", "caption_answer", "summarizer"].includes(role)) return "answer";
  if (["scene_graph", "caption"].includes(role)) return "perception";
  return role;
}

function renderStep(s, event) {
  const flags = [];
  if (s.finish_reason && s.finish_reason !== "stop") flags.push(el("span", { class: "flag" }, `finish: ${s.finish_reason}`));
  if (s.parse_error) flags.push(el("span", { class: "flag" }, "parse error"));
  if (s.error) flags.push(el("span", { class: "flag" }, "error"));
  if (s.parallel) flags.push(el("span", { class: "flag" }, "parallel"));
  const u = s.usage || {};
  const head = el("header", {},
    el("span", { class: "who" }, `${s.index}. round ${s.round} · ${s.role}`, ...flags),
    el("span", { class: "meta" },
      `${seconds(s.latency_s)} · ${u.prompt_tokens ?? 0} → ${u.completion_tokens ?? 0} tokens · ${s.model}`));
  const dl = el("dl");
  const row = (k, v) => { if (v !== undefined && v !== null && v !== "") dl.append(el("dt", {}, k), el("dd", {}, v)); };
  const d = s.decision || {};
  let raw = true;
  if (s.role === "dispatcher" && s.decision) {
    row("Thought", d.thought);
    row("Expert", d.expert);
    row("Sub-question", d.question || (d.questions || []).join("\n") || s.sub_question);
  } else if (s.role === "referee" && s.decision) {
    const solvable = d.solvable ?? d.verdict;
    row("Verdict", solvable === true ? "solvable: yes, enough evidence" : solvable === false ? "solvable: no, keep going" : String(solvable));
    row("Why", d.reasoning || d.reason);
  } else {
    row("Sub-question", s.sub_question);
    row(event === "answer" || roleClass(s.role) === "answer" ? "Answer" : "Output", s.output);
    raw = false;
  }
  row("Parse error", s.parse_error);
  row("Error", s.error);
  const li = el("li", { class: `step role-${roleClass(s.role)}`, "data-role": s.role }, head, dl);
  if (raw && s.output) li.append(el("details", {}, el("summary", {}, "Raw output"), el("pre", {}, s.output)));
  if (s.memory_entry) li.append(el("details", {}, el("summary", {}, "Memory entry"), el("pre", {}, s.memory_entry)));
  return li;
}

async function runOne(panel, params, files, clip, signal) {
  let response;
  try {
    response = await fetch("v1/reason/upload", {
      method: "POST", headers: headers(), body: body(params, files, clip), signal,
    });
  } catch (err) {
    panel.showError(0, { error: { type: "network_error", message: String(err.message || err) } });
    return;
  }
  if (!response.ok) {
    let envelope;
    try { envelope = await response.json(); } catch { envelope = { error: { message: response.statusText } }; }
    panel.showError(response.status, envelope, response.headers.get("Retry-After"));
    return;
  }
  try {
    for await (const { event, data } of sseEvents(response)) {
      if (event === "done") break;
      const payload = JSON.parse(data);
      if (event === "result") panel.showResult(payload);
      else if (event === "error") panel.showError(null, payload);
      else if (ROLE_EVENTS.has(event) || payload.role) panel.addStep(payload, event);
    }
  } catch (err) {
    if (err.name === "AbortError") panel.setStatus("Stopped.");
    else panel.showError(0, { error: { type: "stream_error", message: String(err.message || err) } });
  }
}

async function start(pipelines) {
  if (!form.reportValidity()) return;
  controller?.abort();
  controller = new AbortController();
  const runs = $("runs");
  runs.replaceChildren();
  const files = [...chosen];
  const clip = video;
  const jobs = pipelines.map((p) => {
    const { pipeline, params } = readParams(p);
    const panel = new RunPanel(pipelines.length > 1 ? `${pipeline}` : `Run: ${pipeline}`);
    panel.root.dataset.pipeline = pipeline;
    runs.append(panel.root);
    panel.setStatus("Waiting for the server...");
    lastRun = { pipeline, params, files, video: clip };
    return runOne(panel, params, files, clip, controller.signal);
  });
  showSnippet("curl");
  $("stop").disabled = false;
  $("run").disabled = $("compare").disabled = true;
  try { await Promise.all(jobs); } finally {
    $("stop").disabled = true;
    $("run").disabled = $("compare").disabled = false;
  }
}

form.addEventListener("submit", (e) => { e.preventDefault(); start([$("pipeline").value]); });
$("compare").addEventListener("click", () => {
  const p = $("pipeline").value;
  start(["direct", p.startsWith("proreason") ? p : "proreason"]);
});
$("stop").addEventListener("click", () => controller?.abort());
$("question").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
});

// ------------------------------------------------------------------ copy as curl / Python

const shellQuote = (s) => `'${String(s).replace(/'/g, "'\\''")}'`;
const pyStr = (s) => JSON.stringify(String(s));
const api = () => new URL(".", location.href).href.replace(/\/$/, "");

function curlSnippet({ params, files, video: clip }) {
  const lines = [`curl -N ${shellQuote(`${api()}/v1/reason/upload`)}`];
  if (keyInput.value) lines.push(`-H "Authorization: Bearer $PROREASON_API_KEY"`);
  for (const [k, v] of Object.entries(params)) {
    for (const item of Array.isArray(v) ? v : [v]) lines.push(`-F ${shellQuote(`${k}=${item}`)}`);
  }
  lines.push("-F stream=true", "-F trace=true");
  files.forEach((f) => lines.push(`-F ${shellQuote(`files=@${f.name}`)}`));
  if (clip) lines.push(`-F ${shellQuote(`video_file=@${clip.name}`)}`);
  return lines.join(" \\\n  ");
}

function pythonSnippet({ pipeline, params, files, video: clip }) {
  let model = pipeline.startsWith("proreason") ? pipeline : `proreason-${pipeline}`;
  const notes = [];
  if (params.parallel_perception) {
    if (pipeline === "proreason") model = "proreason-parallel";
    else notes.push("# parallel perception with this mode: only through /v1/reason");
  }
  const extra = ["\"trace\": True"];
  if (params.max_rounds) extra.push(`"max_rounds": ${params.max_rounds}`);
  if (params.ocr) extra.push(`"ocr": True`);
  if (params.video_frames) extra.push(`"video_frames": ${params.video_frames}`);
  if (params.video_sampling) extra.push(`"video_sampling": ${pyStr(params.video_sampling)}`);
  if (params.options) {
    extra.push(`"answer_format": "multiple_choice"`, `"options": [${params.options.map(pyStr).join(", ")}]`);
  }
  const parts = [`            {"type": "text", "text": ${pyStr(params.question)}},`];
  files.forEach((f) => parts.push(
    `            {"type": "image_url", "image_url": {"url": data_url(${pyStr(f.name)}, ${pyStr(f.type || "image/png")})}},`));
  if (clip) parts.push(
    `            {"type": "video_url", "video_url": {"url": data_url(${pyStr(clip.name)}, ${pyStr(clip.type || "video/mp4")})}},`);
  return [
    "import base64",
    "import os",
    "",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${pyStr(`${api()}/v1`)}, api_key=os.environ.get("PROREASON_API_KEY", "none"))`,
    "",
    "",
    "def data_url(path, mime):",
    "    with open(path, \"rb\") as f:",
    "        return f\"data:{mime};base64,\" + base64.b64encode(f.read()).decode()",
    "",
    "",
    ...notes,
    "response = client.chat.completions.create(",
    `    model=${pyStr(model)},`,
    "    messages=[{",
    "        \"role\": \"user\",",
    "        \"content\": [",
    ...parts,
    "        ],",
    "    }],",
    `    extra_body={"proreason": {${extra.join(", ")}}},`,
    ")",
    "print(response.choices[0].message.content)",
    "for step in response.model_extra[\"proreason\"][\"steps\"]:",
    "    print(step[\"role\"], step[\"latency_s\"], step[\"output\"][:80])",
  ].join("\n");
}

function showSnippet(kind) {
  if (!lastRun) return "";
  const text = kind === "curl" ? curlSnippet(lastRun) : pythonSnippet(lastRun);
  $("copy").hidden = false;
  $("snippet").firstElementChild.textContent = text;
  $("snippet").dataset.kind = kind;
  return text;
}

async function copy(kind) {
  const text = showSnippet(kind);
  const label = kind === "curl" ? "curl command" : "Python snippet";
  try {
    await navigator.clipboard.writeText(text);
    $("copy-status").textContent = `Copied the ${label}.`;
  } catch {
    $("copy-status").textContent = `The ${label} is shown below: select it to copy.`;
  }
}

$("copy-curl").addEventListener("click", () => copy("curl"));
$("copy-python").addEventListener("click", () => copy("python"));
