//! One recording: capture, the upload while recording, stop and cancel.
//!
//! [`Recorder`] is what the JS class wraps. [`start`] opens the devices, starts
//! MediaRecorder with a timeslice, opens the upload with the content type the recorder
//! actually produces, and then hands everything to a single task (the [`Session`]
//! actor) that owns the recording until it ends. Browser callbacks (chunks, the
//! recorder's stop and error, online/offline, page hide) only send messages to that
//! task, so the state has one owner and no borrow is held across an `await`. Parts are
//! sent by tasks of their own, at most `concurrency` at a time; each reports back with
//! a message.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use futures::StreamExt;
use futures::channel::{mpsc, oneshot};
use futures::future::LocalBoxFuture;
use gloo_events::EventListener;
use serde::Deserialize;
use shared::api::{CompleteUploadRequest, PartSpec};
use shared::{ProblemId, Recording, SessionId};
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{AbortController, Blob, BlobEvent, MediaRecorder, MediaStream, RecordingState};

use crate::api::Api;
use crate::capture::{self, CaptureRequest};
use crate::error::ClientError;
use crate::format::Kind;
use crate::hashing::ChunkHasher;
use crate::plan::{PartLimits, PartPlanner, PartSizing, PlannedPart};
use crate::progress::{Accounting, Progress, State, state_name};
use crate::retry::RetryPolicy;
use crate::upload::{self, UploadContext};
use crate::web;

/// The options of `new Recorder({...})`, read once and validated.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Options {
    /// The server's base URL; empty for the page's own origin.
    #[serde(default)]
    pub server: String,
    /// The session token from `createSession` (or the join link).
    pub token: String,
    /// The session.
    pub session_id: SessionId,
    /// The problem being recorded.
    pub problem_id: ProblemId,
    /// `"av"` (default), `"audio"` or `"screen"`.
    #[serde(default)]
    pub kind: Option<String>,
    /// The camera's `deviceId`.
    #[serde(default)]
    pub device_id: Option<String>,
    /// The microphone's `deviceId`.
    #[serde(default)]
    pub audio_device_id: Option<String>,
    /// Video bitrate asked of MediaRecorder.
    #[serde(default)]
    pub video_bits_per_second: Option<u32>,
    /// Audio bitrate asked of MediaRecorder.
    #[serde(default)]
    pub audio_bits_per_second: Option<u32>,
    /// A content type to try before the built-in list.
    #[serde(default)]
    pub mime_type: Option<String>,
    /// How often MediaRecorder hands over data, in milliseconds (default 1000).
    #[serde(default)]
    pub timeslice_ms: Option<u32>,
    /// Parts sent at once (default 3, at most 8).
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// Base part size in bytes (default and minimum: the store's minimum, 5 MiB).
    #[serde(default)]
    pub part_size: Option<u64>,
}

impl Options {
    /// The capture kind.
    pub fn kind(&self) -> Result<Kind, ClientError> {
        let text = self.kind.as_deref().unwrap_or("av");
        Kind::parse(text).ok_or_else(|| {
            ClientError::Usage(format!(
                "kind must be \"av\", \"audio\" or \"screen\", not {text:?}"
            ))
        })
    }
}

/// A message to the session actor.
enum Msg {
    Chunk(Blob),
    RecorderStopped,
    RecorderError(String),
    PartDone {
        number: u32,
        size: u64,
        result: Result<(), ClientError>,
    },
    Online(bool),
    Stop,
    Cancel(oneshot::Sender<()>),
}

type Waiter = oneshot::Sender<Result<Recording, ClientError>>;

/// What the JS side can see and call while the actor runs.
#[derive(Default)]
pub struct View {
    state: Option<State>,
    progress: Option<Progress>,
    listeners: Vec<(String, js_sys::Function)>,
    stream: Option<MediaStream>,
    mime_type: Option<String>,
    recording_id: Option<String>,
    recording: Option<Recording>,
    sha256: Option<String>,
    result: Option<Result<Recording, ClientError>>,
    waiters: Vec<Waiter>,
    tx: Option<mpsc::UnboundedSender<Msg>>,
    cancel_requested: bool,
}

/// The events a page can listen to.
pub const EVENTS: &[&str] = &["state", "progress", "error", "complete"];

