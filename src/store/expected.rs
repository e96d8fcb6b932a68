//! Kiva's view of the partner's loans (the loans list), kept per partner so the gateway can tell
//! which loans Kiva expects repayments for, and which reported loans PA2 will ignore.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::PartnerId;

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
