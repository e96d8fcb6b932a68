//! The connection layer under `RedisStore`: one Redis (`redis://`, `rediss://`,
//! `redis+unix://`) or a Redis Cluster (`redis+cluster://` / `rediss+cluster://`, see
//! `crate::config::cluster_node_urls`), behind one pooled connection type, so the store's code
//! (scripts, pipelines, streams) is the same for both.
//!
//! What differs on a cluster, and why it is still safe:
//! - Every key the store touches carries the partner's `{hash tag}`, so each script and each
//!   pipeline goes to the one master of that slot; redis-rs follows MOVED and ASK itself, and
//!   loads a script on whichever master answers NOSCRIPT (`SCRIPT LOAD` goes to all masters).
//! - redis-rs may resend a command after a dropped connection. The store's scripts are safe to
//!   run twice: ACCEPT answers `ok` when its report exists already, FINISH records an attempt
//!   once, and a BEGIN run twice holds the batch for an operator (never a second upload).
//! - `WAITAOF` is sent to the master that holds the key just written (it counts this
//!   connection's writes on that node), and the persistence check reads every master.

use redis::aio::ConnectionLike;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{Cmd, RedisFuture, RedisResult, Value};

use super::persistence::Persistence;
use crate::store::StoreError;

/// The pool behind the store: one server, or a cluster.
pub(super) enum Pools {
    Single(super::pool::Pool),
    Cluster(super::cluster_pool::Pool),
}

/// A pooled connection to one server or to the cluster (a cluster connection reaches every
/// master). Implements `ConnectionLike`, so commands, pipelines and scripts run on either.
pub enum Connection {
    Single(super::pool::Connection),
    Cluster(super::cluster_pool::Connection),
}

impl Pools {
    /// From `store.url`; nothing is connected yet.
    pub(super) fn new(
        url: &str,
        pool_config: deadpool_redis::PoolConfig,
        timeout: std::time::Duration,
    ) -> Result<Self, StoreError> {
        match crate::config::cluster_node_urls(url) {
            Some(nodes) => {
                let nodes = nodes.map_err(|e| StoreError::Other(format!("store.url: {e}")))?;
                super::cluster_pool::pool(nodes, pool_config, timeout)
                    .map(Pools::Cluster)
                    .map_err(|e| StoreError::Other(format!("invalid store.url: {e}")))
            }
            None => super::pool::pool(url, pool_config)
                .map(Pools::Single)
                .map_err(|e| StoreError::Other(format!("invalid store.url: {e}"))),
        }
    }

    /// A connection whose replies may take up to `timeout` (redis-rs's own default for one
    /// server, 500 ms, would turn a slow fsync into an error for a write that happened; the
    /// cluster client is built with the store's timeout, see `cluster_pool`).
    pub(super) async fn get(
        &self,
        timeout: std::time::Duration,
    ) -> Result<Connection, redis::RedisError> {
        match self {
            Pools::Single(pool) => {
                let mut conn = pool.get().await.map_err(pool_error)?;
                conn.as_mut().set_response_timeout(timeout);
                Ok(Connection::Single(conn))
            }
            Pools::Cluster(pool) => {
                let conn = pool.get().await.map_err(|e| match e {
                    deadpool::managed::PoolError::Backend(e) => e,
                    other => timed_out(other.to_string()),
                })?;
                Ok(Connection::Cluster(conn))
            }
        }
    }
}

impl Pools {
    /// A connection turned out dead: every single-server connection handed out until now is
    /// checked again before its next use (see `pool`). A cluster connection reconnects its nodes itself (see `cluster_pool`).
    pub(super) fn suspect(&self) {
        if let Pools::Single(pool) = self {
            pool.manager().suspect();
        }
    }
}

impl Connection {
    /// Whether the pool handed it out without its `UNWATCH` + `PING` check (see `pool`).
    pub(super) fn unchecked(&self) -> bool {
        match self {
            Connection::Single(conn) => conn.unchecked(),
            Connection::Cluster(_) => false,
        }
    }

    /// Takes the connection out of its pool for good and closes it: one whose reply is still
    /// owed must not serve the next caller.
    pub(super) fn retire(self) {
        match self {
            Connection::Single(conn) => drop(super::pool::Connection::take(conn)),
            Connection::Cluster(conn) => drop(super::cluster_pool::Connection::take(conn)),
        }
    }

    /// `WAITAOF numlocal 0 timeout` on the node that holds `key`: on a cluster, the master of
    /// the key's slot, where this connection's last write of that key went. Answers how many
    /// local AOFs (0 or 1) have the writes.
    pub(super) async fn wait_aof(&mut self, key: &str, timeout_ms: u64) -> RedisResult<i64> {
        let mut cmd = redis::cmd("WAITAOF");
        cmd.arg(1).arg(0).arg(timeout_ms);
        let (local, _replicas): (i64, i64) = self.on_master_of(key, cmd).await?;
        Ok(local)
    }

