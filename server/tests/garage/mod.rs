//! A real Garage node for tests: a single node on free loopback ports in a temporary
//! folder, with one access key, and a fresh bucket per test.
//!
//! `garage` must be installed (`scripts/dev setup` does it; the README's test command
//! runs that first). The node is started under a tiny `sh` supervisor that holds the
//! read end of a pipe whose write end only this process has: when the handle is
//! dropped, or when the test process ends in any way (panic, abort, SIGKILL), the pipe
//! closes, and the supervisor stops Garage and removes the folder. No stray processes,
//! no leftover folders.
//!
//! [`GarageNode::shared`] starts one node per test binary (a second or so) and every
//! test takes its own bucket from it with [`GarageNode::bucket`], so tests never see
//! each other's objects. The same code backs `cargo run -p server --example
//! garage_test_node`, which the browser tests use to get a node of their own.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use server::storage::s3::{S3Settings, S3Storage};

/// The region the node's S3 API answers to.
pub const REGION: &str = "garage";

/// How long a node may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Garage node. Dropping it stops the node and deletes its folder.
pub struct GarageNode {
    /// The S3 API, e.g. `http://127.0.0.1:39010`.
    pub s3_endpoint: String,
    /// The admin API, e.g. `http://127.0.0.1:39013`.
    pub admin_endpoint: String,
    /// The admin API's bearer token.
    pub admin_token: String,
    /// The access key id allowed on every bucket made by [`GarageNode::bucket`].
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: String,
    dir: PathBuf,
    config: PathBuf,
    garage: PathBuf,
    supervisor: Mutex<Option<Supervisor>>,
}

struct Supervisor {
    child: Child,
    /// Held open for the node's life; closing it stops the node.
    lifeline: ChildStdin,
}

/// A bucket on a node, with credentials that may read, write and administer it.
#[derive(Debug, Clone)]
pub struct GarageBucket {
    /// The S3 endpoint.
    pub endpoint: String,
    /// The bucket name.
    pub bucket: String,
    /// The access key id.
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: String,
}

impl GarageBucket {
    /// Settings that reach this bucket (path-style, region `garage`, no prefix).
    pub fn settings(&self) -> S3Settings {
        S3Settings::custom(&self.bucket, &self.endpoint, REGION)
    }

    /// A backend on this bucket.
    pub fn storage(&self) -> S3Storage {
        self.storage_with(self.settings())
    }

    /// A backend with other settings (a key prefix, a public endpoint), same credentials.
    pub fn storage_with(&self, settings: S3Settings) -> S3Storage {
        S3Storage::with_credentials(settings, &self.access_key_id, &self.secret_access_key)
            .expect("the Garage settings are complete")
    }
}

/// The `garage` binary: on `PATH`, else where `cargo install` puts it.
fn find_garage() -> Result<PathBuf, String> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin"));
    on_path
        .into_iter()
        .chain(cargo_bin)
        .map(|dir| dir.join("garage"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "the `garage` binary (Garage 2.5.0) is not installed, so the S3 tests cannot run: \
             run `scripts/dev setup` (or `scripts/dev test`, which installs it first)"
                .to_owned()
        })
}

