//! The payload contract, `schemas/repayment-report.schema.json`, compiled into the binary and
//! enforced with `jsonschema` from that very file.

use std::sync::LazyLock;

use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

use super::Violation;

pub const SCHEMA_TEXT: &str = include_str!("../../schemas/repayment-report.schema.json");

/// Longest message echoed back; an MIS may send megabytes in one field.
const MAX_MESSAGE_CHARS: usize = 300;

pub static SCHEMA_DOCUMENT: LazyLock<Value> =
    LazyLock::new(|| serde_json::from_str(SCHEMA_TEXT).expect("the bundled schema is valid JSON"));

static VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    jsonschema::draft202012::options()
        .build(&SCHEMA_DOCUMENT)
        .expect("the bundled schema is a valid JSON Schema 2020-12")
});

/// Every schema violation of `instance`, each at the JSON Pointer an MIS developer must fix:
/// a missing or unexpected property is pointed at by its own path, not its parent's. Only the
/// first problem of each value is kept (`""` breaks both `minLength` and `pattern`).
pub fn violations(instance: &Value) -> Vec<Violation> {
    let mut found = Vec::new();
    for_each_violation(instance, |v| found.push(v));
    found
}

/// `violations`, one at a time, without collecting them.
pub fn for_each_violation(instance: &Value, mut each: impl FnMut(Violation)) {
    let mut seen = std::collections::HashSet::new();
    VALIDATOR
        .iter_errors(instance)
        .flat_map(|error| {
            let at = error.instance_path().as_str().to_owned();
            match error.kind() {
                ValidationErrorKind::Required { property } => {
                    let name = property.as_str().unwrap_or_default();
                    vec![Violation::new(
                        format!("{at}/{}", escape_pointer(name)),
                        format!("{name} is required"),
                    )]
                }
                ValidationErrorKind::AdditionalProperties { unexpected } => unexpected
                    .iter()
                    .map(|name| {
                        Violation::new(
                            format!("{at}/{}", escape_pointer(name)),
                            format!("{name:?} is not a field of this report; check its spelling"),
                        )
                    })
                    .collect(),
                ValidationErrorKind::Pattern { .. } => {
                    let keyword = error.schema_path().as_str();
                    let hint = keyword
                        .strip_suffix("/pattern")
                        .and_then(|parent| {
                            SCHEMA_DOCUMENT.pointer(&format!("{parent}/x-pattern-message"))
                        })
                        .and_then(Value::as_str);
                    let message = match hint {
                        Some(hint) => format!("{} {hint}", describe(error.instance())),
                        None => error.to_string(),
                    };
                    vec![Violation::new(at, message)]
                }
                ValidationErrorKind::MultipleOf { .. } => vec![Violation::new(
                    at,
                    format!(
                        "{} has more than 3 decimal places",
                        describe(error.instance())
                    ),
                )],
                // Arrays and objects in place of a scalar reach the schema as empty ones (see
                // `bounded`), so the message names the kind, never the value.
                ValidationErrorKind::Type { .. } => {
                    let expected = SCHEMA_DOCUMENT
                        .pointer(error.schema_path().as_str())
                        .map(|types| match types {
                            Value::Array(names) => names
                                .iter()
                                .filter_map(Value::as_str)
                                .map(a_type)
                                .collect::<Vec<_>>()
                                .join(" or "),
                            other => other.as_str().map(a_type).unwrap_or_default().to_owned(),
                        })
                        .unwrap_or_default();
                    vec![Violation::new(
                        at,
                        format!("must be {expected}, not {}", kind_of(error.instance())),
                    )]
                }
                _ => vec![Violation::new(at, truncate(error.to_string()))],
            }
        })
        .filter(|v| seen.insert(v.pointer.clone()))
        .for_each(&mut each);
}

fn a_type(name: &str) -> &'static str {
    match name {
        "string" => "a string",
        "integer" => "a whole number",
        "number" => "a number",
        "object" => "an object",
        "array" => "an array",
        "boolean" => "true or false",
        _ => "null",
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "true or false",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn describe(value: &Value) -> String {
    truncate(value.to_string())
}

pub(super) fn truncate(mut text: String) -> String {
    if let Some((cut, _)) = text.char_indices().nth(MAX_MESSAGE_CHARS) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// RFC 6901: `~` and `/` in a property name.
pub fn escape_pointer(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pointers(v: &Value) -> Vec<String> {
        violations(v).into_iter().map(|v| v.pointer).collect()
    }

    #[test]
    fn exact_decimals_pass_multiple_of() {
        let v: Value = serde_json::from_str(
            r#"{"period":"2026-10","repayments":[{"loan_id":"a","amount":1234567.891},{"loan_id":"b","amount":0.003},{"loan_id":"c","amount":"0.1"}]}"#,
        )
        .unwrap();
        assert!(violations(&v).is_empty(), "{:?}", violations(&v));
    }

    #[test]
    fn four_decimal_places_fail() {
        let v: Value = serde_json::from_str(
            r#"{"period":"2026-10","repayments":[{"loan_id":"a","amount":1.2345}]}"#,
        )
        .unwrap();
        assert_eq!(pointers(&v), ["/repayments/0/amount"]);
    }

    #[test]
    fn missing_and_unexpected_fields_point_at_themselves() {
        let v = json!({"period":"2026-10","repayments":[{"loan_id":"a","ammount":"1"}]});
        let mut p = pointers(&v);
        p.sort();
        assert_eq!(p, ["/repayments/0/ammount", "/repayments/0/amount"]);
    }

    #[test]
    fn a_wrong_type_is_named_by_kind() {
        let v = json!({"repayments":[{"loan_id":[], "amount": "1"}], "period": {}});
        let found = violations(&v);
        let detail = |p: &str| {
            found
                .iter()
                .find(|v| v.pointer == p)
                .unwrap()
                .detail
                .clone()
        };
        assert_eq!(
            detail("/repayments/0/loan_id"),
            "must be a string or a whole number, not an array"
        );
        assert_eq!(detail("/period"), "must be a string, not an object");
    }

    #[test]
    fn messages_are_bounded() {
        let v = json!({"repayments":[{"loan_id":"a","amount": "x".repeat(10_000)}]});
        assert!(violations(&v)[0].detail.chars().count() < 400);
    }
}
