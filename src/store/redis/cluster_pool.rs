//! The Redis Cluster pool: deadpool's pool over a manager of our own, because
//! deadpool-redis's cluster manager checks each connection before reuse with a `PING` that
//! redis-rs routes to *every* master and that fails unless all of them answer. One dead or
//! frozen master, even one holding no gateway key, then stalled every request of every
//! partner for the store's whole timeout (issue 23: accepts hung 5-10 s on any failover).
//!
//! A cluster connection needs no such check: it reconnects to a node by itself, follows
//! MOVED and ASK, and sends each command only to the master of the command's slot. So a
//! connection is handed out again as it is, and its next command tells whether the one node
//! it needs is there; a node that is not fails that command alone, after the connection
//! timeout (when it can't be reached) or the response timeout (when it doesn't answer).

use deadpool::managed::{self, Metrics, RecycleResult};
use redis::RedisError;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;

pub(super) type Pool = managed::Pool<Manager>;
pub(super) type Connection = managed::Object<Manager>;

/// `nodes` are the starting nodes' URLs; `timeout` is the store's, for one reply.
pub(super) fn pool(
    nodes: Vec<String>,
    config: managed::PoolConfig,
    timeout: std::time::Duration,
) -> Result<Pool, Box<dyn std::error::Error>> {
    let client = ClusterClientBuilder::new(nodes)
        // A node that is down must not hold a request for longer than the store allows.
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .build()?;
    Ok(Pool::builder(Manager { client })
        .config(config)
        .runtime(deadpool::Runtime::Tokio1)
        .build()?)
}

pub struct Manager {
    client: ClusterClient,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").finish_non_exhaustive()
    }
}

impl managed::Manager for Manager {
    type Type = ClusterConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<ClusterConnection, RedisError> {
        self.client.get_async_connection().await
    }

    async fn recycle(&self, _: &mut ClusterConnection, _: &Metrics) -> RecycleResult<RedisError> {
        Ok(())
    }
}
