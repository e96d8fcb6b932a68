use super::*;

/// Loads `toml` inside a figment `Jail`: jails run one at a time, so no other test's
/// environment variables can leak into this one.
#[allow(clippy::result_large_err)] // figment::Jail's signature
fn load(toml: &str) -> Result<Settings, ConfigError> {
    let mut out = None;
    figment::Jail::expect_with(|_| {
        out = Some(Settings::from_toml_str(toml));
        Ok(())
    });
    out.expect("the jail ran")
}

const MINIMAL: &str = r#"
    [kiva]
    token_url = "https://auth.example/oauth/token"
    audience = "https://partner-api.example"
    api_base_url = "https://partnerapi.example"
    [[partners]]
    id = "p1"
    name = "Demo MFI"
    column_format = "three_column"
    client_id = "cid"
    client_secret = "s3cret"
    [[api_keys]]
    name = "nairobi"
    partner = "p1"
    branch = "Nairobi"
    role = "branch"
    key_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
"#;

#[test]
fn minimal_file_gets_defaults() {
    let s = load(MINIMAL).unwrap();
    assert_eq!(s.kiva.batch_size, 200);
    assert_eq!(s.server.max_repayments, 10_000);
    assert_eq!(s.partners[0].column_format, ColumnFormat::ThreeColumn);
}

#[test]
fn errors_name_the_bad_key() {
    let bad = MINIMAL.replace("[kiva]", "[kiva]\nbatch_size = 500");
    let err = load(&bad).unwrap_err().to_string();
    assert!(err.contains("kiva.batch_size"), "{err}");

    let bad = MINIMAL.replace("partner = \"p1\"", "partner = \"p2\"");
    let err = load(&bad).unwrap_err().to_string();
    assert!(err.contains("api_keys.0.partner"), "{err}");

    let bad = MINIMAL.replace("[kiva]", "[kiva]\nbatch_sise = 5");
    let err = load(&bad).unwrap_err().to_string();
    assert!(err.contains("batch_sise"), "{err}");
}

#[test]
fn a_claim_deadline_shorter_than_kivas_timeout_is_refused() {
    let bad = MINIMAL.replace("[kiva]", "[delivery]\nclaim_deadline_secs = 30\n[kiva]");
    let err = load(&bad).unwrap_err().to_string();
    assert!(
        err.contains("delivery.claim_deadline_secs") && err.contains("36"),
        "{err}"
    );
}

#[test]
fn a_missing_secret_names_its_environment_variable() {
    let bad = MINIMAL.replace("client_secret = \"s3cret\"", "");
    let err = load(&bad).unwrap_err().to_string();
    assert!(err.contains("GATEWAY_PARTNER_P1_CLIENT_SECRET"), "{err}");
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's signature, not ours
fn the_environment_overrides_the_file_and_other_gateway_variables_are_ignored() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("GATEWAY_SERVER__BIND", "0.0.0.0:9999");
        jail.set_env("GATEWAY_KIVA__BATCH_SIZE", "250");
        jail.set_env("GATEWAY_CONFIG", "/etc/gateway.toml");
        jail.set_env("GATEWAY_PARTNER_P1_CLIENT_SECRET", "from-env");
        let s = Settings::from_toml_str(MINIMAL).unwrap();
        assert_eq!(s.server.bind, "0.0.0.0:9999");
        assert_eq!(s.kiva.batch_size, 250);
        use secrecy::ExposeSecret;
        assert_eq!(
            s.partners[0]
                .client_secret
                .as_ref()
                .unwrap()
                .expose_secret(),
            "from-env"
        );
        Ok(())
    });
}

#[test]
#[allow(clippy::result_large_err)]
fn the_example_configuration_is_valid() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("GATEWAY_PARTNER_123_CLIENT_SECRET", "from-env");
        let example = include_str!("../../config/gateway.example.toml");
        let s = Settings::from_toml_str(example).unwrap();
        assert_eq!(s.api_keys.len(), 2);
        Ok(())
    });
}

#[test]
fn secrets_are_redacted_in_debug_output() {
    let s = load(MINIMAL).unwrap();
    assert!(!format!("{s:?}").contains("s3cret"));
}

