// The benchmarks, side by side: every figure of this design against a baseline run in
// the same run on the same machine, written to BENCHMARKS.md. Run through
// `scripts/dev bench` (which builds the release server, the load generator, the Garage
// test node and the wasm client first):
//
//   scripts/dev bench                       every section, writes BENCHMARKS.md (~10 min)
//   scripts/dev bench --only presign,local  some sections, printed (BENCHMARKS.md untouched)
//   scripts/dev bench --record-secs 60      a shorter recording for "time to safe"
//   scripts/dev bench --smoke               every section at toy sizes (a minute), printed
//
// Sections: presign, throughput, datapath, memory, safe, local, wasm. Everything runs on
// loopback; every process it starts is ended (by pid) when it finishes, fails, times out
// (--timeout-min, default 30) or is interrupted, and its temporary folder is deleted.
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { cpus, totalmem, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { launchBrowser } from "../e2e/harness.js";
import { startProxy } from "./proxy.mjs";
import {
  MIB,
  RESEARCHER_TOKEN,
  api,
  built,
  canPin,
  cpuSeconds,
  createSession,
  descendants,
  killAllNow,
  peakRssMib,
  reapedChildrenCpuSeconds,
  rssMib,
  run,
  s3Env,
  setupS3,
  spawnTracked,
  startGarage,
  startServer,
  stopAll,
  stopProcess,
  treeCpuSeconds,
  writeCameraY4m,
  writeMediaFile,
} from "./procs.mjs";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"];
const SECTIONS = ["presign", "throughput", "datapath", "memory", "safe", "local", "wasm"];

// ---------------------------------------------------------------------------------------
// Options.

function parseArgs(argv) {
  const o = {
    only: null,
    recordSecs: 120,
    uplinkMbit: 10,
    rounds: 3,
    out: null,
    smoke: false,
    timeoutMin: 30,
  };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split("=", 2);
    const value = () => inline ?? argv[++i];
    switch (flag) {
      case "--only":
        o.only = value().split(",").map((s) => s.trim()).filter(Boolean);
        break;
      case "--record-secs":
        o.recordSecs = Number(value());
        break;
      case "--uplink-mbit":
        o.uplinkMbit = Number(value());
        break;
      case "--rounds":
        o.rounds = Number(value());
        break;
      case "--out":
        o.out = value();
        break;
      case "--smoke":
        o.smoke = true;
        break;
      case "--timeout-min":
        o.timeoutMin = Number(value());
        break;
      case "-h":
      case "--help":
        console.log(
          readFileSync(fileURLToPath(import.meta.url), "utf8")
            .split("\n")
            .slice(0, 13)
            .map((l) => l.replace(/^\/\/ ?/, ""))
            .join("\n"),
        );
        process.exit(0);
      // eslint-disable-next-line no-fallthrough
      default:
        throw new Error(`unknown option ${argv[i]} (see --help)`);
    }
  }
  for (const s of o.only ?? []) {
    if (!SECTIONS.includes(s)) throw new Error(`unknown section ${s}; sections: ${SECTIONS.join(", ")}`);
  }
  if (o.smoke) {
    o.recordSecs = Math.min(o.recordSecs, 12);
    o.rounds = 1;
  }
  // The full run writes BENCHMARKS.md; a partial or smoke run only prints, unless told.
  if (o.out === null && !o.only && !o.smoke) o.out = join(ROOT, "BENCHMARKS.md");
  return o;
}

const opts = parseArgs(process.argv.slice(2));
const SIZES = opts.smoke
  ? { throughput: 24 * MIB, datapath: 20 * MIB, memoryEach: 8 * MIB, memoryCount: 4, local: 24 * MIB, loadSecs: 1, loadRounds: 1 }
  : { throughput: 256 * MIB, datapath: 200 * MIB, memoryEach: 100 * MIB, memoryCount: 20, local: 256 * MIB, loadSecs: 2, loadRounds: 8 };
const PART_SIZE = 5 * MIB; // the client's default part size (the store's minimum)
const CONCURRENCY = 3; // the client's default parts in flight
const VIDEO_BPS = 2_500_000;
const AUDIO_BPS = 128_000;

const BIN = built([join(ROOT, "target/release/recorder-server")], "cargo build --release -p server");
const LOADGEN = built([join(ROOT, "target/release/examples/loadgen")], "cargo build --release -p server --example loadgen");
const GARAGE_NODE = built(
  [join(ROOT, "target/release/examples/garage_test_node")],
  "cargo build --release -p server --example garage_test_node",
);
const PIN = canPin();
const SERVER_CPU = PIN ? 0 : undefined;
const LOADGEN_CPU = PIN ? 1 : undefined;

// ---------------------------------------------------------------------------------------
// Shared pieces, made when first needed.

const temp = mkdtempSync(join(tmpdir(), "recorder-bench-"));
const ctx = {
  www: null,
  garage: null,
  browser: null,
  files: new Map(),
};

/** A WWW_DIR with the built client (www/pkg) and a blank page to drive it from. */
function benchWww() {
  if (!ctx.www) {
    ctx.www = join(temp, "www");
    mkdirSync(ctx.www);
    symlinkSync(join(ROOT, "www", "pkg"), join(ctx.www, "pkg"));
    const page = '<!doctype html><meta charset="utf-8"><title>bench</title><link rel="icon" href="data:,"><input type="file" id="file">\n';
    // The server refuses a WWW_DIR without an index.html.
    for (const name of ["bench.html", "index.html"]) writeFileSync(join(ctx.www, name), page);
  }
  return ctx.www;
}

async function garage() {
  if (!ctx.garage) {
    ctx.garage = await startGarage(GARAGE_NODE, ROOT);
    await setupS3(BIN, ROOT, ctx.garage);
  }
  return ctx.garage;
}

async function browser() {
  if (!ctx.browser) {
    const y4m = join(temp, "noise.y4m");
    await writeCameraY4m(y4m);
    ctx.browser = await launchBrowser(y4m, join(temp, "profile"));
    // Playwright ends the process on SIGINT once it has closed its browsers, which
    // would cut this run's own cleanup short; this run closes the browser itself.
    for (const signal of SIGNALS) {
      for (const listener of process.listeners(signal)) {
        if (listener !== onSignal) process.off(signal, listener);
      }
    }
  }
  return ctx.browser;
}

/** A media file of `size` bytes (and its 5 MiB part files), written once per size. */
async function mediaFile(size) {
  if (!ctx.files.has(size)) {
    const dir = join(temp, `media-${size}`);
    mkdirSync(dir);
    ctx.files.set(size, await writeMediaFile(join(dir, "recording.webm"), size, { partSize: PART_SIZE, partsDir: join(dir, "parts") }));
  }
  return ctx.files.get(size);
}

