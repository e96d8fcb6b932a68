//! Durable report state and the delivery queue, behind one trait so that every backend keeps
//! the same promises:
//! - accepting a report is one atomic step (idempotency record, report, batches, queue entries):
//!   a crash leaves either all of it or none of it;
//! - an idempotency key is claimed before the accept and the accept fails if the claim was
//!   lost, so two requests with one key can never both store a report.

pub mod embedded;
pub mod expected;
pub mod redis;
pub mod sessions;
mod version;

pub use expected::{EXPECTED_STATUSES, ExpectedLoan, ExpectedLoansSnapshot, RefreshStatus};
pub use sessions::WebSession;
pub use version::BatchVersion;

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
    /// Loans of the report are in other accepted reports of the same period (and the report
    /// is not a correction); nothing was written.
    #[error("{} loan(s) of the report were already reported in this period", .0.len())]
    AlreadyReported(Vec<EarlierReport>),
    /// A branch's correction repeats loans another branch reported in the period (positions in
    /// the refused report); nothing was written. Only an admin key may correct those.
    #[error("{} loan(s) of the correction were reported by another branch", .0.len())]
    OtherBranchLoans(Vec<usize>),
    /// A write was sent but no answer came back (a timeout, a connection cut after the
    /// request was written): it may or may not have been applied. Never to be reported as
    /// "nothing was stored".
    #[error("the store did not confirm a write; it may have been applied: {0}")]
    OutcomeUnknown(String),
    /// The write was made, but not acknowledged by the replicas (`store.replica_acks`) or
    /// the AOF in time: a failover (or crash) may still lose it. Never to be answered as a
    /// plain success, nor as "nothing was stored".
    #[error("the store did not confirm the write on enough replicas: {0}")]
    NotReplicated(String),
    #[error("store error: {0}")]
    Other(String),
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    /// On the delivery queue, not yet sent.
    Queued,
    /// A worker is sending it now (written before the call to Kiva).
    Sending,
    /// Kiva certainly did not process it (unreachable, 429, 503, token failure); it will be
    /// sent again at `next_attempt_at`.
    RetryWait,
    /// Kiva accepted the upload (see `upload_id` and each repayment's state).
    Delivered,
    /// Kiva refused the batch (a 4xx such as 400 or 422); it will not be sent again unless an
    /// operator resends it.
    Rejected,
    /// The outcome is unknown (a timeout after sending, a reset, 500/502/504, or a worker that
    /// stopped mid-send): Kiva may have the upload. Not resent automatically; an operator
    /// checks PA2, then resends or marks it delivered.
    Held,
    /// Retries ran out (attempts or age) without Kiva processing it.
    Failed,
}

/// The text chrono's `Serialize` writes (RFC 3339, UTC as `Z`, fractional seconds in groups of
/// three), built in one piece: chrono's own `Serialize` feeds serde_json one fragment at a
/// time through `collect_str`, each escaped on its own.
fn rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

impl BatchState {
    /// The state's name as serde writes it; Redis keys and script arguments use it on every
    /// accept and delivery step, where a serde round trip per use was measurable.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::RetryWait => "retry_wait",
            Self::Delivered => "delivered",
            Self::Rejected => "rejected",
            Self::Held => "held",
            Self::Failed => "failed",
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RepaymentState {
    /// Its batch waits to be sent (or to be sent again).
    Queued,
    /// Its batch is being sent now.
    Sending,
    /// Delivered; Kiva reported no problem with this loan.
    Accepted,
    /// Delivered; Kiva attached a warning to this loan.
    Warning,
    /// Delivered, but Kiva reported an error for this loan: PA2 will not count it.
    RejectedByKiva,
    /// Its batch was refused by Kiva as a whole.
    Rejected,
    /// Its batch's outcome is unknown; an operator decides.
    Held,
    /// Its batch could not be delivered.
    Failed,
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

pub fn batch_id(report: Uuid, number: usize) -> String {
    format!("{report}.{number}")
}

/// One call's worth of a report (at most `kiva.batch_size` repayments), as accepted. Never
/// changes after the accept; what happens to it lives beside it (`BatchProgress`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchDoc {
    pub id: String,
    pub report_id: Uuid,
    pub number: usize,
    pub repayment_count: usize,
    pub total_amount: Amount,
    pub repayments: Vec<StoredRepayment>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StoredRepayment {
    /// Index of this repayment in the submitted `repayments` array.
    #[schema(example = 0)]
    pub position: usize,
    #[schema(value_type = String)]
    pub loan_id: LoanId,
    #[schema(value_type = Option<String>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<ClientId>,
    #[schema(value_type = String, example = "25.00")]
    pub amount: Amount,
}

impl StoredRepayment {
    pub fn to_repayment(&self) -> crate::domain::Repayment {
        crate::domain::Repayment {
            loan_id: self.loan_id.clone(),
            client_id: self.client_id.clone(),
            amount: self.amount,
        }
    }
}

/// A problem Kiva reported for one loan of an upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KivaProblem {
    pub loan_id: Option<String>,
    pub code: Option<String>,
    pub details: Option<String>,
    /// `error` (PA2 will not count the loan), `warning`, or what else Kiva said.
    #[schema(example = "error")]
    pub severity: String,
}

/// What the last attempt (or an operator) settled for a batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchResult {
    /// Kiva's id of the upload, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    /// Kiva's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = 200)]
    pub kiva_status: Option<u16>,
    /// Why the batch is in its state, in plain words.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<KivaProblem>,
}

