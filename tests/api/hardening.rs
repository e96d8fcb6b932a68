//! The promises of the store and the worker on a bad day: a slow or failing-over Redis, a
//! Kiva that answers absurdly, a worker that dies, an operator acting while an attempt is out.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use repayment_gateway::domain::PartnerId;
use repayment_gateway::sandbox::Fault;
use repayment_gateway::store::redis::{Persistence, RedisStore};
use repayment_gateway::store::{Attempt, AttemptEnd, BatchResult, BatchState, BeginAttempt};

use crate::fault_proxy::{self, FaultProxy};
use crate::helpers::*;
use crate::raw_http::answer_to_partial_request;

fn partner() -> PartnerId {
    PartnerId::parse(THREE_COL).unwrap()
}

/// A Redis store that reaches the rig's Redis through a fault proxy.
async fn proxied_store(redis: &TestRedis, timeout: Duration) -> (Arc<RedisStore>, FaultProxy) {
    let proxy = FaultProxy::start(&redis.socket()).await;
    let store = RedisStore::new(&proxy.url(), PREFIX, 8, timeout).unwrap();
    (Arc::new(store), proxy)
}

fn one_loan(loan: &str) -> String {
    format!(
        r#"{{"period":"2026-10","repayments":[{{"loan_id":"{loan}","client_id":"C-1","amount":"25.00"}}]}}"#
    )
}

// Item 1: a late or lost reply to the ACCEPT script is not "nothing was stored".

/// With one report accepted already, so the ACCEPT script is loaded and a fault armed next
/// hits the script's run itself (not a NOSCRIPT round trip, after which nothing was stored).
async fn app_behind_proxy(timeout_secs: u64) -> (TestApp, FaultProxy) {
    let redis = TestRedis::start().await;
    let (store, proxy) = proxied_store(&redis, Duration::from_secs(timeout_secs)).await;
    let app = spawn_app_with_store(redis, store, |s| s.store.timeout_secs = timeout_secs).await;
    let first = app.submit_raw(NAIROBI, &one_loan("L-first")).await;
    assert_eq!(first.status, 202, "{}", first.text);
    (app, proxy)
}

#[tokio::test]
async fn an_accept_answered_after_500_ms_is_a_202_not_a_503() {
    let (app, proxy) = app_behind_proxy(5).await;
    proxy.arm(fault_proxy::Fault::DelayReply {
        pattern: b"L-slow-accept".to_vec(),
        delay: Duration::from_millis(1200),
    });
    let answer = app.submit_raw(NAIROBI, &one_loan("L-slow-accept")).await;
    assert!(!proxy.is_armed(), "the accept went through the proxy");
    assert_eq!(answer.status, 202, "{}", answer.text);
    assert_eq!(app.stream_entries(THREE_COL).await.len(), 2);
}

#[tokio::test]
async fn a_reply_slower_than_500_ms_but_within_store_timeout_is_waited_for() {
    let (app, proxy) = app_behind_proxy(5).await;
    let first = app.get("/v1/reports", Some(NAIROBI)).await;
    let id = first.body["reports"][0]["id"].as_str().unwrap().to_owned();
    proxy.arm(fault_proxy::Fault::DelayReply {
        pattern: format!("report:{id}").into_bytes(),
        delay: Duration::from_millis(1200),
    });
    let answer = app.report(NAIROBI, &id).await;
    assert!(!proxy.is_armed(), "the read went through the proxy");
    assert_eq!(answer.status, 200, "{}", answer.text);
}

#[tokio::test]
async fn an_accept_whose_reply_never_comes_is_found_and_answered_202() {
    let (app, proxy) = app_behind_proxy(1).await;
    proxy.arm(fault_proxy::Fault::DelayReply {
        pattern: b"L-lost-reply".to_vec(),
        delay: Duration::from_secs(3),
    });
    let answer = app
        .submit_idempotent(NAIROBI, "lost-reply-1", &one_loan("L-lost-reply"))
        .await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    let id = answer.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        answer.header("location"),
        Some(&*format!("/v1/reports/{id}"))
    );

    // The MIS retries with the key: the same report, not a second one.
    let again = app
        .submit_idempotent(NAIROBI, "lost-reply-1", &one_loan("L-lost-reply"))
        .await;
    assert_eq!(again.status, 202, "{}", again.text);
    assert_eq!(again.body["id"], id.as_str());
    assert_eq!(app.stream_entries(THREE_COL).await.len(), 2);
}

