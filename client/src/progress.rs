//! Progress accounting: what was recorded, what the storage has acknowledged, and the
//! recorder's state, as the pages show it.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::error::Reason;

/// Where a recorder stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Created, not started.
    Idle,
    /// Asking for the device and opening the upload.
    Starting,
    /// Recording; parts upload as they fill.
    Recording,
    /// Recording stopped; the last parts upload and the server completes the upload.
    Uploading,
    /// Every byte is stored and the recording is in the manifest.
    Complete,
    /// Cancelled by the participant; the upload was aborted.
    Cancelled,
    /// Stopped by an error.
    Failed {
        /// Why, for people.
        reason: Reason,
    },
}

impl State {
    /// Whether the recorder is done, one way or another.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            State::Complete | State::Cancelled | State::Failed { .. }
        )
    }
}

/// A snapshot for the `progress` event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    /// The state name (`recording`, `uploading`, ...).
    pub state: String,
    /// Bytes MediaRecorder produced so far.
    pub bytes_recorded: u64,
    /// Bytes the storage acknowledged (parts answered 2xx).
    pub bytes_stored: u64,
    /// Parts planned so far (cut from the recording).
    pub parts_planned: u32,
    /// Parts the storage acknowledged.
    pub parts_stored: u32,
    /// Parts being sent right now.
    pub parts_in_flight: u32,
    /// Milliseconds recorded.
    pub elapsed_ms: u64,
    /// Whether the browser believes it is online (uploads pause while not).
    pub online: bool,
    /// Stored / recorded, between 0 and 1 (1 when nothing is recorded yet).
    pub fraction_stored: f64,
}

/// The counters behind [`Progress`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accounting {
    recorded: u64,
    planned: u32,
    stored_parts: BTreeSet<u32>,
    stored_bytes: u64,
    in_flight: u32,
}

impl Accounting {
    /// A chunk of `len` bytes arrived from the recorder.
    pub fn recorded(&mut self, len: u64) {
        self.recorded += len;
    }

    /// A part was cut from the recording.
    pub fn planned(&mut self) {
        self.planned += 1;
    }

    /// A part is being sent.
    pub fn sending(&mut self) {
        self.in_flight += 1;
    }

    /// A part's sending ended, stored or not.
    pub fn sent(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// The storage acknowledged part `number` of `size` bytes. Acknowledging the same
    /// part twice (a retry whose first answer was lost) counts it once.
    pub fn stored(&mut self, number: u32, size: u64) {
        if self.stored_parts.insert(number) {
            self.stored_bytes += size;
        }
    }

    /// Bytes recorded.
    pub fn bytes_recorded(&self) -> u64 {
        self.recorded
    }

    /// Bytes acknowledged.
    pub fn bytes_stored(&self) -> u64 {
        self.stored_bytes
    }

    /// Parts acknowledged.
    pub fn parts_stored(&self) -> u32 {
        self.stored_parts.len() as u32
    }

    /// Whether every planned part is acknowledged.
    pub fn all_stored(&self) -> bool {
        self.parts_stored() == self.planned
    }

    /// The snapshot to publish.
    pub fn snapshot(&self, state: &State, elapsed_ms: u64, online: bool) -> Progress {
        let fraction_stored = if self.recorded == 0 {
            1.0
        } else {
            (self.stored_bytes as f64 / self.recorded as f64).min(1.0)
        };
        Progress {
            state: state_name(state).to_owned(),
            bytes_recorded: self.recorded,
            bytes_stored: self.stored_bytes,
            parts_planned: self.planned,
            parts_stored: self.parts_stored(),
            parts_in_flight: self.in_flight,
            elapsed_ms,
            online,
            fraction_stored,
        }
    }
}

/// The snake_case name of a state.
pub fn state_name(state: &State) -> &'static str {
    match state {
        State::Idle => "idle",
        State::Starting => "starting",
        State::Recording => "recording",
        State::Uploading => "uploading",
        State::Complete => "complete",
        State::Cancelled => "cancelled",
        State::Failed { .. } => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_bytes_follow_acknowledged_parts_once_each() {
        let mut acc = Accounting::default();
        for _ in 0..12 {
            acc.recorded(1_000);
        }
        acc.planned();
        acc.planned();
        acc.stored(1, 5_000);
        acc.stored(1, 5_000);
        let p = acc.snapshot(&State::Recording, 12_000, true);
        assert_eq!(p.bytes_recorded, 12_000);
        assert_eq!(p.bytes_stored, 5_000);
        assert_eq!((p.parts_planned, p.parts_stored), (2, 1));
        assert!((p.fraction_stored - 5.0 / 12.0).abs() < 1e-9);
        assert!(!acc.all_stored());
        acc.stored(2, 5_000);
        assert!(acc.all_stored());
    }

    #[test]
    fn in_flight_parts_are_counted_while_sent() {
        let mut acc = Accounting::default();
        acc.sending();
        acc.sending();
        acc.sent();
        assert_eq!(acc.snapshot(&State::Uploading, 0, true).parts_in_flight, 1);
        acc.sent();
        acc.sent();
        assert_eq!(acc.snapshot(&State::Uploading, 0, true).parts_in_flight, 0);
    }

    #[test]
    fn nothing_recorded_is_fully_stored_and_states_have_names() {
        let acc = Accounting::default();
        let p = acc.snapshot(&State::Idle, 0, false);
        assert_eq!(p.fraction_stored, 1.0);
        assert_eq!(p.state, "idle");
        let failed = State::Failed {
            reason: Reason {
                code: "no_device".into(),
                message: "m".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(&failed).unwrap(),
            serde_json::json!({"state": "failed", "reason": {"code": "no_device", "message": "m"}})
        );
        assert!(failed.is_final() && !State::Uploading.is_final());
    }
}