/** A page of `origin` with the wasm client loaded as `window.client`. */
async function benchPage(origin) {
  const b = await browser();
  const page = await b.newPage();
  page.benchErrors = [];
  page.on("pageerror", (e) => page.benchErrors.push(e.message));
  page.on("console", (m) => m.type() === "error" && page.benchErrors.push(m.text()));
  await page.goto(`${origin}/bench.html`);
  await page.evaluate(async () => {
    const client = await import("/pkg/client.js");
    await client.default();
    window.client = client;
  });
  return page;
}

/** Uploads the page's chosen file with the client (`Recorder.uploadBlob`): {ms, entry}. */
function browserUpload(page, session, problemId, server = "") {
  return page.evaluate(
    async ({ session, problemId, server, concurrency }) => {
      const file = document.getElementById("file").files[0];
      const rec = new window.client.Recorder({
        server,
        token: session.token,
        sessionId: session.session_id,
        problemId,
        concurrency,
      });
      const t0 = performance.now();
      const entry = await rec.uploadBlob(file, "video/webm");
      return { ms: performance.now() - t0, entry };
    },
    { session, problemId, server, concurrency: CONCURRENCY },
  );
}

/** The CPU seconds used so far by the Chromium processes this run started. */
function chromiumCpuSeconds() {
  let sum = 0;
  for (const pid of descendants(process.pid)) {
    try {
      if (/chrom/i.test(readFileSync(`/proc/${pid}/comm`, "utf8"))) sum += cpuSeconds(pid);
    } catch {
      // Gone meanwhile.
    }
  }
  return sum;
}

/**
 * Uploads `file` as one recording through presigned part URLs: the same API calls as
 * the client (start, presign, complete) around `send(signedParts)`, which PUTs the
 * parts. Resolves with {ms, putMs, completeMs, entry}.
 */
async function partsUpload(base, session, problemId, file, send) {
  const t0 = performance.now();
  const path = `/api/sessions/${session.session_id}/uploads`;
  const opened = await api(base, "POST", path, session.token, { problem_id: problemId, content_type: "video/webm" });
  const rec = `${path}/${opened.recording_id}`;
  const specs = file.parts.map((p) => ({ part_number: p.number, size: p.size }));
  const signed = [];
  for (let i = 0; i < specs.length; i += opened.max_parts_per_request) {
    const batch = specs.slice(i, i + opened.max_parts_per_request);
    const answer = await api(base, "POST", `${rec}/parts`, session.token, { upload: opened.upload, parts: batch });
    signed.push(...answer.parts);
  }
  const tPut = performance.now();
  await send(signed);
  const tComplete = performance.now();
  const done = await api(base, "POST", `${rec}/complete`, session.token, { upload: opened.upload, parts: specs, sha256: file.sha256 });
  const t1 = performance.now();
  return { ms: t1 - t0, putMs: tComplete - tPut, completeMs: t1 - tComplete, entry: done.recording };
}

/**
 * Uploads `file` with curl PUTting its part files, CONCURRENCY transfers at a time
 * (`parallel`) or one after another on one connection.
 */
function curlUpload(base, session, problemId, file, { parallel }) {
  return partsUpload(base, session, problemId, file, async (signed) => {
    const args = ["-sS", "--fail", "-o", "/dev/null", "-H", "Expect:"];
  if (parallel) args.push("--parallel", "--parallel-max", String(CONCURRENCY));
  for (const [name, value] of Object.entries(signed[0].request.headers)) {
    if (name.toLowerCase() !== "content-length") args.push("-H", `${name}: ${value}`);
  }
    signed.forEach((s, i) => {
      if (i > 0) args.push("-o", "/dev/null");
      args.push("-T", file.parts[i].path, s.request.url);
    });
    const curl = await run("curl", args);
    if (curl.code !== 0) throw new Error(`curl failed (${curl.code}): ${curl.stderr}`);
  });
}

/**
 * Uploads the page's chosen file with bare `fetch` PUTs of its slices, CONCURRENCY at a
 * time, from the page: the browser's own upload path without the client.
 */
function fetchUpload(page, base, session, problemId, file) {
  return partsUpload(base, session, problemId, file, (signed) =>
    page.evaluate(
      async ({ parts, concurrency, partSize }) => {
        const blob = document.getElementById("file").files[0];
        let next = 0;
        const worker = async () => {
          while (next < parts.length) {
            const i = next++;
            const { url, headers } = parts[i].request;
            const body = blob.slice(i * partSize, Math.min(blob.size, (i + 1) * partSize));
            const res = await fetch(url, { method: "PUT", headers, body });
            if (!res.ok) throw new Error(`part ${i + 1}: ${res.status}`);
          }
        };
        await Promise.all(Array.from({ length: concurrency }, worker));
      },
      { parts: signed, concurrency: CONCURRENCY, partSize: PART_SIZE },
    ),
  );
}

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

