//! Crash safety with real processes: the gateway binary is killed with SIGKILL mid-delivery
//! and started again on the same store.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use repayment_gateway::sandbox::{Fault, Sandbox};
use serde_json::Value;

use crate::helpers::*;

/// The gateway binary, serving and delivering to `sandbox`.
struct Gateway {
    child: tokio::process::Child,
    remote: Remote,
}

impl Gateway {
    async fn start(config: &Path) -> Self {
        let port = free_port();
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
        Self {
            child,
            remote: Remote::ready(port).await,
        }
    }

    async fn submit(&self, loan: usize) -> String {
        let body = serde_json::json!({"period": "2026-10", "repayments": [{"loan_id": format!("L-{loan}"), "client_id": format!("C-{loan}"), "amount": "7.50"}]});
        let answer: Value = self
            .remote
            .post_report(&plain_key(NAIROBI), &body.to_string())
            .await
            .json()
            .await
            .unwrap();
        answer["id"].as_str().expect("accepted").to_owned()
    }

    async fn status(&self, id: &str) -> String {
        let report = self.remote.report(HEAD_OFFICE, id).await;
        report["status"].as_str().unwrap_or("missing").to_owned()
    }

    async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path, store_url: &str, sandbox: &Sandbox) -> std::path::PathBuf {
    let toml = test_config(store_url)
        .replace(
            "[delivery]\nenabled = false",
            // One batch at a time, so the batches after the stalled one are still queued
            // when the process dies.
            "[delivery]\nenabled = true\nconcurrency = 1\npoll_interval_ms = 20\nclaim_deadline_secs = 7",
        )
        .replace("[kiva]", "[kiva]\nrequest_timeout_secs = 1");
    let toml = with_kiva_at(toml, sandbox);
    let path = dir.join("gateway.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// The gateway's configuration in `dir` on `backend`'s store, and the Redis it needs (kept
/// alive by the caller).
async fn gateway_config(
    backend: Backend,
    dir: &std::path::Path,
    sandbox: &Sandbox,
) -> (Option<TestRedis>, std::path::PathBuf) {
    let redis = match backend {
        Backend::Redis => Some(TestRedis::start().await),
        Backend::Cluster | Backend::Embedded => None,
    };
    let store_url = match (&redis, backend) {
        (Some(redis), _) => redis.url(),
        (None, Backend::Cluster) => TestCluster::shared().url(),
        (None, _) => format!("embedded:{}", dir.join("store").display()),
    };
    let config = write_config(dir, &store_url, sandbox);
    if backend == Backend::Cluster {
        // The cluster is shared by the binary's tests: this one keeps to a prefix of its own.
        let toml = std::fs::read_to_string(&config).unwrap().replace(
            &format!("key_prefix = \"{PREFIX}\""),
            &format!("key_prefix = \"{}\"", TestCluster::unique_prefix()),
        );
        std::fs::write(&config, toml).unwrap();
    }

    (redis, config)
}

async fn sigkill_mid_delivery_loses_nothing_and_sends_nothing_twice(backend: Backend) {
    let sandbox = start_sandbox().await;
    let data = tempfile::tempdir().unwrap();
    let (_redis, config) = gateway_config(backend, data.path(), &sandbox).await;
    let first = Gateway::start(&config).await;
    let delivered = first.submit(0).await;
    wait_until("the first report is delivered", async || {
        first.status(&delivered).await == "delivered"
    })
    .await;
    // The next call to Kiva hangs: the process dies while that batch is `sending`.
    sandbox.push_fault(Fault::Stall(Duration::from_secs(60)));
    let interrupted = first.submit(1).await;
    sandbox.wait_for_repayment_requests(2, DEADLINE).await;
    let queued = [first.submit(2).await, first.submit(3).await];
    assert_eq!(first.status(&interrupted).await, "delivering");
    first.kill().await;

    let second = Gateway::start(&config).await;
    for id in &queued {
        wait_until(
            "a queued report is delivered after the restart",
            async || second.status(id).await == "delivered",
        )
        .await;
    }
    wait_until("the interrupted batch is taken over and held", async || {
        second.status(&interrupted).await == "needs_attention"
    })
    .await;

    assert_eq!(
        second.status(&delivered).await,
        "delivered",
        "nothing accepted is lost"
    );
    assert_eq!(
        sandbox.repayment_requests(),
        4,
        "nothing delivered or interrupted is sent again"
    );
    let loans: Vec<String> = sandbox
        .uploads()
        .iter()
        .map(|u| {
            u.json["repayments"][0]["loan_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(loans, ["L-0", "L-2", "L-3"]);
    second.kill().await;
}

/// SIGKILL while many clients' accepts are in flight (on the embedded store, being
/// group-committed: several accepts per transaction and fsync). A 202 means "on disk", so
/// every report that got one is there after the restart, whole.
async fn sigkill_during_concurrent_accepts_keeps_every_accepted_report(backend: Backend) {
    const CLIENTS: usize = 16;
    let sandbox = start_sandbox().await;
    let data = tempfile::tempdir().unwrap();
    let (_redis, config) = gateway_config(backend, data.path(), &sandbox).await;
    let first = Gateway::start(&config).await;

    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let accepted = accepted.clone();
        let url = format!("{}/v1/repayments", first.remote.base);
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for n in 0.. {
                let loan = format!("L-{client}-{n}");
                let body = serde_json::json!({"period": "2026-10", "repayments": [{"loan_id": loan, "client_id": format!("C-{client}-{n}"), "amount": "7.50"}]});
                let sent = http
                    .post(&url)
                    .header("X-Api-Key", plain_key(NAIROBI))
                    .json(&body)
                    .send()
                    .await;
                // Once the process is gone, requests fail: that client is done.
                let Ok(answer) = sent else { break };
                if answer.status() != 202 {
                    break;
                }
                let Ok(answer) = answer.json::<Value>().await else { break };
                let id = answer["id"].as_str().expect("a 202 names its report").to_owned();
                accepted.lock().unwrap().push((id, loan));
            }
        }));
    }
    wait_until("a few hundred reports are accepted", async || {
        accepted.lock().unwrap().len() >= 300
    })
    .await;
    // The clients are still sending: some accepts are waiting for their group's commit.
    first.kill().await;
    for client in clients {
        client.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();

    let second = Gateway::start(&config).await;
    for (id, loan) in &accepted {
        let report = second.remote.report(HEAD_OFFICE, id).await;
        assert_eq!(
            report["id"],
            id.as_str(),
            "an accepted report is lost: {report}"
        );
        assert_eq!(report["repayment_count"], 1, "{report}");
        let loans: Vec<&str> = report["batches"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|b| b["repayments"].as_array().into_iter().flatten())
            .filter_map(|r| r["loan_id"].as_str())
            .collect();
        assert_eq!(loans, [loan.as_str()], "{report}");
    }
    second.kill().await;
}

on_both_stores!(
    sigkill_mid_delivery_loses_nothing_and_sends_nothing_twice,
    sigkill_during_concurrent_accepts_keeps_every_accepted_report
);

#[tokio::test]
async fn a_second_process_on_the_same_embedded_store_fails_with_a_clear_message() {
    let sandbox = start_sandbox().await;
    let data = tempfile::tempdir().unwrap();
    let config = write_config(
        data.path(),
        &format!("embedded:{}", data.path().join("store").display()),
        &sandbox,
    );
    let first = Gateway::start(&config).await;

    let second = tokio::process::Command::new(env!("CARGO_BIN_EXE_repayment-gateway"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("GATEWAY_SERVER__BIND", format!("127.0.0.1:{}", free_port()))
        .output();
    let second = tokio::time::timeout(DEADLINE, second)
        .await
        .unwrap()
        .unwrap();

    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("already in use by another gateway process"),
        "{stderr}"
    );
    first.kill().await;
}

/// A store written before the queue gauges were counted by triggers (no counts, `user_version`
/// 0) is counted once when a new gateway opens it: the gauges are right from the first scrape.
#[tokio::test]
async fn an_embedded_store_from_before_the_batch_counts_is_counted_when_opened() {
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("store");
    let config = data.path().join("gateway.toml");
    // Delivery off: the three batches stay queued.
    std::fs::write(
        &config,
        test_config(&format!("embedded:{}", store.display())),
    )
    .unwrap();
    let first = Gateway::start(&config).await;
    for loan in 0..3 {
        first.submit(loan).await;
    }
    first.kill().await;
    let db = rusqlite::Connection::open(store.join("gateway.db")).unwrap();
    db.execute_batch("DELETE FROM batch_counts; PRAGMA user_version = 0;")
        .unwrap();
    drop(db);

    let second = Gateway::start(&config).await;
    let metrics = reqwest::get(format!("{}/metrics", second.remote.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let queued = format!("repayment_gateway_batches{{partner=\"{THREE_COL}\",state=\"queued\"}} 3");
    assert!(metrics.lines().any(|l| l == queued), "{metrics}");
    second.kill().await;
}
