//! The Redis backend. Every key of one partner carries the hash tag `{partner}`, so each
//! atomic step touches one hash slot and the same scripts run on Redis Cluster unchanged.
//!
//! Keys (prefix `rg` by default):
//! - `rg:{p}:report:<id>`: hash; `doc` the report as accepted (JSON), `status` its live status;
//! - `rg:{p}:batch:<id>.<n>`: hash; `doc` the batch as accepted (JSON, never rewritten),
//!   `state`, `attempt` (attempts started), `queued_at` (ms), `next_attempt_at` (ms),
//!   `result` (JSON); with lists `…:attempts` and `…:actions` beside it;
//! - `rg:{p}:reports`, `rg:{p}:reports:branch:<branch>`: sorted sets of report ids, all with
//!   score 0 so they order lexically; ids are UUIDv7, so lexical order is time order;
//! - `rg:{p}:deliveries`: the delivery stream, one entry per batch to send, consumer group
//!   `delivery`; an entry is acknowledged and deleted when its batch settles, and the stream is
//!   never trimmed (trimming could drop entries still pending);
//! - `rg:{p}:retries`: sorted set of batches in `retry_wait`, scored by when they are due;
//! - `rg:{p}:idem:<api key name>:<sha256 of the Idempotency-Key>`: a hash, `in_progress` with a
//!   claim token and a short TTL, then `done` with the recorded answer and a long TTL.
//!
//! Scripts never decode JSON: documents are written whole by Rust, and scripts only move
//! plain fields, so Lua's number handling can't touch an amount.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use deadpool_redis::{Config, Pool, Runtime};
use redis::Script;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    AttemptEnd, Batch, BatchDoc, BatchProgress, BatchResult, BatchState, BeginAttempt,
    ClaimedBatch, IdempotencyClaim, IdempotencyScope, IdempotentAccept, OperatorActionKind,
    OperatorOutcome, RecordedResponse, Report, ReportPage, ReportQuery, ReportStore, StoreError,
    report_of_batch,
};
use crate::domain::PartnerId;

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
return {'done', redis.call('HGET', KEYS[1], 'record')}
"#;

const RELEASE: &str = r#"#!lua
if redis.call('HGET', KEYS[1], 'state') == 'in_progress'
   and redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 'OK'
"#;

// KEYS: idempotency, report, reports index, branch index, stream, then one key per batch.
// ARGV: idempotent ('1'|'0'), claim token, record TTL (s), record JSON, report id, report
// JSON, now (ms), then the batch JSONs, then the batch ids.
const ACCEPT: &str = r#"#!lua
local batches = #KEYS - 5
if ARGV[1] == '1' then
  if redis.call('HGET', KEYS[1], 'token') ~= ARGV[2]
     or redis.call('HGET', KEYS[1], 'state') ~= 'in_progress' then
    return redis.error_reply('CLAIMLOST the idempotency claim is gone')
  end
end
redis.call('HSET', KEYS[2], 'doc', ARGV[6], 'status', 'queued')
redis.call('ZADD', KEYS[3], 0, ARGV[5])
redis.call('ZADD', KEYS[4], 0, ARGV[5])
for i = 1, batches do
  redis.call('HSET', KEYS[5 + i], 'doc', ARGV[7 + i], 'state', 'queued', 'attempt', 0,
             'queued_at', ARGV[7])
  redis.call('XADD', KEYS[5], '*', 'batch', ARGV[7 + batches + i])
end
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'state', 'done', 'record', ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 'OK'
"#;

// Delivery scripts share one key layout: KEYS[1] the batch, [2] its report, [3] the stream,
// [4] the retry set, [5] the batch's attempts list, [6] its actions list, [7..] every batch
// of the report (for the roll-up). Settling an entry is XACK + XDEL, first: XACK answers 0
// rather than failing when the group is gone, so nothing after it can be cut short.
const ROLLUP: &str = r#"
local function rollup()
  local attention, delivered, queued, n = false, 0, 0, 0
  for i = 7, #KEYS do
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
  redis.call('HSET', KEYS[2], 'status', status)
end
local function settle(entry)
  redis.call('XACK', KEYS[3], 'delivery', entry)
  redis.call('XDEL', KEYS[3], entry)
end
"#;

// ARGV: entry id, now (ms), the result JSON to record if the batch is held.
const BEGIN: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' or state == 'retry_wait' then
  local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
  redis.call('HSET', KEYS[1], 'state', 'sending')
  redis.call('HDEL', KEYS[1], 'next_attempt_at')
  rollup()
  return {'send', tostring(attempt)}
end
if state == 'sending' then
  -- The entry was taken over from a worker that wrote 'sending' and never settled it:
  -- Kiva may have processed the upload, and a second one would be counted twice.
  settle(ARGV[1])
  redis.call('HSET', KEYS[1], 'state', 'held', 'result', ARGV[3])
  rollup()
  return {'held'}
end
settle(ARGV[1])
return {'skip', state or 'missing'}
"#;

