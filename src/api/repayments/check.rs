//! What validate (and the upload page's "Check the file") answers: every check of the send.

use chrono::Utc;
use uuid::Uuid;

use super::{BodyKind, NormalizedReport, expected_loans_check};
use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::problem::ApiError;
use crate::config::Role;
use crate::domain::RepaymentReport;
use crate::store::{Report, ReportStatus, StoreError, batches_of};

/// What `validate` answers for a report intake read (the pages' check too).
///
/// Every check of `accept_report` but the Idempotency-Key's (validate takes none): the
/// correction a file's query gives, the expected-loans rule, and the period's loans as the
/// store's accept checks them (read only, nothing claimed), with the same branch rules. A
/// check that could not be made (the store unreachable) is named in `not_checked`, never
/// passed silently.
pub(crate) async fn check_report(
    state: &AppState,
    caller: &Caller,
    kind: &BodyKind,
    report: RepaymentReport,
) -> Result<NormalizedReport, ApiError> {
    let correction = report.correction() || kind.correction();
    let report = report.with_correction(correction);
    let (warnings, expected_loans_check) = expected_loans_check(state, &report).await?;
    let mut normalized = NormalizedReport::of(&report, state.batch_size);
    normalized.correction = correction;
    normalized.warnings = warnings;
    normalized.expected_loans_check = Some(expected_loans_check);
    let id = Uuid::now_v7();
    let batches = batches_of(id, &report, state.batch_size);
    let record = report_record(id, caller, &report, batches.len());
    match state.store.check_accept(&record, &batches).await {
        Ok(()) => {}
        Err(StoreError::AlreadyReported(earlier)) if caller.role != Role::Admin => {
            return Err(crate::api::problem::already_reported(&earlier, |e| {
                e.branch.as_deref() == Some(caller.branch.as_str())
            }));
        }
        Err(error @ (StoreError::AlreadyReported(_) | StoreError::OtherBranchLoans(_))) => {
            return Err(error.into());
        }
        Err(error) => {
            tracing::warn!(%error, "validate could not check the period's loans");
            normalized.not_checked.push(
                "whether a loan was already reported in this period: the store could not be \
                 read; sending may still be refused for it"
                    .into(),
            );
        }
    }
    Ok(normalized)
}

/// The report `accept_report` stores (and `check_report` checks as the store would).
pub(super) fn report_record(
    id: Uuid,
    caller: &Caller,
    report: &RepaymentReport,
    batch_count: usize,
) -> Report {
    Report {
        id,
        partner_id: report.partner_id().clone(),
        branch: caller.branch.clone(),
        submitted_by: caller.key_name.clone(),
        created_at: Utc::now(),
        period: Some(report.period()),
        correction: report.correction(),
        column_format: report.column_format(),
        status: ReportStatus::Queued,
        repayment_count: report.repayments().len(),
        total_amount: report.total_amount(),
        batch_count,
        refused_by_kiva: 0,
        corrects_any_branch: caller.role == Role::Admin,
    }
}
