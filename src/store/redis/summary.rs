//! The queue gauges on Redis: one script per partner reads only keys under the partner's hash
//! tag (no SCAN across the keyspace), so it runs unchanged on Redis Cluster.
//!
//! No index holds batches by state, so the script walks the partner's report index and looks
//! only into reports not yet settled (a `delivered` report has nothing but delivered batches):
//! one HGET per report, plus one HMGET per batch of the unsettled ones. It writes nothing.

use std::sync::LazyLock;

use redis::Script;

use super::{RedisStore, from_ms, parse_state};
use crate::domain::PartnerId;
use crate::store::{QueueSummary, StoreError};

// KEYS[1]: the partner's report index (declared, so a cluster client routes the script to the
// slot of the partner's tag). ARGV[1]: the partner's key prefix, `rg:{p}:`; every key built
// from it is in that same slot. Report ids come from the index's members, batch numbers count
// up from 1 until a batch key is missing (ids are never parsed out of key names).
// Answers a flat list: state, count, earliest queued_at (ms, or ''), per state found.
static SUMMARY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local found = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local status = redis.call('HGET', ARGV[1] .. 'report:' .. id, 'status')
  if status and status ~= 'delivered' and status ~= 'delivered_with_problems' then
    local n = 1
    while true do
      local f = redis.call('HMGET', ARGV[1] .. 'batch:' .. id .. '.' .. n, 'state', 'queued_at')
      if not f[1] then break end
      if f[1] ~= 'delivered' then
        local entry = found[f[1]]
        if not entry then
          entry = {count = 0, oldest = false}
          found[f[1]] = entry
        end
        entry.count = entry.count + 1
        local at = tonumber(f[2])
        if at and (not entry.oldest or at < entry.oldest) then entry.oldest = at end
      end
      n = n + 1
    end
  end
end
local reply = {}
for state, entry in pairs(found) do
  table.insert(reply, state)
  table.insert(reply, tostring(entry.count))
  table.insert(reply, entry.oldest and string.format('%d', entry.oldest) or '')
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
        let index = self.key(partner, "reports");
        let prefix = self.key(partner, "");
        let reply: Vec<String> = self
            .with_connection(async |c| SUMMARY.key(&index).arg(&prefix).invoke_async(c).await)
            .await?;
        let mut summary = QueueSummary::default();
        for triple in reply.chunks(3) {
            let [state, count, oldest] = triple else {
                return Err(StoreError::Other("unexpected queue summary reply".into()));
            };
            let count = count
                .parse::<usize>()
                .map_err(|e| StoreError::Other(format!("unexpected batch count {count}: {e}")))?;
            let oldest = oldest.parse::<i64>().ok().and_then(from_ms);
            summary.add(parse_state(Some(state))?, count, oldest);
        }
        Ok(summary)
    }
}
