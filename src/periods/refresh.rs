//! Reads Kiva's loans list into the partner's expected-loans snapshot. Read-only towards Kiva.
//!
//! One refresh per partner at a time across every gateway process (the store's refresh lock).
//! The snapshot is replaced only after a complete read; a failed refresh keeps the previous
//! snapshot and records why.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::PartnerId;
use crate::kiva::KivaClient;
use crate::kiva::client::{KivaLoan, MAX_LOANS_PAGE};
use crate::periods::expected::ExpectedLoansCache;
use crate::store::{
    EXPECTED_STATUSES, ExpectedLoan, ExpectedLoansSnapshot, RefreshStatus, ReportStore, StoreError,
};

/// The statuses read: those Kiva expects repayments for, then those PA2 ignores a repayment
/// for, so that such a loan can be named with its status rather than as unknown. Kiva's
/// `status` filter takes one value, so each is read on its own.
pub const STATUSES_READ: [&str; 4] = [
    EXPECTED_STATUSES[0],
    EXPECTED_STATUSES[1],
    "ended",
    "refunded",
];

/// How long a refresh may hold the partner's lock: a holder that died frees it after this.
/// A 50,000-loan partner is 170 pages; at Kiva's slowest, well under this.
pub const LOCK_TTL: Duration = Duration::from_secs(30 * 60);

/// Pages read for one status at most: 3 million loans, far above any partner.
const MAX_PAGES_PER_STATUS: u32 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The snapshot was replaced.
    Refreshed { loans: usize, pages: u32 },
    /// Another refresh of this partner holds the lock (in this process or another).
    AlreadyRunning,
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Kiva failed, or its list could not be read completely; the previous snapshot is kept.
    #[error("{0}")]
    Incomplete(String),
}

/// A refresh that holds the partner's lock: `run` it (it unlocks when done).
pub struct LockedRefresh {
    store: Arc<dyn ReportStore>,
    partner: PartnerId,
    holder: String,
    /// This process's intake copy, told when the snapshot is replaced.
    intake: Option<Arc<ExpectedLoansCache>>,
    /// `reconcile.max_expected_loans`.
    max_loans: usize,
}

/// Takes the partner's refresh lock; `None` when another refresh holds it. The snapshot will
/// hold at most `max_loans` loans (`reconcile.max_expected_loans`).
pub async fn begin(
    store: Arc<dyn ReportStore>,
    partner: &PartnerId,
    max_loans: usize,
) -> Result<Option<LockedRefresh>, StoreError> {
    let holder = format!("refresh-{}", Uuid::new_v4());
    if !store.lock_refresh(partner, &holder, LOCK_TTL).await? {
        return Ok(None);
    }
    Ok(Some(LockedRefresh {
        store,
        partner: partner.clone(),
        holder,
        intake: None,
        max_loans,
    }))
}

/// Takes the lock (or says another refresh runs), reads the whole list, replaces the snapshot.
pub async fn refresh_expected_loans(
    store: Arc<dyn ReportStore>,
    kiva: &KivaClient,
    partner: &PartnerId,
    max_loans: usize,
) -> Result<RefreshOutcome, RefreshError> {
    match begin(store, partner, max_loans).await? {
        Some(locked) => locked.run(kiva).await,
        None => Ok(RefreshOutcome::AlreadyRunning),
    }
}

impl LockedRefresh {
    /// Tells this process's intake when the snapshot is replaced, before the lock is given
    /// back: whoever sees the refresh ended sees its snapshot in intake too.
    pub fn telling(mut self, intake: Arc<ExpectedLoansCache>) -> Self {
        self.intake = Some(intake);
        self
    }

    pub async fn run(self, kiva: &KivaClient) -> Result<RefreshOutcome, RefreshError> {
        let result = self.refresh(kiva).await;
        self.release().await;
        result
    }

    async fn release(&self) {
        // The lock also expires on its own, so a failure to give it back only delays the next
        // refresh.
        if let Err(error) = self.store.unlock_refresh(&self.partner, &self.holder).await {
            tracing::warn!(partner = %self.partner, %error, "could not release the refresh lock");
        }
    }

