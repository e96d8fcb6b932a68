//! A `redis-server` of the test's own, on a unix socket in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::wait_until;

pub struct TestRedis {
    dir: tempfile::TempDir,
    child: Option<Child>,
    persistent: bool,
}

impl TestRedis {
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// With AOF fsynced on every write, so its data survives `stop` + `restart`.
    pub async fn start_persistent() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(persistent: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut redis = Self {
            dir,
            child: None,
            persistent,
        };
        redis.restart().await;
        redis
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "redis is already running");
        let mut command = Command::new(crate::cluster_support::redis_server());
        command
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--unixsocketperm", "700", "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--maxmemory-policy", "noeviction"]);
        if self.persistent {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install -y redis-server)");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        wait_until("redis-server answers PING", async || {
            match client.get_multiplexed_async_connection().await {
                Ok(mut c) => redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        })
        .await;
    }

    /// Saves its data set as an RDB padded with `filler` keys, restarts, and loads it slowly
    /// (`key-load-delay`): until the load ends, Redis answers every command with LOADING, as
    /// a real Redis does for a while after a restart.
    pub async fn restart_loading_slowly(&mut self, filler: usize) {
        let mut c = self.connection().await;
        let mut pipe = redis::pipe();
        for i in 0..filler {
            pipe.cmd("SET").arg(format!("filler:{i}")).arg(i).ignore();
        }
        let _: () = pipe.query_async(&mut c).await.unwrap();
        let _: () = redis::cmd("SAVE").query_async(&mut c).await.unwrap();
        self.stop();
        let child = Command::new(crate::cluster_support::redis_server())
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--key-load-delay",
                "200",
                "--loading-process-events-interval-bytes",
                "1024",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        wait_until("redis-server answers LOADING", async || {
            match client.get_multiplexed_async_connection().await {
                Ok(mut c) => redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_err_and(|e| e.code() == Some("LOADING")),
                Err(_) => false,
            }
        })
        .await;
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
