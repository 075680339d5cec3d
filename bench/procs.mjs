// The benchmark's processes and what it reads about them: the release server, the
// Garage test node, curl, and CPU time and memory from /proc. Every process started
// here is tracked and ended by `stopAll` (by its pid, never by name), however the
// run ends.
import { spawn, execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { createWriteStream, existsSync, mkdirSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";

export const MIB = 1024 * 1024;
export const RESEARCHER_TOKEN = "bench-researcher-token-0123456789";
export const SERVER_SECRET = randomBytes(32).toString("hex");

const CLK_TCK = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;
const tracked = new Set();

/** Spawns a process that `stopAll` will end. */
export function spawnTracked(cmd, args, options = {}) {
  const child = spawn(cmd, args, options);
  tracked.add(child);
  child.on("exit", () => tracked.delete(child));
  return child;
}

/** Every live descendant pid of `pid` (children, their children, ...). */
export function descendants(pid) {
  const parent = new Map();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      parent.set(Number(name), Number(fields[1]));
    } catch {
      // Gone meanwhile.
    }
  }
  const out = [];
  const walk = (p) => {
    for (const [child, pp] of parent) {
      if (pp === p) {
        out.push(child);
        walk(child);
      }
    }
  };
  walk(pid);
  return out;
}

/** Ends one tracked process: `gentle` first (a signal, or closing stdin), then SIGKILL for it and its descendants. */
export async function stopProcess(child, { gentle = "SIGTERM", graceMs = 5000 } = {}) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const family = descendants(child.pid);
  const exited = once(child, "exit");
  if (gentle === "stdin") child.stdin?.end();
  else child.kill(gentle);
  const timer = new Promise((r) => setTimeout(() => r("timeout"), graceMs));
  if ((await Promise.race([exited, timer])) === "timeout") {
    for (const pid of [child.pid, ...family]) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // Already gone.
      }
    }
    await exited;
  }
}

/** Ends every process this run started that is still running. */
export async function stopAll() {
  await Promise.all([...tracked].map((c) => stopProcess(c, { gentle: c.benchGentle ?? "SIGTERM" })));
}

/**
 * The last resort, for the `exit` event (no waiting possible there): SIGKILL every
 * tracked process still running, and its descendants.
 */
export function killAllNow() {
  for (const child of tracked) {
    if (child.exitCode !== null || child.signalCode !== null) continue;
    for (const pid of [...descendants(child.pid), child.pid]) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // Already gone.
      }
    }
  }
}

function statFields(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
}

/** User plus system CPU seconds `pid` has used so far. */
export function cpuSeconds(pid) {
  const f = statFields(pid);
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}

/** CPU seconds of `pid` and every live descendant. */
export function treeCpuSeconds(pid) {
  let sum = 0;
  for (const p of [pid, ...descendants(pid)]) {
    try {
      sum += cpuSeconds(p);
    } catch {
      // Gone meanwhile.
    }
  }
  return sum;
}

/** CPU seconds of this process's children that have exited and been waited for (curl). */
export function reapedChildrenCpuSeconds() {
  const f = statFields(process.pid);
  return (Number(f[13]) + Number(f[14])) / CLK_TCK;
}

function statusKb(pid, field) {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const m = status.match(new RegExp(`^${field}:\\s+(\\d+) kB`, "m"));
  return m ? Number(m[1]) : NaN;
}

/** Peak resident memory of `pid` since it started, in MiB (VmHWM). */
export const peakRssMib = (pid) => statusKb(pid, "VmHWM") / 1024;
/** Resident memory of `pid` now, in MiB. */
export const rssMib = (pid) => statusKb(pid, "VmRSS") / 1024;

/** Runs a command to its end; resolves with {code, stdout, stderr, ms}. Never blocks the event loop. */
export function run(cmd, args, options = {}) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawnTracked(cmd, args, { stdio: ["ignore", "pipe", "pipe"], ...options });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.on("error", reject);
    // "close", not "exit": a process can exit before its output has been read.
    child.on("close", (code) => resolve({ code, stdout, stderr, ms: performance.now() - t0 }));
  });
}