/// Three distinct free loopback ports. Another process could take one before Garage
/// binds it; `start` then retries with new ports.
fn free_ports() -> [u16; 3] {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    let port = |i: usize| listeners[i].local_addr().unwrap().port();
    [port(0), port(1), port(2)]
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// Reads `Label:   value` from the CLI's output.
fn field(output: &str, label: &str) -> Option<String> {
    output.lines().find_map(|line| {
        line.trim()
            .strip_prefix(label)
            .and_then(|rest| rest.trim_start().strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    })
}

impl GarageNode {
    /// One node for the whole test binary, started on first use. It stops when the
    /// test process ends.
    pub fn shared() -> &'static GarageNode {
        static NODE: OnceLock<GarageNode> = OnceLock::new();
        NODE.get_or_init(|| GarageNode::start().unwrap_or_else(|e| panic!("{e}")))
    }

    /// Starts a node of its own, with one access key. Fails with a message saying
    /// what to do.
    pub fn start() -> Result<GarageNode, String> {
        let garage = find_garage()?;
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(&garage) {
                Ok(node) => return Ok(node),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn try_start(garage: &Path) -> Result<GarageNode, String> {
        let dir = tempfile::Builder::new()
            .prefix("garage-test-")
            .tempdir()
            .map_err(|e| format!("cannot make a temporary folder: {e}"))?
            .keep();
        let [s3, rpc, admin] = free_ports();
        let admin_token = random_hex(32);
        let config = dir.join("garage.toml");
        let toml = format!(
            r#"metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{admin_token}"
"#,
            dir = dir.display(),
            secret = random_hex(32),
        );
        std::fs::write(&config, toml)
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;

        // The supervisor: Garage in the background, then block on stdin until this
        // process closes it (or dies), then stop Garage and remove the folder.
        let script = r#"
            "$1" -c "$2" server >"$3/garage.log" 2>&1 </dev/null &
            pid=$!
            cat >/dev/null
            kill "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
            rm -rf "$3"
        "#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("garage-supervisor")
            .arg(garage)
            .arg(&config)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start sh to supervise garage: {e}"))?;
        let lifeline = child.stdin.take().expect("stdin is piped");

        let node = GarageNode {
            s3_endpoint: format!("http://127.0.0.1:{s3}"),
            admin_endpoint: format!("http://127.0.0.1:{admin}"),
            admin_token,
            access_key_id: String::new(),
            secret_access_key: String::new(),
            dir,
            config,
            garage: garage.to_owned(),
            supervisor: Mutex::new(Some(Supervisor { child, lifeline })),
        };
        node.configure()
    }

    /// Waits for the node, gives it a layout and creates the access key.
    fn configure(mut self) -> Result<GarageNode, String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let node_id = loop {
            match self.cli(&["node", "id", "-q"]) {
                Ok(out) => break out.trim().split('@').next().unwrap_or_default().to_owned(),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("garage did not start: {e}\n{}", self.log()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        // `node id` reads the node's key from disk and may answer before the daemon
        // listens for RPC, which `layout assign` needs: retry it until then.
        while let Err(e) = self.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node_id]) {
            if Instant::now() > deadline {
                return Err(format!("{e}\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.cli(&["layout", "apply", "--version", "1"])?;
        let key = self.cli(&["key", "create", "recorder-test"])?;
        self.access_key_id = field(&key, "Key ID").ok_or("no Key ID in `garage key create`")?;
        self.secret_access_key =
            field(&key, "Secret key").ok_or("no Secret key in `garage key create`")?;
        // The S3 API answers once the layout is in force.
        while !self.s3_answers() {
            if Instant::now() > deadline {
                return Err(format!("garage's S3 API never answered\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(self)
    }

    fn s3_answers(&self) -> bool {
        let addr = self.s3_endpoint.trim_start_matches("http://");
        let Ok(mut stream) = TcpStream::connect(addr) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let mut answer = String::new();
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_string(&mut answer).is_ok()
            && answer.starts_with("HTTP/1.1 ")
            && !answer.starts_with("HTTP/1.1 5")
    }

    /// Runs a `garage` CLI command against this node and returns its standard output.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.garage)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run garage: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "`garage {}` failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ))
        }
    }

    /// The node's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("garage.log")).unwrap_or_default()
    }

    /// A new, empty bucket with a unique name, which this node's key may read, write
    /// and administer (CORS, lifecycle).
    pub fn bucket(&self) -> GarageBucket {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let name = format!(
            "test-{}-{}",
            NEXT.fetch_add(1, Ordering::Relaxed),
            random_hex(4)
        );
        self.cli(&["bucket", "create", &name])
            .and_then(|_| {
                self.cli(&[
                    "bucket",
                    "allow",
                    "--read",
                    "--write",
                    "--owner",
                    &name,
                    "--key",
                    "recorder-test",
                ])
            })
            .unwrap_or_else(|e| panic!("{e}"));
        GarageBucket {
            endpoint: self.s3_endpoint.clone(),
            bucket: name,
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
        }
    }

    /// Stops the node and removes its folder, waiting until both are done.
    pub fn stop(&self) {
        let taken = self
            .supervisor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(Supervisor {
            mut child,
            lifeline,
        }) = taken
        {
            drop(lifeline);
            let _ = child.wait();
        }
    }
}

impl Drop for GarageNode {
    fn drop(&mut self) {
        self.stop();
    }
}
