//! The JS API, exported with wasm-bindgen (see the README's "Pages and the embed API").
//!
//! ```js
//! import init, { Recorder, Api, createSession, listDevices } from "./pkg/client.js";
//! await init();
//! const { session_id, token } = await createSession("", { study: "s1" });
//! const rec = new Recorder({ token, sessionId: session_id, problemId: "p1", kind: "av" });
//! rec.on("progress", (p) => console.log(p.bytes_recorded, p.bytes_stored));
//! await rec.start();
//! const entry = await rec.stop(); // the manifest entry, status "complete"
//! ```
//!
//! Synchronous exports return `Result<_, JsError>`; asynchronous ones return a
//! `Promise` that rejects with an `Error` whose `code` property is the
//! [`ClientError::code`].

use std::rc::Rc;

use js_sys::Promise;
use shared::manifest::Metadata;
use shared::{RecordingId, SessionId};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::api::Api;
use crate::capture;
use crate::error::ClientError;
use crate::format::Kind;
use crate::recorder::{self, Options};
use crate::web;

/// An `Error` for JS with the message and a `code` property.
fn js_error(e: &ClientError) -> JsValue {
    let value: JsValue = JsError::new(&e.to_string()).into();
    let _ = js_sys::Reflect::set(&value, &"code".into(), &e.code().into());
    value
}

fn promise<F>(future: F) -> Promise
where
    F: std::future::Future<Output = Result<JsValue, ClientError>> + 'static,
{
    future_to_promise(async move { future.await.map_err(|e| js_error(&e)) })
}

fn usage(e: ClientError) -> JsError {
    JsError::new(&e.to_string())
}

/// Records one problem and uploads it while recording.
///
/// `new Recorder({server, token, sessionId, problemId, kind, deviceId, audioDeviceId,
/// videoBitsPerSecond, audioBitsPerSecond, mimeType, timesliceMs, concurrency,
/// partSize})`: only `token`, `sessionId` and `problemId` are required; `kind` is
/// `"av"` (camera and microphone, the default), `"audio"` or `"screen"`.
#[wasm_bindgen]
pub struct Recorder {
    inner: Rc<recorder::Recorder>,
}

#[wasm_bindgen]
impl Recorder {
    /// Validates the options; nothing is opened until `start()`.
    #[wasm_bindgen(constructor)]
    pub fn new(options: JsValue) -> Result<Recorder, JsError> {
        let options: Options = web::from_js(&options, "Recorder options").map_err(usage)?;
        let inner = recorder::Recorder::new(options).map_err(usage)?;
        Ok(Recorder {
            inner: Rc::new(inner),
        })
    }

