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
//! Scripts are .lua files beside the Rust that runs them, one per atomic step, each headed by
//! its KEYS, ARGV and the invariant it keeps. `#!lua` (Redis 7) makes Redis refuse a whole
//! script up front when it is out of memory under `noeviction`, instead of failing at some
//! write in the middle: scripts are not rolled back, so a late failure would leave half a
//! report. It also forbids touching undeclared keys (the queue summary's build, which must,
//! goes without it).
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

mod call;
mod cluster_pool;
mod connection;
mod periods;
mod persistence;
mod pool;
mod queue;
mod reports;
mod sessions;
mod summary;

pub use connection::Connection;
use connection::Pools;
pub use persistence::Persistence;

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

use crate::domain::PartnerId;
use crate::store::{
    Batch, BatchDoc, BatchProgress, BatchState, DEFAULT_RETENTION, Report, StoreError,
    period_index_ttl, report_of_batch,
};

/// Reports examined per listing call at most, so a filter that matches little can't make one
/// request scan a partner's whole history; the caller gets a cursor to go on.
const MAX_SCANNED_PER_PAGE: usize = 1_000;
/// The states with an index of their batches, in the order of the delivery scripts' KEYS.
const STATE_INDEX: [BatchState; 6] = [
    BatchState::Queued,
    BatchState::Sending,
    BatchState::RetryWait,
    BatchState::Held,
    BatchState::Rejected,
    BatchState::Failed,
];

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
            waitaof: std::sync::atomic::AtomicBool::new(false),
            replica_acks: 0,
            replica_ack_timeout: Duration::from_secs(1),
            period_index_ttl: period_index_ttl(DEFAULT_RETENTION),
        })
    }

    /// Settled reports are kept `retention`; a period's loan index as long, and a bit more.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.period_index_ttl = period_index_ttl(retention);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_built_as_before() {
        let store_prefix = "rg";
        let partner = PartnerId::parse("123").unwrap();
        let id = Uuid::parse_str("0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b").unwrap();
        let expected = format!("{store_prefix}:{{123}}:report:{id}");
        let built = key_parts(store_prefix, &partner, &["report:", &id.to_string()]);
        assert_eq!(built, expected);
    }
}
