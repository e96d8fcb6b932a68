//! Kiva's expected loans through the API: a refresh on demand reads the sandbox's loans list
//! page by page into the snapshot; failures keep the previous snapshot; one refresh per
//! partner across gateways; admin keys only; nothing is posted to Kiva.

use std::sync::Arc;
use std::time::Duration;

use repayment_gateway::domain::PartnerId;
use repayment_gateway::sandbox::{Fault, LoansPaging, SandboxLoan, TotalRecordsField};
use repayment_gateway::store::ReportStore;
use serde_json::Value;

use crate::helpers::*;

/// The rig's sandbox has `SANDBOX_LOANS` (500) `payingBack` loans per partner; these make
/// partner THREE_COL's list 1,000 loans: 700 `payingBack`, 200 `defaulted`, 100 `ended`.
fn more_loans() -> Vec<SandboxLoan> {
    let loan = |i: usize, status: &str| SandboxLoan {
        partner_id: THREE_COL.into(),
        internal_loan_id: format!("X-{i}"),
        internal_client_id: format!("XC-{i}"),
        kiva_id: 3_000_000 + i as u64,
        status: status.into(),
        loan_local_price: "1000.00".into(),
        loan_currency: "KES".into(),
        delinquent: i.is_multiple_of(10),
    };
    (0..500)
        .map(|i| {
            let status = match i {
                0..200 => "payingBack",
                200..400 => "defaulted",
                _ => "ended",
            };
            loan(i, status)
        })
        .collect()
}

fn partner() -> PartnerId {
    PartnerId::parse(THREE_COL).unwrap()
}

async fn rig_with_1000_loans(backend: Backend) -> DeliveryRig {
    let rig = spawn_delivery_rig(backend).await;
    rig.sandbox.add_loans(more_loans());
    rig
}

