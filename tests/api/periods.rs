//! The reporting period: required, and one report per loan per period (unless a correction).

use serde_json::{Value, json};

use crate::helpers::*;

fn report(period: &str, loans: &[&str]) -> Value {
    let repayments: Vec<Value> = loans
        .iter()
        .map(|l| json!({"loan_id": l, "client_id": format!("C{l}"), "amount": "10.00"}))
        .collect();
    json!({"period": period, "repayments": repayments})
}

async fn a_report_without_a_period_is_refused_naming_it(backend: Backend) {
    let app = spawn(backend).await;
    let answer = app
        .submit(
            NAIROBI,
            &json!({"repayments": [{"loan_id": "L1", "client_id": "C1", "amount": 1}]}),
        )
        .await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    assert_eq!(answer.pointers(), ["/period"]);
    assert!(app.stored().await.is_empty());
}

async fn a_loan_already_reported_in_the_period_is_refused_naming_the_earlier_report(
    backend: Backend,
) {
    let app = spawn(backend).await;
    let first = app.submit(NAIROBI, &report("2026-10", &["L1", "L2"])).await;
    assert_eq!(first.status, 202, "{}", first.text);
    let first_id = first.body["id"].as_str().unwrap();
    let stored = app.stored().await;

    let second = app
        .submit(MOMBASA, &report("2026-10", &["L3", "L2", "L1"]))
        .await;
    assert_eq!(second.status, 422, "{}", second.text);
    assert_eq!(
        second.pointers(),
        ["/repayments/1/loan_id", "/repayments/2/loan_id"]
    );
    let detail = second.body["errors"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(first_id)
            && detail.contains("/repayments/1")
            && detail.contains("correction"),
        "{detail}"
    );
    assert_eq!(
        app.stored().await,
        stored,
        "nothing of the second report was stored"
    );

    // Another period, or the same loan id for another client, is another loan.
    let next_month = app.submit(NAIROBI, &report("2026-11", &["L1", "L2"])).await;
    assert_eq!(next_month.status, 202, "{}", next_month.text);
    let other_client = app
        .submit(
            NAIROBI,
            &json!({"period": "2026-10", "repayments": [{"loan_id": "L1", "client_id": "C-other", "amount": 1}]}),
        )
        .await;
    assert_eq!(other_client.status, 202, "{}", other_client.text);
}

async fn a_blind_retry_without_an_idempotency_key_is_refused_with_a_pointer_to_the_first(
    backend: Backend,
) {
    let app = spawn(backend).await;
    let body = report("2026-10", &["L1"]);
    let first = app.submit(NAIROBI, &body).await;
    let retry = app.submit(NAIROBI, &body).await;
    assert_eq!(first.status, 202);
    assert_eq!(retry.status, 422, "{}", retry.text);
    assert!(
        retry.text.contains(first.body["id"].as_str().unwrap()),
        "{}",
        retry.text
    );
    assert_eq!(app.stream_entries(THREE_COL).await.len(), 1);
}

async fn two_concurrent_reports_with_the_same_loan_get_exactly_one_202(backend: Backend) {
    let app = spawn(backend).await;
    let answers = futures_util::future::join_all((0..8).map(|i| {
        let body = report("2026-10", &["L-shared", &format!("L-own-{i}")]);
        let app = &app;
        async move { app.submit(NAIROBI, &body).await.status }
    }))
    .await;
    let accepted = answers.iter().filter(|s| **s == 202).count();
    let refused = answers.iter().filter(|s| **s == 422).count();
    assert_eq!((accepted, refused), (1, 7), "{answers:?}");
    assert_eq!(app.stream_entries(THREE_COL).await.len(), 1);
}

async fn a_correction_may_repeat_loans_and_is_marked_as_one(backend: Backend) {
    let app = spawn(backend).await;
    let first = app.submit(NAIROBI, &report("2026-10", &["L1"])).await;
    assert_eq!(first.status, 202);
    let mut correction = report("2026-10", &["L1"]);
    correction["correction"] = json!(true);
    let second = app.submit(NAIROBI, &correction).await;
    assert_eq!(second.status, 202, "{}", second.text);
    assert_eq!(second.body["correction"], true);
    assert_eq!(first.body["correction"], false);
    let shown = app
        .report(NAIROBI, second.body["id"].as_str().unwrap())
        .await;
    assert_eq!(shown.body["correction"], true);
    // After a correction, the loan is still reported: a third plain report is refused.
    let third = app.submit(NAIROBI, &report("2026-10", &["L1"])).await;
    assert_eq!(third.status, 422, "{}", third.text);
}

on_both_stores!(
    a_report_without_a_period_is_refused_naming_it,
    a_loan_already_reported_in_the_period_is_refused_naming_the_earlier_report,
    a_blind_retry_without_an_idempotency_key_is_refused_with_a_pointer_to_the_first,
    two_concurrent_reports_with_the_same_loan_get_exactly_one_202,
    a_correction_may_repeat_loans_and_is_marked_as_one,
);