#[test]
fn an_unknown_key_is_named_as_written_with_the_close_match() {
    let bad = MINIMAL.replace("[kiva]", "[delivery]\nmax_atempts = 3\n[kiva]");
    let err = load(&bad).unwrap_err().to_string();
    assert!(
        err.contains("delivery.max_atempts: unknown key; did you mean `max_attempts`?"),
        "{err}"
    );
    assert!(!err.contains("default."), "{err}");
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's signature, not ours
fn an_unknown_key_from_the_environment_is_named_by_its_variable() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("GATEWAY_DELIVERY__MAX_ATEMPTS", "3");
        let err = Settings::from_toml_str(MINIMAL).unwrap_err().to_string();
        assert!(
            err.contains(
                "GATEWAY_DELIVERY__MAX_ATEMPTS: unknown key; did you mean `max_attempts`?"
            ),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn an_unknown_key_without_a_close_match_lists_the_known_ones() {
    let bad = MINIMAL.replace("[kiva]", "[kiva]\nzzz = 5");
    let err = load(&bad).unwrap_err().to_string();
    assert!(
        err.contains("kiva.zzz: unknown key; known keys here:"),
        "{err}"
    );
    assert!(err.contains("`batch_size`"), "{err}");
}

#[test]
fn metrics_settings_are_checked_and_the_bearer_token_never_shown() {
    let s = load(MINIMAL).unwrap();
    assert!(s.metrics.enabled);
    let with = |extra: &str| load(&format!("[metrics]\n{extra}\n{MINIMAL}"));
    let s = with("bind = \"127.0.0.1:9100\"\nbearer_token = \"scrape-secret-123\"").unwrap();
    assert_eq!(
        s.metrics.bind_addr(),
        Some("127.0.0.1:9100".parse().unwrap())
    );
    assert!(!format!("{s:?}").contains("scrape-secret-123"));
    let bad = with("bind = \"everywhere\"").unwrap_err().to_string();
    assert!(bad.contains("metrics.bind"), "{bad}");
    let empty = with("bearer_token = \"  \"").unwrap_err().to_string();
    assert!(empty.contains("metrics.bearer_token"), "{empty}");
}

#[test]
fn a_cluster_store_url_is_accepted_and_a_broken_one_refused_without_its_password() {
    let cluster = MINIMAL.replace(
        "[kiva]",
        "[store]\nurl = \"redis+cluster://gw:hunter2@10.0.0.1:7000,10.0.0.2:7000\"\n[kiva]",
    );
    let s = load(&cluster).unwrap();
    assert!(s.store.url.starts_with("redis+cluster://"));

    let broken = cluster.replace("10.0.0.2:7000\"", "10.0.0.2:7000/2\"");
    let err = load(&broken).unwrap_err().to_string();
    assert!(
        err.contains("store.url") && err.contains("database"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn trusted_proxies_must_be_addresses_or_cidr_blocks() {
    let ok = load(&format!(
        "{MINIMAL}\n[server]\ntrusted_proxies = [\"10.0.0.5\", \"10.1.0.0/16\", \"::1\", \"fd00::/8\"]\n"
    ))
    .unwrap();
    assert_eq!(ok.server.trusted_proxies.len(), 4);
    assert!(load(MINIMAL).unwrap().server.trusted_proxies.is_empty());
    let err = load(&format!(
        "{MINIMAL}\n[server]\ntrusted_proxies = [\"10.0.0.5\", \"proxy.local\", \"10.0.0.0/33\"]\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("server.trusted_proxies.1: \"proxy.local\""),
        "{err}"
    );
    assert!(
        err.contains("server.trusted_proxies.2: \"10.0.0.0/33\""),
        "{err}"
    );
    assert!(!err.contains("trusted_proxies.0"), "{err}");
}

#[test]
fn the_body_read_timeout_must_be_at_least_a_second() {
    assert_eq!(load(MINIMAL).unwrap().server.body_read_timeout_secs, 120);
    let err = load(&format!(
        "{MINIMAL}\n[server]\nbody_read_timeout_secs = 0\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("server.body_read_timeout_secs"), "{err}");
}

/// Issue 22, item 11: `/metrics` (amounts per partner, queue states) is not on the API's
/// address unless asked for, and by default only this host reaches it.
#[test]
fn by_default_metrics_are_served_apart_on_loopback_only() {
    let s = load(MINIMAL).unwrap();
    let bind = s.metrics.bind_addr().expect("served apart by default");
    assert!(bind.ip().is_loopback(), "{bind}");
    assert_eq!(bind.port(), 9100);
}

/// `bind = "server"` puts `/metrics` back on the API's address (for a Prometheus that can reach
/// only that, with a bearer token); disabled metrics are served nowhere.
#[test]
fn metrics_go_on_the_api_address_only_when_asked_for() {
    let s = load(MINIMAL).unwrap();
    assert!(!s.metrics.on_server());
    let with = |extra: &str| load(&format!("[metrics]\n{extra}\n{MINIMAL}"));
    let s = with("bind = \"server\"\nbearer_token = \"scrape-secret-123\"").unwrap();
    assert!(s.metrics.on_server());
    assert_eq!(s.metrics.bind_addr(), None);
    let s = with("enabled = false").unwrap();
    assert!(!s.metrics.on_server() && s.metrics.bind_addr().is_some());
}