/// A recorder: its options and the view shared with its actor.
pub struct Recorder {
    options: Options,
    kind: Kind,
    view: Rc<RefCell<View>>,
}

impl Recorder {
    /// A recorder with validated options; nothing is opened yet.
    pub fn new(options: Options) -> Result<Self, ClientError> {
        let kind = options.kind()?;
        if let Some(ms) = options.timeslice_ms {
            if !(100..=60_000).contains(&ms) {
                return Err(ClientError::Usage(
                    "timesliceMs must be between 100 and 60000".into(),
                ));
            }
        }
        Ok(Self {
            options,
            kind,
            view: Rc::new(RefCell::new(View::default())),
        })
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.view.borrow().state.clone().unwrap_or(State::Idle)
    }

    /// The latest progress snapshot.
    pub fn progress(&self) -> Option<Progress> {
        self.view.borrow().progress.clone()
    }

    /// The stream being recorded (for a preview), once started.
    pub fn stream(&self) -> Option<MediaStream> {
        self.view.borrow().stream.clone()
    }

    /// The content type being recorded, once started.
    pub fn mime_type(&self) -> Option<String> {
        self.view.borrow().mime_type.clone()
    }

    /// The recording's id, once its upload is open.
    pub fn recording_id(&self) -> Option<String> {
        self.view.borrow().recording_id.clone()
    }

    /// The manifest entry, once complete.
    pub fn recording(&self) -> Option<Recording> {
        self.view.borrow().recording.clone()
    }

    /// Hex SHA-256 of the recorded bytes, once recording has stopped.
    pub fn sha256(&self) -> Option<String> {
        self.view.borrow().sha256.clone()
    }

    /// Adds a listener; `event` must be one of [`EVENTS`].
    pub fn on(&self, event: &str, f: js_sys::Function) -> Result<(), ClientError> {
        if !EVENTS.contains(&event) {
            return Err(ClientError::Usage(format!(
                "unknown event {event:?}; use one of {EVENTS:?}"
            )));
        }
        self.view.borrow_mut().listeners.push((event.to_owned(), f));
        Ok(())
    }

    /// Removes a listener added with [`Recorder::on`].
    pub fn off(&self, event: &str, f: &js_sys::Function) {
        self.view
            .borrow_mut()
            .listeners
            .retain(|(e, g)| !(e == event && g == f));
    }