/** Whether processes can be pinned to CPUs (taskset, two CPUs or more). */
export function canPin() {
  try {
    execFileSync("taskset", ["-V"], { stdio: "ignore" });
  } catch {
    return false;
  }
  return (readFileSync("/proc/cpuinfo", "utf8").match(/^processor/gm) ?? []).length >= 2;
}

/** `[cmd, args]`, run on `cpu` through taskset when `cpu` is given (taskset execs, so the pid is the command's). */
export function pinned(cpu, cmd, args) {
  return cpu === undefined || cpu === null ? [cmd, args] : ["taskset", ["-c", String(cpu), cmd, ...args]];
}

/**
 * Starts the release server on 127.0.0.1:0 with `env` over a base environment; resolves
 * with {url, port, pid, stop, logs} once it prints its address.
 */
export async function startServer(bin, root, env, { cpu } = {}) {
  const [cmd, args] = pinned(cpu, bin, ["serve"]);
  const child = spawnTracked(cmd, args, {
    cwd: root,
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME ?? "/tmp",
      BIND_ADDR: "127.0.0.1:0",
      RESEARCHER_TOKEN,
      SERVER_SECRET,
      LOG: "warn",
      AWS_EC2_METADATA_DISABLED: "true",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs = [];
  child.stderr.on("data", (d) => logs.push(d.toString()));
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${logs.join("")}`)), 30_000);
    let buffered = "";
    child.stdout.on("data", (d) => {
      buffered += d.toString();
      const m = buffered.match(/recorder listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}:\n${logs.join("")}`));
    });
  });
  return {
    url,
    port: Number(new URL(url).port),
    pid: child.pid,
    logs,
    stop: () => stopProcess(child),
  };
}

/**
 * Starts a Garage node with one bucket (server/examples/garage_test_node.rs); resolves
 * with {endpoint, region, bucket, access_key_id, secret_access_key, pid, stop}. The
 * node stops, and deletes its folder, when its stdin closes.
 */
export async function startGarage(bin, root) {
  const child = spawnTracked(bin, [], { cwd: root, stdio: ["pipe", "pipe", "pipe"] });
  child.benchGentle = "stdin";
  const errors = [];
  child.stderr.on("data", (d) => errors.push(d.toString()));
  const lines = createInterface({ input: child.stdout });
  const first = await Promise.race([
    once(lines, "line").then(([line]) => line),
    once(child, "exit").then(([code]) => {
      throw new Error(`the Garage test node exited with ${code}: ${errors.join("")}`);
    }),
    new Promise((_, reject) => setTimeout(() => reject(new Error("Garage did not start in 120 s")), 120_000)),
  ]);
  const node = JSON.parse(first);
  node.pid = child.pid;
  node.stop = () => stopProcess(child, { gentle: "stdin", graceMs: 15_000 });
  return node;
}

/** The S3 variables of the server for a Garage node. */
export function s3Env(garage) {
  return {
    STORAGE_BACKEND: "s3",
    S3_BUCKET: garage.bucket,
    S3_ENDPOINT: garage.endpoint,
    S3_REGION: garage.region,
    AWS_ACCESS_KEY_ID: garage.access_key_id,
    AWS_SECRET_ACCESS_KEY: garage.secret_access_key,
  };
}

/** `recorder-server setup-s3` for any page origin (CORS_ORIGINS=*), as an operator would run it. */
export async function setupS3(bin, root, garage) {
  const out = await run(bin, ["setup-s3"], {
    cwd: root,
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME ?? "/tmp",
      RESEARCHER_TOKEN,
      SERVER_SECRET,
      PUBLIC_URL: "http://127.0.0.1:1",
      CORS_ORIGINS: "*",
      AWS_EC2_METADATA_DISABLED: "true",
      ...s3Env(garage),
    },
  });
  if (out.code !== 0) throw new Error(`setup-s3 failed:\n${out.stdout}\n${out.stderr}`);
}

