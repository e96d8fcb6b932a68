//! Test harness: every test gets its own `redis-server` (on a unix socket in a temp dir, so
//! tests never share keys or ports) and its own gateway on a free port.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use repayment_gateway::api::auth::hash_key;
use repayment_gateway::domain::PartnerId;
use repayment_gateway::store::{
    AttemptEnd, Batch, BatchDoc, BeginAttempt, ClaimedBatch, ExpectedLoansSnapshot,
    IdempotencyClaim, IdempotencyScope, IdempotentAccept, OperatorOutcome, Periods, Queue,
    RefreshStatus, Report, ReportPage, ReportQuery, ReportStore, Reports, Sessions, StoreError,
};
use serde_json::Value;
use tokio::sync::Notify;
use uuid::Uuid;

pub use crate::cluster_support::TestCluster;

// Explicit paths: this file is also loaded by `#[path]` from other test binaries, where a
// plain `mod` would look for these files beside it rather than in helpers/.
#[path = "helpers/app.rs"]
mod app;
#[path = "helpers/delivery_rig.rs"]
mod delivery_rig;
#[path = "helpers/test_redis.rs"]
mod test_redis;
pub use app::*;
pub use delivery_rig::*;
pub use test_redis::*;

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
