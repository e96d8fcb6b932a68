use serde::{Deserialize, Serialize};

use super::{Amount, ClientId, LoanId, PartnerId, Period};

/// How a partner reports, set in PA2 (Account → Profile → CSV upload format). No API reveals
/// it, so the gateway's configuration says it per partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ColumnFormat {
    /// Loan ID + amount.
    TwoColumn,
    /// Loan ID + client ID + amount (loan IDs alone are not unique, e.g. group loans).
    ThreeColumn,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repayment {
    pub loan_id: LoanId,
    /// Kept for the MIS's reference even for two-column partners; forwarded only for
    /// three-column ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<ClientId>,
    pub amount: Amount,
}

impl Repayment {
    /// One element of Kiva's `repayments` array, `amount` a JSON number with exact digits.
    pub fn to_kiva_json(&self, format: ColumnFormat) -> KivaRepayment<'_> {
        KivaRepayment::new(format, &self.loan_id, self.client_id.as_ref(), self.amount)
    }
}

/// One call to Kiva's repayments endpoint, as sent.
#[derive(Debug, Serialize)]
pub struct KivaRequest<'a> {
    pub repayments: Vec<KivaRepayment<'a>>,
}

/// One element of Kiva's `repayments` array. A struct, not a JSON map, so its members keep
/// this order (loan, client, amount: PA2's columns) whatever serde_json's map type sorts by.
#[derive(Debug, Serialize)]
pub struct KivaRepayment<'a> {
    loan_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    amount: serde_json::Number,
}

impl<'a> KivaRepayment<'a> {
    /// `client_id` only for three-column partners.
    pub fn new(
        format: ColumnFormat,
        loan_id: &'a LoanId,
        client_id: Option<&'a ClientId>,
        amount: Amount,
    ) -> Self {
        Self {
            loan_id: loan_id.as_str(),
            client_id: client_id
                .filter(|_| format == ColumnFormat::ThreeColumn)
                .map(ClientId::as_str),
            amount: amount.to_json_number(),
        }
    }
}

/// A broken column rule, by position in the submitted `repayments` array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleViolation {
    pub position: usize,
    /// The offending field, or `None` when the whole entry is at fault.
    pub field: Option<&'static str>,
    pub message: String,
}

/// A report that satisfies every rule: its partner's column format, no loan twice, at least
/// one repayment. Only `RepaymentReport::new` makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepaymentReport {
    partner_id: PartnerId,
    column_format: ColumnFormat,
    period: Period,
    /// It may repeat loans of earlier reports of its period.
    correction: bool,
    repayments: Vec<Repayment>,
}

impl RepaymentReport {
    pub fn new(
        partner_id: PartnerId,
        column_format: ColumnFormat,
        period: Period,
        repayments: Vec<Repayment>,
    ) -> Result<Self, Vec<RuleViolation>> {
        let violations = column_rule_violations(
            column_format,
            repayments
                .iter()
                .enumerate()
                .map(|(i, r)| (i, &r.loan_id, r.client_id.as_ref())),
        );
        if !violations.is_empty() {
            return Err(violations);
        }
        if repayments.is_empty() {
            return Err(vec![]);
        }
        Ok(Self {
            partner_id,
            column_format,
            period,
            correction: false,
            repayments,
        })
    }

    /// For intake, which has just run `column_rule_violations` over the same entries (with
    /// positions it alone knows) and found none: the rules are not run twice per request.
    pub(crate) fn from_checked(
        partner_id: PartnerId,
        column_format: ColumnFormat,
        period: Period,
        repayments: Vec<Repayment>,
    ) -> Self {
        debug_assert!(!repayments.is_empty());
        Self {
            partner_id,
            column_format,
            period,
            correction: false,
            repayments,
        }
    }

    /// Marks the report as a correction of earlier reports of its period.
    pub fn with_correction(mut self, correction: bool) -> Self {
        self.correction = correction;
        self
    }

    pub fn correction(&self) -> bool {
        self.correction
    }

    pub fn partner_id(&self) -> &PartnerId {
        &self.partner_id
    }

    pub fn column_format(&self) -> ColumnFormat {
        self.column_format
    }

    pub fn period(&self) -> Period {
        self.period
    }

    pub fn repayments(&self) -> &[Repayment] {
        &self.repayments
    }

    pub fn total_amount(&self) -> Amount {
        total(&self.repayments)
    }

    /// Kiva asks for calls of at most 200–300 loans; the report is cut in order.
    pub fn batches(&self, batch_size: usize) -> std::slice::Chunks<'_, Repayment> {
        self.repayments.chunks(batch_size.max(1))
    }
}

/// Sum of the amounts. Amounts are bounded to 15 integer digits and reports to a configured
/// count, so the sum can't leave `Decimal`'s 28 digits.
pub fn total(repayments: &[Repayment]) -> Amount {
    repayments
        .iter()
        .try_fold(Amount::zero(), |sum, r| sum.checked_add(r.amount))
        .expect("bounded amounts cannot overflow Decimal")
}

