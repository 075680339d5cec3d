// Network faults: a webcam recording made in Chromium while a fault-injecting proxy
// (faultproxy.js) sits between the browser and the server, and between the browser and
// the bucket. Part uploads are reset halfway, answers are lost after the request was
// handled, connections stall and are dropped, and twice the network goes away entirely
// (once refusing connections, once swallowing every byte). The recording must complete,
// and the stored object must be byte for byte what the page recorded (its SHA-256).
//
// On local storage the page reaches the server through one proxy, and PUBLIC_URL is that
// proxy, so the presigned /storage URLs go through it too. On Garage the page reaches the
// server through one proxy and the bucket through another (S3_PUBLIC_ENDPOINT).
//
//   cargo build -p server --bin recorder-server --example garage_test_node
//   scripts/dev web && node --test e2e/faults.test.mjs
//
// Every fault injected is counted; the counts are printed as test diagnostics and kept
// in e2e/artifacts/faults-{local,garage}.json.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  startGarage,
  ARTIFACTS,
  RESEARCHER_TOKEN,
  ROOT,
  launchBrowser,
  serverBinary,
  startServer,
  tempDir,
  waitFor,
  writeNoiseY4m,
} from "./harness.js";
import { FaultProxy } from "./faultproxy.js";

const MIB = 1024 * 1024;
// Noise at 8 Mbit/s fills a 5 MiB part every five seconds or so.
const VIDEO_BPS = 8_000_000;
// How long each offline stretch lasts: long enough that every request in flight and
// every retry meanwhile fails, several times over.
// (FAULTS_REFUSED_MS and FAULTS_BLACKHOLE_MS override them.)
const REFUSED_MS = Number(process.env.FAULTS_REFUSED_MS ?? 30_000);
const BLACKHOLE_MS = Number(process.env.FAULTS_BLACKHOLE_MS ?? 10_000);
// Parts the recording must reach before it is stopped (about 35 MiB).
const PARTS = 7;

// The faults on the path that carries the parts (the bytes are spaced so that a
// recording of ~35 MiB, plus its retries, meets several of each).
const PART_PATH_FAULTS = {
  resetEveryBytes: [5 * MIB, 12 * MIB],
  stallEveryBytes: [4 * MIB, 10 * MIB],
  stallMs: [1_500, 4_000],
  dropEveryConnections: [3, 6],
  lostReplyEveryAnswers: [5, 10],
};
// The faults on the path of the small JSON calls alone (Garage: presign, complete).
const API_PATH_FAULTS = {
  dropEveryConnections: [2, 4],
  lostReplyEveryAnswers: [3, 6],
};

function problemState(page, problem) {
  return page.$eval(`li[data-problem="${problem}"]`, (li) => ({
    ...li.dataset,
    error: li.querySelector(".problem-error").textContent,
  }));
}

/** Waits until the recording of `problem` satisfies `enough`, failing if it ends early. */
function recordUntil(page, problem, enough, what, ms = 120_000) {
  return waitFor(async () => {
    const s = await problemState(page, problem);
    assert.ok(!["failed", "cancelled"].includes(s.state), `recording ended early: ${s.error}`);
    return s.state === "recording" && enough(s) ? s : null;
  }, ms, what);
}

/**
 * Records one webcam problem on the page at `pageUrl` while `proxies` misbehave: faults
 * from the first stored part on, a refused stretch, a blackholed stretch, faults through
 * the stop and the complete. Returns the page's final state of the problem.
 */
