// Browser end-to-end on S3: the real server with STORAGE_BACKEND=s3 on a real Garage
// node, the page served by the server on one port and the bucket's S3 API on another, so
// every part upload is a cross-origin request that Garage's CORS rules must admit.
// Shows that the media goes straight from the browser to the bucket: the server's
// /storage routes are not mounted, no request to the server carries more than a little
// JSON, and DATA_DIR stays empty.
//
//   cargo build -p server --bin recorder-server --example garage_test_node
//   scripts/dev web && node --test e2e/s3.test.mjs
//
// The Garage node comes from the Rust test harness run as a process
// (server/examples/garage_test_node.rs); it stops when this process closes its stdin.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import {
  startGarage,
  RESEARCHER_TOKEN,
  ROOT,
  launchBrowser,
  serverBinary,
  startServer,
  tempDir,
  waitFor,
  writeNoiseY4m,
} from "./harness.js";

const MIB = 1024 * 1024;
const VIDEO_BPS = 8_000_000;
const SERVER_SECRET = randomBytes(32).toString("hex");

/** Runs `recorder-server setup-s3` with `env`; resolves with its output. */
function setupS3(env) {
  const run = spawnSync(serverBinary(), ["setup-s3", "--abort-after-days", "2"], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, HOME: process.env.HOME ?? "/tmp", ...env },
    encoding: "utf8",
  });
  assert.equal(run.status, 0, `setup-s3 failed:\n${run.stdout}\n${run.stderr}`);
  return run.stdout;
}

/** Whether the page may PUT to `url` cross-origin (CORS admits it), whatever the answer. */
function corsAdmitsPut(page, url) {
  return page.evaluate(async (u) => {
    try {
      await fetch(u, { method: "PUT", body: "probe", headers: { "Content-Type": "text/plain" } });
      return true;
    } catch {
      return false; // A refused preflight is a network error, never a response.
    }
  }, url);
}

function problemState(page, problem) {
  return page.$eval(`li[data-problem="${problem}"]`, (li) => ({
    ...li.dataset,
    error: li.querySelector(".problem-error").textContent,
  }));
}

