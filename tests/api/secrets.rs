//! Credentials written into URLs never reach the gateway's output.

use crate::helpers::*;

async fn run_binary(args: &[&str], config_text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, config_text).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_repayment-gateway"))
        .args(args)
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test]
async fn check_config_does_not_print_a_password_given_as_a_query_parameter() {
    let (ok, out) = run_binary(
        &["check-config"],
        &test_config("redis://127.0.0.1:6379/?pass=PASSWORD-IN-QUERY&db=0"),
    )
    .await;
    assert!(ok, "{out}");
    assert!(
        out.contains("store redis://127.0.0.1:6379/?pass=***&db=0"),
        "{out}"
    );
    assert!(!out.contains("PASSWORD-IN-QUERY"), "{out}");
}

#[tokio::test]
async fn an_unsupported_store_scheme_stops_the_start_without_printing_its_password() {
    let (ok, out) = run_binary(
        &["serve"],
        &test_config("redis-sentinel://:PASSWORD-IN-USERINFO@sentinel:26379/mymaster"),
    )
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("redis-sentinel://:***@sentinel:26379"),
        "{out}"
    );
    assert!(!out.contains("PASSWORD-IN-USERINFO"), "{out}");
}
