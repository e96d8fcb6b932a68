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

    // To an admin, and to the branch that sent the earlier report, each problem names the
    // earlier report and where in it the loan is: L2 its second repayment, L1 its first.
    for key in [HEAD_OFFICE, NAIROBI] {
        let second = app
            .submit(key, &report("2026-10", &["L3", "L2", "L1"]))
            .await;
        assert_eq!(second.status, 422, "{}", second.text);
        assert_eq!(
            second.pointers(),
            ["/repayments/1/loan_id", "/repayments/2/loan_id"]
        );
        for (error, place) in [(0, "(its /repayments/1)"), (1, "(its /repayments/0)")] {
            let detail = second.body["errors"][error]["detail"].as_str().unwrap();
            assert!(
                detail.contains(first_id)
                    && detail.contains(place)
                    && detail.contains("correction"),
                "{key}: {detail}"
            );
        }
    }
    // Another branch learns that the loan was reported, not by whom nor where.
    let second = app
        .submit(MOMBASA, &report("2026-10", &["L3", "L2", "L1"]))
        .await;
    assert_eq!(second.status, 422, "{}", second.text);
    assert_eq!(
        second.pointers(),
        ["/repayments/1/loan_id", "/repayments/2/loan_id"]
    );
    for error in second.body["errors"].as_array().unwrap() {
        let detail = error["detail"].as_str().unwrap();
        assert!(
            detail.contains("already reported by another branch office this period"),
            "{detail}"
        );
        assert!(!detail.contains("/repayments/"), "{detail}");
    }
    assert!(!second.text.contains(first_id), "{}", second.text);
    assert_eq!(
        app.stored().await,
        stored,
        "nothing of the second report was stored"
    );
    // Nor did it keep L3, which came before the loans it was refused for.
    let l3 = app.submit(MOMBASA, &report("2026-10", &["L3"])).await;
    assert_eq!(l3.status, 202, "{}", l3.text);

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

/// A month sent again repeats loans of many earlier reports: each listed problem names its own
/// report and place (Redis reads them all in one round trip), and the count covers them all.
async fn a_month_sent_again_names_each_earlier_report_of_the_listed_loans(backend: Backend) {
    let app = spawn(backend).await;
    let loans: Vec<String> = (0..120).map(|i| format!("L{i}")).collect();
    let mut earlier = Vec::new();
    for loan in &loans {
        // Each loan second in its report, so its place can't be confused with the position.
        let answer = app
            .submit(
                NAIROBI,
                &report("2026-10", &[&format!("{loan}-other"), loan]),
            )
            .await;
        assert_eq!(answer.status, 202, "{}", answer.text);
        earlier.push(answer.body["id"].as_str().unwrap().to_owned());
    }
    let all: Vec<&str> = loans.iter().map(String::as_str).collect();
    let again = app.submit(NAIROBI, &report("2026-10", &all)).await;
    assert_eq!(again.status, 422, "{}", again.text);
    assert_eq!(again.body["error_count"], 120, "{}", again.text);
    let errors = again.body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 100);
    for (i, error) in errors.iter().enumerate() {
        assert_eq!(error["pointer"], format!("/repayments/{i}/loan_id"));
        let detail = error["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("report {} (its /repayments/1)", earlier[i])),
            "{detail}"
        );
    }
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

/// Kiva's expected loans read into the store, as an admin asks for it: the refresh is ended
/// when the status says so, and intake compares with the new snapshot from then on.
async fn refresh(rig: &DeliveryRig) {
    let app = &rig.app;
    let answer = post_refresh(app, HEAD_OFFICE).await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    let mut status = Value::Null;
    wait_until("the refresh ends", async || {
        status = app
            .get(
                &format!("/v1/partners/{THREE_COL}/expected-loans"),
                Some(HEAD_OFFICE),
            )
            .await
            .body;
        status["refresh"]["running"] == false
    })
    .await;
    assert!(
        status["refresh"]["last_succeeded_at"].is_string(),
        "{status}"
    );
}

