//! Kiva's expected-loans snapshot as the period view reads it: a partner's snapshot can hold
//! 50,000 loans, and every view of a month (API or page) needs it, so each process keeps the
//! last one read and asks the store only for its `taken_at` (a few bytes) before each use,
//! reading the whole snapshot again only when a refresh replaced it. Never stale: the check
//! is made on every use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::domain::PartnerId;
use crate::store::{ExpectedLoansSnapshot, ReportStore, StoreError};

#[derive(Default)]
pub struct SnapshotCache {
    partners: Mutex<HashMap<PartnerId, Arc<ExpectedLoansSnapshot>>>,
}

impl SnapshotCache {
    /// The partner's current snapshot, `None` before the first.
    pub async fn get(
        &self,
        store: &dyn ReportStore,
        partner: &PartnerId,
    ) -> Result<Option<Arc<ExpectedLoansSnapshot>>, StoreError> {
        let Some(taken_at) = store.expected_loans_taken_at(partner).await? else {
            self.lock().remove(partner);
            return Ok(None);
        };
        if let Some(kept) = self.lock().get(partner).filter(|s| s.taken_at == taken_at) {
            return Ok(Some(kept.clone()));
        }
        let Some(read) = store.expected_loans(partner).await? else {
            self.lock().remove(partner);
            return Ok(None);
        };
        let read = Arc::new(read);
        // Two readers racing a refresh may each read a snapshot: the newer one stays.
        let mut partners = self.lock();
        let keep = partners
            .get(partner)
            .is_none_or(|kept| kept.taken_at <= read.taken_at);
        if keep {
            partners.insert(partner.clone(), read.clone());
        }
        Ok(Some(read))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PartnerId, Arc<ExpectedLoansSnapshot>>> {
        self.partners.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
