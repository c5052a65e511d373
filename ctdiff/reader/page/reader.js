// The reader study page. Opens from the file system: no server, no network. study.js (window.CTDIFF_STUDY)
// names the study, the volume shape, the windows and the case ids in reading order; each case is a script,
// cases/<id>.js, that calls ctdiffCase(id, base64). Its payload: uint32 length, a zlib stream of the windows'
// uint8 volumes V[k][r][c] (k superior->inferior, r anterior->posterior, c patient's right->left), then
// padding. Answers live in localStorage under the study id and the reader's name, saved on every change.
// The browser writes localStorage to disk lazily (Chromium a few seconds later): a closed tab or a normal quit
// keeps everything, but a browser that is killed or crashes can lose the last seconds of answers. A download is
// the one copy the browser does not hold, so the page asks for one every EXPORT_EVERY answers.
"use strict";

const STUDY = window.CTDIFF_STUDY;
const PREFIX = "ctdiff-reader:" + (STUDY ? STUDY.study : "none") + ":";
const PLANES = ["axial", "coronal", "sagittal"];
const EXPORT_EVERY = 10;   // answers between reminders to download them
const $ = (sel) => document.querySelector(sel);

// ---- storage -------------------------------------------------------------------------------------------
const store = (() => {
  try {
    const probe = PREFIX + "probe";
    window.localStorage.setItem(probe, "1");
    window.localStorage.removeItem(probe);
    return window.localStorage;
  } catch (err) {
    return null; // private mode or disabled storage: answers are kept only while the tab is open
  }
})();
const memory = {};
function load(key, fallback) {
  const text = store ? store.getItem(PREFIX + key) : memory[key];
  if (text == null) return fallback;
  try { return JSON.parse(text); } catch (err) { return fallback; }
}
function save(key, value) {
  const text = JSON.stringify(value);
  if (store) store.setItem(PREFIX + key, text); else memory[key] = text;
}

// ---- state ---------------------------------------------------------------------------------------------
let reader = load("reader", "");
let state = null;          // {position, answers: {caseId: {answer, confidence, comment, seconds}}, exported,
                           //  exportedCount: answers given at that download}
let windowIndex = 0;
let active = 0;            // the view the keys scroll
let slices = [0, 0, 0];
let current = null;        // {id, windows: [Uint8Array, ...]} of the shown case
let shownSince = null;     // performance.now() when the shown case became visible
const cache = new Map();   // case id -> Promise of decoded windows
const pending = new Map(); // case id -> resolve of its script

function readerState(name) {
  const s = load("answers:" + name, null);
  return s && typeof s === "object" && s.answers ? s : {position: 0, answers: {}, exported: null};
}
function persist() { save("answers:" + reader, state); }
function answerOf(id) {
  if (!state.answers[id]) state.answers[id] = {answer: null, confidence: null, comment: "", seconds: 0};
  return state.answers[id];
}
function complete(a) { return !!(a && a.answer && a.confidence); }
// The reminder shown once EXPORT_EVERY answers were given since the last download ("" if none is due).
function exportReminder(done, total, doneAtExport) {
  const since = done - (doneAtExport || 0);
  if (done === total || since < EXPORT_EVERY) return "";
  return since + " answers since your last download: please download your answers now and keep the file " +
    "(a browser crash can lose the last few seconds of answers; a download cannot be lost).";
}
function answeredCount() { return STUDY.cases.filter((id) => complete(state.answers[id])).length; }

// ---- loading cases -------------------------------------------------------------------------------------
window.ctdiffCase = function (id, b64) {
  const resolve = pending.get(id);
  if (resolve) { pending.delete(id); resolve(b64); }
};
async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}
function fetchCase(id) {
  if (cache.has(id)) return cache.get(id);
  const promise = new Promise((resolve, reject) => {
    pending.set(id, resolve);
    const script = document.createElement("script");
    script.src = "cases/" + id + ".js";
    script.onerror = () => reject(new Error("cases/" + id + ".js could not be read"));
    script.onload = () => script.remove();
    document.head.appendChild(script);
  }).then(async (b64) => {
    const payload = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
    const n = new DataView(payload.buffer).getUint32(0, true);
    const raw = await inflate(payload.subarray(4, 4 + n));
    const size = STUDY.shape[0] * STUDY.shape[1] * STUDY.shape[2];
    return STUDY.windows.map((w, i) => raw.subarray(i * size, (i + 1) * size));
  });
  cache.set(id, promise);
  promise.catch(() => cache.delete(id));
  for (const key of cache.keys()) { // keep the shown case and its neighbours
    const k = STUDY.cases.indexOf(key);
    if (Math.abs(k - state.position) > 1 && key !== id) cache.delete(key);
  }
  return promise;
}

