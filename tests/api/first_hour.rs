//! What a newcomer meets in the first hour (issue 9): a retry that differs only in layout is
//! a retry, a refused reuse says what differs, an every-partner admin key lists across
//! partners, and a browser at `/` lands on Swagger UI.

use crate::helpers::*;

const FIRST: &str = r#"{"period":"2026-10","repayments":[
    {"loan_id":"L1","client_id":"C1","amount":"25.00"},
    {"loan_id":"L2","client_id":"C2","amount":40.5},
    {"loan_id":"L3","client_id":"C3","amount":"25.00"}]}"#;

async fn the_same_report_in_another_layout_is_replayed(backend: Backend) {
    let app = spawn(backend).await;
    let first = app.submit_idempotent(NAIROBI, "layout", FIRST).await;
    assert_eq!(first.status, 202, "{}", first.text);
    // Other white space, other key order, the amount as a string: the same report.
    let same = r#"{ "repayments" : [ {"amount":"25.00","client_id":"C1","loan_id":"L1"},
        {"client_id":"C2", "amount":"40.5", "loan_id":"L2"},
        {"loan_id":"L3","amount":25.00,"client_id":"C3"} ],
      "period" : "2026-10" }"#;

    let again = app.submit_idempotent(NAIROBI, "layout", same).await;

    assert_eq!(again.status, 202, "{}", again.text);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.text, first.text);
    assert_eq!(app.stream_entries(THREE_COL).await.len(), 1);
}

async fn a_reused_key_names_what_differs(backend: Backend) {
    let app = spawn(backend).await;
    assert_eq!(app.submit_idempotent(NAIROBI, "k", FIRST).await.status, 202);

    let other_amount = FIRST.replacen(
        r#"{"loan_id":"L3","client_id":"C3","amount":"25.00"}"#,
        r#"{"loan_id":"L3","client_id":"C3","amount":"26.00"}"#,
        1,
    );
    let reused = app.submit_idempotent(NAIROBI, "k", &other_amount).await;
    assert_eq!(reused.status, 422, "{}", reused.text);
    assert_eq!(reused.body["type"], "/problems/idempotency-key-reused");
    let detail = reused.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("repayment 3's amount (/repayments/2/amount): 25.00 then 26.00"),
        "{detail}"
    );

    let fewer = r#"{"period":"2026-10","repayments":[
        {"loan_id":"L1","client_id":"C1","amount":"25.00"},
        {"loan_id":"L2","client_id":"C2","amount":40.5}]}"#;
    let reused = app.submit_idempotent(NAIROBI, "k", fewer).await;
    assert_eq!(reused.status, 422, "{}", reused.text);
    let detail = reused.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("the number of repayments: 3 then 2"),
        "{detail}"
    );

    let other_period = FIRST.replace("2026-10", "2026-11");
    let reused = app.submit_idempotent(NAIROBI, "k", &other_period).await;
    let detail = reused.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("the period: 2026-10 then 2026-11"),
        "{detail}"
    );
    assert_eq!(app.stream_entries(THREE_COL).await.len(), 1);
}

on_both_stores!(
    the_same_report_in_another_layout_is_replayed,
    a_reused_key_names_what_differs,
);

#[tokio::test]
async fn a_browser_at_the_root_is_sent_to_swagger_ui() {
    let app = spawn(Backend::Embedded).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let answer = app.send(client.get(format!("{}/", app.address))).await;
    assert_eq!(answer.status, 303, "{}", answer.text);
    assert_eq!(answer.header("location"), Some("/swagger-ui/"));
    // Followed, as a browser does, it is the Swagger UI page.
    let page = app.send(app.client.get(format!("{}/", app.address))).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("swagger-ui"), "{}", page.text);
}
