//! Request body → `RepaymentReport`: JSON syntax, the published JSON Schema, then the partner's
//! column rules; every problem is collected so one answer lists them all.

pub mod schema;

use std::collections::HashMap;

use serde_json::Value;

use crate::domain::{
    Amount, ClientId, ColumnFormat, IdError, LoanId, PartnerId, Period, Repayment, RepaymentReport,
    column_rule_violations,
};

/// One thing wrong with a submitted report, at the JSON Pointer (RFC 6901) of the offending
/// value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Violation {
    /// JSON Pointer into the submitted body, e.g. `/repayments/3/amount`.
    #[schema(example = "/repayments/3/amount")]
    pub pointer: String,
    /// What is wrong, in plain words.
    #[schema(
        example = "\"1.2345\" must be a non-negative decimal with at most 3 decimal places, e.g. \"25.00\""
    )]
    pub detail: String,
}

impl Violation {
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("the body is not valid JSON: {message} (line {line}, column {column})")]
    MalformedJson {
        message: String,
        line: usize,
        column: usize,
    },
    #[error("the report has {count} repayments; at most {max} are accepted in one report")]
    TooManyRepayments { count: usize, max: usize },
    #[error("this API key may not submit reports for partner {0:?}")]
    PartnerNotAllowed(String),
    #[error("the report has {} problem(s)", .0.len())]
    Invalid(Vec<Violation>),
}

/// Which partners an API key may act for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartnerScope {
    One(PartnerId),
    All,
}

impl PartnerScope {
    pub fn allows(&self, partner: &PartnerId) -> bool {
        match self {
            PartnerScope::One(p) => p == partner,
            PartnerScope::All => true,
        }
    }
}

/// Reads reports for the partners this gateway is configured for.
#[derive(Debug, Clone)]
pub struct Intake {
    column_formats: HashMap<PartnerId, ColumnFormat>,
    max_repayments: usize,
}

impl Intake {
    pub fn new(column_formats: HashMap<PartnerId, ColumnFormat>, max_repayments: usize) -> Self {
        Self {
            column_formats,
            max_repayments,
        }
    }

    pub fn read(&self, body: &[u8], scope: &PartnerScope) -> Result<RepaymentReport, IntakeError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| IntakeError::MalformedJson {
                message: e.to_string(),
                line: e.line(),
                column: e.column(),
            })?;
        // Counted before the schema runs, so an oversized report costs no validation work.
        if let Some(count) = value
            .get("repayments")
            .and_then(Value::as_array)
            .map(Vec::len)
            && count > self.max_repayments
        {
            return Err(IntakeError::TooManyRepayments {
                count,
                max: self.max_repayments,
            });
        }

        let mut violations = schema::violations(&value);
        let flagged = |violations: &[Violation], pointer: &str| {
            violations.iter().any(|v| {
                pointer.starts_with(&v.pointer)
                    && (pointer.len() == v.pointer.len()
                        || pointer.as_bytes()[v.pointer.len()] == b'/')
            })
        };

        let partner = self.partner(&value, scope, &mut violations)?;
        let period = match value.get("period").and_then(Value::as_str) {
            Some(text) => match Period::parse(text) {
                Ok(period) => Some(period),
                Err(message) => {
                    if !flagged(&violations, "/period") {
                        violations.push(Violation::new("/period", message));
                    }
                    None
                }
            },
            None => None,
        };

        let items = value
            .get("repayments")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        let entries: Vec<Entry> = items
            .iter()
            .enumerate()
            .map(|(i, item)| read_entry(i, item))
            .collect();
        for entry in &entries {
            for problem in &entry.problems {
                if !flagged(&violations, &problem.pointer) {
                    violations.push(problem.clone());
                }
            }
        }
        if let Some((_, format)) = &partner {
            // Identifiers are checked even where the amount was unreadable, so a duplicate
            // is reported in the same answer as the bad amount.
            let ids = entries.iter().enumerate().filter_map(|(i, e)| {
                let client_unreadable =
                    e.problems.iter().any(|p| p.pointer.ends_with("/client_id"));
                match (&e.loan_id, client_unreadable) {
                    (Some(loan), false) => Some((i, loan, e.client_id.as_ref())),
                    _ => None,
                }
            });
            for rule in column_rule_violations(*format, ids) {
                let pointer = match rule.field {
                    Some(field) => format!("/repayments/{}/{field}", rule.position),
                    None => format!("/repayments/{}", rule.position),
                };
                violations.push(Violation::new(pointer, rule.message));
            }
        }

        if !violations.is_empty() {
            sort_in_document_order(&mut violations);
            return Err(IntakeError::Invalid(violations));
        }
        let (partner_id, format) = partner.expect("a missing partner is a violation");
        let repayments = entries
            .into_iter()
            .map(|e| match (e.loan_id, e.amount) {
                (Some(loan_id), Some(amount)) => Repayment {
                    loan_id,
                    client_id: e.client_id,
                    amount,
                },
                _ => unreachable!("an unreadable entry is a violation"),
            })
            .collect();
        Ok(RepaymentReport::from_checked(
            partner_id, format, period, repayments,
        ))
    }

    /// The partner the report is for: named by `partner_id`, or implied by a single-partner key.
    fn partner(
        &self,
        value: &Value,
        scope: &PartnerScope,
        violations: &mut Vec<Violation>,
    ) -> Result<Option<(PartnerId, ColumnFormat)>, IntakeError> {
        let named = match value.get("partner_id") {
            None => None,
            Some(Value::String(text)) => match PartnerId::parse(text) {
                Ok(id) => Some(id),
                // The schema already reported the malformed id.
                Err(_) => return Ok(None),
            },
            Some(_) => return Ok(None),
        };
        let id = match (named, scope) {
            (Some(id), scope) if !scope.allows(&id) => {
                return Err(IntakeError::PartnerNotAllowed(id.to_string()));
            }
            (Some(id), _) => id,
            (None, PartnerScope::One(id)) => id.clone(),
            (None, PartnerScope::All) => {
                violations.push(Violation::new(
                    "/partner_id",
                    "partner_id is required: this admin key serves several partners",
                ));
                return Ok(None);
            }
        };
        match self.column_formats.get(&id) {
            Some(format) => Ok(Some((id, *format))),
            None => {
                violations.push(Violation::new(
                    "/partner_id",
                    format!(
                        "{:?} is not a partner this gateway is configured for",
                        id.as_str()
                    ),
                ));
                Ok(None)
            }
        }
    }
}

