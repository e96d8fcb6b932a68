//! The not-reported gauge: how many loans Kiva expects a repayment for are in no report of
//! the partner's current month, the number PA2 shows the coordinator as "M expected" minus
//! what it will see reported.
//!
//! The current month is the newest month the partner has reports for, not after this
//! calendar month (a mistyped future month must not hide the month being closed). The count
//! is the period view's own (`periods::view::build`, as `GET /v1/periods/{period}` and the web
//! page show it), so the gauge and the page can't disagree. Building it reads the whole month,
//! so each process rebuilds it when the month or Kiva's snapshot changes (two cheap reads per
//! scrape tell) and otherwise at most once a minute: new reports show within a minute, and an
//! alert on this gauge fires over hours, not seconds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, Utc};

use super::view::{self, PeriodInput};
use crate::domain::{ColumnFormat, PartnerId, Period};
use crate::metrics::Metrics;
use crate::store::{ReportStore, StoreError};

/// How long one count serves scrapes while its month and snapshot stay the same.
pub const READ_EVERY: Duration = Duration::from_secs(60);

/// What a count was made of, and the count.
#[derive(Clone, Copy)]
struct Reading {
    at: Instant,
    period: Period,
    taken_at: DateTime<Utc>,
    not_reported: Option<usize>,
}

pub struct NotReported {
    formats: HashMap<PartnerId, ColumnFormat>,
    stale_after: Duration,
    readings: tokio::sync::Mutex<HashMap<PartnerId, Reading>>,
}

impl NotReported {
    pub fn new(formats: HashMap<PartnerId, ColumnFormat>, stale_after: Duration) -> Self {
        Self {
            formats,
            stale_after,
            readings: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Sets each partner's gauge. Returns false when the store could not be read: the series
    /// is then left out, as the queue gauges are (an old number would pass for today's).
    pub async fn update(
        &self,
        store: &dyn ReportStore,
        partners: &[PartnerId],
        metrics: &Metrics,
    ) -> bool {
        // Held across the reads: concurrent scrapes wait for one count instead of each
        // reading the month.
        let mut readings = self.readings.lock().await;
        let mut store_up = true;
        for partner in partners {
            let previous = readings.remove(partner);
            let reading = match self.read(store, partner, previous).await {
                Ok(reading) => reading,
                Err(error) => {
                    store_up = false;
                    tracing::warn!(partner = %partner, %error, "metrics: not-reported count not read");
                    None
                }
            };
            metrics.set_not_reported(
                partner,
                previous.map(|r| r.period),
                reading.and_then(|r| Some((r.period, r.not_reported?))),
            );
            if let Some(reading) = reading {
                readings.insert(partner.clone(), reading);
            }
        }
        store_up
    }

    async fn read(
        &self,
        store: &dyn ReportStore,
        partner: &PartnerId,
        previous: Option<Reading>,
    ) -> Result<Option<Reading>, StoreError> {
        let Some(format) = self.formats.get(partner) else {
            return Ok(None);
        };
        let now = Utc::now();
        let this_month = Period::of(now.year(), now.month());
        let Some(period) = store
            .periods(partner)
            .await?
            .into_iter()
            .filter(|p| Some(*p) <= this_month)
            .max()
        else {
            return Ok(None);
        };
        let Some(taken_at) = store.expected_loans_taken_at(partner).await? else {
            return Ok(None);
        };
        if let Some(previous) = previous
            && previous.period == period
            && previous.taken_at == taken_at
            && previous.at.elapsed() < READ_EVERY
        {
            return Ok(Some(previous));
        }
        let Some(snapshot) = store.expected_loans(partner).await? else {
            return Ok(None);
        };
        let reports = store.period_reports(partner, period, None).await?;
        let month = view::build(PeriodInput {
            period,
            partner_id: partner,
            column_format: *format,
            reports: &reports,
            snapshot: Some(&snapshot),
            whole_partner: true,
            now,
            stale_after: self.stale_after,
        });
        Ok(Some(Reading {
            at: Instant::now(),
            period,
            taken_at: snapshot.taken_at,
            not_reported: month.expected_loans.map(|e| e.not_reported),
        }))
    }
}