async fn the_month_counts_every_loan_and_its_lists_are_exact(backend: Backend) {
    let rig = spawn_delivery_rig(backend).await;
    // Before any snapshot: accepted, and the answer says nothing was compared.
    let early = rig
        .app
        .submit(NAIROBI, &json!({"period": "2026-08", "repayments": [{"loan_id": "L-9", "client_id": "C-9", "amount": 1}]}))
        .await;
    assert_eq!(early.status, 202, "{}", early.text);
    assert_eq!(early.body["expected_loans_check"]["made"], false);

    rig.sandbox.set_loan_status(THREE_COL, "L-5", "ended");
    refresh(&rig).await;
    let nairobi = json!({"period": "2026-09", "repayments": [
        {"loan_id": "L-0", "client_id": "C-0", "amount": "10.50"},
        {"loan_id": "L-1", "client_id": "C-1", "amount": "20"},
        {"loan_id": "L-2", "client_id": "C-2", "amount": "0.25"},
        {"loan_id": "L-5", "client_id": "C-5", "amount": "7"}]});
    let accepted = rig.app.submit(NAIROBI, &nairobi).await;
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    assert_eq!(accepted.body["expected_loans_check"]["made"], true);
    assert_eq!(
        accepted.body["warnings"][0]["pointer"],
        "/repayments/3/loan_id"
    );
    assert!(
        accepted.body["warnings"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("PA2 will ignore"),
        "{}",
        accepted.text
    );
    let mombasa = json!({"period": "2026-09", "repayments": [
        {"loan_id": "L-3", "client_id": "C-3", "amount": "100"}]});
    assert_eq!(rig.app.submit(MOMBASA, &mombasa).await.status, 202);
    rig.drain(&rig.worker()).await;

    let month = rig.app.get("/v1/periods/2026-09", Some(HEAD_OFFICE)).await;
    assert_eq!(month.status, 200, "{}", month.text);
    let m = &month.body;
    assert_eq!(m["total"]["reports"], 2);
    assert_eq!(m["total"]["repayments"], 5);
    assert_eq!(m["total"]["amount"], "137.75");
    assert_eq!(
        m["total"]["by_state"],
        json!({"accepted": 4, "rejected_by_kiva": 1})
    );
    assert_eq!(m["branches"].as_array().unwrap().len(), 2);
    let expected = &m["expected_loans"];
    assert_eq!(expected["expected"], SANDBOX_LOANS - 1, "L-5 is ended");
    assert_eq!(expected["reported"], 4);
    assert_eq!(expected["not_reported"], SANDBOX_LOANS - 5);
    assert_eq!(m["not_expected"][0]["loan_id"], "L-5");
    assert_eq!(m["not_expected"][0]["kiva_status"], "ended");
    assert_eq!(m["rejected_by_kiva"][0]["loan_id"], "L-5");
    assert_eq!(m["ready_to_finalize"], false);
    let reasons = m["reasons"].to_string();
    assert!(
        reasons.contains("refused by Kiva") && reasons.contains("not reported"),
        "{reasons}"
    );

    // The CSV download is the JSON list, row for row.
    let listed = rig
        .app
        .get("/v1/periods/2026-09/not-reported", Some(HEAD_OFFICE))
        .await;
    let csv = rig
        .app
        .send(
            rig.app
                .client
                .get(format!(
                    "{}/v1/periods/2026-09/not-reported",
                    rig.app.address
                ))
                .header("X-Api-Key", plain_key(HEAD_OFFICE))
                .header("Accept", "text/csv"),
        )
        .await;
    assert_eq!(csv.status, 200);
    assert!(csv.content_type().starts_with("text/csv"));
    let mut lines = csv.text.lines();
    assert_eq!(
        lines.next(),
        Some("internal_loan_id,internal_client_id,kiva_id,status,delinquent")
    );
    let from_csv: Vec<&str> = lines.map(|l| l.split(',').next().unwrap()).collect();
    let from_json: Vec<&str> = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["internal_loan_id"].as_str().unwrap())
        .collect();
    assert_eq!(from_csv, from_json);
    assert_eq!(from_json.len(), SANDBOX_LOANS - 5);

    // A branch key sees its branch, and not Kiva's side.
    let branch = rig.app.get("/v1/periods/2026-09", Some(NAIROBI)).await;
    assert_eq!(branch.status, 200);
    assert_eq!(branch.body["total"]["repayments"], 4);
    assert_eq!(branch.body["branches"][0]["branch"], "Nairobi");
    assert!(branch.body.get("expected_loans").is_none());
    assert!(branch.body["not_reported"].as_array().unwrap().is_empty());
    let refused = rig
        .app
        .get("/v1/periods/2026-09/not-reported", Some(NAIROBI))
        .await;
    assert_eq!(refused.status, 403);
    let other = rig
        .app
        .get("/v1/periods/2026-09?partner_id=202", Some(NAIROBI))
        .await;
    assert_eq!(other.status, 403);

    let list = rig.app.get("/v1/periods", Some(HEAD_OFFICE)).await;
    assert_eq!(list.status, 200, "{}", list.text);
    let periods: Vec<&str> = list.body["periods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["period"].as_str().unwrap())
        .collect();
    assert_eq!(periods, ["2026-09", "2026-08"]);
}

async fn a_partner_that_rejects_unexpected_loans_gets_a_422_naming_them(backend: Backend) {
    let rig = spawn_delivery_rig_with(backend, |s| {
        s.partners[0].unexpected_loans = repayment_gateway::config::UnexpectedLoans::Reject;
    })
    .await;
    refresh(&rig).await;
    let answer = rig
        .app
        .submit(
            NAIROBI,
            &json!({"period": "2026-09", "repayments": [
            {"loan_id": "L-1", "client_id": "C-1", "amount": 1},
            {"loan_id": "L-unknown", "client_id": "C-1", "amount": 1}]}),
        )
        .await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    assert_eq!(answer.pointers(), ["/repayments/1/loan_id"]);
    assert!(rig.app.stored().await.is_empty());
}

/// Issue 22, item 9: a correction from Mombasa replaced Nairobi's L-1, and the month still read
/// ready. A branch corrects only its own branch's loans; a loan in two reports blocks the month.
async fn only_the_reporting_branch_or_an_admin_corrects_a_loan_and_a_repeat_blocks_the_month(
    backend: Backend,
) {
    let rig = spawn_delivery_rig(backend).await;
    refresh(&rig).await;
    let mut all = three_column_report(SANDBOX_LOANS, "10.00");
    all["correction"] = json!(false);
    rig.submit(NAIROBI, &all).await;
    rig.drain(&rig.worker()).await;
    let month = async || {
        rig.app
            .get("/v1/periods/2026-10", Some(HEAD_OFFICE))
            .await
            .body
    };
    let m = month().await;
    assert_eq!(m["ready_to_finalize"], true, "{}", m["reasons"]);
    let uploads = rig.sandbox.repayment_requests();
    let stored = rig.app.stored().await;

    let l1 = |amount: &str| {
        json!({"period": "2026-10", "correction": true, "repayments": [
            {"loan_id": "L-1", "client_id": "C-1", "amount": amount}]})
    };
    let refused = rig.app.submit(MOMBASA, &l1("99.00")).await;
    assert_eq!(refused.status, 422, "{}", refused.text);
    assert_eq!(refused.pointers(), ["/repayments/0/loan_id"]);
    let detail = refused.body["errors"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("another branch"), "{detail}");
    assert_eq!(rig.app.stored().await, stored, "nothing stored");
    rig.drain(&rig.worker()).await;
    assert_eq!(rig.sandbox.repayment_requests(), uploads, "nothing sent");
    assert_eq!(month().await["ready_to_finalize"], true);

    // An admin may correct any branch's loan; the repeat then blocks the month.
    let corrected = rig.app.submit(HEAD_OFFICE, &l1("11.00")).await;
    assert_eq!(corrected.status, 202, "{}", corrected.text);
    rig.drain(&rig.worker()).await;
    assert_eq!(rig.sandbox.repayment_requests(), uploads + 1);
    let m = month().await;
    assert_eq!(
        m["repeated"].as_array().unwrap().len(),
        1,
        "{}",
        m["repeated"]
    );
    assert_eq!(m["repeated"][0]["loan_id"], "L-1");
    assert_eq!(m["ready_to_finalize"], false);
    assert!(
        m["reasons"].to_string().contains("more than once"),
        "{}",
        m["reasons"]
    );
}

/// Each process keeps the snapshot the month view last read, asking the store only whether a
/// refresh replaced it: the month, the months list and the page show a new snapshot at once.
async fn the_month_shows_the_snapshot_of_the_latest_refresh(backend: Backend) {
    let rig = spawn_delivery_rig(backend).await;
    refresh(&rig).await;
    let report = json!({"period": "2026-09", "repayments": [
        {"loan_id": "L-0", "client_id": "C-0", "amount": "1"}]});
    assert_eq!(rig.app.submit(NAIROBI, &report).await.status, 202);
    let numbers = async || {
        let month = rig.app.get("/v1/periods/2026-09", Some(HEAD_OFFICE)).await;
        let months = rig.app.get("/v1/periods", Some(HEAD_OFFICE)).await;
        (
            month.body["expected_loans"]["expected"].clone(),
            month.body["not_reported"].as_array().unwrap().len(),
            months.body["periods"][0]["expected"].clone(),
        )
    };
    assert_eq!(
        numbers().await,
        (
            json!(SANDBOX_LOANS),
            SANDBOX_LOANS - 1,
            json!(SANDBOX_LOANS)
        )
    );

    rig.sandbox.set_loan_status(THREE_COL, "L-1", "ended");
    let answer = post_refresh(&rig.app, HEAD_OFFICE).await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    wait_until("the second refresh ends", async || {
        let status = rig
            .app
            .get(
                &format!("/v1/partners/{THREE_COL}/expected-loans"),
                Some(HEAD_OFFICE),
            )
            .await
            .body;
        status["refresh"]["running"] == false && status["expected"] == SANDBOX_LOANS - 1
    })
    .await;
    assert_eq!(
        numbers().await,
        (
            json!(SANDBOX_LOANS - 1),
            SANDBOX_LOANS - 2,
            json!(SANDBOX_LOANS - 1)
        )
    );
}

on_both_stores!(
    the_month_shows_the_snapshot_of_the_latest_refresh,
    a_report_without_a_period_is_refused_naming_it,
    a_loan_already_reported_in_the_period_is_refused_naming_the_earlier_report,
    a_month_sent_again_names_each_earlier_report_of_the_listed_loans,
    a_blind_retry_without_an_idempotency_key_is_refused_with_a_pointer_to_the_first,
    two_concurrent_reports_with_the_same_loan_get_exactly_one_202,
    a_correction_may_repeat_loans_and_is_marked_as_one,
    the_month_counts_every_loan_and_its_lists_are_exact,
    a_partner_that_rejects_unexpected_loans_gets_a_422_naming_them,
    only_the_reporting_branch_or_an_admin_corrects_a_loan_and_a_repeat_blocks_the_month,
);
