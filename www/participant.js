// The participant page: create or join a session, then record each problem while the
// wasm client uploads it straight to storage.
//
// URL parameters: session & token (join), problems=p1,p2 (else study.json, else one
// problem), study=name, kind=av|audio|screen, vbps / abps (recorder bitrates), server
// (API base URL when the page is served elsewhere).
import init, { Recorder, Api, listDevices, supportedMimeType } from "./pkg/client.js";

const params = new URLSearchParams(location.search);
const server = params.get("server") || "";
const $ = (id) => document.getElementById(id);
const statusLine = $("status");

let session = null; // {id, token}
let active = null; // {recorder, li, meter}

function say(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

export function formatBytes(n) {
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

// The server's rule for problem ids (shared/src/ids.rs): checked here so that a bad
// id in a link is reported when the page opens, not when Record is pressed.
const PROBLEM_ID = /^[A-Za-z0-9_-]{1,64}$/;
const PROBLEM_ID_RULE =
  'Problem ids may use only the letters A-Z and a-z, the digits 0-9, "-" and "_" (1 to 64 characters).';

/**
 * Keeps the problems whose ids are valid and not repeated; `error` names the first one
 * that is not (and what is allowed), or is null.
 */
export function checkProblems(problems, source) {
  const seen = new Set();
  const ok = [];
  let error = null;
  for (const problem of problems) {
    const id = String(problem?.id ?? "");
    let why = null;
    if (!PROBLEM_ID.test(id)) why = `"${id}" is not a valid problem id. ${PROBLEM_ID_RULE}`;
    else if (seen.has(id)) why = `problem "${id}" is listed twice.`;
    if (why) {
      error ??= `The problem list ${source} cannot be used as it is: ${why} ` +
        "The other problems can be recorded; ask the study team to correct the list.";
      continue;
    }
    seen.add(id);
    ok.push({ ...problem, id });
  }
  return { problems: ok, error };
}

async function loadStudy() {
  const fromUrl = params.get("problems");
  if (fromUrl != null) {
    const ids = fromUrl.split(",").map((s) => s.trim()).filter(Boolean);
    const checked = checkProblems(ids.map((id) => ({ id })), "in this link (?problems=)");
    return { study: params.get("study") || "", ...checked };
  }
  try {
    const res = await fetch("study.json", { cache: "no-store" });
    if (res.ok) {
      const study = await res.json();
      if (Array.isArray(study.problems) && study.problems.length) {
        return { ...study, ...checkProblems(study.problems, "in study.json") };
      }
    }
  } catch (_) { /* No study file: one default problem. */ }
  return { study: params.get("study") || "", problems: [{ id: "p1" }], error: null };
}

/** "Problem p1": how both pages name a problem (the researcher page groups by id). */
function problemLabel(problem) {
  return `Problem ${problem.id}`;
}

function chosenKind() {
  return document.querySelector('input[name="kind"]:checked').value;
}

function updateKindUi() {
  const kind = chosenKind();
  $("camera-field").classList.toggle("hidden", kind !== "av");
  let type = null;
  try { type = supportedMimeType(kind); } catch (_) { /* Reported on record. */ }
  $("format-note").textContent = type
    ? `This browser records ${kind === "audio" ? "audio" : "video"} as ${type}.`
    : "This browser cannot record this kind; try a current Chrome, Edge, Firefox or Safari.";
}

async function fillDevices(askPermission) {
  const devices = await listDevices(askPermission);
  for (const [select, kind, fallback] of [
    [$("camera"), "videoinput", "Default camera"],
    [$("microphone"), "audioinput", "Default microphone"],
  ]) {
    const current = select.value;
    select.replaceChildren(new Option(fallback, ""));
    devices.filter((d) => d.kind === kind && d.deviceId).forEach((d, i) => {
      select.add(new Option(d.label || `${fallback.replace("Default ", "")} ${i + 1}`, d.deviceId));
    });
    select.value = [...select.options].some((o) => o.value === current) ? current : "";
  }
  return devices;
}

/** Why a join link's session could not be opened, as the server's answer says it. */
const JOIN_REASONS = {
  invalid_id: "the session id in the link is not valid",
  unauthorized: "the link has no valid access key (token)",
  forbidden: "the link's access key (token) does not open this session",
  wrong_session: "the link's access key (token) belongs to another session",
  session_not_found: "there is no such session on this server",
  manifest_corrupt: "the session's records cannot be read",
};

/** Reads the session a link names, with its token; throws a sentence for people. */
async function openSession(id, token) {
  const fail = (why, next = "Ask the study team for a new link.") =>
    new Error(`This link's session could not be opened: ${why}. ${next}`);
  if (!id || !token) throw fail("the link is incomplete (it needs both session= and token=)");
  let res;
  try {
    res = await fetch(`${server}/api/sessions/${encodeURIComponent(id)}`, {
      headers: { Authorization: `Bearer ${token}` },
      cache: "no-store",
    });
  } catch (_) {
    throw fail("the server could not be reached", "Check the connection, then reload the page.");
  }
  if (res.ok) return res.json();
  let code = "";
  try { code = (await res.json()).code || ""; } catch (_) { /* Not our server's answer. */ }
  if (JOIN_REASONS[code]) throw fail(JOIN_REASONS[code]);
  if (res.status >= 500) {
    throw fail(`the server had a problem (${res.status})`, "Reload the page to try again; if it persists, ask the study team.");
  }
  throw fail(`the server answered ${res.status}${code ? ` ${code}` : ""}`);
}

function showSessionError(message) {
  const line = $("session-error");
  line.textContent = message;
  line.classList.remove("hidden");
  say(message, true);
}

function showJoined() {
  $("session-error").classList.add("hidden");
  $("create-form").classList.add("hidden");
  $("joined").classList.remove("hidden");
  $("session-id").textContent = session.id;
  const link = new URL(location.href);
  link.searchParams.set("session", session.id);
  link.searchParams.set("token", session.token);
  $("rejoin-link").href = link.toString();
  history.replaceState(null, "", link.toString());
  document.body.dataset.sessionId = session.id;
}

function setProblemState(li, state, label) {
  li.dataset.state = state;
  const badge = li.querySelector(".state-badge");
  badge.className = `badge state-badge ${state}`;
  badge.textContent = label;
}

function showProgress(li, p) {
  const bar = li.querySelector(".bar");
  const total = Math.max(p.bytes_recorded, 1);
  // The recorded layer is always full; the stored layer shows the share safely stored.
  bar.querySelector(".recorded").style.width = p.bytes_recorded ? "100%" : "0";
  const pct = Math.round((p.bytes_stored / total) * 100);
  bar.querySelector(".stored").style.width = `${pct}%`;
  bar.setAttribute("aria-valuenow", String(pct));
  bar.setAttribute("aria-valuetext", `${formatBytes(p.bytes_stored)} of ${formatBytes(p.bytes_recorded)} stored`);
  li.dataset.bytesRecorded = p.bytes_recorded;
  li.dataset.bytesStored = p.bytes_stored;
  li.dataset.partsStored = p.parts_stored;
  li.querySelector(".detail").textContent =
    `${formatDuration(p.elapsed_ms)} · ${formatBytes(p.bytes_recorded)} recorded · ` +
    `${formatBytes(p.bytes_stored)} stored (${p.parts_stored}/${p.parts_planned} parts` +
    `${p.parts_in_flight ? `, ${p.parts_in_flight} sending` : ""})` +
    (p.online ? "" : " · offline: uploads resume when the connection is back");
}

function setButtons() {
  // Recording needs an open session: until then the buttons say why they are disabled.
  $("needs-session").classList.toggle("hidden", !!session);
  for (const li of document.querySelectorAll("ol.problems > li")) {
    const mine = active && active.li === li;
    const record = li.querySelector("button.record");
    record.disabled = !!active || !session;
    if (session) record.removeAttribute("aria-describedby");
    else record.setAttribute("aria-describedby", "needs-session");
    li.querySelector("button.stop").disabled = !(mine && active.recorder.state === "recording");
    li.querySelector("button.cancel").disabled = !(mine && ["recording", "uploading", "starting"].includes(active.recorder.state));
  }
  for (const input of document.querySelectorAll('input[name="kind"], #camera, #microphone, #find-devices')) {
    input.disabled = !!active;
  }
}

function startMeter(stream) {
  const wrap = $("level-wrap");
  const tracks = stream.getAudioTracks();
  if (!tracks.length || !window.AudioContext) return null;
  const ctx = new AudioContext();
  const source = ctx.createMediaStreamSource(new MediaStream(tracks));
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  source.connect(analyser);
  const data = new Float32Array(analyser.fftSize);
  const fill = $("level").querySelector("span");
  let frame = 0;
  const tick = () => {
    analyser.getFloatTimeDomainData(data);
    let sum = 0;
    for (const v of data) sum += v * v;
    const level = Math.min(100, Math.round(Math.sqrt(sum / data.length) * 300));
    fill.style.width = `${level}%`;
    $("level").setAttribute("aria-valuenow", String(level));
    frame = requestAnimationFrame(tick);
  };
  tick();
  wrap.classList.remove("hidden");
  return () => {
    cancelAnimationFrame(frame);
    ctx.close();
    fill.style.width = "0";
    wrap.classList.add("hidden");
  };
}

function showPreview(stream, kind) {
  const video = $("preview");
  if (kind === "audio" || !stream) return;
  video.srcObject = stream;
  video.classList.remove("hidden");
  video.play().catch(() => {});
}

function hidePreview() {
  const video = $("preview");
  video.srcObject = null;
  video.classList.add("hidden");
}

function endActive() {
  if (!active) return;
  if (active.meter) active.meter();
  hidePreview();
  active = null;
  setButtons();
}

async function record(li, problem) {
  const errorLine = li.querySelector(".problem-error");
  errorLine.textContent = "";
  if (!session) {
    say("Start a session first (step 1).", true);
    $("create-session").focus();
    return;
  }
  const kind = chosenKind();
  const options = {
    server,
    token: session.token,
    sessionId: session.id,
    problemId: problem.id,
    kind,
  };
  if ($("camera").value && kind === "av") options.deviceId = $("camera").value;
  if ($("microphone").value) options.audioDeviceId = $("microphone").value;
  if (params.get("vbps")) options.videoBitsPerSecond = Number(params.get("vbps"));
  if (params.get("abps")) options.audioBitsPerSecond = Number(params.get("abps"));

  let recorder;
  try {
    recorder = new Recorder(options);
  } catch (e) {
    errorLine.textContent = e.message;
    return;
  }
  active = { recorder, li, meter: null };
  recorder.on("progress", (p) => showProgress(li, p));
  recorder.on("state", (s) => {
    const labels = {
      starting: "Starting…", recording: "Recording", uploading: "Finishing upload…",
      complete: "Stored", cancelled: "Cancelled", failed: "Failed",
    };
    setProblemState(li, s.state, labels[s.state] || s.state);
    setButtons();
  });
  recorder.on("error", (reason) => {
    li.dataset.errorCode = reason.code;
    errorLine.textContent = reason.message;
    say(`${problem.label}: ${reason.message}`, true);
  });
  setButtons();
  say(`Starting the ${kind === "audio" ? "microphone" : kind === "screen" ? "screen capture" : "camera"}…`);
  try {
    await recorder.start();
  } catch (e) {
    endActive();
    return;
  }
  li.dataset.recordingId = recorder.recordingId;
  li.dataset.mimeType = recorder.mimeType;
  li.dataset.tracks = recorder.stream.getTracks().map((t) => t.kind).sort().join(",");
  showPreview(recorder.stream, kind);
  active.meter = startMeter(recorder.stream);
  say(`Recording ${problem.label}. Press Stop when you are done.`);
  li.querySelector("button.stop").focus();
}

async function stop(li, problem) {
  if (!active || active.li !== li) return;
  const { recorder } = active;
  say(`Stopping ${problem.label}; storing the last part…`);
  if (active.meter) { active.meter(); active.meter = null; }
  hidePreview();
  try {
    const entry = await recorder.stop();
    li.dataset.sha256 = recorder.sha256 || "";
    li.dataset.key = entry.key;
    li.dataset.size = entry.size;
    li.dataset.durationMs = entry.duration_ms ?? "";
    li.querySelector(".detail").textContent =
      `Stored: ${formatBytes(entry.size)}, ${formatDuration(entry.duration_ms)}.`;
    say(`${problem.label} is stored (${formatBytes(entry.size)}).`);
  } catch (e) {
    li.dataset.sha256 = recorder.sha256 || "";
  } finally {
    endActive();
    const next = li.nextElementSibling?.querySelector("button.record");
    (next || li.querySelector("button.record")).focus();
  }
}

/**
 * The recording's entry as the server has it, waiting briefly while it is still
 * `uploading` (a complete that raced the cancel may be finishing). Null if unknown.
 */
async function storedEntry(recordingId) {
  for (let attempt = 0; attempt < 6; attempt++) {
    try {
      const manifest = await new Api(server, session.token).getSession(session.id);
      const entry = (manifest.recordings || []).find((r) => r.id === recordingId);
      if (!entry || entry.status !== "uploading") return entry ?? null;
    } catch (_) {
      return null;
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  return null;
}

async function cancel(li, problem) {
  if (!active || active.li !== li) return;
  const { recorder } = active;
  await recorder.cancel();
  endActive();
  // A cancel pressed while the upload was finishing can arrive after the recording was
  // stored; the server then keeps it, and the page must not say otherwise.
  const entry = li.dataset.recordingId ? await storedEntry(li.dataset.recordingId) : null;
  if (entry && ["complete", "partial"].includes(entry.status)) {
    setProblemState(li, "complete", "Stored");
    li.querySelector(".detail").textContent =
      `The cancel came too late: the recording was already stored (${formatBytes(entry.size)}), so it was kept.`;
    say(`${problem.label}: the recording was already stored, so it was kept.`);
  } else {
    li.querySelector(".detail").textContent = "Cancelled; nothing was kept.";
    say(`${problem.label}: recording cancelled.`);
  }
  li.querySelector("button.record").focus();
}

function renderProblems(problems) {
  const list = $("problems");
  const template = $("problem-template");
  for (const problem of problems) {
    const li = template.content.firstElementChild.cloneNode(true);
    li.dataset.problem = problem.id;
    const label = problemLabel(problem);
    problem.label = label;
    const title = li.querySelector(".title");
    title.textContent = label;
    if (problem.title && problem.title !== label) {
      const subtitle = document.createElement("span");
      subtitle.className = "subtitle";
      subtitle.textContent = ` · ${problem.title}`;
      title.append(subtitle);
    }
    li.querySelector(".prompt").textContent = problem.prompt || "";
    li.querySelector("button.record").setAttribute("aria-label", `Record ${label}`);
    li.querySelector("button.stop").setAttribute("aria-label", `Stop recording ${label}`);
    li.querySelector("button.cancel").setAttribute("aria-label", `Cancel recording ${label}`);
    li.querySelector("button.record").addEventListener("click", () => record(li, problem));
    li.querySelector("button.stop").addEventListener("click", () => stop(li, problem));
    li.querySelector("button.cancel").addEventListener("click", () => cancel(li, problem));
    list.append(li);
  }
}

function showEarlierRecordings(manifest) {
  for (const r of manifest.recordings || []) {
    const li = document.querySelector(`ol.problems > li[data-problem="${CSS.escape(r.problem_id || "")}"]`);
    if (li && r.status === "complete" && li.dataset.state === "idle") {
      setProblemState(li, "complete", "Stored earlier");
      li.querySelector(".detail").textContent =
        `Stored earlier: ${formatBytes(r.size)}, ${formatDuration(r.duration_ms)}. Recording again adds another.`;
    }
  }
}

async function main() {
  await init();
  const study = await loadStudy();
  $("study-name").textContent = study.title || study.study || "";
  renderProblems(study.problems);
  setButtons();
  if (study.error) {
    $("problems-error").textContent = study.error;
    $("problems-error").classList.remove("hidden");
  }
  const kind = params.get("kind") || study.kind;
  if (kind) {
    const radio = document.querySelector(`input[name="kind"][value="${CSS.escape(kind)}"]`);
    if (radio) radio.checked = true;
  }
  updateKindUi();
  for (const radio of document.querySelectorAll('input[name="kind"]')) radio.addEventListener("change", updateKindUi);
  fillDevices(false).catch(() => {});

  $("find-devices").addEventListener("click", async () => {
    say("Asking for the camera and microphone…");
    try {
      const devices = await fillDevices(true);
      const cams = devices.filter((d) => d.kind === "videoinput").length;
      const mics = devices.filter((d) => d.kind === "audioinput").length;
      say(`Found ${cams} camera${cams === 1 ? "" : "s"} and ${mics} microphone${mics === 1 ? "" : "s"}.`);
    } catch (e) {
      say(e.message, true);
    }
  });

  if (params.has("session") || params.has("token")) {
    // A join link: open its session before saying it is open.
    say("Opening the session from this link…");
    const id = params.get("session");
    const token = params.get("token");
    try {
      const manifest = await openSession(id, token);
      session = { id, token };
      showJoined();
      showEarlierRecordings(manifest);
      setButtons();
      say(study.error ?? "Session joined. Choose what to record, then record each problem.", !!study.error);
    } catch (e) {
      showSessionError(e.message);
    }
  } else {
    say(study.error ?? "Start a session to begin.", !!study.error);
  }

  $("create-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("create-session");
    button.disabled = true;
    try {
      const metadata = {};
      if (study.study) metadata.study = study.study;
      const participant = $("participant").value.trim();
      if (participant) metadata.participant = participant;
      const created = await new Api(server).createSession(metadata);
      session = { id: created.session_id, token: created.token };
      showJoined();
      setButtons();
      say("Session started. Choose what to record, then record each problem.");
      document.querySelector("ol.problems button.record")?.focus();
    } catch (e) {
      say(e.message, true);
      button.disabled = false;
    }
  });

  window.addEventListener("beforeunload", (event) => {
    if (active) {
      event.preventDefault();
      event.returnValue = "";
    }
  });
  document.body.dataset.ready = "true";
}

main().catch((e) => say(`The recorder could not load: ${e.message}`, true));
