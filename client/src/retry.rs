//! What to do after each attempt to PUT a part: done, wait and retry, ask for a fresh
//! signature, wait for the network, or give up with a reason a person can act on.
//!
//! Waits use exponential backoff with full jitter (a uniformly random wait between zero
//! and `min(cap, base * 2^attempt)`), so that many browsers retrying after one outage do
//! not come back in step. The random source is a parameter, so the decisions are
//! tested with fixed values.

use crate::error::ClientError;

/// Retry limits and backoff timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Ceiling of the first wait, in milliseconds.
    pub base_ms: u64,
    /// Largest ceiling of any wait, in milliseconds.
    pub cap_ms: u64,
    /// Failed attempts answered with a 5xx or 429 before giving up.
    pub max_attempts: u32,
    /// Attempts that got no answer at all, while the browser says it is online, before
    /// giving up. Far more than `max_attempts`: an outage the browser does not notice
    /// (a server restarting, an uplink down behind working Wi-Fi) is waited out for
    /// minutes, because giving up loses the recording. Time spent offline does not
    /// count.
    pub max_unreachable_attempts: u32,
    /// Fresh signatures asked for in a row after the store refused one, before giving
    /// up.
    pub max_resigns: u32,
    /// A signature this close to its expiry is renewed before it is used.
    pub expiry_margin_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base_ms: 500,
            cap_ms: 30_000,
            max_attempts: 8,
            // With the waits capped at 30 s, about four minutes on average, and more
            // than a minute even with the shortest draws.
            max_unreachable_attempts: 24,
            max_resigns: 3,
            expiry_margin_ms: 30_000,
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (0-based), given `random` in `[0, 1)`.
    pub fn backoff_ms(&self, attempt: u32, random: f64) -> u64 {
        let ceiling = self
            .base_ms
            .checked_shl(attempt.min(32))
            .unwrap_or(u64::MAX)
            .min(self.cap_ms);
        // `as` saturates, and random is clamped, so the wait never exceeds the ceiling.
        (ceiling as f64 * random.clamp(0.0, 1.0)) as u64
    }

    /// Whether a signature expiring at `expires_at_ms` must be renewed before a request
    /// sent at `now_ms`.
    pub fn needs_fresh_signature(&self, expires_at_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_add(self.expiry_margin_ms) >= expires_at_ms
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The store answered 2xx.
    Stored,
    /// The store answered with another status.
    Status {
        /// The HTTP status.
        status: u16,
        /// The start of the body, for the error message.
        body: String,
    },
    /// The request never got an answer: the network is down, the store is
    /// unreachable, or CORS blocked it (the browser does not say which).
    NetworkError,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The part is stored.
    Done,
    /// Wait this long, then try again with the same signature.
    RetryAfter(u64),
    /// Ask the server for a fresh signature, then try again.
    Resign,
    /// The browser is offline: wait until it is online, then try again.
    WaitOnline,
    /// Give up.
    Fail(ClientError),
}

/// The retry bookkeeping of one part.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryState {
    attempts: u32,
    unreachable: u32,
    resigns: u32,
}

impl RetryState {
    /// Failed attempts so far (answered with an error, or not answered at all).
    pub fn attempts(&self) -> u32 {
        self.attempts + self.unreachable
    }

    /// Decides after an attempt. `online` is the browser's view (`navigator.onLine`)
    /// when the attempt ended; `random` draws from `[0, 1)`.
    pub fn decide(
        &mut self,
        policy: &RetryPolicy,
        outcome: Outcome,
        online: bool,
        random: &mut dyn FnMut() -> f64,
    ) -> Decision {
        match outcome {
            Outcome::Stored => Decision::Done,
            Outcome::NetworkError if !online => Decision::WaitOnline,
            Outcome::Status { status: 403, body } => {
                self.resigns += 1;
                if self.resigns > policy.max_resigns {
                    Decision::Fail(ClientError::SignatureRejected(excerpt(&body)))
                } else {
                    Decision::Resign
                }
            }
            Outcome::NetworkError => {
                if self.unreachable + 1 >= policy.max_unreachable_attempts {
                    return Decision::Fail(ClientError::StorageUnreachable);
                }
                let wait = policy.backoff_ms(self.attempts(), random());
                self.unreachable += 1;
                Decision::RetryAfter(wait)
            }
            Outcome::Status { status, body } if is_transient(status) => {
                let err = ClientError::Storage {
                    status,
                    message: excerpt(&body),
                };
                self.backoff(policy, random, err)
            }
            Outcome::Status { status, body } => Decision::Fail(ClientError::Storage {
                status,
                message: excerpt(&body),
            }),
        }
    }

    fn backoff(
        &mut self,
        policy: &RetryPolicy,
        random: &mut dyn FnMut() -> f64,
        give_up_with: ClientError,
    ) -> Decision {
        if self.attempts + 1 >= policy.max_attempts {
            return Decision::Fail(give_up_with);
        }
        let wait = policy.backoff_ms(self.attempts(), random());
        self.attempts += 1;
        Decision::RetryAfter(wait)
    }
}

/// Statuses worth retrying: timeouts, throttling, and server-side failures.
pub fn is_transient(status: u16) -> bool {
    matches!(status, 408 | 425 | 429 | 500..=599)
}