    /// Asks for the devices, starts recording and opens the upload. Rejects with
    /// `code` `permission_denied`, `no_device`, `not_supported`, `server_error`, ...
    pub fn start(&self) -> Promise {
        let inner = self.inner.clone();
        promise(async move {
            inner.start().await?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Instead of recording: uploads `blob` (a recording made elsewhere, e.g. by the
    /// page's own `MediaRecorder`) as this recorder's recording of `contentType`,
    /// through the same part planner, hashing and uploader as a live recording.
    /// Resolves with the manifest entry (`status: "complete"`); `progress` events fire
    /// as for a recording.
    #[wasm_bindgen(js_name = uploadBlob)]
    pub fn upload_blob(&self, blob: web_sys::Blob, content_type: String) -> Promise {
        let inner = self.inner.clone();
        promise(async move { Ok(web::to_js(&inner.upload_blob(blob, &content_type).await?)) })
    }

    /// Stops recording and resolves with the manifest entry once every byte is stored
    /// and the server has completed the upload.
    pub fn stop(&self) -> Promise {
        let inner = self.inner.clone();
        promise(async move { Ok(web::to_js(&inner.stop().await?)) })
    }

    /// Stops recording and aborts the upload.
    pub fn cancel(&self) -> Promise {
        let inner = self.inner.clone();
        promise(async move {
            inner.cancel().await;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Adds a listener for `"state"` (`{state, reason?}`), `"progress"`
    /// (`{state, bytes_recorded, bytes_stored, parts_planned, parts_stored,
    /// parts_in_flight, elapsed_ms, online, fraction_stored}`), `"error"`
    /// (`{code, message}`) or `"complete"` (the manifest entry).
    pub fn on(&self, event: &str, listener: js_sys::Function) -> Result<(), JsError> {
        self.inner.on(event, listener).map_err(usage)
    }

    /// Removes a listener.
    pub fn off(&self, event: &str, listener: &js_sys::Function) {
        self.inner.off(event, listener);
    }

    /// `idle`, `starting`, `recording`, `uploading`, `complete`, `cancelled` or
    /// `failed`.
    #[wasm_bindgen(getter)]
    pub fn state(&self) -> String {
        recorder::name_of(&self.inner.state()).to_owned()
    }

    /// The failure's `{code, message}`, when the state is `failed`.
    #[wasm_bindgen(getter)]
    pub fn reason(&self) -> JsValue {
        match self.inner.state() {
            crate::progress::State::Failed { reason } => web::to_js(&reason),
            _ => JsValue::NULL,
        }
    }

    /// The latest progress snapshot (see `on("progress")`), or `null`.
    #[wasm_bindgen(getter)]
    pub fn progress(&self) -> JsValue {
        self.inner
            .progress()
            .map(|p| web::to_js(&p))
            .unwrap_or(JsValue::NULL)
    }

    /// The `MediaStream` being recorded, for a preview (`video.srcObject = ...`).
    #[wasm_bindgen(getter)]
    pub fn stream(&self) -> Option<web_sys::MediaStream> {
        self.inner.stream()
    }

    /// The content type being recorded (`MediaRecorder.mimeType`).
    #[wasm_bindgen(getter, js_name = mimeType)]
    pub fn mime_type(&self) -> Option<String> {
        self.inner.mime_type()
    }

    /// The recording's id, once the upload is open.
    #[wasm_bindgen(getter, js_name = recordingId)]
    pub fn recording_id(&self) -> Option<String> {
        self.inner.recording_id()
    }

    /// Hex SHA-256 of every recorded byte, once recording has stopped.
    #[wasm_bindgen(getter)]
    pub fn sha256(&self) -> Option<String> {
        self.inner.sha256()
    }

    /// The manifest entry once complete, or `null`.
    #[wasm_bindgen(getter)]
    pub fn recording(&self) -> JsValue {
        self.inner
            .recording()
            .map(|r| web::to_js(&r))
            .unwrap_or(JsValue::NULL)
    }
}

/// Calls to the server for pages: sessions, manifests, playback URLs.
#[wasm_bindgen(js_name = Api)]
pub struct JsApi {
    api: Api,
}

#[wasm_bindgen(js_class = Api)]
impl JsApi {
    /// The server at `server` (empty for this page's origin), with a bearer `token`
    /// (a session token, or the researcher token).
    #[wasm_bindgen(constructor)]
    pub fn new(server: Option<String>, token: Option<String>) -> JsApi {
        JsApi {
            api: Api::new(server.as_deref().unwrap_or(""), token),
        }
    }

    /// Creates a session with optional `{study, participant, ...}` details; resolves
    /// with `{session_id, token, manifest}`.
    #[wasm_bindgen(js_name = createSession)]
    pub fn create_session(&self, metadata: JsValue) -> Promise {
        let api = self.api.clone();
        promise(async move {
            let metadata: Metadata = web::from_js(&metadata, "metadata")?;
            Ok(web::to_js(&api.create_session(metadata).await?))
        })
    }

    /// Every session, newest first (researchers): `{sessions: [...]}`.
    #[wasm_bindgen(js_name = listSessions)]
    pub fn list_sessions(&self) -> Promise {
        let api = self.api.clone();
        promise(async move { Ok(web::to_js(&api.list_sessions().await?)) })
    }

    /// One session's manifest.
    #[wasm_bindgen(js_name = getSession)]
    pub fn get_session(&self, session_id: String) -> Promise {
        let api = self.api.clone();
        promise(async move {
            let id = parse_session(&session_id)?;
            Ok(web::to_js(&api.session(&id).await?))
        })
    }

    /// A presigned URL to play (or, with `download`, to download) a recording:
    /// `{url, content_type, expires_at}`.
    #[wasm_bindgen(js_name = recordingUrl)]
    pub fn recording_url(
        &self,
        session_id: String,
        recording_id: String,
        download: bool,
    ) -> Promise {
        let api = self.api.clone();
        promise(async move {
            let session = parse_session(&session_id)?;
            let recording =
                RecordingId::parse(&recording_id).map_err(|e| ClientError::Usage(e.to_string()))?;
            Ok(web::to_js(
                &api.recording_url(&session, &recording, download).await?,
            ))
        })
    }
}

fn parse_session(text: &str) -> Result<SessionId, ClientError> {
    SessionId::parse(text).map_err(|e| ClientError::Usage(e.to_string()))
}

/// Creates a session on `server` (empty for this origin): resolves with
/// `{session_id, token, manifest}`.
#[wasm_bindgen(js_name = createSession)]
pub fn create_session(server: Option<String>, metadata: JsValue) -> Promise {
    JsApi::new(server, None).create_session(metadata)
}

/// The cameras and microphones (`[{deviceId, kind, label, groupId}]`). With
/// `askPermission`, devices are opened and closed once first so that labels are known.
#[wasm_bindgen(js_name = listDevices)]
pub fn list_devices(ask_permission: Option<bool>) -> Promise {
    promise(async move { capture::list_devices(ask_permission.unwrap_or(false)).await })
}

/// The content type this browser would record `kind` (`"av"`, `"audio"`, `"screen"`)
/// in, or `null` if it can record none.
#[wasm_bindgen(js_name = supportedMimeType)]
pub fn supported_mime_type(kind: &str) -> Result<Option<String>, JsError> {
    let kind = Kind::parse(kind)
        .ok_or_else(|| JsError::new("kind must be \"av\", \"audio\" or \"screen\""))?;
    Ok(capture::choose_mime_type(kind, None).ok())
}

/// Logs Rust panics to the console instead of an opaque "unreachable".
#[wasm_bindgen(start)]
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&JsValue::from_str(&format!(
            "recorder client panicked: {info}"
        )));
    }));
}