#[tokio::test]
async fn an_accept_cut_off_after_it_was_written_is_found_and_answered_202() {
    let (app, proxy) = app_behind_proxy(5).await;
    proxy.arm(fault_proxy::Fault::CutAfterRequest {
        pattern: b"L-cut-accept".to_vec(),
    });
    let answer = app.submit_raw(NAIROBI, &one_loan("L-cut-accept")).await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    assert_eq!(app.stream_entries(THREE_COL).await.len(), 2);
    let id = answer.body["id"].as_str().unwrap();
    assert_eq!(app.report(NAIROBI, id).await.status, 200);
}

// Items 1 and 6: the worker gives back what it did not send.

/// A rig and a worker whose store reaches Redis through a fault proxy, after one delivery (so
/// the scripts are loaded and a fault armed next hits the real BEGIN), and a new report with
/// `loan` waiting: the worker, the proxy and the report's id.
async fn proxied_worker_with_a_report(
    rig: &DeliveryRig,
    loan: &str,
) -> (repayment_gateway::delivery::Worker, FaultProxy, String) {
    let (store, proxy) = proxied_store(rig.app.redis(), Duration::from_secs(5)).await;
    let worker = rig.worker_on(store);
    rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    assert_eq!(rig.drain(&worker).await, 1);
    let id = rig
        .submit(NAIROBI, &serde_json::from_str(&one_loan(loan)).unwrap())
        .await;
    (worker, proxy, id)
}

#[tokio::test]
async fn a_worker_that_got_no_answer_to_begin_gives_the_batch_back_and_it_is_sent_once() {
    let rig = spawn_delivery_rig(Backend::Redis).await;
    let (worker, proxy, id) = proxied_worker_with_a_report(&rig, "L-7").await;
    proxy.arm(fault_proxy::Fault::CutAfterRequest {
        pattern: format!("batch:{id}.1").into_bytes(),
    });
    let round = worker.run_once().await.unwrap();
    assert_eq!((round.claimed, round.sent), (1, 0));
    assert_eq!(batch_states(&rig.report(&id).await), ["queued"]);
    assert_eq!(rig.sandbox.repayment_requests(), 1, "nothing sent for it");

    assert_eq!(rig.drain(&worker).await, 1);
    let report = rig.report(&id).await;
    assert_eq!(batch_states(&report), ["delivered"]);
    assert_eq!(
        report["batches"][0]["attempts"].as_array().unwrap().len(),
        1
    );
    assert_eq!(report["batches"][0]["attempts"][0]["number"], 1);
    assert_eq!(rig.sandbox.repayment_requests(), 2);
}

#[tokio::test]
async fn a_worker_does_not_send_when_slow_store_calls_ate_its_claim_deadline() {
    let rig = spawn_delivery_rig(Backend::Redis).await;
    let (worker, proxy, id) = proxied_worker_with_a_report(&rig, "L-8").await;
    // The rig's budget is claim deadline 8 s - margin 5 s = 3 s, and one Kiva call may take
    // 2 s: a 1.5 s store reply leaves too little.
    proxy.arm(fault_proxy::Fault::DelayReply {
        pattern: format!("batch:{id}.1").into_bytes(),
        delay: Duration::from_millis(1500),
    });
    let round = worker.run_once().await.unwrap();
    assert_eq!((round.claimed, round.sent), (1, 0));
    assert_eq!(rig.sandbox.repayment_requests(), 1, "not sent late");
    assert_eq!(batch_states(&rig.report(&id).await), ["queued"]);

    assert_eq!(rig.drain(&worker).await, 1);
    assert_eq!(batch_states(&rig.report(&id).await), ["delivered"]);
}

// Item 2: nothing Kiva sends stops the worker or parks a batch for years.

async fn hostile_retry_after_fails_the_batch_now(value: &str) {
    let rig = spawn_delivery_rig(Backend::Redis).await;
    let worker = rig.worker();
    let id = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    rig.sandbox.push_fault(Fault::Status {
        status: 429,
        retry_after: Some(value.to_owned()),
        body: String::new(),
    });
    let round = worker.run_once().await.unwrap();
    assert_eq!(round.sent, 1);
    let report = rig.report(&id).await;
    assert_eq!(batch_states(&report), ["failed"], "{report}");
    assert_eq!(report["status"], "needs_attention");
    let reason = report["batches"][0]["result"]["reason"].as_str().unwrap();
    assert!(reason.contains("age limit"), "{reason}");
    // The worker is still there for the next report.
    let next = rig.submit(NAIROBI, &three_column_report(1, "2")).await;
    rig.drain(&worker).await;
    assert_eq!(batch_states(&rig.report(&next).await), ["delivered"]);
}