/// One try at sending a batch to Kiva.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    #[schema(example = 1)]
    pub number: u32,
    pub started_at: DateTime<Utc>,
    #[schema(example = 840)]
    pub duration_ms: u64,
    /// The state the attempt left the batch in.
    pub outcome: BatchState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = 200)]
    pub http_status: Option<u16>,
    /// A transport or token error, when Kiva did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The start of Kiva's answer (at most 4 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kiva_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
}

/// How the record of an attempt whose outcome never came begins (also matched in FINISH).
pub const UNRECORDED: &str = "no outcome recorded";

impl Attempt {
    /// An attempt whose outcome was never recorded (its worker stopped, or its record went to
    /// a node that then lost it in a failover), written when its batch is taken over and
    /// held: `started_at`, when `sending` was written, is when the upload may have reached
    /// Kiva, the time an operator searches PA2 with.
    pub fn unrecorded(number: u32, started_at: DateTime<Utc>) -> Self {
        Attempt {
            number,
            started_at,
            duration_ms: 0,
            outcome: BatchState::Held,
            http_status: None,
            error: Some(format!(
                "{UNRECORDED}: the worker stopped, or its record was lost; Kiva may have the \
                 upload from this time on: check PA2"
            )),
            kiva_body: None,
            upload_id: None,
        }
    }

    /// Whether a stored attempt record is one of `unrecorded`'s: the attempt's own record,
    /// should it arrive late, takes its place.
    pub fn is_unrecorded(doc: &str) -> bool {
        doc.contains(UNRECORDED)
    }

    /// `started_at` as attempts carry it (see `rfc3339`).
    pub fn time_text(at: &DateTime<Utc>) -> String {
        at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperatorActionKind {
    Resend,
    MarkDelivered,
}

impl OperatorActionKind {
    /// The states the action may start from.
    pub fn allowed_from(self, state: BatchState) -> bool {
        match self {
            OperatorActionKind::Resend => {
                matches!(
                    state,
                    BatchState::Held | BatchState::Failed | BatchState::Rejected
                )
            }
            OperatorActionKind::MarkDelivered => state == BatchState::Held,
        }
    }
}

impl BatchResult {
    /// A batch found in `sending` after its worker stopped.
    pub fn held_after_worker_stopped() -> Self {
        BatchResult {
            reason: "the worker sending this batch stopped before Kiva's answer was recorded; \
                     Kiva may have the upload: check PA2, then resend or mark delivered"
                .into(),
            ..BatchResult::default()
        }
    }

    pub fn marked_delivered(command: &OperatorCommand) -> Self {
        BatchResult {
            upload_id: command.upload_id.clone(),
            reason: format!(
                "marked delivered by {}: the upload was confirmed in PA2",
                command.by
            ),
            ..BatchResult::default()
        }
    }
}

/// What an operator did to a batch, and who.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OperatorAction {
    pub action: OperatorActionKind,
    /// Name of the admin API key used.
    pub by: String,
    pub at: DateTime<Utc>,
    /// Kiva's upload id the operator found in PA2 (mark delivered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "884213")]
    pub upload_id: Option<String>,
    /// What the operator wrote about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "found in PA2 as upload 884213, 12 Nov")]
    pub note: Option<String>,
    /// The batch's state before the action.
    pub from_state: BatchState,
}

/// An operator's action as asked for, before the store knows the batch's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperatorCommand {
    pub action: OperatorActionKind,
    pub by: String,
    pub at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The version the operator confirmed against: the store refuses the action, in the same
    /// atomic step, when the batch is no longer at it. Not recorded with the action.
    #[serde(skip)]
    pub expected: Option<BatchVersion>,
}

