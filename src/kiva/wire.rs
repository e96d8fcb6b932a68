//! Kiva's answers to the repayments endpoint.
//!
//! Kiva does not document the body. The one typed client models a JSON array of upload
//! results, the one production integration reads a single object, and identifiers come as
//! numbers or strings; so the body is read as a `serde_json::Value` and picked apart by hand
//! (derived `Deserialize` would reject a numeric `upload_id`, and `untagged`/`flatten` break
//! with the crate-wide `arbitrary_precision`).

use serde_json::{Map, Value};

/// What could be read of Kiva's answer to one repayments call. Empty (the `Default`) when
/// the body was not in any shape we know: the raw body is kept elsewhere for that case.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UploadResult {
    /// Kept as text: Kiva's typed client has it as an integer, but nothing promises that.
    pub upload_id: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
    #[serde(default)]
    pub problems: Vec<LoanProblem>,
}

/// One problem Kiva reports about one loan of the batch.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoanProblem {
    /// The partner's own loan id as Kiva echoes it back (a string or a number on the wire).
    pub loan_id: Option<String>,
    pub code: Option<String>,
    pub details: Option<String>,
    pub severity: Severity,
}

/// Stored as the plain string Kiva sent (`"error"`, `"warning"`, or anything else verbatim),
/// so a severity Kiva adds later survives a round trip through our own records.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Severity {
    /// The loan's repayment was not accepted.
    Error,
    /// Informational; the repayment was accepted.
    Warning,
    /// A severity we don't know, or none at all (empty text). Deliberately not an error:
    /// rejecting a repayment Kiva may have accepted would make an operator resend it, and a
    /// duplicate upload is the costlier mistake.
    Other(String),
}

impl Severity {
    pub fn is_error(&self) -> bool {
        matches!(self, Severity::Error)
    }

    pub fn as_str(&self) -> &str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Other(text) => text,
        }
    }
}

impl From<String> for Severity {
    fn from(text: String) -> Self {
        if text.trim().eq_ignore_ascii_case("error") {
            Severity::Error
        } else if text.trim().eq_ignore_ascii_case("warning") {
            Severity::Warning
        } else {
            Severity::Other(text)
        }
    }
}

impl From<Severity> for String {
    fn from(severity: Severity) -> String {
        match severity {
            Severity::Other(text) => text,
            known => known.as_str().to_owned(),
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl UploadResult {
    /// Never fails: a body in no known shape gives the empty result.
    pub fn parse(body: &[u8]) -> UploadResult {
        // Some Windows-hosted proxies prepend a BOM, which serde_json rejects.
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(object)) => from_object(&object),
            Ok(Value::Array(items)) => {
                let mut merged = UploadResult::default();
                for item in items.iter().filter_map(Value::as_object) {
                    let one = from_object(item);
                    merged.upload_id = merged.upload_id.or(one.upload_id);
                    merged.code = merged.code.or(one.code);
                    merged.message = merged.message.or(one.message);
                    merged.problems.extend(one.problems);
                }
                merged
            }
            _ => UploadResult::default(),
        }
    }

    /// True when Kiva rejected at least one loan of the batch.
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| p.severity.is_error())
    }
}

fn from_object(object: &Map<String, Value>) -> UploadResult {
    let problems = match object.get("problems") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_object)
            .map(problem_from_object)
            .collect(),
        _ => Vec::new(),
    };
    UploadResult {
        upload_id: text_field(object, "upload_id"),
        code: text_field(object, "code"),
        message: text_field(object, "message"),
        problems,
    }
}

fn problem_from_object(object: &Map<String, Value>) -> LoanProblem {
    LoanProblem {
        loan_id: text_field(object, "loan_id"),
        code: text_field(object, "code"),
        details: text_field(object, "details"),
        severity: Severity::from(text_field(object, "severity").unwrap_or_default()),
    }
}