#[tokio::test]
async fn a_retry_after_of_u64_max_seconds_fails_the_batch_instead_of_killing_the_worker() {
    hostile_retry_after_fails_the_batch_now("18446744073709551615").await;
}

#[tokio::test]
async fn a_retry_after_of_ten_years_fails_the_batch_now_instead_of_parking_it() {
    hostile_retry_after_fails_the_batch_now("315360000").await;
}

#[tokio::test]
async fn a_worker_that_panics_is_restarted_and_readiness_says_so_meanwhile() {
    let rig = spawn_delivery_rig(Backend::Redis).await;
    let gated = Arc::new(GatedStore::open(rig.app.store.clone()));
    gated.panic_on_claim.store(true, Ordering::SeqCst);
    let mut settings = rig.settings.clone();
    settings.delivery.enabled = true;
    settings.delivery.poll_interval_ms = 20;
    let app = spawn_app_with_settings(&settings, gated.clone());

    wait_until("readiness reports the dead worker", async || {
        let ready = app.get("/health/ready", None).await;
        ready.status == 503 && ready.body["worker"]["running"] == false
    })
    .await;
    gated.panic_on_claim.store(false, Ordering::SeqCst);
    let id = app.submit(NAIROBI, &three_column_report(1, "1")).await;
    let id = id.body["id"].as_str().unwrap().to_owned();
    wait_until("the restarted worker delivers", async || {
        app.report(HEAD_OFFICE, &id).await.body["status"] == "delivered"
    })
    .await;
    let ready = app.get("/health/ready", None).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert!(ready.body["worker"]["restarts"].as_u64().unwrap() >= 1);
}

// Item 3: Redis refusing commands while it fails over is "unavailable", and Kiva's answer is
// recorded once it takes writes again.

#[tokio::test]
async fn a_redis_turned_replica_gets_503_and_kivas_answer_is_recorded_after_failback() {
    let rig = spawn_delivery_rig(Backend::Redis).await;
    let gated = Arc::new(GatedStore::open(rig.app.store.clone()));
    let worker = Arc::new(rig.worker_on(gated.clone()));
    let id = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    rig.sandbox
        .push_fault(Fault::Stall(Duration::from_millis(500)));
    let running = tokio::spawn({
        let worker = worker.clone();
        async move { worker.run_once().await }
    });
    rig.sandbox.wait_for_repayment_requests(1, DEADLINE).await;
    let mut admin = rig.app.redis().connection().await;
    // A replica of a master that does not exist: reads work, writes get READONLY.
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(1)
        .query_async(&mut admin)
        .await
        .unwrap();

    tokio::time::timeout(DEADLINE, gated.finish_failed.notified())
        .await
        .expect("recording Kiva's answer is refused while Redis is read-only");
    let refused = rig.app.submit_raw(NAIROBI, &one_loan("L-9")).await;
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert_eq!(
        rig.app.get("/health/ready", None).await.status,
        200,
        "reads still work"
    );

    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut admin)
        .await
        .unwrap();
    let round = running.await.unwrap().unwrap();
    assert_eq!(round.sent, 1);
    let report = rig.report(&id).await;
    assert_eq!(batch_states(&report), ["delivered"]);
    assert!(report["batches"][0]["result"]["upload_id"].is_string());
    assert_eq!(rig.sandbox.repayment_requests(), 1);
}

// Item 5: what the store promises, and a Redis that can't keep it.

#[test]
fn redis_persistence_is_read_from_info_and_unsafe_settings_are_named() {
    let info = "# Server\r\nredis_version:7.0.15\r\n# Persistence\r\naof_enabled:0\r\n# Memory\r\nmaxmemory_policy:allkeys-lru\r\n";
    let p = Persistence::from_info(info, Some("everysec"));
    assert!(!p.supports_waitaof());
    let problems = p.problems();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("appendonly") && problems[1].contains("allkeys-lru"));
    assert!(p.durability(0).may_lose_acknowledged_writes);

    let info = "redis_version:7.2.4\r\naof_enabled:1\r\nmaxmemory_policy:noeviction\r\n";
    let p = Persistence::from_info(info, Some("everysec"));
    assert!(p.supports_waitaof() && p.problems().is_empty());
    assert!(!p.durability(0).may_lose_acknowledged_writes);
    let p = Persistence::from_info(&info.replace("7.2.4", "7.0.15"), Some("everysec"));
    assert!(!p.supports_waitaof());
    assert!(
        p.durability(0).may_lose_acknowledged_writes,
        "everysec without WAITAOF"
    );
    let p = Persistence::from_info(&info.replace("7.2.4", "7.0.15"), Some("always"));
    assert!(!p.durability(0).may_lose_acknowledged_writes);
}

