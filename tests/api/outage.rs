use crate::helpers::*;

const BODY: &str = r#"{"period":"2026-10","correction":true,"repayments":[{"loan_id":"L1","client_id":"C1","amount":"25.00"}]}"#;

#[tokio::test]
async fn while_redis_is_down_reports_are_refused_with_503_and_after_it_returns_the_same_request_is_accepted()
 {
    let app = spawn_app_on(TestRedis::start_persistent().await, |_| {}).await;
    let before = app.submit_idempotent(NAIROBI, "before", BODY).await;
    assert_eq!(before.status, 202);
    let keys_before = app.redis_keys().await;

    let mut app = app;
    app.redis_mut().stop();
    let refused = app.submit_idempotent(NAIROBI, "during", BODY).await;
    let plain = app.submit_raw(NAIROBI, BODY).await;
    let ready = app.get("/health/ready", None).await;

    assert_eq!(refused.status, 503, "{}", refused.text);
    assert_eq!(refused.content_type(), "application/problem+json");
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert_eq!(plain.status, 503);
    assert_eq!(ready.status, 503);
    assert_eq!(app.get("/health/live", None).await.status, 200);

    app.redis_mut().restart().await;
    assert_eq!(
        app.redis_keys().await,
        keys_before,
        "nothing half-written, nothing lost"
    );
    wait_until("the gateway is ready again", async || {
        app.get("/health/ready", None).await.status == 200
    })
    .await;

    let retried = app.submit_idempotent(NAIROBI, "during", BODY).await;
    assert_eq!(retried.status, 202, "{}", retried.text);
    assert_eq!(retried.header("idempotent-replayed"), None);
    assert_eq!(app.stream_entries(THREE_COL).await.len(), 2);
}