/// A field as text whatever its JSON type; with `arbitrary_precision` a number keeps the
/// exact digits Kiva sent. Objects and arrays are kept as compact JSON rather than lost.
fn text_field(object: &Map<String, Value>, key: &str) -> Option<String> {
    match object.get(key)? {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(loan_id: &str, code: &str, details: &str, severity: Severity) -> LoanProblem {
        LoanProblem {
            loan_id: Some(loan_id.into()),
            code: Some(code.into()),
            details: Some(details.into()),
            severity,
        }
    }

    #[test]
    fn a_single_object_is_read_with_a_numeric_upload_id() {
        let body = br#"{"code":"ok","message":"Uploaded","upload_id":123,
            "problems":[{"loan_id":"L1","details":"not paying back","code":"E1","severity":"error"}]}"#;
        assert_eq!(
            UploadResult::parse(body),
            UploadResult {
                upload_id: Some("123".into()),
                code: Some("ok".into()),
                message: Some("Uploaded".into()),
                problems: vec![problem("L1", "E1", "not paying back", Severity::Error)],
            }
        );
    }

    #[test]
    fn string_upload_ids_and_numeric_loan_ids_keep_their_text() {
        let body = br#"{"upload_id":"u-77","problems":[
            {"loan_id":1042970,"code":"W","details":"d","severity":"warning"},
            {"loan_id":12345678901234567890123,"code":"W","details":"d","severity":"Warning"}]}"#;
        let result = UploadResult::parse(body);
        assert_eq!(result.upload_id.as_deref(), Some("u-77"));
        assert_eq!(
            result.problems,
            vec![
                problem("1042970", "W", "d", Severity::Warning),
                problem("12345678901234567890123", "W", "d", Severity::Warning),
            ]
        );
        assert!(!result.has_errors());
    }

    #[test]
    fn an_array_is_merged_first_identity_all_problems() {
        let body = br#"[
            {"code":"c1","message":"m1","upload_id":1,
             "problems":[{"loan_id":"A","code":"E","details":"x","severity":"error"}]},
            {"code":"c2","message":"m2","upload_id":2,
             "problems":[{"loan_id":"B","code":"W","details":"y","severity":"warning"}]}
        ]"#;
        assert_eq!(
            UploadResult::parse(body),
            UploadResult {
                upload_id: Some("1".into()),
                code: Some("c1".into()),
                message: Some("m1".into()),
                problems: vec![
                    problem("A", "E", "x", Severity::Error),
                    problem("B", "W", "y", Severity::Warning),
                ],
            }
        );
    }

    #[test]
    fn an_array_takes_each_identity_field_from_the_first_element_having_it() {
        let body = br#"[{"problems":[]},{"upload_id":9,"message":"later"}]"#;
        let result = UploadResult::parse(body);
        assert_eq!(result.upload_id.as_deref(), Some("9"));
        assert_eq!(result.message.as_deref(), Some("later"));
        assert_eq!(result.code, None);
    }

    #[test]
    fn unknown_or_missing_severities_are_kept_and_are_not_errors() {
        let body = br#"{"problems":[{"loan_id":"A","severity":"notice"},{"loan_id":"B"}]}"#;
        let result = UploadResult::parse(body);
        assert_eq!(
            result.problems[0].severity,
            Severity::Other("notice".into())
        );
        assert_eq!(result.problems[1].severity, Severity::Other(String::new()));
        assert!(!result.has_errors());
        assert_eq!(result.problems[1].code, None);
    }

    #[test]
    fn severities_serialize_as_plain_strings_and_round_trip() {
        let result = UploadResult {
            upload_id: Some("1".into()),
            code: None,
            message: None,
            problems: vec![
                problem("A", "E", "x", Severity::Error),
                problem("B", "W", "y", Severity::Warning),
                problem("C", "N", "z", Severity::Other("notice".into())),
            ],
        };
        let json = serde_json::to_string(&result).unwrap();
        assert!(json.contains(r#""severity":"error""#), "{json}");
        assert!(json.contains(r#""severity":"warning""#), "{json}");
        assert!(json.contains(r#""severity":"notice""#), "{json}");
        let back: UploadResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back, result);
        // Our own serialized form is also a shape `parse` understands.
        assert_eq!(UploadResult::parse(json.as_bytes()), result);
    }

    #[test]
    fn garbage_and_empty_bodies_give_the_empty_result() {
        for body in [
            &b""[..],
            b"   ",
            b"<html><body>502 Bad Gateway</body></html>",
            b"{\"upload_id\":",
            b"\xff\xfe\x00",
            b"\"just a string\"",
            b"42",
            b"null",
        ] {
            assert_eq!(
                UploadResult::parse(body),
                UploadResult::default(),
                "{body:?}"
            );
        }
    }

    #[test]
    fn odd_field_types_do_not_lose_the_rest() {
        let body = "\u{feff}{\"upload_id\":null,\"code\":404,\"problems\":[\"not an object\",\
            {\"loan_id\":\"A\",\"details\":{\"field\":\"amount\"},\"severity\":\"ERROR\"}]}";
        let result = UploadResult::parse(body.as_bytes());
        assert_eq!(result.upload_id, None);
        assert_eq!(result.code.as_deref(), Some("404"));
        assert_eq!(result.problems.len(), 1);
        assert_eq!(
            result.problems[0].details.as_deref(),
            Some(r#"{"field":"amount"}"#)
        );
        assert!(result.has_errors());
    }
}