    /// Opens the devices, starts recording and opens the upload.
    pub async fn start(&self) -> Result<(), ClientError> {
        if !matches!(self.state(), State::Idle) {
            return Err(ClientError::Usage(
                "start() works once per Recorder; create a new one to record again".into(),
            ));
        }
        set_state(&self.view, State::Starting);
        match self.start_inner().await {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Some(stream) = self.view.borrow_mut().stream.take() {
                    capture::stop_tracks(&stream);
                }
                finish(&self.view, Err(e.clone()));
                Err(e)
            }
        }
    }

    async fn start_inner(&self) -> Result<(), ClientError> {
        let o = &self.options;
        let mime = capture::choose_mime_type(self.kind, o.mime_type.as_deref())?;
        let stream = capture::open(&CaptureRequest {
            kind: self.kind,
            video_device: o.device_id.clone(),
            audio_device: o.audio_device_id.clone(),
        })
        .await?;
        self.view.borrow_mut().stream = Some(stream.clone());
        self.check_cancelled()?;

        let options = web_sys::MediaRecorderOptions::new();
        options.set_mime_type(&mime);
        if let Some(bps) = o.video_bits_per_second.filter(|_| self.kind.has_video()) {
            options.set_video_bits_per_second(bps);
        }
        if let Some(bps) = o.audio_bits_per_second {
            options.set_audio_bits_per_second(bps);
        }
        let recorder =
            MediaRecorder::new_with_media_stream_and_media_recorder_options(&stream, &options)
                .map_err(|e| ClientError::Recorder(web::describe(&e).1))?;
        let (tx, rx) = mpsc::unbounded();
        let listeners = listen(&recorder, &tx);
        let timeslice = o.timeslice_ms.unwrap_or(1000);
        recorder
            .start_with_time_slice(timeslice as i32)
            .map_err(|e| ClientError::Recorder(web::describe(&e).1))?;
        let started_ms = web::now_ms();
        let reported = recorder.mime_type();
        let content_type = if reported.is_empty() { mime } else { reported };
        self.view.borrow_mut().mime_type = Some(content_type.clone());

        let ctx = match self.open_upload(&content_type).await {
            Ok(ctx) => ctx,
            Err(e) => {
                let _ = recorder.stop();
                return Err(e);
            }
        };
        if self.check_cancelled().is_err() {
            let _ = recorder.stop();
            let _ = ctx
                .api
                .abort(&ctx.session, &ctx.recording, &ctx.opened.upload)
                .await;
            return Err(ClientError::Cancelled);
        }
        let input = Input::Live { recorder, stream };
        let session = self.session(ctx, input, tx.clone(), listeners, started_ms);
        self.launch(session, tx, rx, State::Recording);
        Ok(())
    }

    /// Uploads `blob` as this recorder's recording of `content_type` instead of
    /// recording one: the same part planner, hashing, uploader and complete as a live
    /// recording, fed with the Blob in slices of [`BLOB_CHUNK_SIZE`] as the uploader
    /// asks for them. Resolves with the manifest entry. For a recording made elsewhere
    /// (a `MediaRecorder` of the page's own, a file), and for the benchmarks.
    pub async fn upload_blob(
        &self,
        blob: Blob,
        content_type: &str,
    ) -> Result<Recording, ClientError> {
        if !matches!(self.state(), State::Idle) {
            return Err(ClientError::Usage(
                "uploadBlob() works once per Recorder, and not after start()".into(),
            ));
        }
        set_state(&self.view, State::Starting);
        let ctx = match self.open_upload(content_type).await {
            Ok(ctx) => ctx,
            Err(e) => {
                finish(&self.view, Err(e.clone()));
                return Err(e);
            }
        };
        if self.check_cancelled().is_err() {
            let _ = ctx
                .api
                .abort(&ctx.session, &ctx.recording, &ctx.opened.upload)
                .await;
            finish(&self.view, Err(ClientError::Cancelled));
            return Err(ClientError::Cancelled);
        }
        self.view.borrow_mut().mime_type = Some(content_type.to_owned());
        let (tx, rx) = mpsc::unbounded();
        let listeners = listen_network(&tx);
        let input = Input::Blob { blob, at: 0 };
        let session = self.session(ctx, input, tx.clone(), listeners, web::now_ms());
        let (done, result) = oneshot::channel();
        self.view.borrow_mut().waiters.push(done);
        self.launch(session, tx, rx, State::Uploading);
        result.await.unwrap_or(Err(ClientError::Cancelled))
    }

    /// Opens the upload of `content_type` on the server: what every part shares.
    async fn open_upload(&self, content_type: &str) -> Result<Rc<UploadContext>, ClientError> {
        let o = &self.options;
        let api = Api::new(&o.server, Some(o.token.clone()));
        let policy = RetryPolicy::default();
        let opened = api
            .start_upload(&policy, &o.session_id, &o.problem_id, content_type)
            .await?;
        Ok(Rc::new(UploadContext {
            api,
            policy,
            session: o.session_id.clone(),
            recording: opened.recording_id.clone(),
            opened,
            abort: AbortController::new()
                .map_err(|e| ClientError::Recorder(web::describe(&e).1))?,
            stopped: Default::default(),
        }))
    }

    /// The actor for an open upload, fed by `input`.
    fn session(
        &self,
        ctx: Rc<UploadContext>,
        input: Input,
        tx: mpsc::UnboundedSender<Msg>,
        listeners: Vec<EventListener>,
        started_ms: u64,
    ) -> Session {
        let limits = PartLimits {
            min_part_size: ctx.opened.min_part_size,
            max_part_size: ctx.opened.max_part_size,
            max_parts: ctx.opened.max_parts,
        };
        let sizing = PartSizing::new(limits, self.options.part_size.unwrap_or(0));
        Session {
            view: self.view.clone(),
            ctx,
            input,
            planner: PartPlanner::new(sizing),
            hasher: Some(ChunkHasher::start()),
            digest: None,
            accounting: Accounting::default(),
            queue: VecDeque::new(),
            sizes: BTreeMap::new(),
            in_flight: 0,
            concurrency: self.options.concurrency.unwrap_or(3).clamp(1, 8),
            online: web::online(),
            started_ms,
            stopped_ms: None,
            recorder_done: false,
            tx,
            _listeners: listeners,
        }
    }

    /// Hands the recording to `session`, in `state`, and starts the actor.
    fn launch(
        &self,
        session: Session,
        tx: mpsc::UnboundedSender<Msg>,
        rx: mpsc::UnboundedReceiver<Msg>,
        state: State,
    ) {
        {
            let mut view = self.view.borrow_mut();
            view.tx = Some(tx);
            view.recording_id = Some(session.ctx.recording.to_string());
        }
        set_state(&self.view, state);
        session.publish();
        wasm_bindgen_futures::spawn_local(session.run(rx));
    }

    fn check_cancelled(&self) -> Result<(), ClientError> {
        if self.view.borrow().cancel_requested {
            Err(ClientError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Stops recording, uploads the rest, completes the upload and returns the
    /// manifest entry. Calling it again returns the same result.
    pub async fn stop(&self) -> Result<Recording, ClientError> {
        let rx = {
            let mut view = self.view.borrow_mut();
            if let Some(result) = &view.result {
                return result.clone();
            }
            let Some(tx) = view.tx.clone() else {
                return Err(ClientError::Usage(
                    "stop() needs a recording: call start() and wait for it first".into(),
                ));
            };
            let (done, rx) = oneshot::channel();
            view.waiters.push(done);
            let _ = tx.unbounded_send(Msg::Stop);
            rx
        };
        rx.await.unwrap_or(Err(ClientError::Cancelled))
    }

    /// Cancels: stops recording, stops sending parts and aborts the upload (its parts
    /// are deleted). Harmless once the recorder is done.
    pub async fn cancel(&self) {
        let tx = {
            let mut view = self.view.borrow_mut();
            view.cancel_requested = true;
            view.tx.clone()
        };
        if let Some(tx) = tx {
            let (done, rx) = oneshot::channel();
            if tx.unbounded_send(Msg::Cancel(done)).is_ok() {
                let _ = rx.await;
            }
        }
    }
}

impl Drop for Recorder {
    /// A recorder freed while recording is cancelled, so that the devices are released
    /// and the upload does not linger.
    fn drop(&mut self) {
        let view = self.view.borrow();
        if let (Some(tx), false) = (&view.tx, view.result.is_some()) {
            let (done, _) = oneshot::channel();
            let _ = tx.unbounded_send(Msg::Cancel(done));
        }
    }
}

/// Installs the browser listeners of one recording; they all just send messages and
/// are removed when the returned listeners are dropped with the actor.
fn listen(recorder: &MediaRecorder, tx: &mpsc::UnboundedSender<Msg>) -> Vec<EventListener> {
    let window = web::window();
    let document = window.document();
    let send = |msg_of: fn(&web_sys::Event) -> Option<Msg>| {
        let tx = tx.clone();
        move |event: &web_sys::Event| {
            if let Some(msg) = msg_of(event) {
                let _ = tx.unbounded_send(msg);
            }
        }
    };
    let mut listeners = vec![
        EventListener::new(
            recorder,
            "dataavailable",
            send(|e| {
                e.dyn_ref::<BlobEvent>()
                    .and_then(BlobEvent::data)
                    .map(Msg::Chunk)
            }),
        ),
        EventListener::new(recorder, "stop", send(|_| Some(Msg::RecorderStopped))),
        EventListener::new(
            recorder,
            "error",
            send(|e| {
                let error = js_sys::Reflect::get(e, &JsValue::from_str("error"))
                    .unwrap_or(JsValue::UNDEFINED);
                let (name, message) = web::describe(&error);
                Some(Msg::RecorderError(
                    format!("{name} {message}").trim().to_owned(),
                ))
            }),
        ),
    ];
    listeners.extend(listen_network(tx));
    // When the page is hidden or left, ask the recorder for what it holds now, so that
    // the data is in hand (and hashed and planned) should the page not come back.
    let flush = |recorder: &MediaRecorder| {
        let recorder = recorder.clone();
        move |_: &web_sys::Event| {
            if recorder.state() == RecordingState::Recording {
                let _ = recorder.request_data();
            }
        }
    };
    listeners.push(EventListener::new(&window, "pagehide", flush(recorder)));
    if let Some(document) = document {
        let on_visibility = flush(recorder);
        let doc = document.clone();
        listeners.push(EventListener::new(
            &document,
            "visibilitychange",
            move |e| {
                if doc.visibility_state() == web_sys::VisibilityState::Hidden {
                    on_visibility(e);
                }
            },
        ));
    }
    listeners
}

/// The `online` and `offline` listeners of one upload.
fn listen_network(tx: &mpsc::UnboundedSender<Msg>) -> Vec<EventListener> {
    let window = web::window();
    let send = |online: bool| {
        let tx = tx.clone();
        move |_: &web_sys::Event| {
            let _ = tx.unbounded_send(Msg::Online(online));
        }
    };
    vec![
        EventListener::new(&window, "online", send(true)),
        EventListener::new(&window, "offline", send(false)),
    ]
}

/// How much of an uploaded Blob ([`Recorder::upload_blob`]) is read and hashed at a
/// time: the size of the chunks it is fed to the planner in.
pub const BLOB_CHUNK_SIZE: u64 = 1 << 20;

/// Parts planned from a Blob but not yet sending, at most: the Blob is read only this
/// far ahead of the uploads, as a live recorder's chunks arrive only as recorded.
const BLOB_READ_AHEAD_PARTS: usize = 2;

/// Where an upload's bytes come from.
enum Input {
    /// A live recording: MediaRecorder's chunks, as messages.
    Live {
        recorder: MediaRecorder,
        stream: MediaStream,
    },
    /// A Blob given whole, read from `at` on.
    Blob { blob: Blob, at: u64 },
}

/// The actor owning one recording from the moment its upload is open.
struct Session {
    view: Rc<RefCell<View>>,
    ctx: Rc<UploadContext>,
    input: Input,
    planner: PartPlanner<Blob>,
    /// The hash being computed, until the recorder stops.
    hasher: Option<ChunkHasher>,
    /// The hash being finished, from the recorder's stop until complete.
    digest: Option<LocalBoxFuture<'static, Result<String, ClientError>>>,
    accounting: Accounting,
    queue: VecDeque<PlannedPart<Blob>>,
    sizes: BTreeMap<u32, u64>,
    in_flight: u32,
    concurrency: u32,
    online: bool,
    started_ms: u64,
    stopped_ms: Option<u64>,
    recorder_done: bool,
    tx: mpsc::UnboundedSender<Msg>,
    _listeners: Vec<EventListener>,
}

/// What ended the actor's loop.
enum End {
    Completed(Box<Recording>),
    Failed(ClientError),
    Cancelled(oneshot::Sender<()>),
}

impl Session {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let end = loop {
            // Messages already waiting (a part done, a cancel) go before reading more of
            // a Blob input, so that a finished part is replaced at once.
            let waiting = match rx.try_recv() {
                Ok(msg) => Some(Some(msg)),
                Err(mpsc::TryRecvError::Closed) => Some(None),
                Err(mpsc::TryRecvError::Empty) => self.next_from_blob().map(Some),
            };
            let msg = match waiting {
                Some(msg) => msg,
                None => rx.next().await,
            };
            let Some(msg) = msg else {
                break End::Failed(ClientError::Recorder("the recorder went away".into()));
            };
            match self.handle(msg).await {
                Ok(None) => {}
                Ok(Some(end)) => break end,
                Err(e) => break End::Failed(e),
            }
            self.pump();
            if self.recorder_done && self.queue.is_empty() && self.in_flight == 0 {
                self.publish();
                break match self.complete().await {
                    Ok(recording) => End::Completed(Box::new(recording)),
                    Err(e) => End::Failed(e),
                };
            }
            self.publish();
        };
        self.end(end).await;
    }

    /// The next chunk of a Blob input while few planned parts wait to be sent, then
    /// (once) the end of the data; `None` for a live recording, or while enough parts
    /// wait.
    fn next_from_blob(&mut self) -> Option<Msg> {
        let Input::Blob { blob, at } = &mut self.input else {
            return None;
        };
        if self.recorder_done || self.queue.len() >= BLOB_READ_AHEAD_PARTS {
            return None;
        }
        let size = blob.size() as u64;
        if *at >= size {
            return Some(Msg::RecorderStopped);
        }
        let end = at.saturating_add(BLOB_CHUNK_SIZE).min(size);
        let chunk = crate::plan::Chunk::slice(&*blob, *at, end);
        *at = end;
        Some(Msg::Chunk(chunk))
    }

    /// The recorder, for a live recording.
    fn recorder(&self) -> Option<&MediaRecorder> {
        match &self.input {
            Input::Live { recorder, .. } => Some(recorder),
            Input::Blob { .. } => None,
        }
    }

    /// Releases the devices of a live recording.
    fn stop_tracks(&self) {
        if let Input::Live { stream, .. } = &self.input {
            capture::stop_tracks(stream);
        }
    }

    async fn handle(&mut self, msg: Msg) -> Result<Option<End>, ClientError> {
        match msg {
            Msg::Chunk(blob) => self.take_chunk(blob).await?,
            Msg::RecorderStopped => {
                self.recorder_done = true;
                self.stopped_ms.get_or_insert_with(web::now_ms);
                if let Some(last) = self.planner.finish()? {
                    self.plan(last);
                }
                if let Some(hasher) = self.hasher.take() {
                    self.digest = Some(Box::pin(hasher.finish()));
                }
                self.stop_tracks();
                set_state(&self.view, State::Uploading);
            }
            Msg::RecorderError(detail) => return Err(ClientError::Recorder(detail)),
            Msg::PartDone {
                number,
                size,
                result,
            } => {
                self.in_flight -= 1;
                self.accounting.sent();
                result?;
                self.accounting.stored(number, size);
            }
            Msg::Online(online) => self.online = online,
            Msg::Stop => {
                if let Some(recorder) = self.recorder().cloned() {
                    if recorder.state() != RecordingState::Inactive {
                        self.stopped_ms = Some(web::now_ms());
                        recorder
                            .stop()
                            .map_err(|e| ClientError::Recorder(web::describe(&e).1))?;
                    }
                }
                set_state(&self.view, State::Uploading);
            }
            Msg::Cancel(done) => return Ok(Some(End::Cancelled(done))),
        }
        Ok(None)
    }

    /// Hashes a chunk (in the worker, or here) and plans it into parts.
    async fn take_chunk(&mut self, blob: Blob) -> Result<(), ClientError> {
        let len = blob.size() as u64;
        if len == 0 {
            return Ok(());
        }
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&blob).await?;
        }
        self.accounting.recorded(len);
        for part in self.planner.push(blob)? {
            self.plan(part);
        }
        Ok(())
    }

    fn plan(&mut self, part: PlannedPart<Blob>) {
        self.accounting.planned();
        self.sizes.insert(part.number, part.size);
        self.queue.push_back(part);
    }

    /// Starts sending queued parts, up to the concurrency limit, while online.
    fn pump(&mut self) {
        while self.online && self.in_flight < self.concurrency {
            let Some(part) = self.queue.pop_front() else {
                break;
            };
            let body = upload::join(&part.pieces);
            let (number, size) = (part.number, part.size);
            self.in_flight += 1;
            self.accounting.sending();
            let ctx = self.ctx.clone();
            let tx = self.tx.clone();
            wasm_bindgen_futures::spawn_local(async move {
                let result = ctx.send_part(number, body).await;
                let _ = tx.unbounded_send(Msg::PartDone {
                    number,
                    size,
                    result,
                });
            });
        }
    }

    fn elapsed_ms(&self) -> u64 {
        self.stopped_ms
            .unwrap_or_else(web::now_ms)
            .saturating_sub(self.started_ms)
    }

    fn publish(&self) {
        let state = self.view.borrow().state.clone().unwrap_or(State::Idle);
        let progress = self
            .accounting
            .snapshot(&state, self.elapsed_ms(), self.online);
        self.view.borrow_mut().progress = Some(progress.clone());
        emit(&self.view, "progress", &web::to_js(&progress));
    }

    async fn complete(&mut self) -> Result<Recording, ClientError> {
        if let Some(digest) = self.digest.take() {
            // A hash that could not be finished costs the recording nothing: it is
            // completed without one (the server checks sizes and parts either way).
            match digest.await {
                Ok(hex) => self.view.borrow_mut().sha256 = Some(hex),
                Err(e) => web_sys::console::warn_1(
                    &format!("recorder: completing without a SHA-256: {e}").into(),
                ),
            }
        }
        let parts = self
            .sizes
            .iter()
            .map(|(&part_number, &size)| PartSpec { part_number, size })
            .collect();
        let body = CompleteUploadRequest {
            upload: self.ctx.opened.upload.clone(),
            parts,
            sha256: self.view.borrow().sha256.clone(),
            // A Blob's duration is not known here (the server reads none from the bytes).
            duration_ms: self.recorder().map(|_| self.elapsed_ms()),
        };
        let answer = self
            .ctx
            .api
            .complete(
                &self.ctx.policy,
                &self.ctx.session,
                &self.ctx.recording,
                &body,
            )
            .await?;
        Ok(answer.recording)
    }

    async fn end(self, end: End) {
        self.ctx.stopped.set(true);
        if let Some(recorder) = self.recorder() {
            if recorder.state() != RecordingState::Inactive {
                let _ = recorder.stop();
            }
        }
        self.stop_tracks();
        match end {
            End::Completed(recording) => {
                self.publish_final(State::Complete);
                emit(&self.view, "complete", &web::to_js(&recording));
                finish(&self.view, Ok(*recording));
            }
            End::Failed(e) => {
                self.ctx.abort.abort();
                self.publish_final(State::Failed { reason: e.reason() });
                finish(&self.view, Err(e));
            }
            End::Cancelled(done) => {
                self.ctx.abort.abort();
                let _ = self
                    .ctx
                    .api
                    .abort(
                        &self.ctx.session,
                        &self.ctx.recording,
                        &self.ctx.opened.upload,
                    )
                    .await;
                self.publish_final(State::Cancelled);
                finish(&self.view, Err(ClientError::Cancelled));
                let _ = done.send(());
            }
        }
        self.view.borrow_mut().tx = None;
    }

    fn publish_final(&self, state: State) {
        let progress = self
            .accounting
            .snapshot(&state, self.elapsed_ms(), self.online);
        self.view.borrow_mut().progress = Some(progress.clone());
        emit(&self.view, "progress", &web::to_js(&progress));
    }
}

