//! The storage conformance suite (`tests/conformance/mod.rs`) on every backend: the
//! local folder (on a temporary folder), memory, and S3 on a real Garage node (at the
//! end of this file).
//!
//! ```text
//! cargo test -p server --test storage_conformance
//! ```

mod conformance;

use std::sync::Arc;

use server::signing::{Secret, UrlSigner};
use server::storage::Storage;
use server::storage::local::LocalStorage;
use server::storage::memory::MemoryStorage;

fn signer() -> UrlSigner {
    UrlSigner::new(Secret::random(), "http://127.0.0.1:8080")
}

fn local() -> (Arc<dyn Storage>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStorage::new(dir.path().join("data"), signer());
    (Arc::new(storage), dir)
}

fn memory() -> (Arc<dyn Storage>, ()) {
    (Arc::new(MemoryStorage::new(signer())), ())
}

mod local {
    crate::conformance::suite!(crate::local());
}

mod memory {
    crate::conformance::suite!(crate::memory());
}

/// The whole suite in one go on one store, as a long-lived store sees it: checks
/// must not disturb one another.
#[tokio::test]
async fn the_whole_suite_runs_on_one_local_root() {
    let (storage, _dir) = local();
    conformance::run_all(storage).await;
}

// The S3 backend on a real Garage node (`tests/garage/mod.rs`; needs `garage`, which
// `scripts/dev setup` installs): one node for this binary, one bucket per check.
mod garage;

fn s3_on_garage() -> (Arc<dyn Storage>, garage::GarageBucket) {
    let bucket = garage::GarageNode::shared().bucket();
    (Arc::new(bucket.storage()), bucket)
}

mod s3_garage {
    crate::conformance::suite!(crate::s3_on_garage());
}
