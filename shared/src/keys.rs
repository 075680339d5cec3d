//! The object-key layout, kept from the old app so that its data folders keep working:
//!
//! ```text
//! sessions/{session_id}/session.json                          the manifest (a view)
//! sessions/{session_id}/recording_{problem_id}_{unix_ms}.{ext} one recording
//! sessions/{session_id}/events/{unix_ms}-{nonce}.json          one manifest change
//! ```
//!
//! Keys are only ever built here, from validated ids.

use crate::ids::{ObjectKey, ProblemId, RecordingId, SessionId};
use crate::media::Container;

/// The prefix under which all sessions live.
pub const SESSIONS_PREFIX: &str = "sessions/";

/// The manifest's file name inside a session folder.
pub const MANIFEST_FILE: &str = "session.json";

/// `sessions/{id}/`: everything of one session.
pub fn session_prefix(session: &SessionId) -> String {
    format!("{SESSIONS_PREFIX}{session}/")
}

/// `sessions/{id}/session.json`.
pub fn manifest_key(session: &SessionId) -> ObjectKey {
    build(format!("{SESSIONS_PREFIX}{session}/{MANIFEST_FILE}"))
}

/// `sessions/{id}/events/`: the folder of manifest change records.
pub fn events_prefix(session: &SessionId) -> String {
    format!("{SESSIONS_PREFIX}{session}/events/")
}

/// `sessions/{id}/events/{unix_ms:013}-{nonce}.json`. `nonce` must be `[0-9a-f]+`.
pub fn event_key(session: &SessionId, unix_ms: u64, nonce: &str) -> ObjectKey {
    debug_assert!(nonce.chars().all(|c| c.is_ascii_hexdigit()));
    build(format!(
        "{SESSIONS_PREFIX}{session}/events/{unix_ms:013}-{nonce}.json"
    ))
}

/// The recording id for a problem and start time: `recording_{problem}_{unix_ms}`.
pub fn recording_id(problem: &ProblemId, unix_ms: u64) -> RecordingId {
    RecordingId::parse(&format!("recording_{problem}_{unix_ms}"))
        .expect("built from a validated problem id and digits")
}

/// `sessions/{id}/{recording_id}.{ext}`.
pub fn recording_key(
    session: &SessionId,
    recording: &RecordingId,
    container: Container,
) -> ObjectKey {
    build(format!(
        "{SESSIONS_PREFIX}{session}/{recording}.{}",
        container.extension()
    ))
}

/// What a recording object's file name says about it, as the old app named them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingName {
    /// The file name without its extension.
    pub id: RecordingId,
    /// The problem, when the name follows `recording_{problem}_{ms}`.
    pub problem: Option<ProblemId>,
    /// The start time in Unix milliseconds, when the name carries one.
    pub unix_ms: Option<u64>,
    /// The container the extension names.
    pub container: Container,
}

/// Reads a recording file name (`recording_{problem}_{unix_ms}.{ext}`); `None` for any
/// file that is not a recording (the manifest, events, stray files).
pub fn parse_recording_name(file_name: &str) -> Option<RecordingName> {
    let (stem, ext) = file_name.rsplit_once('.')?;
    let container = Container::from_extension(ext)?;
    let rest = stem.strip_prefix("recording_")?;
    let id = RecordingId::parse(stem).ok()?;
    let (problem, unix_ms) = match rest.rsplit_once('_') {
        Some((problem, ms)) if !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()) => {
            (ProblemId::parse(problem).ok(), ms.parse().ok())
        }
        _ => (ProblemId::parse(rest).ok(), None),
    };
    Some(RecordingName {
        id,
        problem,
        unix_ms,
        container,
    })
}

/// Reads the session id from a key or prefix under `sessions/`.
pub fn session_of(key: &str) -> Option<SessionId> {
    let rest = key.strip_prefix(SESSIONS_PREFIX)?;
    SessionId::parse(rest.split('/').next()?).ok()
}

fn build(text: String) -> ObjectKey {
    ObjectKey::parse(&text).expect("keys built from validated ids are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_old_layout() {
        let s = SessionId::parse("abc").unwrap();
        let p = ProblemId::parse("p_2").unwrap();
        let r = recording_id(&p, 1_733_241_600_000);
        assert_eq!(manifest_key(&s).as_str(), "sessions/abc/session.json");
        assert_eq!(
            recording_key(&s, &r, Container::Webm).as_str(),
            "sessions/abc/recording_p_2_1733241600000.webm"
        );
        assert_eq!(
            event_key(&s, 5, "ff").as_str(),
            "sessions/abc/events/0000000000005-ff.json"
        );
    }

    #[test]
    fn recording_names_parse_back_including_underscored_problems() {
        let name = parse_recording_name("recording_p_2_1733241600000.webm").unwrap();
        assert_eq!(name.problem.unwrap().as_str(), "p_2");
        assert_eq!(name.unix_ms, Some(1_733_241_600_000));
        assert_eq!(name.id.as_str(), "recording_p_2_1733241600000");
        assert!(parse_recording_name("session.json").is_none());
        assert!(parse_recording_name("notes.txt").is_none());
        assert_eq!(session_of("sessions/abc/x").unwrap().as_str(), "abc");
    }
}