// ---- drawing -------------------------------------------------------------------------------------------
const views = Array.from(document.querySelectorAll(".view"));
function planeSize(p) {
  const [nz, ny, nx] = STUDY.shape;
  return [[nx, ny, nz], [nx, nz, ny], [ny, nz, nx]][p]; // [width, height, slices]
}
function draw(p) {
  if (!current) return;
  const [nz, ny, nx] = STUDY.shape;
  const [w, h, n] = planeSize(p);
  const v = current.windows[windowIndex];
  const i = slices[p];
  const canvas = views[p].querySelector("canvas");
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  const px = img.data;
  for (let row = 0; row < h; row++) {
    for (let col = 0; col < w; col++) {
      let g;
      if (p === 0) g = v[(i * ny + row) * nx + col];
      else if (p === 1) g = v[(row * ny + i) * nx + col];
      else g = v[(row * ny + col) * nx + i];
      const o = 4 * (row * w + col);
      px[o] = px[o + 1] = px[o + 2] = g;
      px[o + 3] = 255;
    }
  }
  ctx.putImageData(img, 0, 0);
  views[p].querySelector(".slice").textContent = (i + 1) + " / " + n;
  views[p].querySelector(".slider").value = i + 1;
}
// Sizes: the axial frame as large as the viewer allows, the two others half of it (less one caption) beside it.
function layout() {
  const box = $("#views").getBoundingClientRect();
  const view = views[0];
  const caption = view.querySelector("figcaption").offsetHeight + view.querySelector(".slider").offsetHeight + 26;
  const gap = 10;
  const height = window.innerHeight - box.top - 16;
  const big = Math.floor(Math.max(160, Math.min(height - caption, (box.width - gap - caption / 2) * 2 / 3)));
  const small = Math.floor((big - caption - gap) / 2);
  $("#views").style.setProperty("--big", big + "px");
  $("#views").style.setProperty("--small", small + "px");
}
window.addEventListener("resize", () => { if (!$("#reading").hidden) layout(); });

function drawAll() { for (let p = 0; p < 3; p++) draw(p); }
function setSlice(p, i) {
  const n = planeSize(p)[2];
  slices[p] = Math.max(0, Math.min(n - 1, i));
  draw(p);
}
function setActive(p) {
  active = p;
  views.forEach((v, k) => v.classList.toggle("active", k === p));
}
function setWindow(k) {
  windowIndex = k;
  document.querySelectorAll("button.window").forEach((b) => b.classList.toggle("selected", +b.dataset.window === k));
  drawAll();
}

// ---- time on a case ------------------------------------------------------------------------------------
function stopClock() {
  if (shownSince !== null && current) {
    answerOf(current.id).seconds += (performance.now() - shownSince) / 1000;
    persist();
  }
  shownSince = null;
}
function startClock() { if (current && !document.hidden) shownSince = performance.now(); }
document.addEventListener("visibilitychange", () => (document.hidden ? stopClock() : startClock()));
window.addEventListener("pagehide", stopClock);

// ---- showing a case ------------------------------------------------------------------------------------
async function show(position) {
  stopClock();
  position = Math.max(0, Math.min(STUDY.cases.length - 1, position));
  state.position = position;
  persist();
  const id = STUDY.cases[position];
  renderPanel();
  $("#loading").hidden = false;
  let windows;
  try {
    windows = await fetchCase(id);
  } catch (err) {
    $("#loading").textContent = "This case could not be opened: " + err.message;
    return;
  }
  if (STUDY.cases[state.position] !== id) return; // another case was asked for meanwhile
  $("#loading").hidden = true;
  current = {id, windows};
  slices = [0, 1, 2].map((p) => Math.floor(planeSize(p)[2] / 2));
  drawAll();
  startClock();
  if (position + 1 < STUDY.cases.length) fetchCase(STUDY.cases[position + 1]).catch(() => {});
}