function checkEntry(entry, file, what) {
  check(entry.status === "complete", `${what}: status ${entry.status}`);
  check(entry.size === file.size, `${what}: ${entry.size} bytes stored, ${file.size} sent`);
  if (entry.sha256) check(entry.sha256 === file.sha256, `${what}: SHA-256 differs`);
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const f = (x, digits = 2) => (Number.isFinite(x) ? x.toFixed(digits) : "n/a");
const mibps = (bytes, ms) => bytes / MIB / (ms / 1000);
const sizeText = (bytes) => (bytes >= MIB ? `${f(bytes / MIB, 1)} MiB` : `${f(bytes / 1024, 1)} KiB`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const say = (msg) => console.error(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}`);

/** `cmd` for a section in BENCHMARKS.md. */
const reproduce = (section, extra = "") => `scripts/dev bench --only ${section}${extra}`;

// ---------------------------------------------------------------------------------------
// 1. Presigning against a trivial handler.

async function benchPresign() {
  const www = benchWww();
  const rows = [];
  const details = [];
  for (const backend of ["local", "s3"]) {
    const env =
      backend === "local"
        ? { STORAGE_BACKEND: "local", DATA_DIR: join(temp, "presign-data"), WWW_DIR: www }
        : { ...s3Env(await garage()), WWW_DIR: www };
    const server = await startServer(BIN, ROOT, env, { cpu: SERVER_CPU });
    try {
      const session = await createSession(server.url);
      const uploads = `/api/sessions/${session.session_id}/uploads`;
      const opened = await api(server.url, "POST", uploads, session.token, { problem_id: "bench", content_type: "video/webm" });
      const bodyFile = join(temp, `presign-${backend}.json`);
      writeFileSync(bodyFile, JSON.stringify({ upload: opened.upload, parts: [{ part_number: 1, size: PART_SIZE }] }));
      const presignPath = `${uploads}/${opened.recording_id}/parts`;
      const probe = await api(server.url, "POST", presignPath, session.token, JSON.parse(readFileSync(bodyFile, "utf8")));
      check(probe.parts[0].request.url.includes(backend === "local" ? "/storage/" : "partNumber=1"), "presign answers a part URL");
      const targets = {
        healthz: ["--url", `${server.url}/healthz`],
        presign: [
          "--url", `${server.url}${presignPath}`, "--method", "POST",
          "--header", `Authorization: Bearer ${session.token}`,
          "--header", "Content-Type: application/json",
          "--body-file", bodyFile,
        ],
      };
      const runs = { healthz: [], presign: [] };
      for (let r = 0; r < SIZES.loadRounds; r++) {
        for (const [name, args] of Object.entries(targets)) {
          const cpu0 = cpuSeconds(server.pid);
          const [cmd, cmdArgs] = LOADGEN_CPU === undefined
            ? [LOADGEN, args]
            : ["taskset", ["-c", String(LOADGEN_CPU), LOADGEN, ...args]];
          const out = await run(cmd, [...cmdArgs, "--connections", "32", "--duration-secs", String(SIZES.loadSecs), "--warmup-secs", "0.5"]);
          if (out.code !== 0) throw new Error(`loadgen failed: ${out.stderr}`);
          const result = JSON.parse(out.stdout.trim().split("\n").pop());
          check(result.errors === 0 && result.non_2xx === 0, `${name}: ${result.errors} errors, ${result.non_2xx} non-2xx answers`);
          result.cpuUsPerRequest = ((cpuSeconds(server.pid) - cpu0) * 1e6) / (result.requests || 1);
          runs[name].push(result);
        }
      }
      const summary = (name) => ({
        rps: median(runs[name].map((x) => x.rps)),
        p50: median(runs[name].map((x) => x.p50_ms)),
        p99: median(runs[name].map((x) => x.p99_ms)),
        cpuUs: median(runs[name].map((x) => x.cpuUsPerRequest)),
        all: runs[name].map((x) => Math.round(x.rps)),
      });
      const h = summary("healthz");
      const p = summary("presign");
      // Each round measures both targets seconds apart; the median of the rounds'
      // ratios is less moved by other work on the machine than a ratio of medians.
      const ratio = median(runs.presign.map((x, i) => x.rps / runs.healthz[i].rps));
      details.push({ backend, h, p, ratio });
      rows.push({
        what: `Presigning, ${backend === "s3" ? "S3 (Garage)" : "local"} backend: part-URL requests/s vs \`GET /healthz\``,
        ours: `${f(p.rps, 0)} req/s (p50 ${f(p.p50)} ms, p99 ${f(p.p99)} ms)`,
        baseline: `${f(h.rps, 0)} req/s (p50 ${f(h.p50)} ms, p99 ${f(h.p99)} ms)`,
        ratio,
        goal: 0.5,
        command: reproduce("presign"),
      });
    } finally {
      await server.stop();
    }
  }
  let body = `Closed-loop load from \`server/examples/loadgen.rs\` (32 keep-alive connections, ${SIZES.loadSecs} s measured after 0.5 s of warm-up, ${SIZES.loadRounds} rounds alternating the two targets; the figures are medians of the rounds, the ratio the median of the rounds' ratios). ${PIN ? "The server is pinned to CPU 0 and the load generator to CPU 1 (`taskset`), so that they do not take each other's core." : "Server and load generator share the CPUs."} The trivial handler is \`GET /healthz\`: it answers \`{"status":"ok","storage":...}\` from the configuration, with no I/O, through the same router and middleware (tracing, error bodies, CORS) as the API. The part-URL request is \`POST /api/sessions/{id}/uploads/{rec}/parts\` for one part: it parses the JSON body, checks the session token (HMAC) and the upload handle (HMAC), and signs one URL (local: HMAC-SHA256; S3: SigV4 with the \`aws-sigv4\` crate directly, \`server/src/storage/part_signer.rs\`); it does no I/O either.\n\n`;
  body += "| backend | endpoint | req/s (each round) | p50 ms | p99 ms | server CPU µs per request |\n|---|---|---|---|---|---|\n";
  for (const d of details) {
    body += `| ${d.backend} | \`GET /healthz\` | ${f(d.h.rps, 0)} (${d.h.all.join(", ")}) | ${f(d.h.p50)} | ${f(d.h.p99)} | ${f(d.h.cpuUs, 0)} |\n`;
    body += `| ${d.backend} | part URL | ${f(d.p.rps, 0)} (${d.p.all.join(", ")}) | ${f(d.p.p50)} | ${f(d.p.p99)} | ${f(d.p.cpuUs, 0)} |\n`;
  }
  return { id: "presign", title: "Presigning", rows, body };
}

// ---------------------------------------------------------------------------------------
// 2. Upload throughput: the client in Chromium against curl, to Garage.

