//! The delivery worker: claims queued batches, sends each to Kiva once, and records what
//! happened.
//!
//! Invariants (each one is a way other queues lost or doubled work):
//! - `sending` is written before the call to Kiva. A batch found in `sending` by another
//!   worker (its claimer died, or overran the claim deadline) has an unknown outcome and is
//!   held for an operator, never sent again silently.
//! - Only what Kiva certainly did not process is retried (see `classify`), as a new delayed
//!   queue entry; the attempt count and age bound the retries.
//! - A worker's whole attempt (token, send, refresh, resend) must end within the claim
//!   deadline less a margin, counted from the claim (not from the send: slow store calls
//!   before the send eat into it), or it counts as an unknown outcome; so no entry is taken
//!   over while its first claimer may still get an answer. When too little of the deadline is
//!   left for one call to Kiva, nothing is sent and the batch goes back to the queue.
//! - A worker that wrote nothing it knows of (no answer to BEGIN) and sent nothing gives the
//!   batch back rather than leaving it to be found `sending` and held.
//! - Nothing Kiva sends can stop the worker: time arithmetic is checked, and a worker task
//!   that ends or panics anyway is restarted by `supervise` (and readiness says so).
//! - An outcome Kiva gave is recorded even if Redis is away for a while: the worker retries
//!   the write until Redis answers or it is stopped. If it is stopped first, the entry stays
//!   pending and the batch will be held: never lost, never doubled.

pub mod classify;
pub mod kind;
pub mod repayments;
mod round;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::{CLAIM_MARGIN_SECS, DeliverySettings, PartnerSettings};
use crate::domain::PartnerId;
use crate::kiva::SendOutcome;
use crate::metrics::WorkerReading;
use crate::store::{
    Attempt, AttemptEnd, BatchResult, BatchState, BeginAttempt, ClaimedBatch, KivaProblem,
    ReportStore, StoreError,
};
use classify::{Verdict, classify, retry_delay};
pub use kind::{BatchKind, BatchKinds};
pub use repayments::{Repayments, Uploader, kiva_body};

/// The time the worker lives by; tests use a clock they move by hand.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// What one call of `run_once` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Queue entries taken.
    pub claimed: usize,
    /// Calls made to Kiva.
    pub sent: usize,
}

struct Partner {
    id: PartnerId,
    resend_on_unknown: bool,
}

pub struct Worker {
    store: Arc<dyn ReportStore>,
    /// What sends each kind of batch, by its name.
    kinds: BatchKinds,
    clock: Arc<dyn Clock>,
    partners: Vec<Partner>,
    /// Where the next round starts among `partners`: moves on every round, for fairness.
    next_partner: AtomicUsize,
    settings: DeliverySettings,
    /// The longest one call to Kiva may take (`kiva.request_timeout_secs`): an attempt is not
    /// started with less than this left of its budget.
    send_window: Duration,
    consumer: String,
    shutdown: CancellationToken,
    health: Arc<WorkerHealth>,
    /// Settled reports older than this are deleted (`store.retention_days`).
    retention: Option<Duration>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// How often the loop looks for settled reports past the retention period.
const PURGE_INTERVAL: Duration = Duration::from_secs(3600);
/// Reports deleted per partner per sweep at most, so a sweep never holds the store for long.
const PURGE_BATCH: usize = 500;

/// Whether the delivery loop is alive, for readiness and operators.
#[derive(Debug, Default)]
pub struct WorkerHealth {
    running: AtomicBool,
    /// Unix ms of the start of the last round.
    last_round_ms: AtomicI64,
    restarts: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct WorkerStatus {
    pub running: bool,
    /// Times the delivery loop ended or panicked and was started again.
    #[schema(example = 0)]
    pub restarts: u64,
    /// Seconds since the loop last started a round.
    #[schema(example = 1)]
    pub seconds_since_last_round: Option<u64>,
}

impl WorkerHealth {
    pub fn status(&self) -> WorkerStatus {
        let last = self.last_round_ms.load(Ordering::Relaxed);
        WorkerStatus {
            running: self.running.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            seconds_since_last_round: (last > 0)
                .then(|| (Utc::now().timestamp_millis() - last).max(0) as u64 / 1000),
        }
    }