/** A JSON API call; throws unless the answer is 2xx. */
export async function api(base, method, path, token, body) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(`${base}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return JSON.parse(text);
}

/** A new session: {session_id, token}. */
export const createSession = (base) => api(base, "POST", "/api/sessions", null, { metadata: { study: "bench" } });

/**
 * Writes `size` bytes of noise that start like a WebM file to `path` and, with
 * `partsDir`, the same bytes again cut into `partSize` files (part-00001, ...), for curl.
 * Resolves with {path, size, sha256, parts: [{number, size, path}]}.
 */
export async function writeMediaFile(path, size, { partSize = 5 * MIB, partsDir = null } = {}) {
  const hash = createHash("sha256");
  const out = createWriteStream(path);
  const parts = [];
  if (partsDir) mkdirSync(partsDir, { recursive: true });
  let partOut = null;
  let partLeft = 0;
  let written = 0;
  const piece = 4 * MIB;
  while (written < size) {
    const n = Math.min(piece, size - written);
    const bytes = randomBytes(n);
    if (written === 0) bytes.set([0x1a, 0x45, 0xdf, 0xa3]);
    hash.update(bytes);
    if (!out.write(bytes)) await once(out, "drain");
    if (partsDir) {
      let at = 0;
      while (at < n) {
        if (partLeft === 0) {
          if (partOut) {
            partOut.end();
            await once(partOut, "finish");
          }
          const number = parts.length + 1;
          const partBytes = Math.min(partSize, size - (written + at));
          const partPath = join(partsDir, `part-${String(number).padStart(5, "0")}`);
          parts.push({ number, size: partBytes, path: partPath });
          partOut = createWriteStream(partPath);
          partLeft = partBytes;
        }
        const take = Math.min(partLeft, n - at);
        if (!partOut.write(bytes.subarray(at, at + take))) await once(partOut, "drain");
        at += take;
        partLeft -= take;
      }
    }
    written += n;
  }
  out.end();
  await once(out, "finish");
  if (partOut) {
    partOut.end();
    await once(partOut, "finish");
  }
  return { path, size, sha256: hash.digest("hex"), parts };
}

/** The first existing path of `candidates`, or throws naming how to build it. */
export function built(candidates, how) {
  const found = candidates.find((p) => existsSync(p));
  if (!found) throw new Error(`not built: ${candidates[0]}; run ${how}`);
  return found;
}

/**
 * Writes a Y4M video for Chromium's fake camera that a video encoder treats like a
 * webcam's: a slowly moving pattern with light sensor-like noise. Pure noise (the
 * browser tests' video) cannot be compressed to a realistic bitrate (VP9 spends about
 * 9 Mbit/s on 640×480 noise whatever it is asked); with this, MediaRecorder spends
 * about the bitrate it is asked for (2.5 Mbit/s asked, 2.5 to 3 recorded).
 */
export async function writeCameraY4m(path, { width = 640, height = 480, frames = 60, noise = 3 } = {}) {
  const out = createWriteStream(path);
  out.write(`YUV4MPEG2 W${width} H${height} F30:1 Ip A1:1 C420jpeg\n`);
  for (let f = 0; f < frames; f++) {
    const frame = Buffer.alloc((width * height * 3) / 2);
    for (let j = 0; j < height; j++) {
      for (let i = 0; i < width; i++) {
        const base = 128 + 60 * Math.sin((i + 4 * f) / 40) * Math.cos((j - 3 * f) / 30);
        frame[j * width + i] = Math.max(0, Math.min(255, Math.round(base + (Math.random() * 2 - 1) * noise)));
      }
    }
    frame.fill(128, width * height);
    out.write("FRAME\n");
    if (!out.write(frame)) await once(out, "drain");
  }
  out.end();
  await once(out, "finish");
}