/// A batch as shown to the MIS and the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Batch {
    #[schema(example = "0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b.1")]
    pub id: String,
    pub report_id: Uuid,
    /// 1 for the first batch of a report.
    #[schema(example = 1)]
    pub number: usize,
    pub state: BatchState,
    /// Changes whenever the state, the attempts or the operator actions do: send it as
    /// `If-Match` to `resend` or `mark-delivered`, which then refuse (409) a batch that
    /// changed since it was read.
    #[schema(example = "held.1.0")]
    pub version: String,
    #[schema(example = 2)]
    pub repayment_count: usize,
    #[schema(value_type = String, example = "65.00")]
    pub total_amount: Amount,
    /// When a batch in `retry_wait` is sent again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<BatchResult>,
    pub attempts: Vec<Attempt>,
    pub operator_actions: Vec<OperatorAction>,
    /// How many of its repayments are in each state; states with none are left out.
    #[schema(value_type = Object, example = json!({"accepted": 198, "rejected_by_kiva": 2}))]
    pub repayment_states: std::collections::BTreeMap<RepaymentState, usize>,
    pub repayments: Vec<RepaymentView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RepaymentView {
    #[serde(flatten)]
    pub repayment: StoredRepayment,
    pub state: RepaymentState,
    /// Kiva's problems for this loan, when its batch was delivered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<KivaProblem>,
}

/// The live part of a batch, beside its `BatchDoc`.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchProgress {
    pub state: BatchState,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub result: Option<BatchResult>,
    pub attempts: Vec<Attempt>,
    pub operator_actions: Vec<OperatorAction>,
}

impl Batch {
    /// Repayment states are derived, not stored: from the batch's state and, once delivered,
    /// from Kiva's problems for each loan (matched by loan id, as Kiva reports them).
    pub fn assemble(doc: BatchDoc, progress: BatchProgress) -> Self {
        let problems = progress
            .result
            .as_ref()
            .map_or(&[][..], |r| r.problems.as_slice());
        let repayments: Vec<RepaymentView> = doc
            .repayments
            .into_iter()
            .map(|repayment| {
                let mine: Vec<KivaProblem> = problems
                    .iter()
                    .filter(|p| p.loan_id.as_deref() == Some(repayment.loan_id.as_str()))
                    .cloned()
                    .collect();
                let state = match progress.state {
                    BatchState::Queued | BatchState::RetryWait => RepaymentState::Queued,
                    BatchState::Sending => RepaymentState::Sending,
                    BatchState::Rejected => RepaymentState::Rejected,
                    BatchState::Held => RepaymentState::Held,
                    BatchState::Failed => RepaymentState::Failed,
                    BatchState::Delivered if mine.iter().any(|p| p.severity == "error") => {
                        RepaymentState::RejectedByKiva
                    }
                    BatchState::Delivered if !mine.is_empty() => RepaymentState::Warning,
                    BatchState::Delivered => RepaymentState::Accepted,
                };
                RepaymentView {
                    repayment,
                    state,
                    problems: mine,
                }
            })
            .collect();
        let mut repayment_states: std::collections::BTreeMap<RepaymentState, usize> =
            std::collections::BTreeMap::new();
        for r in &repayments {
            *repayment_states.entry(r.state).or_insert(0) += 1;
        }
        let version = BatchVersion {
            state: progress.state,
            attempts: progress.attempts.len(),
            actions: progress.operator_actions.len(),
        }
        .to_string();
        Batch {
            id: doc.id,
            report_id: doc.report_id,
            number: doc.number,
            state: progress.state,
            version,
            repayment_count: doc.repayment_count,
            total_amount: doc.total_amount,
            next_attempt_at: progress.next_attempt_at,
            result: progress.result,
            attempts: progress.attempts,
            operator_actions: progress.operator_actions,
            repayment_states,
            repayments,
        }
    }
}

/// A queue entry a worker took; it stays pending (and reclaimable) until the batch settles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedBatch {
    pub partner_id: PartnerId,
    pub entry_id: String,
    pub batch_id: String,
    /// True when the entry was taken over from a worker that did not finish it in time.
    pub reclaimed: bool,
}

