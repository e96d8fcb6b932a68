//! What operators deploy beside the binary (compose, the defaults) agrees with the binary.

use std::path::Path;

use repayment_gateway::config::{Settings, partner_secret_env_var};
use repayment_gateway::domain::PartnerId;
use repayment_gateway::startup::SHUTDOWN_GRACE_SECS;
use secrecy::ExposeSecret;

fn read(file: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap()
}

/// A compose duration such as `60s`, `1m30s` or `2m`, in seconds.
fn seconds(duration: &str) -> u64 {
    let (mut total, mut number) = (0, String::new());
    for c in duration.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            other => panic!("unexpected unit {other:?} in {duration:?}"),
        };
        total += number.parse::<u64>().unwrap() * unit;
        number.clear();
    }
    assert!(number.is_empty(), "{duration:?} lacks a unit");
    total
}

fn gateway_service() -> serde_norway::Value {
    let compose: serde_norway::Value = serde_norway::from_str(&read("docker-compose.yml")).unwrap();
    compose["services"]["gateway"].clone()
}

/// The configuration compose mounts is a copy of the example.
#[allow(clippy::result_large_err)] // figment::Jail's signature
fn example_settings(env: &[(&str, &str)]) -> Result<Settings, String> {
    let example = read("config/gateway.example.toml");
    let mut result = Err(String::new());
    figment::Jail::expect_with(|jail| {
        jail.create_file("gateway.toml", &example)?;
        for (name, value) in env {
            jail.set_env(name, value);
        }
        result = Settings::load(Some(Path::new("gateway.toml"))).map_err(|e| e.to_string());
        Ok(())
    });
    result
}

#[test]
fn compose_gives_sigterm_time_for_the_http_drain_and_the_delivery_grace() {
    let gateway = gateway_service();
    let grace = seconds(gateway["stop_grace_period"].as_str().unwrap());
    let secret = partner_secret_env_var(&PartnerId::parse("123").unwrap());
    let settings = example_settings(&[(&secret, "test-secret")]).unwrap();
    let needed = SHUTDOWN_GRACE_SECS + settings.delivery.shutdown_grace_secs;
    assert!(
        grace >= needed + 10,
        "stop_grace_period {grace}s: SIGKILL would cut short the {SHUTDOWN_GRACE_SECS}s HTTP \
         drain plus the {}s delivery grace (and a 10 s margin)",
        settings.delivery.shutdown_grace_secs
    );
}

