use serde_json::{Value, json};

use crate::helpers::*;

async fn a_450_repayment_three_column_report_is_queued_as_batches_of_200_200_50(backend: Backend) {
    let app = spawn(backend).await;
    let body = three_column_report(450, "10.05");

    let answer = app.submit(NAIROBI, &body).await;

    assert_eq!(answer.status, 202, "{}", answer.text);
    let id = answer.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        answer.header("location"),
        Some(format!("/v1/reports/{id}").as_str())
    );
    assert_eq!(answer.body["repayment_count"], 450);
    assert_eq!(answer.body["batch_count"], 3);
    assert_eq!(answer.body["total_amount"], "4522.50");
    assert_eq!(answer.body["status"], "queued");
    assert_eq!(answer.body["branch"], "Nairobi");
    assert_eq!(answer.body["partner_id"], THREE_COL);

    let entries = app.stream_entries(THREE_COL).await;
    let expected: Vec<_> = (1..=3).map(|n| (format!("{id}.{n}"), id.clone())).collect();
    assert_eq!(entries, expected);
    let mut sizes = Vec::new();
    for (batch, _) in &entries {
        let doc = app.stored_batch(THREE_COL, batch).await;
        sizes.push(doc["repayments"].as_array().unwrap().len());
    }
    assert_eq!(sizes, [200, 200, 50]);
    let last = app.stored_batch(THREE_COL, &entries[2].0).await;
    assert_eq!(last["total_amount"], "502.50");
    assert_eq!(last["repayments"][0]["position"], 400);
    assert_eq!(last["repayments"][0]["loan_id"], "L-400");
}

async fn a_report_with_five_violations_gets_one_422_naming_all_five(backend: Backend) {
    let app = spawn(backend).await;
    let body = json!({
        "period": "2026-13",
        "repayments": [
            {"loan_id": "L1", "client_id": "C1", "amount": "-5"},
            {"loan_id": "L2", "amount": "1"},
            {"loan_id": "L1", "client_id": "C1", "amount": "2"},
            {"loan_id": "L4", "client_id": "C4", "amount": "3", "currency": "KES"}
        ]
    });

    let answer = app.submit(NAIROBI, &body).await;

    assert_eq!(answer.status, 422, "{}", answer.text);
    assert_eq!(answer.content_type(), "application/problem+json");
    assert_eq!(answer.body["type"], "/problems/invalid-report");
    assert_eq!(
        answer.pointers(),
        [
            "/period",
            "/repayments/0/amount",
            "/repayments/1/client_id",
            "/repayments/2",
            "/repayments/3/currency",
        ]
    );
    let duplicate = &answer.body["errors"][3]["detail"].as_str().unwrap();
    assert!(
        duplicate.contains("/repayments/0") && duplicate.contains("/repayments/2"),
        "{duplicate}"
    );
    assert!(
        app.stored().await.is_empty(),
        "a refused report must store nothing"
    );
}

async fn a_three_column_partner_needs_client_id_and_a_two_column_partner_may_send_it(
    backend: Backend,
) {
    let app = spawn(backend).await;
    let body = json!({"period": "2026-10", "repayments": [
        {"loan_id": "L1", "client_id": "C1", "amount": 1},
        {"loan_id": "L2", "amount": 2}
    ]});
    let answer = app.submit(NAIROBI, &body).await;
    assert_eq!(answer.status, 422);
    assert_eq!(answer.pointers(), ["/repayments/1/client_id"]);

    let answer = app.submit(TWO_COL_BRANCH, &body).await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    let id = answer.body["id"].as_str().unwrap();
    let batch = app.stored_batch(TWO_COL, &format!("{id}.1")).await;
    assert_eq!(
        batch["repayments"][0]["client_id"], "C1",
        "kept for the MIS's reference"
    );
}

async fn two_column_duplicates_are_by_loan_alone(backend: Backend) {
    let app = spawn(backend).await;
    let body = json!({"period": "2026-10", "repayments": [
        {"loan_id": "L1", "client_id": "C1", "amount": 1},
        {"loan_id": "L1", "client_id": "C2", "amount": 2}
    ]});
    let answer = app.submit(TWO_COL_BRANCH, &body).await;
    assert_eq!(answer.status, 422);
    assert_eq!(answer.pointers(), ["/repayments/1"]);
    assert_eq!(
        app.submit(NAIROBI, &body).await.status,
        202,
        "distinct for three-column"
    );
}

