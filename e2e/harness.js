// Shared pieces of the browser tests: a noise video for Chromium's fake camera, the real
// server binary on port 0 with a temporary DATA_DIR, and headless Debian chromium
// through playwright-core (never a downloaded browser).
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

export const E2E_DIR = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(E2E_DIR, "..");
export const ARTIFACTS = join(E2E_DIR, "artifacts");
// Created here, once, so that every test can write its screenshots and logs (the folder is
// not in git: a fresh clone has none).
mkdirSync(ARTIFACTS, { recursive: true });
export const RESEARCHER_TOKEN = "e2e-researcher-token-0123456789";

/** A fresh temporary directory, removed by the returned cleanup. */
export function tempDir(prefix) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * Writes a Y4M (I420) video of random noise. Noise does not compress, so Chromium's
 * fake camera fed with it makes MediaRecorder run at the bitrate it is asked for.
 */
export async function writeNoiseY4m(path, { width = 640, height = 480, frames = 30, fps = 30 } = {}) {
  const out = createWriteStream(path);
  out.write(`YUV4MPEG2 W${width} H${height} F${fps}:1 Ip A1:1 C420jpeg\n`);
  const frameBytes = (width * height * 3) / 2;
  for (let i = 0; i < frames; i++) {
    out.write("FRAME\n");
    if (!out.write(randomBytes(frameBytes))) await once(out, "drain");
  }
  out.end();
  await once(out, "finish");
}

/** The server binary cargo built (`cargo build -p server`), debug or release. */
export function serverBinary() {
  const candidates = [
    process.env.RECORDER_SERVER_BIN,
    join(ROOT, "target", "debug", "recorder-server"),
    join(ROOT, "target", "release", "recorder-server"),
  ].filter(Boolean);
  const found = candidates.find((p) => existsSync(p));
  if (!found) {
    throw new Error(`recorder-server is not built (looked at ${candidates.join(", ")}); run cargo build -p server`);
  }
  return found;
}

/**
 * Starts the real server on 127.0.0.1:0 with local storage in `dataDir`, serving the
 * repository's www/. Resolves with {url, stop, logs, child} once it prints its address.
 */
export async function startServer(dataDir, extraEnv = {}) {
  const child = spawn(serverBinary(), ["serve"], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME ?? "/tmp",
      BIND_ADDR: "127.0.0.1:0",
      STORAGE_BACKEND: "local",
      DATA_DIR: dataDir,
      WWW_DIR: join(ROOT, "www"),
      RESEARCHER_TOKEN,
      LOG: "info",
      ...extraEnv,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs = [];
  child.stderr.on("data", (d) => logs.push(d.toString()));
  const url = await new Promise((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${logs.join("")}`)), 30_000);
    let buffered = "";
    child.stdout.on("data", (d) => {
      buffered += d.toString();
      logs.push(d.toString());
      const m = buffered.match(/recorder listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (m) {
        clearTimeout(timer);
        resolveUrl(m[1]);
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}:\n${logs.join("")}`));
    });
  });
  const stop = async () => {
    if (child.exitCode === null) {
      child.kill("SIGTERM");
      await once(child, "exit");
    }
  };
  return { url, stop, logs, child };
}

/** Launches headless Debian chromium with a fake camera and microphone fed by `y4m`. */
export async function launchBrowser(y4m, userDataDir) {
  mkdirSync(userDataDir, { recursive: true });
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1100, height: 900 },
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--use-fake-ui-for-media-stream",
      "--use-fake-device-for-media-stream",
      `--use-file-for-fake-video-capture=${y4m}`,
      "--autoplay-policy=no-user-gesture-required",
    ],
  });
}

/** Polls `fn` until it returns a truthy value or `ms` pass. */
export async function waitFor(fn, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * Starts a Garage node with one bucket through the Rust harness; resolves with
 * {endpoint, region, bucket, access_key_id, secret_access_key, stop}.
 */
export async function startGarage() {
  const built = spawnSync("cargo", ["build", "-q", "-p", "server", "--example", "garage_test_node"], {
    cwd: ROOT,
    stdio: ["ignore", "inherit", "inherit"],
  });
  assert.equal(built.status, 0, "cargo could not build the garage_test_node example");
  const child = spawn(join(ROOT, "target", "debug", "examples", "garage_test_node"), [], {
    cwd: ROOT,
    stdio: ["pipe", "pipe", "pipe"],
  });
  const errors = [];
  child.stderr.on("data", (d) => errors.push(d.toString()));
  const lines = createInterface({ input: child.stdout });
  const first = await Promise.race([
    once(lines, "line").then(([line]) => line),
    once(child, "exit").then(([code]) => {
      throw new Error(`the Garage test node exited with ${code}: ${errors.join("")}`);
    }),
  ]);
  const node = JSON.parse(first);
  node.stop = async () => {
    if (child.exitCode === null) {
      child.stdin.end();
      await once(child, "exit");
    }
  };
  return node;
}
