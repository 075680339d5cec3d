//! The client's errors: one enum inside, turned into a JS `Error` (whose message is a
//! sentence a participant or researcher can act on) at the export boundary, and into a
//! `{code, message}` object for the `error` and `state` events.

use serde::Serialize;

/// Everything that can go wrong in the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The participant or the browser refused access to the camera, microphone or
    /// screen.
    PermissionDenied,
    /// No camera or microphone (or not the chosen one) is available.
    NoDevice,
    /// The device exists but cannot be opened (another application holds it).
    DeviceBusy,
    /// The browser lacks what is needed (MediaRecorder, a recordable format, a secure
    /// context).
    NotSupported(String),
    /// The storage could not be reached (network down, wrong address, or the bucket's
    /// CORS rules do not allow this page).
    StorageUnreachable,
    /// The storage refused the upload's signature even after fresh ones were issued.
    SignatureRejected(String),
    /// The storage refused a part for another reason.
    Storage {
        /// The HTTP status.
        status: u16,
        /// What the storage said.
        message: String,
    },
    /// The recorder's server could not be reached.
    ServerUnreachable(String),
    /// The recorder's server answered with an error.
    Server {
        /// The HTTP status.
        status: u16,
        /// The stable error code of the answer (`invalid_id`, ...).
        code: String,
        /// The server's message.
        message: String,
    },
    /// The recording could not be turned into parts.
    Plan(crate::plan::PlanError),
    /// The recorder failed in the browser.
    Recorder(String),
    /// The recording was cancelled.
    Cancelled,
    /// The call does not fit the recorder's state or its options are wrong.
    Usage(String),
}

impl ClientError {
    /// A stable snake_case code for pages to branch on.
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::PermissionDenied => "permission_denied",
            ClientError::NoDevice => "no_device",
            ClientError::DeviceBusy => "device_busy",
            ClientError::NotSupported(_) => "not_supported",
            ClientError::StorageUnreachable => "storage_unreachable",
            ClientError::SignatureRejected(_) => "signature_rejected",
            ClientError::Storage { .. } => "storage_error",
            ClientError::ServerUnreachable(_) => "server_unreachable",
            ClientError::Server { .. } => "server_error",
            ClientError::Plan(crate::plan::PlanError::Empty) => "empty_recording",
            ClientError::Plan(crate::plan::PlanError::TooLarge { .. }) => "recording_too_large",
            ClientError::Recorder(_) => "recorder_error",
            ClientError::Cancelled => "cancelled",
            ClientError::Usage(_) => "usage",
        }
    }

    /// The error as `{code, message}` for events.
    pub fn reason(&self) -> Reason {
        Reason {
            code: self.code().to_owned(),
            message: self.to_string(),
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::PermissionDenied => f.write_str(
                "Access to the camera, microphone or screen was denied. Allow it in the \
                 browser's address bar (or site settings) and try again.",
            ),
            ClientError::NoDevice => f.write_str(
                "No camera or microphone was found (or the chosen one is gone). Connect \
                 one, or choose another device, and try again.",
            ),
            ClientError::DeviceBusy => f.write_str(
                "The camera or microphone could not be started; another application may \
                 be using it. Close it and try again.",
            ),
            ClientError::NotSupported(what) => write!(
                f,
                "This browser cannot record here: {what}. Use a current Chrome, Edge, \
                 Firefox or Safari over https."
            ),
            ClientError::StorageUnreachable => f.write_str(
                "The storage could not be reached: the network may be down, or the \
                 bucket's CORS rules do not allow uploads from this page.",
            ),
            ClientError::SignatureRejected(detail) => write!(
                f,
                "The storage rejected the upload signature, even a fresh one ({detail}). \
                 Check the server clock and its storage credentials."
            ),
            ClientError::Storage { status, message } => {
                write!(f, "The storage refused a part (HTTP {status}): {message}")
            }
            ClientError::ServerUnreachable(detail) => write!(
                f,
                "The recording server could not be reached ({detail}). Check the \
                 connection and try again."
            ),
            ClientError::Server {
                status,
                code,
                message,
            } => write!(f, "The server refused ({status} {code}): {message}"),
            ClientError::Plan(e) => write!(f, "The recording cannot be uploaded: {e}."),
            ClientError::Recorder(detail) => write!(f, "The browser's recorder failed: {detail}"),
            ClientError::Cancelled => f.write_str("The recording was cancelled."),
            ClientError::Usage(detail) => f.write_str(detail),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<crate::plan::PlanError> for ClientError {
    fn from(e: crate::plan::PlanError) -> Self {
        ClientError::Plan(e)
    }
}

/// A failure as the pages see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// [`ClientError::code`].
    pub code: String,
    /// The sentence to show.
    pub message: String,
}

/// Maps a `getUserMedia`/`getDisplayMedia` failure, by its `DOMException` name.
pub fn from_media_error(name: &str, message: &str) -> ClientError {
    match name {
        "NotAllowedError" | "PermissionDeniedError" | "SecurityError" => {
            ClientError::PermissionDenied
        }
        "NotFoundError" | "DevicesNotFoundError" | "OverconstrainedError" => ClientError::NoDevice,
        "NotReadableError" | "TrackStartError" | "AbortError" => ClientError::DeviceBusy,
        "TypeError" | "NotSupportedError" => ClientError::NotSupported(message.to_owned()),
        _ => ClientError::Recorder(format!("{name}: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_errors_map_to_what_a_person_can_fix() {
        assert_eq!(
            from_media_error("NotAllowedError", ""),
            ClientError::PermissionDenied
        );
        assert_eq!(from_media_error("NotFoundError", ""), ClientError::NoDevice);
        assert_eq!(
            from_media_error("OverconstrainedError", ""),
            ClientError::NoDevice
        );
        assert_eq!(
            from_media_error("NotReadableError", ""),
            ClientError::DeviceBusy
        );
        assert_eq!(from_media_error("Weird", "x").code(), "recorder_error");
    }

    #[test]
    fn reasons_carry_a_stable_code_and_the_server_message() {
        let reason = ClientError::Server {
            status: 404,
            code: "not_found".into(),
            message: "no such session".into(),
        }
        .reason();
        assert_eq!(reason.code, "server_error");
        assert!(reason.message.contains("no such session"));
        assert!(reason.message.contains("404"));
        assert!(ClientError::StorageUnreachable.to_string().contains("CORS"));
        assert_eq!(
            ClientError::Plan(crate::plan::PlanError::Empty).code(),
            "empty_recording"
        );
    }
}
