//! One partner's month as the coordinator needs it before finalizing in PA2: what each branch
//! reported and where it stands, which loans Kiva expects that nobody reported, which reported
//! loans PA2 will ignore, and what still stands in the way of finalizing.
//!
//! Built from the store's reports of the period and Kiva's loans snapshot only: nothing here
//! asks Kiva anything.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

pub use super::reason::Reason;
use crate::domain::{Amount, ColumnFormat, PartnerId, Period};
use crate::store::{
    Batch, BatchState, ExpectedLoan, ExpectedLoansSnapshot, RepaymentState, Report,
};

/// Counts for the whole partner or one branch.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Tally {
    #[schema(example = 12)]
    pub reports: usize,
    /// Reports sent with `"correction": true`.
    #[schema(example = 1)]
    pub corrections: usize,
    #[schema(example = 320)]
    pub repayments: usize,
    /// Exact sum of the amounts reported, as a decimal string.
    #[schema(value_type = String, example = "1250.00")]
    pub amount: Amount,
    /// Repayments by state (`queued`, `sending`, `accepted`, `warning`, `rejected_by_kiva`,
    /// `rejected`, `held`, `failed`); states with none are left out.
    #[schema(value_type = Object, example = json!({"accepted": 180, "queued": 20}))]
    pub by_state: BTreeMap<RepaymentState, usize>,
}

impl Tally {
    fn new() -> Self {
        Self {
            reports: 0,
            corrections: 0,
            repayments: 0,
            amount: Amount::zero(),
            by_state: BTreeMap::new(),
        }
    }

    fn count(&self, state: RepaymentState) -> usize {
        self.by_state.get(&state).copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct BranchTally {
    #[schema(example = "Nairobi")]
    pub branch: String,
    #[serde(flatten)]
    pub tally: Tally,
}

/// Kiva's side of the month, from the partner's loans snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ExpectedSummary {
    /// When the snapshot of Kiva's loans list was taken.
    pub taken_at: DateTime<Utc>,
    #[schema(example = 3600)]
    pub age_seconds: u64,
    /// Older than `reconcile.stale_after_hours`: loans may have changed status since.
    pub stale: bool,
    /// Loans in status `payingBack` or `defaulted`: Kiva expects a repayment for each.
    #[schema(example = 354)]
    pub expected: usize,
    /// Expected loans with a repayment Kiva accepted this period: PA2's "N reported".
    #[schema(example = 298)]
    pub reported: usize,
    /// Expected loans with a repayment in the gateway that Kiva has not accepted yet (queued,
    /// being sent, held...).
    #[schema(example = 20)]
    pub pending: usize,
    /// Expected loans with no repayment at all this period.
    #[schema(example = 36)]
    pub not_reported: usize,
}

/// A reported repayment PA2 will ignore: Kiva does not expect its loan.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct NotExpected {
    #[schema(example = "L-2006")]
    pub loan_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    pub report_id: Uuid,
    /// Index of the repayment in its report.
    #[schema(example = 2)]
    pub position: usize,
    pub branch: String,
    /// The loan's status at Kiva, when Kiva knows the loan.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "ended")]
    pub kiva_status: Option<String>,
}

/// A loan that is in more than one report of the period (a correction was sent for it).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Repeated {
    pub loan_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The reports, oldest first.
    pub reports: Vec<Uuid>,
}

/// A loan Kiva refused in a delivered batch, with Kiva's words.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RefusedLoan {
    pub loan_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    pub report_id: Uuid,
    pub batch_id: String,
    pub branch: String,
    /// What Kiva said about the loan.
    pub details: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PeriodView {
    #[schema(value_type = String, example = "2026-10")]
    pub period: Period,
    #[schema(value_type = String, example = "123")]
    pub partner_id: PartnerId,
    pub total: Tally,
    pub branches: Vec<BranchTally>,
    /// Kiva's side; absent for a branch key (Kiva's list has no branches) and before the first
    /// snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_loans: Option<ExpectedSummary>,
    /// Expected loans with no repayment this period (admin keys only).
    pub not_reported: Vec<ExpectedLoan>,
    /// Reported repayments PA2 will ignore (admin keys only, with a snapshot).
    pub not_expected: Vec<NotExpected>,
    pub repeated: Vec<Repeated>,
    pub rejected_by_kiva: Vec<RefusedLoan>,
    pub ready_to_finalize: bool,
    /// Why the month is not ready to finalize in PA2, in plain words.
    pub reasons: Vec<String>,
    /// The same reasons as data, for the web pages to say in the reader's language.
    #[serde(skip)]
    pub why: Vec<Reason>,
}