    /// What the worker gauges of `/metrics` show of this loop.
    pub fn reading(&self) -> WorkerReading {
        let last = self.last_round_ms.load(Ordering::Relaxed);
        WorkerReading {
            running: self.running.load(Ordering::Relaxed),
            last_round_at: (last > 0)
                .then(|| DateTime::<Utc>::from_timestamp_millis(last))
                .flatten(),
        }
    }

    fn round_started(&self) {
        self.last_round_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }
}

impl Worker {
    pub fn new(
        store: Arc<dyn ReportStore>,
        kinds: BatchKinds,
        clock: Arc<dyn Clock>,
        partners: &[PartnerSettings],
        settings: DeliverySettings,
        send_window: Duration,
    ) -> Self {
        Self {
            store,
            kinds,
            clock,
            partners: partners
                .iter()
                .map(|p| Partner {
                    id: p.id.clone(),
                    resend_on_unknown: p.resend_on_unknown_outcome,
                })
                .collect(),
            next_partner: AtomicUsize::new(0),
            settings,
            send_window,
            consumer: consumer_name(),
            shutdown: CancellationToken::new(),
            health: Arc::default(),
            retention: None,
            metrics: None,
        }
    }

    /// Counts this worker's attempts in `metrics` (`repayment_gateway_delivery_attempts_total`).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = Some(retention);
        self
    }

    /// Deletes settled reports past the retention period, for every partner.
    pub async fn purge_settled(&self) -> Result<usize, StoreError> {
        let Some(cutoff) = self
            .retention
            .and_then(|r| chrono::Duration::from_std(r).ok())
            .and_then(|r| self.clock.now().checked_sub_signed(r))
        else {
            return Ok(0);
        };
        let mut purged = 0;
        for partner in &self.partners {
            purged += self
                .store
                .purge_settled(&partner.id, cutoff, PURGE_BATCH)
                .await?;
        }
        if purged > 0 {
            tracing::info!(purged, %cutoff, "settled reports past the retention period deleted");
        }
        Ok(purged)
    }

    pub fn health(&self) -> Arc<WorkerHealth> {
        self.health.clone()
    }

    /// The name this worker claims under: unique per worker, so a restarted process never
    /// mistakes its predecessor's pending entries for its own.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Cancelling it stops `run` from claiming; in-flight batches finish.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    fn claim_deadline(&self) -> Duration {
        Duration::from_secs(self.settings.claim_deadline_secs)
    }

    /// The most one attempt may take before its outcome counts as unknown.
    fn attempt_budget(&self) -> Duration {
        self.claim_deadline()
            .saturating_sub(Duration::from_secs(CLAIM_MARGIN_SECS))
    }