#[tokio::test]
async fn readiness_reports_the_durability_of_each_store() {
    for backend in [Backend::Redis, Backend::Cluster, Backend::Embedded] {
        let app = spawn(backend).await;
        let ready = app.get("/health/ready", None).await;
        assert_eq!(ready.status, 200, "{}", ready.text);
        let durability = &ready.body["durability"];
        match backend {
            Backend::Redis => {
                assert_eq!(durability["backend"], "redis");
                assert_eq!(
                    durability["may_lose_acknowledged_writes"], true,
                    "no AOF here"
                );
            }
            Backend::Cluster => {
                // Read from every master (each has AOF with everysec).
                assert_eq!(durability["backend"], "redis");
                let level = durability["level"].as_str().unwrap();
                assert!(level.starts_with("AOF (appendfsync everysec)"), "{level}");
                assert_eq!(
                    durability["may_lose_acknowledged_writes"],
                    !level.contains("WAITAOF confirms")
                );
            }
            Backend::Embedded => {
                assert_eq!(durability["backend"], "embedded");
                assert_eq!(durability["may_lose_acknowledged_writes"], false);
            }
        }
    }
}

// Item 7: a key prefix is only a prefix.

#[tokio::test]
async fn a_key_prefix_containing_batch_still_retries_and_resends() {
    let redis = TestRedis::start().await;
    let store =
        Arc::new(RedisStore::new(&redis.url(), "mybatch", 8, Duration::from_secs(5)).unwrap());
    let rig = spawn_delivery_rig_on(redis, store).await;
    let worker = rig.worker();
    let id = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    rig.sandbox.push_fault(Fault::status(503, ""));
    worker.run_once().await.unwrap();
    assert_eq!(batch_states(&rig.report(&id).await), ["retry_wait"]);
    rig.clock.advance(Duration::from_secs(5));
    rig.drain(&worker).await;
    assert_eq!(batch_states(&rig.report(&id).await), ["delivered"]);

    let held = rig.submit(NAIROBI, &three_column_report(1, "2")).await;
    rig.sandbox.push_fault(Fault::status(500, ""));
    rig.drain(&worker).await;
    assert_eq!(batch_states(&rig.report(&held).await), ["held"]);
    let answer = rig
        .operate(HEAD_OFFICE, &format!("{held}.1"), "resend")
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    rig.drain(&worker).await;
    assert_eq!(batch_states(&rig.report(&held).await), ["delivered"]);
}

#[test]
fn a_key_prefix_with_pattern_characters_is_refused() {
    let toml = test_config("redis://127.0.0.1:6379").replace(
        &format!("key_prefix = \"{PREFIX}\""),
        "key_prefix = \"rg:{x}*\"",
    );
    let err = repayment_gateway::config::Settings::from_toml_str(&toml)
        .unwrap_err()
        .to_string();
    assert!(err.contains("store.key_prefix"), "{err}");
}

// Item 8: an operator's resend starts a fresh retry budget.

async fn a_resend_gives_a_batch_that_ran_out_of_attempts_a_fresh_budget(backend: Backend) {
    let rig = spawn_delivery_rig_with(backend, |s| s.delivery.max_attempts = 2).await;
    let worker = rig.worker();
    let id = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    for _ in 0..2 {
        rig.sandbox.push_fault(Fault::status(503, ""));
    }
    worker.run_once().await.unwrap();
    rig.clock.advance(Duration::from_secs(5));
    worker.run_once().await.unwrap();
    assert_eq!(batch_states(&rig.report(&id).await), ["failed"]);

    let answer = rig.operate(HEAD_OFFICE, &format!("{id}.1"), "resend").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(
        answer.body["result"].is_null(),
        "the old failure is not shown as current"
    );
    rig.sandbox.push_fault(Fault::status(503, ""));
    worker.run_once().await.unwrap();
    let report = rig.report(&id).await;
    assert_eq!(batch_states(&report), ["retry_wait"], "{report}");
    rig.clock.advance(Duration::from_secs(5));
    rig.drain(&worker).await;
    let report = rig.report(&id).await;
    assert_eq!(batch_states(&report), ["delivered"]);
    let numbers: Vec<u64> = report["batches"][0]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4], "the history is kept");
}