/// What could be read of one entry of `repayments`, and what could not.
struct Entry {
    loan_id: Option<LoanId>,
    client_id: Option<ClientId>,
    amount: Option<Amount>,
    problems: Vec<Violation>,
}

fn read_entry(position: usize, item: &Value) -> Entry {
    let at = |field: &str| format!("/repayments/{position}/{field}");
    let mut problems = Vec::new();
    let Some(object) = item.as_object() else {
        return Entry {
            loan_id: None,
            client_id: None,
            amount: None,
            problems: vec![Violation::new(
                format!("/repayments/{position}"),
                "must be an object",
            )],
        };
    };
    let loan_id = read_identifier(
        object,
        position,
        "loan_id",
        true,
        LoanId::from_json,
        &mut problems,
    );
    let client_id = read_identifier(
        object,
        position,
        "client_id",
        false,
        ClientId::from_json,
        &mut problems,
    );
    let amount = match object.get("amount") {
        // With `arbitrary_precision`, a JSON number's text is exactly what the MIS wrote.
        Some(Value::Number(n)) => Amount::parse(&n.to_string()),
        Some(Value::String(s)) => Amount::parse(s),
        Some(_) => Err("amount must be a number or a string".to_owned()),
        None => Err("amount is required".to_owned()),
    };
    let amount = amount
        .map_err(|message| problems.push(Violation::new(at("amount"), message)))
        .ok();
    Entry {
        loan_id,
        client_id,
        amount,
        problems,
    }
}

fn read_identifier<T>(
    object: &serde_json::Map<String, Value>,
    position: usize,
    field: &str,
    required: bool,
    parse: fn(&Value) -> Option<Result<T, IdError>>,
    problems: &mut Vec<Violation>,
) -> Option<T> {
    let pointer = || format!("/repayments/{position}/{field}");
    let problem = match object.get(field).map(parse) {
        Some(Some(Ok(id))) => return Some(id),
        Some(Some(Err(e))) => format!("{field} {e}"),
        Some(None) => format!("{field} must be a string or a whole number"),
        None if required => format!("{field} is required"),
        None => return None,
    };
    problems.push(Violation::new(pointer(), problem));
    None
}

