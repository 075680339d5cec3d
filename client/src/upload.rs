//! Sending one part straight to the storage: ask the server for its presigned URL just
//! in time, PUT the part's Blob with exactly the signed headers, and follow
//! [`RetryState::decide`] on every answer.

use std::cell::Cell;
use std::rc::Rc;

use gloo_net::http::{Headers, Request};
use shared::api::{PartSpec, PresignedRequest, StartUploadResponse};
use shared::{RecordingId, SessionId};
use wasm_bindgen::JsValue;
use web_sys::{AbortController, Blob};

use crate::api::Api;
use crate::error::ClientError;
use crate::plan::Chunk;
use crate::retry::{Decision, Outcome, RetryPolicy, RetryState};
use crate::web;

impl Chunk for Blob {
    fn byte_len(&self) -> u64 {
        self.size() as u64
    }

    fn slice(&self, start: u64, end: u64) -> Self {
        self.slice_with_f64_and_f64(start as f64, end as f64)
            .expect("Blob.slice does not throw")
    }
}

/// Joins a part's pieces into one Blob. The browser references the pieces; no bytes
/// pass through wasm memory. The Blob has no type, so no `Content-Type` is sent unless
/// the signature asks for one.
pub fn join(pieces: &[Blob]) -> Blob {
    if let [one] = pieces {
        return one.clone();
    }
    let parts = js_sys::Array::new();
    for piece in pieces {
        parts.push(piece);
    }
    Blob::new_with_blob_sequence(&parts).expect("a Blob can be made of Blobs")
}

/// What every part of one upload shares.
#[derive(Debug)]
pub struct UploadContext {
    /// The server.
    pub api: Api,
    /// Retry timing and limits.
    pub policy: RetryPolicy,
    /// The session.
    pub session: SessionId,
    /// The recording.
    pub recording: RecordingId,
    /// The server's answer when the upload was opened.
    pub opened: StartUploadResponse,
    /// Aborts every PUT in flight (on cancel).
    pub abort: AbortController,
    /// Set once the recording is cancelled or has failed: parts stop retrying.
    pub stopped: Cell<bool>,
}

impl UploadContext {
    async fn presign(&self, number: u32, size: u64) -> Result<PresignedRequest, ClientError> {
        let spec = PartSpec {
            part_number: number,
            size,
        };
        let answer = self
            .api
            .presign_parts(
                &self.policy,
                &self.session,
                &self.recording,
                &self.opened.upload,
                vec![spec],
            )
            .await?;
        answer
            .parts
            .into_iter()
            .find(|p| p.part_number == number)
            .map(|p| p.request)
            .ok_or_else(|| ClientError::Server {
                status: 200,
                code: "unexpected_answer".into(),
                message: format!("no URL for part {number} in the answer"),
            })
    }

    /// Sends part `number` until it is stored or cannot be.
    pub async fn send_part(self: Rc<Self>, number: u32, body: Blob) -> Result<(), ClientError> {
        let size = body.size() as u64;
        let mut retry = RetryState::default();
        let mut signed: Option<PresignedRequest> = None;
        loop {
            if self.stopped.get() {
                return Err(ClientError::Cancelled);
            }
            let request = match signed.take() {
                Some(r)
                    if !self
                        .policy
                        .needs_fresh_signature(expires_ms(&r), web::now_ms()) =>
                {
                    r
                }
                _ => self.presign(number, size).await?,
            };
            let outcome = put(&request, &body, &self.abort).await;
            if self.stopped.get() {
                return Err(ClientError::Cancelled);
            }
            let decision = retry.decide(&self.policy, outcome, web::online(), &mut web::random);
            match decision {
                Decision::Done => return Ok(()),
                Decision::RetryAfter(ms) => {
                    web::sleep_ms(ms).await;
                    signed = Some(request);
                }
                Decision::Resign => {}
                Decision::WaitOnline => {
                    web::wait_online().await;
                    signed = Some(request);
                }
                Decision::Fail(e) => return Err(e),
            }
        }
    }
}

fn expires_ms(request: &PresignedRequest) -> u64 {
    u64::try_from(request.expires_at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// One PUT, with exactly the signed method and headers.
async fn put(request: &PresignedRequest, body: &Blob, abort: &AbortController) -> Outcome {
    let headers = Headers::new();
    for (name, value) in &request.headers {
        headers.set(name, value);
    }
    let method = match request.method.to_ascii_uppercase().as_str() {
        "POST" => gloo_net::http::Method::POST,
        _ => gloo_net::http::Method::PUT,
    };
    let built = Request::put(&request.url)
        .method(method)
        .headers(headers)
        .abort_signal(Some(&abort.signal()))
        .body(JsValue::from(body.clone()));
    let Ok(built) = built else {
        return Outcome::NetworkError;
    };
    match built.send().await {
        Ok(response) if (200..300).contains(&response.status()) => Outcome::Stored,
        Ok(response) => Outcome::Status {
            status: response.status(),
            body: response.text().await.unwrap_or_default(),
        },
        Err(_) => Outcome::NetworkError,
    }
}
