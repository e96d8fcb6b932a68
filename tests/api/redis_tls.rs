//! `store.url = "rediss://…"`: the gateway talks to Redis over TLS and verifies the server's
//! certificate against the system's trusted CAs (`SSL_CERT_FILE` / `SSL_CERT_DIR` name others).

use std::path::Path;
use std::process::Stdio;

use crate::helpers::*;

fn openssl(dir: &Path, args: &[&str]) {
    let status = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl must be installed (apt-get install -y openssl)");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA (`ca.pem`) and a certificate it signed for `localhost` (`server.pem`, `server.key`).
fn make_certificates(dir: &Path) {
    let days = ["-days", "2"];
    openssl(
        dir,
        &[
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=gateway test CA",
            ][..],
            &days,
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-extfile",
                "san.ext",
            ][..],
            &days,
        ]
        .concat(),
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_gateway(config: &Path, port: u16, ca: Option<&Path>) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_repayment-gateway"));
    command
        .args(["serve", "--config"])
        .arg(config)
        .env("GATEWAY_SERVER__BIND", format!("127.0.0.1:{port}"))
        .env_remove("RUST_LOG")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Some(ca) = ca {
        command.env("SSL_CERT_FILE", ca);
    }
    command.spawn().unwrap()
}

#[tokio::test]
async fn a_report_goes_to_a_redis_over_tls_whose_certificate_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let tls_port = free_port();
    let _redis = tokio::process::Command::new("redis-server")
        .args(["--port", "0", "--bind", "127.0.0.1", "--tls-port"])
        .arg(tls_port.to_string())
        .args([
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
        ])
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        test_config(&format!("rediss://localhost:{tls_port}")),
    )
    .unwrap();

    // With the CA trusted, the store is ready and a report is stored and read back.
    let port = free_port();
    let mut trusting = start_gateway(&config, port, Some(&dir.path().join("ca.pem")));
    let remote = Remote::ready(port).await;
    let body = three_column_report(2, "1.25").to_string();
    let answer = remote.post_report(&plain_key(NAIROBI), &body).await;
    assert_eq!(answer.status(), 202);
    let id = answer.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(remote.report(HEAD_OFFICE, &id).await["status"], "queued");
    trusting.kill().await.unwrap();

    // Without it, the certificate is refused: the gateway runs, and says the store is not
    // ready rather than talking to a server it can't verify.
    let port = free_port();
    let _doubting = start_gateway(&config, port, None);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_until("the gateway without the CA answers", async || {
        http.get(format!("{base}/health/live"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let ready = http
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
}