function renderPanel() {
  const n = STUDY.cases.length;
  const id = STUDY.cases[state.position];
  const a = answerOf(id);
  $("#case-title").textContent = "Case " + (state.position + 1) + " of " + n;
  document.querySelectorAll("#answer button").forEach(
    (b) => b.classList.toggle("selected", b.dataset.answer === a.answer));
  document.querySelectorAll("#confidence button").forEach(
    (b) => b.classList.toggle("selected", +b.dataset.confidence === a.confidence));
  if (document.activeElement !== $("#comment")) $("#comment").value = a.comment || "";
  $("#prev").disabled = state.position === 0;
  const done = answeredCount();
  $("#progress-text").textContent = done + " of " + n + " answered";
  $("#progress-fill").style.width = (100 * done / n) + "%";
  $("#reader-label").textContent = "Reader: " + reader;
  const list = $("#case-list");
  if (list.children.length !== n) {
    list.textContent = "";
    STUDY.cases.forEach((cid, k) => {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = k + 1;
      b.addEventListener("click", () => show(k));
      list.appendChild(b);
    });
  }
  Array.from(list.children).forEach((b, k) => {
    const ans = state.answers[STUDY.cases[k]];
    b.classList.toggle("answered", complete(ans));
    b.classList.toggle("current", k === state.position);
    b.title = complete(ans) ? "answered" : "not answered yet";
  });
  let status = "";
  if (a.answer && !a.confidence) status = "Now choose your confidence (1–5).";
  else if (!a.answer && a.confidence) status = "Now choose real or synthetic.";
  else if (done === n) status = "All cases answered: please download your answers and send the file.";
  const reminder = exportReminder(done, n, state.exportedCount);
  if (!status) status = reminder;
  $("#status").textContent = status;
  $("#export").classList.toggle("remind", !!reminder);
  const note = state.exported ? "Last downloaded " + new Date(state.exported).toLocaleString() + "." : "";
  $("#export-note").textContent = note + (done < n ? " " + (n - done) + " case(s) still unanswered." : "");
}

function setAnswer(field, value) {
  const a = answerOf(STUDY.cases[state.position]);
  a[field] = value;
  persist();
  renderPanel();
}
function next() {
  if (state.position + 1 < STUDY.cases.length) { show(state.position + 1); return; }
  const open = STUDY.cases.findIndex((id) => !complete(state.answers[id]));
  if (open >= 0) show(open); else renderPanel();
}

// ---- export --------------------------------------------------------------------------------------------
function exportRows() {
  return STUDY.cases.map((id, k) => {
    const a = state.answers[id] || {};
    return {case: id, position: k + 1, answer: a.answer || null, confidence: a.confidence || null,
            comment: a.comment || "", seconds: Math.round(10 * (a.seconds || 0)) / 10};
  });
}
function csvField(v) {
  const s = v == null ? "" : String(v);
  return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}
function download(text, type, ext) {
  const slug = reader.normalize("NFKD").replace(/[^\w-]+/g, "-").replace(/^-+|-+$/g, "") || "reader";
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], {type}));
  a.download = "answers-" + STUDY.study + "-" + slug + "." + ext;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  state.exported = new Date().toISOString();
  state.exportedCount = answeredCount();
  persist();
  renderPanel();
}
function exportJSON() {
  stopClock(); startClock();
  const doc = {format: "ctdiff-reader-answers", version: 1, study: STUDY.study, reader,
               exported: new Date().toISOString(), answers: exportRows()};
  download(JSON.stringify(doc, null, 1) + "\n", "application/json", "json");
}
function exportCSV() {
  stopClock(); startClock();
  const exported = new Date().toISOString();
  const head = ["study", "reader", "case", "position", "answer", "confidence", "comment", "seconds", "exported"];
  const lines = [head.join(",")].concat(exportRows().map((r) =>
    [STUDY.study, reader, r.case, r.position, r.answer, r.confidence, r.comment, r.seconds, exported]
      .map(csvField).join(",")));
  download(lines.join("\r\n") + "\r\n", "text/csv", "csv");
}

// ---- input ---------------------------------------------------------------------------------------------
function typing(target) {
  return target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT") && target.type !== "range";
}

views.forEach((view, p) => {
  view.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    setActive(p);
    setSlice(p, slices[p] + (ev.deltaY > 0 ? 1 : ev.deltaY < 0 ? -1 : 0));
  }, {passive: false});
  view.addEventListener("mousedown", () => setActive(p));
  view.addEventListener("mouseenter", () => setActive(p));
  view.querySelector(".slider").addEventListener("input", (ev) => { setActive(p); setSlice(p, +ev.target.value - 1); });
});

