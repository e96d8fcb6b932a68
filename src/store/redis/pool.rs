//! The Redis connection pool: deadpool's pool over deadpool-redis's manager, except that a
//! connection in use moments ago is handed out again without a check.
//!
//! deadpool-redis checks every connection it hands out with `UNWATCH` + `PING` and waits for
//! the answer: a round trip per store operation, the largest single cost of a small accept
//! (bench/RESULTS.md). Neither half is needed for a connection that just answered:
//! - `UNWATCH` undoes a `WATCH` left behind, and the gateway never sends `WATCH` (nor a
//!   blocking command): its operations are single commands, pipelines and scripts, and its
//!   one `MULTI` (a web session's write) goes out with its `EXEC` as one atomic pipeline.
//! - `PING` finds a connection that died while idle. One that answered within `FRESH_FOR`
//!   and was given back is very likely alive; if it is not, its next command fails at once
//!   with an I/O error, which `RedisStore::run` already maps (503, or "outcome unknown" for a
//!   write, which the accept path resolves by reading the report) and answers by retiring
//!   the connection, exactly as for a connection that dies mid-command. A connection idle
//!   for longer is still checked, so after a quiet spell (or a Redis restart noticed by
//!   nobody) requests get a checked connection, as before.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, RecycleResult};
use redis::RedisError;
use redis::aio::{ConnectionLike, MultiplexedConnection};

/// How recently a connection must have been handed out to be handed out again unchecked.
/// Under load (where the round trip matters) connections come back within milliseconds;
/// at an MFI's usual pace they are idle longer and get the check.
const FRESH_FOR: Duration = Duration::from_millis(250);

pub(super) type Pool = managed::Pool<QuickRecycle, Connection>;

pub(super) fn pool(
    url: &str,
    config: managed::PoolConfig,
) -> Result<Pool, Box<dyn std::error::Error>> {
    let manager = QuickRecycle {
        checked: deadpool_redis::Manager::new(url)?,
        since: Instant::now(),
        suspected: AtomicU64::new(0),
    };
    Ok(Pool::builder(manager)
        .config(config)
        .runtime(deadpool::Runtime::Tokio1)
        .build()?)
}

pub(super) struct QuickRecycle {
    checked: deadpool_redis::Manager,
    since: Instant,
    /// When (ns after `since`) a connection last turned out dead: a connection handed out
    /// before then is checked again, however recently it was used.
    suspected: AtomicU64,
}

impl QuickRecycle {
    /// A connection failed: every connection handed out until now gets checked next time.
    pub(super) fn suspect(&self) {
        self.suspected
            .fetch_max(self.nanos(Instant::now()), Ordering::Relaxed);
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.since).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A pooled connection, and how it was last handed out.
pub(super) struct Pooled {
    conn: MultiplexedConnection,
    unchecked: bool,
}

impl managed::Manager for QuickRecycle {
    type Type = Pooled;
    type Error = RedisError;

    async fn create(&self) -> Result<Pooled, RedisError> {
        Ok(Pooled {
            conn: self.checked.create().await?,
            unchecked: false,
        })
    }

    async fn recycle(&self, pooled: &mut Pooled, metrics: &Metrics) -> RecycleResult<RedisError> {
        // When it was last handed out (deadpool updates this after `recycle` returns).
        let last = metrics.recycled.unwrap_or(metrics.created);
        pooled.unchecked =
            last.elapsed() < FRESH_FOR && self.nanos(last) > self.suspected.load(Ordering::Relaxed);
        if pooled.unchecked {
            return Ok(());
        }
        self.checked.recycle(&mut pooled.conn, metrics).await
    }
}

/// A pooled connection (as `deadpool_redis::Connection`, for this pool's manager).
pub struct Connection {
    conn: managed::Object<QuickRecycle>,
}

impl Connection {
    /// Takes the connection out of the pool for good: it is dropped rather than reused.
    pub(super) fn take(this: Self) -> MultiplexedConnection {
        managed::Object::take(this.conn).conn
    }

    /// Whether the pool handed it out without its `UNWATCH` + `PING` check.
    pub(super) fn unchecked(&self) -> bool {
        self.conn.unchecked
    }
}

impl From<managed::Object<QuickRecycle>> for Connection {
    fn from(conn: managed::Object<QuickRecycle>) -> Self {
        Self { conn }
    }
}

impl Deref for Connection {
    type Target = MultiplexedConnection;

    fn deref(&self) -> &MultiplexedConnection {
        &self.conn.conn
    }
}

impl DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut MultiplexedConnection {
        &mut self.conn.conn
    }
}

impl AsMut<MultiplexedConnection> for Connection {
    fn as_mut(&mut self) -> &mut MultiplexedConnection {
        &mut self.conn.conn
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        self.conn.conn.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        self.conn.conn.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.conn.conn.get_db()
    }
}