    async fn refresh(&self, kiva: &KivaClient) -> Result<RefreshOutcome, RefreshError> {
        let previous = self.store.refresh_status(&self.partner).await?;
        let started = Utc::now();
        self.store
            .record_refresh(
                &self.partner,
                &RefreshStatus {
                    last_started_at: Some(started),
                    ..previous.clone()
                },
            )
            .await?;
        match read_all(kiva, &self.partner, self.max_loans).await {
            Ok((loans, pages)) => {
                let count = loans.len();
                let snapshot = ExpectedLoansSnapshot {
                    partner_id: self.partner.clone(),
                    taken_at: started,
                    pages,
                    loans,
                };
                self.store.replace_expected_loans(&snapshot).await?;
                if let Some(intake) = &self.intake {
                    intake.forget(&self.partner);
                }
                self.store
                    .record_refresh(
                        &self.partner,
                        &RefreshStatus {
                            running: false,
                            last_started_at: Some(started),
                            last_succeeded_at: Some(Utc::now()),
                            last_error: None,
                        },
                    )
                    .await?;
                tracing::info!(partner = %self.partner, loans = count, pages, "expected loans refreshed");
                Ok(RefreshOutcome::Refreshed {
                    loans: count,
                    pages,
                })
            }
            Err(reason) => {
                let reason = format!("{reason}; the previous snapshot is kept");
                tracing::warn!(partner = %self.partner, %reason, "expected loans refresh failed");
                self.store
                    .record_refresh(
                        &self.partner,
                        &RefreshStatus {
                            running: false,
                            last_started_at: Some(started),
                            last_succeeded_at: previous.last_succeeded_at,
                            last_error: Some(reason.clone()),
                        },
                    )
                    .await?;
                Err(RefreshError::Incomplete(reason))
            }
        }
    }
}

/// Every loan in `STATUSES_READ`, and the number of pages requested; at most `max_loans`.
async fn read_all(
    kiva: &KivaClient,
    partner: &PartnerId,
    max_loans: usize,
) -> Result<(Vec<ExpectedLoan>, u32), String> {
    let mut loans = Vec::new();
    // A loan that changes status mid-read can show up under both statuses: it is kept once,
    // as first read (expected statuses are read first, so a coordinator is told to report it).
    let mut seen = HashSet::new();
    let mut pages = 0;
    for status in STATUSES_READ {
        let room = max_loans - loans.len();
        for loan in read_status(kiva, partner, status, room, max_loans, &mut pages).await? {
            if seen.insert((
                loan.internal_loan_id.clone(),
                loan.internal_client_id.clone(),
            )) {
                loans.push(ExpectedLoan {
                    internal_loan_id: loan.internal_loan_id,
                    internal_client_id: loan.internal_client_id,
                    kiva_id: loan.kiva_id,
                    status: loan.status,
                    delinquent: loan.delinquent,
                });
            }
        }
    }
    Ok((loans, pages))
}

/// The list for one status, of at most `room` loans, page by page; each page starts where the
/// loans received so far end. Kiva's paging is not trusted: the read goes on past a full page
/// even at the total (a total too small would otherwise cut the list), stops at an empty page,
/// a short page at or past the total, or a page that adds no loan not already read (a list
/// that ignores `offset` repeats itself); then the distinct loans read must be exactly the
/// total. Fails, too, when Kiva fails or when the total moves by more than a few loans while
/// reading (offsets then no longer point at the same loans).
async fn read_status(
    kiva: &KivaClient,
    partner: &PartnerId,
    status: &str,
    room: usize,
    max_loans: usize,
    pages: &mut u32,
) -> Result<Vec<KivaLoan>, String> {
    let too_many = |many: String| {
        format!(
            "status {status}: {many}, more loans than the snapshot may hold ({max_loans}, \
             reconcile.max_expected_loans)"
        )
    };
    let mut loans: Vec<KivaLoan> = Vec::new();
    let mut keys: HashSet<(String, Option<String>)> = HashSet::new();
    let mut received_so_far: u64 = 0;
    let mut first_total = None;
    let mut last_total = 0;
    for page_number in 1..=MAX_PAGES_PER_STATUS {
        let offset = u32::try_from(received_so_far)
            .map_err(|_| too_many(format!("{received_so_far} loans sent")))?;
        *pages += 1;
        let page = kiva
            .loans(partner, &[status], offset, MAX_LOANS_PAGE)
            .await
            .map_err(|e| format!("status {status}, page {page_number}: {e}"))?;
        let total = *first_total.get_or_insert(page.total_records);
        last_total = page.total_records;
        if total > room as u64 {
            return Err(too_many(format!("Kiva says {total} loans")));
        }
        if changed_too_much(total, page.total_records) {
            return Err(format!(
                "status {status}: Kiva's list went from {total} to {} loans while it was read",
                page.total_records
            ));
        }
        let received = page.loans.len();
        received_so_far += received as u64;
        let mut new = 0;
        for loan in page.loans {
            if keys.insert((
                loan.internal_loan_id.clone(),
                loan.internal_client_id.clone(),
            )) {
                if loans.len() == room {
                    return Err(too_many(format!("over {room} loans sent")));
                }
                loans.push(loan);
                new += 1;
            }
        }
        let short = received < MAX_LOANS_PAGE as usize;
        if received == 0 || new == 0 || (short && received_so_far >= page.total_records) {
            break;
        }
        if page_number == MAX_PAGES_PER_STATUS {
            return Err(format!(
                "status {status}: more than {MAX_PAGES_PER_STATUS} pages"
            ));
        }
    }
    if loans.len() as u64 != last_total {
        return Err(format!(
            "status {status}: Kiva's total says {last_total} loans, its pages held {} distinct \
             loans (a list that ignores offset, or a wrong total)",
            loans.len()
        ));
    }
    Ok(loans)
}

