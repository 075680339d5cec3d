//! Validated identifiers and object keys.
//!
//! Raw text from a URL, a form or a JSON body becomes one of these types once, at the
//! edge, through `parse`; code past the edge never sees an unchecked string. The rules
//! are deliberately narrow so that an id is always safe as a path segment on every
//! backend: no separators, no dots that could climb, no control characters, no
//! percent-encoding left to decode later.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Why a piece of text was refused as an id or key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    /// The text was empty.
    Empty {
        /// Which kind of id was being parsed.
        what: &'static str,
    },
    /// The text was longer than the kind allows.
    TooLong {
        /// Which kind of id was being parsed.
        what: &'static str,
        /// The limit in bytes.
        max: usize,
    },
    /// The text held a character the kind does not allow.
    BadCharacter {
        /// Which kind of id was being parsed.
        what: &'static str,
        /// The first offending character.
        found: char,
    },
    /// The text was a `.` or `..` segment, an empty segment, or started with a dot.
    BadSegment {
        /// Which kind of id was being parsed.
        what: &'static str,
    },
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Empty { what } => write!(f, "{what} must not be empty"),
            IdError::TooLong { what, max } => write!(f, "{what} must be at most {max} bytes"),
            IdError::BadCharacter { what, found } => {
                // Object keys also allow '.' and '/' between segments; ids do not.
                let allowed = if *what == OBJECT_KEY {
                    "ASCII letters, digits, '-', '_', '.' and '/'"
                } else {
                    "ASCII letters, digits, '-' and '_'"
                };
                write!(
                    f,
                    "{what} may only contain {allowed} (found {})",
                    describe_char(*found)
                )
            }
            IdError::BadSegment { what } => write!(
                f,
                "{what} must not contain empty, '.' or '..' segments or start with a dot"
            ),
        }
    }
}

impl std::error::Error for IdError {}

/// What [`IdError`] calls an object key.
const OBJECT_KEY: &str = "object key";

/// A character as a person reads it: `'\'`, `'é' (U+00E9)`, `a space`, `the control
/// character U+0000`.
fn describe_char(c: char) -> String {
    match c {
        ' ' => "a space".to_owned(),
        c if c.is_control() => format!("the control character U+{:04X}", u32::from(c)),
        c if c.is_whitespace() => format!("the space character U+{:04X}", u32::from(c)),
        c if c.is_ascii() => format!("'{c}'"),
        c => format!("'{c}' (U+{:04X})", u32::from(c)),
    }
}

/// Checks the common id rule: 1..=`max` bytes of `[A-Za-z0-9_-]`.
fn check_id(what: &'static str, text: &str, max: usize) -> Result<(), IdError> {
    if text.is_empty() {
        return Err(IdError::Empty { what });
    }
    if let Some(found) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(IdError::BadCharacter { what, found });
    }
    if text.len() > max {
        return Err(IdError::TooLong { what, max });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Longest accepted id, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Parses untrusted text: 1 to `MAX_LEN` bytes of ASCII letters, digits,
            /// `-` and `_`. Anything else (dots, slashes, backslashes, `%`, NUL,
            /// whitespace, non-ASCII) is refused.
            pub fn parse(text: &str) -> Result<Self, IdError> {
                check_id($what, text, Self::MAX_LEN)?;
                Ok(Self(text.to_owned()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::parse(text)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A session: one participant's sitting. Chosen by the server for new sessions;
    /// sessions written by the old app keep the folder name they had, provided it obeys
    /// the same rule.
    SessionId,
    "session id",
    128
);

id_type!(
    /// A problem (task, item) of the study during which a recording is made. Chosen by
    /// the study page.
    ProblemId,
    "problem id",
    64
);

id_type!(
    /// A recording within its session: the object's file name without its extension,
    /// for example `recording_p1_1733241600000`.
    RecordingId,
    "recording id",
    160
);

/// A validated storage key: `/`-separated segments of `[A-Za-z0-9._-]`, no empty, `.` or
/// `..` segment, no segment starting with a dot, at most 1024 bytes. Keys of the product
/// are built from validated ids by [`crate::keys`]; `parse` exists for keys read back
/// from a listing or the old app's data.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Longest accepted key, in bytes.
    pub const MAX_LEN: usize = 1024;

    /// Parses untrusted text into a key (rules on the type).
    pub fn parse(text: &str) -> Result<Self, IdError> {
        const WHAT: &str = OBJECT_KEY;
        if text.is_empty() {
            return Err(IdError::Empty { what: WHAT });
        }
        if text.len() > Self::MAX_LEN {
            return Err(IdError::TooLong {
                what: WHAT,
                max: Self::MAX_LEN,
            });
        }
        for segment in text.split('/') {
            if segment.is_empty() || segment.starts_with('.') {
                return Err(IdError::BadSegment { what: WHAT });
            }
            if let Some(found) = segment
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            {
                return Err(IdError::BadCharacter { what: WHAT, found });
            }
        }
        Ok(Self(text.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last segment (the file name).
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ObjectKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_plain_alphabet() {
        assert!(SessionId::parse("abc-DEF_123").is_ok());
        assert!(ProblemId::parse("p1").is_ok());
        assert_eq!(SessionId::parse("x").unwrap().as_str(), "x");
    }

    #[test]
    fn ids_refuse_traversal_in_every_spelling() {
        for bad in [
            "",
            "..",
            ".",
            "../x",
            "a/b",
            "a\\b",
            "%2e%2e",
            "%2F",
            "a\0b",
            "/abs",
            "C:",
            "a b",
            "é",
            "a.b",
            "\u{202e}x",
        ] {
            assert!(SessionId::parse(bad).is_err(), "{bad:?} was accepted");
            assert!(ProblemId::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn ids_refuse_overlong_text() {
        let long = "a".repeat(SessionId::MAX_LEN + 1);
        assert_eq!(
            SessionId::parse(&long),
            Err(IdError::TooLong {
                what: "session id",
                max: SessionId::MAX_LEN
            })
        );
        assert!(SessionId::parse(&"a".repeat(SessionId::MAX_LEN)).is_ok());
    }

    #[test]
    fn keys_refuse_climbing_and_hidden_segments() {
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/../b",
            "a/./b",
            "..",
            ".hidden",
            "a/.tmp",
            "a\\b",
            "a/b\0",
            "a/%2e%2e/b",
        ] {
            assert!(ObjectKey::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let key = ObjectKey::parse("sessions/s1/recording_p1_1.webm").unwrap();
        assert_eq!(key.file_name(), "recording_p1_1.webm");
        assert_eq!(key.segments().count(), 3);
    }

    #[test]
    fn a_refused_character_is_named_readably() {
        let text = |raw: &str| SessionId::parse(raw).unwrap_err().to_string();
        assert!(text("a\\b").ends_with("(found '\\')"), "{}", text("a\\b"));
        assert!(text("a b").ends_with("(found a space)"));
        assert!(text("a\0b").ends_with("(found the control character U+0000)"));
        assert!(text("é").ends_with("(found 'é' (U+00E9))"));
        assert!(text("a/b").starts_with("session id may only contain"));
    }

    #[test]
    fn ids_deserialize_through_the_same_rules() {
        let ok: SessionId = serde_json::from_str("\"s-1\"").unwrap();
        assert_eq!(ok.as_str(), "s-1");
        assert!(serde_json::from_str::<SessionId>("\"../etc\"").is_err());
    }
}
