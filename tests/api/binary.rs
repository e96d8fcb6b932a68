//! The real binary, as an operator runs it.

use std::process::Stdio;

use tokio::io::AsyncReadExt;

use crate::helpers::*;

/// Everything a finished (or killed) child wrote to stdout and stderr.
async fn output_of(child: &mut tokio::process::Child) -> String {
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
    out + &err
}

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
    let gateway = Remote::ready(port).await;

    let accepted = gateway
        .post_report(
            &plain_key(NAIROBI),
            &three_column_report(2, "1").to_string(),
        )
        .await;
    assert_eq!(accepted.status(), 202);
    let refused = gateway
        .post_report("a-wrong-key-that-must-not-be-logged", "{}")
        .await;
    assert_eq!(refused.status(), 401);

    child.start_kill().unwrap();
    let logs = output_of(&mut child).await;

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
    assert!(
        accepted_line["span"]["report_id"].is_string(),
        "{accepted_line}"
    );
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

#[tokio::test]
async fn serve_delivers_to_kiva_stops_on_sigterm_and_logs_no_token_secret_or_key() {
    let rig = spawn_delivery_rig(Backend::Redis).await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = rig.app.dir().join("serve.toml");
    let toml = with_kiva_at(
        test_config(&rig.app.redis().url())
            .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
            .replace(
                "enabled = false",
                "enabled = true\npoll_interval_ms = 20\nclaim_deadline_secs = 10",
            ),
        &rig.sandbox,
    )
    .replace("[kiva]", "[kiva]\nrequest_timeout_secs = 2")
    .replace("level = \"info\"", "level = \"debug\"");
    std::fs::write(&config, toml).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_repayment-gateway"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let gateway = Remote::ready(port).await;

    rig.sandbox.revoke_tokens();
    let accepted: serde_json::Value = gateway
        .post_report(
            &plain_key(NAIROBI),
            &three_column_report(250, "1.50").to_string(),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = accepted["id"].as_str().unwrap();
    wait_until("the report is delivered", async || {
        gateway.report(NAIROBI, id).await["status"] == "delivered"
    })
    .await;
    assert_eq!(rig.sandbox.uploads().len(), 2);

    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");

    let logs = output_of(&mut child).await;
    assert!(logs.contains("batch attempt finished"), "{logs}");
    assert!(logs.contains("delivery worker stopped"), "{logs}");
    let tokens: Vec<String> = rig
        .sandbox
        .uploads()
        .iter()
        .map(|u| u.authorization.clone())
        .collect();
    assert!(tokens.iter().all(|t| t.len() > 10));
    for secret in tokens
        .iter()
        .chain([&plain_key(NAIROBI), &PARTNER_SECRET.to_string()])
    {
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs");
    }
}

#[tokio::test]
async fn check_config_online_reports_per_partner_what_works() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = test_config("embedded:unused")
        .replace("http://127.0.0.1:9/oauth/token", &sandbox.token_url())
        .replace("https://partner-api.test", &sandbox.audience())
        .replacen(
            &format!("client_secret = \"{PARTNER_SECRET}\""),
            "client_secret = \"a-wrong-secret\"",
            1,
        );
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, toml).unwrap();

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_repayment-gateway"))
        .args(["check-config", "--online", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();

    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stdout.contains(&format!("partner {THREE_COL} (Three Column MFI): FAILED")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("partner {TWO_COL} (Two Column MFI): ok")),
        "{stdout}"
    );
    assert!(
        stderr.contains("1 partner(s) could not get a token"),
        "{stderr}"
    );
    assert!(!stdout.contains("a-wrong-secret") && !stdout.contains(PARTNER_SECRET));
    assert_eq!(sandbox.tokens_issued(), 1);
}

#[tokio::test]
async fn serve_refuses_a_redis_without_aof_unless_told_and_then_says_what_it_risks() {
    let redis = TestRedis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let strict = test_config(&redis.url()).replace("allow_unsafe_redis = true", "");
    let config = dir.path().join("strict.toml");
    std::fs::write(&config, strict).unwrap();
    let out = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_repayment-gateway"))
            .args(["serve", "--config"])
            .arg(&config)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("serve refuses to start rather than serving on an unsafe Redis")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("appendonly is off") && stderr.contains("store.allow_unsafe_redis"),
        "{stderr}"
    );

    // With the override it starts, and readiness tells what an accepted report survives.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let lenient = test_config(&redis.url()).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let config = dir.path().join("lenient.toml");
    std::fs::write(&config, lenient).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_repayment-gateway"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let remote = Remote::ready(port).await;
    let ready: serde_json::Value = reqwest::get(format!("{}/health/ready", remote.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["durability"]["may_lose_acknowledged_writes"], true);
    assert!(
        ready["durability"]["level"]
            .as_str()
            .unwrap()
            .contains("no AOF")
    );
    child.kill().await.unwrap();
}
