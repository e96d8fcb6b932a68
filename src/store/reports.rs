//! Reports and their accept: the idempotency claim, the one atomic accept (report, batches,
//! queue entries, the period's loans), and reading reports back.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::batch::{Batch, BatchDoc, StoredRepayment, batch_id};
use super::error::StoreError;
use crate::domain::{Amount, ColumnFormat, PartnerId, Period};

/// How long an in-progress idempotency claim lives if its request dies before finishing.
/// Longer than any accept takes; short enough that a retry is not refused for long.
pub const IDEMPOTENCY_CLAIM_TTL: Duration = Duration::from_secs(30);

/// A report's status, rolled up from its batches' states on every change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportStatus {
    /// Accepted; no batch has been sent to Kiva yet.
    Queued,
    /// Some batches are on their way (sending, waiting to retry, or delivered while others wait).
    Delivering,
    /// Every batch was delivered and Kiva accepted every loan (some perhaps with a warning).
    Delivered,
    /// Every batch was delivered, but Kiva refused some loans (`rejected_by_kiva`): PA2 will
    /// not count them; fix them in the MIS and report them again.
    DeliveredWithProblems,
    /// A batch is held, rejected or failed: an operator must look (resend or mark delivered).
    NeedsAttention,
}

impl ReportStatus {
    /// Every batch delivered: nothing left for the gateway to do.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            ReportStatus::Delivered | ReportStatus::DeliveredWithProblems
        )
    }
}

/// The text chrono's `Serialize` writes (RFC 3339, UTC as `Z`, fractional seconds in groups of
/// three), built in one piece: chrono's own `Serialize` feeds serde_json one fragment at a
/// time through `collect_str`, each escaped on its own.
fn rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
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
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[schema(value_type = Option<String>, example = "2026-10")]
    pub period: Option<Period>,
    /// Sent with `"correction": true`: it may repeat loans of earlier reports of the period.
    #[serde(default)]
    pub correction: bool,
    /// A correction that may repeat any branch's loans (an admin key's); a branch key's may
    /// repeat only loans its own branch reported, checked by the accept. Not stored.
    #[serde(skip)]
    pub corrects_any_branch: bool,
    pub column_format: ColumnFormat,
    pub status: ReportStatus,
    #[schema(example = 2)]
    pub repayment_count: usize,
    /// Exact sum of the amounts, as a decimal string.
    #[schema(value_type = String, example = "65.00")]
    pub total_amount: Amount,
    /// Number of batches (Kiva calls) the report was split into.
    #[schema(example = 1)]
    pub batch_count: usize,
    /// Repayments Kiva refused in delivered batches (`rejected_by_kiva`).
    #[serde(default)]
    #[schema(example = 0)]
    pub refused_by_kiva: usize,
}

impl Report {
    /// Batch ids are derived, not stored: `{report id}.{number}`, numbers from 1.
    pub fn batch_ids(&self) -> impl Iterator<Item = String> + '_ {
        (1..=self.batch_count).map(|n| batch_id(self.id, n))
    }
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
    /// The report the answer belongs to (see `api::idempotency::fingerprint`).
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
    /// Only reports with loans Kiva refused.
    pub refused_only: bool,
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

/// What a 202 (or `sending`) survives on this store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Durability {
    /// `embedded`, `redis`.
    #[schema(example = "redis")]
    pub backend: String,
    /// In plain words, e.g. "fsync before answer (SQLite, synchronous=FULL)" or
    /// "AOF appendfsync everysec, WAITAOF after each write".
    #[schema(example = "AOF (appendfsync everysec) with WAITAOF before each answer")]
    pub level: String,
    /// True when a crash of the store's host (or, with replicas, a failover) can lose an
    /// acknowledged write.
    pub may_lose_acknowledged_writes: bool,
    /// What an acknowledged report survives: `process crash`, `Redis crash` (or `host
    /// crash` for the embedded store), `failover`.
    #[schema(example = json!(["process crash", "Redis crash", "failover"]))]
    pub survives: Vec<String>,
    /// Replicas each promise-bearing write waits for (`store.replica_acks`).
    #[schema(example = 1)]
    pub replica_acks: u32,
    /// Replicas connected to the master (on a cluster, the fewest any master has); none for
    /// the embedded store.
    #[schema(example = 1)]
    pub replicas: Option<u32>,
}

/// A loan as PA2 tells loans apart in a period: by loan id, with the client id for three-column
/// partners (whose loan ids alone need not be unique). The separator can't be in an id.
pub fn loan_key(format: ColumnFormat, repayment: &StoredRepayment) -> String {
    match (format, &repayment.client_id) {
        // Not `format!`: this runs for every loan of every accept.
        (ColumnFormat::ThreeColumn, Some(client)) => {
            let (loan, client) = (repayment.loan_id.as_str(), client.as_str());
            let mut key = String::with_capacity(loan.len() + 1 + client.len());
            key.push_str(loan);
            key.push('\u{1f}');
            key.push_str(client);
            key
        }
        _ => repayment.loan_id.as_str().to_owned(),
    }
}

#[async_trait::async_trait]
pub trait Reports: Send + Sync + 'static {
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
        batches: &[BatchDoc],
        idempotency: Option<&IdempotentAccept>,
        idempotency_ttl: Duration,
    ) -> Result<(), StoreError>;

    /// What `accept` would answer about the period's loans, read only: `AlreadyReported` or
    /// `OtherBranchLoans` as `accept` refuses, without claiming anything (validate runs it, so
    /// that a report that checks clean is not refused on send). A later accept may still be
    /// refused if another report takes the loans in between.
    async fn check_accept(&self, report: &Report, batches: &[BatchDoc]) -> Result<(), StoreError>;

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
    /// How durable an accepted report is on this store, for readiness and the start-up log.
    async fn durability(&self) -> Result<Durability, StoreError>;
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn a_report_time_is_written_as_chrono_writes_it() {
        // Records written before `rfc3339` are read back, and answers keep their form.
        let second = Utc.with_ymd_and_hms(2026, 12, 3, 9, 30, 5).unwrap();
        for nanos in [0, 120_000_000, 123_000_000, 123_456_000, 123_456_789, 1] {
            let at = second + chrono::Duration::nanoseconds(nanos);
            let mut written = Vec::new();
            rfc3339(&at, &mut serde_json::Serializer::new(&mut written)).unwrap();
            assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&at).unwrap(),
                "{nanos} ns"
            );
        }
    }
}
