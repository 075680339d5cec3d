// Crashes: the server is killed with SIGKILL while Chromium records and uploads to it
// (local storage, parts in flight), then started again on the same DATA_DIR and port.
// The page must carry on by itself (its retries meet a dead server, then a new one),
// complete the recording byte for byte, and every session.json and manifest event left
// on disk must stay whole JSON at every moment, including right after each kill.
//
// The page reaches the server through faultproxy.js with a slow uplink (2 MiB/s per
// connection), so that part uploads take seconds and a kill lands in the middle of one.
//
//   cargo build -p server --bin recorder-server
//   scripts/dev web && node --test e2e/crash.test.mjs
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { once } from "node:events";
import {
  ARTIFACTS,
  RESEARCHER_TOKEN,
  launchBrowser,
  startServer,
  tempDir,
  waitFor,
  writeNoiseY4m,
} from "./harness.js";
import { FaultProxy } from "./faultproxy.js";

const MIB = 1024 * 1024;
const VIDEO_BPS = 8_000_000;
// How long the server stays dead after each kill.
const DOWN_MS = 3_000;

function problemState(page, problem) {
  return page.$eval(`li[data-problem="${problem}"]`, (li) => ({
    ...li.dataset,
    error: li.querySelector(".problem-error").textContent,
  }));
}

/**
 * Reads every file of the data folder: each session.json and each manifest event must
 * parse as JSON. Returns the counts, and the temporary files a kill left behind.
 */
function auditDataDir(dataDir) {
  const found = { manifests: 0, events: 0, tempFiles: [] };
  const walk = (dir) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) {
        walk(path);
        continue;
      }
      const rel = relative(dataDir, path);
      if (name.startsWith(".tmp-")) {
        found.tempFiles.push(rel);
      } else if (name === "session.json" || (rel.includes("/events/") && name.endsWith(".json"))) {
        const text = readFileSync(path, "utf8");
        try {
          JSON.parse(text);
        } catch (e) {
          assert.fail(`${rel} is not whole JSON (${e.message}): ${text.slice(0, 200)}`);
        }
        if (name === "session.json") found.manifests += 1;
        else found.events += 1;
      }
    }
  };
  walk(dataDir);
  return found;
}