    /// Runs rounds until cancelled, idling `poll_interval_ms` when there is nothing to do and
    /// backing off (up to 5 s) while the store is unreachable.
    pub async fn run(&self) {
        let idle = Duration::from_millis(self.settings.poll_interval_ms);
        let mut backoff = Duration::from_millis(100);
        self.health.running.store(true, Ordering::Relaxed);
        tracing::info!(consumer = %self.consumer, concurrency = self.settings.concurrency, "delivery worker started");
        for partner in &self.partners {
            if let Err(error) = self.store.prepare_delivery(&partner.id).await {
                // Not fatal: claiming creates the group on demand once Redis answers.
                tracing::warn!(partner = %partner.id, %error, "could not prepare the delivery queue yet");
            }
        }
        let mut next_purge = Instant::now();
        while !self.shutdown.is_cancelled() {
            if Instant::now() >= next_purge {
                next_purge = Instant::now() + PURGE_INTERVAL;
                if let Err(error) = self.purge_settled().await {
                    tracing::warn!(%error, "retention sweep skipped; tried again in an hour");
                }
            }
            let pause = match self.run_once().await {
                Ok(round) if round.claimed > 0 => {
                    backoff = Duration::from_millis(100);
                    continue;
                }
                Ok(_) => idle,
                Err(error) => {
                    tracing::warn!(%error, "delivery paused: store unavailable");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    backoff
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.shutdown.cancelled() => {}
            }
        }
        tracing::info!(consumer = %self.consumer, "delivery worker stopped");
    }

    /// Sends one claimed batch; true when Kiva was called.
    async fn deliver(
        &self,
        claimed: ClaimedBatch,
        claimed_at: Instant,
    ) -> Result<bool, StoreError> {
        let begun = match self.store.begin_attempt(&claimed, self.clock.now()).await {
            Ok(begun) => begun,
            Err(error) => {
                // Nothing was sent; `sending` may or may not have been written.
                tracing::warn!(batch = %claimed.batch_id, %error, "no answer from the store before sending; giving the batch back");
                self.give_back(&claimed).await;
                return Err(error);
            }
        };
        let (attempt, in_budget, batch, queued_at) = match begun {
            BeginAttempt::Send {
                attempt,
                attempts_in_budget,
                batch,
                queued_at,
            } => (attempt, attempts_in_budget, batch, queued_at),
            BeginAttempt::Held => {
                tracing::warn!(
                    batch = %claimed.batch_id,
                    partner = %claimed.partner_id,
                    "batch held: found mid-send after its worker stopped; Kiva may have the upload"
                );
                return Ok(false);
            }
            BeginAttempt::Skip(state) => {
                tracing::debug!(batch = %claimed.batch_id, ?state, "stale queue entry skipped");
                return Ok(false);
            }
        };
        let partner = &claimed.partner_id;
        let kind = match self.kinds.of(&batch) {
            Ok(kind) => kind,
            Err(unsent) => {
                let end = held_unsent(attempt, self.clock.now(), unsent);
                self.settle(&claimed, attempt, &end).await?;
                return Ok(false);
            }
        };
        let budget = self.attempt_budget().saturating_sub(claimed_at.elapsed());
        if budget < self.send_window {
            // A call started now could still be waiting for Kiva when another worker takes the
            // entry over; nothing was sent, so the batch can simply go back.
            tracing::warn!(
                batch = %claimed.batch_id,
                left_ms = budget.as_millis() as u64,
                "too little of the claim deadline left to call Kiva; giving the batch back"
            );
            self.give_back(&claimed).await;
            return Ok(false);
        }
        let started_at = self.clock.now();
        let started = Instant::now();
        let outcome = match tokio::time::timeout(budget, kind.send(partner, &batch)).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(unsent)) => {
                let end = held_unsent(attempt, started_at, unsent);
                self.settle(&claimed, attempt, &end).await?;
                return Ok(false);
            }
            Err(_) => SendOutcome::Unknown {
                reason: format!("no outcome within {budget:?}"),
            },
        };
        let mut end = self.conclude(
            &claimed,
            Tries {
                attempt,
                in_budget,
                queued_at,
            },
            started_at,
            started.elapsed(),
            &outcome,
        );
        if end.state == BatchState::Delivered {
            end.refused_by_kiva = kind.refused(&batch, &end.result.problems);
        }
        self.settle(&claimed, attempt, &end).await?;
        Ok(true)
    }

    /// Logs, counts and records how an attempt ended.
    async fn settle(
        &self,
        claimed: &ClaimedBatch,
        attempt: u32,
        end: &AttemptEnd,
    ) -> Result<(), StoreError> {
        log_outcome(claimed, attempt, end);
        if let Some(metrics) = &self.metrics {
            metrics.delivery_attempt(&claimed.partner_id, end.state);
        }
        self.record(claimed, attempt, end).await
    }

    /// Gives back a batch this worker claimed but did not send, retrying while the store is
    /// away. Should that fail too, the entry stays pending and is taken over after the claim
    /// deadline (and, if `sending` was written, held: safe, just slower).
    async fn give_back(&self, claimed: &ClaimedBatch) {
        let mut pause = Duration::from_millis(50);
        loop {
            match self.store.release_attempt(claimed).await {
                Ok(()) => return,
                Err(
                    StoreError::Unavailable(_)
                    | StoreError::OutcomeUnknown(_)
                    | StoreError::NotReplicated(_),
                ) if !self.shutdown.is_cancelled() => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(error) => {
                    tracing::error!(batch = %claimed.batch_id, %error, "could not give the batch back; it will be taken over after the claim deadline");
                    return;
                }
            }
        }
    }

    fn conclude(
        &self,
        claimed: &ClaimedBatch,
        tries: Tries,
        started_at: DateTime<Utc>,
        took: Duration,
        outcome: &SendOutcome,
    ) -> AttemptEnd {
        let resend_on_unknown = self
            .partners
            .iter()
            .any(|p| p.id == claimed.partner_id && p.resend_on_unknown);
        let mut result = BatchResult::default();
        let Tries {
            attempt,
            in_budget,
            queued_at,
        } = tries;
        let mut record = Attempt {
            number: attempt,
            started_at,
            duration_ms: took.as_millis() as u64,
            outcome: BatchState::Sending,
            http_status: None,
            error: None,
            kiva_body: None,
            upload_id: None,
        };
        match outcome {
            SendOutcome::Answered(answer) => {
                record.http_status = Some(answer.status);
                record.kiva_body = Some(answer.body_excerpt.clone());
                record.upload_id = answer.result.upload_id.clone();
                result.kiva_status = Some(answer.status);
                result.upload_id = answer.result.upload_id.clone();
                result.problems = answer
                    .result
                    .problems
                    .iter()
                    .map(|p| KivaProblem {
                        loan_id: p.loan_id.clone(),
                        code: p.code.clone(),
                        details: p.details.clone(),
                        severity: p.severity.to_string(),
                    })
                    .collect();
            }
            SendOutcome::TokenUnavailable { reason }
            | SendOutcome::NotSent { reason }
            | SendOutcome::Unknown { reason } => record.error = Some(reason.clone()),
        }

        let now = self.clock.now();
        let verdict = match classify(outcome) {
            Verdict::Unknown { reason } if resend_on_unknown => Verdict::Retry {
                reason: format!("{reason}; sending again as this partner's configuration allows"),
                hint: None,
            },
            verdict => verdict,
        };
        let (state, reason, retry_at) = match verdict {
            Verdict::Delivered => (BatchState::Delivered, "delivered to Kiva".to_owned(), None),
            Verdict::Rejected { reason } => (BatchState::Rejected, reason, None),
            Verdict::Unknown { reason } => (BatchState::Held, reason, None),
            Verdict::Retry { reason, hint } => {
                // Checked arithmetic throughout: `hint` is whatever Kiva's Retry-After said.
                let max_age = chrono::Duration::try_hours(self.settings.max_age_hours as i64);
                let give_up_at = max_age.and_then(|age| queued_at.checked_add_signed(age));
                let delay = retry_delay(
                    in_budget,
                    Duration::from_millis(self.settings.retry_base_ms),
                    Duration::from_secs(self.settings.retry_max_secs),
                    hint,
                );
                let at = chrono::Duration::from_std(delay)
                    .ok()
                    .and_then(|d| now.checked_add_signed(d));
                let gave_up = |limit: &str| {
                    (
                        BatchState::Failed,
                        format!("{reason}; gave up after {attempt} attempt(s) ({limit})"),
                        None,
                    )
                };
                match (at, give_up_at) {
                    _ if in_budget >= self.settings.max_attempts => gave_up("attempt limit"),
                    (_, Some(limit)) if now >= limit => gave_up("age limit"),
                    (Some(at), Some(limit)) if at <= limit => {
                        (BatchState::RetryWait, reason, Some(at))
                    }
                    // The next try would come after the age limit: fail now, visibly, rather
                    // than leave the batch waiting for years.
                    _ => gave_up(&format!(
                        "the next try, {} from now, would be past the age limit of {} h",
                        humanize(delay),
                        self.settings.max_age_hours
                    )),
                }
            }
        };
        record.outcome = state;
        result.reason = reason;
        AttemptEnd {
            state,
            result,
            attempt: record,
            retry_at,
            refused_by_kiva: 0,
        }
    }

    /// Writes the outcome, retrying while Redis is away or did not confirm (FINISH is
    /// idempotent per attempt): Kiva's answer must not be dropped.
    async fn record(
        &self,
        claimed: &ClaimedBatch,
        attempt: u32,
        end: &AttemptEnd,
    ) -> Result<(), StoreError> {
        let mut pause = Duration::from_millis(50);
        loop {
            match self.store.finish_attempt(claimed, attempt, end).await {
                Ok(()) => return Ok(()),
                Err(
                    StoreError::Unavailable(reason)
                    | StoreError::OutcomeUnknown(reason)
                    | StoreError::NotReplicated(reason),
                ) if !self.shutdown.is_cancelled() => {
                    tracing::warn!(batch = %claimed.batch_id, %reason, "cannot record the outcome yet; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(error) => {
                    tracing::error!(
                        batch = %claimed.batch_id,
                        state = ?end.state,
                        %error,
                        "outcome not recorded; the batch will be held when its entry is taken over"
                    );
                    return Err(error);
                }
            }
        }
    }
}

