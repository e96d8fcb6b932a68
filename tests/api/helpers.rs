//! Test harness: every test gets its own `redis-server` (on a unix socket in a temp dir, so
//! tests never share keys or ports) and its own gateway on a free port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use repayment_gateway::api::auth::hash_key;
use repayment_gateway::config::Settings;
use repayment_gateway::domain::PartnerId;
use repayment_gateway::startup::Application;
use repayment_gateway::store::redis::RedisStore;
use repayment_gateway::store::{
    AttemptEnd, Batch, BatchDoc, BeginAttempt, ClaimedBatch, ExpectedLoansSnapshot,
    IdempotencyClaim, IdempotencyScope, IdempotentAccept, OperatorOutcome, Periods, Queue,
    RefreshStatus, Report, ReportPage, ReportQuery, ReportStore, Reports, Sessions, StoreError,
};
use serde_json::Value;
use tokio::sync::Notify;
use uuid::Uuid;

pub use crate::cluster_support::TestCluster;

/// Runs each named `async fn name(backend: Backend)` of the calling module once per store
/// backend, as `redis_store::name`, `cluster_store::name` (a 3-master Redis Cluster shared by
/// the binary, a key prefix per test) and `embedded_store::name`: one contract, every store.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod redis_store {
            $(#[tokio::test]
            async fn $name() {
                super::$name(crate::helpers::Backend::Redis).await
            })*
        }
        mod cluster_store {
            $(#[tokio::test]
            async fn $name() {
                super::$name(crate::helpers::Backend::Cluster).await
            })*
        }
        mod embedded_store {
            $(#[tokio::test]
            async fn $name() {
                super::$name(crate::helpers::Backend::Embedded).await
            })*
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Redis,
    /// The binary's shared Redis Cluster (`TestCluster::shared`), under a key prefix of the
    /// test's own.
    Cluster,
    Embedded,
}

pub const THREE_COL: &str = "301";
pub const TWO_COL: &str = "202";
pub const PREFIX: &str = "rgtest";

/// Keys: name → (plain key, partner, branch, role).
pub const NAIROBI: &str = "key-nairobi";
pub const MOMBASA: &str = "key-mombasa";
pub const HEAD_OFFICE: &str = "key-head-office";
pub const NETWORK_ADMIN: &str = "key-network-admin";
pub const TWO_COL_BRANCH: &str = "key-two-col";
pub const PARTNER_SECRET: &str = "kiva-client-secret-do-not-log";

/// Longest a test waits for something to become true.
pub const DEADLINE: Duration = Duration::from_secs(10);

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

/// Polls `condition` until it holds or `DEADLINE` passes (then panics naming `what`).
pub async fn wait_until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn plain_key(name: &str) -> String {
    format!("test-secret-value-of-{name}")
}

pub fn test_config(redis_url: &str) -> String {
    let key = |name: &str, partner: &str, branch: &str, role: &str| {
        format!(
            "[[api_keys]]\nname = \"{name}\"\npartner = \"{partner}\"\nbranch = \"{branch}\"\nrole = \"{role}\"\nkey_sha256 = \"{}\"\n",
            hash_key(&plain_key(name))
        )
    };
    format!(
        r#"
[server]
bind = "127.0.0.1:0"
max_body_bytes = 4194304
max_repayments = 10000
[store]
url = "{redis_url}"
key_prefix = "{PREFIX}"
timeout_secs = 5
# Most test Redis servers keep nothing on disk; the start-up check has tests of its own.
allow_unsafe_redis = true
[kiva]
token_url = "http://127.0.0.1:9/oauth/token"
audience = "https://partner-api.test"
api_base_url = "http://127.0.0.1:9"
[delivery]
enabled = false
# Tests refresh expected loans themselves (the schedule would read the loans list at start).
[reconcile]
refresh_minutes = 0
[log]
level = "info"
# On the API's address, so each test scrapes its own app (the default, 127.0.0.1:9100, is one
# port for every test).
[metrics]
bind = "server"
[[partners]]
id = "{THREE_COL}"
name = "Three Column MFI"
column_format = "three_column"
client_id = "three-col-client"
client_secret = "{PARTNER_SECRET}"
[[partners]]
id = "{TWO_COL}"
name = "Two Column MFI"
column_format = "two_column"
client_id = "two-col-client"
client_secret = "{PARTNER_SECRET}"
{}{}{}{}{}"#,
        key(NAIROBI, THREE_COL, "Nairobi", "branch"),
        key(MOMBASA, THREE_COL, "Mombasa", "branch"),
        key(HEAD_OFFICE, THREE_COL, "Head office", "admin"),
        key(NETWORK_ADMIN, "*", "Network", "admin"),
        key(TWO_COL_BRANCH, TWO_COL, "Kisumu", "branch"),
    )
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// The store the app uses (for the embedded store, the only handle there may be).
    pub store: Arc<dyn ReportStore>,
    /// The app's metrics: workers a test drives itself count in them too.
    pub metrics: Arc<repayment_gateway::metrics::Metrics>,
    /// The port of `/metrics` when `metrics.bind` serves it apart.
    pub metrics_port: Option<u16>,
    redis: Option<TestRedis>,
    /// The embedded store's directory (kept until the test ends).
    data: Option<tempfile::TempDir>,
}

pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or_default()
    }

    /// The JSON Pointers of a problem's `errors`, in order.
    pub fn pointers(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| e["pointer"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The gateway on Redis (tests about Redis itself use this one).
pub async fn spawn_app() -> TestApp {
    spawn_app_on(TestRedis::start().await, |_| {}).await
}

pub async fn spawn_app_on(redis: TestRedis, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = Settings::from_toml_str(&test_config(&redis.url())).expect("test config");
    tweak(&mut settings);
    let store: Arc<dyn ReportStore> = Arc::new(redis_store(&redis));
    build_app(&settings, store, Some(redis), None)
}

/// The gateway on `redis`, through `store` (e.g. one that reaches it through a fault proxy).
pub async fn spawn_app_with_store(
    redis: TestRedis,
    store: Arc<dyn ReportStore>,
    tweak: impl FnOnce(&mut Settings),
) -> TestApp {
    let mut settings = Settings::from_toml_str(&test_config(&redis.url())).expect("test config");
    tweak(&mut settings);
    build_app(&settings, store, Some(redis), None)
}

/// A second gateway with these settings on a store another `TestApp` owns.
pub fn spawn_app_with_settings(settings: &Settings, store: Arc<dyn ReportStore>) -> TestApp {
    build_app(settings, store, None, None)
}

/// The gateway on `backend`, with `settings` as tweaked, and its store wrapped by `wrap`.
pub async fn spawn_app_for(
    backend: Backend,
    tweak: impl FnOnce(&mut Settings),
    wrap: impl FnOnce(Arc<dyn ReportStore>) -> Arc<dyn ReportStore>,
) -> TestApp {
    let (settings, store, redis, data) = store_for(backend, tweak).await;
    build_app(&settings, wrap(store), redis, data)
}

pub async fn spawn(backend: Backend) -> TestApp {
    spawn_app_for(backend, |_| {}, |s| s).await
}

type StoreParts = (
    Settings,
    Arc<dyn ReportStore>,
    Option<TestRedis>,
    Option<tempfile::TempDir>,
);

async fn store_for(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> StoreParts {
    match backend {
        Backend::Redis => {
            let redis = TestRedis::start().await;
            let mut settings =
                Settings::from_toml_str(&test_config(&redis.url())).expect("test config");
            tweak(&mut settings);
            let store: Arc<dyn ReportStore> = Arc::new(redis_store(&redis));
            (settings, store, Some(redis), None)
        }
        Backend::Cluster => {
            let settings = cluster_settings(tweak);
            let store: Arc<dyn ReportStore> = Arc::new(cluster_store(&settings));
            (settings, store, None, None)
        }
        Backend::Embedded => {
            let data = tempfile::tempdir().expect("temp dir");
            let url = format!("embedded:{}", data.path().join("store").display());
            let mut settings = Settings::from_toml_str(&test_config(&url)).expect("test config");
            tweak(&mut settings);
            let store: Arc<dyn ReportStore> =
                repayment_gateway::startup::build_store(&settings).expect("embedded store opens");
            (settings, store, None, Some(data))
        }
    }
}

fn build_app(
    settings: &Settings,
    store: Arc<dyn ReportStore>,
    redis: Option<TestRedis>,
    data: Option<tempfile::TempDir>,
) -> TestApp {
    let app = Application::build_with_store(settings, store.clone()).expect("build app");
    let address = format!("http://127.0.0.1:{}", app.port());
    let metrics = app.metrics();
    let metrics_port = app.metrics_port();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: reqwest::Client::new(),
        store,
        metrics,
        metrics_port,
        redis,
        data,
    }
}

/// Test settings on the shared cluster, with a key prefix no other test uses.
pub fn cluster_settings(tweak: impl FnOnce(&mut Settings)) -> Settings {
    let cluster = TestCluster::shared();
    let mut settings = Settings::from_toml_str(&test_config(&cluster.url())).expect("test config");
    settings.store.key_prefix = TestCluster::unique_prefix();
    tweak(&mut settings);
    settings
}

pub fn cluster_store(settings: &Settings) -> RedisStore {
    RedisStore::new(
        &settings.store.url,
        &settings.store.key_prefix,
        32,
        Duration::from_secs(5),
    )
    .unwrap()
}

pub fn redis_store(redis: &TestRedis) -> RedisStore {
    RedisStore::new(&redis.url(), PREFIX, 32, Duration::from_secs(5)).unwrap()
}

impl TestApp {
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("request reaches the gateway");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
            text,
        }
    }

    pub fn post(&self, path: &str, key: &str, body: impl Into<String>) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.address))
            .header("X-Api-Key", plain_key(key))
            .header("Content-Type", "application/json")
            .body(body.into())
    }

    pub async fn submit(&self, key: &str, body: &Value) -> Answer {
        self.send(self.post("/v1/repayments", key, body.to_string()))
            .await
    }

    pub async fn submit_raw(&self, key: &str, body: &str) -> Answer {
        self.send(self.post("/v1/repayments", key, body)).await
    }

    pub async fn submit_idempotent(&self, key: &str, idempotency_key: &str, body: &str) -> Answer {
        self.send(
            self.post("/v1/repayments", key, body)
                .header("Idempotency-Key", idempotency_key),
        )
        .await
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> Answer {
        let mut request = self.client.get(format!("{}{path}", self.address));
        if let Some(key) = key {
            request = request.header("X-Api-Key", plain_key(key));
        }
        self.send(request).await
    }

    pub async fn report(&self, key: &str, id: &str) -> Answer {
        self.get(&format!("/v1/reports/{id}"), Some(key)).await
    }

    pub fn redis(&self) -> &TestRedis {
        self.redis.as_ref().expect("a Redis-backed test app")
    }

    pub fn redis_mut(&mut self) -> &mut TestRedis {
        self.redis.as_mut().expect("a Redis-backed test app")
    }

    /// Where this app keeps files: the embedded store's directory, or Redis's.
    pub fn dir(&self) -> &Path {
        match (&self.data, &self.redis) {
            (Some(data), _) => data.path(),
            (None, Some(redis)) => redis.dir(),
            (None, None) => unreachable!("an app has a store"),
        }
    }

    /// Batches on a partner's delivery queue, oldest first, as (batch id, report id).
    pub async fn stream_entries(&self, partner: &str) -> Vec<(String, String)> {
        use repayment_gateway::store::report_of_batch;
        let partner = PartnerId::parse(partner).unwrap();
        self.store
            .queued_batches(&partner)
            .await
            .unwrap()
            .into_iter()
            .map(|batch| {
                let report = report_of_batch(&batch).unwrap().to_string();
                (batch, report)
            })
            .collect()
    }

    /// Every report id and queued batch of both partners: what "nothing changed" compares.
    pub async fn stored(&self) -> Vec<String> {
        let mut all = Vec::new();
        for partner in [THREE_COL, TWO_COL] {
            let id = PartnerId::parse(partner).unwrap();
            let page = self
                .store
                .reports(
                    &id,
                    &ReportQuery {
                        limit: 10_000,
                        ..ReportQuery::default()
                    },
                )
                .await
                .unwrap();
            all.extend(page.reports.iter().map(|r| format!("report {}", r.id)));
            all.extend(
                self.store
                    .queued_batches(&id)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|b| format!("queued {b}")),
            );
        }
        all
    }

    /// Every key in this test's Redis, sorted (Redis-backed apps only).
    pub async fn redis_keys(&self) -> Vec<String> {
        let mut c = self.redis().connection().await;
        let mut keys: Vec<String> = c.keys("*").await.unwrap();
        keys.sort();
        keys
    }

    /// A stored batch as the API shows it.
    pub async fn stored_batch(&self, partner: &str, batch_id: &str) -> Value {
        let partner = PartnerId::parse(partner).unwrap();
        let (batch, _) = self
            .store
            .batch(&partner, batch_id)
            .await
            .unwrap()
            .expect("batch stored");
        serde_json::to_value(batch).unwrap()
    }
}

