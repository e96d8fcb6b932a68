//! One partner's trouble or backlog never holds up another partner's deliveries.

use std::sync::Arc;

use repayment_gateway::domain::PartnerId;
use serde_json::json;

use crate::helpers::*;

fn two_column_report() -> serde_json::Value {
    json!({"period": "2026-10", "correction": true, "repayments": [{"loan_id": "L-0", "amount": "1"}]})
}

fn uploads_of(rig: &DeliveryRig, partner: &str) -> usize {
    rig.sandbox
        .uploads()
        .iter()
        .filter(|u| u.partner_id == partner)
        .count()
}

/// The first partner in configuration order refuses writes: the second's batch still goes in
/// the same round, and the round is not an error for the loop to back off from.
async fn a_partner_whose_keys_refuse_writes_does_not_pause_the_others(backend: Backend) {
    let rig = spawn_delivery_rig(backend).await;
    rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    let other = rig.submit(TWO_COL_BRANCH, &two_column_report()).await;
    let store = Arc::new(GatedStore::open(rig.app.store.clone()));
    *store.failing_partner.lock().unwrap() = Some(PartnerId::parse(THREE_COL).unwrap());
    let worker = rig.worker_on(store.clone());

    let round = worker
        .run_once()
        .await
        .expect("one partner's error is not the round's");

    assert_eq!(round.sent, 1, "{round:?}");
    assert_eq!(uploads_of(&rig, TWO_COL), 1);
    assert_eq!(
        rig.app.report(NETWORK_ADMIN, &other).await.body["status"],
        "delivered"
    );
    assert_eq!(uploads_of(&rig, THREE_COL), 0);

    *store.failing_partner.lock().unwrap() = None;
    rig.drain(&worker).await;
    assert_eq!(
        uploads_of(&rig, THREE_COL),
        1,
        "delivered once its keys answer"
    );
}

/// The second partner fails after the first's batches were claimed: those are sent in this
/// round, not stranded until the claim deadline.
async fn batches_claimed_before_another_partner_fails_are_sent_in_the_same_round(backend: Backend) {
    let rig = spawn_delivery_rig(backend).await;
    let first = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    rig.submit(TWO_COL_BRANCH, &two_column_report()).await;
    let store = Arc::new(GatedStore::open(rig.app.store.clone()));
    *store.failing_partner.lock().unwrap() = Some(PartnerId::parse(TWO_COL).unwrap());
    let worker = rig.worker_on(store.clone());

    let round = worker.run_once().await.expect("the round goes on");

    assert_eq!(round.sent, 1, "{round:?}");
    assert_eq!(rig.report(&first).await["status"], "delivered");
}

/// With every slot wanted by a partner's backlog, another partner's first batch still goes
/// within one round of it being queued.
async fn a_backlog_at_one_partner_does_not_delay_anothers_first_batch_beyond_one_round(
    backend: Backend,
) {
    for concurrency in [1, 2, 4] {
        let rig = spawn_delivery_rig_with(backend, |s| s.delivery.concurrency = concurrency).await;
        for _ in 0..12 {
            rig.submit(NAIROBI, &three_column_report(1, "1")).await;
        }
        let worker = rig.worker();
        // The backlog is already being worked on when the other partner's report arrives.
        worker.run_once().await.unwrap();
        rig.submit(TWO_COL_BRANCH, &two_column_report()).await;

        worker.run_once().await.unwrap();
        if uploads_of(&rig, TWO_COL) == 0 {
            worker.run_once().await.unwrap();
        }

        assert_eq!(
            uploads_of(&rig, TWO_COL),
            1,
            "concurrency {concurrency}: the second partner waited behind the first's backlog \
             ({} of its uploads went first)",
            uploads_of(&rig, THREE_COL)
        );
        assert!(
            uploads_of(&rig, THREE_COL) < 12,
            "the backlog was not simply drained first"
        );
        rig.drain(&worker).await;
        assert_eq!(uploads_of(&rig, THREE_COL), 12);
        assert_eq!(uploads_of(&rig, TWO_COL), 1);
    }
}

/// Spare slots are not wasted: with one partner idle, the other's backlog fills them all.
async fn slots_another_partner_does_not_need_go_to_the_backlog(backend: Backend) {
    let rig = spawn_delivery_rig_with(backend, |s| s.delivery.concurrency = 4).await;
    for _ in 0..6 {
        rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    }
    let worker = rig.worker();

    let round = worker.run_once().await.unwrap();

    assert_eq!(round.claimed, 4, "{round:?}");
    assert_eq!(round.sent, 4);
}

on_both_stores!(
    a_partner_whose_keys_refuse_writes_does_not_pause_the_others,
    batches_claimed_before_another_partner_fails_are_sent_in_the_same_round,
    a_backlog_at_one_partner_does_not_delay_anothers_first_batch_beyond_one_round,
    slots_another_partner_does_not_need_go_to_the_backlog,
);