/// What the view is built from.
pub struct PeriodInput<'a> {
    pub period: Period,
    pub partner_id: &'a PartnerId,
    pub column_format: ColumnFormat,
    /// The reports of the period (of one branch, for a branch key), each with its batches.
    pub reports: &'a [(Report, Vec<Batch>)],
    /// `None` for a branch key, or before the first snapshot.
    pub snapshot: Option<&'a ExpectedLoansSnapshot>,
    /// Whether Kiva's side is shown (admin keys).
    pub whole_partner: bool,
    pub now: DateTime<Utc>,
    pub stale_after: Duration,
}

/// The code of Kiva's problem for a loan it takes no more repayments for (its status is not
/// `payingBack` or `defaulted`), as the sandbox answers it.
const NOT_PAYING_BACK: &str = "loan_not_paying_back";

/// A loan as PA2 tells loans apart: by loan id, and by client too for three-column partners.
type LoanKey<'a> = (&'a str, Option<&'a str>);

pub fn build(input: PeriodInput<'_>) -> PeriodView {
    let three_column = input.column_format == ColumnFormat::ThreeColumn;
    let mut reports: Vec<&(Report, Vec<Batch>)> = input.reports.iter().collect();
    reports.sort_by_key(|(r, _)| r.id);

    let mut total = Tally::new();
    let mut branches: BTreeMap<&str, Tally> = BTreeMap::new();
    // Per loan: the reports it is in (oldest first) and whether Kiva accepted it.
    let mut seen: HashMap<LoanKey<'_>, (Vec<Uuid>, bool)> = HashMap::new();
    let mut rejected_by_kiva = Vec::new();
    // Per refused loan: whether Kiva said it takes no more repayments for it.
    let mut not_paying_back = Vec::new();
    let (mut unsent, mut attention) = (0, 0);
    for (report, batches) in &reports {
        let branch = branches
            .entry(report.branch.as_str())
            .or_insert_with(Tally::new);
        for tally in [&mut total, &mut *branch] {
            tally.reports += 1;
            tally.corrections += usize::from(report.correction);
        }
        for batch in batches {
            match batch.state {
                BatchState::Queued | BatchState::Sending | BatchState::RetryWait => unsent += 1,
                BatchState::Held | BatchState::Failed | BatchState::Rejected => attention += 1,
                BatchState::Delivered => {}
            }
            for view in &batch.repayments {
                let r = &view.repayment;
                for tally in [&mut total, &mut *branch] {
                    tally.repayments += 1;
                    tally.amount = tally.amount.checked_add(r.amount).unwrap_or(tally.amount);
                    *tally.by_state.entry(view.state).or_default() += 1;
                }
                let client = three_column
                    .then(|| r.client_id.as_ref().map(|c| c.as_str()))
                    .flatten();
                let entry = seen.entry((r.loan_id.as_str(), client)).or_default();
                if entry.0.last() != Some(&report.id) {
                    entry.0.push(report.id);
                }
                entry.1 |= matches!(
                    view.state,
                    RepaymentState::Accepted | RepaymentState::Warning
                );
                if view.state == RepaymentState::RejectedByKiva {
                    not_paying_back.push(
                        view.problems
                            .iter()
                            .any(|p| p.code.as_deref() == Some(NOT_PAYING_BACK)),
                    );
                    rejected_by_kiva.push(RefusedLoan {
                        loan_id: r.loan_id.as_str().to_owned(),
                        client_id: r.client_id.as_ref().map(|c| c.as_str().to_owned()),
                        report_id: report.id,
                        batch_id: batch.id.clone(),
                        branch: report.branch.clone(),
                        details: view
                            .problems
                            .iter()
                            .filter_map(|p| p.details.clone().or_else(|| p.code.clone()))
                            .collect(),
                    });
                }
            }
        }
    }

    let mut repeated: Vec<Repeated> = seen
        .iter()
        .filter(|(_, (ids, _))| ids.len() > 1)
        .map(|((loan, client), (ids, _))| Repeated {
            loan_id: (*loan).to_owned(),
            client_id: client.map(str::to_owned),
            reports: ids.clone(),
        })
        .collect();
    repeated.sort_by(|a, b| (&a.loan_id, &a.client_id).cmp(&(&b.loan_id, &b.client_id)));

    let mut reasons = Vec::new();
    if total.reports == 0 {
        reasons.push(Reason::NoReport);
    }
    if unsent > 0 {
        reasons.push(Reason::NotDelivered {
            batches: unsent,
            repayments: total.count(RepaymentState::Queued) + total.count(RepaymentState::Sending),
        });
    }
    if attention > 0 {
        reasons.push(Reason::NeedsOperator { batches: attention });
    }
    // Said once Kiva's list, if read, has told which refused loans it takes nothing more for.
    let refused_at = reasons.len();
    if !repeated.is_empty() {
        reasons.push(Reason::Repeated {
            loans: repeated.len(),
        });
    }

    let (mut expected_loans, mut not_reported, mut not_expected) = (None, Vec::new(), Vec::new());
    if input.whole_partner {
        match input.snapshot {
            None => reasons.push(Reason::NoSnapshot),
            Some(snapshot) => {
                let loans = &snapshot.loans;
                let index: HashMap<&str, Vec<usize>> =
                    loans
                        .iter()
                        .enumerate()
                        .fold(HashMap::new(), |mut index, (i, loan)| {
                            index
                                .entry(loan.internal_loan_id.as_str())
                                .or_default()
                                .push(i);
                            index
                        });
                // Kiva's list may lack client ids; then the loan id alone decides.
                let find = |loan: &str, client: Option<&str>| -> Option<usize> {
                    index.get(loan)?.iter().copied().find(|&i| {
                        let known = loans[i].internal_client_id.as_deref();
                        !three_column || known.is_none() || known == client
                    })
                };
                let (mut reported, mut pending) = (0, 0);
                let mut matched: HashSet<usize> = HashSet::new();
                for ((loan, client), (_, accepted)) in &seen {
                    if let Some(i) = find(loan, *client).filter(|&i| loans[i].is_expected()) {
                        matched.insert(i);
                        if *accepted {
                            reported += 1;
                        } else {
                            pending += 1;
                        }
                    }
                }
                not_reported = loans
                    .iter()
                    .enumerate()
                    .filter(|(i, l)| l.is_expected() && !matched.contains(i))
                    .map(|(_, l)| l.clone())
                    .collect();
                not_reported.sort_by(|a, b| a.internal_loan_id.cmp(&b.internal_loan_id));
                for (report, batches) in &reports {
                    for view in batches.iter().flat_map(|b| &b.repayments) {
                        let r = &view.repayment;
                        let client = r.client_id.as_ref().map(|c| c.as_str());
                        let known = find(r.loan_id.as_str(), client).map(|i| &loans[i]);
                        if known.is_none_or(|l| !l.is_expected()) {
                            not_expected.push(NotExpected {
                                loan_id: r.loan_id.as_str().to_owned(),
                                client_id: client.map(str::to_owned),
                                report_id: report.id,
                                position: r.position,
                                branch: report.branch.clone(),
                                kiva_status: known.map(|l| l.status.clone()),
                            });
                        }
                    }
                }
                for (refused, ended) in rejected_by_kiva.iter().zip(&mut not_paying_back) {
                    let client = three_column
                        .then_some(refused.client_id.as_deref())
                        .flatten();
                    *ended |=
                        find(&refused.loan_id, client).is_some_and(|i| !loans[i].is_expected());
                }
                let age = input.now.signed_duration_since(snapshot.taken_at);
                let age_seconds = age.num_seconds().max(0) as u64;
                let stale = age_seconds > input.stale_after.as_secs();
                if stale {
                    reasons.push(Reason::StaleSnapshot {
                        hours: age_seconds / 3600,
                    });
                }
                if !not_reported.is_empty() {
                    reasons.push(Reason::NotReported {
                        loans: not_reported.len(),
                    });
                }
                expected_loans = Some(ExpectedSummary {
                    taken_at: snapshot.taken_at,
                    age_seconds,
                    stale,
                    expected: snapshot.loans.iter().filter(|l| l.is_expected()).count(),
                    reported,
                    pending,
                    not_reported: not_reported.len(),
                });
            }
        }
    }

    let ended = not_paying_back.iter().filter(|e| **e).count();
    let mut refused = Vec::new();
    if rejected_by_kiva.len() > ended {
        refused.push(Reason::RefusedByKiva {
            loans: rejected_by_kiva.len() - ended,
        });
    }
    if ended > 0 {
        refused.push(Reason::RefusedNotPayingBack { loans: ended });
    }
    reasons.splice(refused_at..refused_at, refused);

    PeriodView {
        period: input.period,
        partner_id: input.partner_id.clone(),
        total,
        branches: branches
            .into_iter()
            .map(|(branch, tally)| BranchTally {
                branch: branch.to_owned(),
                tally,
            })
            .collect(),
        expected_loans,
        not_reported,
        not_expected,
        repeated,
        rejected_by_kiva,
        ready_to_finalize: reasons.is_empty(),
        reasons: reasons.iter().map(Reason::to_string).collect(),
        why: reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ClientId, LoanId};
    use crate::store::{BatchProgress, BatchResult, KivaProblem, ReportStatus, StoredRepayment};

    fn repayment(position: usize, loan: &str, client: &str, amount: &str) -> StoredRepayment {
        StoredRepayment {
            position,
            loan_id: LoanId::parse(loan).unwrap(),
            client_id: Some(ClientId::parse(client).unwrap()),
            amount: Amount::parse(amount).unwrap(),
        }
    }

    fn report(
        branch: &str,
        correction: bool,
        state: BatchState,
        problems: Vec<KivaProblem>,
        repayments: Vec<StoredRepayment>,
    ) -> (Report, Vec<Batch>) {
        let id = Uuid::now_v7();
        let report = Report {
            id,
            partner_id: PartnerId::parse("p1").unwrap(),
            branch: branch.into(),
            submitted_by: "k".into(),
            created_at: Utc::now(),
            period: Period::parse("2026-10").ok(),
            correction,
            column_format: ColumnFormat::ThreeColumn,
            status: ReportStatus::Queued,
            repayment_count: repayments.len(),
            total_amount: crate::domain::total(
                &repayments
                    .iter()
                    .map(|r| r.to_repayment())
                    .collect::<Vec<_>>(),
            ),
            batch_count: 1,
            refused_by_kiva: 0,
            corrects_any_branch: false,
        };
        let doc = crate::store::BatchDoc {
            id: format!("{id}.1"),
            report_id: id,
            number: 1,
            repayment_count: repayments.len(),
            total_amount: report.total_amount,
            repayments,
        };
        let progress = BatchProgress {
            state,
            next_attempt_at: None,
            result: Some(BatchResult {
                problems,
                ..BatchResult::default()
            }),
            attempts: vec![],
            operator_actions: vec![],
        };
        (report, vec![Batch::assemble(doc, progress)])
    }

    fn loan(id: &str, client: &str, status: &str) -> ExpectedLoan {
        ExpectedLoan {
            internal_loan_id: id.into(),
            internal_client_id: Some(client.into()),
            kiva_id: None,
            status: status.into(),
            delinquent: None,
        }
    }

    fn view(
        reports: &[(Report, Vec<Batch>)],
        snapshot: Option<&ExpectedLoansSnapshot>,
    ) -> PeriodView {
        build(PeriodInput {
            period: Period::parse("2026-10").unwrap(),
            partner_id: &PartnerId::parse("p1").unwrap(),
            column_format: ColumnFormat::ThreeColumn,
            reports,
            snapshot,
            whole_partner: true,
            now: Utc::now(),
            stale_after: Duration::from_secs(24 * 3600),
        })
    }

    fn snapshot(loans: Vec<ExpectedLoan>) -> ExpectedLoansSnapshot {
        ExpectedLoansSnapshot {
            partner_id: PartnerId::parse("p1").unwrap(),
            taken_at: Utc::now(),
            pages: 1,
            loans,
        }
    }

    /// Kiva's refusals get the advice that fits them: a loan Kiva takes no more repayments for
    /// (its answer says so, or its list shows the loan ended) is never to be "reported again".
    #[test]
    fn refusals_are_told_apart_by_whether_kiva_takes_the_loan_at_all() {
        let problem = |loan: &str, code: &str| KivaProblem {
            loan_id: Some(loan.into()),
            code: Some(code.into()),
            details: Some(format!("{code} for {loan}")),
            severity: "error".into(),
        };
        let reports = [report(
            "Nairobi",
            false,
            BatchState::Delivered,
            vec![
                problem("L1", NOT_PAYING_BACK),
                problem("L2", "loan_not_found"),
                problem("L3", "loan_not_found"),
            ],
            vec![
                repayment(0, "L1", "C1", "1"),
                repayment(1, "L2", "C2", "2"),
                repayment(2, "L3", "C3", "3"),
            ],
        )];
        let without_list = view(&reports, None);
        let refused = |v: &PeriodView| {
            v.why
                .iter()
                .copied()
                .filter(|r| {
                    matches!(
                        r,
                        Reason::RefusedByKiva { .. } | Reason::RefusedNotPayingBack { .. }
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            refused(&without_list),
            [
                Reason::RefusedByKiva { loans: 2 },
                Reason::RefusedNotPayingBack { loans: 1 }
            ]
        );
        let with_list = view(&reports, Some(&snapshot(vec![loan("L3", "C3", "ended")])));
        assert_eq!(
            refused(&with_list),
            [
                Reason::RefusedByKiva { loans: 1 },
                Reason::RefusedNotPayingBack { loans: 2 }
            ]
        );
        let said = |reason: Reason| reason.to_string();
        assert!(said(Reason::RefusedByKiva { loans: 1 }).contains("\"correction\": true"));
        let ended = said(Reason::RefusedNotPayingBack { loans: 2 });
        assert!(!ended.contains("send them again in"), "{ended}");
        assert!(ended.contains("leave them out"), "{ended}");
    }

    #[test]
    fn counts_amounts_and_lists_are_exact() {
        let refused = KivaProblem {
            loan_id: Some("L3".into()),
            code: Some("loan_not_found".into()),
            details: Some("no such loan".into()),
            severity: "error".into(),
        };
        let reports = [
            report(
                "Nairobi",
                false,
                BatchState::Delivered,
                vec![refused],
                vec![
                    repayment(0, "L1", "C1", "25.00"),
                    repayment(1, "L3", "C3", "0.5"),
                ],
            ),
            report(
                "Mombasa",
                false,
                BatchState::Queued,
                vec![],
                vec![repayment(0, "L2", "C2", "10")],
            ),
        ];
        let snapshot = snapshot(vec![
            loan("L1", "C1", "payingBack"),
            loan("L2", "C2", "defaulted"),
            loan("L4", "C4", "payingBack"),
            loan("L3", "C3", "ended"),
        ]);
        let v = view(&reports, Some(&snapshot));
        assert_eq!(v.total.repayments, 3);
        assert_eq!(v.total.amount.to_string(), "35.50");
        assert_eq!(v.total.count(RepaymentState::Accepted), 1);
        assert_eq!(v.total.count(RepaymentState::RejectedByKiva), 1);
        assert_eq!(v.total.count(RepaymentState::Queued), 1);
        assert_eq!(v.branches.len(), 2);
        assert_eq!(v.branches[0].branch, "Mombasa");
        let expected = v.expected_loans.as_ref().unwrap();
        assert_eq!(
            (
                expected.expected,
                expected.reported,
                expected.pending,
                expected.not_reported
            ),
            (3, 1, 1, 1)
        );
        assert_eq!(v.not_reported[0].internal_loan_id, "L4");
        assert_eq!(v.not_expected.len(), 1);
        assert_eq!(v.not_expected[0].kiva_status.as_deref(), Some("ended"));
        assert_eq!(v.rejected_by_kiva[0].details, ["no such loan"]);
        assert!(!v.ready_to_finalize);
        assert_eq!(v.reasons.len(), 3, "{:?}", v.reasons);
    }

    #[test]
    fn a_month_with_everything_accepted_and_reported_is_ready() {
        let reports = [report(
            "Nairobi",
            false,
            BatchState::Delivered,
            vec![],
            vec![repayment(0, "L1", "C1", "25.00")],
        )];
        let snapshot = snapshot(vec![
            loan("L1", "C1", "payingBack"),
            loan("L9", "C9", "ended"),
        ]);
        let v = view(&reports, Some(&snapshot));
        assert!(v.ready_to_finalize, "{:?}", v.reasons);
        assert!(v.not_expected.is_empty() && v.not_reported.is_empty());
    }

    #[test]
    fn without_a_snapshot_or_with_a_stale_one_the_month_is_not_ready() {
        let reports = [report(
            "Nairobi",
            false,
            BatchState::Delivered,
            vec![],
            vec![repayment(0, "L1", "C1", "25.00")],
        )];
        let v = view(&reports, None);
        assert!(!v.ready_to_finalize && v.expected_loans.is_none());
        let mut old = snapshot(vec![loan("L1", "C1", "payingBack")]);
        old.taken_at = Utc::now() - chrono::Duration::hours(30);
        let v = view(&reports, Some(&old));
        assert!(v.expected_loans.unwrap().stale);
        assert!(v.reasons[0].contains("30 h old"), "{:?}", v.reasons);
    }

    #[test]
    fn a_loan_in_a_correction_is_listed_as_repeated() {
        let reports = [
            report(
                "Nairobi",
                false,
                BatchState::Delivered,
                vec![],
                vec![repayment(0, "L1", "C1", "25")],
            ),
            report(
                "Nairobi",
                true,
                BatchState::Delivered,
                vec![],
                vec![repayment(0, "L1", "C1", "26")],
            ),
        ];
        let v = view(&reports, None);
        assert_eq!(v.total.corrections, 1);
        assert_eq!(v.repeated.len(), 1);
        assert_eq!(v.repeated[0].reports, [reports[0].0.id, reports[1].0.id]);
        assert!(
            v.why.contains(&Reason::Repeated { loans: 1 }),
            "{:?}",
            v.why
        );
        assert!(!v.ready_to_finalize);
    }
}
