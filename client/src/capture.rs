//! Opening the camera, microphone or screen, listing devices, and picking the
//! recording format the browser supports.

use serde_json::{Value, json};
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{MediaRecorder, MediaStream, MediaStreamConstraints};

use crate::error::{ClientError, from_media_error};
use crate::format::{self, Kind};
use crate::web::{self, await_promise};

/// What to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRequest {
    /// Camera and microphone, microphone only, or screen.
    pub kind: Kind,
    /// The camera to use (a `deviceId` from `enumerateDevices`), or the default.
    pub video_device: Option<String>,
    /// The microphone to use, or the default.
    pub audio_device: Option<String>,
}

/// The `getUserMedia` constraint for one device: `true` for the default, or that exact
/// device.
fn device_constraint(device: &Option<String>, extra: Value) -> Value {
    let mut c = extra;
    if let Some(id) = device.as_deref().filter(|id| !id.is_empty()) {
        c["deviceId"] = json!({ "exact": id });
    }
    if c.as_object().is_some_and(|o| o.is_empty()) {
        Value::Bool(true)
    } else {
        c
    }
}

fn user_media_constraints(request: &CaptureRequest) -> Value {
    let audio = device_constraint(&request.audio_device, json!({}));
    match request.kind {
        Kind::AudioVideo => json!({
            "audio": audio,
            "video": device_constraint(
                &request.video_device,
                json!({ "width": { "ideal": 1280 }, "height": { "ideal": 720 } }),
            ),
        }),
        Kind::Audio | Kind::Screen => json!({ "audio": audio }),
    }
}

fn media_devices() -> Result<web_sys::MediaDevices, ClientError> {
    web::window()
        .navigator()
        .media_devices()
        .map_err(|_| ClientError::NotSupported("camera and microphone access needs https".into()))
}

async fn get_user_media(constraints: &Value) -> Result<MediaStream, ClientError> {
    let constraints: MediaStreamConstraints = js_sys::JSON::parse(&constraints.to_string())
        .map_err(|_| ClientError::Usage("bad media constraints".into()))?
        .unchecked_into();
    let promise = media_devices()?
        .get_user_media_with_constraints(&constraints)
        .map_err(|e| {
            let (name, message) = web::describe(&e);
            from_media_error(&name, &message)
        })?;
    await_promise(promise)
        .await
        .map(JsCast::unchecked_into)
        .map_err(|(name, message)| from_media_error(&name, &message))
}

async fn get_display_media() -> Result<MediaStream, ClientError> {
    let devices = media_devices()?;
    let get = js_sys::Reflect::get(&devices, &JsValue::from_str("getDisplayMedia"))
        .ok()
        .and_then(|f| f.dyn_into::<js_sys::Function>().ok())
        .ok_or_else(|| ClientError::NotSupported("screen capture is not available".into()))?;
    let constraints = js_sys::JSON::parse(r#"{"video":true,"audio":false}"#).unwrap_or_default();
    let promise = get
        .call1(&devices, &constraints)
        .map_err(|e| {
            let (name, message) = web::describe(&e);
            from_media_error(&name, &message)
        })?
        .unchecked_into::<js_sys::Promise>();
    await_promise(promise)
        .await
        .map(JsCast::unchecked_into)
        .map_err(|(name, message)| from_media_error(&name, &message))
}

/// Opens the devices for `request`. For the screen, the participant picks what to
/// share and the microphone is added when it can be opened; a refused microphone
/// leaves a silent screen recording rather than none.
pub async fn open(request: &CaptureRequest) -> Result<MediaStream, ClientError> {
    match request.kind {
        Kind::Audio | Kind::AudioVideo => get_user_media(&user_media_constraints(request)).await,
        Kind::Screen => {
            let screen = get_display_media().await?;
            if let Ok(mic) = get_user_media(&user_media_constraints(request)).await {
                for track in mic.get_audio_tracks().iter() {
                    screen.add_track(&track.unchecked_into());
                }
            }
            Ok(screen)
        }
    }
}

/// Stops every track of `stream` (the camera light goes off).
pub fn stop_tracks(stream: &MediaStream) {
    for track in stream.get_tracks().iter() {
        track.unchecked_into::<web_sys::MediaStreamTrack>().stop();
    }
}

/// The browser's devices (`enumerateDevices`), as plain
/// `{deviceId, kind, label, groupId}` objects. Labels are empty until the page has been
/// granted access once; with `ask_permission` the camera and microphone are opened and
/// closed again first so that they are filled in.
pub async fn list_devices(ask_permission: bool) -> Result<JsValue, ClientError> {
    if ask_permission {
        let request = CaptureRequest {
            kind: Kind::AudioVideo,
            video_device: None,
            audio_device: None,
        };
        let stream = match get_user_media(&user_media_constraints(&request)).await {
            Ok(s) => s,
            // No camera: the microphone alone still fills in its labels.
            Err(ClientError::NoDevice) => get_user_media(&json!({ "audio": true })).await?,
            Err(e) => return Err(e),
        };
        stop_tracks(&stream);
    }
    let promise = media_devices()?
        .enumerate_devices()
        .map_err(|_| ClientError::NotSupported("device listing is not available".into()))?;
    let devices = await_promise(promise)
        .await
        .map_err(|(name, message)| from_media_error(&name, &message))?;
    Ok(js_sys::JSON::parse(
        &js_sys::JSON::stringify(&devices)
            .map(String::from)
            .unwrap_or_else(|_| "[]".into()),
    )
    .unwrap_or_else(|_| js_sys::Array::new().into()))
}

/// The content type to record `kind` in: the page's `preferred` type if the browser
/// supports it, else the first supported candidate.
pub fn choose_mime_type(kind: Kind, preferred: Option<&str>) -> Result<String, ClientError> {
    let has_recorder = js_sys::Reflect::has(&js_sys::global(), &JsValue::from_str("MediaRecorder"))
        .unwrap_or(false);
    if !has_recorder {
        return Err(ClientError::NotSupported("MediaRecorder is missing".into()));
    }
    format::choose(kind, preferred, MediaRecorder::is_type_supported).ok_or_else(|| {
        ClientError::NotSupported(format!(
            "none of {:?} can be recorded",
            format::candidates(kind)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_devices_are_asked_for_with_true_and_chosen_ones_exactly() {
        let any = CaptureRequest {
            kind: Kind::Audio,
            video_device: None,
            audio_device: Some(String::new()),
        };
        assert_eq!(user_media_constraints(&any), json!({ "audio": true }));
        let chosen = CaptureRequest {
            kind: Kind::AudioVideo,
            video_device: Some("cam-2".into()),
            audio_device: Some("mic-1".into()),
        };
        let c = user_media_constraints(&chosen);
        assert_eq!(c["audio"], json!({ "deviceId": { "exact": "mic-1" } }));
        assert_eq!(c["video"]["deviceId"], json!({ "exact": "cam-2" }));
        assert_eq!(c["video"]["width"], json!({ "ideal": 1280 }));
    }

    #[test]
    fn screen_capture_asks_only_for_the_microphone_from_get_user_media() {
        let screen = CaptureRequest {
            kind: Kind::Screen,
            video_device: Some("cam".into()),
            audio_device: None,
        };
        assert_eq!(user_media_constraints(&screen), json!({ "audio": true }));
    }
}
