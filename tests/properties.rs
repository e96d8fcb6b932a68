//! Property tests of the two parsers that read what others send: the intake (an MIS's report)
//! and Kiva's answers. Whatever comes in: no panic, and a refusal lists a bounded number of
//! violations. Case counts stay modest so the suite stays fast.

use proptest::prelude::*;
use repayment_gateway::domain::{ColumnFormat, PartnerId};
use repayment_gateway::intake::{Intake, IntakeError, MAX_LISTED_VIOLATIONS, PartnerScope};
use repayment_gateway::kiva::UploadResult;
use serde_json::{Map, Value, json};

const MAX_REPAYMENTS: usize = 50;

fn intake() -> (Intake, PartnerScope) {
    let partner = PartnerId::parse("p1").unwrap();
    (
        Intake::new(
            [(partner.clone(), ColumnFormat::ThreeColumn)].into(),
            MAX_REPAYMENTS,
        ),
        PartnerScope::One(partner),
    )
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "-?[0-9]{1,20}(\\.[0-9]{0,30})?([eE][+-]?[0-9]{1,3})?"
            .prop_map(|text| serde_json::from_str(&text).unwrap_or(Value::Null)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((".{0,6}", inner), 0..4)
                .prop_map(|members| Value::Object(members.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A field of a repayment: mostly plausible values, sometimes anything.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[0-9.eE+-]{0,10}".prop_map(Value::String),
        "-?[0-9]{1,18}(\\.[0-9]{1,32})?"
            .prop_map(|text| serde_json::from_str(&text).unwrap_or(Value::Null)),
        "[A-Z]-[0-9]{1,3}".prop_map(Value::String),
        any_json(),
    ]
}

fn repayment() -> impl Strategy<Value = Value> {
    let name = prop_oneof![
        Just("loan_id".to_owned()),
        Just("client_id".to_owned()),
        Just("amount".to_owned()),
        "[a-z~/]{1,6}",
    ];
    prop_oneof![
        9 => prop::collection::vec((name, field_value()), 0..6)
            .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        1 => any_json(),
    ]
}

/// Report-shaped JSON: the right top-level names most of the time, with anything inside.
fn report() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop_oneof![
            "20[0-9]{2}-[0-9]{2}".prop_map(Value::String),
            any_json()
        ]),
        prop::option::of(prop_oneof![Just(json!("p1")), any_json()]),
        prop::collection::vec(repayment(), 0..MAX_REPAYMENTS + 5),
        prop::collection::vec(("[a-z]{1,5}", any_json()), 0..3),
    )
        .prop_map(|(period, partner, repayments, extra)| {
            let mut report = Map::new();
            if let Some(period) = period {
                report.insert("period".into(), period);
            }
            if let Some(partner) = partner {
                report.insert("partner_id".into(), partner);
            }
            report.insert("repayments".into(), Value::Array(repayments));
            report.extend(extra);
            Value::Object(report)
        })
}

/// The one digits rule an accepted amount follows.
fn follows_the_amount_rule(text: &str) -> bool {
    let (int, frac) = text.split_once('.').unwrap_or((text, "0"));
    (1..=15).contains(&int.len())
        && (1..=3).contains(&frac.len())
        && int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
}

fn check_read(body: &[u8]) -> Result<(), TestCaseError> {
    let (intake, scope) = intake();
    match intake.read(body, &scope) {
        Ok(report) => {
            prop_assert!(report.repayments().len() <= MAX_REPAYMENTS);
            for repayment in report.repayments() {
                let text = repayment.amount.to_string();
                prop_assert!(follows_the_amount_rule(&text), "accepted amount {text}");
            }
        }
        Err(IntakeError::Invalid { listed, total }) => {
            prop_assert!(!listed.is_empty());
            prop_assert!(listed.len() <= MAX_LISTED_VIOLATIONS);
            prop_assert!(listed.len() <= total);
            prop_assert!(listed.iter().all(|v| v.detail.chars().count() < 400));
        }
        Err(IntakeError::TooManyRepayments { at_least, max }) => {
            prop_assert_eq!(max, MAX_REPAYMENTS);
            prop_assert_eq!(at_least, MAX_REPAYMENTS + 1);
        }
        Err(IntakeError::MalformedJson { .. } | IntakeError::PartnerNotAllowed(_)) => {}
        Err(IntakeError::ParserFailed) => prop_assert!(false, "read does not use the threads"),
        Err(e @ (IntakeError::MalformedFile(_) | IntakeError::TooLargeUnpacked(_))) => {
            prop_assert!(false, "a file's error from the JSON path: {e}")
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn the_intake_survives_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        check_read(&body)?;
    }

    #[test]
    fn the_intake_survives_report_shaped_json(report in report()) {
        check_read(report.to_string().as_bytes())?;
    }

    #[test]
    fn valid_amounts_are_forwarded_with_exactly_their_digits(
        amounts in prop::collection::vec(
            ("(0|[1-9][0-9]{0,14})(\\.[0-9]{1,3})?", any::<bool>()), 1..MAX_REPAYMENTS),
    ) {
        let repayments: Vec<Value> = amounts
            .iter()
            .enumerate()
            .map(|(i, (text, as_string))| {
                let amount = if *as_string {
                    Value::String(text.clone())
                } else {
                    serde_json::from_str(text).unwrap()
                };
                json!({"loan_id": format!("L-{i}"), "client_id": "C-1", "amount": amount})
            })
            .collect();
        let body = json!({"period": "2026-10", "repayments": repayments}).to_string();
        let (intake, scope) = intake();
        let report = intake.read(body.as_bytes(), &scope).unwrap();
        let forwarded: Vec<String> =
            report.repayments().iter().map(|r| r.amount.to_string()).collect();
        let sent: Vec<String> = amounts.into_iter().map(|(text, _)| text).collect();
        prop_assert_eq!(forwarded, sent);
    }

    #[test]
    fn kivas_answer_parser_survives_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = UploadResult::parse(&body);
    }

    #[test]
    fn kivas_answer_parser_survives_answer_shaped_json(
        upload_id in any_json(),
        problems in prop::collection::vec(
            prop::collection::vec(
                (prop_oneof![Just("loan_id".to_owned()), Just("severity".to_owned()),
                             Just("code".to_owned()), Just("details".to_owned()), ".{0,5}"],
                 any_json()),
                0..5),
            0..6),
        as_array in any::<bool>(),
    ) {
        let problems: Vec<Value> = problems
            .into_iter()
            .map(|fields| Value::Object(fields.into_iter().collect()))
            .collect();
        let count = problems.len();
        let answer = json!({"upload_id": upload_id, "code": "ok", "problems": problems});
        let body = if as_array { json!([answer]) } else { answer };
        let result = UploadResult::parse(body.to_string().as_bytes());
        prop_assert!(result.problems.len() <= count);
        // Whatever was read can be stored and read back.
        let stored = serde_json::to_string(&result).unwrap();
        prop_assert_eq!(serde_json::from_str::<UploadResult>(&stored).unwrap(), result);
    }
}