async fn amounts_are_stored_with_exactly_the_digits_sent(backend: Backend) {
    let app = spawn(backend).await;
    let body = r#"{"period": "2026-10", "repayments": [
        {"loan_id": "L1", "client_id": "C1", "amount": "1234567.891"},
        {"loan_id": "L2", "client_id": "C2", "amount": 1234567.891},
        {"loan_id": "L3", "client_id": "C3", "amount": 25.00},
        {"loan_id": 1042970, "client_id": 184729, "amount": "0.1"}
    ]}"#;

    let answer = app.submit_raw(NAIROBI, body).await;

    assert_eq!(answer.status, 202, "{}", answer.text);
    assert_eq!(answer.body["total_amount"], "2469160.882");
    let id = answer.body["id"].as_str().unwrap();
    let batch = app.stored_batch(THREE_COL, &format!("{id}.1")).await;
    let amounts: Vec<&str> = batch["repayments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["amount"].as_str().unwrap())
        .collect();
    assert_eq!(amounts, ["1234567.891", "1234567.891", "25.00", "0.1"]);
    assert_eq!(batch["repayments"][3]["loan_id"], "1042970");
    assert_eq!(batch["repayments"][3]["client_id"], "184729");
}

async fn negative_too_precise_and_non_numeric_amounts_are_refused(backend: Backend) {
    let app = spawn(backend).await;
    for amount in [
        "-1",
        "1.2345",
        "\"abc\"",
        "\"NaN\"",
        "\"Infinity\"",
        "\"-1\"",
        "\"1.2345\"",
        "\"1e3\"",
        "null",
        "true",
    ] {
        let body = format!(
            r#"{{"period":"2026-10","repayments":[{{"loan_id":"L1","client_id":"C1","amount":{amount}}}]}}"#
        );
        let answer = app.submit_raw(NAIROBI, &body).await;
        assert_eq!(answer.status, 422, "amount {amount}: {}", answer.text);
        assert_eq!(
            answer.pointers(),
            ["/repayments/0/amount"],
            "amount {amount}"
        );
    }
    assert!(app.stored().await.is_empty());
}

async fn validate_answers_with_what_would_be_sent_and_stores_nothing(backend: Backend) {
    let app = spawn(backend).await;
    let body = r#"{"period":"2026-10","repayments":[{"loan_id":"L1","client_id":"C1","amount":"25.00"},{"loan_id":"L2","client_id":"C2","amount":40.5}]}"#;

    let three = app
        .send(app.post("/v1/repayments/validate", NAIROBI, body))
        .await;
    let two = app
        .send(app.post("/v1/repayments/validate", TWO_COL_BRANCH, body))
        .await;

    assert_eq!(three.status, 200, "{}", three.text);
    assert!(
        three.text.contains(r#""kiva_requests":[{"repayments":[{"loan_id":"L1","client_id":"C1","amount":25.00},{"loan_id":"L2","client_id":"C2","amount":40.5}]}]"#),
        "{}",
        three.text
    );
    assert_eq!(three.body["total_amount"], "65.50");
    assert_eq!(three.body["batch_count"], 1);
    assert!(
        two.text.contains(r#""kiva_requests":[{"repayments":[{"loan_id":"L1","amount":25.00},{"loan_id":"L2","amount":40.5}]}]"#),
        "{}",
        two.text
    );
    let invalid = app
        .send(app.post(
            "/v1/repayments/validate",
            NAIROBI,
            r#"{"period":"2026-10","repayments":[]}"#,
        ))
        .await;
    assert_eq!(invalid.status, 422);
    assert_eq!(invalid.pointers(), ["/repayments"]);
    assert!(app.stored().await.is_empty());
}

async fn malformed_json_is_a_400_with_line_and_column(backend: Backend) {
    let app = spawn(backend).await;
    let answer = app
        .submit_raw(
            NAIROBI,
            "{\n  \"repayments\": [\n    {\"loan_id\": \"L1\",}\n  ]\n}",
        )
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.content_type(), "application/problem+json");
    let detail = answer.body["detail"].as_str().unwrap();
    assert!(detail.contains("line 3"), "{detail}");
    assert!(detail.contains("column"), "{detail}");
}

async fn missing_or_unknown_keys_are_401_and_another_partner_is_403(backend: Backend) {
    let app = spawn(backend).await;
    let body = three_column_report(1, "1");
    let anonymous = app
        .send(
            app.client
                .post(format!("{}/v1/repayments", app.address))
                .json(&body),
        )
        .await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.content_type(), "application/problem+json");
    let unknown = app.submit("not-a-configured-key", &body).await;
    assert_eq!(unknown.status, 401);

    let mut other = body.clone();
    other["partner_id"] = json!(TWO_COL);
    let forbidden = app.submit(NAIROBI, &other).await;
    assert_eq!(forbidden.status, 403, "{}", forbidden.text);
    assert!(app.stored().await.is_empty());
}