/// Every column rule broken by `repayments`, in order: a three-column partner needs each
/// `client_id`, and the same loan (with its client, for three-column) may appear once.
/// Takes `(position, loan, client)` so that intake can check the identifiers of entries whose
/// amount was unreadable, and positions stay those of the submitted array.
pub fn column_rule_violations<'a>(
    format: ColumnFormat,
    entries: impl IntoIterator<Item = (usize, &'a LoanId, Option<&'a ClientId>)>,
) -> Vec<RuleViolation> {
    let mut violations = Vec::new();
    // (loan, client, position): sorted, equal loans sit side by side with the first one
    // sent first. Sorting beats hashing here: a 10,000-repayment report is checked on the
    // request path, and SipHash over every id cost more than the rest of the rules.
    let mut keyed: Vec<(&LoanId, Option<&ClientId>, usize)> = Vec::new();
    for (position, loan_id, client_id) in entries {
        match format {
            ColumnFormat::ThreeColumn if client_id.is_none() => violations.push(RuleViolation {
                position,
                field: Some("client_id"),
                message: "client_id is required: this partner reports in the three-column \
                          format (loan ID, client ID, amount)"
                    .into(),
            }),
            ColumnFormat::ThreeColumn => keyed.push((loan_id, client_id, position)),
            ColumnFormat::TwoColumn => keyed.push((loan_id, None, position)),
        }
    }
    keyed.sort_unstable();
    let mut first = None;
    for (i, &(loan_id, client, position)) in keyed.iter().enumerate() {
        let same_as_previous = i > 0 && (keyed[i - 1].0, keyed[i - 1].1) == (loan_id, client);
        if !same_as_previous {
            first = Some(position);
            continue;
        }
        let first = first.expect("a group starts before its repeats");
        violations.push(RuleViolation {
            position,
            field: None,
            message: match client {
                Some(c) => format!(
                    "loan {:?} of client {:?} appears twice, at /repayments/{first} and \
                     /repayments/{position}: send one repayment per loan",
                    loan_id.as_str(),
                    c.as_str()
                ),
                None => format!(
                    "loan {:?} appears twice, at /repayments/{first} and /repayments/{position}: \
                     send one repayment per loan",
                    loan_id.as_str()
                ),
            },
        });
    }
    violations.sort_by_key(|v| v.position);
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repayment(loan: &str, client: Option<&str>, amount: &str) -> Repayment {
        Repayment {
            loan_id: LoanId::parse(loan).unwrap(),
            client_id: client.map(|c| ClientId::parse(c).unwrap()),
            amount: Amount::parse(amount).unwrap(),
        }
    }

    fn entries(rows: &[Repayment]) -> impl Iterator<Item = (usize, &LoanId, Option<&ClientId>)> {
        rows.iter()
            .enumerate()
            .map(|(i, r)| (i, &r.loan_id, r.client_id.as_ref()))
    }

    #[test]
    fn three_column_needs_every_client_id() {
        let v = column_rule_violations(
            ColumnFormat::ThreeColumn,
            entries(&[repayment("L1", Some("C1"), "1"), repayment("L2", None, "1")]),
        );
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].position, v[0].field), (1, Some("client_id")));
    }

    #[test]
    fn a_duplicate_names_both_positions() {
        let v = column_rule_violations(
            ColumnFormat::TwoColumn,
            entries(&[
                repayment("L1", None, "1"),
                repayment("L2", None, "1"),
                repayment("L1", None, "2"),
            ]),
        );
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].position, 2);
        assert!(v[0].message.contains("/repayments/0") && v[0].message.contains("/repayments/2"));
    }

    #[test]
    fn every_repeat_names_the_first_occurrence_in_position_order() {
        let rows = [
            repayment("B", None, "1"),
            repayment("A", None, "1"),
            repayment("B", None, "1"),
            repayment("A", None, "1"),
            repayment("B", None, "1"),
        ];
        let v = column_rule_violations(ColumnFormat::TwoColumn, entries(&rows));
        let found: Vec<(usize, bool)> = v
            .iter()
            .map(|v| {
                (
                    v.position,
                    v.message.contains(&format!(
                        "/repayments/{}",
                        if v.position == 3 { 1 } else { 0 }
                    )),
                )
            })
            .collect();
        assert_eq!(found, [(2, true), (3, true), (4, true)]);
    }

    #[test]
    fn three_column_loans_are_told_apart_by_client() {
        let rows = [
            repayment("G1", Some("C1"), "1"),
            repayment("G1", Some("C2"), "1"),
        ];
        assert!(column_rule_violations(ColumnFormat::ThreeColumn, entries(&rows)).is_empty());
        assert_eq!(
            column_rule_violations(ColumnFormat::TwoColumn, entries(&rows)).len(),
            1
        );
    }

    #[test]
    fn two_column_wire_form_drops_client_id_and_keeps_digits() {
        let r = repayment("L1", Some("C1"), "25.00");
        assert_eq!(
            serde_json::to_string(&r.to_kiva_json(ColumnFormat::TwoColumn)).unwrap(),
            r#"{"loan_id":"L1","amount":25.00}"#
        );
        assert_eq!(
            serde_json::to_string(&r.to_kiva_json(ColumnFormat::ThreeColumn)).unwrap(),
            r#"{"loan_id":"L1","client_id":"C1","amount":25.00}"#
        );
    }

    #[test]
    fn batches_are_cut_in_order() {
        let rows: Vec<_> = (0..450)
            .map(|i| repayment(&format!("L{i}"), Some("C"), "1"))
            .collect();
        let report = RepaymentReport::new(
            PartnerId::parse("1").unwrap(),
            ColumnFormat::ThreeColumn,
            crate::domain::Period::parse("2026-10").unwrap(),
            rows,
        )
        .unwrap();
        let sizes: Vec<_> = report.batches(200).map(<[_]>::len).collect();
        assert_eq!(sizes, [200, 200, 50]);
        assert_eq!(report.total_amount().to_string(), "450");
    }
}
