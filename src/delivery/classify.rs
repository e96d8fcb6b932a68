//! What an attempt's outcome means for the batch. The rule that matters most: only what
//! Kiva certainly did not process is sent again automatically, because every call Kiva does
//! process becomes an upload that PA2 adds to the period's statement.

use std::time::Duration;

use crate::kiva::SendOutcome;

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Delivered,
    /// Kiva certainly did not process it: safe to send again (after `hint`, if Kiva said).
    Retry {
        reason: String,
        hint: Option<Duration>,
    },
    /// Kiva refused it for good.
    Rejected {
        reason: String,
    },
    /// Kiva may have processed it.
    Unknown {
        reason: String,
    },
}

pub fn classify(outcome: &SendOutcome) -> Verdict {
    match outcome {
        SendOutcome::Answered(answer) => {
            let status = answer.status;
            let said = |what: &str| format!("Kiva answered {status} ({what})");
            match status {
                200..=299 => Verdict::Delivered,
                // The client already fetched a new token once and sent again.
                401 | 403 => Verdict::Retry {
                    reason: said(
                        "credentials refused even with a new token; check the partner's client id, secret and scopes",
                    ),
                    hint: answer.retry_after,
                },
                // 408: the request did not fully arrive; 429 and 503: refused before processing.
                408 | 429 | 503 => Verdict::Retry {
                    reason: said("not processed; will retry"),
                    hint: answer.retry_after,
                },
                400..=499 => Verdict::Rejected {
                    reason: said("the batch was refused"),
                },
                // 500, 502, 504 and the rest: Kiva (or a proxy in front of it) may have
                // processed the upload before failing.
                _ => Verdict::Unknown {
                    reason: said("outcome unknown: Kiva may have the upload"),
                },
            }
        }
        SendOutcome::TokenUnavailable { reason } => Verdict::Retry {
            reason: format!("no access token from Kiva ({reason}); nothing was sent"),
            hint: None,
        },
        SendOutcome::NotSent { reason } => Verdict::Retry {
            reason: format!("Kiva could not be reached ({reason}); nothing was sent"),
            hint: None,
        },
        SendOutcome::Unknown { reason } => Verdict::Unknown {
            reason: format!("{reason}; Kiva may have the upload"),
        },
    }
}

/// Delay before attempt `attempt + 1`: `base · 2^(attempt-1)` capped at `max`, with jitter
/// over its upper half so that batches refused together do not come back together; never
/// sooner than Kiva's `Retry-After`.
pub fn retry_delay(
    attempt: u32,
    base: Duration,
    max: Duration,
    hint: Option<Duration>,
) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let full = base.saturating_mul(1 << exponent).min(max);
    let jittered = full / 2 + full.mul_f64(rand::random::<f64>() / 2.0);
    jittered.max(hint.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kiva::KivaAnswer;

    fn answered(status: u16) -> SendOutcome {
        SendOutcome::Answered(KivaAnswer {
            status,
            retry_after: Some(Duration::from_secs(2)),
            body_excerpt: String::new(),
            result: Default::default(),
            token_refreshed: false,
        })
    }

    #[test]
    fn only_what_kiva_certainly_did_not_process_is_retried() {
        assert_eq!(classify(&answered(200)), Verdict::Delivered);
        for status in [408, 429, 503, 401, 403] {
            assert!(
                matches!(classify(&answered(status)), Verdict::Retry { .. }),
                "{status}"
            );
        }
        for status in [400, 404, 409, 422] {
            assert!(
                matches!(classify(&answered(status)), Verdict::Rejected { .. }),
                "{status}"
            );
        }
        for status in [500, 502, 504, 501, 302] {
            assert!(
                matches!(classify(&answered(status)), Verdict::Unknown { .. }),
                "{status}"
            );
        }
        let not_sent = SendOutcome::NotSent {
            reason: "refused".into(),
        };
        assert!(matches!(classify(&not_sent), Verdict::Retry { .. }));
        let token = SendOutcome::TokenUnavailable {
            reason: "503".into(),
        };
        assert!(matches!(classify(&token), Verdict::Retry { .. }));
        let timeout = SendOutcome::Unknown {
            reason: "timed out".into(),
        };
        assert!(matches!(classify(&timeout), Verdict::Unknown { .. }));
    }

    #[test]
    fn retry_after_is_honoured() {
        if let Verdict::Retry { hint, .. } = classify(&answered(429)) {
            assert_eq!(hint, Some(Duration::from_secs(2)));
        } else {
            panic!("429 is retried");
        }
    }

    #[test]
    fn delays_grow_are_capped_and_never_undercut_retry_after() {
        let base = Duration::from_secs(5);
        let max = Duration::from_secs(60);
        for attempt in 1..30 {
            let d = retry_delay(attempt, base, max, None);
            let full = base.saturating_mul(1 << (attempt - 1).min(20)).min(max);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        let d = retry_delay(1, base, max, Some(Duration::from_secs(600)));
        assert_eq!(d, Duration::from_secs(600));
    }
}