/// Sets the state and tells the `state` listeners.
fn set_state(view: &Rc<RefCell<View>>, state: State) {
    let payload = web::to_js(&state);
    view.borrow_mut().state = Some(state);
    emit(view, "state", &payload);
}

/// Records the final result, moves to its state, tells `error` listeners of a failure
/// and resolves every `stop()` waiting.
fn finish(view: &Rc<RefCell<View>>, result: Result<Recording, ClientError>) {
    let state = match &result {
        Ok(_) => State::Complete,
        Err(ClientError::Cancelled) => State::Cancelled,
        Err(e) => State::Failed { reason: e.reason() },
    };
    let waiters = {
        let mut v = view.borrow_mut();
        v.result = Some(result.clone());
        if let Ok(recording) = &result {
            v.recording = Some(recording.clone());
        }
        std::mem::take(&mut v.waiters)
    };
    set_state(view, state);
    if let Err(e) = &result {
        if *e != ClientError::Cancelled {
            emit(view, "error", &web::to_js(&e.reason()));
        }
    }
    for waiter in waiters {
        let _ = waiter.send(result.clone());
    }
}

/// Calls the listeners of `event` with `payload`. The listener list is copied first, so
/// that a listener may add or remove listeners or call back into the recorder.
fn emit(view: &Rc<RefCell<View>>, event: &str, payload: &JsValue) {
    let listeners: Vec<js_sys::Function> = view
        .borrow()
        .listeners
        .iter()
        .filter(|(e, _)| e == event)
        .map(|(_, f)| f.clone())
        .collect();
    for f in listeners {
        if let Err(e) = f.call1(&JsValue::NULL, payload) {
            web_sys::console::error_2(&JsValue::from_str("recorder listener threw"), &e);
        }
    }
}

/// The state's name, for the JS getter.
pub fn name_of(state: &State) -> &'static str {
    state_name(state)
}
