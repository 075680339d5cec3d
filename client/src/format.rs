//! What to capture and in which container: the capture kinds and the ordered list of
//! content types offered to `MediaRecorder.isTypeSupported`.
//!
//! WebM comes first (Chrome, Edge and Firefox record it, and VP9 is the most compact),
//! MP4 next (Safari records only that). The type that ends up stored is whatever
//! `MediaRecorder.mimeType` reports once recording runs, not the one asked for.

/// What a recorder captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The microphone alone.
    Audio,
    /// The camera and the microphone.
    AudioVideo,
    /// The screen (a window or tab), with the microphone where allowed.
    Screen,
}

impl Kind {
    /// Parses `"audio"`, `"av"` (or `"video"`) or `"screen"`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "audio" => Some(Kind::Audio),
            "av" | "video" => Some(Kind::AudioVideo),
            "screen" => Some(Kind::Screen),
            _ => None,
        }
    }

    /// The name [`Kind::parse`] reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Audio => "audio",
            Kind::AudioVideo => "av",
            Kind::Screen => "screen",
        }
    }

    /// Whether the recording has a picture.
    pub fn has_video(self) -> bool {
        self != Kind::Audio
    }
}

const VIDEO_TYPES: &[&str] = &[
    "video/webm;codecs=vp9,opus",
    "video/webm;codecs=vp8,opus",
    "video/webm",
    "video/mp4;codecs=avc1.42E01E,mp4a.40.2",
    "video/mp4;codecs=avc1,mp4a",
    "video/mp4",
];

const AUDIO_TYPES: &[&str] = &[
    "audio/webm;codecs=opus",
    "audio/webm",
    "audio/mp4;codecs=mp4a.40.2",
    "audio/mp4",
    "audio/ogg;codecs=opus",
    "audio/ogg",
];

/// The content types to try for `kind`, best first.
pub fn candidates(kind: Kind) -> &'static [&'static str] {
    if kind.has_video() {
        VIDEO_TYPES
    } else {
        AUDIO_TYPES
    }
}

/// The first candidate the browser supports, or the page's own `preferred` type first
/// when it is supported. `None` when the browser supports none of them.
pub fn choose(
    kind: Kind,
    preferred: Option<&str>,
    is_supported: impl Fn(&str) -> bool,
) -> Option<String> {
    preferred
        .into_iter()
        .chain(candidates(kind).iter().copied())
        .find(|t| is_supported(t))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::media::{Container, MediaType};

    #[test]
    fn chrome_gets_webm_vp9_and_safari_gets_mp4() {
        let chrome = |t: &str| t.starts_with("video/webm") || t.starts_with("audio/webm");
        assert_eq!(
            choose(Kind::AudioVideo, None, chrome).unwrap(),
            "video/webm;codecs=vp9,opus"
        );
        let safari = |t: &str| t.starts_with("video/mp4") || t.starts_with("audio/mp4");
        assert_eq!(
            choose(Kind::AudioVideo, None, safari).unwrap(),
            "video/mp4;codecs=avc1.42E01E,mp4a.40.2"
        );
        assert_eq!(
            choose(Kind::Audio, None, safari).unwrap(),
            "audio/mp4;codecs=mp4a.40.2"
        );
    }

    #[test]
    fn firefox_without_webm_audio_falls_back_to_ogg() {
        let ogg_only = |t: &str| t.starts_with("audio/ogg");
        assert_eq!(
            choose(Kind::Audio, None, ogg_only).unwrap(),
            "audio/ogg;codecs=opus"
        );
    }

    #[test]
    fn a_supported_preference_wins_and_an_unsupported_one_is_skipped() {
        let any = |_: &str| true;
        assert_eq!(
            choose(Kind::Screen, Some("video/webm;codecs=vp8"), any).unwrap(),
            "video/webm;codecs=vp8"
        );
        let webm = |t: &str| t.contains("webm");
        assert_eq!(
            choose(Kind::AudioVideo, Some("video/mp4"), webm).unwrap(),
            "video/webm;codecs=vp9,opus"
        );
        assert_eq!(choose(Kind::Audio, None, |_| false), None);
    }

    #[test]
    fn every_candidate_is_a_type_the_server_stores() {
        for kind in [Kind::Audio, Kind::AudioVideo, Kind::Screen] {
            for t in candidates(kind) {
                let parsed = MediaType::parse(t).unwrap();
                assert!(matches!(
                    parsed.container(),
                    Container::Webm | Container::Mp4 | Container::Ogg
                ));
            }
        }
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in [Kind::Audio, Kind::AudioVideo, Kind::Screen] {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::parse("video"), Some(Kind::AudioVideo));
        assert_eq!(Kind::parse("webcam"), None);
    }
}