describe("kill -9 of the server during a recording", { timeout: 240_000 }, () => {
  let temp;
  let dataDir;
  let server;
  let browser;
  let proxy;
  let port;
  const log = [];
  const serverLogs = [];

  const serverEnv = () => ({ PUBLIC_URL: proxy.url, ...(port ? { BIND_ADDR: `127.0.0.1:${port}` } : {}) });

  before(async () => {
    temp = tempDir("recorder-e2e-crash-");
    dataDir = join(temp.dir, "data");
    const y4m = join(temp.dir, "noise.y4m");
    await writeNoiseY4m(y4m, { width: 640, height: 480, frames: 30 });
    proxy = new FaultProxy("browser<->server", 9_009);
    await proxy.listen();
    server = await startServer(dataDir, serverEnv());
    port = Number(new URL(server.url).port);
    proxy.setTarget(server.url);
    proxy.setFaults({ uplinkBytesPerSecond: 2 * MIB });
    browser = await launchBrowser(y4m, join(temp.dir, "profile"));
  });

  after(async () => {
    await browser?.close();
    await proxy?.close();
    await server?.stop();
    if (server) serverLogs.push(server.logs.join(""));
    writeFileSync(join(ARTIFACTS, "crash-server.log"), serverLogs.join("\n----- restart -----\n"));
    writeFileSync(join(ARTIFACTS, "crash.log"), log.join("\n"));
    temp?.cleanup();
  });

  /** SIGKILL, a check of the folder while no server runs, a pause, a restart. */
  async function killAndRestart(what) {
    const { child } = server;
    child.kill("SIGKILL");
    const [, signal] = await once(child, "exit");
    assert.equal(signal, "SIGKILL");
    serverLogs.push(server.logs.join(""));
    const audit = auditDataDir(dataDir);
    log.push(`killed ${what}; on disk: ${audit.manifests} manifests, ${audit.events} events, all whole; ` +
      `${audit.tempFiles.length} temporary files (${audit.tempFiles.join(", ")})`);
    await new Promise((r) => setTimeout(r, DOWN_MS));
    server = await startServer(dataDir, serverEnv());
    assert.equal(server.url, `http://127.0.0.1:${port}`, "restarted on the same port");
    return audit;
  }

  it("carries on after kill -9 with parts in flight and a restart on the same folder and port, and completes byte for byte", async (t) => {
    const page = await browser.newPage();
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    // Part uploads in flight, by request, and the ones the kills cut.
    const inFlight = new Map();
    let cut = 0;
    const isPart = (r) => r.method() === "PUT" && r.url().includes("/storage/");
    page.on("request", (r) => { if (isPart(r)) inFlight.set(r, Date.now()); });
    page.on("requestfinished", (r) => inFlight.delete(r));
    page.on("requestfailed", (r) => { if (inFlight.delete(r)) cut += 1; });
    /** Waits for a part upload that has been sending for a while; returns how many are in flight. */
    const partInFlight = () => waitFor(() => {
      const now = Date.now();
      const long = [...inFlight.values()].filter((since) => now - since > 500).length;
      return long > 0 ? inFlight.size : 0;
    }, 60_000, "a part upload in flight");

    await page.goto(`${proxy.url}/index.html?problems=c1&study=e2e-crash&vbps=${VIDEO_BPS}`);
    await page.waitForSelector("body[data-ready=true]");
    await page.click("#create-session");
    await page.waitForSelector("#joined:not(.hidden)");
    const sessionId = new URL(page.url()).searchParams.get("session");
    await page.click('li[data-problem="c1"] button.record');

    const kills = [];
    for (const round of [1, 2]) {
      const before = await waitFor(async () => {
        const s = await problemState(page, "c1");
        assert.ok(!["failed", "cancelled"].includes(s.state), `recording ended early: ${s.error}`);
        return s.state === "recording" && Number(s.partsStored) >= round ? s : null;
      }, 120_000, `part ${round} stored`);
      const flying = await partInFlight();
      kills.push(flying);
      await killAndRestart(`while recording, ${flying} part uploads in flight, ${before.partsStored} parts stored`);
      // The page carries on by itself: a later part reaches the new server.
      await waitFor(async () => {
        const s = await problemState(page, "c1");
        assert.ok(!["failed", "cancelled"].includes(s.state), `recording failed after the kill: ${s.error}`);
        return Number(s.partsStored) > Number(before.partsStored) ? s : null;
      }, 120_000, `a part stored after restart ${round}`);
      log.push(`restart ${round}: the page stored a part on the new server`);
    }

    // The third kill comes after Stop, while the last parts are still being sent (a
    // slower uplink makes sure the last one takes a while).
    proxy.setFaults({ uplinkBytesPerSecond: MIB / 2 });
    await page.click('li[data-problem="c1"] button.stop');
    const flying = await partInFlight();
    kills.push(flying);
    await killAndRestart(`after Stop, ${flying} part uploads in flight`);
    proxy.setFaults({ uplinkBytesPerSecond: 2 * MIB });
    const done = await waitFor(async () => {
      const s = await problemState(page, "c1");
      return ["complete", "failed"].includes(s.state) ? s : null;
    }, 120_000, "the upload to complete");
    log.push(`ended: ${done.state} ${done.error}`);
    assert.equal(done.state, "complete", `upload did not complete: ${done.error}\n${log.join("\n")}`);
    assert.deepEqual(pageErrors, []);
    assert.ok(kills.every((n) => n >= 1), `every kill had part uploads in flight: ${kills}`);
    assert.ok(cut >= 1, "the kills cut part uploads short");

    const size = Number(done.size);
    assert.equal(size, Number(done.bytesRecorded), "every recorded byte was stored");
    const stored = readFileSync(join(dataDir, ...done.key.split("/")));
    assert.equal(stored.length, size);
    assert.equal(createHash("sha256").update(stored).digest("hex"), done.sha256);
    const res = await fetch(`${server.url}/api/sessions/${sessionId}`, { headers: { Authorization: `Bearer ${RESEARCHER_TOKEN}` } });
    assert.equal(res.status, 200);
    const manifest = await res.json();
    const entry = manifest.recordings.find((r) => r.id === done.recordingId);
    assert.equal(entry.status, "complete");
    assert.equal(entry.sha256, done.sha256);
    assert.equal(entry.size, size);
    const audit = auditDataDir(dataDir);
    log.push(`at the end: ${audit.manifests} manifests, ${audit.events} events, all whole; ${audit.tempFiles.length} temporary files`);
    for (const line of log) t.diagnostic(line);
    t.diagnostic(`3 kills with ${kills.join(", ")} part uploads in flight; ${cut} part requests cut; ` +
      `stored ${(size / MIB).toFixed(1)} MiB, sha256 ${done.sha256}`);
    await page.close();
  });
});