async function recordThroughFaults(browser, pageUrl, proxies, log) {
  const page = await browser.newPage();
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(e.message));
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") log.push(`console ${m.type()}: ${m.text()}`);
  });
  await page.goto(`${pageUrl}/index.html?problems=f1&study=e2e-faults&vbps=${VIDEO_BPS}`);
  await page.waitForSelector("body[data-ready=true]");
  await page.click("#create-session");
  await page.waitForSelector("#joined:not(.hidden)");
  const sessionId = new URL(page.url()).searchParams.get("session");

  const started = Date.now();
  const mark = (what) => log.push(`${((Date.now() - started) / 1000).toFixed(1)} s: ${what}`);
  await page.click('li[data-problem="f1"] button.record');
  await recordUntil(page, "f1", (s) => Number(s.partsStored) >= 1, "a first part stored");
  mark("first part stored; faults on");
  for (const { proxy, faults } of proxies) proxy.setFaults(faults);

  await recordUntil(page, "f1", (s) => Number(s.partsStored) >= 2, "a second part stored under faults");
  mark(`second part stored; refusing every connection for ${REFUSED_MS / 1000} s`);
  const refused = Promise.all(proxies.map(({ proxy }) => proxy.offline(REFUSED_MS, "refuse")));
  // A part whose answer was on its way as the stretch began may still be counted.
  await new Promise((r) => setTimeout(r, 1_000));
  const refusedAt = await problemState(page, "f1");
  await refused;
  const afterRefused = await problemState(page, "f1");
  assert.equal(afterRefused.state, "recording", `after the refused stretch: ${afterRefused.error}`);
  assert.equal(afterRefused.partsStored, refusedAt.partsStored, "no part is stored while every connection is refused");

  await recordUntil(page, "f1", (s) => Number(s.partsStored) >= Number(afterRefused.partsStored) + 1, "a part stored after the refused stretch");
  mark(`a part stored after it; blackholing every byte for ${BLACKHOLE_MS / 1000} s`);
  await Promise.all(proxies.map(({ proxy }) => proxy.offline(BLACKHOLE_MS, "blackhole")));

  const during = await recordUntil(page, "f1", (s) => Number(s.partsStored) >= PARTS, `${PARTS} parts stored`);
  mark(`${during.partsStored} parts stored; stopping (faults still on)`);
  await page.click('li[data-problem="f1"] button.stop');
  const done = await waitFor(async () => {
    const s = await problemState(page, "f1");
    return ["complete", "failed"].includes(s.state) ? s : null;
  }, 120_000, "the upload to complete");
  mark(`ended: ${done.state} ${done.error}`);
  for (const { proxy } of proxies) proxy.clearFaults();
  assert.equal(done.state, "complete", `upload did not complete: ${done.error}\n${log.join("\n")}`);
  assert.deepEqual(pageErrors, []);
  await page.close();
  return { ...done, sessionId };
}

/** What each proxy injected, as diagnostics and an artifact; asserts every kind was met. */
function reportFaults(t, name, proxies, partPath, log) {
  const counts = Object.fromEntries(proxies.map(({ proxy }) => [proxy.name, proxy.counts]));
  for (const { proxy } of proxies) t.diagnostic(proxy.summary());
  mkdirSync(ARTIFACTS, { recursive: true });
  writeFileSync(join(ARTIFACTS, `faults-${name}.json`), JSON.stringify({ counts, log }, null, 2));
  const c = partPath.counts;
  assert.ok(c.resets >= 1, `part uploads were reset mid-request (${c.resets})`);
  assert.ok(c.stalls >= 1, `connections stalled (${c.stalls})`);
  assert.ok(c.drops >= 1, `connections were dropped (${c.drops})`);
  assert.ok(c.lostReplies >= 1, `answers were lost (${c.lostReplies})`);
  for (const { proxy } of proxies) {
    assert.equal(proxy.counts.refusedStretches, 1);
    assert.equal(proxy.counts.blackholeStretches, 1);
  }
}

async function researcherGet(base, path) {
  const res = await fetch(`${base}${path}`, { headers: { Authorization: `Bearer ${RESEARCHER_TOKEN}` } });
  assert.equal(res.status, 200, `${path}: ${res.status}`);
  return res.json();
}

/** Checks the manifest entry against what the page saw; returns the entry. */
async function checkManifest(serverUrl, done) {
  const manifest = await researcherGet(serverUrl, `/api/sessions/${done.sessionId}`);
  const entry = manifest.recordings.find((r) => r.id === done.recordingId);
  assert.ok(entry, "the recording is in the manifest");
  assert.equal(entry.status, "complete");
  assert.equal(entry.size, Number(done.size));
  assert.equal(entry.sha256, done.sha256);
  // Faults came after the upload was opened, so no retry opened a second one.
  assert.equal(manifest.recordings.length, 1, JSON.stringify(manifest.recordings));
  return entry;
}

function sha256(bytes) {
  return createHash("sha256").update(bytes).digest("hex");
}

describe("network faults on local storage", { timeout: 240_000 }, () => {
  let temp;
  let server;
  let browser;
  let proxy;
  const log = [];

  before(async () => {
    temp = tempDir("recorder-e2e-faults-");
    const y4m = join(temp.dir, "noise.y4m");
    await writeNoiseY4m(y4m, { width: 640, height: 480, frames: 30 });
    // The proxy listens first: the server must sign its /storage URLs for it.
    proxy = new FaultProxy("browser<->server (API and /storage)", 20_251);
    await proxy.listen();
    server = await startServer(join(temp.dir, "data"), { PUBLIC_URL: proxy.url });
    proxy.setTarget(server.url);
    browser = await launchBrowser(y4m, join(temp.dir, "profile"));
  });

  after(async () => {
    await browser?.close();
    await proxy?.close();
    await server?.stop();
    if (server) writeFileSync(join(ARTIFACTS, "faults-local-server.log"), server.logs.join(""));
    temp?.cleanup();
  });

  it("completes a recording through resets, stalls, drops, lost answers and two offline stretches, byte for byte", async (t) => {
    const proxies = [{ proxy, faults: PART_PATH_FAULTS }];
    const done = await recordThroughFaults(browser, proxy.url, proxies, log);
    reportFaults(t, "local", proxies, proxy, log);

    const size = Number(done.size);
    assert.ok(size >= PARTS * 5 * MIB, `${size} bytes`);
    assert.equal(size, Number(done.bytesRecorded), "every recorded byte was stored");
    const stored = readFileSync(join(temp.dir, "data", ...done.key.split("/")));
    assert.equal(stored.length, size);
    assert.equal(sha256(stored), done.sha256, "the stored bytes are the recorded bytes");
    assert.deepEqual([...stored.subarray(0, 4)], [0x1a, 0x45, 0xdf, 0xa3]);
    await checkManifest(server.url, done);
    t.diagnostic(`stored ${(size / MIB).toFixed(1)} MiB, sha256 ${done.sha256}`);
  });
});

