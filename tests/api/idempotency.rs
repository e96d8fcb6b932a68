use std::sync::Arc;

use crate::helpers::*;

const BODY: &str =
    r#"{"period":"2026-10","repayments":[{"loan_id":"L1","client_id":"C1","amount":"25.00"}]}"#;
const OTHER_BODY: &str =
    r#"{"period":"2026-10","repayments":[{"loan_id":"L1","client_id":"C1","amount":"26.00"}]}"#;

async fn a_repeated_request_replays_the_first_answer_and_stores_one_report(backend: Backend) {
    let app = spawn(backend).await;
    let first = app.submit_idempotent(NAIROBI, "oct-nairobi-1", BODY).await;
    let again = app.submit_idempotent(NAIROBI, "oct-nairobi-1", BODY).await;

    assert_eq!(first.status, 202);
    assert_eq!(again.status, 202);
    assert_eq!(again.text, first.text);
    assert_eq!(again.header("location"), first.header("location"));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(app.stream_entries(THREE_COL).await.len(), 1);
}

async fn the_same_key_with_another_body_is_422_and_changes_nothing(backend: Backend) {
    let app = spawn(backend).await;
    assert_eq!(app.submit_idempotent(NAIROBI, "k", BODY).await.status, 202);
    let keys_before = app.stored().await;

    let reused = app.submit_idempotent(NAIROBI, "k", OTHER_BODY).await;

    assert_eq!(reused.status, 422);
    assert_eq!(reused.content_type(), "application/problem+json");
    assert_eq!(reused.body["type"], "/problems/idempotency-key-reused");
    assert_eq!(app.stored().await, keys_before);
    assert_eq!(app.stream_entries(THREE_COL).await.len(), 1);
}

async fn keys_are_scoped_to_the_api_key(backend: Backend) {
    let app = spawn(backend).await;
    assert_eq!(
        app.submit_idempotent(NAIROBI, "shared", BODY).await.status,
        202
    );
    // Another branch's report (its own loan: a loan is reported once per period).
    let other = app
        .submit_idempotent(MOMBASA, "shared", &BODY.replace("L1", "L9"))
        .await;
    assert_eq!(other.status, 202);
    assert_eq!(other.header("idempotent-replayed"), None);
    assert_eq!(app.stream_entries(THREE_COL).await.len(), 2);
}

async fn a_second_request_while_the_first_is_in_progress_is_409_and_one_report_is_stored(
    backend: Backend,
) {
    let mut gate = None;
    let app = spawn_app_for(
        backend,
        |_| {},
        |inner| {
            let gated = Arc::new(GatedStore::new(inner));
            gate = Some(gated.clone());
            gated
        },
    )
    .await;
    let store = gate.unwrap();
    let app = Arc::new(app);

    let first = tokio::spawn({
        let app = app.clone();
        async move { app.submit_idempotent(NAIROBI, "concurrent", BODY).await }
    });
    // The first request has claimed the key and is held just before storing its report.
    tokio::time::timeout(DEADLINE, store.reached.notified())
        .await
        .expect("first request reaches the store");

    let second = app.submit_idempotent(NAIROBI, "concurrent", BODY).await;
    store.release.notify_one();
    let first = first.await.unwrap();

    assert_eq!(second.status, 409, "{}", second.text);
    assert_eq!(second.content_type(), "application/problem+json");
    assert!(second.header("retry-after").is_some());
    assert_eq!(first.status, 202, "{}", first.text);
    assert_eq!(app.stream_entries(THREE_COL).await.len(), 1);
    let replay = app.submit_idempotent(NAIROBI, "concurrent", BODY).await;
    assert_eq!(replay.text, first.text);
}

/// The accept was lost (its master died with it): the MIS is told `outcome-unknown`, and its
/// retry with the same key is stored, not refused 409 until the claim expires.
async fn after_an_outcome_unknown_answer_a_retry_with_the_same_key_is_not_refused(
    backend: Backend,
) {
    let mut gate = None;
    let app = spawn_app_for(
        backend,
        |_| {},
        |inner| {
            let gated = Arc::new(GatedStore::open(inner));
            gate = Some(gated.clone());
            gated
        },
    )
    .await;
    let store = gate.unwrap();
    store
        .lose_next_accept
        .store(true, std::sync::atomic::Ordering::SeqCst);

    let lost = app.submit_idempotent(NAIROBI, "lost", BODY).await;
    assert_eq!(lost.status, 503, "{}", lost.text);
    assert_eq!(lost.body["type"], "/problems/outcome-unknown");
    let retry = app.submit_idempotent(NAIROBI, "lost", BODY).await;

    assert_eq!(retry.status, 202, "{}", retry.text);
    assert_eq!(app.stream_entries(THREE_COL).await.len(), 1);
    let replay = app.submit_idempotent(NAIROBI, "lost", BODY).await;
    assert_eq!(replay.text, retry.text);
}

async fn a_refused_report_does_not_use_up_its_key(backend: Backend) {
    let app = spawn(backend).await;
    let invalid = r#"{"period":"2026-10","repayments":[{"loan_id":"L1","amount":"25.00"}]}"#;
    assert_eq!(
        app.submit_idempotent(NAIROBI, "fixme", invalid)
            .await
            .status,
        422
    );
    assert_eq!(
        app.submit_idempotent(NAIROBI, "fixme", BODY).await.status,
        202
    );
}

async fn a_malformed_idempotency_key_is_400(backend: Backend) {
    let app = spawn(backend).await;
    let long = "k".repeat(256);
    let answer = app.submit_idempotent(NAIROBI, &long, BODY).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.content_type(), "application/problem+json");
    assert_eq!(
        app.submit_idempotent(NAIROBI, &"k".repeat(255), BODY)
            .await
            .status,
        202
    );
}

on_both_stores!(
    a_repeated_request_replays_the_first_answer_and_stores_one_report,
    the_same_key_with_another_body_is_422_and_changes_nothing,
    keys_are_scoped_to_the_api_key,
    a_second_request_while_the_first_is_in_progress_is_409_and_one_report_is_stored,
    a_refused_report_does_not_use_up_its_key,
    after_an_outcome_unknown_answer_a_retry_with_the_same_key_is_not_refused,
    a_malformed_idempotency_key_is_400,
);
