//! What a Redis Cluster adds to the store's contract (the contract itself runs on the cluster
//! through `on_both_stores!`): the cluster client resends a command after a dropped connection,
//! so every write script must be safe to run twice.

use std::time::Duration;

use repayment_gateway::domain::PartnerId;
use repayment_gateway::store::{BatchDoc, ReportQuery};
use uuid::Uuid;

use crate::helpers::*;

/// The accept of a report that is stored already is the same accept resent (report ids are
/// never reused): it is answered `ok` and writes nothing twice. Before, the resend queued
/// every batch a second time (and, for loans with a period, could be refused as "already
/// reported" by the very report it had stored).
async fn an_accept_run_twice_is_answered_ok_and_queues_each_batch_once(backend: Backend) {
    let app = spawn(backend).await;
    let answer = app.submit(NAIROBI, &three_column_report(450, "1.50")).await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    let id = Uuid::parse_str(answer.body["id"].as_str().unwrap()).unwrap();
    let partner = PartnerId::parse(THREE_COL).unwrap();
    let (report, batches) = app.store.report(&partner, id).await.unwrap().unwrap();
    let docs: Vec<BatchDoc> = batches
        .iter()
        .map(|b| serde_json::from_value(serde_json::to_value(b).unwrap()).unwrap())
        .collect();
    let before = app.stored().await;

    app.store
        .accept(&report, &docs, None, Duration::from_secs(60))
        .await
        .expect("the resent accept is answered as the first was");

    assert_eq!(
        app.stored().await,
        before,
        "nothing is stored or queued twice"
    );
    assert_eq!(app.stream_entries(THREE_COL).await.len(), 3);
    let page = app
        .store
        .reports(
            &partner,
            &ReportQuery {
                limit: 100,
                ..ReportQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.reports.len(), 1);
    assert_eq!(page.reports[0], report);
}

#[tokio::test]
async fn on_redis_an_accept_run_twice_is_answered_ok_and_queues_each_batch_once() {
    an_accept_run_twice_is_answered_ok_and_queues_each_batch_once(Backend::Redis).await
}

#[tokio::test]
async fn on_a_cluster_an_accept_run_twice_is_answered_ok_and_queues_each_batch_once() {
    an_accept_run_twice_is_answered_ok_and_queues_each_batch_once(Backend::Cluster).await
}
