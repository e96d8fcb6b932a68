//! The real binary, as an operator runs it.

use std::process::Stdio;

use tokio::io::AsyncReadExt;

use crate::helpers::*;

#[tokio::test]
async fn serve_logs_each_request_with_the_key_name_and_never_a_secret() {
    let redis = TestRedis::start().await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = redis.dir().join("gateway.toml");
    std::fs::write(
        &config,
        test_config(&redis.url()).replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_repayment-gateway"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("GATEWAY_LOG__FORMAT", "json")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until("the binary answers", async || {
        client
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

    let accepted = client
        .post(format!("{base}/v1/repayments"))
        .header("X-Api-Key", plain_key(NAIROBI))
        .header("Content-Type", "application/json")
        .body(three_column_report(2, "1").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let refused = client
        .post(format!("{base}/v1/repayments"))
        .header("X-Api-Key", "a-wrong-key-that-must-not-be-logged")
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    child.start_kill().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    let logs = format!("{out}{err}");

    let request_lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "request" && l["span"]["path"] == "/v1/repayments")
        .collect();
    assert_eq!(request_lines.len(), 2, "{logs}");
    let accepted_line = &request_lines[0];
    assert_eq!(accepted_line["status"], 202);
    assert_eq!(accepted_line["span"]["api_key"], NAIROBI);
    assert_eq!(accepted_line["span"]["partner"], THREE_COL);
    assert_eq!(accepted_line["span"]["branch"], "Nairobi");
    assert_eq!(accepted_line["span"]["method"], "POST");
    assert!(accepted_line["span"]["request_id"].is_string());
    assert!(accepted_line["latency_ms"].is_string());
    assert_eq!(request_lines[1]["status"], 401);

    for secret in [
        plain_key(NAIROBI),
        "a-wrong-key-that-must-not-be-logged".into(),
        PARTNER_SECRET.into(),
    ] {
        assert!(!logs.contains(&secret), "a secret reached the logs");
    }
}
