//! The queue gauges in SQLite: the counts `batch_counts` keeps (see the schema's triggers),
//! and the oldest batch of each state from the index `batches_by_state_queued`: a few index
//! reads whatever the number of batches.

use rusqlite::{OptionalExtension, params};

use super::{EmbeddedStore, from_ms, name_of, other, parse_name};
use crate::domain::PartnerId;
use crate::store::{BatchState, QueueSummary, StoreError};

/// Every state a batch can wait in: all but `delivered`.
const WAITING: [BatchState; 6] = [
    BatchState::Queued,
    BatchState::Sending,
    BatchState::RetryWait,
    BatchState::Held,
    BatchState::Failed,
    BatchState::Rejected,
];

impl EmbeddedStore {
    pub(super) async fn read_queue_summary(
        &self,
        partner: &PartnerId,
    ) -> Result<QueueSummary, StoreError> {
        let partner = partner.to_string();
        let rows: Vec<(String, i64, Option<i64>)> = self
            .read(move |tx| {
                let mut count = tx
                    .prepare_cached("SELECT n FROM batch_counts WHERE partner = ?1 AND state = ?2")
                    .map_err(other)?;
                let mut oldest = tx
                    .prepare_cached(
                        "SELECT MIN(queued_at) FROM batches WHERE partner = ?1 AND state = ?2",
                    )
                    .map_err(other)?;
                let mut rows = Vec::new();
                for state in WAITING {
                    let state = name_of(state);
                    let n: i64 = count
                        .query_row(params![partner, state], |row| row.get(0))
                        .optional()
                        .map_err(other)?
                        .unwrap_or(0);
                    if n <= 0 {
                        continue;
                    }
                    let at: Option<i64> = oldest
                        .query_row(params![partner, state], |row| row.get(0))
                        .map_err(other)?;
                    rows.push((state, n, at));
                }
                Ok(rows)
            })
            .await?;
        let mut summary = QueueSummary::default();
        for (state, count, oldest) in rows {
            summary.add(
                parse_name(&state)?,
                count.max(0) as usize,
                oldest.and_then(from_ms),
            );
        }
        Ok(summary)
    }
}
