//! The recording's SHA-256, computed as its bytes arrive.
//!
//! Hashing reads every recorded byte a second time, and on the page's thread it
//! competes with the upload itself (the benchmarks showed it as the largest share of
//! that thread's time). So the hashing runs in a Web Worker (`client/js/hash_worker.js`,
//! which loads this same module with the page's compiled wasm and feeds each Blob to
//! [`Sha256Stream`]); the page only posts it the Blobs, which costs no copy. A page that
//! cannot start a module worker hashes on its own thread, with the same code.

use sha2::{Digest, Sha256};
use wasm_bindgen::prelude::*;
use web_sys::Blob;

use crate::error::ClientError;
use crate::web;

/// An incremental SHA-256 for JS: what the hashing worker runs. Not needed by pages.
#[wasm_bindgen]
#[derive(Default)]
pub struct Sha256Stream {
    inner: Sha256,
}

#[wasm_bindgen]
impl Sha256Stream {
    /// A hash of nothing yet.
    #[wasm_bindgen(constructor)]
    pub fn new() -> Sha256Stream {
        Sha256Stream::default()
    }

    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
    }

    /// The hash of everything added, as 64 lowercase hex digits.
    pub fn finish(self) -> String {
        hex::encode(self.inner.finalize())
    }
}

#[wasm_bindgen(module = "/js/hash_worker.js")]
extern "C" {
    /// The page's handle on a hashing worker.
    type HashWorker;

    #[wasm_bindgen(catch, js_name = startHashWorker)]
    fn start_hash_worker(module: &JsValue) -> Result<HashWorker, JsValue>;

    #[wasm_bindgen(method)]
    fn push(this: &HashWorker, blob: &Blob);

    #[wasm_bindgen(method)]
    fn finish(this: &HashWorker) -> js_sys::Promise;

    #[wasm_bindgen(method)]
    fn terminate(this: &HashWorker);
}

/// A running hashing worker, ended when dropped (a cancelled or failed recording).
pub struct Worker(HashWorker);

impl Drop for Worker {
    fn drop(&mut self) {
        self.0.terminate();
    }
}

/// The hash of one recording's bytes, fed chunk by chunk in order.
pub enum ChunkHasher {
    /// In a worker.
    Worker(Worker),
    /// On the page's thread.
    Here(Sha256),
}

/// How much of a chunk is copied into wasm memory at a time, on the page's thread.
const WINDOW: u32 = 1 << 20;

impl ChunkHasher {
    /// A worker when one starts, else the page's thread.
    pub fn start() -> ChunkHasher {
        match start_hash_worker(&wasm_bindgen::module()) {
            Ok(worker) => ChunkHasher::Worker(Worker(worker)),
            Err(e) => {
                web_sys::console::warn_1(
                    &format!(
                        "recorder: hashing on the page's thread (no worker: {})",
                        web::describe(&e).1
                    )
                    .into(),
                );
                ChunkHasher::Here(Sha256::new())
            }
        }
    }

    /// Adds the next chunk. With a worker this only posts it; on the page's thread it
    /// reads and hashes it.
    pub async fn update(&mut self, blob: &Blob) -> Result<(), ClientError> {
        match self {
            ChunkHasher::Worker(worker) => {
                worker.0.push(blob);
                Ok(())
            }
            ChunkHasher::Here(hasher) => {
                let buffer = web::await_promise(blob.array_buffer())
                    .await
                    .map_err(|(_, message)| ClientError::Recorder(message))?;
                let bytes = js_sys::Uint8Array::new(&buffer);
                let mut window = vec![0; WINDOW.min(bytes.length()) as usize];
                let mut at = 0;
                while at < bytes.length() {
                    let end = at.saturating_add(WINDOW).min(bytes.length());
                    let piece = &mut window[..(end - at) as usize];
                    bytes.subarray(at, end).copy_to(piece);
                    hasher.update(&*piece);
                    at = end;
                }
                Ok(())
            }
        }
    }

    /// The hash of every chunk added, as 64 lowercase hex digits. Waits for a worker
    /// to catch up; fails if the worker did.
    pub async fn finish(self) -> Result<String, ClientError> {
        match self {
            ChunkHasher::Worker(worker) => web::await_promise(worker.0.finish())
                .await
                .map_err(|(_, message)| ClientError::Recorder(message))?
                .as_string()
                .ok_or_else(|| ClientError::Recorder("the hashing worker gave no digest".into())),
            ChunkHasher::Here(hasher) => Ok(hex::encode(hasher.finalize())),
        }
    }
}
