use std::time::Duration;

use repayment_gateway::sandbox::Fault;
use serde_json::json;

use crate::helpers::*;

fn expected_upload(range: std::ops::Range<usize>, amount: &str, with_client: bool) -> String {
    let items: Vec<String> = range
        .map(|i| {
            if with_client {
                format!(r#"{{"loan_id":"L-{i}","client_id":"C-{i}","amount":{amount}}}"#)
            } else {
                format!(r#"{{"loan_id":"L-{i}","amount":{amount}}}"#)
            }
        })
        .collect();
    format!(r#"{{"repayments":[{}]}}"#, items.join(","))
}

async fn a_450_repayment_report_becomes_exactly_three_uploads_with_the_exact_json(
    backend: Backend,
) {
    let rig = spawn_delivery_rig(backend).await;
    let id = rig
        .submit(NAIROBI, &three_column_report(450, "10.05"))
        .await;

    let sent = rig.drain(&rig.worker()).await;

    assert_eq!(sent, 3);
    let uploads = rig.sandbox.uploads();
    assert_eq!(uploads.len(), 3);
    let mut bodies: Vec<&str> = uploads.iter().map(|u| u.body.as_str()).collect();
    bodies.sort_by_key(|b| b.len());
    let mut expected = [
        expected_upload(0..200, "10.05", true),
        expected_upload(200..400, "10.05", true),
        expected_upload(400..450, "10.05", true),
    ];
    expected.sort_by_key(|b| b.len());
    assert_eq!(
        bodies,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(uploads.iter().all(|u| u.partner_id == THREE_COL));

    let report = rig.report(&id).await;
    assert_eq!(report["status"], "delivered");
    assert_eq!(
        batch_states(&report),
        ["delivered", "delivered", "delivered"]
    );
    let batch = &report["batches"][0];
    assert!(batch["result"]["upload_id"].is_string(), "{batch}");
    assert_eq!(batch["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(batch["attempts"][0]["http_status"], 200);
    assert_eq!(batch["repayments"][0]["state"], "accepted");
}

async fn a_two_column_partners_uploads_carry_no_client_id(backend: Backend) {
    let rig = spawn_delivery_rig(backend).await;
    let body = json!({"period": "2026-10", "repayments": [
        {"loan_id": "L-0", "client_id": "C-0", "amount": "25.00"},
        {"loan_id": "L-1", "amount": 1234567.891}
    ]});
    rig.submit(TWO_COL_BRANCH, &body).await;

    rig.drain(&rig.worker()).await;

    let uploads = rig.sandbox.uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].partner_id, TWO_COL);
    assert_eq!(
        uploads[0].body,
        r#"{"repayments":[{"loan_id":"L-0","amount":25.00},{"loan_id":"L-1","amount":1234567.891}]}"#
    );
}

async fn one_token_serves_many_batches_and_a_401_triggers_exactly_one_refresh(backend: Backend) {
    let rig = spawn_delivery_rig(backend).await;
    let worker = rig.worker();
    rig.submit(NAIROBI, &three_column_report(450, "1")).await;
    rig.drain(&worker).await;
    assert_eq!(rig.sandbox.uploads().len(), 3);
    assert_eq!(rig.sandbox.tokens_issued(), 1);

    rig.sandbox.revoke_tokens();
    let id = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    rig.drain(&worker).await;

    assert_eq!(rig.sandbox.tokens_issued(), 2);
    assert_eq!(rig.sandbox.uploads().len(), 4);
    assert_eq!(rig.report(&id).await["status"], "delivered");
}

async fn with_the_token_endpoint_down_a_batch_waits_and_is_delivered_once_it_is_back(
    backend: Backend,
) {
    let rig = spawn_delivery_rig(backend).await;
    let worker = rig.worker();
    let id = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    rig.sandbox.push_token_fault(Fault::Status {
        status: 503,
        retry_after: None,
        body: "maintenance".into(),
    });

    worker.run_once().await.unwrap();

    let report = rig.report(&id).await;
    assert_eq!(batch_states(&report), ["retry_wait"]);
    assert_eq!(report["status"], "delivering");
    assert!(report["batches"][0]["next_attempt_at"].is_string());
    assert_eq!(
        rig.sandbox.repayment_requests(),
        0,
        "nothing was sent without a token"
    );

    rig.clock.advance(Duration::from_secs(2));
    rig.drain(&worker).await;

    assert_eq!(rig.report(&id).await["status"], "delivered");
    assert_eq!(rig.sandbox.uploads().len(), 1);
}

async fn a_503_then_200_is_delivered_with_one_upload(backend: Backend) {
    let rig = spawn_delivery_rig(backend).await;
    let worker = rig.worker();
    let id = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    rig.sandbox.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
        body: "{}".into(),
    });

    worker.run_once().await.unwrap();
    assert_eq!(batch_states(&rig.report(&id).await), ["retry_wait"]);
    rig.clock.advance(Duration::from_secs(2));
    rig.drain(&worker).await;

    let report = rig.report(&id).await;
    assert_eq!(report["status"], "delivered");
    assert_eq!(rig.sandbox.uploads().len(), 1);
    assert_eq!(rig.sandbox.repayment_requests(), 2);
    let attempts = report["batches"][0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["http_status"], 503);
    assert_eq!(attempts[0]["outcome"], "retry_wait");
    assert_eq!(attempts[1]["http_status"], 200);
}

async fn a_429_with_retry_after_2_is_not_retried_sooner(backend: Backend) {
    let rig = spawn_delivery_rig(backend).await;
    let worker = rig.worker();
    let id = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    rig.sandbox.push_fault(Fault::Status {
        status: 429,
        retry_after: Some("2".into()),
        body: "slow down".into(),
    });

    worker.run_once().await.unwrap();
    rig.clock.advance(Duration::from_millis(1_900));
    rig.drain(&worker).await;
    assert_eq!(
        rig.sandbox.repayment_requests(),
        1,
        "retried before Retry-After"
    );
    assert_eq!(batch_states(&rig.report(&id).await), ["retry_wait"]);

    rig.clock.advance(Duration::from_millis(200));
    rig.drain(&worker).await;

    assert_eq!(rig.sandbox.repayment_requests(), 2);
    assert_eq!(rig.report(&id).await["status"], "delivered");
}

async fn a_500_is_held_never_resent_and_an_operator_resends_or_closes_it(backend: Backend) {
    let rig = spawn_delivery_rig(backend).await;
    let worker = rig.worker();
    let first = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    rig.sandbox.push_fault(Fault::Status {
        status: 500,
        retry_after: None,
        body: "oops".into(),
    });
    rig.drain(&worker).await;
    rig.clock.advance(Duration::from_secs(3600));
    rig.drain(&worker).await;

    let report = rig.report(&first).await;
    assert_eq!(report["status"], "needs_attention");
    assert_eq!(batch_states(&report), ["held"]);
    assert_eq!(report["batches"][0]["repayments"][0]["state"], "held");
    assert_eq!(
        rig.sandbox.repayment_requests(),
        1,
        "a held batch is never resent by itself"
    );
    let attention = rig
        .app
        .get("/v1/reports?status=needs_attention", Some(HEAD_OFFICE))
        .await;
    assert_eq!(attention.body["reports"].as_array().unwrap().len(), 1);

    let batch = format!("{first}.1");
    assert_eq!(
        rig.operate(NAIROBI, &batch, "resend").await.status,
        403,
        "branch keys may not"
    );
    let resent = rig.operate(HEAD_OFFICE, &batch, "resend").await;
    assert_eq!(resent.status, 200, "{}", resent.text);
    assert_eq!(resent.body["state"], "queued");
    assert_eq!(resent.body["operator_actions"][0]["action"], "resend");
    assert_eq!(resent.body["operator_actions"][0]["by"], HEAD_OFFICE);
    assert_eq!(resent.body["operator_actions"][0]["from_state"], "held");
    rig.drain(&worker).await;
    assert_eq!(rig.report(&first).await["status"], "delivered");
    assert_eq!(rig.sandbox.uploads().len(), 1);
    assert_eq!(
        rig.operate(HEAD_OFFICE, &batch, "resend").await.status,
        409,
        "delivered is final"
    );

    let second = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    rig.sandbox.push_fault(Fault::Status {
        status: 502,
        retry_after: None,
        body: String::new(),
    });
    rig.drain(&worker).await;
    let closed = rig
        .operate(HEAD_OFFICE, &format!("{second}.1"), "mark-delivered")
        .await;
    assert_eq!(closed.status, 200, "{}", closed.text);
    assert_eq!(closed.body["state"], "delivered");
    assert_eq!(
        closed.body["operator_actions"][0]["action"],
        "mark_delivered"
    );
    rig.drain(&worker).await;
    assert_eq!(rig.report(&second).await["status"], "delivered");
    assert_eq!(rig.sandbox.uploads().len(), 1, "closing sends nothing");
    assert_eq!(
        rig.operate(HEAD_OFFICE, "no-such-batch", "resend")
            .await
            .status,
        404
    );
}

async fn a_4xx_is_rejected_with_kivas_answer(backend: Backend) {
    let rig = spawn_delivery_rig(backend).await;
    let id = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    rig.sandbox.push_fault(Fault::Status {
        status: 422,
        retry_after: None,
        body: r#"{"code":"invalid","message":"bad batch"}"#.into(),
    });
    rig.drain(&rig.worker()).await;

    let report = rig.report(&id).await;
    assert_eq!(batch_states(&report), ["rejected"]);
    assert_eq!(report["status"], "needs_attention");
    assert_eq!(report["batches"][0]["result"]["kiva_status"], 422);
    assert!(
        report["batches"][0]["attempts"][0]["kiva_body"]
            .as_str()
            .unwrap()
            .contains("bad batch")
    );
    assert_eq!(rig.sandbox.repayment_requests(), 1);
}

async fn kiva_stalling_past_the_timeout_leaves_the_batch_held_after_exactly_one_request(
    backend: Backend,
) {
    let rig = spawn_delivery_rig(backend).await;
    let id = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    rig.sandbox.push_fault(Fault::Stall(Duration::from_secs(3)));

    rig.drain(&rig.worker()).await;

    let report = rig.report(&id).await;
    assert_eq!(batch_states(&report), ["held"]);
    assert!(report["batches"][0]["attempts"][0]["error"].is_string());
    assert_eq!(rig.sandbox.repayment_requests(), 1);
}

async fn a_dropped_connection_is_an_unknown_outcome_and_held(backend: Backend) {
    let rig = spawn_delivery_rig(backend).await;
    let id = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    rig.sandbox.push_fault(Fault::DropConnection);
    rig.drain(&rig.worker()).await;
    assert_eq!(batch_states(&rig.report(&id).await), ["held"]);
    assert_eq!(rig.sandbox.repayment_requests(), 1);
}

async fn a_partner_that_allows_it_gets_unknown_outcomes_resent(backend: Backend) {
    let rig = spawn_delivery_rig_with(backend, |s| {
        s.partners[0].resend_on_unknown_outcome = true;
    })
    .await;
    let worker = rig.worker();
    let id = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    rig.sandbox.push_fault(Fault::Status {
        status: 500,
        retry_after: None,
        body: String::new(),
    });
    worker.run_once().await.unwrap();
    assert_eq!(batch_states(&rig.report(&id).await), ["retry_wait"]);
    rig.clock.advance(Duration::from_secs(2));
    rig.drain(&worker).await;
    assert_eq!(rig.report(&id).await["status"], "delivered");
}

async fn a_worker_aborted_after_writing_sending_leaves_the_batch_held_never_resent(
    backend: Backend,
) {
    let rig = spawn_delivery_rig(backend).await;
    let id = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    rig.sandbox
        .push_fault(Fault::Stall(Duration::from_secs(30)));
    let first = std::sync::Arc::new(rig.worker());
    let running = tokio::spawn({
        let first = first.clone();
        async move { first.run_once().await }
    });
    rig.sandbox.wait_for_repayment_requests(1, DEADLINE).await;
    running.abort();
    assert_eq!(batch_states(&rig.report(&id).await), ["sending"]);

    let second = rig.worker();
    wait_until("the batch is taken over and held", async || {
        second.run_once().await.unwrap();
        batch_states(&rig.report(&id).await) == ["held"]
    })
    .await;

    let report = rig.report(&id).await;
    assert_eq!(report["status"], "needs_attention");
    assert!(
        report["batches"][0]["result"]["reason"]
            .as_str()
            .unwrap()
            .contains("stopped")
    );
    assert_eq!(rig.sandbox.repayment_requests(), 1, "never resent");
    rig.drain(&second).await;
    assert_eq!(rig.sandbox.repayment_requests(), 1);
}

/// The outcome of an upload was never recorded (its worker stopped, or its FINISH went to a
/// node that had failed over): the held batch still shows the attempt and when it began,
/// the time an operator searches PA2 with.
async fn a_batch_held_on_take_over_records_the_attempt_and_when_it_began(backend: Backend) {
    let rig = spawn_delivery_rig(backend).await;
    let id = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    rig.sandbox
        .push_fault(Fault::Stall(Duration::from_secs(30)));
    let began = repayment_gateway::delivery::Clock::now(&*rig.clock);
    let first = std::sync::Arc::new(rig.worker());
    let running = tokio::spawn({
        let first = first.clone();
        async move { first.run_once().await }
    });
    rig.sandbox.wait_for_repayment_requests(1, DEADLINE).await;
    running.abort();
    rig.clock.advance(Duration::from_secs(600));

    let second = rig.worker();
    wait_until("the batch is taken over and held", async || {
        second.run_once().await.unwrap();
        batch_states(&rig.report(&id).await) == ["held"]
    })
    .await;

    let report = rig.report(&id).await;
    let attempts = report["batches"][0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{report}");
    assert_eq!(attempts[0]["number"], 1);
    assert_eq!(attempts[0]["outcome"], "held");
    let started: chrono::DateTime<chrono::Utc> =
        attempts[0]["started_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        started.timestamp_millis(),
        began.timestamp_millis(),
        "when the upload began, not when it was found"
    );
    assert!(
        attempts[0]["error"].as_str().unwrap().contains("PA2"),
        "{report}"
    );
}

async fn problems_kiva_reports_per_loan_show_on_each_repayment(backend: Backend) {
    let rig = spawn_delivery_rig(backend).await;
    rig.sandbox.set_loan_status(THREE_COL, "L-1", "ended");
    rig.sandbox
        .warn_on_loan(THREE_COL, "L-2", "repayment larger than expected");
    let id = rig.submit(NAIROBI, &three_column_report(3, "5")).await;

    rig.drain(&rig.worker()).await;

    let report = rig.report(&id).await;
    // Every batch delivered, but Kiva refused a loan: not plain `delivered`.
    assert_eq!(report["status"], "delivered_with_problems");
    assert_eq!(report["refused_by_kiva"], 1);
    let counts = json!({"accepted": 1, "rejected_by_kiva": 1, "warning": 1});
    assert_eq!(report["repayment_states"], counts);
    assert_eq!(report["batches"][0]["repayment_states"], counts);
    let repayments = &report["batches"][0]["repayments"];
    assert_eq!(repayments[0]["state"], "accepted");
    assert_eq!(repayments[1]["state"], "rejected_by_kiva");
    assert_eq!(repayments[1]["problems"][0]["severity"], "error");
    assert_eq!(repayments[2]["state"], "warning");
    assert_eq!(repayments[2]["problems"][0]["severity"], "warning");

    // The list finds it by status and by "has loans refused by Kiva"; a clean report is not.
    let clean = rig
        .submit(NAIROBI, &json!({"period": "2026-07", "repayments": [{"loan_id": "L-3", "client_id": "C-3", "amount": 1}]}))
        .await;
    rig.drain(&rig.worker()).await;
    assert_eq!(rig.report(&clean).await["status"], "delivered");
    for query in ["refused_by_kiva=true", "status=delivered_with_problems"] {
        let list = rig
            .app
            .get(&format!("/v1/reports?{query}"), Some(HEAD_OFFICE))
            .await;
        let ids: Vec<&str> = list.body["reports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [id.as_str()], "{query}: {}", list.text);
    }
}

async fn mark_delivered_records_the_upload_id_and_note_given(backend: Backend) {
    let rig = spawn_delivery_rig(backend).await;
    let id = rig.submit(NAIROBI, &three_column_report(1, "5")).await;
    rig.sandbox.push_fault(Fault::status(500, ""));
    rig.drain(&rig.worker()).await;
    let batch = format!("{id}.1");
    let post = |body: &'static str| {
        rig.app.send(
            rig.app
                .client
                .post(format!(
                    "{}/v1/batches/{batch}/mark-delivered",
                    rig.app.address
                ))
                .header("X-Api-Key", plain_key(HEAD_OFFICE))
                .header("Content-Type", "application/json")
                .body(body),
        )
    };
    let bad = post(r#"{"upload":"1"}"#).await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert_eq!(
        batch_states(&rig.report(&id).await),
        ["held"],
        "a refused body changes nothing"
    );

    let done = post(r#"{"upload_id": "884213", "note": "found in PA2, 12 Nov"}"#).await;
    assert_eq!(done.status, 200, "{}", done.text);
    let report = rig.report(&id).await;
    let b = &report["batches"][0];
    assert_eq!(b["state"], "delivered");
    assert_eq!(b["result"]["upload_id"], "884213");
    let action = &b["operator_actions"][0];
    assert_eq!(action["action"], "mark_delivered");
    assert_eq!(action["upload_id"], "884213");
    assert_eq!(action["note"], "found in PA2, 12 Nov");
    assert_eq!(action["by"], HEAD_OFFICE);
    assert_eq!(rig.sandbox.repayment_requests(), 1, "nothing sent");
}

async fn an_array_shaped_answer_is_read_as_well(backend: Backend) {
    let rig = spawn_delivery_rig(backend).await;
    rig.sandbox
        .set_response_shape(repayment_gateway::sandbox::ResponseShape::Array);
    rig.sandbox.set_loan_status(THREE_COL, "L-0", "ended");
    let id = rig.submit(NAIROBI, &three_column_report(1, "5")).await;
    rig.drain(&rig.worker()).await;
    let report = rig.report(&id).await;
    assert_eq!(
        report["batches"][0]["repayments"][0]["state"],
        "rejected_by_kiva"
    );
    assert!(report["batches"][0]["result"]["upload_id"].is_string());
}

async fn two_thousand_reports_drained_by_four_workers_are_each_uploaded_exactly_once(
    backend: Backend,
) {
    let rig = spawn_delivery_rig(backend).await;
    let mut ids = Vec::with_capacity(2_000);
    for chunk in (0..2_000).collect::<Vec<usize>>().chunks(50) {
        let answers = futures_util::future::join_all(chunk.iter().map(|i| {
            let body = json!({"period": "2026-10", "repayments": [{"loan_id": format!("L-{i}"), "client_id": format!("C-{i}"), "amount": "1"}]});
            let app = &rig.app;
            async move { app.submit(NAIROBI, &body).await }
        }))
        .await;
        for answer in answers {
            assert_eq!(answer.status, 202);
            ids.push(answer.body["id"].as_str().unwrap().to_owned());
        }
    }

    let workers: Vec<_> = (0..4).map(|_| rig.worker()).collect();
    let sent: usize = futures_util::future::join_all(workers.iter().map(|w| rig.drain(w)))
        .await
        .into_iter()
        .sum();

    let uploads = rig.sandbox.uploads();
    assert_eq!(sent, 2_000);
    assert_eq!(uploads.len(), 2_000);
    let mut loans: Vec<String> = uploads
        .iter()
        .map(|u| {
            u.json["repayments"][0]["loan_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    loans.sort();
    loans.dedup();
    assert_eq!(loans.len(), 2_000, "every batch exactly once");
    // The sandbox knows 500 of these loans: the reports with the others are delivered, with
    // the loan refused by Kiva.
    let mut delivered = 0;
    for status in ["delivered", "delivered_with_problems"] {
        let mut cursor = String::new();
        loop {
            let page = rig
                .app
                .get(
                    &format!("/v1/reports?status={status}&limit=200&cursor={cursor}"),
                    Some(NAIROBI),
                )
                .await;
            delivered += page.body["reports"].as_array().unwrap().len();
            match page.body["next_cursor"].as_str() {
                Some(next) => cursor = next.to_owned(),
                None => break,
            }
        }
    }
    assert_eq!(delivered, 2_000);
}

#[tokio::test]
async fn a_redis_restart_mid_run_delivers_every_report_exactly_once() {
    let mut rig = spawn_delivery_rig_on_persistent_redis().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let body = json!({"period": "2026-10", "repayments": [{"loan_id": format!("L-{i}"), "client_id": format!("C-{i}"), "amount": "1"}]});
        ids.push(rig.submit(NAIROBI, &body).await);
    }
    let worker = rig.worker();
    assert_eq!(worker.run_once().await.unwrap().sent, 4);

    rig.app.redis_mut().stop();
    assert!(worker.run_once().await.is_err(), "no work without Redis");
    rig.app.redis_mut().restart().await;
    rig.drain(&worker).await;

    assert_eq!(rig.sandbox.uploads().len(), 20);
    for id in &ids {
        assert_eq!(rig.report(id).await["status"], "delivered");
    }
}

#[tokio::test]
async fn an_answer_that_arrives_while_redis_is_down_is_recorded_once_it_is_back() {
    let mut rig = spawn_delivery_rig_on_persistent_redis().await;
    let id = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    let store = std::sync::Arc::new(GatedStore::new(std::sync::Arc::new(redis_store(
        rig.app.redis(),
    ))));
    let worker = std::sync::Arc::new(rig.worker_on(store.clone()));
    rig.sandbox.set_latency(Duration::from_millis(200));
    let running = tokio::spawn({
        let worker = worker.clone();
        async move { worker.run_once().await }
    });

    // Kiva has the request; Redis goes away before its answer can be recorded.
    rig.sandbox.wait_for_repayment_requests(1, DEADLINE).await;
    rig.app.redis_mut().stop();
    tokio::time::timeout(DEADLINE, store.finish_failed.notified())
        .await
        .expect("the worker tried to record the outcome");
    rig.app.redis_mut().restart().await;
    let round = tokio::time::timeout(DEADLINE, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    assert_eq!(round.sent, 1);
    assert_eq!(rig.report(&id).await["status"], "delivered");
    rig.drain(&worker).await;
    assert_eq!(rig.sandbox.repayment_requests(), 1, "recorded, not resent");
    assert_eq!(rig.sandbox.uploads().len(), 1);
}

#[tokio::test]
async fn a_redis_that_lost_everything_gets_its_delivery_group_back() {
    let mut rig = spawn_delivery_rig(Backend::Redis).await;
    let worker = rig.worker();
    rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    rig.drain(&worker).await;
    rig.app.redis_mut().stop();
    rig.app.redis_mut().restart().await;

    let id = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    rig.drain(&worker).await;

    assert_eq!(rig.report(&id).await["status"], "delivered");
    assert_eq!(rig.sandbox.uploads().len(), 2);
}

on_both_stores!(
    a_batch_held_on_take_over_records_the_attempt_and_when_it_began,
    mark_delivered_records_the_upload_id_and_note_given,
    a_450_repayment_report_becomes_exactly_three_uploads_with_the_exact_json,
    a_two_column_partners_uploads_carry_no_client_id,
    one_token_serves_many_batches_and_a_401_triggers_exactly_one_refresh,
    with_the_token_endpoint_down_a_batch_waits_and_is_delivered_once_it_is_back,
    a_503_then_200_is_delivered_with_one_upload,
    a_429_with_retry_after_2_is_not_retried_sooner,
    a_500_is_held_never_resent_and_an_operator_resends_or_closes_it,
    a_4xx_is_rejected_with_kivas_answer,
    kiva_stalling_past_the_timeout_leaves_the_batch_held_after_exactly_one_request,
    a_dropped_connection_is_an_unknown_outcome_and_held,
    a_partner_that_allows_it_gets_unknown_outcomes_resent,
    a_worker_aborted_after_writing_sending_leaves_the_batch_held_never_resent,
    problems_kiva_reports_per_loan_show_on_each_repayment,
    an_array_shaped_answer_is_read_as_well,
    two_thousand_reports_drained_by_four_workers_are_each_uploaded_exactly_once,
);
