//! The queue gauges in SQLite: one grouped read of the partner's batches that are not
//! delivered (index `batches_by_state`).

use rusqlite::params;

use super::{EmbeddedStore, from_ms, other, parse_name};
use crate::domain::PartnerId;
use crate::store::{QueueSummary, StoreError};

impl EmbeddedStore {
    pub(super) async fn read_queue_summary(
        &self,
        partner: &PartnerId,
    ) -> Result<QueueSummary, StoreError> {
        let partner = partner.to_string();
        let rows: Vec<(String, i64, Option<i64>)> = self
            .read(move |tx| {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT state, COUNT(*), MIN(queued_at) FROM batches \
                         WHERE partner = ?1 AND state <> 'delivered' GROUP BY state",
                    )
                    .map_err(other)?;
                let rows = stmt
                    .query_map(params![partner], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })
                    .map_err(other)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(other)?;
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