/// What `begin_attempt` decided.
#[derive(Debug, Clone, PartialEq)]
pub enum BeginAttempt {
    /// `sending` is written: send it now, as attempt `attempt` (numbered over the batch's
    /// whole life), the `attempts_in_budget`-th since it was queued or an operator resent it.
    Send {
        attempt: u32,
        attempts_in_budget: u32,
        batch: BatchDoc,
        column_format: ColumnFormat,
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
    /// For `delivered`: how many of the batch's repayments Kiva refused.
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

    // Delivery. A batch moves queued → sending → delivered | rejected | held | retry_wait |
    // failed; every move is one atomic step that also rolls the report's status up.

    /// Creates the partner's delivery queue and consumer group if missing (also done on
    /// demand when Redis lost them).
    async fn prepare_delivery(&self, partner: &PartnerId) -> Result<(), StoreError>;

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

    /// How durable an accepted report is on this store, for readiness and the start-up log.
    async fn durability(&self) -> Result<Durability, StoreError>;

    /// Every report of the period (of one branch, when given), each with its batches, oldest
    /// first.
    async fn period_reports(
        &self,
        partner: &PartnerId,
        period: Period,
        branch: Option<&str>,
    ) -> Result<Vec<(Report, Vec<Batch>)>, StoreError>;

    /// The periods the partner has reports for, newest first.
    async fn periods(&self, partner: &PartnerId) -> Result<Vec<Period>, StoreError>;

    // Kiva's expected loans (see `expected`): a snapshot per partner, and the refresh lock.

    /// Replaces the partner's snapshot atomically (readers see the old one or the new one,
    /// never a mix).
    async fn replace_expected_loans(
        &self,
        snapshot: &ExpectedLoansSnapshot,
    ) -> Result<(), StoreError>;

    async fn expected_loans(
        &self,
        partner: &PartnerId,
    ) -> Result<Option<ExpectedLoansSnapshot>, StoreError>;

    /// Just `taken_at` (cheap: lets a process cache the snapshot and reload it only when it
    /// changed).
    async fn expected_loans_taken_at(
        &self,
        partner: &PartnerId,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Takes the partner's refresh lock for `ttl` if nobody holds it; true when taken.
    /// `holder` is unique.
    async fn lock_refresh(
        &self,
        partner: &PartnerId,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Gives the lock back, only if `holder` still holds it.
    async fn unlock_refresh(&self, partner: &PartnerId, holder: &str) -> Result<(), StoreError>;

    async fn record_refresh(
        &self,
        partner: &PartnerId,
        status: &RefreshStatus,
    ) -> Result<(), StoreError>;

    /// The last recorded status, with `running` from the lock.
    async fn refresh_status(&self, partner: &PartnerId) -> Result<RefreshStatus, StoreError>;

    // Web sessions (see `sessions`), keyed by the SHA-256 of the session id.

    /// Stores a new session; it lives `idle` without use, and never past `expires_at`.
    async fn create_session(
        &self,
        id_hash: &str,
        session: &WebSession,
        idle: Duration,
    ) -> Result<(), StoreError>;

    /// The session if it is alive at `now`; its idle expiry moves to `now + idle` (never past
    /// its absolute expiry) in the same step.
    async fn session(
        &self,
        id_hash: &str,
        idle: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<WebSession>, StoreError>;

    /// Ends the session (sign-out); ending one that is gone is not an error.
    async fn end_session(&self, id_hash: &str) -> Result<(), StoreError>;
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

/// Cuts an accepted report into batches of at most `batch_size` repayments.
pub fn batches_of(
    report_id: Uuid,
    report: &crate::domain::RepaymentReport,
    batch_size: usize,
) -> Vec<BatchDoc> {
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
                    }
                })
                .collect();
            BatchDoc {
                id: batch_id(report_id, i + 1),
                report_id,
                number: i + 1,
                repayment_count: chunk.len(),
                total_amount: crate::domain::total(chunk),
                repayments,
            }
        })
        .collect()
}

/// Where a loan of a refused report was reported before in the same period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlierReport {
    /// Index of the repayment in the refused report.
    pub position: usize,
    pub report_id: Uuid,
    /// Its index in the earlier report; `None` when that report is no longer kept (purged
    /// after the retention, while the period's loan index lives on).
    pub earlier_position: Option<usize>,
    /// The branch of the earlier report, when it is still kept and was read (the listed
    /// loans'): who may be told which report it is.
    pub branch: Option<String>,
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

/// The report a batch belongs to: its id is `{report id}.{number}`.
pub fn report_of_batch(batch_id: &str) -> Option<Uuid> {
    let (report, number) = batch_id.rsplit_once('.')?;
    number.parse::<usize>().ok()?;
    Uuid::parse_str(report).ok()
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