document.addEventListener("keydown", (ev) => {
  if ($("#reading").hidden || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (typing(ev.target)) { if (ev.key === "Escape") ev.target.blur(); return; }
  const k = ev.key;
  const step = {ArrowUp: -1, ArrowDown: 1, PageUp: -10, PageDown: 10}[k];
  if (step !== undefined) { setSlice(active, slices[active] + step); }
  else if (k === "Home") setSlice(active, 0);
  else if (k === "End") setSlice(active, planeSize(active)[2] - 1);
  else if (k === "v" || k === "V") setActive((active + 1) % 3);
  else if (k === "w" || k === "W") setWindow((windowIndex + 1) % STUDY.windows.length);
  else if (k === "l" || k === "L") setWindow(0);
  else if (k === "m" || k === "M") setWindow(1);
  else if (k === "r" || k === "R") setAnswer("answer", "real");
  else if (k === "s" || k === "S") setAnswer("answer", "synthetic");
  else if (k >= "1" && k <= "5") setAnswer("confidence", +k);
  else if (k === "n" || k === "N" || k === "ArrowRight") next();
  else if (k === "p" || k === "P" || k === "ArrowLeft") show(state.position - 1);
  else return;
  ev.preventDefault();
});

document.querySelectorAll("#answer button").forEach(
  (b) => b.addEventListener("click", () => setAnswer("answer", b.dataset.answer)));
document.querySelectorAll("#confidence button").forEach(
  (b) => b.addEventListener("click", () => setAnswer("confidence", +b.dataset.confidence)));
$("#comment").addEventListener("input", (ev) => {
  answerOf(STUDY.cases[state.position]).comment = ev.target.value;
  persist();
});
$("#prev").addEventListener("click", () => show(state.position - 1));
$("#next").addEventListener("click", next);
$("#export-json").addEventListener("click", exportJSON);
$("#export-csv").addEventListener("click", exportCSV);
$("#change-reader").addEventListener("click", () => { stopClock(); startScreen(); });
document.querySelectorAll("button.window").forEach((b) => {
  const w = STUDY.windows[+b.dataset.window];
  b.textContent = w.label + " (W " + w.width + " / L " + w.level + ")";
  b.addEventListener("click", () => setWindow(+b.dataset.window));
});

// ---- start ---------------------------------------------------------------------------------------------
function startScreen() {
  $("#reading").hidden = true;
  $("#start").hidden = false;
  $("#reader-box").hidden = true;
  $("#progress").hidden = true;
  $("#study-size").textContent = "Study " + STUDY.study + ": " + STUDY.cases.length + " cases.";
  $("#reader-name").value = reader;
  $("#resume-note").textContent = reader ? "Answers are kept per name: enter the same name to continue." : "";
  $("#reader-name").focus();
}
function startReading(name) {
  reader = name;
  save("reader", reader);
  state = readerState(reader);
  $("#start").hidden = true;
  $("#reading").hidden = false;
  $("#reader-box").hidden = false;
  $("#progress").hidden = false;
  views.forEach((view, p) => {
    const [w, h, n] = planeSize(p);
    const canvas = view.querySelector("canvas");
    canvas.width = w; canvas.height = h;
    canvas.style.aspectRatio = w + " / " + h;
    view.querySelector(".slider").max = n;
  });
  layout();
  setActive(0);
  setWindow(0);
  show(state.position || 0);
}
$("#start-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = $("#reader-name").value.trim().replace(/\s+/g, " ");
  if (name) startReading(name);
});

function init() {
  const problems = [];
  if (!STUDY) problems.push("study.js is missing: open index.html inside the unpacked study folder.");
  if (typeof DecompressionStream === "undefined") {
    problems.push("This browser is too old to open the study: use a current Chrome, Edge, Firefox or Safari.");
  }
  if (!store) {
    problems.push("This browser does not let the page keep your answers (private window or disabled storage): " +
                  "download them before closing the tab.");
  }
  if (problems.length) { $("#warning").textContent = problems.join(" "); $("#warning").hidden = false; }
  if (!STUDY || typeof DecompressionStream === "undefined") return;
  if (reader) startReading(reader); else startScreen();
}
init();
