//! What an Idempotency-Key is bound to: the report as it would be stored (partner, period,
//! column format, the repayments in order with their exact amounts), not the bytes of the
//! body, so a retry that differs only in white space, key order or number-vs-string amounts
//! is a retry. When the key was used for another report, what differs is said.

use sha2::{Digest, Sha256};

use crate::domain::{ColumnFormat, Period, RepaymentReport};
use crate::store::{Batch, Report};

/// Marks a fingerprint of the normalized report; answers recorded before it carry the hex
/// SHA-256 of the raw body alone, and are compared as they were made.
const NORMALIZED: &str = "report-v1:";

/// The fingerprint recorded with the first answer.
pub fn fingerprint(report: &RepaymentReport) -> String {
    let canonical = serde_json::json!({
        "partner_id": report.partner_id().as_str(),
        "period": report.period().to_string(),
        "correction": report.correction(),
        "column_format": report.column_format(),
        "repayments": report.repayments().iter().map(|r| [
            Some(r.loan_id.as_str().to_owned()),
            r.client_id.as_ref().map(|c| c.as_str().to_owned()),
            Some(r.amount.to_string()),
        ]).collect::<Vec<_>>(),
    });
    format!(
        "{NORMALIZED}{}",
        hex::encode(Sha256::digest(canonical.to_string()))
    )
}

/// Whether a recorded fingerprint is this report's. Answers recorded by older versions hashed
/// the raw body, which a file upload no longer keeps: those keys (24 h at most) answer 422.
pub fn matches(recorded: &str, report: &RepaymentReport) -> bool {
    recorded.starts_with(NORMALIZED) && recorded == fingerprint(report)
}

/// At most this many differences are named; the first ones tell the MIS what happened.
const MAX_NAMED: usize = 3;

/// What differs between the first report (as stored) and this one, e.g. "repayment 3's
/// amount (/repayments/2/amount): 25.00 then 26.00"; empty if nothing stored differs.
pub fn differences(first: &Report, batches: &[Batch], now: &RepaymentReport) -> Vec<String> {
    let mut found = Vec::new();
    let show_period = |p: Option<Period>| p.map_or("none".to_owned(), |p| p.to_string());
    if first.period != Some(now.period()) {
        found.push(format!(
            "the period: {} then {}",
            show_period(first.period),
            show_period(Some(now.period()))
        ));
    }
    if first.correction != now.correction() {
        found.push(format!(
            "correction: {} then {}",
            first.correction,
            now.correction()
        ));
    }
    if first.column_format != now.column_format() {
        let name = |f: ColumnFormat| serde_json::to_value(f).unwrap_or_default();
        found.push(format!(
            "the column format: {} then {}",
            name(first.column_format),
            name(now.column_format())
        ));
    }
    let mut stored: Vec<_> = batches
        .iter()
        .flat_map(|b| b.repayments.iter().map(|r| &r.repayment))
        .collect();
    stored.sort_by_key(|r| r.position);
    if stored.len() != now.repayments().len() {
        found.push(format!(
            "the number of repayments: {} then {}",
            stored.len(),
            now.repayments().len()
        ));
    }
    let show = |v: Option<&str>| v.map_or("none".to_owned(), str::to_owned);
    for (i, (was, is)) in stored.iter().zip(now.repayments()).enumerate() {
        let mut field = |name: &str, a: String, b: String| {
            if a != b {
                found.push(format!(
                    "repayment {}'s {name} (/repayments/{i}/{name}): {a} then {b}",
                    i + 1
                ));
            }
        };
        field(
            "loan_id",
            was.loan_id.as_str().to_owned(),
            is.loan_id.as_str().to_owned(),
        );
        field(
            "client_id",
            show(was.client_id.as_ref().map(|c| c.as_str())),
            show(is.client_id.as_ref().map(|c| c.as_str())),
        );
        field("amount", was.amount.to_string(), is.amount.to_string());
        if found.len() > MAX_NAMED {
            break;
        }
    }
    found
}

/// The 422's reason, from the differences (the first few, and how many more there are).
pub fn reused_detail(differences: &[String]) -> String {
    if differences.is_empty() {
        return "a different report".to_owned();
    }
    let named = differences[..differences.len().min(MAX_NAMED)].join("; ");
    if differences.len() > MAX_NAMED {
        format!("a different report: {named}; and more")
    } else {
        format!("a different report: {named}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Amount, ClientId, LoanId, PartnerId, Repayment};

    /// Fingerprints are stored with an Idempotency-Key's first answer (for 24 h) and compared
    /// by a later process, perhaps a newer version: the same report must give the same text.
    /// (serde_json's `preserve_order` decides the canonical object's member order, so turning
    /// it off would make every retry across an upgrade a 422.)
    #[test]
    fn a_reports_fingerprint_is_the_one_earlier_versions_recorded() {
        let repayment = |loan: &str, client: &str, amount: &str| Repayment {
            loan_id: LoanId::parse(loan).unwrap(),
            client_id: Some(ClientId::parse(client).unwrap()),
            amount: Amount::parse(amount).unwrap(),
        };
        let report = RepaymentReport::new(
            PartnerId::parse("102").unwrap(),
            ColumnFormat::ThreeColumn,
            Period::parse("2026-10").unwrap(),
            vec![
                repayment("L-1042970", "C-184729", "25.00"),
                repayment("L-1043223", "C-481395", "40.5"),
            ],
        )
        .unwrap();
        assert_eq!(
            fingerprint(&report),
            "report-v1:036a1e1ff8de2b7238ecd7025836685421d3376edde4fb19d2f54455a6ffa3da"
        );
    }
}