/// Top-level fields first, then repayments by position; within one position, the order found.
fn sort_in_document_order(violations: &mut [Violation]) {
    violations.sort_by_key(|v| {
        v.pointer
            .strip_prefix("/repayments/")
            .and_then(|rest| rest.split('/').next())
            .and_then(|n| n.parse::<usize>().ok())
            .map_or(0, |n| n + 1)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intake(format: ColumnFormat) -> (Intake, PartnerScope) {
        let p = PartnerId::parse("p1").unwrap();
        (
            Intake::new([(p.clone(), format)].into(), 10),
            PartnerScope::One(p),
        )
    }

    fn pointers(err: IntakeError) -> Vec<String> {
        match err {
            IntakeError::Invalid(v) => v.into_iter().map(|v| v.pointer).collect(),
            other => panic!("expected violations, got {other:?}"),
        }
    }

    #[test]
    fn reads_a_valid_report_with_exact_amounts() {
        let (intake, scope) = intake(ColumnFormat::ThreeColumn);
        let body = br#"{"period":"2026-10","repayments":[
            {"loan_id":"L1","client_id":"C1","amount":"1234567.891"},
            {"loan_id":1042970,"client_id":7,"amount":1234567.891}]}"#;
        let report = intake.read(body, &scope).unwrap();
        assert_eq!(report.repayments()[1].loan_id.as_str(), "1042970");
        assert_eq!(report.total_amount().to_string(), "2469135.782");
        assert_eq!(report.period().unwrap().to_string(), "2026-10");
    }

    #[test]
    fn malformed_json_reports_line_and_column() {
        let (intake, scope) = intake(ColumnFormat::TwoColumn);
        match intake.read(b"{\n \"repayments\": [,]}", &scope) {
            Err(IntakeError::MalformedJson { line, column, .. }) => {
                assert_eq!((line, column), (2, 17))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_problem_is_listed_in_document_order() {
        let (intake, scope) = intake(ColumnFormat::ThreeColumn);
        let body = br#"{"period":"2026-13","repayments":[
            {"loan_id":"L1","client_id":"C1","amount":"-1"},
            {"loan_id":"","client_id":"C2","amount":"1"},
            {"loan_id":"L3","amount":"1"},
            {"loan_id":"L1","client_id":"C1","amount":"1"}]}"#;
        assert_eq!(
            pointers(intake.read(body, &scope).unwrap_err()),
            [
                "/period",
                "/repayments/0/amount",
                "/repayments/1/loan_id",
                "/repayments/2/client_id",
                "/repayments/3"
            ]
        );
    }

    #[test]
    fn another_partner_is_forbidden_and_an_admin_must_name_one() {
        let (intake, scope) = intake(ColumnFormat::TwoColumn);
        let body = br#"{"partner_id":"p2","repayments":[{"loan_id":"L1","amount":1}]}"#;
        assert!(matches!(
            intake.read(body, &scope),
            Err(IntakeError::PartnerNotAllowed(_))
        ));
        let body = br#"{"repayments":[{"loan_id":"L1","amount":1}]}"#;
        assert_eq!(
            pointers(intake.read(body, &PartnerScope::All).unwrap_err()),
            ["/partner_id"]
        );
        let body = br#"{"partner_id":"p9","repayments":[{"loan_id":"L1","amount":1}]}"#;
        assert_eq!(
            pointers(intake.read(body, &PartnerScope::All).unwrap_err()),
            ["/partner_id"]
        );
    }

    #[test]
    fn too_many_repayments_is_its_own_error() {
        let (intake, scope) = intake(ColumnFormat::TwoColumn);
        let items: Vec<_> = (0..11)
            .map(|i| format!(r#"{{"loan_id":"L{i}","amount":1}}"#))
            .collect();
        let body = format!(r#"{{"repayments":[{}]}}"#, items.join(","));
        assert!(matches!(
            intake.read(body.as_bytes(), &scope),
            Err(IntakeError::TooManyRepayments { count: 11, max: 10 })
        ));
    }

    #[test]
    fn numeric_ids_must_be_whole_numbers() {
        let (intake, scope) = intake(ColumnFormat::TwoColumn);
        let body = br#"{"repayments":[{"loan_id":12.5,"amount":1}]}"#;
        assert_eq!(
            pointers(intake.read(body, &scope).unwrap_err()),
            ["/repayments/0/loan_id"]
        );
        let body = br#"{"repayments":[{"loan_id":12.0,"amount":1}]}"#;
        assert_eq!(
            intake.read(body, &scope).unwrap().repayments()[0]
                .loan_id
                .as_str(),
            "12"
        );
    }
}