async function benchThroughput() {
  const g = await garage();
  const file = await mediaFile(SIZES.throughput);
  const server = await startServer(BIN, ROOT, { ...s3Env(g), WWW_DIR: benchWww() });
  const page = await benchPage(server.url);
  try {
    await page.setInputFiles("#file", file.path);
    const runs = { browser: [], fetch: [], curl: [] };
    for (let r = 0; r < opts.rounds; r++) {
      for (const who of ["browser", "fetch", "curl"]) {
        const session = await createSession(server.url);
        const cpu = { chromium: chromiumCpuSeconds(), curl: reapedChildrenCpuSeconds(), garage: treeCpuSeconds(g.pid), server: cpuSeconds(server.pid) };
        const result =
          who === "browser"
            ? await browserUpload(page, session, `tp${r}`)
            : who === "fetch"
              ? await fetchUpload(page, server.url, session, `tp${r}`, file)
              : await curlUpload(server.url, session, `tp${r}`, file, { parallel: true });
        checkEntry(result.entry, file, `${who} upload`);
        result.cpu = {
          client: who === "curl" ? reapedChildrenCpuSeconds() - cpu.curl : chromiumCpuSeconds() - cpu.chromium,
          garage: treeCpuSeconds(g.pid) - cpu.garage,
          server: cpuSeconds(server.pid) - cpu.server,
        };
        runs[who].push(result);
        say(`throughput ${who}: ${f(mibps(file.size, result.ms), 1)} MiB/s`);
      }
    }
    const profile = await profiledUpload(page, server.url, file);
    check(page.benchErrors.length === 0, `page errors: ${page.benchErrors.join("; ")}`);
    const sum = (who) => {
      const ms = median(runs[who].map((x) => x.ms));
      return {
        ms,
        rate: mibps(file.size, ms),
        all: runs[who].map((x) => f(mibps(file.size, x.ms), 1)),
        client: median(runs[who].map((x) => x.cpu.client)),
        garage: median(runs[who].map((x) => x.cpu.garage)),
        server: median(runs[who].map((x) => x.cpu.server)),
      };
    };
    const b = sum("browser");
    const fe = sum("fetch");
    const c = sum("curl");
    const parts = file.parts.length;
    const rows = [
      {
        what: `Upload throughput to Garage, ${sizeText(file.size)} in ${parts} presigned parts, ${CONCURRENCY} in flight: the client in Chromium vs \`curl\``,
        ours: `${f(b.rate, 1)} MiB/s`,
        baseline: `${f(c.rate, 1)} MiB/s`,
        ratio: b.rate / c.rate,
        goal: 0.8,
        command: reproduce("throughput"),
      },
      {
        what: "The browser's own ceiling: bare `fetch` PUTs of the same parts from the same page vs `curl`",
        ours: `${f(fe.rate, 1)} MiB/s`,
        baseline: `${f(c.rate, 1)} MiB/s`,
        ratio: fe.rate / c.rate,
        goal: null,
        command: reproduce("throughput"),
      },
    ];
    const cores = cpus().length;
    let body = `One ${sizeText(file.size)} file of noise starting with WebM's magic bytes, uploaded as one recording to a single-node Garage on loopback, ${opts.rounds} rounds alternating the two uploaders (medians). **Client**: \`Recorder.uploadBlob(file, "video/webm")\` in headless Chromium, the same code path as a recording (the part planner fed 1 MiB chunks, SHA-256 of every byte in wasm in a Web Worker, one presign request per part just in time, ${CONCURRENCY} PUTs in flight, retries armed, complete). **Baseline**: the same bytes as ${parts} part files, the same API calls (start, presign in one batch, complete), and one \`curl --parallel --parallel-max ${CONCURRENCY}\` PUTting the parts to their presigned URLs. A third uploader separates the browser from the client: **bare fetch**, the same parts PUT by \`fetch(url, {method: "PUT", body: file.slice(...)})\`, ${CONCURRENCY} at a time, from the same page, around the same API calls as curl (no hashing, no planner). Times run from opening the upload to the completed manifest entry; every upload is checked (size, and SHA-256 for the client).\n\n`;
    body += `| uploader | MiB/s (each round) | seconds | CPU s: uploader | CPU s: Garage | CPU s: server |\n|---|---|---|---|---|---|\n`;
    body += `| client in Chromium | ${f(b.rate, 1)} (${b.all.join(", ")}) | ${f(b.ms / 1000)} | ${f(b.client)} (all Chromium processes) | ${f(b.garage)} | ${f(b.server)} |\n`;
    body += `| bare fetch in Chromium | ${f(fe.rate, 1)} (${fe.all.join(", ")}) | ${f(fe.ms / 1000)} | ${f(fe.client)} (all Chromium processes) | ${f(fe.garage)} | ${f(fe.server)} |\n`;
    body += `| curl | ${f(c.rate, 1)} (${c.all.join(", ")}) | ${f(c.ms / 1000)} | ${f(c.client)} | ${f(c.garage)} | ${f(c.server)} |\n\n`;
    const busyB = (b.client + b.garage + b.server) / (b.ms / 1000);
    const busyF = (fe.client + fe.garage + fe.server) / (fe.ms / 1000);
    const busyC = (c.client + c.garage + c.server) / (c.ms / 1000);
    body += `CPU busy during the upload (uploader, Garage and server together, in cores of ${cores}): client ${f(busyB)}, bare fetch ${f(busyF)}, curl ${f(busyC)}. Client over bare fetch: ${f(b.rate / fe.rate)}; bare fetch over curl: ${f(fe.rate / c.rate)}.\n\n`;
    body += `Where the page's main thread spends one more client upload (${f(profile.ms / 1000)} s, V8's sampling profiler through the DevTools protocol; self time):\n\n`;
    body += "| on the main thread | seconds | share |\n|---|---|---|\n";
    for (const [name, us] of profile.categories) {
      body += `| ${name} | ${f(us / 1e6)} | ${f((100 * us) / profile.totalUs, 0)} % |\n`;
    }
    return { id: "throughput", title: "Upload throughput", rows, body };
  } finally {
    await page.close();
    await server.stop();
  }
}

/**
 * One more client upload of the page's file under V8's sampling profiler; resolves with
 * {ms, totalUs, categories: [[name, self µs]]}, largest first.
 */
async function profiledUpload(page, base, file) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Profiler.enable");
  await cdp.send("Profiler.setSamplingInterval", { interval: 1000 });
  await cdp.send("Profiler.start");
  const result = await browserUpload(page, await createSession(base), "profiled");
  const { profile } = await cdp.send("Profiler.stop");
  await cdp.detach();
  checkEntry(result.entry, file, "profiled upload");
  const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
  const category = ({ functionName: fn, url }) => {
    if (fn === "(idle)") return "idle (waiting for the network)";
    if (fn === "(program)") return "the browser's own work on the thread (program)";
    if (fn === "(garbage collector)") return "garbage collection";
    if (/sha2|compress256|Sha256/.test(fn)) return "SHA-256 in wasm";
    if (url.endsWith(".wasm")) return "other wasm (planner, uploader, actor)";
    if (url.endsWith("client.js")) return "wasm-bindgen glue";
    if (/^(slice|arrayBuffer|Blob)$/.test(fn)) return "reading the Blob: slice, arrayBuffer, Blob";
    return "other (fetch, timers, page)";
  };
  const sums = new Map();
  let totalUs = 0;
  profile.samples.forEach((id, i) => {
    const us = profile.timeDeltas[i] ?? 0;
    const name = category(nodes.get(id).callFrame);
    sums.set(name, (sums.get(name) ?? 0) + us);
    totalUs += us;
  });
  return { ms: result.ms, totalUs, categories: [...sums].sort((a, b) => b[1] - a[1]) };
}

// ---------------------------------------------------------------------------------------
// 3. The server in or out of the data path.