describe("network faults on S3 (Garage)", { timeout: 300_000 }, () => {
  let temp;
  let garage;
  let server;
  let browser;
  let apiProxy;
  let s3Proxy;
  const log = [];

  before(async () => {
    temp = tempDir("recorder-e2e-faults-s3-");
    const y4m = join(temp.dir, "noise.y4m");
    await writeNoiseY4m(y4m, { width: 640, height: 480, frames: 30 });
    garage = await startGarage();
    apiProxy = new FaultProxy("browser<->server (API)", 7_001);
    s3Proxy = new FaultProxy("browser<->Garage (parts)", 7_002);
    await apiProxy.listen();
    await s3Proxy.listen();
    s3Proxy.setTarget(garage.endpoint);
    const env = {
      STORAGE_BACKEND: "s3",
      S3_BUCKET: garage.bucket,
      S3_ENDPOINT: garage.endpoint,
      S3_PUBLIC_ENDPOINT: s3Proxy.url,
      S3_REGION: garage.region,
      AWS_ACCESS_KEY_ID: garage.access_key_id,
      AWS_SECRET_ACCESS_KEY: garage.secret_access_key,
      AWS_EC2_METADATA_DISABLED: "true",
      SERVER_SECRET: randomBytes(32).toString("hex"),
      RESEARCHER_TOKEN,
      PUBLIC_URL: apiProxy.url,
    };
    // The bucket's CORS rule admits the page's origin: the proxy's.
    const setup = spawnSync(serverBinary(), ["setup-s3"], {
      cwd: ROOT,
      env: { PATH: process.env.PATH, HOME: process.env.HOME ?? "/tmp", ...env },
      encoding: "utf8",
    });
    assert.equal(setup.status, 0, `setup-s3 failed:\n${setup.stdout}\n${setup.stderr}`);
    server = await startServer(join(temp.dir, "data"), env);
    apiProxy.setTarget(server.url);
    browser = await launchBrowser(y4m, join(temp.dir, "profile"));
  });

  after(async () => {
    await browser?.close();
    await apiProxy?.close();
    await s3Proxy?.close();
    await server?.stop();
    if (server) writeFileSync(join(ARTIFACTS, "faults-garage-server.log"), server.logs.join(""));
    await garage?.stop();
    temp?.cleanup();
  });

  it("completes a recording through faults on both paths, byte for byte in the bucket", async (t) => {
    const proxies = [
      { proxy: apiProxy, faults: API_PATH_FAULTS },
      { proxy: s3Proxy, faults: PART_PATH_FAULTS },
    ];
    const done = await recordThroughFaults(browser, apiProxy.url, proxies, log);
    reportFaults(t, "garage", proxies, s3Proxy, log);
    assert.ok(apiProxy.counts.drops + apiProxy.counts.lostReplies >= 1, "the API path met faults too");

    const size = Number(done.size);
    assert.ok(size >= PARTS * 5 * MIB, `${size} bytes`);
    assert.equal(size, Number(done.bytesRecorded), "every recorded byte was stored");
    const entry = await checkManifest(server.url, done);
    // The object, read back from the bucket (through the proxy, now quiet: the URL is
    // signed for the host the browser uses).
    const { url } = await researcherGet(server.url, `/api/sessions/${done.sessionId}/recordings/${entry.id}/url`);
    assert.ok(url.startsWith(`${s3Proxy.url}/${garage.bucket}/`), url);
    const stored = Buffer.from(await (await fetch(url)).arrayBuffer());
    assert.equal(stored.length, size);
    assert.equal(sha256(stored), done.sha256, "the object in the bucket is the recorded bytes");
    assert.deepEqual([...stored.subarray(0, 4)], [0x1a, 0x45, 0xdf, 0xa3]);
    t.diagnostic(`stored ${(size / MIB).toFixed(1)} MiB in the bucket, sha256 ${done.sha256}`);
  });
});