describe("recording straight to S3 (Garage), cross-origin", { timeout: 600_000 }, () => {
  let temp;
  let garage;
  let server;
  let browser;
  let dataDir;
  let s3Env;
  const toServer = []; // promises of {method, url, bytes}: every request to the server
  const toBucket = []; // the same for every request to Garage

  before(async () => {
    temp = tempDir("recorder-e2e-s3-");
    dataDir = join(temp.dir, "data");
    const y4m = join(temp.dir, "noise.y4m");
    await writeNoiseY4m(y4m, { width: 640, height: 480, frames: 30 });
    garage = await startGarage();
    s3Env = {
      STORAGE_BACKEND: "s3",
      S3_BUCKET: garage.bucket,
      S3_ENDPOINT: garage.endpoint,
      S3_REGION: garage.region,
      AWS_ACCESS_KEY_ID: garage.access_key_id,
      AWS_SECRET_ACCESS_KEY: garage.secret_access_key,
      SERVER_SECRET,
      RESEARCHER_TOKEN,
    };
    server = await startServer(dataDir, s3Env);
    browser = await launchBrowser(y4m, join(temp.dir, "profile"));
    // Body sizes as sent on the wire (Content-Length): Playwright does not report the
    // bytes of Blob bodies, which is what the client sends parts as.
    browser.on("request", (request) => {
      const entry = (async () => {
        const headers = await request.allHeaders();
        const bytes = Number(headers["content-length"] ?? request.postDataBuffer()?.length ?? 0);
        return { method: request.method(), url: request.url(), bytes };
      })();
      if (request.url().startsWith(server.url)) toServer.push(entry);
      if (request.url().startsWith(garage.endpoint)) toBucket.push(entry);
    });
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    await garage?.stop();
    temp?.cleanup();
  });

  it("refuses the page until setup-s3 sets the bucket's CORS rule, which the start-up check asked for", async () => {
    // The server said at start-up what was missing, and how to fix it.
    await waitFor(() => server.logs.join("").includes("has no CORS rules"), 10_000, "the start-up check's line");
    assert.match(server.logs.join(""), /setup-s3/);

    const page = await browser.newPage();
    await page.goto(`${server.url}/index.html`);
    const probe = `${garage.endpoint}/${garage.bucket}/cors-probe`;
    assert.equal(await corsAdmitsPut(page, probe), false, "Garage refuses cross-origin PUTs without a CORS rule");

    const out = setupS3({ ...s3Env, PUBLIC_URL: server.url });
    assert.match(out, /CORS rule/);
    assert.match(out, /lifecycle rule/);
    assert.equal(await corsAdmitsPut(page, probe), true, "the CORS rule admits the page's origin");
    await page.close();
  });

  it("uploads the parts from the browser to the bucket while recording, and none through the server", async () => {
    const page = await browser.newPage();
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    await page.goto(`${server.url}/index.html?problems=p1&study=e2e-s3&vbps=${VIDEO_BPS}`);
    await page.waitForSelector("body[data-ready=true]");
    await page.click("#create-session");
    await page.waitForSelector("#joined:not(.hidden)");
    const sessionId = new URL(page.url()).searchParams.get("session");

    const started = Date.now();
    await page.click('li[data-problem="p1"] button.record');
    const during = await waitFor(async () => {
      const s = await problemState(page, "p1");
      assert.ok(!["failed", "cancelled"].includes(s.state), `recording ended early: ${s.error}`);
      return s.state === "recording" && Number(s.partsStored) >= 2 ? s : null;
    }, 120_000, "two parts stored in the bucket while recording");
    assert.ok(Number(during.bytesStored) >= 2 * 5 * MIB);
    const stoppedAt = Date.now();
    await page.click('li[data-problem="p1"] button.stop');
    const done = await waitFor(async () => {
      const s = await problemState(page, "p1");
      return ["complete", "failed"].includes(s.state) ? s : null;
    }, 120_000, "p1 to complete");
    assert.equal(done.state, "complete", `upload did not complete: ${done.error}`);
    assert.deepEqual(pageErrors, []);
    const size = Number(done.size);
    assert.ok(size > 2 * 5 * MIB, `${size} bytes`);

    // Every part went to Garage, cross-origin; nothing but small JSON went to the server.
    const toBucketDone = await Promise.all(toBucket);
    const toServerDone = await Promise.all(toServer);
    const partPuts = toBucketDone.filter((r) => r.method === "PUT" && /[?&]partNumber=/.test(r.url));
    assert.ok(partPuts.length >= 3, `${partPuts.length} part PUTs to the bucket`);
    const putBytes = partPuts.reduce((n, r) => n + r.bytes, 0);
    assert.ok(putBytes >= size, `${putBytes} bytes PUT to the bucket for a ${size}-byte recording`);
    const serverBytes = toServerDone.reduce((n, r) => n + r.bytes, 0);
    assert.ok(serverBytes < 64 * 1024, `${serverBytes} bytes sent to the server`);
    assert.ok(toServerDone.every((r) => !r.url.includes("/storage/")), "no request to /storage");
    assert.equal(toServerDone.filter((r) => r.method === "PUT").length, 0, "no PUT to the server");

    // The server plays no bucket in s3 mode, and kept nothing on its disk.
    const storageUrl = `${server.url}/storage/sessions/${sessionId}/x.webm?op=put&len=1`;
    const put = await fetch(storageUrl, { method: "PUT", body: "x" });
    assert.ok([404, 405].includes(put.status), `PUT /storage answers ${put.status} in s3 mode`);
    assert.equal((await fetch(storageUrl)).status, 404, "GET /storage answers 404 in s3 mode");
    assert.ok(!existsSync(dataDir) || readdirSync(dataDir).length === 0, "DATA_DIR stays empty");

    // The object in the bucket is the recording the page made: size, SHA-256, magic.
    const manifest = await (await fetch(`${server.url}/api/sessions/${sessionId}`, {
      headers: { Authorization: `Bearer ${RESEARCHER_TOKEN}` },
    })).json();
    const entry = manifest.recordings.find((r) => r.id === done.recordingId);
    assert.equal(entry.status, "complete");
    assert.equal(entry.size, size);
    assert.equal(entry.sha256, done.sha256);
    assert.ok(entry.duration_ms > 2_000 && entry.duration_ms <= stoppedAt - started + 1_000);
    const playUrl = async (download) => {
      const res = await fetch(
        `${server.url}/api/sessions/${sessionId}/recordings/${entry.id}/url${download ? "?download=true" : ""}`,
        { headers: { Authorization: `Bearer ${RESEARCHER_TOKEN}` } },
      );
      assert.equal(res.status, 200);
      return (await res.json()).url;
    };
    const url = await playUrl(false);
    assert.ok(url.startsWith(`${garage.endpoint}/${garage.bucket}/`), url);
    const whole = Buffer.from(await (await fetch(url)).arrayBuffer());
    assert.equal(whole.length, size);
    assert.equal(createHash("sha256").update(whole).digest("hex"), done.sha256);
    assert.deepEqual([...whole.subarray(0, 4)], [0x1a, 0x45, 0xdf, 0xa3]);
    const ranged = await fetch(url, { headers: { Range: "bytes=0-1023" } });
    assert.equal(ranged.status, 206);
    assert.equal((await ranged.arrayBuffer()).byteLength, 1024);
    const download = await fetch(await playUrl(true));
    assert.match(download.headers.get("content-disposition"), /^attachment; filename="/);

    // A bare <video> on the page plays the presigned URL from the bucket and seeks.
    const played = await page.evaluate(async (src) => {
      const v = document.createElement("video");
      v.muted = true;
      v.src = src;
      document.body.append(v);
      await new Promise((ok, fail) => {
        v.addEventListener("loadedmetadata", ok, { once: true });
        v.addEventListener("error", () => fail(new Error(`video error ${v.error?.code}`)), { once: true });
      });
      await v.play();
      await new Promise((ok) => setTimeout(ok, 1000));
      const playedTo = v.currentTime;
      const seeked = await new Promise((ok) => {
        v.addEventListener("seeked", () => ok(v.currentTime), { once: true });
        v.currentTime = 1.5;
      });
      v.pause();
      return { playedTo, seeked };
    }, url);
    assert.ok(played.playedTo > 0.3, `played to ${played.playedTo} s`);
    assert.ok(Math.abs(played.seeked - 1.5) < 0.6, `seeked to ${played.seeked} s`);
    await page.close();
  });
});
