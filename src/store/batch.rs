//! A batch: one call's worth of a report, as accepted, and what happened to it since (its
//! state, attempts, operator actions and version). Reports, the delivery queue and the period
//! view all speak of batches in these words.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{Amount, ClientId, LoanId};

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

/// The report a batch belongs to: its id is `{report id}.{number}`.
pub fn report_of_batch(batch_id: &str) -> Option<Uuid> {
    let (report, number) = batch_id.rsplit_once('.')?;
    number.parse::<usize>().ok()?;
    Uuid::parse_str(report).ok()
}

// A batch's version: what an operator's confirmation was made against.
//
// `{state}.{attempts recorded}.{operator actions}`. Held, failed and rejected (the states an
// operator acts from) are left only by an operator action, and every action adds one to its
// count, so a batch that went away and came back to the same state never shows the same
// version again; an attempt recorded late (a slow worker's answer after the batch was held)
// changes it too, as it is news the operator did not see.
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