async fn an_admin_key_for_every_partner_must_name_one(backend: Backend) {
    let app = spawn(backend).await;
    let mut body = json!({"period": "2026-10", "repayments": [{"loan_id": "L1", "amount": "5"}]});
    let unnamed = app.submit(NETWORK_ADMIN, &body).await;
    assert_eq!(unnamed.status, 422);
    assert_eq!(unnamed.pointers(), ["/partner_id"]);

    body["partner_id"] = json!(TWO_COL);
    let named = app.submit(NETWORK_ADMIN, &body).await;
    assert_eq!(named.status, 202, "{}", named.text);
    assert_eq!(named.body["partner_id"], TWO_COL);
    assert_eq!(app.stream_entries(TWO_COL).await.len(), 1);
}

async fn oversized_bodies_and_reports_are_413(backend: Backend) {
    let app = spawn_app_for(
        backend,
        |s| {
            s.server.max_repayments = 100;
            s.server.max_body_bytes = 64 * 1024;
        },
        |s| s,
    )
    .await;
    let too_many = app.submit(NAIROBI, &three_column_report(101, "1")).await;
    assert_eq!(too_many.status, 413, "{}", too_many.text);
    assert_eq!(too_many.content_type(), "application/problem+json");
    assert!(too_many.body["detail"].as_str().unwrap().contains("101"));

    let big = format!(
        r#"{{"period":"2026-10","repayments":[{{"loan_id":"{}","amount":1}}]}}"#,
        "x".repeat(70 * 1024)
    );
    let too_big = app.submit_raw(NAIROBI, &big).await;
    assert_eq!(too_big.status, 413);
    assert_eq!(too_big.content_type(), "application/problem+json");
    assert!(app.stored().await.is_empty());
}

async fn query_parameters_on_a_json_report_are_refused_not_ignored(backend: Backend) {
    let app = spawn(backend).await;
    let body =
        r#"{"period":"2026-10","repayments":[{"loan_id":"L1","client_id":"C1","amount":"1"}]}"#;
    for path in [
        "/v1/repayments?period=",
        "/v1/repayments/validate?period=2026-11",
    ] {
        let answer = app.send(app.post(path, NAIROBI, body)).await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.text);
        assert_eq!(answer.content_type(), "application/problem+json");
        assert!(answer.text.contains("in its body"), "{}", answer.text);
    }
    assert!(app.stored().await.is_empty());
}

async fn a_body_that_is_not_json_is_415(backend: Backend) {
    let app = spawn(backend).await;
    let answer = app
        .send(
            app.client
                .post(format!("{}/v1/repayments", app.address))
                .header("X-Api-Key", plain_key(NAIROBI))
                .header("Content-Type", "application/xml")
                .body("<repayments/>"),
        )
        .await;
    assert_eq!(answer.status, 415);
    assert_eq!(answer.content_type(), "application/problem+json");
}

async fn unknown_paths_and_methods_are_problems_too(backend: Backend) {
    let app = spawn(backend).await;
    let missing = app.get("/v1/nothing-here", None).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.content_type(), "application/problem+json");
    let wrong = app.get("/v1/repayments", Some(NAIROBI)).await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.content_type(), "application/problem+json");
    assert_eq!(wrong.header("allow"), Some("POST"));
}

async fn the_published_schema_is_the_enforced_one(backend: Backend) {
    let app = spawn(backend).await;
    let answer = app.get("/v1/schemas/repayment-report.json", None).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type(), "application/schema+json");
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string("schemas/repayment-report.schema.json").unwrap(),
    )
    .unwrap();
    assert_eq!(answer.body, file);
}

async fn a_10000_repayment_report_is_accepted_in_50_batches(backend: Backend) {
    let app = spawn(backend).await;
    let answer = app
        .submit(NAIROBI, &three_column_report(10_000, "1.001"))
        .await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    assert_eq!(answer.body["batch_count"], 50);
    assert_eq!(answer.body["total_amount"], "10010.000");
    assert_eq!(app.stream_entries(THREE_COL).await.len(), 50);
}

on_both_stores!(
    a_450_repayment_three_column_report_is_queued_as_batches_of_200_200_50,
    a_report_with_five_violations_gets_one_422_naming_all_five,
    a_three_column_partner_needs_client_id_and_a_two_column_partner_may_send_it,
    two_column_duplicates_are_by_loan_alone,
    amounts_are_stored_with_exactly_the_digits_sent,
    negative_too_precise_and_non_numeric_amounts_are_refused,
    validate_answers_with_what_would_be_sent_and_stores_nothing,
    malformed_json_is_a_400_with_line_and_column,
    missing_or_unknown_keys_are_401_and_another_partner_is_403,
    an_admin_key_for_every_partner_must_name_one,
    oversized_bodies_and_reports_are_413,
    a_body_that_is_not_json_is_415,
    query_parameters_on_a_json_report_are_refused_not_ignored,
    unknown_paths_and_methods_are_problems_too,
    the_published_schema_is_the_enforced_one,
    a_10000_repayment_report_is_accepted_in_50_batches,
);
