//! The store's contract for Kiva's expected loans: a snapshot replaced whole, the refresh lock
//! (one holder, expiry, unlock only by its holder) and the recorded refresh status, on both
//! stores.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use repayment_gateway::domain::PartnerId;
use repayment_gateway::store::{ExpectedLoan, ExpectedLoansSnapshot, RefreshStatus};

use crate::helpers::*;

fn partner(id: &str) -> PartnerId {
    PartnerId::parse(id).unwrap()
}

fn loans(count: usize, status: &str) -> Vec<ExpectedLoan> {
    (0..count)
        .map(|i| ExpectedLoan {
            internal_loan_id: format!("L-{status}-{i}"),
            internal_client_id: (i % 2 == 0).then(|| format!("C-{i}")),
            kiva_id: (i % 3 != 0).then_some(2_000_000 + i as u64),
            status: status.to_owned(),
            delinquent: (i % 5 == 0).then_some(i % 10 == 0),
        })
        .collect()
}

fn snapshot(
    id: &str,
    taken_at: DateTime<Utc>,
    pages: u32,
    loans: Vec<ExpectedLoan>,
) -> ExpectedLoansSnapshot {
    ExpectedLoansSnapshot {
        partner_id: partner(id),
        taken_at,
        pages,
        loans,
    }
}

async fn a_snapshot_is_replaced_whole_and_kept_per_partner(backend: Backend) {
    let app = spawn(backend).await;
    let store = &app.store;
    let three = partner(THREE_COL);
    assert_eq!(store.expected_loans(&three).await.unwrap(), None);
    assert_eq!(store.expected_loans_taken_at(&three).await.unwrap(), None);

    // Sub-second precision survives the round trip: `taken_at` is compared for changes.
    let first_at = Utc.timestamp_opt(1_790_000_000, 123_456_789).unwrap();
    let mut first_loans = loans(40, "payingBack");
    first_loans.extend(loans(3, "ended"));
    let first = snapshot(THREE_COL, first_at, 1, first_loans);
    store.replace_expected_loans(&first).await.unwrap();
    assert_eq!(
        store.expected_loans(&three).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store.expected_loans_taken_at(&three).await.unwrap(),
        Some(first_at)
    );
    // Another partner's snapshot is its own.
    assert_eq!(store.expected_loans(&partner(TWO_COL)).await.unwrap(), None);

    // A smaller list replaces the larger one entirely: no loan of the first is left over.
    let second_at = first_at + chrono::Duration::minutes(60);
    let second = snapshot(THREE_COL, second_at, 2, loans(5, "defaulted"));
    store.replace_expected_loans(&second).await.unwrap();
    let read = store.expected_loans(&three).await.unwrap().unwrap();
    assert_eq!(read, second);
    assert!(read.loans.iter().all(|l| l.status == "defaulted"));
    assert_eq!(
        store.expected_loans_taken_at(&three).await.unwrap(),
        Some(second_at)
    );

    // An empty list is a snapshot too (the partner has no active loans), not "no snapshot".
    let empty = snapshot(
        THREE_COL,
        second_at + chrono::Duration::minutes(1),
        1,
        vec![],
    );
    store.replace_expected_loans(&empty).await.unwrap();
    assert_eq!(store.expected_loans(&three).await.unwrap(), Some(empty));
}