// ARGV: entry id, attempt number, new state, result JSON, attempt JSON, retry due (ms) or ''.
const FINISH: &str = r#"
settle(ARGV[1])
redis.call('RPUSH', KEYS[5], ARGV[5])
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then
  -- An operator queued the batch again meanwhile; that newer attempt owns the state.
  return 'stale'
end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'result', ARGV[4])
local batch = string.match(KEYS[1], 'batch:(.+)$')
if ARGV[3] == 'retry_wait' then
  redis.call('HSET', KEYS[1], 'next_attempt_at', ARGV[6])
  redis.call('ZADD', KEYS[4], ARGV[6], batch)
end
rollup()
return 'OK'
"#;

// ARGV: action ('resend'|'mark_delivered'), action JSON without from_state, now (ms),
// result JSON (mark_delivered), the states allowed to start from (",held,failed,").
// Answers the state found.
const OPERATE: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing'} end
if not string.find(ARGV[5], ',' .. state .. ',', 1, true) then return {'conflict', state} end
local batch = string.match(KEYS[1], 'batch:(.+)$')
-- ARGV[2] is a JSON object made by Rust; the state found is spliced in as its last member.
redis.call('RPUSH', KEYS[6], string.sub(ARGV[2], 1, -2) .. ',"from_state":"' .. state .. '"}')
if ARGV[1] == 'resend' then
  redis.call('HSET', KEYS[1], 'state', 'queued', 'queued_at', ARGV[3])
  redis.call('HDEL', KEYS[1], 'next_attempt_at')
  redis.call('ZREM', KEYS[4], batch)
  redis.call('XADD', KEYS[3], '*', 'batch', batch)
else
  redis.call('HSET', KEYS[1], 'state', 'delivered', 'result', ARGV[4])
