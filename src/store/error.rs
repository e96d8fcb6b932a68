//! How a store call fails, the same for every capability and backend.

use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store can't be reached now; nothing was written. Worth retrying later.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// Another request took over this idempotency key (the claim expired); nothing was written.
    #[error("the idempotency key was claimed by another request")]
    ClaimLost,
    /// Loans of the report are in other accepted reports of the same period (and the report
    /// is not a correction); nothing was written.
    #[error("{} loan(s) of the report were already reported in this period", .0.len())]
    AlreadyReported(Vec<EarlierReport>),
    /// A branch's correction repeats loans another branch reported in the period (positions in
    /// the refused report); nothing was written. Only an admin key may correct those.
    #[error("{} loan(s) of the correction were reported by another branch", .0.len())]
    OtherBranchLoans(Vec<usize>),
    /// A write was sent but no answer came back (a timeout, a connection cut after the
    /// request was written): it may or may not have been applied. Never to be reported as
    /// "nothing was stored".
    #[error("the store did not confirm a write; it may have been applied: {0}")]
    OutcomeUnknown(String),
    /// The write was made, but not acknowledged by the replicas (`store.replica_acks`) or
    /// the AOF in time: a failover (or crash) may still lose it. Never to be answered as a
    /// plain success, nor as "nothing was stored".
    #[error("the store did not confirm the write on enough replicas: {0}")]
    NotReplicated(String),
    #[error("store error: {0}")]
    Other(String),
}

/// Where a loan of a refused report was reported before in the same period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlierReport {
    /// Index of the repayment in the refused report.
    pub position: usize,
    pub report_id: Uuid,
    /// Its index in the earlier report; `None` when that report is no longer kept (purged
    /// after the retention, while the period's loan index lives on).
    pub earlier_position: Option<usize>,
    /// The branch of the earlier report, when it is still kept and was read (the listed
    /// loans'): who may be told which report it is.
    pub branch: Option<String>,
}
