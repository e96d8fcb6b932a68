//! The delivery queue: a batch moves queued → sending → delivered | rejected | held |
//! retry_wait | failed, each move one atomic step that also rolls its report's status up; and
//! the retention that deletes settled reports.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::batch::{Attempt, Batch, BatchResult, BatchState, BatchVersion, OperatorCommand};
use super::error::StoreError;
use super::reports::Report;
use crate::domain::{ColumnFormat, PartnerId};

/// A queue entry a worker took; it stays pending (and reclaimable) until the batch settles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedBatch {
    pub partner_id: PartnerId,
    pub entry_id: String,
    pub batch_id: String,
    /// True when the entry was taken over from a worker that did not finish it in time.
    pub reclaimed: bool,
}

/// A batch of any kind as the queue hands it out to be sent. The queue never reads inside
/// the document: the batch's kind does (see `delivery::kind`).
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedBatch {
    /// The batch's document (JSON) as it was stored at the accept or `enqueue`.
    pub doc: String,
    /// The column format of its report: repayments and journals both follow it.
    pub column_format: ColumnFormat,
}

/// A batch for `Queue::enqueue`: its id (`{report id}.{number}`) and its document (JSON), as
/// its kind wrote it (see `delivery::kind::new_batch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBatch {
    pub id: String,
    pub doc: String,
}

/// What `begin_attempt` decided.
#[derive(Debug, Clone, PartialEq)]
pub enum BeginAttempt {
    /// `sending` is written: send it now, as attempt `attempt` (numbered over the batch's
    /// whole life), the `attempts_in_budget`-th since it was queued or an operator resent it.
    Send {
        attempt: u32,
        attempts_in_budget: u32,
        batch: QueuedBatch,
        /// When the batch was (last) queued, for the retry age limit.
        queued_at: DateTime<Utc>,
    },
    /// It was found in `sending`: a worker stopped mid-send, so Kiva may have it. Now `held`.
    Held,
    /// Already settled (a stale entry); nothing to do.
    Skip(BatchState),
}

/// How an attempt ended, to be written in one step.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptEnd {
    pub state: BatchState,
    pub result: BatchResult,
    pub attempt: Attempt,
    /// For `retry_wait`: when to send again.
    pub retry_at: Option<DateTime<Utc>>,
    /// For `delivered`: how many of the batch's items (its repayments) Kiva refused.
    pub refused_by_kiva: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OperatorOutcome {
    Done(Box<Batch>),
    /// The batch is not in a state that allows the action.
    Conflict(BatchState),
    /// The batch changed since the version the operator confirmed against; now at this one.
    Changed(BatchVersion),
    NotFound,
}

/// A partner's batches that are not delivered, as `queue_summary` counts them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSummary {
    pub queued: usize,
    pub sending: usize,
    pub retry_wait: usize,
    pub held: usize,
    pub failed: usize,
    pub rejected: usize,
    /// When the oldest batch still on its way (queued, sending or retry_wait) was queued
    /// (accepted, or last resent by an operator).
    pub oldest_queued_at: Option<DateTime<Utc>>,
    /// When the oldest held batch was queued.
    pub oldest_held_at: Option<DateTime<Utc>>,
}

impl QueueSummary {
    /// The count of `state` (0 for `delivered`, which is not counted).
    pub fn count(&self, state: BatchState) -> usize {
        match state {
            BatchState::Queued => self.queued,
            BatchState::Sending => self.sending,
            BatchState::RetryWait => self.retry_wait,
            BatchState::Held => self.held,
            BatchState::Failed => self.failed,
            BatchState::Rejected => self.rejected,
            BatchState::Delivered => 0,
        }
    }

    /// Counts one batch in `state`, queued at `queued_at`.
    pub fn add(&mut self, state: BatchState, count: usize, queued_at: Option<DateTime<Utc>>) {
        let earliest = |current: Option<DateTime<Utc>>| match (current, queued_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match state {
            BatchState::Queued => self.queued += count,
            BatchState::Sending => self.sending += count,
            BatchState::RetryWait => self.retry_wait += count,
            BatchState::Held => self.held += count,
            BatchState::Failed => self.failed += count,
            BatchState::Rejected => self.rejected += count,
            BatchState::Delivered => return,
        }
        match state {
            BatchState::Queued | BatchState::Sending | BatchState::RetryWait => {
                self.oldest_queued_at = earliest(self.oldest_queued_at);
            }
            BatchState::Held => self.oldest_held_at = earliest(self.oldest_held_at),
            _ => {}
        }
    }
}

/// Refuses an enqueue whose batches are not the report's own (see `Queue::enqueue`).
pub fn check_enqueue(report: &Report, batches: &[NewBatch]) -> Result<(), StoreError> {
    if batches.len() == report.batch_count
        && report.batch_ids().zip(batches).all(|(id, b)| id == b.id)
    {
        Ok(())
    } else {
        Err(StoreError::Other(format!(
            "enqueue of {} batch(es) under report {} of {} batch(es): ids must be the report's",
            batches.len(),
            report.id,
            report.batch_count
        )))
    }
}

/// `store.retention_days` by default.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(400 * 24 * 3600);

/// A period's loan index must outlive every report of the period that could still be
/// corrected: the retention, plus two months for the period itself to close.
pub fn period_index_ttl(retention: Duration) -> Duration {
    retention.saturating_add(Duration::from_secs(62 * 24 * 3600))
}

/// The smallest UUIDv7 of the millisecond `at`: report ids (UUIDv7) below it were made
/// before `at`.
pub fn oldest_id_at(at: DateTime<Utc>) -> Uuid {
    let ms = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(ms, &[0; 10]).into_uuid()
}

/// Delivery. A batch moves queued → sending → delivered | rejected | held | retry_wait |
/// failed; every move is one atomic step that also rolls the report's status up.
#[async_trait::async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Creates the partner's delivery queue and consumer group if missing (also done on
    /// demand when Redis lost them).
    async fn prepare_delivery(&self, partner: &PartnerId) -> Result<(), StoreError>;