    /// `WAIT replicas timeout` on the node that holds `key` (as `wait_aof`): how many of its
    /// replicas have this connection's writes, once `replicas` do or `timeout_ms` passed.
    pub(super) async fn wait_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout_ms: u64,
    ) -> RedisResult<i64> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout_ms);
        self.on_master_of(key, cmd).await
    }

    async fn on_master_of<T: redis::FromRedisValue>(
        &mut self,
        key: &str,
        cmd: Cmd,
    ) -> RedisResult<T> {
        match self {
            Connection::Single(conn) => cmd.query_async(conn).await,
            Connection::Cluster(conn) => {
                let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(
                    key.as_bytes(),
                    SlotAddr::Master,
                ));
                let value = conn
                    .route_command(cmd, RoutingInfo::SingleNode(route))
                    .await?;
                Ok(redis::from_redis_value(value)?)
            }
        }
    }

    /// The persistence settings of every server that holds data: the one server, or each
    /// cluster master, combined into the weakest of them (one master without AOF can lose
    /// the partners whose slots it holds).
    pub(super) async fn persistence(&mut self) -> RedisResult<Persistence> {
        let mut info = redis::cmd("INFO");
        info.arg("server")
            .arg("persistence")
            .arg("memory")
            .arg("replication");
        let mut fsync = redis::cmd("CONFIG");
        fsync.arg("GET").arg("appendfsync");
        match self {
            Connection::Single(conn) => {
                let text: String = info.query_async(&mut *conn).await?;
                // CONFIG may be disabled (managed services rename it); then the fsync policy
                // is unknown.
                let appendfsync = fsync
                    .query_async::<Vec<String>>(&mut *conn)
                    .await
                    .ok()
                    .and_then(|pair| pair.into_iter().nth(1));
                Ok(Persistence::from_info(&text, appendfsync.as_deref()))
            }
            Connection::Cluster(conn) => {
                let masters =
                    || RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let infos: Vec<(String, String)> =
                    redis::from_redis_value(conn.route_command(info, masters()).await?)?;
                let fsyncs: Vec<(String, Value)> = conn
                    .route_command(fsync, masters())
                    .await
                    .ok()
                    .and_then(|v| redis::from_redis_value(v).ok())
                    .unwrap_or_default();
                let nodes = infos.iter().map(|(node, text)| {
                    let appendfsync = fsyncs.iter().find(|(n, _)| n == node).and_then(|(_, v)| {
                        redis::from_redis_value_ref::<Vec<String>>(v)
                            .ok()?
                            .into_iter()
                            .nth(1)
                    });
                    Persistence::from_info(text, appendfsync.as_deref())
                });
                weakest(nodes).ok_or_else(|| timed_out("no cluster master answered INFO".into()))
            }
        }
    }
}

/// One `Persistence` that is as weak as the weakest node in each respect.
fn weakest(nodes: impl Iterator<Item = Persistence>) -> Option<Persistence> {
    nodes.reduce(|a, b| {
        let version = |p: &Persistence| {
            p.version
                .split('.')
                .map(|n| n.parse::<u32>().unwrap_or(0))
                .collect::<Vec<_>>()
        };
        Persistence {
            version: if version(&a) <= version(&b) {
                a.version
            } else {
                b.version
            },
            aof_enabled: a.aof_enabled && b.aof_enabled,
            // `always` only when every node says so; an unknown policy stays unknown.
            appendfsync: match (a.appendfsync.as_str(), b.appendfsync.as_str()) {
                ("", _) | (_, "") => String::new(),
                ("always", other) => other.to_owned(),
                (mine, _) => mine.to_owned(),
            },
            maxmemory_policy: if a.maxmemory_policy == "noeviction" {
                b.maxmemory_policy
            } else {
                a.maxmemory_policy
            },
            // The master with fewest replicas decides what a failover can lose.
            replicas: a.replicas.min(b.replicas),
        }
    })
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(conn) => conn.req_packed_command(cmd),
            Connection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Connection::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(conn) => conn.get_db(),
            Connection::Cluster(conn) => conn.get_db(),
        }
    }
}

fn pool_error(e: deadpool_redis::PoolError) -> redis::RedisError {
    match e {
        deadpool_redis::PoolError::Backend(e) => e,
        other => timed_out(other.to_string()),
    }
}

fn timed_out(message: String) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(version: &str, aof: bool, fsync: &str, policy: &str) -> Persistence {
        Persistence {
            version: version.into(),
            aof_enabled: aof,
            appendfsync: fsync.into(),
            maxmemory_policy: policy.into(),
            replicas: 1,
        }
    }

    #[test]
    fn a_cluster_is_as_durable_as_its_weakest_master() {
        let combined = weakest(
            [
                node("7.2.4", true, "always", "noeviction"),
                node("7.0.15", true, "everysec", "noeviction"),
                node("7.2.4", false, "always", "allkeys-lru"),
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(
            combined,
            node("7.0.15", false, "everysec", "allkeys-lru"),
            "the oldest version, AOF off anywhere, the weakest fsync, an evicting policy"
        );
        let all_good = weakest(
            [
                node("7.2.4", true, "always", "noeviction"),
                node("7.2.4", true, "always", "noeviction"),
            ]
            .into_iter(),
        )
        .unwrap();
        assert!(all_good.problems().is_empty());
        assert!(all_good.supports_waitaof());
        let unknown = weakest(
            [
                node("7.2.4", true, "", "noeviction"),
                node("7.2.4", true, "always", "noeviction"),
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(
            unknown.appendfsync, "",
            "one unknown policy makes it unknown"
        );
    }
}