async fn the_refresh_lock_has_one_holder_and_only_it_unlocks(backend: Backend) {
    let app = spawn(backend).await;
    let store = &app.store;
    let three = partner(THREE_COL);
    let minute = Duration::from_secs(60);

    assert!(!store.refresh_status(&three).await.unwrap().running);
    assert!(
        store
            .lock_refresh(&three, "holder-a", minute)
            .await
            .unwrap()
    );
    assert!(
        !store
            .lock_refresh(&three, "holder-b", minute)
            .await
            .unwrap()
    );
    assert!(store.refresh_status(&three).await.unwrap().running);
    // Locks are per partner.
    assert!(
        store
            .lock_refresh(&partner(TWO_COL), "holder-b", minute)
            .await
            .unwrap()
    );

    // Someone else's unlock leaves the lock where it is.
    store.unlock_refresh(&three, "holder-b").await.unwrap();
    assert!(
        !store
            .lock_refresh(&three, "holder-c", minute)
            .await
            .unwrap()
    );
    assert!(store.refresh_status(&three).await.unwrap().running);

    store.unlock_refresh(&three, "holder-a").await.unwrap();
    assert!(!store.refresh_status(&three).await.unwrap().running);
    assert!(
        store
            .lock_refresh(&three, "holder-c", minute)
            .await
            .unwrap()
    );
    store.unlock_refresh(&three, "holder-c").await.unwrap();

    // A holder that died without unlocking does not block the partner past its TTL.
    assert!(
        store
            .lock_refresh(&three, "holder-dead", Duration::from_millis(100))
            .await
            .unwrap()
    );
    assert!(
        !store
            .lock_refresh(&three, "holder-d", minute)
            .await
            .unwrap()
    );
    wait_until("the dead holder's lock expires", async || {
        store
            .lock_refresh(&three, "holder-d", minute)
            .await
            .unwrap()
    })
    .await;
    // The dead holder's late unlock does not free the new holder's lock.
    store.unlock_refresh(&three, "holder-dead").await.unwrap();
    assert!(store.refresh_status(&three).await.unwrap().running);
}

async fn the_refresh_status_is_recorded_and_running_comes_from_the_lock(backend: Backend) {
    let app = spawn(backend).await;
    let store = &app.store;
    let three = partner(THREE_COL);
    assert_eq!(
        store.refresh_status(&three).await.unwrap(),
        RefreshStatus::default()
    );

    let started = Utc.timestamp_opt(1_790_000_000, 5_000_000).unwrap();
    let failed = RefreshStatus {
        // Whatever a caller passes, `running` is the lock's to say.
        running: true,
        last_started_at: Some(started),
        last_succeeded_at: Some(started - chrono::Duration::hours(1)),
        last_error: Some("Kiva answered 503 on page 2 of 4".into()),
    };
    store.record_refresh(&three, &failed).await.unwrap();
    assert_eq!(
        store.refresh_status(&three).await.unwrap(),
        RefreshStatus {
            running: false,
            ..failed.clone()
        }
    );
    assert!(
        store
            .lock_refresh(&three, "holder", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert_eq!(
        store.refresh_status(&three).await.unwrap(),
        RefreshStatus {
            running: true,
            ..failed
        }
    );
    assert_eq!(
        store.refresh_status(&partner(TWO_COL)).await.unwrap(),
        RefreshStatus::default()
    );
}

/// 50,000 loans: the size of a large partner. Replacing and reading must stay cheap (the
/// period view reads the snapshot); the timings are printed for the record.
async fn a_snapshot_of_50000_loans_round_trips(backend: Backend) {
    let app = spawn(backend).await;
    let store = &app.store;
    let mut all = loans(45_000, "payingBack");
    all.extend(loans(5_000, "defaulted"));
    let big = snapshot(THREE_COL, Utc::now(), 167, all);
    // Once to warm up (connections, statements), then measured.
    store.replace_expected_loans(&big).await.unwrap();
    let start = Instant::now();
    store.replace_expected_loans(&big).await.unwrap();
    let replaced = start.elapsed();
    let start = Instant::now();
    let read = store.expected_loans(&partner(THREE_COL)).await.unwrap();
    let read_in = start.elapsed();
    let start = Instant::now();
    let taken_at = store
        .expected_loans_taken_at(&partner(THREE_COL))
        .await
        .unwrap();
    let taken_at_in = start.elapsed();
    eprintln!(
        "{backend:?}: 50,000 loans replaced in {replaced:?}, read in {read_in:?}, taken_at in {taken_at_in:?}"
    );
    assert_eq!(read.as_ref().map(|s| s.loans.len()), Some(50_000));
    assert_eq!(read, Some(big.clone()));
    assert_eq!(taken_at, Some(big.taken_at));
}

on_both_stores!(
    a_snapshot_is_replaced_whole_and_kept_per_partner,
    the_refresh_lock_has_one_holder_and_only_it_unlocks,
    the_refresh_status_is_recorded_and_running_comes_from_the_lock,
    a_snapshot_of_50000_loans_round_trips,
);