async function benchDatapath() {
  const g = await garage();
  const file = await mediaFile(SIZES.datapath);
  const results = {};
  for (const mode of ["proxied", "direct"]) {
    const proxy = await startProxy();
    const server = await startServer(BIN, ROOT, { ...s3Env(g), WWW_DIR: benchWww(), PUBLIC_URL: proxy.url });
    proxy.setTarget({ host: "127.0.0.1", port: server.port });
    const page = await benchPage(proxy.url);
    try {
      await page.setInputFiles("#file", file.path);
      const session = await createSession(server.url);
      await sleep(500);
      const idleRss = rssMib(server.pid);
      const cpu0 = cpuSeconds(server.pid);
      proxy.reset();
      let result;
      if (mode === "proxied") {
        // The old app's client: one POST of the whole file as a form, after recording.
        result = await page.evaluate(async (sessionId) => {
          const form = new FormData();
          form.append("problem_id", "old-route");
          form.append("recording", document.getElementById("file").files[0], "recording.webm");
          const t0 = performance.now();
          const res = await fetch(`/sessions/${sessionId}/recording`, { method: "POST", body: form });
          return { ms: performance.now() - t0, status: res.status, answer: await res.json() };
        }, session.session_id);
        check(result.status === 200 && result.answer.ok && result.answer.size === file.size, `old route: ${JSON.stringify(result.answer)}`);
      } else {
        result = await browserUpload(page, session, "direct");
        checkEntry(result.entry, file, "direct upload");
      }
      results[mode] = {
        ms: result.ms,
        cpu: cpuSeconds(server.pid) - cpu0,
        peakRss: peakRssMib(server.pid),
        idleRss,
        up: proxy.stats.up,
        down: proxy.stats.down,
        connections: proxy.stats.connections,
      };
      say(`datapath ${mode}: ${JSON.stringify(results[mode])}`);
      check(page.benchErrors.length === 0, `page errors: ${page.benchErrors.join("; ")}`);
    } finally {
      await page.close();
      await server.stop();
      await proxy.close();
    }
  }
  const p = results.proxied;
  const d = results.direct;
  const rows = [
    {
      what: `Server CPU for a ${sizeText(file.size)} recording: direct to the bucket vs the old server-proxied route`,
      ours: `${f(d.cpu, 2)} s`,
      baseline: `${f(p.cpu, 2)} s`,
      ratio: d.cpu / p.cpu,
      goal: null,
      lowerIsBetter: true,
      command: reproduce("datapath"),
    },
    {
      what: "Server peak RSS, same recording",
      ours: `${f(d.peakRss, 1)} MiB`,
      baseline: `${f(p.peakRss, 1)} MiB`,
      ratio: d.peakRss / p.peakRss,
      goal: null,
      lowerIsBetter: true,
      command: reproduce("datapath"),
    },
    {
      what: "Bytes the server received, same recording",
      ours: sizeText(d.up),
      baseline: sizeText(p.up),
      ratio: d.up / p.up,
      goal: null,
      lowerIsBetter: true,
      command: reproduce("datapath"),
    },
  ];
  let body = `The same ${sizeText(file.size)} file, from the same headless Chromium, with the server on S3 (Garage) both times: **old route** is the old app's client, one \`fetch\` POST of a \`FormData\` (\`problem_id\`, then \`recording\`) to \`POST /sessions/{id}/recording\`, which the server streams on into the bucket; **direct** is \`Recorder.uploadBlob\`, parts straight to Garage. A fresh server process for each (so that its peak RSS, VmHWM, is this upload's), behind a counting TCP proxy (\`bench/proxy.mjs\`) that is the page's origin and the server's \`PUBLIC_URL\`; the bytes are what the proxy passed to the server during the upload alone (page and wasm loads before it are not counted). CPU is user+system seconds of the server process during the upload (\`/proc/PID/stat\`).\n\n`;
  body += "| route | seconds | server CPU s | server peak RSS MiB (idle before) | bytes to server | bytes from server |\n|---|---|---|---|---|---|\n";
  for (const [name, r] of [["old route (server-proxied)", p], ["direct to bucket", d]]) {
    body += `| ${name} | ${f(r.ms / 1000)} | ${f(r.cpu)} | ${f(r.peakRss, 1)} (${f(r.idleRss, 1)}) | ${r.up.toLocaleString("en")} | ${r.down.toLocaleString("en")} |\n`;
  }
  return { id: "datapath", title: "Server in or out of the data path", rows, body };
}

// ---------------------------------------------------------------------------------------
// 4. Memory of the old route under concurrent uploads.

