//! Recording content types: which are accepted, which file extension each gets, and the
//! magic bytes the server checks before it calls an upload complete.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The media containers the product stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Container {
    /// WebM (Matroska): what Chrome and Firefox record.
    Webm,
    /// MP4 (ISO BMFF): what Safari records.
    Mp4,
    /// Ogg: what Firefox records for audio when asked.
    Ogg,
}

impl Container {
    /// The file extension of stored objects, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Container::Webm => "webm",
            Container::Mp4 => "mp4",
            Container::Ogg => "ogg",
        }
    }

    /// The container whose extension this is (`webm`, `mp4`, `m4a`, `ogg`, `weba`).
    pub fn from_extension(ext: &str) -> Option<Self> {
        match ext.to_ascii_lowercase().as_str() {
            "webm" | "weba" => Some(Container::Webm),
            "mp4" | "m4a" => Some(Container::Mp4),
            "ogg" | "oga" => Some(Container::Ogg),
            _ => None,
        }
    }

    /// Whether `head` (the first bytes of an object, at least 12 when available) starts
    /// the way this container must: EBML header for WebM, an `ftyp` box for MP4,
    /// `OggS` for Ogg.
    pub fn matches_magic(self, head: &[u8]) -> bool {
        match self {
            Container::Webm => head.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]),
            Container::Mp4 => head.len() >= 8 && &head[4..8] == b"ftyp",
            Container::Ogg => head.starts_with(b"OggS"),
        }
    }

    /// The container whose magic bytes `head` (the first bytes of a file, at least 8
    /// when available) starts with, if any: how the old upload route, which gets no
    /// trustworthy content type, decides what it was sent.
    pub fn sniff(head: &[u8]) -> Option<Self> {
        [Container::Webm, Container::Mp4, Container::Ogg]
            .into_iter()
            .find(|c| c.matches_magic(head))
    }

    /// A plain content type for this container, used for data the old app stored
    /// without one.
    pub fn default_content_type(self, has_video: bool) -> &'static str {
        match (self, has_video) {
            (Container::Webm, true) => "video/webm",
            (Container::Webm, false) => "audio/webm",
            (Container::Mp4, true) => "video/mp4",
            (Container::Mp4, false) => "audio/mp4",
            (Container::Ogg, _) => "audio/ogg",
        }
    }
}

/// Why a content type was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentTypeError(String);

impl fmt::Display for ContentTypeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ContentTypeError {}

/// A recording's content type as the browser's `MediaRecorder.mimeType` reported it,
/// e.g. `video/webm;codecs=vp8,opus`. Only `audio/*` and `video/*` types of a known
/// container are accepted; the text is kept exactly (it is what gets signed and what
/// the browser sends), after checking it is plain printable ASCII of at most 200 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct MediaType {
    text: String,
    #[serde(skip)]
    container: Container,
}

impl MediaType {
    /// Longest accepted content type, in bytes.
    pub const MAX_LEN: usize = 200;

    /// Parses untrusted text (rules on the type).
    pub fn parse(text: &str) -> Result<Self, ContentTypeError> {
        if text.is_empty() || text.len() > Self::MAX_LEN {
            return Err(ContentTypeError(format!(
                "content type must be 1 to {} bytes",
                Self::MAX_LEN
            )));
        }
        if !text.chars().all(|c| c.is_ascii_graphic() || c == ' ') || text.trim() != text {
            return Err(ContentTypeError(
                "content type must be printable ASCII without surrounding spaces".to_owned(),
            ));
        }
        let essence = text
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let container = match essence.as_str() {
            "video/webm" | "audio/webm" => Container::Webm,
            "video/mp4" | "audio/mp4" | "video/x-m4v" | "audio/x-m4a" => Container::Mp4,
            "audio/ogg" | "video/ogg" => Container::Ogg,
            _ => {
                return Err(ContentTypeError(format!(
                    "content type {essence:?} is not a recording format this server stores \
                     (audio/webm, video/webm, audio/mp4, video/mp4, audio/ogg)"
                )));
            }
        };
        Ok(Self {
            text: text.to_owned(),
            container,
        })
    }

    /// The content type as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The container it names.
    pub fn container(&self) -> Container {
        self.container
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for MediaType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_mime_types_map_to_containers() {
        let webm = MediaType::parse("video/webm;codecs=vp8,opus").unwrap();
        assert_eq!(webm.container(), Container::Webm);
        assert_eq!(webm.as_str(), "video/webm;codecs=vp8,opus");
        assert_eq!(
            MediaType::parse("audio/mp4").unwrap().container(),
            Container::Mp4
        );
        assert_eq!(Container::Mp4.extension(), "mp4");
    }

    #[test]
    fn non_media_and_odd_text_is_refused() {
        for bad in [
            "",
            "text/html",
            "application/octet-stream",
            "video/webm\n",
            "vidéo/webm",
        ] {
            assert!(MediaType::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(MediaType::parse(&format!("video/webm;{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn magic_bytes_are_checked_per_container() {
        assert!(Container::Webm.matches_magic(&[0x1A, 0x45, 0xDF, 0xA3, 0x01]));
        assert!(!Container::Webm.matches_magic(b"<html>"));
        assert!(Container::Mp4.matches_magic(b"\0\0\0\x20ftypisom"));
        assert!(!Container::Mp4.matches_magic(b"\0\0\0"));
        assert!(Container::Ogg.matches_magic(b"OggS\0"));
    }

    #[test]
    fn sniffing_names_the_container_of_media_and_nothing_else() {
        assert_eq!(
            Container::sniff(&[0x1A, 0x45, 0xDF, 0xA3, 0x9F, 0x42]),
            Some(Container::Webm)
        );
        assert_eq!(
            Container::sniff(b"\0\0\0\x18ftypmp42"),
            Some(Container::Mp4)
        );
        assert_eq!(Container::sniff(b"OggS\0\x02"), Some(Container::Ogg));
        for other in [
            &b""[..],
            b"<html><body>",
            b"%PDF-1.7",
            b"\0\0\0",
            b"RIFF....WAVE",
        ] {
            assert_eq!(Container::sniff(other), None, "{other:?}");
        }
    }
}
