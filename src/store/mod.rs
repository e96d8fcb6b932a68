//! Durable report state and the delivery queue, behind one trait so that every backend keeps
//! the same promises:
//! - accepting a report is one atomic step (idempotency record, report, batches, queue entries):
//!   a crash leaves either all of it or none of it;
//! - an idempotency key is claimed before the accept and the accept fails if the claim was
//!   lost, so two requests with one key can never both store a report.

pub mod redis;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{Amount, ClientId, ColumnFormat, LoanId, PartnerId, Period};

/// How long an in-progress idempotency claim lives if its request dies before finishing.
/// Longer than any accept takes; short enough that a retry is not refused for long.
pub const IDEMPOTENCY_CLAIM_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store can't be reached now; nothing was written. Worth retrying later.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// Another request took over this idempotency key (the claim expired); nothing was written.
    #[error("the idempotency key was claimed by another request")]
    ClaimLost,
    #[error("store error: {0}")]
    Other(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportStatus {
    /// Accepted and waiting for delivery to Kiva.
    Queued,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    /// On the delivery queue, not yet sent to Kiva.
    Queued,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RepaymentState {
    /// Its batch has not been sent to Kiva yet.
    Queued,
}

/// A stored report, without its batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Report {
    /// The report id; also in the `Location` header of the 202 answer.
    pub id: Uuid,
    #[schema(value_type = String, example = "123")]
    pub partner_id: PartnerId,
    /// Branch office of the API key that submitted the report.
    pub branch: String,
    /// Name (never the value) of the API key that submitted the report.
    pub submitted_by: String,
    pub created_at: DateTime<Utc>,
    #[schema(value_type = Option<String>, example = "2026-10")]
    pub period: Option<Period>,
    pub column_format: ColumnFormat,
    pub status: ReportStatus,
    pub repayment_count: usize,
    /// Exact sum of the amounts, as a decimal string.
    #[schema(value_type = String, example = "65.00")]
    pub total_amount: Amount,
    /// Number of batches (Kiva calls) the report was split into.
    pub batch_count: usize,
}

impl Report {
    /// Batch ids are derived, not stored: `{report id}.{number}`, numbers from 1.
    pub fn batch_ids(&self) -> impl Iterator<Item = String> + '_ {
        (1..=self.batch_count).map(|n| batch_id(self.id, n))
    }
}

pub fn batch_id(report: Uuid, number: usize) -> String {
    format!("{report}.{number}")
}

/// One call's worth of a report (at most `kiva.batch_size` repayments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Batch {
    #[schema(example = "0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b.1")]
    pub id: String,
    pub report_id: Uuid,
    /// 1 for the first batch of a report.
    pub number: usize,
    pub state: BatchState,
    pub repayment_count: usize,
    #[schema(value_type = String, example = "65.00")]
    pub total_amount: Amount,
    pub repayments: Vec<StoredRepayment>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StoredRepayment {
    /// Index of this repayment in the submitted `repayments` array.
    pub position: usize,
    #[schema(value_type = String)]
    pub loan_id: LoanId,
    #[schema(value_type = Option<String>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<ClientId>,
    #[schema(value_type = String, example = "25.00")]
    pub amount: Amount,
    pub state: RepaymentState,
}

/// Who an idempotency key belongs to: the same key from two API keys is two keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyScope {
    pub partner_id: PartnerId,
    pub api_key_name: String,
    pub key: String,
}

/// The first answer to an idempotent request, replayed to its repeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedResponse {
    /// SHA-256 of the request body the answer belongs to.
    pub fingerprint: String,
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key is ours until the accept or `release_idempotency`; carry the token to both.
    Claimed { token: String },
    /// Another request with this key is still being processed.
    InProgress,
    /// The key was used before; its first answer (the caller compares fingerprints).
    Completed(RecordedResponse),
}

/// What the accept writes for an idempotent request.
#[derive(Debug, Clone)]
pub struct IdempotentAccept {
    pub scope: IdempotencyScope,
    pub token: String,
    pub response: RecordedResponse,
}

#[derive(Debug, Clone, Default)]
pub struct ReportQuery {
    pub branch: Option<String>,
    pub status: Option<ReportStatus>,
    pub period: Option<Period>,
    /// Reports older than this one (exclusive); `None` starts at the newest.
    pub after: Option<Uuid>,
    pub limit: usize,
}

#[derive(Debug, Clone)]
pub struct ReportPage {
    pub reports: Vec<Report>,
    /// Set when older reports may remain: pass it as `after` to continue.
    pub next: Option<Uuid>,
}

#[async_trait::async_trait]
pub trait ReportStore: Send + Sync + 'static {
    async fn ping(&self) -> Result<(), StoreError>;

    async fn claim_idempotency(
        &self,
        scope: &IdempotencyScope,
        ttl: Duration,
    ) -> Result<IdempotencyClaim, StoreError>;

    /// Gives a claimed key back when its request failed before anything was accepted.
    async fn release_idempotency(
        &self,
        scope: &IdempotencyScope,
        token: &str,
    ) -> Result<(), StoreError>;

    /// Stores the report, its batches and their queue entries, and completes the idempotency
    /// record, all or nothing. `idempotency_ttl` is how long the record is kept.
    async fn accept(
        &self,
        report: &Report,
        batches: &[Batch],
        idempotency: Option<&IdempotentAccept>,
        idempotency_ttl: Duration,
    ) -> Result<(), StoreError>;

    async fn report(
        &self,
        partner: &PartnerId,
        id: Uuid,
    ) -> Result<Option<(Report, Vec<Batch>)>, StoreError>;

    /// Newest first.
    async fn reports(
        &self,
        partner: &PartnerId,
        query: &ReportQuery,
    ) -> Result<ReportPage, StoreError>;
}

/// Cuts an accepted report into stored batches of at most `batch_size` repayments.
pub fn batches_of(
    report_id: Uuid,
    report: &crate::domain::RepaymentReport,
    batch_size: usize,
) -> Vec<Batch> {
    let mut position = 0;
    report
        .batches(batch_size)
        .enumerate()
        .map(|(i, chunk)| {
            let repayments: Vec<StoredRepayment> = chunk
                .iter()
                .map(|r| {
                    position += 1;
                    StoredRepayment {
                        position: position - 1,
                        loan_id: r.loan_id.clone(),
                        client_id: r.client_id.clone(),
                        amount: r.amount,
                        state: RepaymentState::Queued,
                    }
                })
                .collect();
            Batch {
                id: batch_id(report_id, i + 1),
                report_id,
                number: i + 1,
                state: BatchState::Queued,
                repayment_count: chunk.len(),
                total_amount: crate::domain::total(chunk),
                repayments,
            }
        })
        .collect()
}
