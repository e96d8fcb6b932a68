//! The gateway beside an in-process Kiva sandbox, with workers a test creates and drives
//! itself on a clock it moves by hand.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use repayment_gateway::config::Settings;
use repayment_gateway::store::ReportStore;
use serde_json::Value;

use super::{
    Answer, Backend, HEAD_OFFICE, PARTNER_SECRET, THREE_COL, TWO_COL, TestApp, TestRedis,
    build_app, plain_key, redis_store, store_for, test_config,
};

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

/// A sandbox that knows both test partners and loans `L-0`… as `payingBack`.
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