#[test]
fn every_gateway_variable_compose_sets_is_a_setting_the_gateway_reads() {
    let gateway = gateway_service();
    let environment = gateway["environment"].as_mapping().unwrap();
    let partner = PartnerId::parse("123").unwrap();
    let secret_var = partner_secret_env_var(&partner);
    let base_env = [(secret_var.as_str(), "test-secret")];
    let base = format!("{:?}", example_settings(&base_env).unwrap());
    let mut checked = 0;
    for (name, value) in environment {
        let name = name.as_str().unwrap();
        if !name.starts_with("GATEWAY_") {
            continue;
        }
        checked += 1;
        if name == secret_var {
            let settings = example_settings(&[(name, "from-compose")]).unwrap();
            let read = settings.partner(&partner).unwrap().client_secret.as_ref();
            assert_eq!(read.unwrap().expose_secret(), "from-compose", "{name}");
            continue;
        }
        let value = value.as_str().unwrap();
        let with = example_settings(&[base_env[0], (name, value)])
            .unwrap_or_else(|e| panic!("{name}={value}: {e}"));
        assert_ne!(
            format!("{with:?}"),
            base,
            "{name}={value} changes nothing: it is not a settings key the gateway reads"
        );
    }
    // The secrets come from the env file (checked by its own test).
    assert!(checked >= 3, "compose sets {checked} GATEWAY_ variables");
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
"#;

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's signature
fn the_default_body_limit_fits_the_largest_report_with_room_and_not_much_more() {
    let mut settings = None;
    figment::Jail::expect_with(|_| {
        settings = Some(Settings::from_toml_str(MINIMAL).map_err(|e| e.to_string())?);
        Ok(())
    });
    let server = settings.unwrap().server;
    // The schema's longest ids (100 characters), written with two-space indents.
    let long = |prefix: &str, i: usize| format!("{prefix}-{i:0>98}");
    let repayments: Vec<_> = (0..server.max_repayments)
        .map(|i| {
            serde_json::json!({"loan_id": long("L", i), "client_id": long("C", i),
                               "amount": "999999999999999.999"})
        })
        .collect();
    let report = serde_json::json!({"period": "2026-10", "repayments": repayments});
    let size = serde_json::to_string_pretty(&report).unwrap().len();
    let limit = server.max_body_bytes;
    assert!(
        size < limit && limit < size * 3 / 2,
        "{size} bytes for the largest report vs a {limit}-byte limit"
    );
}

/// The image has no curl: the container's healthcheck is the gateway's own subcommand, and
/// what compose runs must parse as it.
#[test]
fn the_compose_healthcheck_is_the_gateways_healthcheck_subcommand() {
    use clap::Parser;
    use repayment_gateway::cli::{Cli, Command};
    let gateway = gateway_service();
    let test: Vec<&str> = gateway["healthcheck"]["test"]
        .as_sequence()
        .expect("the gateway service has a healthcheck")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(test[0], "CMD", "exec form: there is no shell in the image");
    assert_eq!(test[1], "repayment-gateway");
    let cli = Cli::try_parse_from(&test[1..]).unwrap_or_else(|e| panic!("{test:?}: {e}"));
    assert!(
        matches!(cli.command, Command::Healthcheck { .. }),
        "{test:?}"
    );
}

/// `docker compose logs` or `down` must not fail for want of a secret in the shell: the
/// secrets come from an optional env file (documented by its example), and a missing one is
/// the gateway's start-up error, naming the variable.
#[test]
fn compose_takes_secrets_from_an_optional_env_file_documented_by_its_example() {
    let compose = read("docker-compose.yml");
    assert!(
        !compose.contains(":?"),
        "a required ${{VAR:?}} interpolation fails every compose command when VAR is unset"
    );
    let gateway = gateway_service();
    let env_file = &gateway["env_file"][0];
    assert_eq!(env_file["path"].as_str(), Some("./config/gateway.env"));
    assert_eq!(env_file["required"].as_bool(), Some(false));
    let gitignore = read(".gitignore");
    assert!(gitignore.lines().any(|l| l == "/config/gateway.env"));

    let example = read("config/gateway.env.example");
    let secret = partner_secret_env_var(&PartnerId::parse("123").unwrap());
    let variables: Vec<(&str, &str)> = example
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_once('=').expect("NAME=value"))
        .collect();
    assert!(
        variables.iter().any(|(name, _)| *name == secret),
        "{example}"
    );
    let settings = example_settings(&variables).unwrap();
    let read_secret = settings.partners[0].client_secret.as_ref().unwrap();
    let value = variables.iter().find(|(n, _)| *n == secret).unwrap().1;
    assert_eq!(read_secret.expose_secret(), value);
    // Without it the gateway refuses to start, and says which variable to set.
    let missing = example_settings(&[]).unwrap_err();
    assert!(missing.contains(&secret), "{missing}");
}

fn prometheus_service() -> serde_norway::Value {
    let compose: serde_norway::Value = serde_norway::from_str(&read("docker-compose.yml")).unwrap();
    compose["services"]["prometheus"].clone()
}

