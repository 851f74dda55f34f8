// The clamp-index web page: plain JS against the HTTP API, abcjs for notation and sound.
"use strict";

// abcjs's default soundfont lives on the internet; the server makes the notes itself.
const SOUNDFONT_URL = "/soundfont/";
const TOKEN_KEY = "clamp-index-token";
const POLL_MS = 1000;
const ENDED = new Set(["done", "failed", "interrupted"]);

const $ = (selector) => document.querySelector(selector);
const state = { query: null, offset: 0, k: 10 };
let audioContext = null;
let playing = null; // {synth, item}: at most one tune sounds at a time

function showBanner(message, kind = "error") {
  const banner = $("#banner");
  banner.textContent = message;
  banner.className = `banner ${kind}`;
  banner.hidden = !message;
}

// Every API error is JSON {"error": ...}; anything else (a proxy's HTML page) says its status.
async function api(path, init = {}) {
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new Error(`cannot reach the server (${err.message})`);
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

function filters() {
  const chosen = {};
  for (const input of document.querySelectorAll("[data-filter]")) {
    const value = input.value.trim();
    if (value) chosen[input.dataset.filter] = value;
  }
  return chosen;
}

async function runQuery(query, offset = 0) {
  stopPlayback();
  state.query = query;
  state.offset = offset;
  state.k = Number($("#k").value);
  const summary = $("#summary");
  summary.textContent = "Searching…";
  document.body.dataset.state = "searching";
  try {
    let response;
    if (query.kind === "text") {
      const params = new URLSearchParams({ q: query.q, k: state.k, offset, ...filters() });
      response = await api(`/search?${params}`);
    } else {
      const form = new FormData();
      if (query.kind === "piece") form.append("piece_id", query.pieceId);
      else form.append("file", query.file, query.file.name);
      form.append("k", state.k);
      form.append("offset", offset);
      for (const [name, value] of Object.entries(filters())) form.append(name, value);
      response = await api("/similar", { method: "POST", body: form });
    }
    showBanner("");
    renderResults(query, response);
  } catch (err) {
    summary.textContent = "";
    $("#results").replaceChildren();
    $("#prev").hidden = true;
    $("#next").hidden = true;
    showBanner(err.message);
  } finally {
    document.body.dataset.state = "idle";
  }
}

function describe(query) {
  if (query.kind === "text") return `“${query.q}”`;
  if (query.kind === "piece") return `tunes like “${query.title}”`;
  return `tunes like ${query.file.name}`;
}

function renderResults(query, response) {
  const hits = response.hits || [];
  const first = response.offset + 1;
  $("#summary").textContent = hits.length
    ? `${first}–${response.offset + hits.length} for ${describe(query)} in ` +
      `${response.latency_ms.toFixed(1)} ms · ${response.model}`
    : `Nothing found for ${describe(query)}${Object.keys(filters()).length ? " with these filters" : ""}.`;
  const list = $("#results");
  list.start = first;
  list.replaceChildren(...hits.map(renderHit));
  $("#prev").hidden = response.offset === 0;
  $("#next").hidden = hits.length < response.k;
}

function renderHit(hit) {
  const item = $("#result-template").content.firstElementChild.cloneNode(true);
  item.dataset.pieceId = hit.piece_id;
  item.querySelector(".rank").textContent = `${hit.rank}.`;
  item.querySelector(".title").textContent = hit.title || "(untitled)";
  item.querySelector(".score").textContent = hit.score.toFixed(3);
  const meta = [
    ["key", hit.key],
    ["meter", hit.meter],
    ["rhythm", hit.rhythm],
    ["composer", hit.composer],
    ["origin", hit.origin],
  ].filter(([, value]) => value);
  const metaBox = item.querySelector(".meta");
  for (const [name, value] of meta) {
    const span = document.createElement("span");
    span.className = `meta-${name}`;
    span.textContent = value;
    span.title = name;
    metaBox.append(span);
  }
  const source = document.createElement("span");
  source.className = "meta-source";
  const file = hit.source.split(/[\\/]/).pop();
  source.textContent = hit.index_in_file ? `${file} #${hit.index_in_file + 1}` : file;
  source.title = hit.source;
  metaBox.append(source);

  item.querySelector(".more-like-this").addEventListener("click", () => {
    window.scrollTo({ top: 0, behavior: "smooth" });
    runQuery({ kind: "piece", pieceId: hit.piece_id, title: hit.title || hit.piece_id });
  });
  item.querySelector(".play").addEventListener("click", () => togglePlay(item));
  loadNotation(item, hit.piece_id);
  return item;
}

// The card already shows title, rhythm, composer and origin; abcjs would print them again
// as text, with book, notes and transcription credits that dwarf the music.
const TEXT_FIELDS = /^[ABCDFGHNORSTZ]:.*$\n?/gm;

async function loadNotation(item, pieceId) {
  const box = item.querySelector(".notation");
  if (!window.ABCJS) {
    box.textContent = "No notation: abcjs is missing on the server.";
    return;
  }
  try {
    const piece = await api(`/pieces/${encodeURIComponent(pieceId)}`);
    const [visualObj] = ABCJS.renderAbc(box, piece.abc.replace(TEXT_FIELDS, ""), {
      responsive: "resize",
      // Source line breaks vary wildly (some tunes are one `\`-joined line): lay out afresh.
      staffwidth: 1100,
      wrap: { minSpacing: 1.8, maxSpacing: 2.7, preferredMeasuresPerLine: 4 },
      add_classes: true,
      paddingtop: 0,
      paddingbottom: 0,
    });
    item.visualObj = visualObj;
    item.dataset.rendered = "true";
    // abcjs owns the notation box's classes and style, so the frame around it is clipped.
    const frame = item.querySelector(".notation-frame");
    const more = item.querySelector(".expand");
    const clipped = frame.scrollHeight > frame.clientHeight + 4;
    frame.classList.toggle("clipped", clipped);
    more.hidden = !clipped;
    more.addEventListener("click", () => {
      const collapsed = frame.classList.toggle("collapsed");
      more.textContent = collapsed ? "Whole tune" : "Less";
    });
  } catch (err) {
    box.textContent = `No notation: ${err.message}`;
    box.classList.add("error");
  }
}

function setPlayStatus(item, text, playingNow) {
  item.querySelector(".play-status").textContent = text;
  item.querySelector(".play").textContent = playingNow ? "■ Stop" : "▶ Play";
  item.dataset.playing = playingNow ? "true" : "false";
}

function stopPlayback() {
  if (!playing) return;
  playing.synth.stop();
  setPlayStatus(playing.item, "", false);
  playing = null;
}

async function togglePlay(item) {
  const wasThis = playing && playing.item === item;
  stopPlayback();
  if (wasThis) return;
  if (!window.ABCJS) return setPlayStatus(item, "Can't play: abcjs is missing.", false);
  if (!ABCJS.synth.supportsAudio()) {
    return setPlayStatus(item, "Can't play: this browser has no Web Audio.", false);
  }
  if (!item.visualObj) return setPlayStatus(item, "Can't play: no notation loaded.", false);
  // Browsers allow sound only from a context made (or resumed) inside a click.
  audioContext = audioContext || new AudioContext();
  await audioContext.resume();
  const synth = new ABCJS.synth.CreateSynth();
  playing = { synth, item };
  setPlayStatus(item, "loading sounds…", true);
  try {
    await synth.init({
      visualObj: item.visualObj,
      audioContext,
      options: {
        soundFontUrl: SOUNDFONT_URL,
        onEnded: () => {
          if (playing && playing.synth === synth) {
            playing = null;
            setPlayStatus(item, "", false);
          }
        },
      },
    });
    await synth.prime();
    if (!playing || playing.synth !== synth) return; // stopped while loading
    synth.start();
    setPlayStatus(item, "playing", true);
  } catch (err) {
    if (playing && playing.synth === synth) playing = null;
    const reason = err && err.message ? err.message : String(err && err.status ? err.status : err);
    setPlayStatus(item, `Can't play: ${reason} (sounds come from ${SOUNDFONT_URL})`, false);
  }
}

// Ingest from the page: upload, then follow the job until it ends.
async function ingestFiles(files) {
  if (!files.length) return;
  const token = $("#token").value.trim();
  if (!token) {
    showBanner("Adding files needs the server's write token: enter it in the Token box.");
    $("#token").focus();
    return;
  }
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  showJob({ status: `uploading ${files.length} file${files.length > 1 ? "s" : ""}…` });
  try {
    const started = await api("/ingest/files", {
      method: "POST",
      headers: { Authorization: `Bearer ${token}` },
      body: form,
    });
    showBanner("");
    followJob(started.job_id);
  } catch (err) {
    showJob({ status: "not started" });
    showBanner(err.status === 401 ? `Token refused: ${err.message}` : err.message);
  }
}

function showJob(job) {
  const box = $("#job");
  box.hidden = false;
  box.dataset.status = job.status;
  const title = job.job_id ? `Job ${job.job_id} (${job.kind || "ingest"}): ` : "";
  let text = `${title}${job.status}`;
  if (job.failed) text += ` · ${job.failed} failed (see /failures?job_id=${job.job_id})`;
  $("#job-status").textContent = text;
  const files = job.files || 0;
  const pieces = job.pieces || 0;
  const filesDone = files - (job.files_pending || 0);
  const piecesDone = pieces - (job.pieces_pending || 0);
  setBar("#job-files", filesDone, files);
  setBar("#job-pieces", piecesDone, pieces);
}

function setBar(selector, done, total) {
  const bar = $(selector);
  bar.max = Math.max(total, 1);
  bar.value = done;
  $(`${selector}-text`).textContent = `${done} / ${total}`;
}

async function followJob(jobId) {
  for (;;) {
    let job;
    try {
      job = await api(`/jobs/${jobId}`);
    } catch (err) {
      showBanner(`Lost track of job ${jobId}: ${err.message}`);
      return;
    }
    showJob(job);
    if (ENDED.has(job.status)) return;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

// A file dropped on the ingest zone is added to the index; anywhere else it is a query.
function setUpDragAndDrop() {
  const overlay = $("#drop-overlay");
  const zone = $("#ingest-zone");
  let depth = 0;
  const hasFiles = (event) => [...event.dataTransfer.types].includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    depth += 1;
    overlay.hidden = zone.contains(event.target);
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(depth - 1, 0);
    if (!depth) overlay.hidden = true;
  });
  document.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    const onZone = zone.contains(event.target);
    zone.classList.toggle("over", onZone);
    overlay.hidden = onZone;
  });
  document.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    depth = 0;
    overlay.hidden = true;
    zone.classList.remove("over");
    const files = [...event.dataTransfer.files];
    if (zone.contains(event.target)) ingestFiles(files);
    else if (files.length) runQuery({ kind: "file", file: files[0] });
  });
}

function setUp() {
  $("#abcjs-missing").hidden = Boolean(window.ABCJS);
  $("#search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const q = $("#q").value.trim();
    if (!q) {
      showBanner("Type what you are looking for, e.g. “a lively jig in D”.", "warning");
      return;
    }
    runQuery({ kind: "text", q });
  });
  $("#example-file").addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) runQuery({ kind: "file", file });
    event.target.value = "";
  });
  $("#prev").addEventListener("click", () =>
    runQuery(state.query, Math.max(state.offset - state.k, 0)),
  );
  $("#next").addEventListener("click", () => runQuery(state.query, state.offset + state.k));
  const token = $("#token");
  token.value = localStorage.getItem(TOKEN_KEY) || "";
  token.addEventListener("input", () => localStorage.setItem(TOKEN_KEY, token.value.trim()));
  $("#ingest-files").addEventListener("change", (event) => {
    ingestFiles([...event.target.files]);
    event.target.value = "";
  });
  setUpDragAndDrop();
  document.body.dataset.state = "idle";
}

setUp();
