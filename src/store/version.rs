//! A batch's version: what an operator's confirmation was made against.
//!
//! `{state}.{attempts recorded}.{operator actions}`. Held, failed and rejected (the states an
//! operator acts from) are left only by an operator action, and every action adds one to its
//! count, so a batch that went away and came back to the same state never shows the same
//! version again; an attempt recorded late (a slow worker's answer after the batch was held)
//! changes it too, as it is news the operator did not see.

use super::{Batch, BatchState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchVersion {
    pub state: BatchState,
    pub attempts: usize,
    pub actions: usize,
}

/// Longest version text read: a state name and two counts.
const MAX_TEXT: usize = 64;

impl BatchVersion {
    pub fn of(batch: &Batch) -> Self {
        BatchVersion {
            state: batch.state,
            attempts: batch.attempts.len(),
            actions: batch.operator_actions.len(),
        }
    }

    /// Reads the text `Display` writes (an ETag's quotes and a weak `W/` prefix allowed);
    /// anything else is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.len() > MAX_TEXT {
            return None;
        }
        let text = text.strip_prefix("W/").unwrap_or(text);
        let text = text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(text);
        let mut parts = text.split('.');
        let (Some(state), Some(attempts), Some(actions), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let state = serde_json::from_value(serde_json::Value::String(state.to_owned())).ok()?;
        Some(BatchVersion {
            state,
            attempts: attempts.parse().ok()?,
            actions: actions.parse().ok()?,
        })
    }

    /// As an HTTP entity tag (quoted).
    pub fn etag(&self) -> String {
        format!("\"{self}\"")
    }
}

impl std::fmt::Display for BatchVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{}.{}",
            self.state.as_str(),
            self.attempts,
            self.actions
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_reads_back_from_its_text_and_its_etag() {
        let v = BatchVersion {
            state: BatchState::RetryWait,
            attempts: 3,
            actions: 1,
        };
        assert_eq!(v.to_string(), "retry_wait.3.1");
        assert_eq!(BatchVersion::parse(&v.to_string()), Some(v));
        assert_eq!(BatchVersion::parse(&v.etag()), Some(v));
        assert_eq!(BatchVersion::parse("W/\"retry_wait.3.1\""), Some(v));
    }

    #[test]
    fn anything_else_is_not_a_version() {
        for text in [
            "",
            "*",
            "held",
            "held.1",
            "held.1.0.0",
            "helds.1.0",
            "held.-1.0",
            "held.1.x",
            "\"held.1.0",
            &"9".repeat(100),
        ] {
            assert_eq!(BatchVersion::parse(text), None, "{text}");
        }
    }
}