/// The optional Prometheus mounts files that exist, loads the shipped rules from where they
/// are mounted, and scrapes the gateway where compose publishes it.
#[test]
fn the_optional_prometheus_service_mounts_the_shipped_rules_and_scrapes_the_gateway() {
    let prometheus = prometheus_service();
    let profiles: Vec<&str> = prometheus["profiles"]
        .as_sequence()
        .expect("the prometheus service is optional (a profile)")
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(profiles, ["monitoring"]);
    let mut mounted = std::collections::BTreeMap::new();
    for volume in prometheus["volumes"].as_sequence().unwrap() {
        if volume["type"].as_str() != Some("bind") {
            continue;
        }
        let source = volume["source"].as_str().unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(source);
        assert!(path.is_file(), "{source} is mounted but does not exist");
        assert_eq!(volume["read_only"].as_bool(), Some(true), "{source}");
        mounted.insert(volume["target"].as_str().unwrap().to_owned(), source);
    }
    assert_eq!(
        mounted.get("/etc/prometheus/prometheus.yml"),
        Some(&"./deploy/prometheus/prometheus.yml")
    );
    let config: serde_norway::Value =
        serde_norway::from_str(&read("deploy/prometheus/prometheus.yml")).unwrap();
    // Rule files are found relative to the configuration file's directory.
    for rule_file in config["rule_files"].as_sequence().unwrap() {
        let target = format!("/etc/prometheus/{}", rule_file.as_str().unwrap());
        assert_eq!(
            mounted.get(&target).copied(),
            Some("./deploy/prometheus/alerts.yml"),
            "{target} is not mounted"
        );
    }
    let job = &config["scrape_configs"][0];
    assert_eq!(job["job_name"].as_str(), Some("repayment-gateway"));
    assert_eq!(job["metrics_path"].as_str(), Some("/metrics"));
    // Metrics are served apart from the API, on the compose network only: Prometheus scrapes
    // that port, and it is not published on the host as the API's is.
    let gateway = gateway_service();
    let bind = gateway["environment"]["GATEWAY_METRICS__BIND"]
        .as_str()
        .expect("compose serves metrics apart from the API")
        .to_owned();
    let port = bind.rsplit_once(':').unwrap().1;
    assert_ne!(
        Some(port),
        gateway["environment"]["GATEWAY_SERVER__BIND"]
            .as_str()
            .and_then(|b| b.rsplit_once(':'))
            .map(|(_, p)| p)
    );
    assert_eq!(
        job["static_configs"][0]["targets"][0].as_str(),
        Some(format!("gateway:{port}").as_str())
    );
    for published in gateway["ports"].as_sequence().into_iter().flatten() {
        let published = published.as_str().unwrap();
        assert!(
            !published.ends_with(&format!(":{port}")),
            "the metrics port is published on the host: {published}"
        );
    }
    let secret = partner_secret_env_var(&PartnerId::parse("123").unwrap());
    let settings = example_settings(&[(&secret, "s"), ("GATEWAY_METRICS__BIND", &bind)]).unwrap();
    assert_eq!(settings.metrics.bind.as_deref(), Some(bind.as_str()));
}

/// `promtool` (Debian's `prometheus` package, installed by `scripts/install-deps`).
fn promtool(args: &[&str]) {
    let output = std::process::Command::new("promtool")
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus"))
        .output()
        .expect("promtool must be installed (scripts/install-deps: apt-get install prometheus)");
    assert!(
        output.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules_and_the_scrape_config() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["check", "config", "prometheus.yml"]);
}

#[test]
fn the_alert_rules_pass_their_promtool_unit_tests() {
    promtool(&["test", "rules", "alerts_test.yml"]);
}

/// Each alert has a case where it fires and one where it stays quiet, and README's table
/// names it.
#[test]
fn every_alert_is_tested_firing_and_quiet_and_documented() {
    let rules: serde_norway::Value =
        serde_norway::from_str(&read("deploy/prometheus/alerts.yml")).unwrap();
    let tests: serde_norway::Value =
        serde_norway::from_str(&read("deploy/prometheus/alerts_test.yml")).unwrap();
    let cases: Vec<(String, bool)> = tests["tests"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().unwrap().iter())
        .map(|case| {
            let fires = !case["exp_alerts"].as_sequence().unwrap().is_empty();
            (case["alertname"].as_str().unwrap().to_owned(), fires)
        })
        .collect();
    let readme = read("README.md");
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            alerts += 1;
            for fires in [true, false] {
                assert!(
                    cases.contains(&(name.to_owned(), fires)),
                    "{name}: no test where it {}",
                    if fires { "fires" } else { "stays quiet" }
                );
            }
            assert!(
                rule["annotations"]["summary"].as_str().is_some(),
                "{name} has no summary"
            );
            assert!(
                readme.contains(&format!("`{name}`")),
                "README does not list {name}"
            );
        }
    }
    assert_eq!(alerts, 6);
}

