//! Running one call against Redis: within the store timeout, on a pooled connection, and
//! what its failure becomes: nothing written (`Unavailable`), maybe written
//! (`OutcomeUnknown`), or written but not yet copied (`NotReplicated`).

use std::time::Duration;

use super::{Connection, RedisStore};
use crate::store::StoreError;

impl RedisStore {
    /// After a write the gateway is about to acknowledge (a 202, `sending` before a call to
    /// Kiva, an attempt's outcome): waits until the local AOF has it on disk, when the server
    /// can say so, and until `replica_acks` replicas have it (a failover promotes a replica:
    /// what it lacks is lost, and a lost `sending` means a second upload). `key` is one the
    /// write touched: on a cluster, its master is the one asked.
    pub(super) async fn wait_for_copies(
        &self,
        c: &mut Connection,
        key: &str,
    ) -> redis::RedisResult<()> {
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
    pub(super) async fn with_connection<T, F>(&self, op: F) -> Result<T, StoreError>
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
    pub(super) async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: AsyncFnOnce(&mut Connection) -> redis::RedisResult<T>,
    {
        self.run(Sent::Maybe, op).await
    }

    /// A write whose repeat changes nothing (the accept: a report id is never reused, and the
    /// script answers `ok` for a report that exists). It runs once more when the connection
    /// it went out on was handed out unchecked and found dead: after a Redis restart every
    /// pooled connection is, and the first accept must not be the one that finds out.
    pub(super) async fn write_repeatable<T, F>(&self, op: F) -> Result<T, StoreError>
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
