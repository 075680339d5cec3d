// The researcher page: the token stays in sessionStorage (this tab only); sessions are
// listed newest first; a session's recordings are grouped per problem with inline
// playback (through presigned URLs that support Range) and downloads.
import init, { Api } from "./pkg/client.js";

const TOKEN_KEY = "recorder.researcherToken";
const params = new URLSearchParams(location.search);
const server = params.get("server") || "";
const $ = (id) => document.getElementById(id);

let api = null;
let manifestUrl = null;
// Problem titles from the study file, by problem id (the participant page shows both).
const problemTitles = new Map();

async function loadProblemTitles() {
  try {
    const res = await fetch("study.json", { cache: "no-store" });
    if (!res.ok) return;
    const study = await res.json();
    for (const p of study.problems || []) {
      if (p && typeof p.id === "string" && typeof p.title === "string") problemTitles.set(p.id, p.title);
    }
  } catch (_) { /* No study file: groups are named by problem id alone. */ }
}

/** "Problem p1 · Estimating windows": the participant page's heading for the problem. */
function problemHeading(problem) {
  if (problem === "(no problem)") return "No problem recorded";
  const title = problemTitles.get(problem);
  return title && title !== `Problem ${problem}` ? `Problem ${problem} · ${title}` : `Problem ${problem}`;
}

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function formatBytes(n) {
  if (n == null) return "–";
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

function formatDuration(ms) {
  if (ms == null) return "–";
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function formatTime(text) {
  if (!text) return "–";
  const d = new Date(text);
  return Number.isNaN(d.getTime()) ? text : d.toLocaleString();
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k in node && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c != null));
  return node;
}

function badge(status, count) {
  return el("span", { class: `badge ${status}` }, count == null ? status : `${count} ${status}`);
}

async function loadSessions() {
  say("Loading sessions…");
  const tbody = $("sessions").querySelector("tbody");
  try {
    const { sessions } = await api.listSessions();
    tbody.replaceChildren(
      ...sessions.map((s) => {
        const who = [s.metadata?.study, s.metadata?.participant].filter(Boolean).join(" / ") || "–";
        const counts = Object.entries(s.counts || {}).map(([status, n]) => badge(status, n));
        if (s.error) counts.push(el("span", { class: "error small" }, ` ${s.error.message}`));
        return el(
          "tr",
          { dataset: { sessionId: s.session_id } },
          el("td", {}, formatTime(s.created_at)),
          el("td", {}, who, el("div", { class: "small muted mono" }, s.session_id)),
          el("td", {}, ...(counts.length ? counts : [el("span", { class: "muted" }, "none")])),
          el("td", { class: "num" }, formatBytes(s.total_bytes)),
          el("td", {}, el("button", {
            type: "button",
            class: "secondary",
            "aria-label": `Open session ${s.session_id}`,
            onclick: () => openSession(s.session_id),
          }, "Open")),
        );
      }),
    );
    $("no-sessions").classList.toggle("hidden", sessions.length > 0);
    say(`${sessions.length} session${sessions.length === 1 ? "" : "s"}.`);
  } catch (e) {
    say(e.code === "server_error" && /401|403/.test(e.message)
      ? `The token was refused: ${e.message}`
      : e.message, true);
  }
}

// Chrome's MediaRecorder writes WebM without a duration or cues, so the element reports
// an infinite duration and cannot seek. Asking for a far position makes it read to the
// end (with Range requests) and learn the duration; then it goes back to the start.
function learnDuration(media) {
  return new Promise((resolve) => {
    const done = () => resolve(media.duration);
    const check = () => {
      if (media.duration === Infinity || Number.isNaN(media.duration)) {
        const onChange = () => {
          if (Number.isFinite(media.duration)) {
            media.removeEventListener("durationchange", onChange);
            media.currentTime = 0;
            media.addEventListener("seeked", done, { once: true });
          }
        };
        media.addEventListener("durationchange", onChange);
        media.currentTime = 1e101;
      } else {
        done();
      }
    };
    if (media.readyState >= 1) check();
    else media.addEventListener("loadedmetadata", check, { once: true });
  });
}

async function play(sessionId, recording, cell, button) {
  button.disabled = true;
  try {
    const { url, content_type } = await api.recordingUrl(sessionId, recording.id, false);
    const isAudio = content_type.startsWith("audio/");
    const media = el(isAudio ? "audio" : "video", {
      controls: true,
      preload: "metadata",
      "aria-label": `Recording ${recording.id}`,
      dataset: { recordingId: recording.id },
    });
    if (!isAudio) media.playsInline = true;
    media.src = url;
    cell.replaceChildren(media);
    cell.closest("tr").classList.remove("hidden");
    media.dataset.duration = String(await learnDuration(media));
    media.focus();
  } catch (e) {
    cell.replaceChildren(el("p", { class: "error" }, e.message));
    cell.closest("tr").classList.remove("hidden");
  } finally {
    button.disabled = false;
  }
}