/// `KEY=value` lines of a systemd unit under deploy/systemd (the last one of each key wins,
/// as for systemd; `Environment=` lines are kept apart).
fn unit(name: &str) -> (std::collections::HashMap<String, String>, Vec<String>) {
    let text = read(&format!("deploy/systemd/{name}"));
    let mut keys = std::collections::HashMap::new();
    let mut environment = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
    {
        let (key, value) = line.split_once('=').unwrap();
        if key == "Environment" {
            environment.push(value.to_owned());
        } else {
            keys.insert(key.to_owned(), value.to_owned());
        }
    }
    (keys, environment)
}

/// The systemd template units for running N processes: what they start parses as the
/// gateway's subcommand, SIGTERM gets the time compose gives it, and each variable they set
/// is a setting the gateway reads.
#[test]
fn the_systemd_template_units_start_a_subcommand_and_give_sigterm_its_time() {
    use clap::Parser;
    use repayment_gateway::cli::{Cli, Command};
    let secret = partner_secret_env_var(&PartnerId::parse("123").unwrap());
    let base_env = [(secret.as_str(), "test-secret")];
    let settings = example_settings(&base_env).unwrap();
    let needed = SHUTDOWN_GRACE_SECS + settings.delivery.shutdown_grace_secs;
    let base = format!("{settings:?}");
    for (name, serves) in [
        ("repayment-gateway@.service", true),
        ("repayment-gateway-worker@.service", false),
    ] {
        let (keys, environment) = unit(name);
        let exec: Vec<&str> = keys["ExecStart"].split_whitespace().collect();
        assert!(exec[0].ends_with("/repayment-gateway"), "{name}: {exec:?}");
        let cli = Cli::try_parse_from(&exec).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            matches!(cli.command, Command::Serve { .. }),
            serves,
            "{name}: {exec:?}"
        );
        assert_eq!(
            matches!(cli.command, Command::Worker { .. }),
            !serves,
            "{name}: {exec:?}"
        );
        let stop: u64 = keys["TimeoutStopSec"].parse().unwrap();
        assert!(stop >= needed + 10, "{name}: TimeoutStopSec={stop}");
        assert_eq!(keys["KillSignal"], "SIGTERM", "{name}");
        for variable in environment {
            let (var, value) = variable.split_once('=').unwrap();
            // The instance name: a port for the API's unit, a number for the worker's.
            let value = value.replace("%i", if serves { "8081" } else { "1" });
            let with = example_settings(&[base_env[0], (var, &value)])
                .unwrap_or_else(|e| panic!("{name}: {var}={value}: {e}"));
            assert_ne!(format!("{with:?}"), base, "{name}: {var} changes nothing");
        }
    }
}

