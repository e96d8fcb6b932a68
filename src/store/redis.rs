//! The Redis backend. Every key of one partner carries the hash tag `{partner}`, so each
//! atomic step touches one hash slot and the same scripts run on Redis Cluster unchanged.
//!
//! Keys (prefix `rg` by default):
//! - `rg:{p}:report:<id>`: hash; `doc` the report as accepted (JSON), `status` its live status;
//! - `rg:{p}:batch:<id>.<n>`: hash; `doc` the batch as accepted (JSON, never rewritten),
//!   `state`, `attempt` (attempts started), `budget_from` (the value of `attempt` when the
//!   current retry budget began: at the accept, 0, and at each operator resend), `queued_at`
//!   (ms), `next_attempt_at` (ms), `result` (JSON), `fence` (the queue entry whose worker
//!   wrote `sending`), `recorded:<n>` (attempt n's outcome is recorded); with lists
//!   `…:attempts` and `…:actions` beside it;
//! - `rg:{p}:reports`, `rg:{p}:reports:branch:<branch>`: sorted sets of report ids, all with
//!   score 0 so they order lexically; ids are UUIDv7, so lexical order is time order;
//! - `rg:{p}:deliveries`: the delivery stream, one entry per batch to send, consumer group
//!   `delivery`; an entry is acknowledged and deleted when its batch settles, and the stream is
//!   never trimmed (trimming could drop entries still pending);
//! - `rg:{p}:retries`: sorted set of batches in `retry_wait`, scored by when they are due;
//! - `rg:{p}:batches:<state>`, one per state but `delivered`: sorted sets of batch ids scored
//!   by `queued_at` (ms, 0 when unknown), written in the same script as every change of a
//!   batch's `state`, so the queue gauges read counts and oldest batches without walking the
//!   partner's history; `rg:{p}:batches:indexed` says they are complete (see `summary`);
//! - `rg:{p}:idem:<api key name>:<sha256 of the Idempotency-Key>`: a hash, `in_progress` with a
//!   claim token and a short TTL, then `done` with the recorded answer and a long TTL.
//!
//! Scripts never decode JSON: documents are written whole by Rust, and scripts only move
//! plain fields, so Lua's number handling can't touch an amount. Ids reach scripts as ARGV,
//! never parsed out of key names (a key prefix may contain anything the pattern looks for).
//!
//! The fence: a queue entry id is never reused, and a batch is begun at most once per entry
//! (BEGIN moves it out of `queued`; the entry is settled or replaced whenever it goes back).
//! So the entry id written as `fence` by BEGIN identifies one attempt's ownership of the
//! batch: FINISH writes the outcome only while the batch is `sending` under its own entry,
//! and anything else that moves the batch (a take-over that holds it, an operator, a
//! release) clears or replaces the fence first.

mod check;
mod cluster_pool;
mod connection;
mod expected;
mod persistence;
mod pool;
mod sessions;
mod summary;

pub use connection::Connection;
use connection::Pools;
pub use persistence::Persistence;

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use redis::Script;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    Attempt, AttemptEnd, Batch, BatchDoc, BatchProgress, BatchResult, BatchState, BeginAttempt,
    ClaimedBatch, Durability, IdempotencyClaim, IdempotencyScope, IdempotentAccept,
    OperatorActionKind, OperatorCommand, OperatorOutcome, RecordedResponse, Report, ReportPage,
    ReportQuery, Reports, StoreError, report_of_batch,
};
use super::{
    BatchVersion, ExpectedLoansSnapshot, Periods, Queue, RefreshStatus, Sessions, WebSession,
};
use crate::domain::{PartnerId, Period};

/// Reports examined per listing call at most, so a filter that matches little can't make one
/// request scan a partner's whole history; the caller gets a cursor to go on.
const MAX_SCANNED_PER_PAGE: usize = 1_000;
/// Consumer group of the delivery streams.
const GROUP: &str = "delivery";
const ALL_STATES: [BatchState; 7] = [
    BatchState::Queued,
    BatchState::Sending,
    BatchState::RetryWait,
    BatchState::Delivered,
    BatchState::Rejected,
    BatchState::Held,
    BatchState::Failed,
];
/// The states with an index of their batches, in the order of the delivery scripts' KEYS.
const STATE_INDEX: [BatchState; 6] = [
    BatchState::Queued,
    BatchState::Sending,
    BatchState::RetryWait,
    BatchState::Held,
    BatchState::Rejected,
    BatchState::Failed,
];
/// Retries promoted per call at most; the rest wait for the next round.
const PROMOTE_LIMIT: usize = 500;

// `#!lua` (Redis 7) makes Redis refuse a whole script up front when it is out of memory under
// `noeviction`, instead of failing at some write in the middle: scripts are not rolled back,
// so a late failure would leave half a report. It also forbids touching undeclared keys.
const CLAIM: &str = r#"#!lua
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('HSET', KEYS[1], 'state', 'in_progress', 'token', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'claimed'}
end
if state == 'in_progress' then
  return {'in_progress'}
end
if ARGV[3] == '1' then
  -- A write that follows the accept in the replication stream: once the copies have it, they
  -- have the accept (see `claim_idempotency`).
  redis.call('HSET', KEYS[1], 'replayed', '1')
end
return {'done', redis.call('HGET', KEYS[1], 'record')}
"#;

const RELEASE: &str = r#"#!lua
if redis.call('HGET', KEYS[1], 'state') == 'in_progress'
   and redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 'OK'
"#;

// KEYS: idempotency, report, reports index, branch index, stream, the period's loans, the
// period's reports, the periods, the queued batches, the state index's `indexed` marker, then
// one key per batch, then the period's report branches (report id -> branch).
// ARGV: idempotent ('1'|'0'), claim token, record TTL (s), record JSON, report id, report
// JSON, now (ms), correction ('0' none, '1' of any branch's loans, '2' of the report's own
// branch's loans only), period index TTL (s), period, then the batch JSONs,
// then the batch ids, then the report's loan keys in order (see `loan_key`).
//
// One loan, one report per period: the period's loans hash maps each loan key to the report
// that has it. Checked and written in this one script, so two reports with the same loan can
// never both be accepted, whichever process takes them. Answers {'ok'}, or
// {'reported', 'position=report', ...} and writes nothing; `accept` finds where the earlier
// report has the loan. The value is the report id alone because it is the one argument every
// field shares: building `report:position` for each loan in Lua was a fifth of a 200-loan
// accept's Redis time. (Indexes written before hold `report:position`; both are read.)
const ACCEPT: &str = r#"#!lua
local batches = #KEYS - 11
local first_loan = 11 + 2 * batches
local branches = KEYS[#KEYS]
-- Report ids are never reused, so an existing report means this very accept ran already: a
-- client that resends a command after a dropped connection (the cluster client does) gets the
-- answer the first run gave.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'ok'}
end
if ARGV[1] == '1' then
  if redis.call('HGET', KEYS[1], 'token') ~= ARGV[2]
     or redis.call('HGET', KEYS[1], 'state') ~= 'in_progress' then
    return redis.error_reply('CLAIMLOST the idempotency claim is gone')
  end
