//! A throw-away Garage node for tests outside cargo (the browser end-to-end tests):
//! the same harness as the Rust tests (`tests/garage/mod.rs`), as a process.
//!
//! ```text
//! cargo run -q -p server --example garage_test_node
//! ```
//!
//! Prints one JSON line once the node is up and a bucket is ready:
//!
//! ```text
//! {"endpoint":"http://127.0.0.1:40123","region":"garage","bucket":"test-1-ab12cd34",
//!  "access_key_id":"GK...","secret_access_key":"..."}
//! ```
//!
//! then keeps the node until its standard input closes (the caller ends it, or exits
//! in any way), stops it and deletes its folder. It sets no CORS rule: run
//! `recorder-server setup-s3` against it, as an operator would.

#[path = "../tests/garage/mod.rs"]
mod garage;

use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let node = match garage::GarageNode::start() {
        Ok(node) => node,
        Err(e) => {
            eprintln!("garage_test_node: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bucket = node.bucket();
    let line = serde_json::json!({
        "endpoint": bucket.endpoint,
        "region": garage::REGION,
        "bucket": bucket.bucket,
        "access_key_id": bucket.access_key_id,
        "secret_access_key": bucket.secret_access_key,
    });
    println!("{line}");
    // Wait for the caller to close our standard input (or to die).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(node);
    ExitCode::SUCCESS
}
