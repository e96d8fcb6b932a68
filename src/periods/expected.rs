//! Kiva's expected loans at intake: which repayments of a report PA2 will ignore.
//!
//! Intake is the hot path and a snapshot can hold 50,000 loans, so each process keeps the
//! partner's snapshot as an index and asks the store only for its `taken_at` (a few bytes),
//! at most every `RECHECK`, reloading the whole snapshot only when it changed. That there is
//! no snapshot yet is kept as long: the bench found that read on every accept of a partner
//! without one (a store round trip per report).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{ColumnFormat, PartnerId, RepaymentReport};
use crate::intake::Violation;
use crate::store::{ReportStore, StoreError};

/// How stale a process's copy may be: a refresh shows in intake within this time.
const RECHECK: Duration = Duration::from_secs(10);

/// Loan id → (client id as Kiva knows it, status), for one partner's snapshot.
type Index = HashMap<String, Vec<(Option<String>, String)>>;

struct Cached {
    checked: Instant,
    /// `None`: the store had no snapshot when checked.
    snapshot: Option<(DateTime<Utc>, Arc<Index>)>,
}

#[derive(Default)]
pub struct ExpectedLoansCache {
    partners: Mutex<HashMap<PartnerId, Cached>>,
}

/// Whether intake could compare a report with Kiva's loans, and with which snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct ExpectedLoansCheck {
    /// False before the partner's first snapshot of Kiva's loans: nothing was compared.
    pub made: bool,
    /// When the snapshot compared with was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_taken_at: Option<DateTime<Utc>>,
    #[schema(example = "compared with Kiva's list of the partner's loans")]
    pub detail: String,
}

impl ExpectedLoansCache {
    /// The repayments of `report` whose loans Kiva does not expect, as warnings located by
    /// JSON Pointer, and whether the comparison could be made at all.
    pub async fn check(
        &self,
        store: &dyn ReportStore,
        report: &RepaymentReport,
    ) -> Result<(Vec<Violation>, ExpectedLoansCheck), StoreError> {
        let Some((taken_at, index)) = self.index(store, report.partner_id()).await? else {
            return Ok((
                Vec::new(),
                ExpectedLoansCheck {
                    made: false,
                    snapshot_taken_at: None,
                    detail: "not checked against Kiva's loans: no snapshot of them has been \
                             read yet (an admin can refresh it)"
                        .into(),
                },
            ));
        };
        let three_column = report.column_format() == ColumnFormat::ThreeColumn;
        let mut warnings = Vec::new();
        for (position, repayment) in report.repayments().iter().enumerate() {
            let loan = repayment.loan_id.as_str();
            let client = repayment.client_id.as_ref().map(|c| c.as_str());
            let status = index.get(loan).and_then(|known| {
                known
                    .iter()
                    .find(|(k, _)| !three_column || k.is_none() || k.as_deref() == client)
                    .map(|(_, status)| status.as_str())
            });
            let why = match status {
                Some("payingBack" | "defaulted") => continue,
                Some(status) => format!("Kiva lists loan {loan:?} as {status}"),
                None if three_column => format!(
                    "Kiva's list has no loan {loan:?} of client {:?}",
                    client.unwrap_or_default()
                ),
                None => format!("Kiva's list has no loan {loan:?}"),
            };
            warnings.push(Violation::new(
                format!("/repayments/{position}/loan_id"),
                format!(
                    "{why}: PA2 will ignore this repayment (Kiva expects repayments for loans \
                     payingBack or defaulted)"
                ),
            ));
        }
        Ok((
            warnings,
            ExpectedLoansCheck {
                made: true,
                snapshot_taken_at: Some(taken_at),
                detail: "compared with Kiva's list of the partner's loans".into(),
            },
        ))
    }

    /// Drops what this process knows of the partner's snapshot, so the next report reads it:
    /// a refresh made here shows in intake at once (one made by another process, within
    /// `RECHECK`).
    pub fn forget(&self, partner: &PartnerId) {
        self.partners.lock().unwrap().remove(partner);
    }

    async fn index(
        &self,
        store: &dyn ReportStore,
        partner: &PartnerId,
    ) -> Result<Option<(DateTime<Utc>, Arc<Index>)>, StoreError> {
        if let Some(cached) = self.partners.lock().unwrap().get(partner)
            && cached.checked.elapsed() < RECHECK
        {
            return Ok(cached.snapshot.clone());
        }
        let none = || Cached {
            checked: Instant::now(),
            snapshot: None,
        };
        let Some(taken_at) = store.expected_loans_taken_at(partner).await? else {
            self.partners
                .lock()
                .unwrap()
                .insert(partner.clone(), none());
            return Ok(None);
        };
        {
            let mut partners = self.partners.lock().unwrap();
            if let Some(cached) = partners.get_mut(partner)
                && let Some((cached_at, index)) = &cached.snapshot
                && *cached_at == taken_at
            {
                let index = index.clone();
                cached.checked = Instant::now();
                return Ok(Some((taken_at, index)));
            }
        }
        let Some(snapshot) = store.expected_loans(partner).await? else {
            self.partners
                .lock()
                .unwrap()
                .insert(partner.clone(), none());
            return Ok(None);
        };
        let mut index = Index::new();
        for loan in snapshot.loans {
            index
                .entry(loan.internal_loan_id)
                .or_default()
                .push((loan.internal_client_id, loan.status));
        }
        let index = Arc::new(index);
        self.partners.lock().unwrap().insert(
            partner.clone(),
            Cached {
                checked: Instant::now(),
                snapshot: Some((snapshot.taken_at, index.clone())),
            },
        );
        Ok(Some((snapshot.taken_at, index)))
    }
}
