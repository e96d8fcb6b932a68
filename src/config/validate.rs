//! Every check a loaded configuration must pass, reported together so an operator fixes
//! them in one go rather than one start at a time.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::{
    CLAIM_MARGIN_SECS, ConfigError, EMBEDDED_PREFIX, MAX_BATCH_SIZE, METRICS_ON_SERVER, Role,
    SEND_SLACK_SECS, Settings, cluster_node_urls, parse_trusted_proxy, partner_secret_env_var,
    redact_url,
};
use crate::domain::PartnerId;

impl Settings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let mut check = |ok: bool, msg: String| {
            if !ok {
                errors.push(msg);
            }
        };
        check(
            self.server.bind.parse::<SocketAddr>().is_ok(),
            format!(
                "server.bind: {:?} is not an address like \"127.0.0.1:8080\"",
                self.server.bind
            ),
        );
        if let Some(bind) = &self.metrics.bind {
            check(
                bind.trim() == METRICS_ON_SERVER || bind.parse::<SocketAddr>().is_ok(),
                format!(
                    "metrics.bind: {bind:?} is not an address like \"127.0.0.1:9100\" nor \"{METRICS_ON_SERVER}\""
                ),
            );
        }
        check(
            self.metrics
                .bearer_token
                .as_ref()
                .is_none_or(|t| !secrecy::ExposeSecret::expose_secret(t).trim().is_empty()),
            "metrics.bearer_token: must not be empty (leave it out for no token)".into(),
        );
        check(
            self.server.max_body_bytes >= 1024,
            "server.max_body_bytes: must be at least 1024".into(),
        );
        check(
            self.server.max_repayments >= 1,
            "server.max_repayments: must be at least 1".into(),
        );
        check(
            (1..=3600).contains(&self.server.body_read_timeout_secs),
            "server.body_read_timeout_secs: must be between 1 and 3600".into(),
        );
        for (i, proxy) in self.server.trusted_proxies.iter().enumerate() {
            check(
                parse_trusted_proxy(proxy).is_some(),
                format!(
                    "server.trusted_proxies.{i}: {proxy:?} is not an address or CIDR block \
                     like \"10.0.0.5\" or \"10.0.0.0/8\""
                ),
            );
        }
        let embedded_path = self.store.url.strip_prefix(EMBEDDED_PREFIX);
        check(
            embedded_path.is_some_and(|p| !p.trim().is_empty())
                || cluster_node_urls(&self.store.url).is_some()
                || ["redis://", "rediss://", "redis+unix://", "unix://"]
                    .iter()
                    .any(|s| self.store.url.starts_with(s)),
            format!(
                "store.url: {:?} is not supported: use embedded:DIRECTORY, redis://host:port, \
                 rediss://, redis+unix:///path, or redis+cluster://host:port,host:port",
                redact_url(&self.store.url)
            ),
        );
        if let Some(Err(reason)) = cluster_node_urls(&self.store.url) {
            check(false, format!("store.url: {reason}"));
        }
        check(
            (1..=32).contains(&self.store.key_prefix.len())
                && self
                    .store
                    .key_prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)),
            format!(
                "store.key_prefix: {:?} must be 1 to 32 letters, digits, '_', '-' or '.'",
                self.store.key_prefix
            ),
        );
        check(
            self.store.retention_days >= 30,
            "store.retention_days: must be at least 30 (a month must stay visible until PA2 is finalized)"
                .into(),
        );
        check(
            self.store.pool_size >= 1,
            "store.pool_size: must be at least 1".into(),
        );
        check(
            self.store.timeout_secs >= 1,
            "store.timeout_secs: must be at least 1".into(),
        );
        check(
            self.store.replica_acks <= 16,
            "store.replica_acks: must be between 0 and 16".into(),
        );
        check(
            (1..self.store.timeout_secs.saturating_mul(1000))
                .contains(&self.store.replica_ack_timeout_ms),
            "store.replica_ack_timeout_ms: must be at least 1 and less than store.timeout_secs"
                .into(),
        );
        check(
            self.store.idempotency_ttl_hours >= 24,
            "store.idempotency_ttl_hours: must be at least 24 (MIS retries may come the next day)"
                .into(),
        );
        for (key, url) in [
            ("kiva.token_url", &self.kiva.token_url),
            ("kiva.audience", &self.kiva.audience),
            ("kiva.api_base_url", &self.kiva.api_base_url),
        ] {
            check(
                url.starts_with("https://") || url.starts_with("http://"),
                format!("{key}: {:?} is not an http(s) URL", redact_url(url)),
            );
        }
        check(
            (1..=MAX_BATCH_SIZE).contains(&self.kiva.batch_size),
            format!(
                "kiva.batch_size: must be between 1 and {MAX_BATCH_SIZE} (Kiva's limit per call), got {}",
                self.kiva.batch_size
            ),
        );
        check(
            self.kiva.request_timeout_secs >= 1,
            "kiva.request_timeout_secs: must be at least 1".into(),
        );
        let d = &self.delivery;
        check(
            (1..=256).contains(&d.concurrency),
            "delivery.concurrency: must be between 1 and 256".into(),
        );
        // The attempt budget (deadline less the margin) must hold one call to Kiva plus the
        // store calls before it, or batches would be given back unsent again and again.
        let least = self.kiva.request_timeout_secs + CLAIM_MARGIN_SECS + SEND_SLACK_SECS;
        check(
            d.claim_deadline_secs >= least,
            format!(
                "delivery.claim_deadline_secs: {} is too short: a batch still waiting for Kiva \
                 (kiva.request_timeout_secs = {}) would be taken over and held; use at least {least}",
                d.claim_deadline_secs, self.kiva.request_timeout_secs,
            ),
        );
        check(
            d.max_age_hours <= 24 * 366,
            "delivery.max_age_hours: must be at most a year (8784)".into(),
        );
        check(
            d.max_attempts >= 1,
            "delivery.max_attempts: must be at least 1".into(),
        );
        check(
            d.max_age_hours >= 1,
            "delivery.max_age_hours: must be at least 1".into(),
        );
        check(
            d.retry_base_ms >= 1,
            "delivery.retry_base_ms: must be at least 1".into(),
        );
        check(
            d.retry_max_secs * 1000 >= d.retry_base_ms,
            "delivery.retry_max_secs: must not be below delivery.retry_base_ms".into(),
        );
        check(
            d.poll_interval_ms >= 1,
            "delivery.poll_interval_ms: must be at least 1".into(),
        );
        check(
            self.reconcile.refresh_minutes <= 7 * 24 * 60,
            "reconcile.refresh_minutes: must be at most a week (10080); 0 turns the schedule off"
                .into(),
        );
        check(
            self.reconcile.stale_after_hours >= 1,
            "reconcile.stale_after_hours: must be at least 1".into(),
        );
        check(
            (1..=10_000_000).contains(&self.reconcile.max_expected_loans),
            "reconcile.max_expected_loans: must be between 1 and 10000000".into(),
        );
        let w = &self.web;
        check(
            (1..=24 * 60).contains(&w.session_idle_minutes),
            "web.session_idle_minutes: must be between 1 and 1440".into(),
        );
        check(
            (1..=30 * 24).contains(&w.session_max_hours),
            "web.session_max_hours: must be between 1 and 720".into(),
        );
        check(
            w.sign_in_attempts_per_minute >= 1,
            "web.sign_in_attempts_per_minute: must be at least 1".into(),
        );
        check(
            tracing_subscriber::EnvFilter::try_new(&self.log.level).is_ok(),
            format!(
                "log.level: {:?} is not a valid filter such as \"info\"",
                self.log.level
            ),
        );

        let mut partner_ids = HashSet::new();
        for (i, p) in self.partners.iter().enumerate() {
            check(
                partner_ids.insert(&p.id),
                format!("partners.{i}.id: {} is configured twice", p.id),
            );
            check(
                !p.client_id.trim().is_empty(),
                format!("partners.{i}.client_id: must not be empty"),
            );
            check(
                p.client_secret.is_some(),
                format!(
                    "partners.{i}.client_secret: missing; set it in the file or in the environment \
                     variable {}",
                    partner_secret_env_var(&p.id)
                ),
            );
        }
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        for (i, k) in self.api_keys.iter().enumerate() {
            check(
                !k.name.trim().is_empty(),
                format!("api_keys.{i}.name: must not be empty"),
            );
            check(
                names.insert(&k.name),
                format!("api_keys.{i}.name: {:?} is used twice", k.name),
            );
            check(
                !k.branch.trim().is_empty(),
                format!("api_keys.{i}.branch: must not be empty"),
            );
            let hash_ok =
                k.key_sha256.len() == 64 && k.key_sha256.bytes().all(|b| b.is_ascii_hexdigit());
            check(
                hash_ok,
                format!(
                    "api_keys.{i}.key_sha256: must be 64 hex digits (run `repayment-gateway new-api-key`)"
                ),
            );
            check(
                !hash_ok || hashes.insert(k.key_sha256.to_ascii_lowercase()),
                format!("api_keys.{i}.key_sha256: the same key is configured twice"),
            );
            let known = PartnerId::parse(&k.partner)
                .map(|id| partner_ids.contains(&id))
                .unwrap_or(false);
            let wildcard = k.partner == "*";
            check(
                known || (wildcard && k.role == Role::Admin),
                if wildcard {
                    format!(
                        "api_keys.{i}.partner: only an admin key may serve every partner (\"*\")"
                    )
                } else {
                    format!(
                        "api_keys.{i}.partner: {:?} is not a configured partner id",
                        k.partner
                    )
                },
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }
}
