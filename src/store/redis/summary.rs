//! The queue gauges on Redis: one script per partner reads only keys under the partner's hash
//! tag (no SCAN across the keyspace), so it runs unchanged on Redis Cluster.
//!
//! It reads the state index (`rg:{p}:batches:<state>`, kept by every script that writes a
//! batch's state): a ZCARD and one ZRANGEBYSCORE per state, whatever the partner's history.
//! The partner's first accept sets the `indexed` marker. Data written before the index existed
//! has none, so the first read on a partner without the marker builds it from the reports in
//! the same script (one HGET per report, one HMGET per batch of the unsettled ones, once: it
//! blocks Redis for a while on a large store), and sets the marker last: a build cut short
//! leaves no marker and is done again whole.

use std::sync::LazyLock;

use redis::Script;

use super::{RedisStore, STATE_INDEX, from_ms, parse_state};
use crate::domain::PartnerId;
use crate::store::{QueueSummary, StoreError};

static SUMMARY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("summary.lua")));

impl RedisStore {
    pub(super) async fn read_queue_summary(
        &self,
        partner: &PartnerId,
    ) -> Result<QueueSummary, StoreError> {
        let mut invocation = SUMMARY.prepare_invoke();
        for state in STATE_INDEX {
            invocation.key(self.state_index_key(partner, state));
        }
        invocation
            .key(self.indexed_marker_key(partner))
            .key(self.key(partner, "reports"))
            .arg(self.key(partner, ""));
        for state in STATE_INDEX {
            invocation.arg(state.as_str());
        }
        let reply: Vec<String> = self
            .with_connection(async |c| invocation.invoke_async(c).await)
            .await?;
        let mut summary = QueueSummary::default();
        for triple in reply.chunks(3) {
            let [state, count, oldest] = triple else {
                return Err(StoreError::Other("unexpected queue summary reply".into()));
            };
            let count = count
                .parse::<usize>()
                .map_err(|e| StoreError::Other(format!("unexpected batch count {count}: {e}")))?;
            // Redis answers a score as a double's text.
            let oldest = oldest.parse::<f64>().ok().and_then(|ms| from_ms(ms as i64));
            summary.add(parse_state(Some(state))?, count, oldest);
        }
        Ok(summary)
    }
}
