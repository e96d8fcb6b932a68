//! A period's reports, and Kiva's view of the partner's loans (the loans list), kept per
//! partner so the gateway can tell which loans Kiva expects repayments for, and which reported
//! loans PA2 will ignore; with the lock and status of its refresh.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::batch::Batch;
use super::error::StoreError;
use super::reports::Report;
use crate::domain::{PartnerId, Period};

/// The statuses of loans Kiva expects a repayment for every period.
pub const EXPECTED_STATUSES: [&str; 2] = ["payingBack", "defaulted"];

/// One loan as Kiva's loans list shows it (only what the gateway uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExpectedLoan {
    #[schema(example = "L-1042970")]
    pub internal_loan_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "C-184729")]
    pub internal_client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = 2400101)]
    pub kiva_id: Option<u64>,
    /// `payingBack`, `defaulted`, `ended`, ... as Kiva says.
    #[schema(example = "payingBack")]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delinquent: Option<bool>,
}

impl ExpectedLoan {
    /// Kiva expects a repayment for this loan every period.
    pub fn is_expected(&self) -> bool {
        EXPECTED_STATUSES.contains(&self.status.as_str())
    }
}

/// A complete read of the partner's loans list, replaced as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpectedLoansSnapshot {
    pub partner_id: PartnerId,
    pub taken_at: DateTime<Utc>,
    /// Pages requested from Kiva to build it.
    pub pages: u32,
    /// Every loan read, expected or not (those in other statuses name why PA2 ignores a loan).
    pub loans: Vec<ExpectedLoan>,
}

/// What the last refreshes did, for the status endpoint and the period view.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RefreshStatus {
    /// A refresh holds the partner's lock now (in any gateway process).
    pub running: bool,
    pub last_started_at: Option<DateTime<Utc>>,
    pub last_succeeded_at: Option<DateTime<Utc>>,
    /// Set when the last refresh failed (the previous snapshot is kept); cleared by a success.
    pub last_error: Option<String>,
}

#[async_trait::async_trait]
pub trait Periods: Send + Sync + 'static {
    /// Every report of the period (of one branch, when given), each with its batches, oldest
    /// first.
    async fn period_reports(
        &self,
        partner: &PartnerId,
        period: Period,
        branch: Option<&str>,
    ) -> Result<Vec<(Report, Vec<Batch>)>, StoreError>;

    /// The periods the partner has reports for, newest first.
    async fn periods(&self, partner: &PartnerId) -> Result<Vec<Period>, StoreError>;

    // Kiva's expected loans (see above): a snapshot per partner, and the refresh lock.

    /// Replaces the partner's snapshot atomically (readers see the old one or the new one,
    /// never a mix).
    async fn replace_expected_loans(
        &self,
        snapshot: &ExpectedLoansSnapshot,
    ) -> Result<(), StoreError>;

    async fn expected_loans(
        &self,
        partner: &PartnerId,
    ) -> Result<Option<ExpectedLoansSnapshot>, StoreError>;

    /// Just `taken_at` (cheap: lets a process cache the snapshot and reload it only when it
    /// changed).
    async fn expected_loans_taken_at(
        &self,
        partner: &PartnerId,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Takes the partner's refresh lock for `ttl` if nobody holds it; true when taken.
    /// `holder` is unique.
    async fn lock_refresh(
        &self,
        partner: &PartnerId,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Gives the lock back, only if `holder` still holds it.
    async fn unlock_refresh(&self, partner: &PartnerId, holder: &str) -> Result<(), StoreError>;

    async fn record_refresh(
        &self,
        partner: &PartnerId,
        status: &RefreshStatus,
    ) -> Result<(), StoreError>;

    /// The last recorded status, with `running` from the lock.
    async fn refresh_status(&self, partner: &PartnerId) -> Result<RefreshStatus, StoreError>;
}
