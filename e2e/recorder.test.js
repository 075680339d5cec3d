// Browser end-to-end: the real server binary (local storage in a temporary DATA_DIR),
// the real wasm client and pages, headless Debian chromium with a fake camera fed by
// a noise video so that MediaRecorder produces megabytes quickly.
//
//   cargo build -p server && scripts/dev web && node --test e2e/
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  ARTIFACTS,
  RESEARCHER_TOKEN,
  launchBrowser,
  startServer,
  tempDir,
  waitFor,
  writeNoiseY4m,
} from "./harness.js";

const MIB = 1024 * 1024;
// Noise at 8 Mbit/s fills a 5 MiB part every five seconds or so.
const VIDEO_BPS = 8_000_000;

let temp;
let server;
let browser;
let dataDir;
let sessionId;
let sessionToken;
let videoEntry;
let audioEntry;
const browserLog = [];

/** A new tab whose console errors and uncaught exceptions go to the browser log. */
async function openPage() {
  const page = await browser.newPage();
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") browserLog.push(`${page.url()} ${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => browserLog.push(`${page.url()} uncaught: ${e.message}`));
  return page;
}

/** The dataset and texts of a problem's list item on the participant page. */
function problemState(page, problem) {
  return page.$eval(`li[data-problem="${problem}"]`, (li) => ({
    ...li.dataset,
    error: li.querySelector(".problem-error").textContent,
  }));
}

async function api(path, token) {
  const res = await fetch(`${server.url}${path}`, { headers: { Authorization: `Bearer ${token}` } });
  assert.equal(res.status, 200, `${path}: ${res.status} ${await res.clone().text()}`);
  return res.json();
}

/** Reads the stored object of a manifest entry from DATA_DIR, as the local backend keeps it. */
function storedObject(key) {
  const bytes = readFileSync(join(dataDir, ...key.split("/")));
  return { bytes, sha256: createHash("sha256").update(bytes).digest("hex") };
}

/** Waits until the recording of `problem` satisfies `enough`, failing if it ends early. */
async function recordUntil(page, problem, enough, what, since = Date.now(), minMs = 0) {
  return waitFor(async () => {
    const s = await problemState(page, problem);
    assert.ok(!["failed", "cancelled"].includes(s.state), `recording ended early: ${s.error}`);
    return s.state === "recording" && enough(s) && Date.now() - since >= minMs ? s : null;
  }, 120_000, what);
}

/** Stops the recording of `problem` and waits for its upload to complete. */
async function stopAndWait(page, problem) {
  await page.screenshot({ path: join(ARTIFACTS, `participant-recording-${problem}.png`), fullPage: true });
  await page.click(`li[data-problem="${problem}"] button.stop`);
  const stoppedAt = Date.now();
  const done = await waitFor(async () => {
    const s = await problemState(page, problem);
    return ["complete", "failed"].includes(s.state) ? s : null;
  }, 120_000, `${problem} to complete`);
  assert.equal(done.state, "complete", `upload did not complete: ${done.error}`);
  return { ...done, stoppedAt };
}

/** Records `problem` until `enough(state)` holds, then stops; returns what the page saw. */
async function recordProblem(page, problem, enough, what, minMs = 0) {
  const started = Date.now();
  await page.click(`li[data-problem="${problem}"] button.record`);
  const during = await recordUntil(page, problem, enough, what, started, minMs);
  const done = await stopAndWait(page, problem);
  return { during, done, elapsedMs: done.stoppedAt - started };
}