end
rollup()
return {'done', state}
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
    pool: Pool,
    prefix: String,
    timeout: Duration,
    claim: Script,
    release: Script,
    accept: Script,
    begin: Script,
    finish: Script,
    operate: Script,
    promote: Script,
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
        let mut config = Config::from_url(url);
        let mut pool_config = deadpool_redis::PoolConfig::new(pool_size);
        pool_config.timeouts.wait = Some(timeout);
        pool_config.timeouts.create = Some(timeout);
        pool_config.timeouts.recycle = Some(timeout);
        config.pool = Some(pool_config);
        let pool = config
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| StoreError::Other(format!("invalid store.url: {e}")))?;
        Ok(Self {
            pool,
            prefix: prefix.to_owned(),
            timeout,
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
            accept: Script::new(ACCEPT),
            begin: delivery_script(BEGIN),
            finish: delivery_script(FINISH),
            operate: delivery_script(OPERATE),
            promote: Script::new(PROMOTE),
        })
    }

    fn key(&self, partner: &PartnerId, rest: &str) -> String {
        format!("{}:{{{}}}:{rest}", self.prefix, partner.as_str())
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
        self.key(partner, &format!("batch:{batch_id}"))
    }

    fn report_key(&self, partner: &PartnerId, report: Uuid) -> String {
        self.key(partner, &format!("report:{report}"))
    }

    /// Runs `op` on a pooled connection within the store timeout; any failure to reach Redis
    /// becomes `Unavailable`.
    async fn with_connection<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: AsyncFnOnce(&mut deadpool_redis::Connection) -> redis::RedisResult<T>,
    {
        let work = async {
            let mut conn = self
                .pool
                .get()
                .await
                .map_err(|e| redis_error(pool_error(e)))?;
            op(&mut conn).await.map_err(redis_error)
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer from Redis within {:?}",
                self.timeout
            ))),
        }
    }

    async fn report_doc(
        &self,
        partner: &PartnerId,
        id: Uuid,
    ) -> Result<Option<Report>, StoreError> {
        let key = self.report_key(partner, id);
        let (doc, status): (Option<String>, Option<String>) = self
            .with_connection(async |c| {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("doc")
                    .arg("status")
                    .query_async(c)
                    .await
            })
            .await?;
        doc.map(|doc| report_with_status(&doc, status.as_deref()))
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
        let partner = &report.partner_id;
        let ids: Vec<String> = report.batch_ids().collect();
        let mut pipe = redis::pipe();
        for id in &ids {
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
        let rows: Vec<Row> = self
            .with_connection(async |c| pipe.query_async(c).await)
            .await?;
        rows.into_iter()
            .zip(&ids)
            .map(|((fields, attempts, actions), id)| {
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
                Ok(Batch::assemble(doc, progress))
            })
            .collect()
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

fn report_with_status(doc: &str, status: Option<&str>) -> Result<Report, StoreError> {
    let mut report: Report = decode(doc)?;
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

fn state_name(state: BatchState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .expect("states serialize as strings")
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

fn redis_error(e: redis::RedisError) -> StoreError {
    if e.code() == Some("CLAIMLOST") || e.to_string().contains("CLAIMLOST") {
        StoreError::ClaimLost
    } else if e.is_io_error()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
    {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Other(e.to_string())
    }
}

fn pool_error(e: deadpool_redis::PoolError) -> redis::RedisError {
    match e {
        deadpool_redis::PoolError::Backend(e) => e,
        other => redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            other.to_string(),
        )),
    }
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
impl ReportStore for RedisStore {
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
        let reply: Vec<String> = self
            .with_connection(async |c| {
                self.claim
                    .key(&key)
                    .arg(&token)
                    .arg(ttl.as_millis() as u64)
                    .invoke_async(c)
                    .await
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
        let mut invocation = self.accept.prepare_invoke();
        invocation
            .key(match idempotency {
                Some(i) => self.idempotency_key(&i.scope),
                // Unused, but declared in the same slot so the script stays cluster-safe.
                None => self.key(partner, "idem:none"),
            })
            .key(self.report_key(partner, report.id))
            .key(self.key(partner, "reports"))
            .key(self.key(partner, &format!("reports:branch:{}", report.branch)))
            .key(self.stream_key(partner));
        for batch in batches {
            invocation.key(self.batch_key(partner, &batch.id));
        }
        invocation
            .arg(if idempotency.is_some() { "1" } else { "0" })
            .arg(idempotency.map_or("", |i| i.token.as_str()))
            .arg(idempotency_ttl.as_secs())
            .arg(idempotency.map_or(String::new(), |i| encode(&i.response)))
            .arg(report.id.to_string())
            .arg(encode(report))
            .arg(report.created_at.timestamp_millis());
        for batch in batches {
            invocation.arg(encode(batch));
        }
        for batch in batches {
            invocation.arg(&batch.id);
        }
        self.with_connection(async |c| invocation.invoke_async::<String>(c).await)
            .await
            .map(drop)
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
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.cmd("HMGET")
                    .arg(self.key(partner, &format!("report:{id}")))
                    .arg("doc")
                    .arg("status");
            }
            let docs: Vec<(Option<String>, Option<String>)> = self
                .with_connection(async |c| pipe.query_async(c).await)
                .await?;
            let exhausted = ids.len() < chunk;
            for (id, (doc, status)) in ids.iter().zip(docs) {
                scanned += 1;
                upper = format!("({id}");
                let Some(doc) = doc else { continue };
                let report = report_with_status(&doc, status.as_deref())?;
                let matches = query.status.is_none_or(|s| s == report.status)
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
            .with_connection(async |c| {
                let mut invocation = self.begin.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                invocation
                    .arg(&claimed.entry_id)
                    .arg(now.timestamp_millis())
                    .arg(encode(&held))
                    .invoke_async(c)
                    .await
            })
            .await?;
        match reply.first().map(String::as_str) {
            Some("send") => {
                let attempt: u32 = reply.get(1).and_then(|a| a.parse().ok()).unwrap_or(1);
                let key = &keys[0];
                let (doc, queued_at): (Option<String>, Option<i64>) = self
                    .with_connection(async |c| {
                        redis::cmd("HMGET")
                            .arg(key)
                            .arg("doc")
                            .arg("queued_at")
                            .query_async(c)
                            .await
                    })
                    .await?;
                let batch: BatchDoc =
                    decode(&doc.ok_or_else(|| StoreError::Other("batch doc missing".into()))?)?;
                Ok(BeginAttempt::Send {
                    attempt,
                    batch,
                    column_format: report.column_format,
                    queued_at: queued_at.and_then(from_ms).unwrap_or(report.created_at),
                })
            }
            Some("held") => Ok(BeginAttempt::Held),
            _ => Ok(BeginAttempt::Skip(
                parse_state(reply.get(1).map(String::as_str)).unwrap_or(BatchState::Failed),
            )),
        }
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
            .with_connection(async |c| {
                let mut invocation = self.finish.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                invocation
                    .arg(&claimed.entry_id)
                    .arg(attempt.to_string())
                    .arg(state_name(end.state))
                    .arg(encode(&end.result))
                    .arg(encode(&end.attempt))
                    .arg(
                        end.retry_at
                            .map_or(String::new(), |t| t.timestamp_millis().to_string()),
                    )
                    .invoke_async(c)
                    .await
            })
            .await?;
        Ok(())
    }

    async fn operate_batch(
        &self,
        partner: &PartnerId,
        batch_id: &str,
        kind: OperatorActionKind,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<OperatorOutcome, StoreError> {
        let Some(report) = self.report_of(partner, batch_id).await? else {
            return Ok(OperatorOutcome::NotFound);
        };
        let keys = self.delivery_keys(partner, batch_id, &report);
        // `from_state` is appended by the script, which alone knows it atomically.
        let action = serde_json::json!({
            "action": kind, "by": by, "at": now,
        });
        let result = BatchResult::marked_delivered_by(by);
        let allowed: String = ALL_STATES
            .iter()
            .filter(|s| kind.allowed_from(**s))
            .fold(",".to_owned(), |list, s| list + &state_name(*s) + ",");
        let kind_arg = match kind {
            OperatorActionKind::Resend => "resend",
            OperatorActionKind::MarkDelivered => "mark_delivered",
        };
        let reply: Vec<String> = self
            .with_connection(async |c| {
                let mut invocation = self.operate.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                invocation
                    .arg(kind_arg)
                    .arg(action.to_string())
                    .arg(now.timestamp_millis())
                    .arg(encode(&result))
                    .arg(&allowed)
                    .invoke_async(c)
                    .await
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
}
