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

// KEYS[1..6]: the state index in `STATE_INDEX` order, [7] the `indexed` marker, [8] the
// partner's report index. ARGV[1]: the partner's key prefix, `rg:{p}:`, ARGV[2..7] the state
// names in KEYS order. The build reads report and batch keys made from ARGV[1]; they are not
// declared (their ids are only known inside), but are in the partner's slot like the declared
// ones. Report ids come from the index's members, batch numbers count up from 1 until a batch
// key is missing (ids are never parsed out of key names).
// Answers a flat list: state, count, earliest known queued_at (ms, or ''), per state.
static SUMMARY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[7]) == 0 then
  local slot = {}
  for i = 1, 6 do
    redis.call('DEL', KEYS[i])
    slot[ARGV[1 + i]] = i
  end
  for _, id in ipairs(redis.call('ZRANGE', KEYS[8], 0, -1)) do
    local status = redis.call('HGET', ARGV[1] .. 'report:' .. id, 'status')
    if status and status ~= 'delivered' and status ~= 'delivered_with_problems' then
      local n = 1
      while true do
        local batch = id .. '.' .. n
        local f = redis.call('HMGET', ARGV[1] .. 'batch:' .. batch, 'state', 'queued_at')
        if not f[1] then break end
        if slot[f[1]] then redis.call('ZADD', KEYS[slot[f[1]]], f[2] or '0', batch) end
        n = n + 1
      end
    end
  end
  redis.call('SET', KEYS[7], '1')
end
local reply = {}
for i = 1, 6 do
  local count = redis.call('ZCARD', KEYS[i])
  local oldest = ''
  if count > 0 then
    -- A score of 0 is a batch whose queued_at was never written: counted, but no age.
    local first = redis.call('ZRANGEBYSCORE', KEYS[i], '(0', '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if first[2] then oldest = first[2] end
  end
  table.insert(reply, ARGV[1 + i])
  table.insert(reply, tostring(count))
  table.insert(reply, oldest)
end
return reply
"#,
    )
});

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
