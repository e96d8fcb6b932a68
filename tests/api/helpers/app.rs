//! The gateway in-process on a free port, on the store a test asks for, and the requests tests
//! send it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use repayment_gateway::config::Settings;
use repayment_gateway::domain::PartnerId;
use repayment_gateway::startup::Application;
use repayment_gateway::store::redis::RedisStore;
use repayment_gateway::store::{ReportQuery, ReportStore};
use serde_json::Value;

use super::{Backend, PREFIX, THREE_COL, TWO_COL, TestCluster, TestRedis, plain_key, test_config};

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

pub(super) type StoreParts = (
    Settings,
    Arc<dyn ReportStore>,
    Option<TestRedis>,
    Option<tempfile::TempDir>,
);

pub(super) async fn store_for(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> StoreParts {
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

pub(super) fn build_app(
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