/// A loan or two changing status during a read is normal; more means the pages no longer
/// line up.
fn changed_too_much(first: u64, now: u64) -> bool {
    first.abs_diff(now) > (first / 100).max(5)
}

/// The schedule `serve` and `worker` run: every partner refreshed each `every`.
pub struct Scheduler {
    pub store: Arc<dyn ReportStore>,
    pub kiva: Arc<KivaClient>,
    pub partners: Vec<PartnerId>,
    pub every: Duration,
    /// `reconcile.max_expected_loans`.
    pub max_loans: usize,
    /// The intake copy of the process, when it takes reports (`serve`, not `worker`).
    pub intake: Option<Arc<ExpectedLoansCache>>,
}

impl Scheduler {
    pub async fn run(self, shutdown: CancellationToken) {
        schedule(self, shutdown).await
    }
}

/// Refreshes each partner whose last refresh started `every` ago or more, checking every
/// minute (or `every`, if shorter), until `shutdown`. Several processes may run it: the lock and
/// the recorded start time keep it to one refresh per partner per period.
async fn schedule(scheduler: Scheduler, shutdown: CancellationToken) {
    let Scheduler {
        store,
        kiva,
        partners,
        every,
        max_loans,
        intake,
    } = scheduler;
    let tick = every.min(Duration::from_secs(60));
    loop {
        for partner in &partners {
            if shutdown.is_cancelled() {
                return;
            }
            let due = match store.refresh_status(partner).await {
                Ok(status) => status
                    .last_started_at
                    .is_none_or(|at| (Utc::now() - at).to_std().unwrap_or_default() >= every),
                Err(error) => {
                    tracing::warn!(%partner, %error, "cannot read the refresh status");
                    false
                }
            };
            if !due {
                continue;
            }
            let locked = match begin(store.clone(), partner, max_loans).await {
                Ok(Some(locked)) => match &intake {
                    Some(intake) => locked.telling(intake.clone()),
                    None => locked,
                },
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%partner, %error, "cannot take the refresh lock");
                    continue;
                }
            };
            let stopped = tokio::select! {
                result = locked.refresh(&kiva) => {
                    if let Err(error) = result {
                        tracing::warn!(%partner, %error, "scheduled refresh of expected loans failed");
                    }
                    false
                }
                // Abandoned mid-read: nothing was replaced.
                () = shutdown.cancelled() => true,
            };
            locked.release().await;
            if stopped {
                return;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_loans_changing_status_is_not_a_wild_change() {
        assert!(!changed_too_much(1000, 1005));
        assert!(!changed_too_much(1000, 990));
        assert!(changed_too_much(1000, 1011));
        assert!(!changed_too_much(0, 5));
        assert!(changed_too_much(0, 6));
        assert!(changed_too_much(50_000, 49_000));
        assert!(!changed_too_much(50_000, 49_500));
    }
}