/// The state of each batch of a report, as `GET /v1/reports/{id}` shows them.
pub fn batch_states(report: &Value) -> Vec<String> {
    report["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["state"].as_str().unwrap().to_owned())
        .collect()
}

/// `count` three-column repayments, loans `L-0`…, each `amount`.
pub fn three_column_report(count: usize, amount: &str) -> Value {
    let repayments: Vec<Value> = (0..count)
        .map(|i| serde_json::json!({"loan_id": format!("L-{i}"), "client_id": format!("C-{i}"), "amount": amount}))
        .collect();
    // These fixtures send the same loans in many reports of one period: that is a correction
    // as far as the one-loan-per-period rule goes (tests/api/periods.rs tests the rule).
    serde_json::json!({"period": "2026-10", "correction": true, "repayments": repayments})
}

/// Wraps a store and, once armed, holds the next `accept` until released: a request can be
/// frozen after its idempotency claim and before its report is stored.
pub struct GatedStore {
    inner: Arc<dyn ReportStore>,
    armed: AtomicBool,
    pub reached: Notify,
    pub release: Notify,
    /// Signalled each time recording an attempt's outcome fails.
    pub finish_failed: Notify,
    /// While set, `claim_batches` panics: a bug in the delivery loop, as the supervisor sees it.
    pub panic_on_claim: AtomicBool,
    /// While set, this partner's promotions and claims fail as they do when its keys' node
    /// refuses writes (`NOREPLICAS`, `CLUSTERDOWN`): the other partners' keys still answer.
    pub failing_partner: std::sync::Mutex<Option<PartnerId>>,
    /// While set, the next `accept` is lost on its way (as on a master that died with it)
    /// and answers `OutcomeUnknown`; the claim it would have completed stays in progress.
    pub lose_next_accept: AtomicBool,
    /// While set, `check_accept` (validate's read of the period's loans) fails as an
    /// unreachable store does, while the rest answers.
    pub fail_accept_check: AtomicBool,
}

impl GatedStore {
    pub fn new(inner: Arc<dyn ReportStore>) -> Self {
        Self {
            inner,
            armed: AtomicBool::new(true),
            reached: Notify::new(),
            release: Notify::new(),
            finish_failed: Notify::new(),
            panic_on_claim: AtomicBool::new(false),
            failing_partner: std::sync::Mutex::new(None),
            lose_next_accept: AtomicBool::new(false),
            fail_accept_check: AtomicBool::new(false),
        }
    }

    fn fail_if_failing(&self, partner: &PartnerId) -> Result<(), StoreError> {
        match &*self.failing_partner.lock().unwrap() {
            Some(failing) if failing == partner => Err(StoreError::Unavailable(
                "NOREPLICAS Not enough good replicas to write.".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Passes everything through until `panic_on_claim` is set.
    pub fn open(inner: Arc<dyn ReportStore>) -> Self {
        let store = Self::new(inner);
        store.armed.store(false, Ordering::SeqCst);
        store
    }
}

#[async_trait::async_trait]
impl Reports for GatedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn claim_idempotency(
        &self,
        scope: &IdempotencyScope,
        ttl: Duration,
    ) -> Result<IdempotencyClaim, StoreError> {
        self.inner.claim_idempotency(scope, ttl).await
    }

    async fn release_idempotency(
        &self,
        scope: &IdempotencyScope,
        token: &str,
    ) -> Result<(), StoreError> {
        self.inner.release_idempotency(scope, token).await
    }

    async fn check_accept(&self, report: &Report, batches: &[BatchDoc]) -> Result<(), StoreError> {
        if self.fail_accept_check.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("connection refused".into()));
        }
        self.inner.check_accept(report, batches).await
    }

    async fn accept(
        &self,
        report: &Report,
        batches: &[BatchDoc],
        idempotency: Option<&IdempotentAccept>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.reached.notify_one();
            self.release.notified().await;
        }
        if self.lose_next_accept.swap(false, Ordering::SeqCst) {
            return Err(StoreError::OutcomeUnknown(
                "connection closed after the request was written".into(),
            ));
        }
        self.inner.accept(report, batches, idempotency, ttl).await
    }

    async fn report(
        &self,
        partner: &PartnerId,
        id: Uuid,
    ) -> Result<Option<(Report, Vec<Batch>)>, StoreError> {
        self.inner.report(partner, id).await
    }

    async fn reports(
        &self,
        partner: &PartnerId,
        query: &ReportQuery,
    ) -> Result<ReportPage, StoreError> {
        self.inner.reports(partner, query).await
    }

    async fn durability(&self) -> Result<repayment_gateway::store::Durability, StoreError> {
        self.inner.durability().await
    }
}

#[async_trait::async_trait]
impl Queue for GatedStore {
    async fn enqueue(
        &self,
        report: &Report,
        batches: &[repayment_gateway::store::NewBatch],
    ) -> Result<(), StoreError> {
        self.inner.enqueue(report, batches).await
    }

    async fn prepare_delivery(&self, partner: &PartnerId) -> Result<(), StoreError> {
        self.inner.prepare_delivery(partner).await
    }

    async fn queued_batches(&self, partner: &PartnerId) -> Result<Vec<String>, StoreError> {
        self.inner.queued_batches(partner).await
    }

    async fn queue_summary(
        &self,
        partner: &PartnerId,
    ) -> Result<repayment_gateway::store::QueueSummary, StoreError> {
        self.inner.queue_summary(partner).await
    }

    async fn promote_due_retries(
        &self,
        partner: &PartnerId,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        self.fail_if_failing(partner)?;
        self.inner.promote_due_retries(partner, now).await
    }

    async fn claim_batches(
        &self,
        partner: &PartnerId,
        consumer: &str,
        count: usize,
        reclaim_after: Duration,
    ) -> Result<Vec<ClaimedBatch>, StoreError> {
        assert!(
            !self.panic_on_claim.load(Ordering::SeqCst),
            "injected bug in the delivery loop"
        );
        self.fail_if_failing(partner)?;
        self.inner
            .claim_batches(partner, consumer, count, reclaim_after)
            .await
    }

    async fn begin_attempt(
        &self,
        claimed: &ClaimedBatch,
        now: DateTime<Utc>,
    ) -> Result<BeginAttempt, StoreError> {
        self.inner.begin_attempt(claimed, now).await
    }

    async fn finish_attempt(
        &self,
        claimed: &ClaimedBatch,
        attempt: u32,
        end: &AttemptEnd,
    ) -> Result<(), StoreError> {
        let result = self.inner.finish_attempt(claimed, attempt, end).await;
        if result.is_err() {
            self.finish_failed.notify_one();
        }
        result
    }

    async fn release_attempt(&self, claimed: &ClaimedBatch) -> Result<(), StoreError> {
        self.inner.release_attempt(claimed).await
    }

    async fn operate_batch(
        &self,
        partner: &PartnerId,
        batch_id: &str,
        command: &repayment_gateway::store::OperatorCommand,
    ) -> Result<OperatorOutcome, StoreError> {
        self.inner.operate_batch(partner, batch_id, command).await
    }

    async fn purge_settled(
        &self,
        partner: &PartnerId,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        self.inner.purge_settled(partner, before, limit).await
    }

    async fn batch(
        &self,
        partner: &PartnerId,
        batch_id: &str,
    ) -> Result<Option<(Batch, String)>, StoreError> {
        self.inner.batch(partner, batch_id).await
    }
}

#[async_trait::async_trait]
impl Periods for GatedStore {
    async fn period_reports(
        &self,
        partner: &PartnerId,
        period: repayment_gateway::domain::Period,
        branch: Option<&str>,
    ) -> Result<Vec<(Report, Vec<Batch>)>, StoreError> {
        self.inner.period_reports(partner, period, branch).await
    }

    async fn periods(
        &self,
        partner: &PartnerId,
    ) -> Result<Vec<repayment_gateway::domain::Period>, StoreError> {
        self.inner.periods(partner).await
    }

    async fn replace_expected_loans(
        &self,
        snapshot: &ExpectedLoansSnapshot,
    ) -> Result<(), StoreError> {
        self.inner.replace_expected_loans(snapshot).await
    }

    async fn expected_loans(
        &self,
        partner: &PartnerId,
    ) -> Result<Option<ExpectedLoansSnapshot>, StoreError> {
        self.inner.expected_loans(partner).await
    }

    async fn expected_loans_taken_at(
        &self,
        partner: &PartnerId,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.inner.expected_loans_taken_at(partner).await
    }

    async fn lock_refresh(
        &self,
        partner: &PartnerId,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.inner.lock_refresh(partner, holder, ttl).await
    }

    async fn unlock_refresh(&self, partner: &PartnerId, holder: &str) -> Result<(), StoreError> {
        self.inner.unlock_refresh(partner, holder).await
    }

    async fn record_refresh(
        &self,
        partner: &PartnerId,
        status: &RefreshStatus,
    ) -> Result<(), StoreError> {
        self.inner.record_refresh(partner, status).await
    }

    async fn refresh_status(&self, partner: &PartnerId) -> Result<RefreshStatus, StoreError> {
        self.inner.refresh_status(partner).await
    }
}

#[async_trait::async_trait]
impl Sessions for GatedStore {
    async fn create_session(
        &self,
        id_hash: &str,
        session: &repayment_gateway::store::WebSession,
        idle: Duration,
    ) -> Result<(), StoreError> {
        self.inner.create_session(id_hash, session, idle).await
    }

    async fn session(
        &self,
        id_hash: &str,
        idle: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<repayment_gateway::store::WebSession>, StoreError> {
        self.inner.session(id_hash, idle, now).await
    }

    async fn end_session(&self, id_hash: &str) -> Result<(), StoreError> {
        self.inner.end_session(id_hash).await
    }
}

/// A clock the test moves by hand, so retry delays are tested without waiting for them.
pub struct ManualClock(std::sync::Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new() -> Self {
        Self(std::sync::Mutex::new(Utc::now()))
    }

    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += chrono::Duration::from_std(by).unwrap();
    }
}

impl repayment_gateway::delivery::Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

/// Loans the sandbox knows as `payingBack`: `L-0`… with clients `C-0`…, for both partners.
pub const SANDBOX_LOANS: usize = 500;

/// The gateway (worker off), a Kiva sandbox it talks to, and a manual clock for workers the
/// test creates and drives itself.
pub struct DeliveryRig {
    pub app: TestApp,
    pub sandbox: repayment_gateway::sandbox::Sandbox,
    pub clock: Arc<ManualClock>,
    pub settings: Settings,
}

/// `POST /v1/partners/{THREE_COL}/expected-loans/refresh` with `key`: reads Kiva's loans again.
pub async fn post_refresh(app: &TestApp, key: &str) -> Answer {
    app.send(
        app.client
            .post(format!(
                "{}/v1/partners/{THREE_COL}/expected-loans/refresh",
                app.address
            ))
            .header("X-Api-Key", plain_key(key)),
    )
    .await
}

pub async fn spawn_delivery_rig(backend: Backend) -> DeliveryRig {
    spawn_delivery_rig_with(backend, |_| {}).await
}

pub async fn spawn_delivery_rig_with(
    backend: Backend,
    tweak: impl FnOnce(&mut Settings),
) -> DeliveryRig {
    let (settings, store, redis, data) = store_for(backend, |_| {}).await;
    rig_on(settings, store, redis, data, tweak).await
}

/// A rig on `redis` through `store` (e.g. one with another key prefix).
pub async fn spawn_delivery_rig_on(redis: TestRedis, store: Arc<dyn ReportStore>) -> DeliveryRig {
    let settings = Settings::from_toml_str(&test_config(&redis.url())).expect("test config");
    rig_on(settings, store, Some(redis), None, |_| {}).await
}

/// A rig whose app uses `store`, configured by `settings` (whose Redis the test runs).
pub async fn spawn_delivery_rig_with_store(
    settings: Settings,
    store: Arc<dyn ReportStore>,
) -> DeliveryRig {
    rig_on(settings, store, None, None, |_| {}).await
}

/// A rig on a Redis that keeps its data across `stop` + `restart` (AOF, fsync always).
pub async fn spawn_delivery_rig_on_persistent_redis() -> DeliveryRig {
    let redis = TestRedis::start_persistent().await;
    let settings = Settings::from_toml_str(&test_config(&redis.url())).expect("test config");
    let store: Arc<dyn ReportStore> = Arc::new(redis_store(&redis));
    rig_on(settings, store, Some(redis), None, |_| {}).await
}

async fn rig_on(
    mut settings: Settings,
    store: Arc<dyn ReportStore>,
    redis: Option<TestRedis>,
    data: Option<tempfile::TempDir>,
    tweak: impl FnOnce(&mut Settings),
) -> DeliveryRig {
    let sandbox = start_sandbox().await;
    settings.kiva.token_url = sandbox.token_url();
    settings.kiva.audience = sandbox.audience();
    settings.kiva.api_base_url = sandbox.base_url();
    settings.kiva.request_timeout_secs = 2;
    settings.delivery.claim_deadline_secs = 8;
    settings.delivery.retry_base_ms = 100;
    settings.delivery.retry_max_secs = 1;
    settings.delivery.max_attempts = 5;
    tweak(&mut settings);
    DeliveryRig {
        app: build_app(&settings, store, redis, data),
        sandbox,
        clock: Arc::new(ManualClock::new()),
        settings,
    }
}

/// A sandbox that knows both test partners and loans `L-0`… as `payingBack`.
/// `test_config`'s text with Kiva's token, audience and API addresses those of `sandbox`: for
/// a gateway binary run against the in-process sandbox.
pub fn with_kiva_at(toml: String, sandbox: &repayment_gateway::sandbox::Sandbox) -> String {
    toml.replace("http://127.0.0.1:9/oauth/token", &sandbox.token_url())
        .replace("https://partner-api.test", &sandbox.audience())
        .replace(
            "api_base_url = \"http://127.0.0.1:9\"",
            &format!("api_base_url = \"{}\"", sandbox.base_url()),
        )
}

pub async fn start_sandbox() -> repayment_gateway::sandbox::Sandbox {
    use repayment_gateway::sandbox::{Sandbox, SandboxConfig, SandboxLoan, SandboxPartner};
    let partners = [(THREE_COL, "three-col-client"), (TWO_COL, "two-col-client")];
    let config = SandboxConfig {
        partners: partners
            .iter()
            .map(|(id, client)| SandboxPartner {
                partner_id: id.to_string(),
                client_id: client.to_string(),
                client_secret: PARTNER_SECRET.to_string(),
            })
            .collect(),
        audience: "https://partner-api.test".into(),
        token_ttl_secs: 43199,
        unknown_outcome_once: vec![],
        loans: partners
            .iter()
            .flat_map(|(id, _)| {
                (0..SANDBOX_LOANS).map(move |i| SandboxLoan {
                    partner_id: id.to_string(),
                    internal_loan_id: format!("L-{i}"),
                    internal_client_id: format!("C-{i}"),
                    kiva_id: 2_000_000 + i as u64,
                    status: "payingBack".into(),
                    loan_local_price: "50000.00".into(),
                    loan_currency: "KES".into(),
                    delinquent: false,
                })
            })
            .collect(),
    };
    Sandbox::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("sandbox starts")
}

impl DeliveryRig {
    /// A new worker (its own consumer name and Kiva client, so no token cached yet).
    pub fn worker(&self) -> repayment_gateway::delivery::Worker {
        self.worker_on(self.app.store.clone())
    }

    pub fn worker_on(&self, store: Arc<dyn ReportStore>) -> repayment_gateway::delivery::Worker {
        self.worker_sending(store, repayment_gateway::delivery::BatchKinds::default())
    }

    /// A new worker that also sends batches of `kind`.
    pub fn worker_with(
        &self,
        kind: Arc<dyn repayment_gateway::delivery::BatchKind>,
    ) -> repayment_gateway::delivery::Worker {
        self.worker_sending(
            self.app.store.clone(),
            repayment_gateway::delivery::BatchKinds::default().with(kind),
        )
    }

    /// A new worker sending `kinds` and repayments (through the sandbox).
    fn worker_sending(
        &self,
        store: Arc<dyn ReportStore>,
        kinds: repayment_gateway::delivery::BatchKinds,
    ) -> repayment_gateway::delivery::Worker {
        let kiva =
            repayment_gateway::kiva::KivaClient::new(&self.settings.kiva, &self.settings.partners)
                .unwrap()
                .with_metrics(self.app.metrics.clone());
        repayment_gateway::delivery::Worker::new(
            store,
            kinds.with(Arc::new(repayment_gateway::delivery::Repayments::new(
                Arc::new(kiva),
            ))),
            self.clock.clone(),
            &self.settings.partners,
            self.settings.delivery.clone(),
            Duration::from_secs(self.settings.kiva.request_timeout_secs),
        )
        .with_metrics(self.app.metrics.clone())
    }

    /// Runs rounds until one finds nothing to claim; the number of calls made to Kiva.
    pub async fn drain(&self, worker: &repayment_gateway::delivery::Worker) -> usize {
        let mut sent = 0;
        loop {
            let round = worker.run_once().await.expect("store reachable");
            sent += round.sent;
            if round.claimed == 0 {
                return sent;
            }
        }
    }

    pub async fn submit(&self, key: &str, body: &Value) -> String {
        let answer = self.app.submit(key, body).await;
        assert_eq!(answer.status, 202, "{}", answer.text);
        answer.body["id"].as_str().unwrap().to_owned()
    }

    pub async fn report(&self, id: &str) -> Value {
        let answer = self.app.report(HEAD_OFFICE, id).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        answer.body
    }

    pub async fn operate(&self, key: &str, batch: &str, action: &str) -> Answer {
        self.app
            .send(
                self.app
                    .client
                    .post(format!("{}/v1/batches/{batch}/{action}", self.app.address))
                    .header("X-Api-Key", plain_key(key)),
            )
            .await
    }
}

/// A gateway binary reached over HTTP only, as an MIS reaches it.
pub struct Remote {
    pub base: String,
    client: reqwest::Client,
}

impl Remote {
    pub async fn ready(port: u16) -> Self {
        let remote = Self {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        };
        wait_until("the gateway binary answers", async || {
            remote
                .client
                .get(format!("{}/health/ready", remote.base))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        remote
    }

    /// `POST /v1/repayments` with the API key's plain value.
    pub async fn post_report(&self, api_key: &str, body: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/repayments", self.base))
            .header("X-Api-Key", api_key)
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    /// The report as `key` (a key name) sees it.
    pub async fn report(&self, key: &str, id: &str) -> Value {
        self.client
            .get(format!("{}/v1/reports/{id}", self.base))
            .header("X-Api-Key", plain_key(key))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default()
    }
}
