//! Hostile and odd input: the answer stays small, clear and the same for the same mistake,
//! and nothing is stored. (The memory one body may cost is measured in tests/intake_memory.rs.)

use serde_json::{Value, json};

use crate::helpers::*;

fn repayments_with_amounts(amounts: &[&str]) -> String {
    let items: Vec<String> = amounts
        .iter()
        .enumerate()
        .map(|(i, amount)| format!(r#"{{"loan_id":"L{i}","client_id":"C{i}","amount":{amount}}}"#))
        .collect();
    format!(
        r#"{{"period":"2026-10","repayments":[{}]}}"#,
        items.join(",")
    )
}

#[tokio::test]
async fn a_422_lists_the_first_100_violations_in_document_order_and_counts_them_all() {
    let app = spawn(Backend::Embedded).await;
    let body = repayments_with_amounts(&["-1"; 150]);
    let answer = app.submit_raw(NAIROBI, &body).await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    let pointers = answer.pointers();
    assert_eq!(pointers.len(), 100, "{}", answer.text);
    assert_eq!(pointers[0], "/repayments/0/amount");
    assert_eq!(pointers[99], "/repayments/99/amount");
    assert_eq!(answer.body["error_count"], 150);
    let detail = answer.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("150 problem(s)") && detail.contains("Only the first 100 are listed"),
        "{detail}"
    );
    assert!(app.stored().await.is_empty());
}

#[tokio::test]
async fn a_large_invalid_report_is_capped_the_same_way() {
    let app = spawn(Backend::Embedded).await;
    // Over 256 KiB: read with a large-body permit and parsed on the intake's parser threads.
    let body = repayments_with_amounts(&["\"1.5000\""; 6_000]);
    assert!(body.len() > 256 * 1024);
    let answer = app.submit_raw(NAIROBI, &body).await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    assert_eq!(answer.body["error_count"], 6_000);
    assert_eq!(answer.pointers().len(), 100);
    assert!(app.stored().await.is_empty());
}

#[tokio::test]
async fn thousands_of_unknown_properties_get_a_small_422() {
    let app = spawn(Backend::Embedded).await;
    let unknown: Vec<String> = (0..20_000).map(|i| format!(r#""x{i}":0"#)).collect();
    let body = format!(
        r#"{{"period":"2026-10","repayments":[{{"loan_id":"L1","client_id":"C1","amount":1,{}}}]}}"#,
        unknown.join(",")
    );
    let answer = app.submit_raw(NAIROBI, &body).await;
    assert_eq!(answer.status, 422);
    assert_eq!(answer.body["error_count"], 20_000);
    assert_eq!(answer.pointers().len(), 100);
    assert_eq!(answer.pointers()[0], "/repayments/0/x0");
    assert!(answer.text.len() < 20_000, "{} bytes", answer.text.len());
}

#[tokio::test]
async fn a_body_of_bare_zeros_is_413_too_many_repayments() {
    let app = spawn_app_for(Backend::Embedded, |s| s.server.max_repayments = 100, |s| s).await;
    let body = format!(r#"{{"repayments":[{}]}}"#, vec!["0"; 50_000].join(","));
    let answer = app.submit_raw(NAIROBI, &body).await;
    assert_eq!(answer.status, 413, "{}", answer.text);
    assert_eq!(answer.content_type(), "application/problem+json");
    assert_eq!(answer.body["type"], "/problems/payload-too-large");
    let detail = answer.body["detail"].as_str().unwrap();
    assert!(detail.contains("more than 100 repayments"), "{detail}");
    assert!(app.stored().await.is_empty());
}

#[tokio::test]
async fn an_amount_as_number_or_string_gets_the_same_answer() {
    let app = spawn(Backend::Embedded).await;
    let number = app
        .submit_raw(NAIROBI, &repayments_with_amounts(&["1.5000"]))
        .await;
    let string = app
        .submit_raw(NAIROBI, &repayments_with_amounts(&["\"1.5000\""]))
        .await;
    assert_eq!(number.status, 422, "{}", number.text);
    assert_eq!(string.status, 422, "{}", string.text);
    assert_eq!(number.body["errors"], string.body["errors"]);
    assert_eq!(
        number.body["errors"][0]["detail"],
        "\"1.5000\" has 4 decimal places; at most 3 are allowed: write 1.500"
    );
    assert!(app.stored().await.is_empty());
}

#[tokio::test]
async fn a_30_decimal_number_is_refused_not_rounded() {
    let app = spawn(Backend::Embedded).await;
    // A multiple of 0.001, so the schema's `multipleOf` lets it through; `Decimal` would
    // round it to 28 places and forward digits the MIS never sent.
    let thirty = format!("0.1{}", "0".repeat(29));
    let answer = app
        .submit_raw(NAIROBI, &repayments_with_amounts(&[&thirty]))
        .await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    assert_eq!(answer.pointers(), ["/repayments/0/amount"]);
    let detail = answer.body["errors"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("30 decimal places"), "{detail}");
    assert!(app.stored().await.is_empty());
}

#[tokio::test]
async fn an_exponent_is_refused_with_the_digits_to_write() {
    let app = spawn(Backend::Embedded).await;
    let answer = app
        .submit_raw(NAIROBI, &repayments_with_amounts(&["2.5e1"]))
        .await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    let detail = answer.body["errors"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("exponent") && detail.ends_with("e.g. 25"),
        "{detail}"
    );
}

#[tokio::test]
async fn accepted_digits_are_forwarded_exactly() {
    let app = spawn(Backend::Embedded).await;
    let answer = app
        .send(app.post("/v1/repayments/validate", NAIROBI, {
            repayments_with_amounts(&["25.000", "\"0.10\"", "999999999999999.999"])
        }))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(
        answer.text.contains(
            r#""amount":25.000},{"loan_id":"L1","client_id":"C1","amount":0.10},{"loan_id":"L2","client_id":"C2","amount":999999999999999.999}"#
        ),
        "{}",
        answer.text
    );
}

#[tokio::test]
async fn an_array_where_a_value_belongs_is_named_by_kind() {
    let app = spawn(Backend::Embedded).await;
    let body = json!({"period": "2026-10", "repayments": [{"loan_id": [1, 2], "client_id": "C1", "amount": {"value": 1}}]});
    let answer = app.submit(NAIROBI, &body).await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    let details: Vec<&Value> = answer.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["detail"])
        .collect();
    assert_eq!(
        details,
        [
            "must be a string or a whole number, not an array",
            "must be a string or a number, not an object"
        ]
    );
}
