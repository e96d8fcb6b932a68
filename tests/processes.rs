//! Several gateway processes on one queue: three real `repayment-gateway serve` processes share
//! one Redis (and, in the second test, one Redis Cluster), reports are submitted round-robin
//! across them by parallel clients, one process is SIGKILLed mid-run and started again, and
//! what the Kiva sandbox received is checked against what the gateways acknowledged: every
//! loan of every 202'd report uploaded exactly once, or its batch held for an operator (then
//! uploaded at most once); nothing lost, nothing uploaded twice.
//!
//! The sandbox runs in this process on a port the gateways point at, so its record of uploads
//! is the ground truth. A separate test binary: cargo runs it alone, not beside the api suite.

#[allow(dead_code)]
#[path = "support/cluster.rs"]
mod cluster_support;
#[allow(dead_code, unused_macros, unused_imports)]
#[path = "api/helpers.rs"]
mod helpers;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use repayment_gateway::domain::{PartnerId, Period};
use repayment_gateway::sandbox::Sandbox;
use repayment_gateway::store::redis::RedisStore;
use repayment_gateway::store::{BatchState, Periods};
use tokio::sync::RwLock;

use helpers::*;

const PROCESSES: usize = 3;
/// Parallel clients submitting.
const CLIENTS: usize = 12;
/// Longest the gateways get to settle every batch once all reports are in.
const DRAIN_DEADLINE: Duration = Duration::from_secs(90);
const PERIOD: &str = "2026-10";
/// Longest one report may take to find a process that takes it (a request cut short by the
/// kill leaves its Idempotency-Key claimed until the claim's TTL runs out).
const RETRY_DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_on_one_redis_lose_nothing_and_upload_nothing_twice_when_one_is_killed() {
    let redis = TestRedis::start().await;
    run(&redis.url(), PREFIX, 2_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_on_a_redis_cluster_lose_nothing_and_upload_nothing_twice_when_one_is_killed()
 {
    let cluster = TestCluster::shared();
    run(&cluster.url(), &TestCluster::unique_prefix(), 2_000).await;
}

/// One `repayment-gateway serve` process: API and delivery worker.
struct Gateway {
    child: tokio::process::Child,
    address: String,
}

impl Gateway {
    async fn start(config: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_repayment-gateway"))
            .args(["serve", "--config"])
            .arg(config)
            .env("GATEWAY_SERVER__BIND", format!("127.0.0.1:{port}"))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let remote = Remote::ready(port).await;
        Self {
            child,
            address: remote.base,
        }
    }
}

fn write_config(
    dir: &Path,
    store_url: &str,
    prefix: &str,
    sandbox: &Sandbox,
) -> std::path::PathBuf {
    let toml = test_config(store_url)
        .replace(
            &format!("key_prefix = \"{PREFIX}\""),
            &format!("key_prefix = \"{prefix}\""),
        )
        .replace(
            "[delivery]\nenabled = false",
            // A short claim deadline, so the killed process's unsettled batches are taken
            // over (and held, if they were mid-send) within the test's time.
            "[delivery]\nenabled = true\nconcurrency = 4\npoll_interval_ms = 20\nclaim_deadline_secs = 7",
        )
        .replace("[kiva]", "[kiva]\nrequest_timeout_secs = 1");
    let toml = with_kiva_at(toml, sandbox);
    let path = dir.join("gateway.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Report `i`: one repayment of a loan no other report has, for one of the two partners.
fn report(i: usize) -> (&'static str, String, serde_json::Value) {
    if i.is_multiple_of(2) {
        let body = serde_json::json!({"period": PERIOD, "repayments": [
            {"loan_id": format!("P-{i}"), "client_id": format!("C-{i}"), "amount": "7.50"}]});
        (NAIROBI, THREE_COL.to_owned(), body)
    } else {
        let body = serde_json::json!({"period": PERIOD, "repayments": [
            {"loan_id": format!("P-{i}"), "amount": "2.25"}]});
        (TWO_COL_BRANCH, TWO_COL.to_owned(), body)
    }
}

async fn run(store_url: &str, prefix: &str, reports: usize) {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), store_url, prefix, &sandbox);
    let mut gateways = Vec::new();
    for _ in 0..PROCESSES {
        gateways.push(Gateway::start(&config).await);
    }
    // Where clients send: an address is emptied while its process is down.
    let addresses = Arc::new(RwLock::new(
        gateways
            .iter()
            .map(|g| Some(g.address.clone()))
            .collect::<Vec<_>>(),
    ));
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(tokio::sync::Mutex::new(BTreeMap::<usize, String>::new()));
    let (progress, mut submitted) = tokio::sync::watch::channel(0usize);
    let progress = Arc::new(progress);

    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (addresses, next, accepted, progress) = (
                addresses.clone(),
                next.clone(),
                accepted.clone(),
                progress.clone(),
            );
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= reports {
                        return;
                    }
                    let (key, _, body) = report(i);
                    // Round-robin from the report's number; a request that finds its process
                    // gone is sent again, with the same Idempotency-Key, to the next one: if
                    // the first had been accepted, the replay answers with its id.
                    let mut attempt = i;
                    let give_up = tokio::time::Instant::now() + RETRY_DEADLINE;
                    let id = loop {
                        assert!(
                            tokio::time::Instant::now() < give_up,
                            "report {i} found no gateway to take it"
                        );
                        let address = addresses.read().await[attempt % PROCESSES].clone();
                        attempt += 1;
                        let Some(address) = address else { continue };
                        let sent = http
                            .post(format!("{address}/v1/repayments"))
                            .header("X-Api-Key", plain_key(key))
                            .header("Content-Type", "application/json")
                            .header("Idempotency-Key", format!("report-{i}"))
                            .body(body.to_string())
                            .send()
                            .await;
                        let Ok(response) = sent else { continue };
                        let status = response.status().as_u16();
                        let text = response.text().await.unwrap_or_default();
                        // 409: the first request with this key is still in flight (on the
                        // killed process, until its claim expires); anything else is final.
                        if status == 409 || status == 503 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        assert_eq!(status, 202, "report {i}: {text}");
                        let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
                        break answer["id"].as_str().unwrap().to_owned();
                    };
                    accepted.lock().await.insert(i, id);
                    progress.send_modify(|n| *n += 1);
                }
            })
        })
        .collect();

    // Mid-run: the second process dies without warning, and comes back a little later.
    submitted
        .wait_for(|n| *n >= reports / 3)
        .await
        .expect("clients run");
    addresses.write().await[1] = None;
    gateways[1].child.kill().await.unwrap();
    submitted
        .wait_for(|n| *n >= reports / 2)
        .await
        .expect("clients run");
    gateways[1] = Gateway::start(&config).await;
    addresses.write().await[1] = Some(gateways[1].address.clone());
    for client in clients {
        client.await.expect("a client panicked");
    }
    let accepted = Arc::try_unwrap(accepted).unwrap().into_inner();
    assert_eq!(accepted.len(), reports, "every report got its 202");

    // Drain: every batch of every report settles (delivered, or held after the kill).
    let store = RedisStore::new(store_url, prefix, 4, Duration::from_secs(5)).unwrap();
    let period = Period::parse(PERIOD).unwrap();
    let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
    let states = loop {
        let states = batch_states_by_report(&store, period).await;
        let settled = states
            .values()
            .all(|(state, _)| matches!(state, BatchState::Delivered | BatchState::Held));
        if states.len() == reports && settled {
            break states;
        }
        let waiting = states
            .values()
            .filter(|(s, _)| !matches!(s, BatchState::Delivered | BatchState::Held))
            .count();
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled in time: {} reports stored, {waiting} batches unsettled",
            states.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // What Kiva received, per (partner, loan).
    let mut uploads: HashMap<(String, String), usize> = HashMap::new();
    for upload in sandbox.uploads() {
        for repayment in upload.json["repayments"].as_array().unwrap() {
            let loan = repayment["loan_id"].as_str().unwrap().to_owned();
            *uploads
                .entry((upload.partner_id.clone(), loan))
                .or_default() += 1;
        }
    }
    let mut held = 0;
    for (i, id) in &accepted {
        let (_, partner, body) = report(*i);
        let loan = body["repayments"][0]["loan_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (state, report_id) = states
            .get(&(partner.clone(), loan.clone()))
            .unwrap_or_else(|| panic!("report {i} ({loan}) is lost"));
        assert_eq!(
            report_id, id,
            "report {i} is stored under the id its 202 named"
        );
        let sent = uploads.remove(&(partner, loan.clone())).unwrap_or(0);
        match state {
            BatchState::Delivered => {
                assert_eq!(sent, 1, "delivered {loan} was uploaded exactly once")
            }
            _ => {
                held += 1;
                assert!(sent <= 1, "held {loan} was uploaded {sent} times");
            }
        }
    }
    assert!(
        uploads.is_empty(),
        "Kiva received loans no report has: {uploads:?}"
    );
    // Only batches the killed process was sending can be held: at most its concurrency.
    assert!(held <= 4, "{held} batches held");
    eprintln!("{reports} reports over {PROCESSES} processes, one killed: {held} held");
    for gateway in &mut gateways {
        gateway.child.kill().await.unwrap();
    }
}

/// (partner, loan) → (its batch's state, its report id), for both partners' reports of the
/// period, as the store has them.
async fn batch_states_by_report(
    store: &RedisStore,
    period: Period,
) -> HashMap<(String, String), (BatchState, String)> {
    let mut states = HashMap::new();
    for partner in [THREE_COL, TWO_COL] {
        let id = PartnerId::parse(partner).unwrap();
        for (report, batches) in store.period_reports(&id, period, None).await.unwrap() {
            for batch in batches {
                for repayment in &batch.repayments {
                    states.insert(
                        (
                            partner.to_owned(),
                            repayment.repayment.loan_id.as_str().to_owned(),
                        ),
                        (batch.state, report.id.to_string()),
                    );
                }
            }
        }
    }
    states
}