// Item 9: a late outcome can't overwrite an operator's decision, and a repeated one is
// recorded once.

fn end(state: BatchState, number: u32) -> AttemptEnd {
    AttemptEnd {
        state,
        result: BatchResult {
            reason: "late".into(),
            ..BatchResult::default()
        },
        attempt: Attempt {
            number,
            started_at: Utc::now(),
            duration_ms: 1,
            outcome: state,
            http_status: Some(503),
            error: None,
            kiva_body: None,
            upload_id: None,
        },
        retry_at: Some(Utc::now()),
        refused_by_kiva: 0,
    }
}

async fn a_late_outcome_does_not_overwrite_an_operators_decision(backend: Backend) {
    let rig = spawn_delivery_rig(backend).await;
    let store = rig.app.store.clone();
    let id = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    let first = store
        .claim_batches(&partner(), "first", 1, Duration::from_secs(60))
        .await
        .unwrap()
        .remove(0);
    let BeginAttempt::Send { attempt, .. } = store.begin_attempt(&first, Utc::now()).await.unwrap()
    else {
        panic!("the first worker sends");
    };
    // The first worker overruns its deadline: another takes the entry over and holds it.
    let second = store
        .claim_batches(&partner(), "second", 1, Duration::ZERO)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        store.begin_attempt(&second, Utc::now()).await.unwrap(),
        BeginAttempt::Held
    );
    let answer = rig
        .operate(HEAD_OFFICE, &format!("{id}.1"), "mark-delivered")
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);

    store
        .finish_attempt(&first, attempt, &end(BatchState::RetryWait, attempt))
        .await
        .unwrap();
    let report = rig.report(&id).await;
    assert_eq!(batch_states(&report), ["delivered"], "{report}");
    assert_eq!(report["status"], "delivered");
    assert_eq!(
        report["batches"][0]["attempts"].as_array().unwrap().len(),
        1,
        "the late attempt is still on record"
    );
    assert_eq!(
        store
            .promote_due_retries(&partner(), Utc::now())
            .await
            .unwrap(),
        0
    );
}

async fn a_repeated_finish_records_the_attempt_once(backend: Backend) {
    let rig = spawn_delivery_rig(backend).await;
    let store = rig.app.store.clone();
    let id = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    let claimed = store
        .claim_batches(&partner(), "only", 1, Duration::from_secs(60))
        .await
        .unwrap()
        .remove(0);
    let BeginAttempt::Send { attempt, .. } =
        store.begin_attempt(&claimed, Utc::now()).await.unwrap()
    else {
        panic!("sends");
    };
    let delivered = end(BatchState::Delivered, attempt);
    store
        .finish_attempt(&claimed, attempt, &delivered)
        .await
        .unwrap();
    store
        .finish_attempt(&claimed, attempt, &delivered)
        .await
        .unwrap();
    let report = rig.report(&id).await;
    assert_eq!(batch_states(&report), ["delivered"]);
    assert_eq!(
        report["batches"][0]["attempts"].as_array().unwrap().len(),
        1
    );
}

// Item 12: settled reports expire; nothing that still needs someone does.