async function benchMemory() {
  const file = await mediaFile(SIZES.memoryEach);
  const count = SIZES.memoryCount;
  const results = {};
  for (const who of ["ours", "reference"]) {
    const dataDir = join(temp, `memory-${who}`);
    mkdirSync(dataDir);
    let target;
    if (who === "ours") {
      const server = await startServer(BIN, ROOT, { STORAGE_BACKEND: "local", DATA_DIR: dataDir, WWW_DIR: benchWww() });
      target = { url: server.url, pid: server.pid, stop: server.stop };
    } else {
      const child = spawnTracked("python3", [join(ROOT, "bench", "old_app_reference.py"), dataDir], { stdio: ["ignore", "pipe", "pipe"] });
      const url = await new Promise((ok, fail) => {
        child.stdout.on("data", (d) => {
          const m = d.toString().match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
          if (m) ok(m[1]);
        });
        child.on("exit", (code) => fail(new Error(`the reference server exited with ${code}`)));
      });
      target = { url, pid: child.pid, stop: () => stopProcess(child) };
    }
    try {
      const idleRss = rssMib(target.pid);
      const cpu0 = cpuSeconds(target.pid);
      const t0 = performance.now();
      const answers = await Promise.all(
        Array.from({ length: count }, (_, i) =>
          run("curl", [
            "-sS", "--fail", "-H", "Expect:", "-w", "\\n%{http_code}",
            "-F", "problem_id=p1",
            "-F", `recording=@${file.path};type=video/webm`,
            `${target.url}/sessions/bench-memory-${i}/recording`,
          ]),
        ),
      );
      const ms = performance.now() - t0;
      for (const a of answers) {
        check(a.code === 0, `${who}: curl ${a.code} ${a.stderr}`);
        const status = a.stdout.slice(a.stdout.lastIndexOf("\n") + 1);
        const text = a.stdout.slice(0, a.stdout.lastIndexOf("\n"));
        let answer;
        try {
          answer = JSON.parse(text);
        } catch {
          throw new Error(`${who}: answer ${status} is not JSON: ${JSON.stringify(text.slice(0, 300))} ${a.stderr}`);
        }
        check(answer.ok && answer.size === file.size, `${who}: ${a.stdout}`);
      }
      results[who] = { ms, peakRss: peakRssMib(target.pid), idleRss, cpu: cpuSeconds(target.pid) - cpu0 };
      say(`memory ${who}: ${JSON.stringify(results[who])}`);
    } finally {
      await target.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  }
  const o = results.ours;
  const r = results.reference;
  const rows = [
    {
      what: `Old route, peak RSS with ${count} concurrent ${sizeText(file.size)} uploads: this server (streaming) vs a reference that reads whole bodies as the old app did`,
      ours: `${f(o.peakRss, 1)} MiB`,
      baseline: `${f(r.peakRss, 1)} MiB`,
      ratio: o.peakRss / r.peakRss,
      goal: null,
      lowerIsBetter: true,
      command: reproduce("memory"),
    },
  ];
  let body = `${count} \`curl -F problem_id=p1 -F recording=@file\` uploads of the same ${sizeText(file.size)} file at once to \`POST /sessions/{id}/recording\` on local storage (a temporary folder on the same disk), each checked (\`ok\`, size). **This server**: the release binary, which streams each body into storage (\`problem_id\` comes first, so straight into the object's temporary file). **Reference** (a baseline, not the product): \`bench/old_app_reference.py\`, a standard-library Python server that reads every body whole before writing the file, as the old FastAPI app's \`await recording.read()\` did; it writes from a view of the body without a second copy, so its figure is a lower bound for the old app's. Peak RSS is VmHWM of a fresh process.\n\n`;
  body += "| server | peak RSS MiB (idle before) | seconds for all | CPU s |\n|---|---|---|---|\n";
  body += `| this server | ${f(o.peakRss, 1)} (${f(o.idleRss, 1)}) | ${f(o.ms / 1000)} | ${f(o.cpu)} |\n`;
  body += `| reference (whole bodies in memory) | ${f(r.peakRss, 1)} (${f(r.idleRss, 1)}) | ${f(r.ms / 1000)} | ${f(r.cpu)} |\n`;
  return { id: "memory", title: "Memory of the old route", rows, body };
}

// ---------------------------------------------------------------------------------------
// 5. Time to safe after stop.

async function benchSafe() {
  const g = await garage();
  const uplink = await startProxy({
    target: { host: "127.0.0.1", port: Number(new URL(g.endpoint).port) },
    upBytesPerSec: (opts.uplinkMbit * 1e6) / 8,
  });
  const www = benchWww();
  // Server A signs URLs for Garage itself (loopback); server B, sharing the bucket and
  // the secret, signs them for the rate-limited link in front of Garage.
  const serverA = await startServer(BIN, ROOT, { ...s3Env(g), WWW_DIR: www });
  const serverB = await startServer(BIN, ROOT, { ...s3Env(g), WWW_DIR: www, S3_PUBLIC_ENDPOINT: uplink.url, CORS_ORIGINS: "*" });
  const page = await benchPage(serverA.url);
  try {
    const sessions = {
      liveDirect: await createSession(serverA.url),
      liveUplink: await createSession(serverB.url),
      afterDirect: await createSession(serverA.url),
      afterUplink: await createSession(serverB.url),
    };
    const cfg = { vbps: VIDEO_BPS, abps: AUDIO_BPS, serverB: serverB.url, sessions };
    await page.evaluate(async (cfg) => {
      const { Recorder } = window.client;
      const options = (s, problemId, server) => ({
        server,
        token: s.token,
        sessionId: s.session_id,
        problemId,
        kind: "av",
        videoBitsPerSecond: cfg.vbps,
        audioBitsPerSecond: cfg.abps,
      });
      const recA = new Recorder(options(cfg.sessions.liveDirect, "live", ""));
      const recB = new Recorder(options(cfg.sessions.liveUplink, "live", cfg.serverB));
      await recA.start();
      await recB.start();
      window.bench = { recA, recB, cfg, options };
    }, cfg);
    say(`safe: recording ${opts.recordSecs} s with two recorders`);
    const until = Date.now() + opts.recordSecs * 1000;
    while (Date.now() < until) {
      await sleep(Math.min(5000, until - Date.now()));
      const states = await page.evaluate(() => [window.bench.recA.state, window.bench.recB.state]);
      check(states.every((s) => s === "recording"), `recorders: ${states}`);
    }
    const live = await page.evaluate(async () => {
      const { recA, recB } = window.bench;
      const t0 = performance.now();
      const done = (rec) => rec.stop().then((entry) => ({ entry, ms: performance.now() - t0, parts: rec.progress.parts_stored }));
      const [a, b] = await Promise.all([done(recA), done(recB)]);
      return { a, b, mime: recA.mimeType };
    });
    check(live.a.entry.status === "complete" && live.b.entry.status === "complete", "live recordings complete");
    // The baseline uploads exactly the loopback recording's bytes (read back from the
    // bucket), once the live recorders are done, so that no upload shares the machine
    // with another. A MediaRecorder hands over its Blob a few milliseconds after stop;
    // that is counted as nothing, in the baseline's favour.
    const playback = await api(
      serverA.url,
      "GET",
      `/api/sessions/${sessions.liveDirect.session_id}/recordings/${live.a.entry.id}/url`,
      RESEARCHER_TOKEN,
    );
    const after = {};
    for (const [name, server] of [["afterDirect", ""], ["afterUplink", serverB.url]]) {
      after[name] = await page.evaluate(
        async ({ name, server, url, mime }) => {
          const { cfg, options } = window.bench;
          window.bench.blob ??= await (await fetch(url)).blob();
          const rec = new window.client.Recorder(options(cfg.sessions[name], "after", server));
          const t0 = performance.now();
          const entry = await rec.uploadBlob(window.bench.blob, mime);
          return { entry, ms: performance.now() - t0, parts: rec.progress.parts_stored };
        },
        { name, server, url: playback.url, mime: live.mime },
      );
      const e = after[name].entry;
      check(e.status === "complete" && e.size === live.a.entry.size && e.sha256 === live.a.entry.sha256, `${name}: not the same recording`);
    }
    check(page.benchErrors.length === 0, `page errors: ${page.benchErrors.join("; ")}`);
    const r = {
      liveDirect: live.a.ms,
      liveUplink: live.b.ms,
      afterDirect: after.afterDirect.ms,
      afterUplink: after.afterUplink.ms,
    };
    say(`safe: ${JSON.stringify(r)}`);
    const mbit = (bytes) => (bytes * 8) / 1e6 / opts.recordSecs;
    const rows = [
      {
        what: `Time to safe after stop, ${opts.recordSecs} s recording at ${VIDEO_BPS / 1e6} Mbit/s asked, loopback to Garage: upload while recording vs upload after stop`,
        ours: `${f(r.liveDirect / 1000)} s`,
        baseline: `${f(r.afterDirect / 1000)} s`,
        ratio: r.liveDirect / r.afterDirect,
        goal: null,
        lowerIsBetter: true,
        command: reproduce("safe"),
      },
      {
        what: `Time to safe after stop, same, over a ${opts.uplinkMbit} Mbit/s uplink`,
        ours: `${f(r.liveUplink / 1000)} s`,
        baseline: `${f(r.afterUplink / 1000)} s`,
        ratio: r.liveUplink / r.afterUplink,
        goal: null,
        lowerIsBetter: true,
        command: reproduce("safe"),
      },
    ];
    let body = `Headless Chromium's fake camera fed a webcam-like video (640×480, a moving pattern with light sensor-like noise, \`writeCameraY4m\` in \`bench/procs.mjs\`, so that the encoder spends about the bitrate it is asked for) and its fake microphone; MediaRecorder asked for ${VIDEO_BPS / 1e6} Mbit/s video and ${AUDIO_BPS / 1000} kbit/s audio (\`${live.mime}\`), ${opts.recordSecs} s. Two \`Recorder\`s record at once, uploading while recording: one straight to Garage on loopback, one through a ${opts.uplinkMbit} Mbit/s uplink (a rate-limiting TCP proxy in front of Garage, \`bench/proxy.mjs\`, for which a second server sharing the bucket and secret signs the URLs). Both are stopped at the same instant; **upload while recording** is the time from \`stop()\` to the completed manifest entry (the last, smaller part, then complete). **Upload after stop** (baseline, the old app's way) is \`Recorder.uploadBlob(blob)\` of exactly the loopback recording's bytes (read back from the bucket; the SHA-256 is checked), through the same uploader, directly and through the same uplink, once the live uploads are done, so that no two uploads share the machine; the few milliseconds a MediaRecorder takes to hand over its Blob after stop are counted as nothing, in the baseline's favour. Run with \`--record-secs 60\` for a shorter bench.\n\n`;
    body += "| recording | bytes | Mbit/s recorded | parts | stop → complete s |\n|---|---|---|---|---|\n";
    body += `| while recording, loopback | ${live.a.entry.size.toLocaleString("en")} | ${f(mbit(live.a.entry.size))} | ${live.a.parts} | ${f(r.liveDirect / 1000)} |\n`;
    body += `| while recording, ${opts.uplinkMbit} Mbit/s uplink | ${live.b.entry.size.toLocaleString("en")} | ${f(mbit(live.b.entry.size))} | ${live.b.parts} | ${f(r.liveUplink / 1000)} |\n`;
    body += `| after stop, loopback | ${after.afterDirect.entry.size.toLocaleString("en")} | ${f(mbit(after.afterDirect.entry.size))} | ${after.afterDirect.parts} | ${f(r.afterDirect / 1000)} |\n`;
    body += `| after stop, ${opts.uplinkMbit} Mbit/s uplink | ${after.afterUplink.entry.size.toLocaleString("en")} | ${f(mbit(after.afterUplink.entry.size))} | ${after.afterUplink.parts} | ${f(r.afterUplink / 1000)} |\n`;
    return { id: "safe", title: "Time to safe after stop", rows, body };
  } finally {
    await page.close();
    await serverA.stop();
    await serverB.stop();
    await uplink.close();
  }
}

// ---------------------------------------------------------------------------------------
// 6. The local backend's PUTs against a raw sequential write.

async function benchLocal() {
  const file = await mediaFile(SIZES.local);
  const dataDir = join(temp, "local-data");
  mkdirSync(dataDir);
  const server = await startServer(BIN, ROOT, { STORAGE_BACKEND: "local", DATA_DIR: dataDir, WWW_DIR: benchWww() });
  const runs = { raw: [], seq: [], par: [] };
  try {
    for (let r = 0; r < opts.rounds; r++) {
      const rawPath = join(dataDir, `raw-${r}.bin`);
      const dd = await run("dd", [`if=${file.path}`, `of=${rawPath}`, "bs=1M", "conv=fsync", "status=none"]);
      check(dd.code === 0, `dd: ${dd.stderr}`);
      runs.raw.push(dd.ms);
      rmSync(rawPath);
      for (const [name, parallel] of [["seq", false], ["par", true]]) {
        const session = await createSession(server.url);
        const result = await curlUpload(server.url, session, `local${r}`, file, { parallel });
        checkEntry(result.entry, file, `local ${name}`);
        runs[name].push(result);
      }
      say(`local round ${r + 1}: raw ${f(mibps(file.size, runs.raw.at(-1)), 0)} MiB/s`);
    }
  } finally {
    await server.stop();
  }
  const raw = mibps(file.size, median(runs.raw));
  const put = (name) => mibps(file.size, median(runs[name].map((x) => x.putMs)));
  const whole = (name) => mibps(file.size, median(runs[name].map((x) => x.ms)));
  const completeMs = (name) => median(runs[name].map((x) => x.completeMs));
  const rows = [
    {
      what: `Local backend: signed part PUTs to \`/storage\` (${sizeText(file.size)}, one at a time) vs a raw sequential write with fsync`,
      ours: `${f(put("seq"), 0)} MiB/s`,
      baseline: `${f(raw, 0)} MiB/s`,
      ratio: put("seq") / raw,
      goal: null,
      command: reproduce("local"),
    },
    {
      what: `Local backend: the same with ${CONCURRENCY} PUTs in flight (the client's concurrency)`,
      ours: `${f(put("par"), 0)} MiB/s`,
      baseline: `${f(raw, 0)} MiB/s`,
      ratio: put("par") / raw,
      goal: null,
      command: reproduce("local"),
    },
  ];
  let body = `The release server on local storage (a temporary folder) and \`dd if=FILE of=OUT bs=1M conv=fsync\` writing the same ${sizeText(file.size)} to the same file system, ${opts.rounds} rounds alternating (medians; the source file is in the page cache for both). The PUTs are the ${file.parts.length} presigned part URLs of one upload sent by one \`curl\` (one connection, one part after another; or \`--parallel-max ${CONCURRENCY}\`). Each part is streamed through a 1 MiB buffer into a temporary file, fsynced, renamed into place, its folder fsynced. "Through complete" adds the complete call, which checks the parts and joins them into the object (a kernel copy, then one more fsync).\n\n`;
  body += "| writer | MiB/s, parts | MiB/s, through complete | complete ms | ratio to raw (parts) |\n|---|---|---|---|---|\n";
  body += `| raw \`dd\` + fsync | ${f(raw, 0)} | | | 1 |\n`;
  body += `| PUTs, one at a time | ${f(put("seq"), 0)} | ${f(whole("seq"), 0)} | ${f(completeMs("seq"), 0)} | ${f(put("seq") / raw)} |\n`;
  body += `| PUTs, ${CONCURRENCY} in flight | ${f(put("par"), 0)} | ${f(whole("par"), 0)} | ${f(completeMs("par"), 0)} | ${f(put("par") / raw)} |\n`;
  return { id: "local", title: "Local backend", rows, body };
}

// ---------------------------------------------------------------------------------------
// 7. The wasm client's size.

async function benchWasm() {
  const measure = (name) => {
    const bytes = readFileSync(join(ROOT, "www", "pkg", name));
    return { raw: bytes.length, gz: gzipSync(bytes, { level: 9 }).length };
  };
  const wasm = measure("client_bg.wasm");
  const js = measure("client.js");
  const rows = [
    {
      what: "The wasm client, `www/pkg/client_bg.wasm` (raw / gzip -9)",
      ours: `${wasm.raw.toLocaleString("en")} B / ${wasm.gz.toLocaleString("en")} B`,
      baseline: "",
      ratio: wasm.gz / wasm.raw,
      ratioLabel: "gzip/raw",
      goal: null,
      command: reproduce("wasm"),
    },
  ];
  let body = "Built by `scripts/dev web` (`wasm-release` profile: `opt-level = \"s\"`, LTO, one codegen unit; no `wasm-opt`). Gzip at level 9 with zlib.\n\n";
  body += "| file | bytes | gzipped |\n|---|---|---|\n";
  body += `| \`client_bg.wasm\` | ${wasm.raw.toLocaleString("en")} | ${wasm.gz.toLocaleString("en")} |\n`;
  body += `| \`client.js\` (generated glue) | ${js.raw.toLocaleString("en")} | ${js.gz.toLocaleString("en")} |\n`;
  return { id: "wasm", title: "The wasm client's size", rows, body };
}

// ---------------------------------------------------------------------------------------
// The report.

function machine() {
  const sh = (cmd, args) => {
    try {
      return execFileSync(cmd, args, { stdio: ["ignore", "pipe", "ignore"] }).toString().trim();
    } catch {
      return "unknown";
    }
  };
  const commit = sh("git", ["-C", ROOT, "rev-parse", "--short", "HEAD"]);
  const dirty = sh("git", ["-C", ROOT, "status", "--porcelain", "--untracked-files=no"]) ? " with uncommitted changes" : "";
  return {
    cpus: cpus().length,
    model: cpus()[0]?.model ?? "unknown",
    memGiB: totalmem() / 1024 ** 3,
    kernel: sh("uname", ["-r"]),
    load: readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" "),
    chromium: sh(process.env.CHROMIUM_PATH || "/usr/bin/chromium", ["--version"]),
    garage: sh("garage", ["--version"]).split("\n")[0],
    curl: sh("curl", ["--version"]).split("\n")[0].split(" ").slice(0, 2).join(" "),
    python: sh("python3", ["--version"]),
    node: process.version,
    commit: `${commit}${dirty}`,
  };
}

