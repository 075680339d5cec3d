//! Small browser helpers: time, randomness, sleeping, the network state, and turning
//! Rust values into JS values. They compile everywhere but only work in a browser.

use futures::channel::oneshot;
use gloo_events::EventListener;
use serde::Serialize;
use wasm_bindgen::{JsCast, JsValue};

use crate::error::ClientError;

/// The page's window.
pub fn window() -> web_sys::Window {
    web_sys::window().expect("the client runs in a page with a window")
}

/// Milliseconds since the Unix epoch, from the browser's clock.
pub fn now_ms() -> u64 {
    js_sys::Date::now() as u64
}

/// A random number in `[0, 1)`.
pub fn random() -> f64 {
    js_sys::Math::random()
}

/// Whether the browser believes it is online.
pub fn online() -> bool {
    window().navigator().on_line()
}

/// Resolves after `ms` milliseconds.
pub async fn sleep_ms(ms: u64) {
    gloo_timers::future::TimeoutFuture::new(ms.min(u32::MAX as u64) as u32).await;
}

/// Resolves once the browser is online (at once if it is). The `online` listener lives
/// only as long as the wait.
pub async fn wait_online() {
    if online() {
        return;
    }
    let (tx, rx) = oneshot::channel::<()>();
    let _listener = EventListener::once(&window(), "online", move |_| {
        let _ = tx.send(());
    });
    let _ = rx.await;
}

/// A serialisable value as a plain JS object (through JSON, which the client needs
/// anyway, rather than a second serialiser).
pub fn to_js<T: Serialize + ?Sized>(value: &T) -> JsValue {
    serde_json::to_string(value)
        .ok()
        .and_then(|text| js_sys::JSON::parse(&text).ok())
        .unwrap_or(JsValue::NULL)
}

/// A JS value (an options object, metadata) read as `T` through JSON.
pub fn from_js<T: serde::de::DeserializeOwned>(
    value: &JsValue,
    what: &str,
) -> Result<T, ClientError> {
    let text: String = if value.is_undefined() || value.is_null() {
        "{}".to_owned()
    } else {
        js_sys::JSON::stringify(value)
            .map_err(|_| ClientError::Usage(format!("{what} must be a plain object")))?
            .into()
    };
    serde_json::from_str(&text).map_err(|e| ClientError::Usage(format!("{what}: {e}")))
}

/// The `name` and `message` of a thrown JS value (a `DOMException`, an `Error`, ...).
pub fn describe(value: &JsValue) -> (String, String) {
    if let Some(e) = value.dyn_ref::<js_sys::Error>() {
        return (e.name().into(), e.message().into());
    }
    let get = |field: &str| {
        js_sys::Reflect::get(value, &JsValue::from_str(field))
            .ok()
            .and_then(|v| v.as_string())
            .unwrap_or_default()
    };
    let (name, message) = (get("name"), get("message"));
    if name.is_empty() && message.is_empty() {
        (
            String::new(),
            value.as_string().unwrap_or_else(|| format!("{value:?}")),
        )
    } else {
        (name, message)
    }
}

/// Awaits a JS promise, keeping the rejection's name and message.
pub async fn await_promise(promise: js_sys::Promise) -> Result<JsValue, (String, String)> {
    wasm_bindgen_futures::JsFuture::from(promise)
        .await
        .map_err(|e| describe(&e))
}
