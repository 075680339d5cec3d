// The recording's SHA-256 in a Web Worker, so that hashing every recorded byte does
// not hold up the page's thread, which sends the parts.
//
// This file is both sides. On the page, the client (wasm) calls `startHashWorker`,
// which starts this same file as a module worker and returns a small handle. In the
// worker, the file loads the client's module with the page's compiled wasm and feeds
// the Blobs it is sent, in order, to the client's `Sha256Stream`.

const IN_WORKER =
  typeof WorkerGlobalScope !== "undefined" && self instanceof WorkerGlobalScope;

// How much of a Blob is read into memory at a time.
const WINDOW = 4 << 20;

// The page's side: starts the worker and hands it the wasm module. Throws when the
// page cannot start a module worker; the client then hashes on the page's thread.
export function startHashWorker(module) {
  const worker = new Worker(new URL(import.meta.url), { type: "module" });
  let failure = null;
  const waiting = [];
  const settle = (outcome) => {
    for (const { resolve, reject } of waiting.splice(0)) {
      if (outcome.error !== undefined) reject(new Error(outcome.error));
      else resolve(outcome.digest);
    }
  };
  worker.onmessage = (event) => {
    if (event.data.error !== undefined) failure = event.data.error;
    settle(event.data);
  };
  worker.onerror = (event) => {
    event.preventDefault();
    failure = `the hashing worker failed: ${event.message || "could not load"}`;
    settle({ error: failure });
  };
  worker.postMessage({ module });
  return {
    push(blob) {
      if (failure === null) worker.postMessage({ blob });
    },
    finish() {
      if (failure !== null) return Promise.reject(new Error(failure));
      return new Promise((resolve, reject) => {
        waiting.push({ resolve, reject });
        worker.postMessage({ finish: true });
      });
    },
    terminate() {
      worker.terminate();
    },
  };
}

if (IN_WORKER) {
  let hasher = null;
  let failed = false;
  let queue = Promise.resolve();
  const handle = async (message) => {
    if (message.module !== undefined) {
      // wasm-bindgen puts this file at pkg/snippets/client-<hash>/js/, beside the glue's
      // pkg/client.js.
      const glue = await import(new URL("../../../client.js", import.meta.url));
      await glue.default({ module_or_path: message.module });
      hasher = new glue.Sha256Stream();
    } else if (message.blob !== undefined) {
      const blob = message.blob;
      for (let at = 0; at < blob.size; at += WINDOW) {
        const bytes = new Uint8Array(await blob.slice(at, at + WINDOW).arrayBuffer());
        hasher.update(bytes);
      }
    } else if (message.finish) {
      self.postMessage({ digest: hasher.finish() });
      self.close();
    }
  };
  self.onmessage = (event) => {
    queue = queue.then(async () => {
      if (failed) return;
      try {
        await handle(event.data);
      } catch (e) {
        failed = true;
        self.postMessage({ error: `hashing failed in the worker: ${e && e.message ? e.message : e}` });
      }
    });
  };
}