/// The first 300 characters of a body, trimmed, for messages.
fn excerpt(body: &str) -> String {
    let trimmed = body.trim();
    match trimmed.char_indices().nth(300) {
        Some((at, _)) => format!("{}...", &trimmed[..at]),
        None => trimmed.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base_ms: 100,
            cap_ms: 1_000,
            max_attempts: 4,
            max_unreachable_attempts: 6,
            max_resigns: 2,
            expiry_margin_ms: 10_000,
        }
    }

    fn status(status: u16) -> Outcome {
        Outcome::Status {
            status,
            body: format!("status {status}"),
        }
    }

    #[test]
    fn backoff_ceiling_doubles_up_to_the_cap() {
        let p = policy();
        let ceilings: Vec<u64> = (0..6).map(|a| p.backoff_ms(a, 1.0)).collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(p.backoff_ms(200, 1.0), 1_000);
    }

    #[test]
    fn full_jitter_spreads_waits_from_zero_to_the_ceiling() {
        let p = policy();
        assert_eq!(p.backoff_ms(3, 0.0), 0);
        assert_eq!(p.backoff_ms(3, 0.5), 400);
        assert_eq!(p.backoff_ms(3, 7.0), 800, "out-of-range draws are clamped");
    }

    #[test]
    fn server_errors_and_throttling_are_retried_with_growing_waits_then_fail() {
        let p = policy();
        let mut state = RetryState::default();
        let mut half = || 0.5;
        let mut decisions = Vec::new();
        for s in [503, 429, 500, 502] {
            decisions.push(state.decide(&p, status(s), true, &mut half));
        }
        assert_eq!(
            decisions[..3],
            [
                Decision::RetryAfter(50),
                Decision::RetryAfter(100),
                Decision::RetryAfter(200)
            ]
        );
        assert_eq!(
            decisions[3],
            Decision::Fail(ClientError::Storage {
                status: 502,
                message: "status 502".into()
            })
        );
    }

    #[test]
    fn a_rejected_signature_is_renewed_a_few_times_then_reported() {
        let p = policy();
        let mut state = RetryState::default();
        let mut rng = || 0.0;
        assert_eq!(
            state.decide(&p, status(403), true, &mut rng),
            Decision::Resign
        );
        assert_eq!(
            state.decide(&p, status(403), true, &mut rng),
            Decision::Resign
        );
        assert_eq!(
            state.decide(&p, status(403), true, &mut rng),
            Decision::Fail(ClientError::SignatureRejected("status 403".into()))
        );
    }

    #[test]
    fn network_errors_while_offline_wait_without_using_up_attempts() {
        let p = policy();
        let mut state = RetryState::default();
        let mut rng = || 0.0;
        for _ in 0..10 {
            assert_eq!(
                state.decide(&p, Outcome::NetworkError, false, &mut rng),
                Decision::WaitOnline
            );
        }
        assert_eq!(state.attempts(), 0);
        assert_eq!(
            state.decide(&p, Outcome::NetworkError, true, &mut rng),
            Decision::RetryAfter(0)
        );
    }

    #[test]
    fn an_unreachable_store_is_reported_as_such_after_the_last_attempt() {
        let p = policy();
        let mut state = RetryState::default();
        let mut rng = || 0.9;
        let mut last = Decision::Done;
        for _ in 0..p.max_unreachable_attempts {
            last = state.decide(&p, Outcome::NetworkError, true, &mut rng);
        }
        assert_eq!(last, Decision::Fail(ClientError::StorageUnreachable));
    }

    /// The total wait before giving up on a store that never answers, with every draw
    /// equal to `draw`.
    fn patience_ms(p: &RetryPolicy, draw: f64) -> u64 {
        let mut state = RetryState::default();
        let mut total = 0;
        loop {
            match state.decide(p, Outcome::NetworkError, true, &mut || draw) {
                Decision::RetryAfter(ms) => total += ms,
                Decision::Fail(e) => {
                    assert_eq!(e, ClientError::StorageUnreachable);
                    return total;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn an_outage_the_browser_does_not_notice_is_waited_out_for_minutes_not_seconds() {
        let p = RetryPolicy::default();
        // Full jitter draws anywhere in [0, ceiling); even a run of low draws waits for
        // over a minute, a typical one for about four.
        assert!(patience_ms(&p, 0.25) > 60_000, "{}", patience_ms(&p, 0.25));
        assert!(patience_ms(&p, 0.5) > 180_000, "{}", patience_ms(&p, 0.5));
        // Answers with errors are still given up on sooner.
        let mut state = RetryState::default();
        let mut decisions = 0;
        while let Decision::RetryAfter(_) = state.decide(&p, status(503), true, &mut || 0.5) {
            decisions += 1;
        }
        assert_eq!(decisions + 1, p.max_attempts);
    }

    #[test]
    fn client_errors_other_than_403_fail_at_once_with_the_store_answer() {
        let mut state = RetryState::default();
        let outcome = Outcome::Status {
            status: 400,
            body: "  <Error>EntityTooSmall</Error>\n".into(),
        };
        assert_eq!(
            state.decide(&policy(), outcome, true, &mut || 0.0),
            Decision::Fail(ClientError::Storage {
                status: 400,
                message: "<Error>EntityTooSmall</Error>".into()
            })
        );
    }

    #[test]
    fn success_is_done() {
        let mut state = RetryState::default();
        assert_eq!(
            state.decide(&policy(), Outcome::Stored, false, &mut || 0.0),
            Decision::Done
        );
    }

    #[test]
    fn signatures_close_to_expiry_are_renewed_before_use() {
        let p = policy();
        assert!(!p.needs_fresh_signature(100_000, 50_000));
        assert!(p.needs_fresh_signature(100_000, 90_000));
        assert!(p.needs_fresh_signature(100_000, 200_000));
    }

    #[test]
    fn long_bodies_are_cut_in_messages() {
        let long = "x".repeat(1_000);
        assert_eq!(excerpt(&long).len(), 303);
        assert_eq!(excerpt("é".repeat(301).as_str()).chars().count(), 303);
    }
}
