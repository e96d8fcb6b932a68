//! Kiva's Partner API: OAuth2 client credentials per partner, the repayments endpoint and the
//! loans list. Wire formats as in KIVA.md; tested against `crate::sandbox`.

pub mod client;
pub mod wire;

pub use client::KivaClient;
pub use wire::{LoanProblem, Severity, UploadResult};

use std::time::Duration;

/// Most bytes of Kiva's answer kept for the record (attempt history, operator screens).
pub const MAX_BODY_EXCERPT: usize = 4096;

/// What became of one attempt to POST a batch to the repayments endpoint. Delivery decides
/// what to do from this; the client only reports facts.
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    /// Kiva answered with this status (any status, 2xx or not).
    Answered(KivaAnswer),
    /// No access token could be had (token endpoint unreachable, refused, or unreadable):
    /// nothing was sent to the repayments endpoint.
    TokenUnavailable { reason: String },
    /// The request certainly did not reach Kiva: connection refused, DNS or TLS failure,
    /// connect timeout — every failure before the request was written.
    NotSent { reason: String },
    /// The request may have reached Kiva and may have been processed: a timeout after it was
    /// sent, a connection reset, anything that leaves no status line. Once a status line has
    /// arrived the outcome is `Answered`, even if the body then fails (see `body_excerpt`).
    Unknown { reason: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct KivaAnswer {
    pub status: u16,
    /// From a `Retry-After` header (delta-seconds or HTTP-date), if any.
    pub retry_after: Option<Duration>,
    /// The raw body, cut to `MAX_BODY_EXCERPT` bytes (on a char boundary): only the part that
    /// arrived when the connection failed mid-body.
    pub body_excerpt: String,
    /// What could be read of the body; empty when it is not the documented shape.
    pub result: wire::UploadResult,
    /// True when a 401/403 made the client fetch a new token and send again; `status` is
    /// then the second answer's.
    pub token_refreshed: bool,
}