/// Which try an attempt is, for the retry limits.
#[derive(Debug, Clone, Copy)]
struct Tries {
    /// Numbered over the batch's life.
    attempt: u32,
    /// Numbered since it was queued or last resent by an operator.
    in_budget: u32,
    queued_at: DateTime<Utc>,
}

/// Operators act on held, failed and rejected batches: those are warnings and errors, with
/// the reason; everything else is routine.
fn log_outcome(claimed: &ClaimedBatch, attempt: u32, end: &AttemptEnd) {
    let (batch, partner, state, reason) = (
        &claimed.batch_id,
        &claimed.partner_id,
        end.state,
        &end.result.reason,
    );
    let status = end.attempt.http_status;
    match state {
        BatchState::Held => {
            tracing::warn!(%batch, %partner, attempt, http_status = status, %reason, "batch held: check PA2, then resend or mark delivered")
        }
        BatchState::Failed | BatchState::Rejected => {
            tracing::error!(%batch, %partner, attempt, http_status = status, ?state, %reason, "batch not delivered")
        }
        _ => {
            tracing::info!(%batch, %partner, attempt, http_status = status, ?state, "batch attempt finished")
        }
    }
}

/// The end of an attempt that sent nothing because the batch's kind could not send it: held,
/// with the reason, for an operator (never dropped, never retried on its own).
fn held_unsent(attempt: u32, started_at: DateTime<Utc>, unsent: kind::Unsent) -> AttemptEnd {
    AttemptEnd {
        state: BatchState::Held,
        result: BatchResult {
            reason: unsent.0.clone(),
            ..BatchResult::default()
        },
        attempt: Attempt {
            number: attempt,
            started_at,
            duration_ms: 0,
            outcome: BatchState::Held,
            http_status: None,
            error: Some(unsent.0),
            kiva_body: None,
            upload_id: None,
        },
        retry_at: None,
        refused_by_kiva: 0,
    }
}

fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..120 => format!("{secs} s"),
        120..7_200 => format!("{} min", secs / 60),
        7_200..172_800 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}

/// Runs `worker` until `shutdown`, starting it again (with backoff, logged at error level)
/// whenever its loop ends or panics: a dead worker would leave every later report queued.
pub async fn supervise(worker: Arc<Worker>) {
    let shutdown = worker.shutdown_token();
    let health = worker.health();
    let mut backoff = Duration::from_millis(500);
    loop {
        let run = tokio::spawn({
            let worker = worker.clone();
            async move { worker.run().await }
        });
        let ended = run.await;
        health.running.store(false, Ordering::Relaxed);
        if shutdown.is_cancelled() {
            return;
        }
        health.restarts.fetch_add(1, Ordering::Relaxed);
        match ended {
            Err(error) if error.is_panic() => {
                let panic = error.into_panic();
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %message, restart_in_ms = backoff.as_millis() as u64, "delivery worker panicked; restarting it");
            }
            _ => {
                tracing::error!(
                    restart_in_ms = backoff.as_millis() as u64,
                    "delivery worker stopped unexpectedly; restarting it"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "gateway".into());
    let tag = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &tag[..8])
}