/// A YAML sequence of strings, as `&str`s.
fn strings(value: &serde_norway::Value) -> Vec<&str> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("not a sequence: {value:?}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

fn compose() -> serde_norway::Value {
    serde_norway::from_str(&read("docker-compose.yml")).unwrap()
}

/// The port of the gateway's `server.bind` in compose.
fn gateway_api_port() -> String {
    let gateway = gateway_service();
    let bind = gateway["environment"]["GATEWAY_SERVER__BIND"]
        .as_str()
        .unwrap();
    bind.rsplit_once(':').unwrap().1.to_owned()
}

/// The proxy in front terminates TLS and is the only way in; it is the one peer whose
/// `X-Forwarded-For` the gateway believes, and it forwards to the gateway's API port.
#[test]
fn the_tls_proxy_is_the_only_way_in_and_the_gateways_only_trusted_proxy() {
    let compose = compose();
    let proxy = &compose["services"]["proxy"];
    let image = proxy["image"].as_str().expect("a proxy service in front");
    // Caddy sets X-Forwarded-For itself, dropping what the client sent, from 2.5 on.
    let version = image.strip_prefix("caddy:2.").expect(image);
    let minor: u32 = version.split(['.', '-']).next().unwrap().parse().unwrap();
    assert!(minor >= 5, "{image}");
    let published = strings(&proxy["ports"]);
    assert!(published.contains(&"443:443"), "{published:?}");
    let gateway = gateway_service();
    assert!(
        gateway.get("ports").is_none(),
        "the gateway's port is published beside the proxy: {:?}",
        gateway["ports"]
    );

    let mounted = proxy["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["type"].as_str() == Some("bind"))
        .expect("the Caddyfile is mounted");
    assert_eq!(mounted["source"].as_str(), Some("./deploy/caddy/Caddyfile"));
    assert_eq!(mounted["target"].as_str(), Some("/etc/caddy/Caddyfile"));
    assert_eq!(mounted["read_only"].as_bool(), Some(true));

    // The proxy's fixed address on a network of its own is what the gateway trusts.
    let address: std::net::IpAddr = proxy["networks"]["edge"]["ipv4_address"]
        .as_str()
        .expect("the proxy has a fixed address")
        .parse()
        .unwrap();
    let ipam = &compose["networks"]["edge"]["ipam"]["config"][0];
    let subnet: ipnet::IpNet = ipam["subnet"].as_str().unwrap().parse().unwrap();
    let dynamic: ipnet::IpNet = ipam["ip_range"].as_str().unwrap().parse().unwrap();
    assert!(subnet.contains(&address), "{address} outside {subnet}");
    assert!(
        !dynamic.contains(&address),
        "{address} can be handed to another container first ({dynamic})"
    );
    for (name, service) in compose["services"].as_mapping().unwrap() {
        let networks = format!("{:?}", service["networks"]);
        let name = name.as_str().unwrap();
        if networks.contains("edge") {
            assert!(["proxy", "gateway"].contains(&name), "{name} is on edge");
        }
    }
    let networks = strings(&gateway["networks"]);
    // default: where Redis and Prometheus reach it.
    assert_eq!(networks, ["default", "edge"]);

    let trusted = gateway["environment"]["GATEWAY_SERVER__TRUSTED_PROXIES"]
        .as_str()
        .expect("the gateway trusts the proxy's X-Forwarded-For");
    let secret = partner_secret_env_var(&PartnerId::parse("123").unwrap());
    let settings =
        example_settings(&[(&secret, "s"), ("GATEWAY_SERVER__TRUSTED_PROXIES", trusted)]).unwrap();
    assert_eq!(settings.server.trusted_proxies, [address.to_string()]);
    assert_eq!(
        gateway["environment"]["GATEWAY_WEB__SECURE_COOKIES"].as_str(),
        Some("true"),
        "clients use HTTPS: the session cookie is Secure"
    );

    // The Caddyfile forwards to the gateway service's API port, and leaves X-Forwarded-For
    // to Caddy, which trusts no proxy before it.
    let caddyfile = read("deploy/caddy/Caddyfile");
    let directives: Vec<&str> = caddyfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let upstreams: Vec<&str> = directives
        .iter()
        .filter_map(|l| l.strip_prefix("reverse_proxy "))
        .map(|rest| rest.trim_end_matches(" {").trim())
        .collect();
    assert_eq!(upstreams, [format!("gateway:{}", gateway_api_port())]);
    for line in &directives {
        assert!(!line.contains("trusted_proxies"), "{line}");
        assert!(!line.to_lowercase().contains("x-forwarded-for"), "{line}");
    }
    assert_eq!(
        directives[0], "{$GATEWAY_DOMAIN:localhost} {",
        "the site is the domain compose passes"
    );
    assert!(proxy["environment"]["GATEWAY_DOMAIN"].as_str().is_some());
}

/// The commands README and compose give for API keys and `check-config --online` in the
/// container are the gateway's subcommands, on the configuration compose mounts.
#[test]
fn the_documented_compose_commands_parse_as_the_gateways_subcommands() {
    use clap::Parser;
    use repayment_gateway::cli::{Cli, Command};
    let mounted = gateway_service()["volumes"][0]["target"]
        .as_str()
        .unwrap()
        .to_owned();
    for file in ["README.md", "docker-compose.yml"] {
        let text = read(file);
        let mut seen = (false, false);
        for line in text.lines() {
            let Some((_, command)) = line.split_once("docker compose run --rm --no-deps gateway ")
            else {
                continue;
            };
            let command = command.split('`').next().unwrap().trim();
            let args = ["repayment-gateway"]
                .into_iter()
                .chain(command.split_whitespace());
            let cli =
                Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{file}: {command}: {e}"));
            match cli.command {
                Command::NewApiKey => seen.0 = true,
                Command::CheckConfig { config, online } => {
                    assert!(online, "{file}: {command}");
                    assert_eq!(config.unwrap().to_str(), Some(mounted.as_str()), "{file}");
                    seen.1 = true;
                }
                _ => panic!("{file}: {command}"),
            }
        }
        assert_eq!(
            seen,
            (true, true),
            "{file}: new-api-key and check-config --online"
        );
    }
}

/// What compose's Redis comment says of a Redis crash is what README's durability table
/// says for the Redis version and `appendfsync` compose runs.
#[test]
fn the_compose_redis_comment_agrees_with_readmes_durability_table() {
    let compose_text = read("docker-compose.yml");
    let redis = &compose()["services"]["redis"];
    let image = redis["image"].as_str().unwrap();
    let version = image
        .strip_prefix("redis:")
        .and_then(|v| v.split('-').next())
        .unwrap();
    let numbers: Vec<u32> = version.split('.').map(|n| n.parse().unwrap()).collect();
    assert!(
        numbers.len() >= 2,
        "{image}: pin the minor version, which decides what a crash loses (WAITAOF from 7.2)"
    );
    let command = strings(&redis["command"]);
    let option = |name: &str| {
        let at = command.iter().position(|a| *a == name).unwrap();
        command[at + 1]
    };
    assert_eq!(option("--appendonly"), "yes");
    assert_eq!(option("--maxmemory-policy"), "noeviction");
    let waitaof = (numbers[0], numbers[1]) >= (7, 2);
    let readme = read("README.md");
    let row = if waitaof {
        "| Redis ≥ 7.2 with `appendonly yes` (any `appendfsync`) |"
    } else {
        assert_eq!(option("--appendfsync"), "always", "{image} has no WAITAOF");
        "| Redis 7.0/7.1 with `appendonly yes`, `appendfsync always` |"
    };
    let row = readme
        .lines()
        .find(|l| l.starts_with(row))
        .unwrap_or_else(|| panic!("README's durability table has no {row}"));
    let on_redis_crash = row.split(" | ").nth(2).unwrap();
    assert!(on_redis_crash.starts_with("nothing lost"), "{row}");

    // The redis service's own comments: indented under it, up to the next service.
    let comment: String = compose_text
        .split_once("\n  redis:\n")
        .unwrap()
        .1
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    ") || l.starts_with("  #"))
        .filter_map(|l| {
            l.strip_prefix("    ")
                .and_then(|l| l.trim().strip_prefix('#'))
        })
        .collect::<Vec<_>>()
        .join(" ");
    assert!(comment.contains("loses nothing acknowledged"), "{comment}");
    assert!(!waitaof || comment.contains("WAITAOF"), "{comment}");
}