describe("recording in the browser, straight to storage", { timeout: 600_000 }, () => {
  before(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    temp = tempDir("recorder-e2e-");
    dataDir = join(temp.dir, "data");
    const y4m = join(temp.dir, "noise.y4m");
    await writeNoiseY4m(y4m, { width: 640, height: 480, frames: 30 });
    server = await startServer(dataDir);
    browser = await launchBrowser(y4m, join(temp.dir, "profile"));
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    // The server's log stays with the screenshots, for when a run fails.
    if (server) writeFileSync(join(ARTIFACTS, "server.log"), server.logs.join(""));
    writeFileSync(join(ARTIFACTS, "browser.log"), browserLog.join("\n"));
    temp?.cleanup();
  });

  it("uploads a webcam recording part by part while recording, and stores it intact", async () => {
    const page = await openPage();
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    await page.goto(`${server.url}/index.html?problems=p1,p2&study=e2e&vbps=${VIDEO_BPS}`);
    await page.waitForSelector("body[data-ready=true]");
    await page.fill("#participant", "P-042");
    await page.click("#create-session");
    await page.waitForSelector("#joined:not(.hidden)");
    const url = new URL(page.url());
    sessionId = url.searchParams.get("session");
    sessionToken = url.searchParams.get("token");
    assert.ok(sessionId && sessionToken, "the page keeps the session and token in its URL");

    // Devices are listed with their names, and the recording uses the one chosen.
    await page.click("#find-devices");
    await waitFor(async () => (await page.$$("#camera option")).length > 1, 15_000, "the cameras listed");
    const camera = await page.$eval("#camera", (s) => ({ id: s.options[1].value, label: s.options[1].textContent }));
    assert.ok(camera.label.length > 0);
    await page.selectOption("#camera", camera.id);

    const { during, done, elapsedMs } = await recordProblem(
      page,
      "p1",
      (s) => Number(s.partsStored) >= 3,
      "three parts stored while recording",
    );
    // The parts reached storage while the camera was still recording.
    assert.equal(during.state, "recording");
    assert.ok(Number(during.partsStored) >= 3);
    assert.ok(Number(during.bytesStored) >= 3 * 5 * MIB);
    assert.ok(Number(during.bytesStored) < Number(during.bytesRecorded) + 1);

    assert.match(done.mimeType, /^video\/webm/);
    const size = Number(done.size);
    assert.equal(size, Number(done.bytesRecorded), "every recorded byte was stored");
    assert.ok(size > 3 * 5 * MIB, `a recording of at least three parts (got ${size} bytes)`);

    // The object on disk: WebM magic, the size and the SHA-256 the page computed.
    const stored = storedObject(done.key);
    assert.deepEqual([...stored.bytes.subarray(0, 4)], [0x1a, 0x45, 0xdf, 0xa3]);
    assert.equal(stored.bytes.length, size);
    assert.equal(stored.sha256, done.sha256);

    // The manifest entry is complete, with the same facts and a plausible duration.
    const manifest = await api(`/api/sessions/${sessionId}`, sessionToken);
    assert.equal(manifest.metadata.participant, "P-042");
    videoEntry = manifest.recordings.find((r) => r.id === done.recordingId);
    assert.ok(videoEntry, "the recording is in the manifest");
    assert.equal(videoEntry.status, "complete");
    assert.equal(videoEntry.problem_id, "p1");
    assert.equal(videoEntry.size, size);
    assert.equal(videoEntry.sha256, done.sha256);
    assert.equal(videoEntry.content_type, done.mimeType);
    assert.ok(
      videoEntry.duration_ms > 2_000 && videoEntry.duration_ms <= elapsedMs + 1_000,
      `duration ${videoEntry.duration_ms} ms for ${elapsedMs} ms between record and stop`,
    );
    await page.screenshot({ path: join(ARTIFACTS, "participant.png"), fullPage: true });
    assert.deepEqual(pageErrors, []);
    await page.close();
  });

  it("records the microphone alone", async () => {
    const page = await openPage();
    await page.goto(`${server.url}/index.html?problems=p1,p2&session=${sessionId}&token=${sessionToken}`);
    await page.waitForSelector("body[data-ready=true]");
    // The earlier recording of p1 is shown as stored.
    assert.equal((await problemState(page, "p1")).state, "complete");
    // By keyboard: choose the kind with the arrow keys, record with Enter; focus moves
    // to Stop, and Enter on it stops.
    await page.focus('input[name="kind"][value="av"]');
    await page.keyboard.press("ArrowRight");
    assert.equal(await page.$eval('input[name="kind"]:checked', (r) => r.value), "audio");
    await page.focus('li[data-problem="p2"] button.record');
    const started = Date.now();
    await page.keyboard.press("Enter");
    await recordUntil(page, "p2", (s) => Number(s.bytesRecorded) > 0, "some audio recorded", started, 3_000);
    assert.equal(await page.evaluate(() => document.activeElement.getAttribute("aria-label")), "Stop recording Problem p2");
    assert.match(await page.textContent("#status"), /Recording Problem p2/);
    await page.keyboard.press("Enter");
    const done = await waitFor(async () => {
      const s = await problemState(page, "p2");
      return ["complete", "failed"].includes(s.state) ? s : null;
    }, 60_000, "p2 to complete");
    assert.equal(done.state, "complete", done.error);
    assert.match(done.mimeType, /^audio\//);
    const stored = storedObject(done.key);
    assert.equal(stored.bytes.length, Number(done.size));
    assert.equal(stored.sha256, done.sha256);
    assert.deepEqual([...stored.bytes.subarray(0, 4)], [0x1a, 0x45, 0xdf, 0xa3]);
    const manifest = await api(`/api/sessions/${sessionId}`, RESEARCHER_TOKEN);
    audioEntry = manifest.recordings.find((r) => r.id === done.recordingId);
    assert.equal(audioEntry.status, "complete");
    assert.equal(audioEntry.problem_id, "p2");
    assert.match(audioEntry.content_type, /^audio\/webm/);
    await page.close();
  });

  it("records the screen with the microphone, showing its level", async () => {
    const page = await openPage();
    await page.goto(`${server.url}/index.html?problems=s1&kind=screen&session=${sessionId}&token=${sessionToken}`);
    await page.waitForSelector("body[data-ready=true]");
    await page.click('li[data-problem="s1"] button.record');
    const during = await recordUntil(page, "s1", () => true, "screen recording");
    assert.equal(during.tracks, "audio,video", "the screen's picture and the microphone");
    // Chromium's fake microphone beeps: the meter moves.
    await waitFor(async () => Number(await page.getAttribute("#level", "aria-valuenow")) > 0, 10_000, "the level meter");
    const done = await stopAndWait(page, "s1");
    assert.match(done.mimeType, /^video\/webm/);
    const stored = storedObject(done.key);
    assert.equal(stored.sha256, done.sha256);
    const manifest = await api(`/api/sessions/${sessionId}`, sessionToken);
    assert.equal(manifest.recordings.find((r) => r.id === done.recordingId).status, "complete");
    await page.close();
  });

  it("lists the session for the researcher and plays the recordings with seeking", async () => {
    const page = await openPage();
    await page.goto(`${server.url}/researcher.html`);
    await page.waitForSelector("body[data-ready=true]");
    await page.fill("#token", RESEARCHER_TOKEN);
    await page.click('#token-form button[type="submit"]');
    const row = page.locator(`#sessions tr[data-session-id="${sessionId}"]`);
    await row.waitFor();
    const rowText = await row.textContent();
    assert.match(rowText, /e2e \/ P-042/);
    assert.match(rowText, /3 complete/);
    await row.getByRole("button", { name: `Open session ${sessionId}` }).click();
    await page.waitForSelector("#detail:not(.hidden)");

    // The video: it plays, and after the duration is learnt it seeks.
    const videoRow = page.locator(`tr[data-recording-id="${videoEntry.id}"]`);
    assert.match(await videoRow.textContent(), /complete/);
    await videoRow.getByRole("button", { name: `Play ${videoEntry.id}` }).click();
    const video = page.locator(`video[data-recording-id="${videoEntry.id}"]`);
    await video.waitFor();
    await waitFor(() => video.getAttribute("data-duration"), 60_000, "the video's duration");
    const duration = Number(await video.getAttribute("data-duration"));
    assert.ok(
      Math.abs(duration * 1000 - videoEntry.duration_ms) < 2_500,
      `media duration ${duration} s against the manifest's ${videoEntry.duration_ms} ms`,
    );
    await video.evaluate((v) => v.play());
    await waitFor(() => video.evaluate((v) => v.currentTime > 0.5), 30_000, "the video to play");
    const seekedTo = await video.evaluate(
      (v, to) => new Promise((resolve) => {
        v.addEventListener("seeked", () => resolve(v.currentTime), { once: true });
        v.currentTime = to;
      }),
      Math.min(2, duration / 2),
    );
    assert.ok(Math.abs(seekedTo - Math.min(2, duration / 2)) < 0.6, `seeked to ${seekedTo}`);
    const before = await video.evaluate((v) => v.currentTime);
    await waitFor(() => video.evaluate((v, t) => v.currentTime > t + 0.3, before), 30_000, "playback after the seek");
    await video.evaluate((v) => v.pause());

    // The audio plays too.
    await page.getByRole("button", { name: `Play ${audioEntry.id}` }).click();
    const audio = page.locator(`audio[data-recording-id="${audioEntry.id}"]`);
    await audio.waitFor();
    await waitFor(() => audio.getAttribute("data-duration"), 30_000, "the audio's duration");
    await audio.evaluate((a) => a.play());
    await waitFor(() => audio.evaluate((a) => a.currentTime > 0.3), 30_000, "the audio to play");
    await audio.evaluate((a) => a.pause());

    // The manifest download is a JSON file of this session.
    const href = await page.getAttribute("#manifest-download", "href");
    const manifest = JSON.parse(await page.evaluate((u) => fetch(u).then((r) => r.text()), href));
    assert.equal(manifest.session_id, sessionId);
    await page.screenshot({ path: join(ARTIFACTS, "researcher.png"), fullPage: true });
    await page.close();
  });

  it("cancelling a recording aborts its upload", async () => {
    const page = await openPage();
    await page.goto(`${server.url}/index.html?problems=p1&session=${sessionId}&token=${sessionToken}&vbps=${VIDEO_BPS}`);
    await page.waitForSelector("body[data-ready=true]");
    await page.click('li[data-problem="p1"] button.record');
    const during = await waitFor(async () => {
      const s = await problemState(page, "p1");
      return s.state === "recording" && Number(s.partsStored) >= 1 ? s : null;
    }, 120_000, "a part stored before cancelling");
    await page.click('li[data-problem="p1"] button.cancel');
    await waitFor(async () => (await problemState(page, "p1")).state === "cancelled", 30_000, "cancelled");
    const manifest = await api(`/api/sessions/${sessionId}`, sessionToken);
    const entry = manifest.recordings.find((r) => r.id === during.recordingId);
    assert.equal(entry.status, "aborted");
    assert.throws(() => statSync(join(dataDir, ...entry.key.split("/"))), /ENOENT/);
    await page.close();
  });

  it("retries failed part uploads, re-signs rejected ones, and pauses while offline", async () => {
    const page = await openPage();
    // The storage misbehaves once for each of the first parts: a 503, a refused
    // signature, a dropped connection.
    const faults = new Map([["1", "503"], ["2", "403"], ["3", "drop"]]);
    const attempts = [];
    await page.route("**/storage/**", async (route) => {
      const request = route.request();
      const part = new URL(request.url()).searchParams.get("part");
      if (request.method() !== "PUT" || !part) return route.continue();
      const fault = faults.get(part);
      faults.delete(part);
      attempts.push({ part, fault: fault ?? "ok" });
      if (fault === "503") return route.fulfill({ status: 503, body: "try again" });
      if (fault === "403") return route.fulfill({ status: 403, body: "signature expired" });
      if (fault === "drop") return route.abort("connectionreset");
      return route.continue();
    });
    await page.goto(`${server.url}/index.html?problems=p3&session=${sessionId}&token=${sessionToken}&vbps=${VIDEO_BPS}`);
    await page.waitForSelector("body[data-ready=true]");
    await page.click('li[data-problem="p3"] button.record');
    await waitFor(async () => Number((await problemState(page, "p3")).partsStored) >= 1, 120_000, "a first part");

    // Offline: no part is stored meanwhile, and the page says so; back online, it resumes.
    await browser.setOffline(true);
    await waitFor(() => page.$eval('li[data-problem="p3"] .detail', (d) => /offline/.test(d.textContent)), 10_000, "the offline notice");
    const storedWhenOffline = Number((await problemState(page, "p3")).partsStored);
    await new Promise((r) => setTimeout(r, 5_000));
    const whileOffline = await problemState(page, "p3");
    assert.equal(whileOffline.state, "recording");
    assert.ok(Number(whileOffline.partsStored) <= storedWhenOffline + 1, "at most a part already sent lands offline");
    await browser.setOffline(false);

    await recordUntil(page, "p3", (s) => Number(s.partsStored) >= 4, "four parts stored after the outage")
      .catch((e) => { throw new Error(`${e.message}; attempts: ${JSON.stringify(attempts)}`); });
    const done = await stopAndWait(page, "p3");
    assert.deepEqual(
      attempts.filter((a) => a.fault !== "ok").map((a) => a.fault).sort(),
      ["403", "503", "drop"],
      "every fault was met",
    );
    for (const part of ["1", "2", "3"]) {
      assert.ok(attempts.some((a) => a.part === part && a.fault === "ok"), `part ${part} was retried`);
    }
    const stored = storedObject(done.key);
    assert.equal(stored.bytes.length, Number(done.size));
    assert.equal(stored.sha256, done.sha256);
    await page.close();
  });

  it("says what is wrong with a join link or a problem list, and records only in an open session", async () => {
    const page = await openPage();
    // Before a session exists the Record buttons are disabled, and the page says why.
    await page.goto(`${server.url}/index.html?problems=p1,a/b,p1`);
    await page.waitForSelector("body[data-ready=true]");
    assert.equal(await page.isDisabled('li[data-problem="p1"] button.record'), true);
    assert.equal(await page.isVisible("#needs-session"), true);
    assert.equal(
      await page.getAttribute('li[data-problem="p1"] button.record', "aria-describedby"),
      "needs-session",
    );
    // The invalid id is named, with the rule; the valid problem stays, once.
    const problemsError = await page.textContent("#problems-error");
    assert.match(problemsError, /"a\/b" is not a valid problem id/);
    assert.match(problemsError, /letters A-Z and a-z, the digits 0-9, "-" and "_"/);
    assert.equal((await page.$$("ol.problems > li")).length, 1);
    // Once a session is open, recording is possible.
    await page.click("#create-session");
    await page.waitForSelector("#joined:not(.hidden)");
    assert.equal(await page.isDisabled('li[data-problem="p1"] button.record'), false);
    assert.equal(await page.isVisible("#needs-session"), false);

    // A join link with a wrong token, and one naming no session: no "joined", a sentence.
    for (const [query, why] of [
      [`session=${sessionId}&token=${sessionId}.0000`, /access key \(token\)/],
      [`session=no-such-session&token=${RESEARCHER_TOKEN}`, /no such session on this server/],
      [`session=${sessionId}`, /link is incomplete/],
    ]) {
      await page.goto(`${server.url}/index.html?problems=p1&${query}`);
      await page.waitForSelector("body[data-ready=true]");
      const message = await page.textContent("#session-error");
      assert.match(message, /^This link's session could not be opened: /, query);
      assert.match(message, why, query);
      assert.match(message, /Ask the study team for a new link\.$/, query);
      assert.equal(await page.textContent("#status"), message, "announced in the live region");
      assert.equal(await page.isVisible("#joined"), false, query);
      assert.equal(await page.isDisabled('li[data-problem="p1"] button.record'), true, query);
    }
    await page.close();
  });

  it("hashes in a worker, or on the page's thread where no worker can start, to the same digest", async () => {
    // 12 MiB of noise behind WebM's magic: three parts, hashed chunk by chunk.
    const bytes = Buffer.alloc(12 * MIB + 12345);
    for (let i = 0; i + 4 <= bytes.length; i += 4) bytes.writeUInt32LE((Math.imul(i, 2654435761) ^ (i >>> 7)) >>> 0, i);
    Buffer.from([0x1a, 0x45, 0xdf, 0xa3]).copy(bytes);
    const expected = createHash("sha256").update(bytes).digest("hex");
    const upload = async (page, problemId) => {
      await page.goto(`${server.url}/index.html`);
      await page.waitForSelector("body[data-ready=true]");
      return page.evaluate(async ({ problemId, base64 }) => {
        const { Recorder, createSession } = await import("./pkg/client.js");
        const data = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
        const { session_id: sessionId, token } = await createSession("", {});
        const rec = new Recorder({ token, sessionId, problemId });
        const entry = await rec.uploadBlob(new Blob([data]), "video/webm");
        return { entry, sha256: rec.sha256 };
      }, { problemId, base64: bytes.toString("base64") });
    };
    const withWorker = await openPage();
    const workers = [];
    withWorker.on("worker", (w) => workers.push(w.url()));
    const warnings = [];
    withWorker.on("console", (m) => warnings.push(m.text()));
    const a = await upload(withWorker, "h1");
    assert.equal(a.sha256, expected);
    assert.equal(a.entry.sha256, expected);
    assert.equal(storedObject(a.entry.key).sha256, expected);
    assert.ok(workers.some((url) => url.endsWith("/hash_worker.js")), `a hashing worker ran: ${workers}`);
    assert.ok(!warnings.some((t) => /hashing on the page|without a SHA-256/.test(t)), warnings.join("\n"));
    await withWorker.close();

    const noWorker = await openPage();
    await noWorker.addInitScript(() => { delete window.Worker; });
    const fallback = [];
    noWorker.on("console", (m) => fallback.push(m.text()));
    const b = await upload(noWorker, "h2");
    assert.equal(b.sha256, expected);
    assert.equal(storedObject(b.entry.key).sha256, expected);
    assert.ok(fallback.some((t) => /hashing on the page's thread/.test(t)), fallback.join("\n"));
    await noWorker.close();
  });

  it("reports errors a person can act on through the embed API", async () => {
    const page = await openPage();
    await page.goto(`${server.url}/index.html`);
    await page.waitForSelector("body[data-ready=true]");
    const outcome = await page.evaluate(async ({ sessionId, sessionToken }) => {
      const { Recorder } = await import("./pkg/client.js");
      const results = {};
      const events = [];
      const noCamera = new Recorder({
        token: sessionToken, sessionId, problemId: "p9", kind: "av", deviceId: "no-such-camera",
      });
      noCamera.on("error", (reason) => events.push(reason.code));
      try { await noCamera.start(); } catch (e) { results.noCamera = { code: e.code, message: e.message, state: noCamera.state }; }
      const badToken = new Recorder({ token: "not-a-token", sessionId, problemId: "p9", kind: "audio" });
      try { await badToken.start(); } catch (e) { results.badToken = { code: e.code, message: e.message }; }
      try { new Recorder({ token: "t", sessionId: "../etc", problemId: "p9" }); } catch (e) { results.badId = e.message; }
      try { new Recorder({ token: "t", sessionId, problemId: "p9", kind: "webcam" }); } catch (e) { results.badKind = e.message; }
      results.events = events;
      return results;
    }, { sessionId, sessionToken });
    assert.equal(outcome.noCamera.code, "no_device");
    assert.equal(outcome.noCamera.state, "failed");
    assert.match(outcome.noCamera.message, /No camera or microphone/);
    assert.deepEqual(outcome.events, ["no_device"]);
    assert.equal(outcome.badToken.code, "server_error");
    assert.match(outcome.badToken.message, /40[13].*token/);
    assert.match(outcome.badId, /session id/);
    assert.match(outcome.badKind, /kind must be/);
    await page.close();
  });
});
