//! The recorder's browser client, compiled to wasm: it records with MediaRecorder and
//! uploads each recording straight to the storage through presigned multipart URLs
//! while it is being recorded.
//!
//! The pure logic is plain Rust with host tests (`cargo test -p client`): how chunks
//! become parts ([`plan`]), what to do after each attempt ([`retry`]), progress
//! accounting ([`progress`]), format choice ([`format`]) and errors ([`error`]). The
//! browser glue ([`capture`], [`upload`], [`recorder`], [`api`], [`web`]) compiles on
//! the host too but only runs in a browser; [`js`] is the exported JS API. Build the
//! pages' module with `scripts/dev web` (wasm-bindgen `--target web` into `www/pkg`).

pub mod api;
pub mod capture;
pub mod error;
pub mod format;
pub mod hashing;
pub mod js;
pub mod plan;
pub mod progress;
pub mod recorder;
pub mod retry;
pub mod upload;
pub mod web;
