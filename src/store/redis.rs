//! The Redis backend. Every key of one partner carries the hash tag `{partner}`, so each
//! atomic step touches one hash slot and the same scripts run on Redis Cluster unchanged.
//!
//! Keys (prefix `rg` by default):
//! - `rg:{p}:report:<id>`: the report (JSON);
//! - `rg:{p}:batch:<id>.<n>`: each batch with its repayments (JSON);
//! - `rg:{p}:reports`, `rg:{p}:reports:branch:<branch>`: sorted sets of report ids, all with
//!   score 0 so they order lexically; ids are UUIDv7, so lexical order is time order;
//! - `rg:{p}:deliveries`: the delivery stream, one entry per batch; never trimmed;
//! - `rg:{p}:idem:<api key name>:<sha256 of the Idempotency-Key>`: a hash, `in_progress` with a
//!   claim token and a short TTL, then `done` with the recorded answer and a long TTL.

use std::time::Duration;

use deadpool_redis::{Config, Pool, Runtime};
use redis::{AsyncCommands, Script};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    Batch, IdempotencyClaim, IdempotencyScope, IdempotentAccept, RecordedResponse, Report,
    ReportPage, ReportQuery, ReportStore, StoreError,
};
use crate::domain::PartnerId;

/// Reports examined per listing call at most, so a filter that matches little can't make one
/// request scan a partner's whole history; the caller gets a cursor to go on.
const MAX_SCANNED_PER_PAGE: usize = 1_000;

// `#!lua` (Redis 7) makes Redis refuse the whole script up front when it is out of memory
// under `noeviction`, instead of failing at some write in the middle: scripts are not rolled
// back, so a late failure would leave half a report. It also forbids touching undeclared keys.
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
// JSON, then the batch JSONs, then the batch ids.
const ACCEPT: &str = r#"#!lua
local batches = #KEYS - 5
if ARGV[1] == '1' then
  if redis.call('HGET', KEYS[1], 'token') ~= ARGV[2]
     or redis.call('HGET', KEYS[1], 'state') ~= 'in_progress' then
    return redis.error_reply('CLAIMLOST the idempotency claim is gone')
  end
end
redis.call('SET', KEYS[2], ARGV[6])
redis.call('ZADD', KEYS[3], 0, ARGV[5])
redis.call('ZADD', KEYS[4], 0, ARGV[5])
for i = 1, batches do
  redis.call('SET', KEYS[5 + i], ARGV[6 + i])
  redis.call('XADD', KEYS[5], '*', 'batch', ARGV[6 + batches + i], 'report', ARGV[5])
end
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'state', 'done', 'record', ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 'OK'
"#;

pub struct RedisStore {
    pool: Pool,
    prefix: String,
    timeout: Duration,
    claim: Script,
    release: Script,
    accept: Script,
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

    async fn batches(&self, report: &Report) -> Result<Vec<Batch>, StoreError> {
        let keys: Vec<String> = report
            .batch_ids()
            .map(|id| self.key(&report.partner_id, &format!("batch:{id}")))
            .collect();
        let docs: Vec<Option<String>> = self
            .with_connection(async |c| redis::cmd("MGET").arg(&keys).query_async(c).await)
            .await?;
        docs.into_iter()
            .zip(&keys)
            .map(|(doc, key)| {
                let doc = doc.ok_or_else(|| StoreError::Other(format!("{key} is missing")))?;
                decode(&doc)
            })
            .collect()
    }
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
        batches: &[Batch],
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
            .key(self.key(partner, &format!("report:{}", report.id)))
            .key(self.key(partner, "reports"))
            .key(self.key(partner, &format!("reports:branch:{}", report.branch)))
            .key(self.stream_key(partner));
        for batch in batches {
            invocation.key(self.key(partner, &format!("batch:{}", batch.id)));
        }
        invocation
            .arg(if idempotency.is_some() { "1" } else { "0" })
            .arg(idempotency.map_or("", |i| i.token.as_str()))
            .arg(idempotency_ttl.as_secs())
            .arg(idempotency.map_or(String::new(), |i| encode(&i.response)))
            .arg(report.id.to_string())
            .arg(encode(report));
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
        let key = self.key(partner, &format!("report:{id}"));
        let doc: Option<String> = self.with_connection(async |c| c.get(&key).await).await?;
        let Some(doc) = doc else { return Ok(None) };
        let report: Report = decode(&doc)?;
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
            let keys: Vec<String> = ids
                .iter()
                .map(|id| self.key(partner, &format!("report:{id}")))
                .collect();
            let docs: Vec<Option<String>> = self
                .with_connection(async |c| redis::cmd("MGET").arg(&keys).query_async(c).await)
                .await?;
            let exhausted = ids.len() < chunk;
            for (id, doc) in ids.iter().zip(docs) {
                scanned += 1;
                upper = format!("({id}");
                let Some(doc) = doc else { continue };
                let report: Report = decode(&doc)?;
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
}
