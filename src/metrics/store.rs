//! The store as the rest of the gateway sees it, with every call timed and every failure
//! counted (`repayment_gateway_store_operation_duration_seconds`, `…_store_errors_total`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Metrics;
use crate::domain::{PartnerId, Period};
use crate::store::{
    AttemptEnd, Batch, BatchDoc, BeginAttempt, ClaimedBatch, Durability, ExpectedLoansSnapshot,
    IdempotencyClaim, IdempotencyScope, IdempotentAccept, NewBatch, OperatorCommand,
    OperatorOutcome, Periods, Queue, QueueSummary, RefreshStatus, Report, ReportPage, ReportQuery,
    ReportStore, Reports, Sessions, StoreError, WebSession,
};

pub struct MeasuredStore {
    inner: Arc<dyn ReportStore>,
    metrics: Arc<Metrics>,
}

impl MeasuredStore {
    pub fn new(inner: Arc<dyn ReportStore>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

/// Times `$call` (a future of the inner store) under the operation name `$op`.
macro_rules! measured {
    ($self:ident, $op:literal, $call:expr) => {{
        let started = Instant::now();
        let result = $call.await;
        $self
            .metrics
            .store_call($op, started.elapsed(), result.as_ref().err());
        result
    }};
}

#[async_trait::async_trait]
impl Reports for MeasuredStore {
    async fn ping(&self) -> Result<(), StoreError> {
        measured!(self, "ping", self.inner.ping())
    }

    async fn claim_idempotency(
        &self,
        scope: &IdempotencyScope,
        ttl: Duration,
    ) -> Result<IdempotencyClaim, StoreError> {
        measured!(
            self,
            "claim_idempotency",
            self.inner.claim_idempotency(scope, ttl)
        )
    }

    async fn release_idempotency(
        &self,
        scope: &IdempotencyScope,
        token: &str,
    ) -> Result<(), StoreError> {
        measured!(
            self,
            "release_idempotency",
            self.inner.release_idempotency(scope, token)
        )
    }

    async fn accept(
        &self,
        report: &Report,
        batches: &[BatchDoc],
        idempotency: Option<&IdempotentAccept>,
        idempotency_ttl: Duration,
    ) -> Result<(), StoreError> {
        measured!(
            self,
            "accept",
            self.inner
                .accept(report, batches, idempotency, idempotency_ttl)
        )
    }

    async fn check_accept(&self, report: &Report, batches: &[BatchDoc]) -> Result<(), StoreError> {
        measured!(
            self,
            "check_accept",
            self.inner.check_accept(report, batches)
        )
    }

    async fn report(
        &self,
        partner: &PartnerId,
        id: Uuid,
    ) -> Result<Option<(Report, Vec<Batch>)>, StoreError> {
        measured!(self, "report", self.inner.report(partner, id))
    }

    async fn reports(
        &self,
        partner: &PartnerId,
        query: &ReportQuery,
    ) -> Result<ReportPage, StoreError> {
        measured!(self, "reports", self.inner.reports(partner, query))
    }

    async fn durability(&self) -> Result<Durability, StoreError> {
        measured!(self, "durability", self.inner.durability())
    }
}

#[async_trait::async_trait]
impl Queue for MeasuredStore {
    async fn enqueue(&self, report: &Report, batches: &[NewBatch]) -> Result<(), StoreError> {
        measured!(self, "enqueue", self.inner.enqueue(report, batches))
    }

    async fn prepare_delivery(&self, partner: &PartnerId) -> Result<(), StoreError> {
        measured!(
            self,
            "prepare_delivery",
            self.inner.prepare_delivery(partner)
        )
    }

    async fn promote_due_retries(
        &self,
        partner: &PartnerId,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        measured!(
            self,
            "promote_due_retries",
            self.inner.promote_due_retries(partner, now)
        )
    }

    async fn claim_batches(
        &self,
        partner: &PartnerId,
        consumer: &str,
        count: usize,
        reclaim_after: Duration,
    ) -> Result<Vec<ClaimedBatch>, StoreError> {
        measured!(
            self,
            "claim_batches",
            self.inner
                .claim_batches(partner, consumer, count, reclaim_after)
        )
    }

    async fn begin_attempt(
        &self,
        claimed: &ClaimedBatch,
        now: DateTime<Utc>,
    ) -> Result<BeginAttempt, StoreError> {
        measured!(
            self,
            "begin_attempt",
            self.inner.begin_attempt(claimed, now)
        )
    }

    async fn release_attempt(&self, claimed: &ClaimedBatch) -> Result<(), StoreError> {
        measured!(self, "release_attempt", self.inner.release_attempt(claimed))
    }

    async fn finish_attempt(
        &self,
        claimed: &ClaimedBatch,
        attempt: u32,
        end: &AttemptEnd,
    ) -> Result<(), StoreError> {
        measured!(
            self,
            "finish_attempt",
            self.inner.finish_attempt(claimed, attempt, end)
        )
    }

    async fn operate_batch(
        &self,
        partner: &PartnerId,
        batch_id: &str,
        command: &OperatorCommand,
    ) -> Result<OperatorOutcome, StoreError> {
        measured!(
            self,
            "operate_batch",
            self.inner.operate_batch(partner, batch_id, command)
        )
    }

    async fn queued_batches(&self, partner: &PartnerId) -> Result<Vec<String>, StoreError> {
        measured!(self, "queued_batches", self.inner.queued_batches(partner))
    }

    async fn queue_summary(&self, partner: &PartnerId) -> Result<QueueSummary, StoreError> {
        measured!(self, "queue_summary", self.inner.queue_summary(partner))
    }

    async fn batch(
        &self,
        partner: &PartnerId,
        batch_id: &str,
    ) -> Result<Option<(Batch, String)>, StoreError> {
        measured!(self, "batch", self.inner.batch(partner, batch_id))
    }

    async fn purge_settled(
        &self,
        partner: &PartnerId,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        measured!(
            self,
            "purge_settled",
            self.inner.purge_settled(partner, before, limit)
        )
    }
}

#[async_trait::async_trait]
impl Periods for MeasuredStore {
    async fn period_reports(
        &self,
        partner: &PartnerId,
        period: Period,
        branch: Option<&str>,
    ) -> Result<Vec<(Report, Vec<Batch>)>, StoreError> {
        measured!(
            self,
            "period_reports",
            self.inner.period_reports(partner, period, branch)
        )
    }

    async fn periods(&self, partner: &PartnerId) -> Result<Vec<Period>, StoreError> {
        measured!(self, "periods", self.inner.periods(partner))
    }

    async fn replace_expected_loans(
        &self,
        snapshot: &ExpectedLoansSnapshot,
    ) -> Result<(), StoreError> {
        measured!(
            self,
            "replace_expected_loans",
            self.inner.replace_expected_loans(snapshot)
        )
    }

    async fn expected_loans(
        &self,
        partner: &PartnerId,
    ) -> Result<Option<ExpectedLoansSnapshot>, StoreError> {
        measured!(self, "expected_loans", self.inner.expected_loans(partner))
    }

    async fn expected_loans_taken_at(
        &self,
        partner: &PartnerId,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        measured!(
            self,
            "expected_loans_taken_at",
            self.inner.expected_loans_taken_at(partner)
        )
    }

    async fn lock_refresh(
        &self,
        partner: &PartnerId,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        measured!(
            self,
            "lock_refresh",
            self.inner.lock_refresh(partner, holder, ttl)
        )
    }

    async fn unlock_refresh(&self, partner: &PartnerId, holder: &str) -> Result<(), StoreError> {
        measured!(
            self,
            "unlock_refresh",
            self.inner.unlock_refresh(partner, holder)
        )
    }

    async fn record_refresh(
        &self,
        partner: &PartnerId,
        status: &RefreshStatus,
    ) -> Result<(), StoreError> {
        measured!(
            self,
            "record_refresh",
            self.inner.record_refresh(partner, status)
        )
    }

    async fn refresh_status(&self, partner: &PartnerId) -> Result<RefreshStatus, StoreError> {
        measured!(self, "refresh_status", self.inner.refresh_status(partner))
    }
}

#[async_trait::async_trait]
impl Sessions for MeasuredStore {
    async fn create_session(
        &self,
        id_hash: &str,
        session: &WebSession,
        idle: Duration,
    ) -> Result<(), StoreError> {
        measured!(
            self,
            "create_session",
            self.inner.create_session(id_hash, session, idle)
        )
    }

    async fn session(
        &self,
        id_hash: &str,
        idle: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<WebSession>, StoreError> {
        measured!(self, "session", self.inner.session(id_hash, idle, now))
    }

    async fn end_session(&self, id_hash: &str) -> Result<(), StoreError> {
        measured!(self, "end_session", self.inner.end_session(id_hash))
    }
}
