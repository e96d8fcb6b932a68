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
//!   deadline less a margin, or it counts as an unknown outcome; so no entry is taken over
//!   while its first claimer may still get an answer.
//! - An outcome Kiva gave is recorded even if Redis is away for a while: the worker retries
//!   the write until Redis answers or it is stopped. If it is stopped first, the entry stays
//!   pending and the batch will be held: never lost, never doubled.

pub mod classify;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::config::{CLAIM_MARGIN_SECS, DeliverySettings, PartnerSettings};
use crate::domain::{ColumnFormat, PartnerId};
use crate::kiva::{KivaClient, SendOutcome};
use crate::store::{
    Attempt, AttemptEnd, BatchDoc, BatchResult, BatchState, BeginAttempt, ClaimedBatch,
    KivaProblem, ReportStore, StoreError,
};
use classify::{Verdict, classify, retry_delay};

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

/// Sends one batch body to Kiva. `KivaClient` in production.
#[async_trait::async_trait]
pub trait Uploader: Send + Sync + 'static {
    async fn send(&self, partner: &PartnerId, body: bytes::Bytes) -> SendOutcome;
}

#[async_trait::async_trait]
impl Uploader for KivaClient {
    async fn send(&self, partner: &PartnerId, body: bytes::Bytes) -> SendOutcome {
        self.send_repayments(partner, body).await
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
    uploader: Arc<dyn Uploader>,
    clock: Arc<dyn Clock>,
    partners: Vec<Partner>,
    settings: DeliverySettings,
    consumer: String,
    shutdown: CancellationToken,
}

impl Worker {
    pub fn new(
        store: Arc<dyn ReportStore>,
        uploader: Arc<dyn Uploader>,
        clock: Arc<dyn Clock>,
        partners: &[PartnerSettings],
        settings: DeliverySettings,
    ) -> Self {
        Self {
            store,
            uploader,
            clock,
            partners: partners
                .iter()
                .map(|p| Partner {
                    id: p.id.clone(),
                    resend_on_unknown: p.resend_on_unknown_outcome,
                })
                .collect(),
            settings,
            consumer: consumer_name(),
            shutdown: CancellationToken::new(),
        }
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

    /// One round: queue due retries, claim up to `concurrency` batches (taking over those
    /// another worker left too long), send them, record the outcomes. Tests drive the worker
    /// with this, step by step.
    pub async fn run_once(&self) -> Result<Round, StoreError> {
        let now = self.clock.now();
        let mut claimed = Vec::new();
        for partner in &self.partners {
            self.store.promote_due_retries(&partner.id, now).await?;
            let room = self.settings.concurrency.saturating_sub(claimed.len());
            if room > 0 {
                claimed.extend(
                    self.store
                        .claim_batches(&partner.id, &self.consumer, room, self.claim_deadline())
                        .await?,
                );
            }
        }
        let round_claimed = claimed.len();
        let sent = futures_util::stream::iter(claimed)
            .map(|c| self.deliver(c))
            .buffer_unordered(self.settings.concurrency)
            .fold(0, async |sent, result| match result {
                Ok(true) => sent + 1,
                Ok(false) => sent,
                Err(error) => {
                    // The entry stays pending and is taken over after the claim deadline.
                    tracing::warn!(%error, "delivery interrupted");
                    sent
                }
            })
            .await;
        Ok(Round {
            claimed: round_claimed,
            sent,
        })
    }

    /// Runs rounds until cancelled, idling `poll_interval_ms` when there is nothing to do and
    /// backing off (up to 5 s) while the store is unreachable.
    pub async fn run(&self) {
        let idle = Duration::from_millis(self.settings.poll_interval_ms);
        let mut backoff = Duration::from_millis(100);
        tracing::info!(consumer = %self.consumer, concurrency = self.settings.concurrency, "delivery worker started");
        for partner in &self.partners {
            if let Err(error) = self.store.prepare_delivery(&partner.id).await {
                // Not fatal: claiming creates the group on demand once Redis answers.
                tracing::warn!(partner = %partner.id, %error, "could not prepare the delivery queue yet");
            }
        }
        while !self.shutdown.is_cancelled() {
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
    async fn deliver(&self, claimed: ClaimedBatch) -> Result<bool, StoreError> {
        let begun = self.store.begin_attempt(&claimed, self.clock.now()).await?;
        let (attempt, batch, format, queued_at) = match begun {
            BeginAttempt::Send {
                attempt,
                batch,
                column_format,
                queued_at,
            } => (attempt, batch, column_format, queued_at),
            BeginAttempt::Held => {
                tracing::warn!(batch = %claimed.batch_id, "batch found mid-send after its worker stopped: held");
                return Ok(false);
            }
            BeginAttempt::Skip(state) => {
                tracing::debug!(batch = %claimed.batch_id, ?state, "stale queue entry skipped");
                return Ok(false);
            }
        };
        let partner = &claimed.partner_id;
        let started_at = self.clock.now();
        let started = Instant::now();
        let outcome = match tokio::time::timeout(
            self.attempt_budget(),
            self.uploader.send(partner, kiva_body(&batch, format)),
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => SendOutcome::Unknown {
                reason: format!("no outcome within {:?}", self.attempt_budget()),
            },
        };
        let end = self.conclude(
            &claimed,
            attempt,
            queued_at,
            started_at,
            started.elapsed(),
            &outcome,
        );
        tracing::info!(
            batch = %claimed.batch_id,
            partner = %partner,
            attempt,
            state = ?end.state,
            http_status = end.attempt.http_status,
            "batch attempt finished"
        );
        self.record(&claimed, attempt, &end).await?;
        Ok(true)
    }

    fn conclude(
        &self,
        claimed: &ClaimedBatch,
        attempt: u32,
        queued_at: DateTime<Utc>,
        started_at: DateTime<Utc>,
        took: Duration,
        outcome: &SendOutcome,
    ) -> AttemptEnd {
        let resend_on_unknown = self
            .partners
            .iter()
            .any(|p| p.id == claimed.partner_id && p.resend_on_unknown);
        let mut result = BatchResult::default();
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
                let too_old =
                    now - queued_at > chrono::Duration::hours(self.settings.max_age_hours as i64);
                if attempt >= self.settings.max_attempts || too_old {
                    let limit = if too_old {
                        "age limit"
                    } else {
                        "attempt limit"
                    };
                    (
                        BatchState::Failed,
                        format!("{reason}; gave up after {attempt} attempt(s) ({limit})"),
                        None,
                    )
                } else {
                    let delay = retry_delay(
                        attempt,
                        Duration::from_millis(self.settings.retry_base_ms),
                        Duration::from_secs(self.settings.retry_max_secs),
                        hint,
                    );
                    let at =
                        now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                    (BatchState::RetryWait, reason, Some(at))
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
        }
    }

    /// Writes the outcome, retrying while Redis is away: Kiva's answer must not be dropped.
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
                Err(StoreError::Unavailable(reason)) if !self.shutdown.is_cancelled() => {
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

/// The body of one call to Kiva: `client_id` only for three-column partners, amounts as JSON
/// numbers with exactly the digits accepted.
pub fn kiva_body(batch: &BatchDoc, format: ColumnFormat) -> bytes::Bytes {
    let repayments: Vec<serde_json::Value> = batch
        .repayments
        .iter()
        .map(|r| r.to_repayment().to_kiva_json(format))
        .collect();
    serde_json::to_vec(&serde_json::json!({ "repayments": repayments }))
        .expect("JSON values serialize")
        .into()
}

fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "gateway".into());
    let tag = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &tag[..8])
}