    /// Queues batches of any kind under `report`, their parent record, in one atomic step, as
    /// the accept does: the report, its batches and their queue entries are all written or
    /// none is, and a repeat of a written enqueue changes nothing. The report is kept like any
    /// other (listed, its status rolled up from its batches, its branch checked on access,
    /// purged once settled), but nothing else of the accept applies: no idempotency record,
    /// and no loans indexed for the period (a batch's items are its kind's business).
    /// `report.batch_count` must be the number of `batches`, whose ids are the report's
    /// batch ids in order.
    ///
    /// The journal kind will use it as the repayments intake uses `accept`: its intake checks
    /// a journal submission, cuts it into batches of at most the configured journals per call,
    /// writes each as `delivery::kind::new_batch(journals, doc, journals_of_the_batch)` and
    /// enqueues them with the submission as their report; from there the worker sends them
    /// like any batch.
    async fn enqueue(&self, report: &Report, batches: &[NewBatch]) -> Result<(), StoreError>;

    /// Queues again every `retry_wait` batch whose time has come.
    async fn promote_due_retries(
        &self,
        partner: &PartnerId,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError>;

    /// Takes up to `count` entries for `consumer`: first those another consumer has held
    /// longer than `reclaim_after` without settling them, then new ones.
    async fn claim_batches(
        &self,
        partner: &PartnerId,
        consumer: &str,
        count: usize,
        reclaim_after: Duration,
    ) -> Result<Vec<ClaimedBatch>, StoreError>;

    /// Writes `sending` (or `held`, for a batch found in `sending`) before anything is sent.
    async fn begin_attempt(
        &self,
        claimed: &ClaimedBatch,
        now: DateTime<Utc>,
    ) -> Result<BeginAttempt, StoreError>;

    /// Gives back a batch whose `begin_attempt` got no answer, so nothing was sent: if `sending`
    /// was written for this entry it is undone, and the batch is queued again (a new entry).
    /// A batch that someone else has moved on is left alone.
    async fn release_attempt(&self, claimed: &ClaimedBatch) -> Result<(), StoreError>;

    /// Records how attempt `attempt` ended and settles the queue entry. Idempotent per
    /// attempt (a retry after a lost answer records nothing twice), and fenced: the state is
    /// written only while the batch is still `sending` for this very queue entry, so a late
    /// answer can't overwrite an operator's decision or a newer attempt.
    async fn finish_attempt(
        &self,
        claimed: &ClaimedBatch,
        attempt: u32,
        end: &AttemptEnd,
    ) -> Result<(), StoreError>;

    /// Operator: `Resend` queues a held, failed or rejected batch again; `MarkDelivered`
    /// closes a held batch as delivered without sending it (the upload is in PA2). Recorded
    /// as the command says (who, when, the upload id and note given).
    async fn operate_batch(
        &self,
        partner: &PartnerId,
        batch_id: &str,
        command: &OperatorCommand,
    ) -> Result<OperatorOutcome, StoreError>;

    /// Batch ids on the partner's delivery queue, oldest first (claimed or not): the queue's
    /// depth, and what tests inspect.
    async fn queued_batches(&self, partner: &PartnerId) -> Result<Vec<String>, StoreError>;

    /// How many of the partner's batches are in each state other than `delivered`, and when
    /// the oldest waiting and the oldest held batch were queued: the queue gauges of
    /// `/metrics`, read at each scrape so every gateway process reports the same numbers.
    /// Changes nothing a reader sees (the Redis store may build its state index, once).
    async fn queue_summary(&self, partner: &PartnerId) -> Result<QueueSummary, StoreError>;

    /// The batch and the branch of its report (for access checks).
    async fn batch(
        &self,
        partner: &PartnerId,
        batch_id: &str,
    ) -> Result<Option<(Batch, String)>, StoreError>;

    /// Deletes up to `limit` of the partner's reports created before `before` whose every
    /// batch is delivered (by Kiva or closed by an operator); reports with anything queued,
    /// held, failed or rejected are kept whatever their age. Returns how many were deleted.
    async fn purge_settled(
        &self,
        partner: &PartnerId,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, StoreError>;
}