end
if ARGV[8] == '2' then
  -- A branch corrects only loans its own branch reported: the branch of the report the index
  -- names now. One the branches hash does not know (indexed before it existed) is refused
  -- too; an admin key can correct it.
  local mine = cjson.decode(ARGV[6]).branch
  local known, foreign = {}, {}
  for i = first_loan, #ARGV, 1000 do
    local last = math.min(i + 999, #ARGV)
    local found = redis.call('HMGET', KEYS[6], unpack(ARGV, i, last))
    for j = 1, #found do
      local report = found[j]
      if report then
        if known[report] == nil then
          known[report] = redis.call('HGET', branches, report) or false
        end
        if known[report] ~= mine then
          table.insert(foreign, tostring(i + j - 1 - first_loan))
        end
      end
    end
  end
  if #foreign > 0 then
    table.insert(foreign, 1, 'foreign')
    return foreign
  end
elseif ARGV[8] ~= '1' then
  local earlier = {}
  -- In chunks: Lua's unpack has a limit on how many values it passes.
  for i = first_loan, #ARGV, 1000 do
    local last = math.min(i + 999, #ARGV)
    local found = redis.call('HMGET', KEYS[6], unpack(ARGV, i, last))
    for j = 1, #found do
      if found[j] then
        table.insert(earlier, tostring(i + j - 1 - first_loan) .. '=' .. found[j])
      end
    end
  end
  if #earlier > 0 then
    table.insert(earlier, 1, 'reported')
    return earlier
  end
end
redis.call('HSET', KEYS[2], 'doc', ARGV[6], 'status', 'queued')
redis.call('ZADD', KEYS[3], 0, ARGV[5])
-- The partner's first report: the state index is complete from here (see `summary`), so no
-- scrape ever walks the partner's reports to build it.
if redis.call('ZCARD', KEYS[3]) == 1 then redis.call('SET', KEYS[10], '1') end
redis.call('ZADD', KEYS[4], 0, ARGV[5])
redis.call('ZADD', KEYS[7], 0, ARGV[5])
redis.call('ZADD', KEYS[8], 0, ARGV[10])
for i = 1, batches do
  redis.call('HSET', KEYS[10 + i], 'doc', ARGV[10 + i], 'state', 'queued', 'attempt', 0,
             'queued_at', ARGV[7])
  redis.call('ZADD', KEYS[9], ARGV[7], ARGV[10 + batches + i])
  redis.call('XADD', KEYS[5], '*', 'batch', ARGV[10 + batches + i])
end
-- One HSET per chunk, not per loan: a call from Lua costs more than a field.
for i = first_loan, #ARGV, 500 do
  local fields = {}
  for j = i, math.min(i + 499, #ARGV) do
    fields[#fields + 1] = ARGV[j]
    fields[#fields + 1] = ARGV[5]
  end
  redis.call('HSET', KEYS[6], unpack(fields))
end
redis.call('HSET', branches, ARGV[5], cjson.decode(ARGV[6]).branch)
-- The period's loans are needed while its reports are; a new report extends that.
redis.call('EXPIRE', KEYS[6], ARGV[9])
redis.call('EXPIRE', branches, ARGV[9])
redis.call('EXPIRE', KEYS[7], ARGV[9])
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'state', 'done', 'record', ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return {'ok'}
"#;

// Delivery scripts share one key layout: KEYS[1] the batch, [2] its report, [3] the stream,
// [4] the retry set, [5] the batch's attempts list, [6] its actions list, [7..12] the
// partner's batches by state (`STATE_INDEX` order), [13..] every batch of the report (for the
// roll-up). Settling an entry is XACK + XDEL, first: XACK answers 0 rather than failing when
// the group is gone, so nothing after it can be cut short.
//
// `move` keeps the state index true: every write of a batch's `state` in these scripts goes
// with one call of it, so the index changes in the same atomic step as the state it mirrors.
const ROLLUP: &str = r#"
local by_state = {queued = 7, sending = 8, retry_wait = 9, held = 10, rejected = 11, failed = 12}
local function move(batch, from, to, queued_at)
  if by_state[from] then redis.call('ZREM', KEYS[by_state[from]], batch) end
  if by_state[to] then
    local at = queued_at or redis.call('HGET', KEYS[1], 'queued_at') or '0'
    redis.call('ZADD', KEYS[by_state[to]], at, batch)
  end
end
local function rollup()
  local attention, delivered, queued, n = false, 0, 0, 0
  for i = 13, #KEYS do
    local s = redis.call('HGET', KEYS[i], 'state')
    n = n + 1
    if s == 'held' or s == 'rejected' or s == 'failed' then attention = true
    elseif s == 'delivered' then delivered = delivered + 1
    elseif s == 'queued' then queued = queued + 1 end
  end
  local status = 'delivering'
  if attention then status = 'needs_attention'
  elseif delivered == n then status = 'delivered'
  elseif queued == n then status = 'queued' end
  if status == 'delivered' and tonumber(redis.call('HGET', KEYS[2], 'refused') or '0') > 0 then
    status = 'delivered_with_problems'
  end
  redis.call('HSET', KEYS[2], 'status', status)
end
local function settle(entry)
  redis.call('XACK', KEYS[3], 'delivery', entry)
  redis.call('XDEL', KEYS[3], entry)
end
"#;

// ARGV: entry id, now (ms), the result JSON to record if the batch is held, batch id, the
// attempt JSON to record if held (see `Attempt::unrecorded`), now as attempts write it.
// Answers {'send', attempt, budget_from, doc, queued_at} so the worker needs no second read.
const BEGIN: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' or state == 'retry_wait' then
  local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
  redis.call('HSET', KEYS[1], 'state', 'sending', 'fence', ARGV[1], 'sending_at', ARGV[6])
  redis.call('HDEL', KEYS[1], 'next_attempt_at')
  move(ARGV[4], state, 'sending')
  rollup()
  local f = redis.call('HMGET', KEYS[1], 'budget_from', 'doc', 'queued_at')
  return {'send', tostring(attempt), f[1] or '0', f[2] or '', f[3] or ''}
end
local fence = redis.call('HGET', KEYS[1], 'fence')
if state == 'sending' and (not fence or fence == ARGV[1]) then
  -- This very entry was begun by a worker that never settled it (it died, or overran the
  -- claim deadline): Kiva may have processed the upload, and a second one would be counted
  -- twice. (No fence: written before fences existed; the same reasoning holds.)
  settle(ARGV[1])
  -- The attempt's own record never came: keep one that says when it began (ARGV[5] is its
  -- template, started now, for a batch begun before `sending_at` was kept).
  local begun = redis.call('HMGET', KEYS[1], 'attempt', 'sending_at')
  local record = cjson.decode(ARGV[5])
  record.number = tonumber(begun[1]) or 0
  if begun[2] then record.started_at = begun[2] end
  redis.call('RPUSH', KEYS[5], cjson.encode(record))
  redis.call('HSET', KEYS[1], 'state', 'held', 'result', ARGV[3])
  redis.call('HDEL', KEYS[1], 'fence')
  move(ARGV[4], 'sending', 'held')
  rollup()
  return {'held'}
end
-- Settled already, or being sent under another entry by a live worker: a stale entry.
settle(ARGV[1])
return {'skip', state or 'missing'}
"#;

// ARGV: entry id, batch id. Undoes a BEGIN whose answer was lost (the worker sent nothing).
// Only the entry's own `sending` is undone; XACK tells whether the entry was still pending,
// so a repeated release can't queue the batch twice.
const RELEASE_ATTEMPT: &str = r#"
local pending = redis.call('XACK', KEYS[3], 'delivery', ARGV[1])
redis.call('XDEL', KEYS[3], ARGV[1])
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'sending' and redis.call('HGET', KEYS[1], 'fence') == ARGV[1] then
  -- The attempt BEGIN counted never happened.
  redis.call('HINCRBY', KEYS[1], 'attempt', -1)
  redis.call('HSET', KEYS[1], 'state', 'queued')
  redis.call('HDEL', KEYS[1], 'fence')
  move(ARGV[2], 'sending', 'queued')
  redis.call('XADD', KEYS[3], '*', 'batch', ARGV[2])
  rollup()
  return 'released'
end
if pending == 1 and (state == 'queued' or state == 'retry_wait') then
  redis.call('XADD', KEYS[3], '*', 'batch', ARGV[2])
  return 'requeued'
end
return 'left'
"#;

// ARGV: entry id, attempt number, new state, result JSON, attempt JSON, retry due (ms) or '',
// batch id, loans Kiva refused in the batch, how a take-over's stand-in record begins.
const FINISH: &str = r#"
settle(ARGV[1])
if redis.call('HSETNX', KEYS[1], 'recorded:' .. ARGV[2], 1) == 0 then
  -- A repeat of a FINISH whose answer was lost: all of it is written already.
  return 'duplicate'
end
-- The attempt happened (Kiva may have been called), so its record is kept even when stale;
-- it replaces the stand-in a take-over wrote for it (see `Attempt::unrecorded`).
local replaced = false
for i, doc in ipairs(redis.call('LRANGE', KEYS[5], 0, -1)) do
  if string.find(doc, ARGV[9], 1, true) then
    local ok, record = pcall(cjson.decode, doc)
    if ok and tostring(record.number) == ARGV[2] then
      redis.call('LSET', KEYS[5], i - 1, ARGV[5])
      replaced = true
      break
    end
  end
end
if not replaced then redis.call('RPUSH', KEYS[5], ARGV[5]) end
if redis.call('HGET', KEYS[1], 'state') ~= 'sending'
   or redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then
  -- Taken over and held, or decided by an operator, while this attempt was out: the newer
  -- decision stands.
  return 'stale'
end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'result', ARGV[4])
redis.call('HDEL', KEYS[1], 'fence')
move(ARGV[7], 'sending', ARGV[3])
if ARGV[3] == 'delivered' and tonumber(ARGV[8]) > 0 then
  redis.call('HINCRBY', KEYS[2], 'refused', ARGV[8])
end
if ARGV[3] == 'retry_wait' then
  redis.call('HSET', KEYS[1], 'next_attempt_at', ARGV[6])
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[7])
end
rollup()
return 'OK'
"#;

// ARGV: action ('resend'|'mark_delivered'), action JSON without from_state, now (ms),
// result JSON (mark_delivered), the states allowed to start from (",held,failed,"), batch id,
// the version the operator confirmed against ('' for none, `BatchVersion`'s text).
// Answers the state found, or the version found when it is not the one confirmed.
const OPERATE: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing'} end
if ARGV[7] ~= '' then
  local version = state .. '.' .. redis.call('LLEN', KEYS[5]) .. '.' .. redis.call('LLEN', KEYS[6])
  if version ~= ARGV[7] then return {'changed', version} end
end
if not string.find(ARGV[5], ',' .. state .. ',', 1, true) then return {'conflict', state} end
-- ARGV[2] is a JSON object made by Rust; the state found is spliced in as its last member.
redis.call('RPUSH', KEYS[6], string.sub(ARGV[2], 1, -2) .. ',"from_state":"' .. state .. '"}')
redis.call('HDEL', KEYS[1], 'fence')
if ARGV[1] == 'resend' then
  -- A fresh retry budget: attempts are counted again from here (the history is kept).
  local attempt = redis.call('HGET', KEYS[1], 'attempt') or '0'
  redis.call('HSET', KEYS[1], 'state', 'queued', 'queued_at', ARGV[3], 'budget_from', attempt)
  redis.call('HDEL', KEYS[1], 'next_attempt_at', 'result')
  move(ARGV[6], state, 'queued', ARGV[3])
  redis.call('ZREM', KEYS[4], ARGV[6])
  redis.call('XADD', KEYS[3], '*', 'batch', ARGV[6])
else
  redis.call('HSET', KEYS[1], 'state', 'delivered', 'result', ARGV[4])
  move(ARGV[6], state, 'delivered')
end
rollup()
return {'done', state}
"#;

// KEYS: report, reports index, branch index, period index, then every key of its batches.
// ARGV: report id. Deletes a report only when it is settled: `delivered` is rolled up from
// every batch.
const PURGE: &str = r#"#!lua
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'delivered' and status ~= 'delivered_with_problems' then return 0 end
for i = 5, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
"#;

// KEYS: retry set, stream. ARGV: now (ms), limit.
const PROMOTE: &str = r#"#!lua
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, batch in ipairs(due) do
  redis.call('ZREM', KEYS[1], batch)
  redis.call('XADD', KEYS[2], '*', 'batch', batch)
end
return #due
"#;

pub struct RedisStore {
    pool: Pools,
    prefix: String,
    timeout: Duration,
    /// How long a period's loan index outlives the period's last accept.
    period_index_ttl: Duration,
    /// Set by `check_persistence`: the server can confirm that a write reached its AOF.
    waitaof: std::sync::atomic::AtomicBool,
    /// Replicas a promise-bearing write waits for (`WAIT`), and for how long.
    replica_acks: u32,
    replica_ack_timeout: Duration,
    claim: Script,
    release: Script,
    accept: Script,
    begin: Script,
    release_attempt: Script,
    finish: Script,
    operate: Script,
    promote: Script,
    purge: Script,
}

fn delivery_script(body: &str) -> Script {
    Script::new(&format!("#!lua\n{ROLLUP}\n{body}"))
}

impl RedisStore {
    /// Builds the pool; connections are made on first use, so a Redis that is down at start
    /// makes requests answer 503 rather than stopping the gateway.
    pub fn new(
        url: &str,
        prefix: &str,
        pool_size: usize,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let mut pool_config = deadpool_redis::PoolConfig::new(pool_size);
        pool_config.timeouts.wait = Some(timeout);
        pool_config.timeouts.create = Some(timeout);
        pool_config.timeouts.recycle = Some(timeout);
        let pool = Pools::new(url, pool_config, timeout)?;
        Ok(Self {
            pool,
            prefix: prefix.to_owned(),
            timeout,
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
            accept: Script::new(ACCEPT),
            begin: delivery_script(BEGIN),
            release_attempt: delivery_script(RELEASE_ATTEMPT),
            finish: delivery_script(FINISH),
            operate: delivery_script(OPERATE),
            promote: Script::new(PROMOTE),
            purge: Script::new(PURGE),
            waitaof: std::sync::atomic::AtomicBool::new(false),
            replica_acks: 0,
            replica_ack_timeout: Duration::from_secs(1),
            period_index_ttl: super::period_index_ttl(super::DEFAULT_RETENTION),
        })
    }

    /// Settled reports are kept `retention`; a period's loan index as long, and a bit more.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.period_index_ttl = super::period_index_ttl(retention);
        self
    }

    /// Each write a promise rests on (an accept, `sending`, an attempt's outcome) waits until
    /// `replicas` replicas have it, at most `timeout`; one they did not acknowledge in time
    /// is `NotReplicated`.
    pub fn with_replica_acks(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replica_acks = replicas;
        self.replica_ack_timeout = timeout;
        self
    }

    /// Reads the server's persistence settings (on a cluster, every master's, as weak as the
    /// weakest); from here on, writes that must survive a Redis crash wait for the AOF fsync
    /// where the servers support `WAITAOF`.
    pub async fn check_persistence(&self) -> Result<Persistence, StoreError> {
        let persistence = self
            .with_connection(async |c| c.persistence().await)
            .await?;
        self.waitaof.store(
            persistence.supports_waitaof(),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(persistence)
    }

    /// After a write the gateway is about to acknowledge (a 202, `sending` before a call to
    /// Kiva, an attempt's outcome): waits until the local AOF has it on disk, when the server
    /// can say so, and until `replica_acks` replicas have it (a failover promotes a replica:
    /// what it lacks is lost, and a lost `sending` means a second upload). `key` is one the
    /// write touched: on a cluster, its master is the one asked.
    async fn wait_for_copies(&self, c: &mut Connection, key: &str) -> redis::RedisResult<()> {
        if self.waitaof.load(std::sync::atomic::Ordering::Relaxed) {
            let local = c.wait_aof(key, self.timeout.as_millis() as u64).await?;
            if local < 1 {
                return Err(not_acknowledged(
                    "WAITAOF: the write is not yet on disk".into(),
                ));
            }
        }
        if self.replica_acks > 0 {
            let timeout_ms = self.replica_ack_timeout.as_millis() as u64;
            let acked = c.wait_replicas(key, self.replica_acks, timeout_ms).await?;
            if acked < i64::from(self.replica_acks) {
                return Err(not_acknowledged(format!(
                    "WAIT: {acked} of {} replica(s) acknowledged the write within {timeout_ms} ms",
                    self.replica_acks
                )));
            }
        }
        Ok(())
    }

    fn key(&self, partner: &PartnerId, rest: &str) -> String {
        self.key_of(partner, &[rest])
    }

    /// `{prefix}:{{partner}}:` and the parts, in one allocation: an accept builds a dozen
    /// keys, and through `format!` they were a tenth of a one-repayment request's CPU.
    fn key_of(&self, partner: &PartnerId, parts: &[&str]) -> String {
        key_parts(&self.prefix, partner, parts)
    }

    /// The partner's batches in `state` (see the key layout above).
    fn state_index_key(&self, partner: &PartnerId, state: BatchState) -> String {
        self.key_of(partner, &["batches:", state.as_str()])
    }

    /// Set once the partner's state index holds every batch (see `summary`).
    fn indexed_marker_key(&self, partner: &PartnerId) -> String {
        self.key(partner, "batches:indexed")
    }

    fn idempotency_key(&self, scope: &IdempotencyScope) -> String {
        let digest = hex::encode(Sha256::digest(scope.key.as_bytes()));
        self.key(
            &scope.partner_id,
            &format!("idem:{}:{digest}", scope.api_key_name),
        )
    }

    pub fn stream_key(&self, partner: &PartnerId) -> String {
        self.key(partner, "deliveries")
    }

    fn batch_key(&self, partner: &PartnerId, batch_id: &str) -> String {
        self.key_of(partner, &["batch:", batch_id])
    }

    fn report_key(&self, partner: &PartnerId, report: Uuid) -> String {
        let mut id = Uuid::encode_buffer();
        self.key_of(
            partner,
            &["report:", report.hyphenated().encode_lower(&mut id)],
        )
    }

    /// A pooled connection whose replies may take up to the store timeout (redis-rs's own
    /// default, 500 ms, would turn a slow fsync into an error for a write that happened).
    /// Failing here means nothing was sent.
    async fn connection(&self) -> Result<Connection, StoreError> {
        self.pool
            .get(self.timeout)
            .await
            .map_err(|e| redis_error(e, Sent::No))
    }

    /// Runs a read (or a write whose loss is harmless) within the store timeout; any failure
    /// to reach Redis becomes `Unavailable`. When the connection it got was handed out
    /// without the pool's check (see `pool`) and turned out to be dead, it runs once more on
    /// a checked one: what the check would have done.
    async fn with_connection<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: AsyncFnOnce(&mut Connection) -> redis::RedisResult<T> + Clone,
    {
        match self.try_run(Sent::No, op.clone()).await {
            Err(failed) if failed.dead_unchecked => self.run(Sent::No, op).await,
            result => result.map_err(|failed| failed.error),
        }
    }

    /// Runs a write whose effect matters: once it may have reached Redis, a missing answer is
    /// `OutcomeUnknown`, never "nothing was written".
    async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: AsyncFnOnce(&mut Connection) -> redis::RedisResult<T>,
    {
        self.run(Sent::Maybe, op).await
    }

    /// A write whose repeat changes nothing (the accept: a report id is never reused, and the
    /// script answers `ok` for a report that exists). It runs once more when the connection
    /// it went out on was handed out unchecked and found dead: after a Redis restart every
    /// pooled connection is, and the first accept must not be the one that finds out.
    async fn write_repeatable<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: AsyncFnOnce(&mut Connection) -> redis::RedisResult<T> + Clone,
    {
        match self.try_run(Sent::Maybe, op.clone()).await {
            Err(failed) if failed.dead_unchecked => self.run(Sent::Maybe, op).await,
            result => result.map_err(|failed| failed.error),
        }
    }

    async fn run<T, F>(&self, sent: Sent, op: F) -> Result<T, StoreError>
    where
        F: AsyncFnOnce(&mut Connection) -> redis::RedisResult<T>,
    {
        self.try_run(sent, op).await.map_err(|failed| failed.error)
    }

    async fn try_run<T, F>(&self, sent: Sent, op: F) -> Result<T, Failed>
    where
        F: AsyncFnOnce(&mut Connection) -> redis::RedisResult<T>,
    {
        let failed = |error| Failed {
            error,
            dead_unchecked: false,
        };
        let start = tokio::time::Instant::now();
        let mut conn = tokio::time::timeout(self.timeout, self.connection())
            .await
            .map_err(|_| {
                failed(StoreError::Unavailable(format!(
                    "no Redis connection within {:?}",
                    self.timeout
                )))
            })?
            .map_err(failed)?;
        let left = self
            .timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(1));
        // A connection whose reply is still owed is not given back to the pool: the next
        // caller (often the one checking what happened) would wait behind that reply too.
        let retire = Connection::retire;
        match tokio::time::timeout(left, op(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                let mut dead_unchecked = false;
                if e.is_io_error() || e.is_connection_dropped() {
                    // The connections handed out unchecked may all be as dead as this one
                    // (Redis restarted): the pool checks each one again from now on.
                    dead_unchecked = conn.unchecked();
                    self.pool.suspect();
                }
                if e.is_timeout() || e.is_io_error() || e.is_connection_dropped() {
                    retire(conn);
                }
                Err(Failed {
                    error: redis_error(e, sent),
                    dead_unchecked,
                })
            }
            Err(_) => {
                retire(conn);
                let reason = format!("no answer from Redis within {:?}", self.timeout);
                Err(failed(match sent {
                    Sent::No => StoreError::Unavailable(reason),
                    Sent::Maybe => StoreError::OutcomeUnknown(reason),
                }))
            }
        }
    }

    /// The refusal of `report`, from the accept's `position=report` answers: reads the earlier
    /// reports, in one round trip, to say where each has the loan. Only the answers a refusal
    /// lists (`MAX_LISTED_VIOLATIONS`, the first in document order) are placed, so a month sent
    /// again reads at most that many reports, whatever its size. Best effort: if the reads
    /// fail, or an earlier report was purged since, the refusal still names the report,
    /// without the place.
    async fn earlier_reports(
        &self,
        report: &Report,
        batches: &[BatchDoc],
        answers: &[String],
    ) -> Vec<super::EarlierReport> {
        let parsed: Vec<(usize, Uuid, Option<usize>)> =
            answers.iter().filter_map(|a| parse_earlier(a)).collect();
        let loans: Vec<&super::StoredRepayment> =
            batches.iter().flat_map(|b| &b.repayments).collect();
        let loan_at =
            |position: usize| Some(super::loan_key(report.column_format, loans.get(position)?));
        // The (earlier report, loan) pairs to place, and no more: an earlier report may hold
        // thousands of loans, of which only the repeated ones are looked up.
        let mut places: std::collections::HashMap<(Uuid, String), Option<usize>> = parsed
            .iter()
            .take(crate::intake::MAX_LISTED_VIOLATIONS)
            .filter(|(_, _, at)| at.is_none())
            .filter_map(|(position, id, _)| Some(((*id, loan_at(*position)?), None)))
            .collect();
        // Every listed loan's earlier report is read for its branch (who may be told which
        // report it is); only those whose place the index lacks for their batches too.
        let mut wanted: Vec<String> = parsed
            .iter()
            .take(crate::intake::MAX_LISTED_VIOLATIONS)
            .map(|(_, id, _)| id.to_string())
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut branches: std::collections::HashMap<Uuid, String> =
            std::collections::HashMap::new();
        let read = async {
            let found = self.report_docs(&report.partner_id, &wanted).await?;
            for earlier in &found {
                branches.insert(earlier.id, earlier.branch.clone());
            }
            let placing: Vec<Report> = found
                .into_iter()
                .filter(|r| places.keys().any(|(id, _)| *id == r.id))
                .collect();
            let their_batches = self.batches_of_many(&placing).await?;
            Ok::<_, StoreError>(placing.into_iter().zip(their_batches))
        };
        match read.await {
            Ok(found) => {
                for (earlier, its_batches) in found {
                    for repayment in its_batches.iter().flat_map(|b| &b.repayments) {
                        let key = super::loan_key(earlier.column_format, &repayment.repayment);
                        if let Some(place) = places.get_mut(&(earlier.id, key)) {
                            *place = Some(repayment.repayment.position);
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "could not read the earlier reports a refused report repeats")
            }
        }
        parsed
            .into_iter()
            .map(|(position, report_id, at)| super::EarlierReport {
                position,
                report_id,
                earlier_position: at.or_else(|| {
                    let loan = loan_at(position)?;
                    places.get(&(report_id, loan)).copied().flatten()
                }),
                branch: branches.get(&report_id).cloned(),
            })
            .collect()
    }

    /// The reports of these ids that exist, in one round trip.
    async fn report_docs(
        &self,
        partner: &PartnerId,
        ids: &[String],
    ) -> Result<Vec<Report>, StoreError> {
        self.live_docs(partner, ids)
            .await?
            .into_iter()
            .filter_map(|(doc, status, refused)| {
                Some(report_with_status(&doc?, status.as_deref(), refused))
            })
            .collect()
    }

    /// Each report's document and live fields, in the order of `ids`, in one round trip.
    async fn live_docs(
        &self,
        partner: &PartnerId,
        ids: &[String],
    ) -> Result<Vec<Live>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(self.key(partner, &format!("report:{id}")))
                .arg(&LIVE_FIELDS[..]);
        }
        self.with_connection(async |c| pipe.query_async(c).await)
            .await
    }

    async fn report_doc(
        &self,
        partner: &PartnerId,
        id: Uuid,
    ) -> Result<Option<Report>, StoreError> {
        let key = self.report_key(partner, id);
        let (doc, status, refused): Live = self
            .with_connection(async |c| {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg(&LIVE_FIELDS[..])
                    .query_async(c)
                    .await
            })
            .await?;
        doc.map(|doc| report_with_status(&doc, status.as_deref(), refused))
            .transpose()
    }

    /// KEYS of the delivery scripts for `batch_id` (see the layout above `ROLLUP`).
    fn delivery_keys(&self, partner: &PartnerId, batch_id: &str, report: &Report) -> Vec<String> {
        let batch = self.batch_key(partner, batch_id);
        let mut keys = vec![
            batch.clone(),
            self.report_key(partner, report.id),
            self.stream_key(partner),
            self.key(partner, "retries"),
            format!("{batch}:attempts"),
            format!("{batch}:actions"),
        ];
        keys.extend(
            STATE_INDEX
                .iter()
                .map(|s| self.state_index_key(partner, *s)),
        );
        keys.extend(report.batch_ids().map(|id| self.batch_key(partner, &id)));
        keys
    }

    async fn report_of(
        &self,
        partner: &PartnerId,
        batch_id: &str,
    ) -> Result<Option<Report>, StoreError> {
        match report_of_batch(batch_id) {
            Some(report) => self.report_doc(partner, report).await,
            None => Ok(None),
        }
    }

    async fn batches(&self, report: &Report) -> Result<Vec<Batch>, StoreError> {
        Ok(self
            .batches_of_many(std::slice::from_ref(report))
            .await?
            .pop()
            .unwrap_or_default())
    }

    /// The batches of each report, in one round trip.
    async fn batches_of_many(&self, reports: &[Report]) -> Result<Vec<Vec<Batch>>, StoreError> {
        let ids: Vec<(usize, String)> = reports
            .iter()
            .enumerate()
            .flat_map(|(i, r)| r.batch_ids().map(move |id| (i, id)))
            .collect();
        let mut pipe = redis::pipe();
        for (i, id) in &ids {
            let partner = &reports[*i].partner_id;
            let key = self.batch_key(partner, id);
            pipe.cmd("HMGET")
                .arg(&key)
                .arg(&["doc", "state", "next_attempt_at", "result"])
                .cmd("LRANGE")
                .arg(format!("{key}:attempts"))
                .arg(0)
                .arg(-1)
                .cmd("LRANGE")
                .arg(format!("{key}:actions"))
                .arg(0)
                .arg(-1);
        }
        type Row = (Vec<Option<String>>, Vec<String>, Vec<String>);
        let rows: Vec<Row> = if ids.is_empty() {
            Vec::new()
        } else {
            self.with_connection(async |c| pipe.query_async(c).await)
                .await?
        };
        let mut grouped: Vec<Vec<Batch>> = reports.iter().map(|_| Vec::new()).collect();
        for ((fields, attempts, actions), (i, id)) in rows.into_iter().zip(&ids) {
            grouped[*i].push({
                let [doc, state, next, result] = <[Option<String>; 4]>::try_from(fields)
                    .map_err(|_| StoreError::Other("unexpected HMGET reply".into()))?;
                let doc: BatchDoc = decode(
                    &doc.ok_or_else(|| StoreError::Other(format!("batch {id} is missing")))?,
                )?;
                let progress = BatchProgress {
                    state: parse_state(state.as_deref())?,
                    next_attempt_at: next.and_then(|ms| ms.parse::<i64>().ok()).and_then(from_ms),
                    result: result.map(|r| decode(&r)).transpose()?,
                    attempts: attempts
                        .iter()
                        .map(|a| decode(a))
                        .collect::<Result<_, _>>()?,
                    operator_actions: actions
                        .iter()
                        .map(|a| decode(a))
                        .collect::<Result<_, _>>()?,
                };
                Batch::assemble(doc, progress)
            });
        }
        Ok(grouped)
    }

    async fn ensure_group(&self, stream: &str) -> Result<(), StoreError> {
        let result: Result<(), StoreError> = self
            .with_connection(async |c| {
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(stream)
                    .arg(GROUP)
                    // From the start of the stream: entries added before the group existed
                    // (or before a Redis without persistence came back) must not be skipped.
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(c)
                    .await
            })
            .await;
        match result {
            Err(StoreError::Other(e)) if e.contains("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    async fn batches_of_one(
        &self,
        report: &Report,
        batch_id: &str,
    ) -> Result<Option<Batch>, StoreError> {
        Ok(self
            .batches(report)
            .await?
            .into_iter()
            .find(|b| b.id == batch_id))
    }
}

/// A report hash's fields read with its doc: what changes after the accept.
const LIVE_FIELDS: [&str; 3] = ["doc", "status", "refused"];
type Live = (Option<String>, Option<String>, Option<usize>);

fn report_with_status(
    doc: &str,
    status: Option<&str>,
    refused: Option<usize>,
) -> Result<Report, StoreError> {
    let mut report: Report = decode(doc)?;
    report.refused_by_kiva = refused.unwrap_or(0);
    if let Some(status) = status {
        report.status = serde_json::from_value(serde_json::Value::String(status.to_owned()))
            .map_err(|e| StoreError::Other(format!("unknown report status {status}: {e}")))?;
    }
    Ok(report)
}

fn parse_state(state: Option<&str>) -> Result<BatchState, StoreError> {
    let state = state.ok_or_else(|| StoreError::Other("batch without a state".into()))?;
    serde_json::from_value(serde_json::Value::String(state.to_owned()))
        .map_err(|e| StoreError::Other(format!("unknown batch state {state}: {e}")))
}

/// `position=report`, or `position=report:position` as indexes written before kept it.
fn parse_earlier(text: &str) -> Option<(usize, Uuid, Option<usize>)> {
    let (position, earlier) = text.split_once('=')?;
    let (report, at) = match earlier.split_once(':') {
        Some((report, at)) => (report, Some(at.parse().ok()?)),
        None => (earlier, None),
    };
    Some((position.parse().ok()?, Uuid::parse_str(report).ok()?, at))
}

fn key_parts(prefix: &str, partner: &PartnerId, parts: &[&str]) -> String {
    let partner = partner.as_str();
    let rest: usize = parts.iter().map(|p| p.len()).sum();
    let mut key = String::with_capacity(prefix.len() + partner.len() + 4 + rest);
    key.push_str(prefix);
    key.push_str(":{");
    key.push_str(partner);
    key.push_str("}:");
    for part in parts {
        key.push_str(part);
    }
    key
}

fn from_ms(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

fn decode<T: serde::de::DeserializeOwned>(doc: &str) -> Result<T, StoreError> {
    serde_json::from_str(doc).map_err(|e| StoreError::Other(format!("unreadable record: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("store records always serialize")
}

/// Whether a failed command may have reached Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    No,
    Maybe,
}

/// Error replies by which Redis refuses a command without running it, while it is starting
/// (LOADING), after a failover (READONLY, MASTERDOWN), during resharding (TRYAGAIN,
/// CLUSTERDOWN, and MOVED or ASK once redis-rs has followed as many redirects as it will),
/// when full (OOM: `#!lua` scripts are refused whole) or unable to persist
/// (MISCONF), or busy with a script (BUSY). All pass with time: the store is unavailable.
const REFUSALS: [&str; 11] = [
    "LOADING",
    "MOVED",
    "ASK",
    "READONLY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "OOM",
    "MISCONF",
    "BUSY",
    "NOREPLICAS",
];

/// A write made but not acknowledged by the replicas or the AOF (see `wait_for_copies`).
fn not_acknowledged(detail: String) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, NOT_ACKNOWLEDGED, detail))
}

const NOT_ACKNOWLEDGED: &str = "NOTACKNOWLEDGED";

fn redis_error(e: redis::RedisError, sent: Sent) -> StoreError {
    let code = e.code().unwrap_or_default();
    let text = e.to_string();
    if code == "CLAIMLOST" || text.contains("CLAIMLOST") {
        StoreError::ClaimLost
    } else if text.contains(NOT_ACKNOWLEDGED) {
        StoreError::NotReplicated(text)
    } else if REFUSALS.contains(&code) || e.is_connection_refusal() {
        StoreError::Unavailable(e.to_string())
    } else if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
    {
        match sent {
            Sent::No => StoreError::Unavailable(e.to_string()),
            Sent::Maybe => StoreError::OutcomeUnknown(e.to_string()),
        }
    } else {
        StoreError::Other(e.to_string())
    }
}

/// A failed store operation, and whether it failed on a connection the pool handed out
/// without checking it, which was dead.
struct Failed {
    error: StoreError,
    dead_unchecked: bool,
}

type StreamEntries = Vec<(String, Vec<(String, String)>)>;

fn claimed_from(partner: &PartnerId, entries: StreamEntries, reclaimed: bool) -> Vec<ClaimedBatch> {
    entries
        .into_iter()
        .filter_map(|(entry_id, fields)| {
            let batch_id = fields.into_iter().find(|(k, _)| k == "batch")?.1;
            Some(ClaimedBatch {
                partner_id: partner.clone(),
                entry_id,
                batch_id,
                reclaimed,
            })
        })
        .collect()
}

#[async_trait::async_trait]
impl Reports for RedisStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.with_connection(async |c| redis::cmd("PING").query_async::<String>(c).await)
            .await
            .map(drop)
    }

    async fn claim_idempotency(
        &self,
        scope: &IdempotencyScope,
        ttl: Duration,
    ) -> Result<IdempotencyClaim, StoreError> {
        let key = self.idempotency_key(scope);
        let token = Uuid::new_v4().to_string();
        // A replay answers 202 for a report whose own accept may never have been confirmed on
        // disk or on the replicas (its first answer was outcome-unknown: NotReplicated). So
        // where writes wait for copies, the replay does too: the claim script writes once more
        // and the copies are awaited for that write, which follows the accept in the
        // replication stream and in the AOF (WAIT and WAITAOF count a connection's own last
        // write, so a read alone would wait for nothing).
        let wait = self.replica_acks > 0 || self.waitaof.load(std::sync::atomic::Ordering::Relaxed);
        let reply: Vec<String> = self
            .with_connection(async |c| {
                let reply: Vec<String> = self
                    .claim
                    .key(&key)
                    .arg(&token)
                    .arg(ttl.as_millis() as u64)
                    .arg(if wait { "1" } else { "0" })
                    .invoke_async(c)
                    .await?;
                if wait && reply.first().map(String::as_str) == Some("done") {
                    self.wait_for_copies(c, &key).await?;
                }
                Ok(reply)
            })
            .await?;
        match reply.first().map(String::as_str) {
            Some("claimed") => Ok(IdempotencyClaim::Claimed { token }),
            Some("in_progress") => Ok(IdempotencyClaim::InProgress),
            Some("done") => {
                let record: RecordedResponse = decode(reply.get(1).map_or("", String::as_str))?;
                Ok(IdempotencyClaim::Completed(record))
            }
            _ => Err(StoreError::Other(format!(
                "unexpected claim reply {reply:?}"
            ))),
        }
    }

    async fn release_idempotency(
        &self,
        scope: &IdempotencyScope,
        token: &str,
    ) -> Result<(), StoreError> {
        let key = self.idempotency_key(scope);
        self.with_connection(async |c| {
            self.release
                .key(&key)
                .arg(token)
                .invoke_async::<String>(c)
                .await
        })
        .await
        .map(drop)
    }

    async fn accept(
        &self,
        report: &Report,
        batches: &[BatchDoc],
        idempotency: Option<&IdempotentAccept>,
        idempotency_ttl: Duration,
    ) -> Result<(), StoreError> {
        let partner = &report.partner_id;
        let report_key = self.report_key(partner, report.id);
        let period = report.period.map(|p| p.to_string()).unwrap_or_default();
        let mut invocation = self.accept.prepare_invoke();
        invocation
            .key(match idempotency {
                Some(i) => self.idempotency_key(&i.scope),
                // Unused, but declared in the same slot so the script stays cluster-safe.
                None => self.key(partner, "idem:none"),
            })
            .key(&report_key)
            .key(self.key(partner, "reports"))
            .key(self.key_of(partner, &["reports:branch:", &report.branch]))
            .key(self.stream_key(partner))
            .key(self.key_of(partner, &["period:", &period, ":loans"]))
            .key(self.key_of(partner, &["period:", &period, ":reports"]))
            .key(self.key(partner, "periods"))
            .key(self.state_index_key(partner, BatchState::Queued))
            .key(self.indexed_marker_key(partner));
        for batch in batches {
            invocation.key(self.batch_key(partner, &batch.id));
        }
        invocation.key(self.key_of(partner, &["period:", &period, ":branches"]));
        invocation
            .arg(if idempotency.is_some() { "1" } else { "0" })
            .arg(idempotency.map_or("", |i| i.token.as_str()))
            .arg(idempotency_ttl.as_secs())
            .arg(idempotency.map_or(String::new(), |i| encode(&i.response)))
            .arg(
                report
                    .id
                    .hyphenated()
                    .encode_lower(&mut Uuid::encode_buffer()) as &str,
            )
            .arg(encode(report))
            .arg(report.created_at.timestamp_millis())
            .arg(match (report.correction, report.corrects_any_branch) {
                (false, _) => "0",
                (true, true) => "1",
                (true, false) => "2",
            })
            .arg(self.period_index_ttl.as_secs())
            .arg(&period);
        for batch in batches {
            invocation.arg(encode(batch));
        }
        for batch in batches {
            invocation.arg(&batch.id);
        }
        for repayment in batches.iter().flat_map(|b| &b.repayments) {
            invocation.arg(super::loan_key(report.column_format, repayment));
        }
        let reply: Vec<String> = self
            .write_repeatable(async |c| {
                let reply = invocation.invoke_async(c).await?;
                self.wait_for_copies(c, &report_key).await?;
                Ok(reply)
            })
            .await?;
        match reply.split_first() {
            Some((first, earlier)) if first == "reported" => Err(StoreError::AlreadyReported(
                self.earlier_reports(report, batches, earlier).await,
            )),
            Some((first, positions)) if first == "foreign" => Err(StoreError::OtherBranchLoans(
                positions.iter().filter_map(|p| p.parse().ok()).collect(),
            )),
            _ => Ok(()),
        }
    }

    async fn check_accept(&self, report: &Report, batches: &[BatchDoc]) -> Result<(), StoreError> {
        self.check_period_loans(report, batches).await
    }

    async fn report(
        &self,
        partner: &PartnerId,
        id: Uuid,
    ) -> Result<Option<(Report, Vec<Batch>)>, StoreError> {
        let Some(report) = self.report_doc(partner, id).await? else {
            return Ok(None);
        };
        let batches = self.batches(&report).await?;
        Ok(Some((report, batches)))
    }

    async fn reports(
        &self,
        partner: &PartnerId,
        query: &ReportQuery,
    ) -> Result<ReportPage, StoreError> {
        let index = match &query.branch {
            Some(branch) => self.key(partner, &format!("reports:branch:{branch}")),
            None => self.key(partner, "reports"),
        };
        let mut upper = match query.after {
            Some(id) => format!("({id}"),
            None => "+".to_owned(),
        };
        let limit = query.limit.max(1);
        let mut found = Vec::with_capacity(limit);
        let mut scanned = 0;
        loop {
            let chunk = (limit - found.len()).max(50);
            let ids: Vec<String> = self
                .with_connection(async |c| {
                    redis::cmd("ZREVRANGEBYLEX")
                        .arg(&index)
                        .arg(&upper)
                        .arg("-")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(chunk)
                        .query_async(c)
                        .await
                })
                .await?;
            if ids.is_empty() {
                return Ok(ReportPage {
                    reports: found,
                    next: None,
                });
            }
            let docs = self.live_docs(partner, &ids).await?;
            let exhausted = ids.len() < chunk;
            for (id, (doc, status, refused)) in ids.iter().zip(docs) {
                scanned += 1;
                upper = format!("({id}");
                let Some(doc) = doc else { continue };
                let report = report_with_status(&doc, status.as_deref(), refused)?;
                let matches = query.status.is_none_or(|s| s == report.status)
                    && (!query.refused_only || report.refused_by_kiva > 0)
                    && query.period.is_none_or(|p| Some(p) == report.period);
                if matches {
                    found.push(report);
                    if found.len() == limit {
                        let next = found.last().map(|r| r.id);
                        return Ok(ReportPage {
                            reports: found,
                            next,
                        });
                    }
                }
            }
            if exhausted {
                return Ok(ReportPage {
                    reports: found,
                    next: None,
                });
            }
            if scanned >= MAX_SCANNED_PER_PAGE {
                let next = Uuid::parse_str(upper.trim_start_matches('(')).ok();
                return Ok(ReportPage {
                    reports: found,
                    next,
                });
            }
        }
    }

    async fn durability(&self) -> Result<Durability, StoreError> {
        Ok(self
            .check_persistence()
            .await?
            .durability(self.replica_acks))
    }
}

#[async_trait::async_trait]
impl Queue for RedisStore {
    async fn prepare_delivery(&self, partner: &PartnerId) -> Result<(), StoreError> {
        self.ensure_group(&self.stream_key(partner)).await
    }

    async fn promote_due_retries(
        &self,
        partner: &PartnerId,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let keys = [self.key(partner, "retries"), self.stream_key(partner)];
        self.with_connection(async |c| {
            self.promote
                .key(&keys[0])
                .key(&keys[1])
                .arg(now.timestamp_millis())
                .arg(PROMOTE_LIMIT)
                .invoke_async(c)
                .await
        })
        .await
    }

    async fn claim_batches(
        &self,
        partner: &PartnerId,
        consumer: &str,
        count: usize,
        reclaim_after: Duration,
    ) -> Result<Vec<ClaimedBatch>, StoreError> {
        let stream = self.stream_key(partner);
        let min_idle = reclaim_after.as_millis() as u64;
        // Twice at most: a NOGROUP (Redis restarted without the group) re-creates it once.
        for _ in 0..2 {
            let result = self
                .with_connection(async |c| {
                    let (_, stale, _): (String, StreamEntries, Vec<String>) =
                        redis::cmd("XAUTOCLAIM")
                            .arg(&stream)
                            .arg(GROUP)
                            .arg(consumer)
                            .arg(min_idle)
                            .arg("0-0")
                            .arg("COUNT")
                            .arg(count)
                            .query_async(c)
                            .await?;
                    let mut claimed = claimed_from(partner, stale, true);
                    if claimed.len() < count {
                        let reply: Option<Vec<(String, StreamEntries)>> = redis::cmd("XREADGROUP")
                            .arg("GROUP")
                            .arg(GROUP)
                            .arg(consumer)
                            .arg("COUNT")
                            .arg(count - claimed.len())
                            .arg("STREAMS")
                            .arg(&stream)
                            .arg(">")
                            .query_async(c)
                            .await?;
                        for (_, entries) in reply.unwrap_or_default() {
                            claimed.extend(claimed_from(partner, entries, false));
                        }
                    }
                    Ok(claimed)
                })
                .await;
            match result {
                Err(StoreError::Other(e)) if e.contains("NOGROUP") => {
                    tracing::warn!(partner = %partner, "delivery group missing; creating it");
                    self.ensure_group(&stream).await?;
                }
                other => return other,
            }
        }
        Ok(Vec::new())
    }

    async fn begin_attempt(
        &self,
        claimed: &ClaimedBatch,
        now: DateTime<Utc>,
    ) -> Result<BeginAttempt, StoreError> {
        let partner = &claimed.partner_id;
        let Some(report) = self.report_of(partner, &claimed.batch_id).await? else {
            // A queue entry without its report (its keys were lost): nothing to send.
            tracing::error!(batch = %claimed.batch_id, "queued batch has no report; dropping the entry");
            let stream = self.stream_key(partner);
            self.with_connection(async |c| {
                redis::pipe()
                    .cmd("XACK")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(&claimed.entry_id)
                    .cmd("XDEL")
                    .arg(&stream)
                    .arg(&claimed.entry_id)
                    .query_async::<()>(c)
                    .await
            })
            .await?;
            return Ok(BeginAttempt::Skip(BatchState::Failed));
        };
        let keys = self.delivery_keys(partner, &claimed.batch_id, &report);
        let held = BatchResult::held_after_worker_stopped();
        let reply: Vec<String> = self
            .write(async |c| {
                let mut invocation = self.begin.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                let reply: Vec<String> = invocation
                    .arg(&claimed.entry_id)
                    .arg(now.timestamp_millis())
                    .arg(encode(&held))
                    .arg(&claimed.batch_id)
                    .arg(encode(&Attempt::unrecorded(0, now)))
                    .arg(Attempt::time_text(&now))
                    .invoke_async(c)
                    .await?;
                // `sending` must be on disk before Kiva is called: a Redis that lost it would
                // hand the batch out again as queued, and it would be uploaded twice.
                if reply.first().map(String::as_str) == Some("send") {
                    self.wait_for_copies(c, &keys[0]).await?;
                }
                Ok(reply)
            })
            .await?;
        match reply.first().map(String::as_str) {
            Some("send") => {
                let number = |i: usize| reply.get(i).and_then(|a| a.parse::<u32>().ok());
                let attempt = number(1).unwrap_or(1);
                let budget_from = number(2).unwrap_or(0).min(attempt.saturating_sub(1));
                let batch: BatchDoc = decode(reply.get(3).map_or("", String::as_str))?;
                let queued_at = reply
                    .get(4)
                    .and_then(|ms| ms.parse::<i64>().ok())
                    .and_then(from_ms);
                Ok(BeginAttempt::Send {
                    attempt,
                    attempts_in_budget: attempt - budget_from,
                    batch,
                    column_format: report.column_format,
                    queued_at: queued_at.unwrap_or(report.created_at),
                })
            }
            Some("held") => Ok(BeginAttempt::Held),
            _ => Ok(BeginAttempt::Skip(
                parse_state(reply.get(1).map(String::as_str)).unwrap_or(BatchState::Failed),
            )),
        }
    }

    async fn release_attempt(&self, claimed: &ClaimedBatch) -> Result<(), StoreError> {
        let partner = &claimed.partner_id;
        let Some(report) = self.report_of(partner, &claimed.batch_id).await? else {
            return Ok(());
        };
        let keys = self.delivery_keys(partner, &claimed.batch_id, &report);
        self.write(async |c| {
            let mut invocation = self.release_attempt.prepare_invoke();
            for key in &keys {
                invocation.key(key);
            }
            invocation
                .arg(&claimed.entry_id)
                .arg(&claimed.batch_id)
                .invoke_async::<String>(c)
                .await
        })
        .await
        .map(drop)
    }

    async fn finish_attempt(
        &self,
        claimed: &ClaimedBatch,
        attempt: u32,
        end: &AttemptEnd,
    ) -> Result<(), StoreError> {
        let partner = &claimed.partner_id;
        let report = self
            .report_of(partner, &claimed.batch_id)
            .await?
            .ok_or_else(|| StoreError::Other(format!("report of {} is gone", claimed.batch_id)))?;
        let keys = self.delivery_keys(partner, &claimed.batch_id, &report);
        let _: String = self
            .write(async |c| {
                let mut invocation = self.finish.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                let reply: String = invocation
                    .arg(&claimed.entry_id)
                    .arg(attempt.to_string())
                    .arg(end.state.as_str())
                    .arg(encode(&end.result))
                    .arg(encode(&end.attempt))
                    .arg(
                        end.retry_at
                            .map_or(String::new(), |t| t.timestamp_millis().to_string()),
                    )
                    .arg(&claimed.batch_id)
                    .arg(end.refused_by_kiva)
                    .arg(super::UNRECORDED)
                    .invoke_async(c)
                    .await?;
                // Kiva's answer lost with a master would leave the batch to be held (or, for
                // a retry, resent): the worker repeats FINISH until the replicas have it.
                self.wait_for_copies(c, &keys[0]).await?;
                Ok(reply)
            })
            .await?;
        Ok(())
    }

    async fn operate_batch(
        &self,
        partner: &PartnerId,
        batch_id: &str,
        command: &OperatorCommand,
    ) -> Result<OperatorOutcome, StoreError> {
        let Some(report) = self.report_of(partner, batch_id).await? else {
            return Ok(OperatorOutcome::NotFound);
        };
        let (kind, now) = (command.action, command.at);
        let keys = self.delivery_keys(partner, batch_id, &report);
        // `from_state` is appended by the script, which alone knows it atomically.
        let action = encode(command);
        let result = BatchResult::marked_delivered(command);
        let allowed: String = ALL_STATES
            .iter()
            .filter(|s| kind.allowed_from(**s))
            .fold(",".to_owned(), |list, s| list + s.as_str() + ",");
        let kind_arg = match kind {
            OperatorActionKind::Resend => "resend",
            OperatorActionKind::MarkDelivered => "mark_delivered",
        };
        let reply: Vec<String> = self
            .write(async |c| {
                let mut invocation = self.operate.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                let reply = invocation
                    .arg(kind_arg)
                    .arg(&action)
                    .arg(now.timestamp_millis())
                    .arg(encode(&result))
                    .arg(&allowed)
                    .arg(batch_id)
                    .arg(command.expected.map(|v| v.to_string()).unwrap_or_default())
                    .invoke_async::<Vec<String>>(c)
                    .await?;
                // An operator's decision answered as made must survive a failover like a
                // 202: a lost resend or mark-delivered would bring the batch back held.
                if reply.first().map(String::as_str) == Some("done") {
                    self.wait_for_copies(c, &keys[0]).await?;
                }
                Ok(reply)
            })
            .await?;
        match reply.first().map(String::as_str) {
            Some("done") => {
                let batch = self.batches_of_one(&report, batch_id).await?;
                Ok(batch.map_or(OperatorOutcome::NotFound, |b| {
                    OperatorOutcome::Done(Box::new(b))
                }))
            }
            Some("conflict") => Ok(OperatorOutcome::Conflict(parse_state(
                reply.get(1).map(String::as_str),
            )?)),
            Some("changed") => reply
                .get(1)
                .and_then(|v| BatchVersion::parse(v))
                .map(OperatorOutcome::Changed)
                .ok_or_else(|| StoreError::Other(format!("unexpected OPERATE reply {reply:?}"))),
            _ => Ok(OperatorOutcome::NotFound),
        }
    }

    async fn queued_batches(&self, partner: &PartnerId) -> Result<Vec<String>, StoreError> {
        let stream = self.stream_key(partner);
        let entries: StreamEntries = self
            .with_connection(async |c| {
                redis::cmd("XRANGE")
                    .arg(&stream)
                    .arg("-")
                    .arg("+")
                    .query_async(c)
                    .await
            })
            .await?;
        Ok(claimed_from(partner, entries, false)
            .into_iter()
            .map(|c| c.batch_id)
            .collect())
    }

    async fn queue_summary(&self, partner: &PartnerId) -> Result<super::QueueSummary, StoreError> {
        self.read_queue_summary(partner).await
    }

    async fn batch(
        &self,
        partner: &PartnerId,
        batch_id: &str,
    ) -> Result<Option<(Batch, String)>, StoreError> {
        let Some(report) = self.report_of(partner, batch_id).await? else {
            return Ok(None);
        };
        let batch = self.batches_of_one(&report, batch_id).await?;
        Ok(batch.map(|b| (b, report.branch)))
    }

    async fn purge_settled(
        &self,
        partner: &PartnerId,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let index = self.key(partner, "reports");
        // Ids are UUIDv7, so every report created before `before` sorts below this one.
        let floor = super::oldest_id_at(before);
        let mut lower = "-".to_owned();
        let (mut purged, mut scanned) = (0, 0);
        while purged < limit && scanned < MAX_SCANNED_PER_PAGE * 10 {
            let ids: Vec<String> = self
                .with_connection(async |c| {
                    redis::cmd("ZRANGEBYLEX")
                        .arg(&index)
                        .arg(&lower)
                        .arg(format!("({floor}"))
                        .arg("LIMIT")
                        .arg(0)
                        .arg(100)
                        .query_async(c)
                        .await
                })
                .await?;
            let Some(last) = ids.last() else { break };
            lower = format!("({last}");
            for id in &ids {
                scanned += 1;
                let Ok(id) = Uuid::parse_str(id) else {
                    continue;
                };
                let Some(report) = self.report_doc(partner, id).await? else {
                    continue;
                };
                if !report.status.is_settled() {
                    continue;
                }
                let mut invocation = self.purge.prepare_invoke();
                invocation
                    .key(self.report_key(partner, id))
                    .key(&index)
                    .key(self.key(partner, &format!("reports:branch:{}", report.branch)))
                    .key(self.key(
                        partner,
                        &format!(
                            "period:{}:reports",
                            report.period.map(|p| p.to_string()).unwrap_or_default()
                        ),
                    ));
                for batch in report.batch_ids() {
                    let key = self.batch_key(partner, &batch);
                    invocation
                        .key(format!("{key}:attempts"))
                        .key(format!("{key}:actions"))
                        .key(key);
                }
                invocation.arg(id.to_string());
                let deleted: i64 = self
                    .with_connection(async |c| invocation.invoke_async(c).await)
                    .await?;
                purged += deleted as usize;
                if purged == limit {
                    break;
                }
            }
        }
        Ok(purged)
    }
}

#[async_trait::async_trait]
impl Periods for RedisStore {
    async fn period_reports(
        &self,
        partner: &PartnerId,
        period: Period,
        branch: Option<&str>,
    ) -> Result<Vec<(Report, Vec<Batch>)>, StoreError> {
        let index = self.key(partner, &format!("period:{period}:reports"));
        let ids: Vec<String> = self
            .with_connection(async |c| {
                redis::cmd("ZRANGE")
                    .arg(&index)
                    .arg(0)
                    .arg(-1)
                    .query_async(c)
                    .await
            })
            .await?;
        let reports: Vec<Report> = self
            .report_docs(partner, &ids)
            .await?
            .into_iter()
            .filter(|r| branch.is_none_or(|b| r.branch == b))
            .collect();
        let batches = self.batches_of_many(&reports).await?;
        Ok(reports.into_iter().zip(batches).collect())
    }

    async fn periods(&self, partner: &PartnerId) -> Result<Vec<Period>, StoreError> {
        let index = self.key(partner, "periods");
        let periods: Vec<String> = self
            .with_connection(async |c| {
                redis::cmd("ZRANGE")
                    .arg(&index)
                    .arg(0)
                    .arg(-1)
                    .arg("REV")
                    .query_async(c)
                    .await
            })
            .await?;
        Ok(periods
            .iter()
            .filter_map(|p| Period::parse(p).ok())
            .collect())
    }

    // Kiva's expected loans: see `expected`.

    async fn replace_expected_loans(
        &self,
        snapshot: &ExpectedLoansSnapshot,
    ) -> Result<(), StoreError> {
        self.put_expected_loans(snapshot).await
    }

    async fn expected_loans(
        &self,
        partner: &PartnerId,
    ) -> Result<Option<ExpectedLoansSnapshot>, StoreError> {
        self.get_expected_loans(partner).await
    }

    async fn expected_loans_taken_at(
        &self,
        partner: &PartnerId,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.get_expected_loans_taken_at(partner).await
    }

    async fn lock_refresh(
        &self,
        partner: &PartnerId,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.take_refresh_lock(partner, holder, ttl).await
    }

    async fn unlock_refresh(&self, partner: &PartnerId, holder: &str) -> Result<(), StoreError> {
        self.give_back_refresh_lock(partner, holder).await
    }

    async fn record_refresh(
        &self,
        partner: &PartnerId,
        status: &RefreshStatus,
    ) -> Result<(), StoreError> {
        self.put_refresh_status(partner, status).await
    }

    async fn refresh_status(&self, partner: &PartnerId) -> Result<RefreshStatus, StoreError> {
        self.get_refresh_status(partner).await
    }
}

#[async_trait::async_trait]
impl Sessions for RedisStore {
    async fn create_session(
        &self,
        id_hash: &str,
        session: &WebSession,
        idle: Duration,
    ) -> Result<(), StoreError> {
        self.put_session(id_hash, session, idle).await
    }

    async fn session(
        &self,
        id_hash: &str,
        idle: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<WebSession>, StoreError> {
        self.touch_session(id_hash, idle, now).await
    }

    async fn end_session(&self, id_hash: &str) -> Result<(), StoreError> {
        self.delete_session(id_hash).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_is_named_as_serde_names_it() {
        // The scripts compare these names with the `state` fields serde wrote.
        for state in ALL_STATES {
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.as_str())
            );
        }
    }

    #[test]
    fn keys_are_built_as_before() {
        let store_prefix = "rg";
        let partner = PartnerId::parse("123").unwrap();
        let id = Uuid::parse_str("0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b").unwrap();
        let expected = format!("{store_prefix}:{{123}}:report:{id}");
        let built = key_parts(store_prefix, &partner, &["report:", &id.to_string()]);
        assert_eq!(built, expected);
    }

    #[test]
    fn an_earlier_report_is_read_with_or_without_its_position() {
        let id = "0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b";
        let uuid = Uuid::parse_str(id).unwrap();
        assert_eq!(parse_earlier(&format!("3={id}")), Some((3, uuid, None)));
        assert_eq!(
            parse_earlier(&format!("3={id}:7")),
            Some((3, uuid, Some(7)))
        );
        assert_eq!(parse_earlier("3"), None);
        assert_eq!(parse_earlier(&format!("x={id}")), None);
        assert_eq!(parse_earlier(&format!("3={id}:x")), None);
    }
}