async fn status_of(app: &TestApp) -> Value {
    let answer = app
        .get(
            &format!("/v1/partners/{THREE_COL}/expected-loans"),
            Some(HEAD_OFFICE),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.body
}

/// Waits until no refresh runs and one has ended (succeeded or failed) after `after`.
async fn wait_for_refresh_end(app: &TestApp, started_before: Option<&str>) -> Value {
    let mut last = Value::Null;
    wait_until("the refresh ends", async || {
        last = status_of(app).await;
        let refresh = &last["refresh"];
        refresh["running"] == false
            && refresh["last_started_at"].as_str().is_some()
            && refresh["last_started_at"].as_str() != started_before
    })
    .await;
    last
}

async fn a_refresh_reads_every_page_and_replaces_the_snapshot(backend: Backend) {
    let rig = rig_with_1000_loans(backend).await;
    let answer = post_refresh(&rig.app, HEAD_OFFICE).await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    assert_eq!(
        answer.header("location"),
        Some(format!("/v1/partners/{THREE_COL}/expected-loans").as_str())
    );
    let status = wait_for_refresh_end(&rig.app, None).await;
    assert_eq!(status["refresh"]["last_error"], Value::Null, "{status}");
    assert!(
        status["refresh"]["last_succeeded_at"].is_string(),
        "{status}"
    );
    assert_eq!(status["expected"], 900);
    assert_eq!(
        status["by_status"],
        serde_json::json!({"payingBack": 700, "defaulted": 200, "ended": 100})
    );
    // One status per request (Kiva's filter takes one): 3 pages of payingBack, one each of
    // defaulted, ended and (empty) refunded; every page at most 300, offsets back to back.
    let requests: Vec<(Vec<String>, usize, usize)> = rig
        .sandbox
        .loans_requests()
        .into_iter()
        .filter(|r| r.partner_id == THREE_COL)
        .map(|r| (r.statuses, r.offset, r.limit))
        .collect();
    let page = |status: &str, offset| (vec![status.to_owned()], offset, 300);
    assert_eq!(
        requests,
        [
            page("payingBack", 0),
            page("payingBack", 300),
            page("payingBack", 600),
            page("defaulted", 0),
            page("ended", 0),
            page("refunded", 0),
        ]
    );
    assert_eq!(status["pages"], 6);

    let snapshot = rig
        .app
        .store
        .expected_loans(&partner())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snapshot.loans.len(), 1000);
    assert_eq!(snapshot.pages, 6);
    let x7 = snapshot
        .loans
        .iter()
        .find(|l| l.internal_loan_id == "X-210")
        .unwrap();
    assert_eq!(x7.status, "defaulted");
    assert_eq!(x7.internal_client_id.as_deref(), Some("XC-210"));
    assert_eq!(x7.kiva_id, Some(3_000_210));
    assert_eq!(x7.delinquent, Some(true));

    let listed = rig
        .app
        .get(
            &format!("/v1/partners/{THREE_COL}/expected-loans?include=loans"),
            Some(NETWORK_ADMIN),
        )
        .await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(listed.body["loans"].as_array().unwrap().len(), 1000);
    assert!(status.get("loans").is_none());
    // Read-only: nothing was posted to Kiva, and the other partner was not read.
    assert_eq!(rig.sandbox.repayment_requests(), 0);
    assert!(
        rig.app
            .store
            .expected_loans(&PartnerId::parse(TWO_COL).unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

async fn a_failed_refresh_keeps_the_previous_snapshot_and_says_why(backend: Backend) {
    let rig = rig_with_1000_loans(backend).await;
    assert_eq!(post_refresh(&rig.app, HEAD_OFFICE).await.status, 202);
    let first = wait_for_refresh_end(&rig.app, None).await;
    let before = rig
        .app
        .store
        .expected_loans(&partner())
        .await
        .unwrap()
        .unwrap();

    // Page 1 answers normally, page 2 fails.
    rig.sandbox.push_loans_fault(Fault::Stall(Duration::ZERO));
    rig.sandbox
        .push_loans_fault(Fault::status(503, r#"{"code":"unavailable"}"#));
    rig.sandbox.add_loans(more_loans().into_iter().map(|mut l| {
        l.internal_loan_id = format!("new-{}", l.internal_loan_id);
        l
    }));
    assert_eq!(post_refresh(&rig.app, HEAD_OFFICE).await.status, 202);
    let failed = wait_for_refresh_end(&rig.app, first["refresh"]["last_started_at"].as_str()).await;
    let error = failed["refresh"]["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("503")
            && error.contains("page 2")
            && error.contains("previous snapshot is kept"),
        "{failed}"
    );
    assert!(!failed.to_string().contains(PARTNER_SECRET));
    assert_eq!(
        failed["refresh"]["last_succeeded_at"],
        first["refresh"]["last_succeeded_at"]
    );
    assert_eq!(failed["taken_at"], first["taken_at"]);
    assert_eq!(failed["expected"], 900);
    assert_eq!(
        rig.app
            .store
            .expected_loans(&partner())
            .await
            .unwrap()
            .unwrap(),
        before
    );

    // The next refresh succeeds and clears the error.
    assert_eq!(post_refresh(&rig.app, HEAD_OFFICE).await.status, 202);
    let fixed = wait_for_refresh_end(&rig.app, failed["refresh"]["last_started_at"].as_str()).await;
    assert_eq!(fixed["refresh"]["last_error"], Value::Null, "{fixed}");
    assert_eq!(fixed["expected"], 1300);
    assert_eq!(rig.sandbox.repayment_requests(), 0);
}

/// A first refresh reads the 1,000 loans; then Kiva's list misbehaves with `paging` and the
/// next refresh must fail with an error holding each of `words`, keep the previous snapshot,
/// and ask for at most `most_payingback_pages` pages of `payingBack` (of 700 loans).
async fn a_misbehaving_list_fails_the_refresh(
    backend: Backend,
    paging: LoansPaging,
    words: &[&str],
    most_payingback_pages: usize,
) {
    let rig = rig_with_1000_loans(backend).await;
    assert_eq!(post_refresh(&rig.app, HEAD_OFFICE).await.status, 202);
    let first = wait_for_refresh_end(&rig.app, None).await;
    assert_eq!(first["refresh"]["last_error"], Value::Null, "{first}");
    let before = rig.app.store.expected_loans(&partner()).await.unwrap();
    let asked_before = rig.sandbox.loans_requests().len();

    rig.sandbox.set_loans_paging(paging.clone());
    assert_eq!(post_refresh(&rig.app, HEAD_OFFICE).await.status, 202);
    let failed = wait_for_refresh_end(&rig.app, first["refresh"]["last_started_at"].as_str()).await;
    let error = failed["refresh"]["last_error"].as_str().unwrap_or_default();
    for word in words.iter().chain(&["previous snapshot is kept"]) {
        assert!(error.contains(word), "{paging:?}: {word:?} not in {failed}");
    }
    assert_eq!(
        failed["refresh"]["last_succeeded_at"],
        first["refresh"]["last_succeeded_at"]
    );
    assert_eq!(failed["expected"], 900);
    assert_eq!(
        rig.app.store.expected_loans(&partner()).await.unwrap(),
        before
    );
    let paying_back_pages = rig.sandbox.loans_requests()[asked_before..]
        .iter()
        .filter(|r| r.statuses == ["payingBack"])
        .count();
    assert!(
        paying_back_pages <= most_payingback_pages,
        "{paging:?}: {paying_back_pages} pages asked"
    );
}

async fn a_page_larger_than_asked_fails_the_refresh(backend: Backend) {
    let paging = LoansPaging {
        beyond_limit: 1,
        ..LoansPaging::default()
    };
    a_misbehaving_list_fails_the_refresh(backend, paging, &["301 loans", "at most 300"], 1).await;
}

async fn a_page_of_too_many_bytes_fails_the_refresh_unread(backend: Backend) {
    // 300 loans of 20 KB each: a 6 MB page, read no further than the bound.
    let paging = LoansPaging {
        padding_bytes: 20_000,
        ..LoansPaging::default()
    };
    a_misbehaving_list_fails_the_refresh(backend, paging, &["page is larger than"], 1).await;
}

async fn a_list_that_ignores_the_offset_fails_the_refresh(backend: Backend) {
    let paging = LoansPaging {
        ignore_offset: true,
        ..LoansPaging::default()
    };
    // Page 2 repeats page 1: no new loan, so the read stops there.
    a_misbehaving_list_fails_the_refresh(
        backend,
        paging,
        &["payingBack", "700", "300 distinct"],
        2,
    )
    .await;
}

async fn a_list_whose_total_is_too_small_fails_the_refresh(backend: Backend) {
    // "300 loans" while 700 are payingBack: the pages go on past the total, and disagree.
    let paging = LoansPaging {
        total_records: Some(300),
        ..LoansPaging::default()
    };
    a_misbehaving_list_fails_the_refresh(
        backend,
        paging,
        &["payingBack", "300", "700 distinct"],
        4,
    )
    .await;
}

async fn a_list_whose_total_is_too_large_fails_the_refresh(backend: Backend) {
    let paging = LoansPaging {
        total_records: Some(3_000),
        ..LoansPaging::default()
    };
    a_misbehaving_list_fails_the_refresh(
        backend,
        paging,
        &["payingBack", "3000", "700 distinct"],
        4,
    )
    .await;
}

async fn the_same_page_with_a_huge_total_fails_the_refresh_at_once(backend: Backend) {
    let paging = LoansPaging {
        ignore_offset: true,
        total_records: Some(3_000_000),
        ..LoansPaging::default()
    };
    a_misbehaving_list_fails_the_refresh(
        backend,
        paging,
        &["3000000", "reconcile.max_expected_loans"],
        1,
    )
    .await;
}

on_both_stores!(
    a_refresh_reads_every_page_and_replaces_the_snapshot,
    a_failed_refresh_keeps_the_previous_snapshot_and_says_why,
    a_page_larger_than_asked_fails_the_refresh,
    a_page_of_too_many_bytes_fails_the_refresh_unread,
    a_list_that_ignores_the_offset_fails_the_refresh,
    a_list_whose_total_is_too_small_fails_the_refresh,
    a_list_whose_total_is_too_large_fails_the_refresh,
    the_same_page_with_a_huge_total_fails_the_refresh_at_once,
);

#[tokio::test]
async fn a_list_larger_than_the_setting_fails_the_refresh_naming_it() {
    let rig =
        spawn_delivery_rig_with(Backend::Redis, |s| s.reconcile.max_expected_loans = 999).await;
    rig.sandbox.add_loans(more_loans());
    assert_eq!(post_refresh(&rig.app, HEAD_OFFICE).await.status, 202);
    let failed = wait_for_refresh_end(&rig.app, None).await;
    let error = failed["refresh"]["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("999") && error.contains("reconcile.max_expected_loans"),
        "{failed}"
    );
    assert!(
        rig.app
            .store
            .expected_loans(&partner())
            .await
            .unwrap()
            .is_none()
    );

    // Exactly at the setting is allowed.
    let rig =
        spawn_delivery_rig_with(Backend::Redis, |s| s.reconcile.max_expected_loans = 1000).await;
    rig.sandbox.add_loans(more_loans());
    assert_eq!(post_refresh(&rig.app, HEAD_OFFICE).await.status, 202);
    let done = wait_for_refresh_end(&rig.app, None).await;
    assert_eq!(done["refresh"]["last_error"], Value::Null, "{done}");
}

#[tokio::test]
async fn the_count_spelled_total_records_in_camel_case_is_read() {
    let rig = rig_with_1000_loans(Backend::Redis).await;
    rig.sandbox
        .set_total_records_field(TotalRecordsField::Camel);
    assert_eq!(post_refresh(&rig.app, HEAD_OFFICE).await.status, 202);
    let status = wait_for_refresh_end(&rig.app, None).await;
    assert_eq!(status["refresh"]["last_error"], Value::Null, "{status}");
    assert_eq!(status["expected"], 900);
    assert_eq!(status["pages"], 6);
}

#[tokio::test]
async fn two_gateways_on_one_redis_run_one_refresh_at_a_time() {
    let rig = rig_with_1000_loans(Backend::Redis).await;
    let other_store: Arc<dyn ReportStore> = Arc::new(redis_store(rig.app.redis()));
    let other = spawn_app_with_settings(&rig.settings, other_store);
    // The first page is slow, so the first refresh is still running when the second asks.
    rig.sandbox
        .push_loans_fault(Fault::Stall(Duration::from_millis(1500)));
    let first = post_refresh(&rig.app, HEAD_OFFICE).await;
    assert_eq!(first.status, 202, "{}", first.text);
    assert_eq!(first.body["running"], true);
    let second = post_refresh(&other, NETWORK_ADMIN).await;
    assert_eq!(second.status, 409, "{}", second.text);
    assert_eq!(second.content_type(), "application/problem+json");
    assert!(
        second.body["detail"]
            .as_str()
            .unwrap()
            .contains("already running")
    );
    assert_eq!(status_of(&other).await["refresh"]["running"], true);

    let done = wait_for_refresh_end(&other, None).await;
    assert_eq!(done["refresh"]["last_error"], Value::Null, "{done}");
    // Exactly one refresh read the list.
    let pages = rig
        .sandbox
        .loans_requests()
        .iter()
        .filter(|r| r.partner_id == THREE_COL)
        .count();
    assert_eq!(pages, 6);
    // Once it is done, the other gateway may refresh.
    assert_eq!(post_refresh(&other, NETWORK_ADMIN).await.status, 202);
    assert_eq!(rig.sandbox.repayment_requests(), 0);
}

#[tokio::test]
async fn only_admin_keys_of_the_partner_see_or_refresh_expected_loans() {
    let rig = rig_with_1000_loans(Backend::Redis).await;
    let path = format!("/v1/partners/{THREE_COL}/expected-loans");
    for key in [NAIROBI, MOMBASA] {
        let refused = post_refresh(&rig.app, key).await;
        assert_eq!(refused.status, 403, "{}", refused.text);
        assert_eq!(refused.content_type(), "application/problem+json");
        let refused = rig.app.get(&path, Some(key)).await;
        assert_eq!(refused.status, 403, "{}", refused.text);
        assert_eq!(refused.content_type(), "application/problem+json");
    }
    // Another partner's key: this partner does not exist for it.
    assert_eq!(post_refresh(&rig.app, TWO_COL_BRANCH).await.status, 404);
    assert_eq!(rig.app.get(&path, Some(TWO_COL_BRANCH)).await.status, 404);
    assert_eq!(rig.app.get(&path, None).await.status, 401);
    assert_eq!(
        rig.app
            .get("/v1/partners/999/expected-loans", Some(NETWORK_ADMIN))
            .await
            .status,
        404
    );
    let bad = rig
        .app
        .get(&format!("{path}?include=everything"), Some(HEAD_OFFICE))
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    // Nothing was read from Kiva, nothing stored.
    assert!(rig.sandbox.loans_requests().is_empty());
    assert!(
        rig.app
            .store
            .expected_loans(&partner())
            .await
            .unwrap()
            .is_none()
    );
    let empty = status_of(&rig.app).await;
    assert_eq!(empty["expected"], 0);
    assert!(empty.get("taken_at").is_none());
}