async function download(sessionId, recording) {
  try {
    const { url } = await api.recordingUrl(sessionId, recording.id, true);
    // The URL answers with Content-Disposition: attachment, so the page stays.
    const a = el("a", { href: url, download: "" });
    document.body.append(a);
    a.click();
    a.remove();
  } catch (e) {
    say(e.message, true);
  }
}

function recordingRows(sessionId, recording) {
  const playable = ["complete", "partial"].includes(recording.status);
  const playerCell = el("td", { colspan: "6", class: "player" });
  const playerRow = el("tr", { class: "hidden" }, playerCell);
  const playButton = el("button", {
    type: "button",
    class: "secondary",
    disabled: !playable,
    "aria-label": `Play ${recording.id}`,
  }, "Play");
  playButton.addEventListener("click", () => play(sessionId, recording, playerCell, playButton));
  const downloadButton = el("button", {
    type: "button",
    class: "secondary",
    disabled: !playable,
    "aria-label": `Download ${recording.id}`,
    onclick: () => download(sessionId, recording),
  }, "Download");
  const row = el(
    "tr",
    { dataset: { recordingId: recording.id, status: recording.status } },
    el("td", {}, formatTime(recording.started_at), el("div", { class: "small muted mono" }, recording.key)),
    el("td", {}, badge(recording.status), recording.error ? el("div", { class: "small error" }, recording.error) : null,
      recording.discovered ? el("div", { class: "small muted" }, "found in storage (older data)") : null),
    el("td", { class: "small" }, recording.content_type),
    el("td", { class: "num" }, formatBytes(recording.size)),
    el("td", { class: "num" }, formatDuration(recording.duration_ms)),
    el("td", {}, el("div", { class: "controls" }, playButton, downloadButton)),
  );
  return [row, playerRow];
}

async function openSession(sessionId) {
  say(`Loading session ${sessionId}…`);
  for (const tr of $("sessions").querySelectorAll("tbody tr")) {
    tr.setAttribute("aria-selected", String(tr.dataset.sessionId === sessionId));
  }
  try {
    const manifest = await api.getSession(sessionId);
    $("detail-id").textContent = sessionId;
    const meta = manifest.metadata || {};
    $("detail-meta").textContent = [
      meta.study && `Study: ${meta.study}`,
      meta.participant && `Participant: ${meta.participant}`,
      `Created: ${formatTime(manifest.created_at)}`,
      `Updated: ${formatTime(manifest.updated_at)}`,
    ].filter(Boolean).join(" · ");
    if (manifestUrl) URL.revokeObjectURL(manifestUrl);
    manifestUrl = URL.createObjectURL(new Blob([JSON.stringify(manifest, null, 2)], { type: "application/json" }));
    const link = $("manifest-download");
    link.href = manifestUrl;
    link.download = `session-${sessionId}.json`;

    const groups = new Map();
    for (const r of manifest.recordings || []) {
      const key = r.problem_id || "(no problem)";
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(r);
    }
    const container = $("recordings");
    if (!groups.size) {
      container.replaceChildren(el("p", { class: "muted" }, "No recordings in this session yet."));
    } else {
      container.replaceChildren(
        ...[...groups.entries()].flatMap(([problem, recordings]) => [
          el("h3", { class: "problem-title" }, problemHeading(problem)),
          el("table", { dataset: { problem } },
            el("thead", {}, el("tr", {},
              el("th", { scope: "col" }, "Started"),
              el("th", { scope: "col" }, "Status"),
              el("th", { scope: "col" }, "Format"),
              el("th", { scope: "col", class: "num" }, "Size"),
              el("th", { scope: "col", class: "num" }, "Duration"),
              el("th", { scope: "col" }, el("span", { class: "hidden" }, "Actions")),
            )),
            el("tbody", {}, ...recordings.flatMap((r) => recordingRows(sessionId, r))),
          ),
        ]),
      );
    }
    $("detail").classList.remove("hidden");
    $("detail").focus();
    say(`Session ${sessionId}: ${(manifest.recordings || []).length} recording(s).`);
  } catch (e) {
    say(e.message, true);
  }
}

async function main() {
  await init();
  await loadProblemTitles();
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) $("token").value = saved;
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    api = new Api(server, token);
    loadSessions();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token").value = "";
    api = null;
    $("sessions").querySelector("tbody").replaceChildren();
    $("detail").classList.add("hidden");
    say("Token forgotten.");
  });
  if (saved) {
    api = new Api(server, saved);
    await loadSessions();
  } else {
    say("Enter the researcher token to see the sessions.");
  }
  document.body.dataset.ready = "true";
}

main().catch((e) => say(`The page could not load: ${e.message}`, true));