function ratioCell(row) {
  const text = row.ratio > 0 && row.ratio < 0.01 ? row.ratio.toPrecision(2) : f(row.ratio);
  return row.ratioLabel ? `${text} (${row.ratioLabel})` : text;
}

function goalCell(row) {
  if (row.goal === null || row.goal === undefined) return row.lowerIsBetter ? "lower is better" : "";
  const met = row.ratio >= row.goal;
  return `≥ ${row.goal}: ${met ? "**met**" : "**missed**"}`;
}

function report(results, failures, m, startedAt, endedLoad) {
  const minutes = (Date.now() - startedAt) / 60000;
  let md = "# Benchmarks\n\n";
  if (opts.smoke) md += "> **Smoke run** (`--smoke`): toy sizes and short loads that check every section works end to end. These figures are not measurements; run `scripts/dev bench` for those.\n\n";
  md += "<!-- Generated by `scripts/dev bench` (bench/run.mjs); the analysis paragraphs are kept by hand in bench/notes.md. -->\n\n";
  md += `Every figure is a ratio against a baseline measured **in the same run, on the same machine**; the absolute numbers are there for context only (this machine is small and shared, so they move from run to run, the ratios much less). Generated by \`scripts/dev bench\` on ${new Date(startedAt).toISOString().slice(0, 16).replace("T", " ")} UTC in ${f(minutes, 1)} minutes, commit ${m.commit}.\n\n`;
  md += `**Machine**: ${m.cpus} cores (${m.model}), ${f(m.memGiB, 0)} GiB, Linux ${m.kernel}; **shared** with other work (load average ${m.load} at the start, ${endedLoad} at the end). **Builds**: the server, load generator and Garage test node are release builds (\`cargo build --release\`), the client is the \`wasm-release\` build of \`scripts/dev web\`. ${m.chromium}, ${m.garage}, ${m.curl}, ${m.python}, Node ${m.node}. Everything on loopback.\n\n`;
  md += "| figure | this design | baseline | ratio | goal | reproduce |\n|---|---|---|---|---|---|\n";
  for (const r of results) {
    for (const row of r.rows) {
      md += `| ${row.what} | ${row.ours} | ${row.baseline} | ${ratioCell(row)} | ${goalCell(row)} | \`${row.command}\` |\n`;
    }
  }
  for (const [id, error] of failures) md += `| ${id} | **failed**: ${String(error.message).split("\n")[0]} | | | | \`${reproduce(id)}\` |\n`;
  md += "\nRatios are this design over the baseline: above 1 is faster for rates, below 1 is less for costs and times (\"lower is better\").\n";
  const notes = readNotes();
  for (const r of results) {
    md += `\n## ${r.title}\n\n${r.body}\n`;
    if (notes[r.id]) md += `\n${notes[r.id]}\n`;
    md += `\nReproduce: \`${reproduce(r.id)}\`\n`;
  }
  return md;
}