async fn only_settled_reports_past_the_retention_period_are_purged(backend: Backend) {
    let rig = spawn_delivery_rig(backend).await;
    let worker = rig
        .worker()
        .with_retention(Duration::from_secs(400 * 24 * 3600));
    let delivered = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    rig.drain(&worker).await;
    let held = rig.submit(NAIROBI, &three_column_report(1, "2")).await;
    rig.sandbox.push_fault(Fault::status(500, ""));
    rig.drain(&worker).await;
    let queued = rig.submit(NAIROBI, &three_column_report(1, "3")).await;
    assert_eq!(batch_states(&rig.report(&held).await), ["held"]);

    assert_eq!(
        worker.purge_settled().await.unwrap(),
        0,
        "nothing is old yet"
    );
    rig.clock.advance(Duration::from_secs(401 * 24 * 3600));
    assert_eq!(worker.purge_settled().await.unwrap(), 1);

    assert_eq!(rig.app.report(HEAD_OFFICE, &delivered).await.status, 404);
    assert_eq!(rig.app.report(HEAD_OFFICE, &held).await.status, 200);
    assert_eq!(rig.app.report(HEAD_OFFICE, &queued).await.status, 200);
    let list = rig.app.get("/v1/reports", Some(HEAD_OFFICE)).await;
    assert_eq!(
        list.body["reports"].as_array().unwrap().len(),
        2,
        "{}",
        list.text
    );
    if backend == Backend::Redis {
        let keys = rig.app.redis_keys().await;
        assert!(
            !keys.iter().any(|k| k.contains(&delivered)),
            "every key of the purged report is gone: {keys:?}"
        );
    }
    // The queued one is still delivered afterwards.
    rig.drain(&worker).await;
    assert_eq!(batch_states(&rig.report(&queued).await), ["delivered"]);
}

#[tokio::test]
async fn a_report_purged_twice_is_deleted_once() {
    let rig = spawn_delivery_rig(Backend::Redis).await;
    let worker = rig
        .worker()
        .with_retention(Duration::from_secs(30 * 24 * 3600));
    rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    rig.drain(&worker).await;
    rig.clock.advance(Duration::from_secs(31 * 24 * 3600));
    let (a, b) = tokio::join!(worker.purge_settled(), worker.purge_settled());
    assert_eq!(a.unwrap() + b.unwrap(), 1);
}

on_both_stores!(
    a_resend_gives_a_batch_that_ran_out_of_attempts_a_fresh_budget,
    a_late_outcome_does_not_overwrite_an_operators_decision,
    a_repeated_finish_records_the_attempt_once,
    only_settled_reports_past_the_retention_period_are_purged,
);

#[tokio::test]
async fn a_redis_still_loading_its_data_gets_503_not_500_and_takes_reports_once_loaded() {
    let mut app = spawn_app_on(TestRedis::start().await, |_| {}).await;
    let first = app.submit_raw(NAIROBI, &one_loan("L-before")).await;
    assert_eq!(first.status, 202, "{}", first.text);
    app.redis_mut().restart_loading_slowly(20_000).await;

    let refused = app.submit_raw(NAIROBI, &one_loan("L-during")).await;
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert_eq!(refused.body["type"], "/problems/store-unavailable");
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert_eq!(app.get("/health/ready", None).await.status, 503);

    wait_until("Redis has loaded its data", async || {
        app.get("/health/ready", None).await.status == 200
    })
    .await;
    let accepted = app.submit_raw(NAIROBI, &one_loan("L-during")).await;
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    assert_eq!(
        app.stream_entries(THREE_COL).await.len(),
        2,
        "the first survived the restart"
    );
}

// Issue 22, item 13b: a body trickled in must not hold a large-body turn indefinitely.

#[tokio::test]
async fn a_body_trickled_past_the_read_deadline_gets_408_and_gives_its_turn_back() {
    let app = spawn_app_on(TestRedis::start().await, |s| {
        s.server.body_read_timeout_secs = 1;
    })
    .await;
    let host = app.address.trim_start_matches("http://").to_owned();
    let head = format!(
        "POST /v1/repayments HTTP/1.1\r\nHost: {host}\r\nX-Api-Key: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        plain_key(NAIROBI),
        1024 * 1024
    );
    // As many tricklers as there are large-body turns, all at once: each takes one.
    let turns = std::thread::available_parallelism().map_or(1, usize::from);
    let answers = futures_util::future::join_all(
        (0..turns).map(|_| answer_to_partial_request(&app.address, &head, b"{\"period\"")),
    )
    .await;
    for answer in answers {
        let (status, text) = answer.expect("the gateway gives up on the body, not the client");
        assert_eq!(status, 408, "{text}");
        assert!(text.contains("application/problem+json"), "{text}");
        assert!(text.contains("/problems/request-timeout"), "{text}");
    }
    // Every turn was given back: a large report (padded past 256 KiB) is taken at once.
    let large = format!("{}{}", one_loan("L-after-trickle"), " ".repeat(300 * 1024));
    let accepted = tokio::time::timeout(DEADLINE, app.submit_raw(NAIROBI, &large))
        .await
        .expect("a large-body turn is free");
    assert_eq!(accepted.status, 202, "{}", accepted.text);
}
