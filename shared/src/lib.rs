//! The contract between the server and the browser client.
//!
//! Everything both sides must agree on lives here and nowhere else: validated ids
//! ([`ids`]), the object-key layout ([`keys`]), the session manifest stored as
//! `sessions/{id}/session.json` ([`manifest`]), and the request/response types of every
//! API route ([`api`]). The crate is serde types and pure functions only, with no I/O, so
//! it builds for `wasm32-unknown-unknown` as well as for the host:
//!
//! ```text
//! cargo test -p shared
//! cargo check -p shared --target wasm32-unknown-unknown
//! ```

pub mod api;
pub mod ids;
pub mod keys;
pub mod manifest;
pub mod media;

pub use ids::{IdError, ObjectKey, ProblemId, RecordingId, SessionId};
pub use manifest::{Recording, RecordingStatus, SessionManifest};

/// Smallest size, in bytes, of every multipart part but the last (the S3 rule: 5 MiB).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// Largest size, in bytes, of one part (the S3 rule: 5 GiB).
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// Most parts one multipart upload may have (the S3 rule).
pub const MAX_PARTS: u32 = 10_000;
