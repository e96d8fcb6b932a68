//! Durable report state and the delivery queue, behind a few traits named for what they keep,
//! so that every backend keeps the same promises:
//! - accepting a report is one atomic step (idempotency record, report, batches, queue entries):
//!   a crash leaves either all of it or none of it;
//! - an idempotency key is claimed before the accept and the accept fails if the claim was
//!   lost, so two requests with one key can never both store a report.
//!
//! `reports` (idempotency, accept, reading reports), `queue` (the delivery queue and its
//! retention), `periods` (a period's reports, Kiva's expected loans, their refresh) and
//! `sessions` (web sessions) each hold one trait and the types it speaks in; `batch` holds
//! the batch types they share. `ReportStore` is all of them, what the gateway holds.

mod batch;
pub mod embedded;
mod error;
mod periods;
mod queue;
pub mod redis;
mod reports;
mod sessions;

pub use batch::*;
pub use error::{EarlierReport, StoreError};
pub use periods::*;
pub use queue::*;
pub use reports::*;
pub use sessions::*;

/// Every capability of a store: what the gateway holds (`Arc<dyn ReportStore>`).
pub trait ReportStore: Reports + Queue + Periods + Sessions {}

impl<T: Reports + Queue + Periods + Sessions> ReportStore for T {}
