//! Writes a promise rests on wait for replica acknowledgement (`store.replica_acks`): a 202
//! is only answered once the replicas have the report, and a batch is only sent once they
//! have its `sending`. A master and a replica of our own, on TCP (Redis replicates over TCP
//! only), with the replica frozen (SIGSTOP) to make it lag.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use repayment_gateway::config::Settings;
use repayment_gateway::store::ReportStore;
use repayment_gateway::store::redis::RedisStore;

use crate::helpers::*;

struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGCONT first: a stopped process does not act on SIGKILL until it runs again.
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(replica_of: Option<u16>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("redis-server");
        command
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(master) = replica_of {
            command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        Self {
            child: command.spawn().expect("redis-server starts"),
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn signal(&self, signal: i32) {
        // SAFETY: a plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    async fn info(&self) -> String {
        let Ok(client) = redis::Client::open(self.url()) else {
            return String::new();
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return String::new();
        };
        redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .unwrap_or_default()
    }
}

/// A master with one replica in sync.
async fn replicated_pair() -> (Server, Server) {
    let master = Server::start(None);
    wait_until("the master answers", async || {
        !master.info().await.is_empty()
    })
    .await;
    let replica = Server::start(Some(master.port));
    wait_until("the replica is in sync", async || {
        replica.info().await.contains("master_link_status:up")
            && master.info().await.contains("connected_slaves:1")
    })
    .await;
    (master, replica)
}

fn settings_for(master: &Server, acks: u32) -> Settings {
    let mut settings = Settings::from_toml_str(&test_config(&master.url())).unwrap();
    settings.store.replica_acks = acks;
    settings.store.replica_ack_timeout_ms = 300;
    settings
}

fn store_for(master: &Server, acks: u32) -> Arc<dyn ReportStore> {
    Arc::new(
        RedisStore::new(&master.url(), PREFIX, 8, Duration::from_secs(5))
            .unwrap()
            .with_replica_acks(acks, Duration::from_millis(300)),
    )
}

fn one_loan(loan: &str) -> String {
    serde_json::json!({"period": "2026-10", "repayments": [
        {"loan_id": loan, "client_id": "C-0", "amount": "1.00"}]})
    .to_string()
}

#[tokio::test]
async fn an_accept_the_replica_did_not_acknowledge_is_outcome_unknown_never_a_202() {
    let (master, replica) = replicated_pair().await;
    let app = spawn_app_with_settings(&settings_for(&master, 1), store_for(&master, 1));
    let acknowledged = app
        .submit_idempotent(NAIROBI, "k-1", &one_loan("L-0"))
        .await;
    assert_eq!(acknowledged.status, 202, "{}", acknowledged.text);

    replica.signal(libc::SIGSTOP);
    let lagging = app
        .submit_idempotent(NAIROBI, "k-2", &one_loan("L-1"))
        .await;

    assert_eq!(lagging.status, 503, "{}", lagging.text);
    assert!(
        lagging.body["type"]
            .as_str()
            .unwrap()
            .ends_with("/outcome-unknown"),
        "{}",
        lagging.text
    );
    assert!(lagging.header("retry-after").is_some());
    assert!(lagging.header("location").is_some());

    // The MIS retries with the same key while the replica still lags: the report is on the
    // master, but a replayed 202 would be the same broken promise.
    let retried = app
        .submit_idempotent(NAIROBI, "k-2", &one_loan("L-1"))
        .await;
    assert_eq!(retried.status, 503, "{}", retried.text);
    assert!(
        retried.body["type"]
            .as_str()
            .unwrap()
            .ends_with("/outcome-unknown"),
        "{}",
        retried.text
    );

    // Once the replica has caught up, the retry with the same key answers what the store has.
    replica.signal(libc::SIGCONT);
    wait_until("the retry is answered 202", async || {
        app.submit_idempotent(NAIROBI, "k-2", &one_loan("L-1"))
            .await
            .status
            == 202
    })
    .await;
}

#[tokio::test]
async fn a_batch_whose_sending_the_replica_did_not_acknowledge_is_not_sent() {
    let (master, replica) = replicated_pair().await;
    let rig = spawn_delivery_rig_with_store(settings_for(&master, 1), store_for(&master, 1)).await;
    let id = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    let worker = rig.worker();

    replica.signal(libc::SIGSTOP);
    let round = worker.run_once().await.expect("the store answers");

    assert_eq!(round.sent, 0, "{round:?}");
    assert_eq!(
        rig.sandbox.repayment_requests(),
        0,
        "nothing sent unacknowledged"
    );
    assert_eq!(rig.report(&id).await["status"], "queued", "given back");

    replica.signal(libc::SIGCONT);
    rig.drain(&worker).await;
    assert_eq!(
        rig.sandbox.uploads().len(),
        1,
        "sent once the replica is back"
    );
    assert_eq!(rig.report(&id).await["status"], "delivered");
}

#[tokio::test]
async fn readiness_says_a_202_survives_a_failover_only_when_replicas_acknowledge() {
    let (master, _replica) = replicated_pair().await;
    let unwaited = spawn_app_with_settings(&settings_for(&master, 0), store_for(&master, 0));
    let ready = unwaited.get("/health/ready", None).await;
    let durability = &ready.body["durability"];
    assert_eq!(durability["replicas"], 1, "{}", ready.text);
    assert_eq!(durability["may_lose_acknowledged_writes"], true);
    assert!(
        !durability["survives"]
            .as_array()
            .unwrap()
            .contains(&serde_json::Value::from("failover")),
        "{}",
        ready.text
    );

    let waited = spawn_app_with_settings(&settings_for(&master, 1), store_for(&master, 1));
    let ready = waited.get("/health/ready", None).await;
    let survives = ready.body["durability"]["survives"].as_array().unwrap();
    assert!(
        survives.contains(&serde_json::Value::from("failover")),
        "{}",
        ready.text
    );
    assert_eq!(ready.body["durability"]["replica_acks"], 1);
}

#[tokio::test]
async fn an_operator_action_the_replica_did_not_acknowledge_is_outcome_unknown() {
    let (master, replica) = replicated_pair().await;
    let rig = spawn_delivery_rig_with_store(settings_for(&master, 1), store_for(&master, 1)).await;
    let id = rig.submit(NAIROBI, &three_column_report(1, "1")).await;
    rig.sandbox
        .push_fault(repayment_gateway::sandbox::Fault::status(
            400,
            r#"{"error":"bad"}"#,
        ));
    rig.drain(&rig.worker()).await;
    assert_eq!(batch_states(&rig.report(&id).await), ["rejected"]);

    replica.signal(libc::SIGSTOP);
    let answer = rig.operate(HEAD_OFFICE, &format!("{id}.1"), "resend").await;
    assert_eq!(answer.status, 503, "{}", answer.text);
    assert!(
        answer.body["type"]
            .as_str()
            .unwrap()
            .ends_with("/outcome-unknown"),
        "{}",
        answer.text
    );
    replica.signal(libc::SIGCONT);
}
