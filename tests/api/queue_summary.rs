//! The store's queue summary, behind the queue gauges of `/metrics`, against what the batches
//! themselves say, after every move a batch can make.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use repayment_gateway::domain::PartnerId;
use repayment_gateway::store::{
    Attempt, AttemptEnd, BatchResult, BatchState, BeginAttempt, ClaimedBatch, OperatorActionKind,
    QueueSummary, ReportStore,
};
use uuid::Uuid;

use crate::helpers::{
    Backend, DeliveryRig, HEAD_OFFICE, NAIROBI, PREFIX, THREE_COL, spawn_delivery_rig,
    three_column_report,
};

on_both_stores!(the_queue_summary_agrees_with_the_batches_after_every_move);

/// The summary the store's batches imply: every batch not delivered, counted in its state,
/// queued when its report was accepted or when an operator last resent it. Times are compared
/// to the millisecond, as the Redis store keeps them.
async fn summary_from_batches(rig: &DeliveryRig, reports: &[Uuid]) -> QueueSummary {
    let partner = PartnerId::parse(THREE_COL).unwrap();
    let mut summary = QueueSummary::default();
    for id in reports {
        let (report, batches) = rig.app.store.report(&partner, *id).await.unwrap().unwrap();
        for batch in batches {
            let queued_at = batch
                .operator_actions
                .iter()
                .rev()
                .find(|a| a.action == OperatorActionKind::Resend)
                .map_or(report.created_at, |a| a.at);
            summary.add(batch.state, 1, Some(millis(queued_at)));
        }
    }
    summary
}

fn millis(at: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(at.timestamp_millis()).unwrap()
}

async fn summary_read(store: &dyn ReportStore) -> QueueSummary {
    let mut summary = store
        .queue_summary(&PartnerId::parse(THREE_COL).unwrap())
        .await
        .unwrap();
    summary.oldest_queued_at = summary.oldest_queued_at.map(millis);
    summary.oldest_held_at = summary.oldest_held_at.map(millis);
    summary
}

fn attempt_end(state: BatchState, number: u32) -> AttemptEnd {
    AttemptEnd {
        state,
        result: BatchResult {
            reason: format!("the test says {state:?}"),
            ..BatchResult::default()
        },
        attempt: Attempt {
            number,
            started_at: Utc::now(),
            duration_ms: 1,
            outcome: state,
            http_status: Some(200),
            error: None,
            kiva_body: None,
            upload_id: None,
        },
        retry_at: (state == BatchState::RetryWait).then(|| Utc::now() + chrono::Duration::hours(1)),
        refused_by_kiva: 0,
    }
}

/// The queue gauges must not drift from the batches: the Redis store keeps an index by state
/// beside them, written in each script that moves a batch, so every move is checked here,
/// including those no worker round makes in `counters_and_queue_gauges_after_a_known_sequence`
/// (a begin whose answer was lost, a take-over, an operator's close).
async fn the_queue_summary_agrees_with_the_batches_after_every_move(backend: Backend) {
    let rig = spawn_delivery_rig(backend).await;
    let store = rig.app.store.clone();
    let partner = PartnerId::parse(THREE_COL).unwrap();
    let mut reports = Vec::new();
    // Six batches: five one-batch reports and one report of two (201 repayments).
    for count in [1, 1, 1, 1, 201] {
        let id = rig.submit(NAIROBI, &three_column_report(count, "1")).await;
        reports.push(id.parse::<Uuid>().unwrap());
    }
    let check = async |step: &str| {
        let expected = summary_from_batches(&rig, &reports).await;
        assert_eq!(summary_read(store.as_ref()).await, expected, "after {step}");
        expected
    };
    assert_eq!(check("the accepts").await.queued, 6);
    if backend == Backend::Redis {
        // The partner's first accept marks its index complete: no scrape walks its reports.
        let mut c = rig.app.redis().connection().await;
        let indexed: bool = redis::cmd("EXISTS")
            .arg(format!("{PREFIX}:{{{THREE_COL}}}:batches:indexed"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(indexed);
    }

    let mut claimed = store
        .claim_batches(&partner, "summary", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 6);
    let begin = async |c: &ClaimedBatch| match store.begin_attempt(c, Utc::now()).await.unwrap() {
        BeginAttempt::Send { attempt, .. } => attempt,
        other => panic!("{} is not sent: {other:?}", c.batch_id),
    };
    let sixth = claimed.pop().unwrap();
    let [first, second, third, fourth, fifth] = <[ClaimedBatch; 5]>::try_from(claimed).unwrap();

    let n = begin(&first).await;
    assert_eq!(check("a begin").await.sending, 1);
    store
        .finish_attempt(&first, n, &attempt_end(BatchState::RetryWait, n))
        .await
        .unwrap();
    assert_eq!(check("a retry_wait").await.retry_wait, 1);

    begin(&second).await;
    store.release_attempt(&second).await.unwrap();
    assert_eq!(check("a release").await.queued, 5);

    for (claimed, state) in [
        (&third, BatchState::Held),
        (&fourth, BatchState::Rejected),
        (&fifth, BatchState::Failed),
    ] {
        let n = begin(claimed).await;
        store
            .finish_attempt(claimed, n, &attempt_end(state, n))
            .await
            .unwrap();
        check(&format!("a {state:?}")).await;
    }

    // A worker that begins the sixth and never settles it: another takes it over and holds it.
    begin(&sixth).await;
    let over = store
        .claim_batches(&partner, "other", 10, Duration::ZERO)
        .await
        .unwrap();
    let taken = over.iter().find(|c| c.batch_id == sixth.batch_id).unwrap();
    assert_eq!(
        store.begin_attempt(taken, Utc::now()).await.unwrap(),
        BeginAttempt::Held
    );
    let taken_over = check("a take-over").await;
    assert_eq!((taken_over.held, taken_over.sending), (2, 0));

    // The operator resends one held batch (queued again, now) and closes the other.
    let resent = rig.operate(HEAD_OFFICE, &third.batch_id, "resend").await;
    assert_eq!(resent.status, 200, "{}", resent.text);
    check("a resend").await;
    let closed = rig
        .operate(HEAD_OFFICE, &sixth.batch_id, "mark-delivered")
        .await;
    assert_eq!(closed.status, 200, "{}", closed.text);
    let last = check("an operator's close").await;
    assert_eq!(
        (
            last.queued,
            last.retry_wait,
            last.held,
            last.rejected,
            last.failed
        ),
        (2, 1, 0, 1, 1)
    );

    if backend == Backend::Redis {
        // Data written before the index existed has none: the first read builds it, and a
        // stray entry in an index without its marker does not survive the build.
        let mut c = rig.app.redis().connection().await;
        let tag = format!("{PREFIX}:{{{THREE_COL}}}");
        let _: () = redis::cmd("DEL")
            .arg(format!("{tag}:batches:indexed"))
            .arg(format!("{tag}:batches:queued"))
            .arg(format!("{tag}:batches:failed"))
            .query_async(&mut c)
            .await
            .unwrap();
        let _: () = redis::cmd("ZADD")
            .arg(format!("{tag}:batches:held"))
            .arg(1)
            .arg("no-such-batch")
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(check("the index is built again").await, last);
    }
}