/** The hand-written analysis per section (bench/notes.md, `## id` headings). */
function readNotes() {
  const notes = {};
  let text;
  try {
    text = readFileSync(join(ROOT, "bench", "notes.md"), "utf8");
  } catch {
    return notes;
  }
  for (const block of text.split(/^## /m).slice(1)) {
    const nl = block.indexOf("\n");
    notes[block.slice(0, nl).trim()] = block.slice(nl + 1).trim();
  }
  return notes;
}

// ---------------------------------------------------------------------------------------
// Main.

const BENCHES = {
  presign: benchPresign,
  throughput: benchThroughput,
  datapath: benchDatapath,
  memory: benchMemory,
  safe: benchSafe,
  local: benchLocal,
  wasm: benchWasm,
};

let cleaning = null;
async function cleanup() {
  cleaning ??= (async () => {
    try {
      await Promise.race([ctx.browser?.close(), sleep(10_000)]);
    } catch {
      // The browser may be gone already.
    }
    // Whatever of the browser is left (it was started by this process) goes too.
    for (const pid of descendants(process.pid)) {
      try {
        if (/chrom/i.test(readFileSync(`/proc/${pid}/comm`, "utf8"))) process.kill(pid, "SIGKILL");
      } catch {
        // Gone meanwhile.
      }
    }
    try {
      await stopAll();
    } catch (e) {
      say(`stopping processes: ${e.message}`);
    }
    try {
      rmSync(temp, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
    } catch (e) {
      say(`could not remove ${temp}: ${e.message}`);
    }
  })();
  return cleaning;
}

async function onSignal(signal) {
  say(`${signal}: stopping everything this run started`);
  await cleanup();
  process.exit(130);
}
for (const signal of SIGNALS) process.on(signal, onSignal);
// Should the process end some other way, nothing it started outlives it.
process.on("exit", () => {
  killAllNow();
  rmSync(temp, { recursive: true, force: true });
});
const deadline = setTimeout(async () => {
  say(`timed out after ${opts.timeoutMin} minutes; stopping everything this run started`);
  await cleanup();
  process.exit(1);
}, opts.timeoutMin * 60_000);

async function main() {
  const startedAt = Date.now();
  const m = machine();
  const wanted = opts.only ?? SECTIONS;
  const results = [];
  const failures = [];
  for (const id of wanted) {
    say(`${id}...`);
    const t0 = Date.now();
    try {
      results.push(await BENCHES[id]());
      say(`${id} done in ${f((Date.now() - t0) / 1000, 0)} s`);
    } catch (e) {
      say(`${id} FAILED: ${e.stack ?? e}`);
      failures.push([id, e]);
    }
  }
  const endedLoad = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
  const md = report(results, failures, m, startedAt, endedLoad);
  if (opts.out) {
    writeFileSync(opts.out, md);
    say(`wrote ${opts.out}`);
  } else {
    process.stdout.write(md);
  }
  return failures.length === 0;
}

let ok = false;
try {
  ok = await main();
} catch (e) {
  say(`failed: ${e.stack ?? e}`);
} finally {
  clearTimeout(deadline);
  await cleanup();
}
process.exit(ok ? 0 : 1);
