//! Settings: built-in defaults ← TOML file ← `GATEWAY_*` environment variables, validated once
//! at start so a bad key is reported by name before anything listens.

use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::domain::{ColumnFormat, PartnerId};

mod cluster_url;
mod redact;
mod unknown_key;
mod validate;
pub use cluster_url::cluster_node_urls;
pub use redact::redact_url;
use unknown_key::load_error;

/// `store.url` prefix of the embedded store: `embedded:PATH` (a directory).
pub const EMBEDDED_PREFIX: &str = "embedded:";

/// Kiva asks integrators for at most 200–300 loans per call.
pub const MAX_BATCH_SIZE: usize = 300;
const ENV_PREFIX: &str = "GATEWAY_";
/// Sections the environment may override; anything else under `GATEWAY_` (such as
/// `GATEWAY_CONFIG` or a partner secret) is not a settings key.
const ENV_SECTIONS: [&str; 8] = [
    "server",
    "store",
    "kiva",
    "delivery",
    "log",
    "reconcile",
    "metrics",
    "web",
];
/// Time a worker keeps, after Kiva's answer is due, to record the outcome before another
/// worker may take the batch over (and, finding it in `sending`, hold it).
pub const CLAIM_MARGIN_SECS: u64 = 5;
/// Least time, within the claim deadline, for the store calls between a claim and the send.
pub const SEND_SLACK_SECS: u64 = 1;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub store: StoreSettings,
    pub kiva: KivaSettings,
    pub delivery: DeliverySettings,
    pub log: LogSettings,
    pub reconcile: ReconcileSettings,
    pub metrics: MetricsSettings,
    pub web: WebSettings,
    #[serde(default)]
    pub partners: Vec<PartnerSettings>,
    #[serde(default)]
    pub api_keys: Vec<ApiKeySettings>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub bind: String,
    pub max_body_bytes: usize,
    pub max_repayments: usize,
    /// A request body not received in full this long after its reading began (time spent
    /// waiting for a large-body turn aside) is answered 408 and its turn given back: a client
    /// trickling a body must not hold one of the few large-body turns indefinitely.
    pub body_read_timeout_secs: u64,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` names the client; from any
    /// other peer the header is ignored. Empty: the TCP peer is the client.
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    pub url: String,
    pub key_prefix: String,
    pub pool_size: usize,
    pub timeout_secs: u64,
    pub idempotency_ttl_hours: u64,
    /// Settled reports (every batch delivered, by Kiva or closed by an operator) older than
    /// this are deleted; reports with anything queued, held, failed or rejected never are.
    pub retention_days: u64,
    /// Start on a Redis without AOF, or one that may evict keys. Acknowledged reports can then
    /// be lost, and a batch sent twice after a Redis restart: for trials only.
    pub allow_unsafe_redis: bool,
    /// Redis only: replicas that must have each write a promise rests on (an accept's 202,
    /// `sending` before a call to Kiva, the outcome after it) before the gateway goes on
    /// (`WAIT`). 0 waits for none: a failover can then lose what was acknowledged. Set it to
    /// the replicas each master has (1 on a 3 + 3 cluster).
    pub replica_acks: u32,
    /// How long a write waits for those replicas; past it, an accept answers 503
    /// `outcome-unknown` and a batch is not sent. Less than `timeout_secs`.
    pub replica_ack_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KivaSettings {
    pub token_url: String,
    pub audience: String,
    pub api_base_url: String,
    pub batch_size: usize,
    pub request_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    /// Run the delivery worker inside `serve`.
    pub enabled: bool,
    /// Batches sent to Kiva at the same time by one process.
    pub concurrency: usize,
    /// A batch claimed by a worker that has not settled it after this long is taken over by
    /// another worker (and held if it was found mid-send). At least Kiva's timeout + 5 s.
    pub claim_deadline_secs: u64,
    /// Attempts before a batch that Kiva certainly did not process is `failed`.
    pub max_attempts: u32,
    /// Age (since queued) after which such a batch is `failed` instead of retried.
    pub max_age_hours: u64,
    /// First retry delay; doubles on each attempt, with jitter.
    pub retry_base_ms: u64,
    /// Longest retry delay (a longer `Retry-After` from Kiva is still honoured).
    pub retry_max_secs: u64,
    /// How often an idle worker looks for work.
    pub poll_interval_ms: u64,
    /// On SIGTERM, how long in-flight deliveries get to finish.
    pub shutdown_grace_secs: u64,
}

/// Kiva's expected loans (the loans list), read per partner to reconcile the month.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSettings {
    /// Minutes between two refreshes of each partner's expected loans, in `serve` and
    /// `worker`; 0 turns the schedule off (an admin can still refresh on demand).
    pub refresh_minutes: u64,
    /// A snapshot older than this is called stale by the period view.
    pub stale_after_hours: u64,
    /// The most loans a partner's snapshot may hold (every status read): a refresh of a
    /// longer list fails, keeping the previous snapshot, rather than grow without bound on
    /// what Kiva says.
    pub max_expected_loans: usize,
}

/// `GET /metrics` (Prometheus).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    pub enabled: bool,
    /// Where `/metrics` is served apart from the API (by default `127.0.0.1:9100`: amounts per
    /// partner are this host's business), also for a `worker`; `"server"`: on `server.bind`.
    #[serde(default)]
    pub bind: Option<String>,
    /// When set, a scrape must send `Authorization: Bearer <token>`. A secret: never logged.
    #[serde(default)]
    pub bearer_token: Option<SecretString>,
}

/// `metrics.bind` for "on the API's address".
pub const METRICS_ON_SERVER: &str = "server";

impl MetricsSettings {
    /// The address `/metrics` is served on apart from the API, if it is.
    pub fn bind_addr(&self) -> Option<SocketAddr> {
        self.bind.as_deref().and_then(|b| b.parse().ok())
    }

    /// Whether `/metrics` is served on the API's address (`bind = "server"`).
    pub fn on_server(&self) -> bool {
        let bind = self.bind.as_deref();
        self.enabled && bind.is_none_or(|b| b.trim() == METRICS_ON_SERVER)
    }
}

/// The web pages' sign-in sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSettings {
    /// Marks the session cookie `Secure` (sent over HTTPS only). Set it when a TLS proxy
    /// serves the gateway; a request that arrives over TLS gets a `Secure` cookie anyway.
    pub secure_cookies: bool,
    /// A session unused this long ends.
    pub session_idle_minutes: u64,
    /// A session ends this long after sign-in, however active.
    pub session_max_hours: u64,
    /// Failed sign-ins allowed per client address per minute (a burst of as many).
    pub sign_in_attempts_per_minute: u32,
}

/// What intake does with a repayment whose loan Kiva does not expect (not in the snapshot,
/// or in a status PA2 ignores).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnexpectedLoans {
    /// Accept the report and list those repayments as warnings.
    #[default]
    Warn,
    /// Refuse the report (422), naming those repayments.
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `repayment_gateway=debug,info`.
    pub level: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerSettings {
    pub id: PartnerId,
    pub name: String,
    pub column_format: ColumnFormat,
    pub client_id: String,
    /// May be left out of the file and given as `GATEWAY_PARTNER_<ID>_CLIENT_SECRET`.
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    /// Send again, automatically, a batch whose outcome is unknown (a timeout after sending,
    /// 500/502/504) instead of holding it for an operator. Only for partners who accept that
    /// Kiva may then count an upload twice.
    #[serde(default)]
    pub resend_on_unknown_outcome: bool,
    /// `warn` (default) or `reject`: see [`UnexpectedLoans`].
    #[serde(default)]
    pub unexpected_loans: UnexpectedLoans,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Submits and reads its own branch's reports.
    Branch,
    /// Submits for, and reads every report of, its partner (or every partner, with `"*"`).
    Admin,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySettings {
    pub name: String,
    /// A partner id, or `"*"` for an admin key serving every configured partner.
    pub partner: String,
    pub branch: String,
    pub role: Role,
    pub key_sha256: String,
}

/// Defaults for everything that has a sensible one. Kiva's three URLs deliberately have none:
/// host names changed several times and stage and production credentials differ, so an
/// operator must name them.
#[derive(Serialize)]
struct Defaults {
    server: ServerSettings,
    store: StoreSettings,
    kiva: KivaDefaults,
    delivery: DeliverySettings,
    log: LogSettings,
    reconcile: ReconcileSettings,
    web: WebSettings,
    metrics: MetricsDefaults,
}

#[derive(Serialize)]
struct MetricsDefaults {
    enabled: bool,
    bind: &'static str,
}

#[derive(Serialize)]
struct KivaDefaults {
    batch_size: usize,
    request_timeout_secs: u64,
}

fn defaults() -> Defaults {
    Defaults {
        server: ServerSettings {
            bind: "127.0.0.1:8080".into(),
            // A 10,000-repayment three-column report with 100-character ids (the schema's
            // longest), written with two-space indents, is 2.95 MB; 4 MiB leaves room for
            // more white space and no more: every byte allowed is a byte a hostile body may use.
            max_body_bytes: 4 * 1024 * 1024,
            max_repayments: 10_000,
            // 4 MiB in 120 s is about 280 kbit/s: a slow branch line still gets through.
            body_read_timeout_secs: 120,
            trusted_proxies: Vec::new(),
        },
        store: StoreSettings {
            url: "embedded:data".into(),
            key_prefix: "rg".into(),
            pool_size: 32,
            timeout_secs: 5,
            idempotency_ttl_hours: 24,
            retention_days: 400,
            allow_unsafe_redis: false,
            replica_acks: 0,
            replica_ack_timeout_ms: 1000,
        },
        kiva: KivaDefaults {
            batch_size: 200,
            request_timeout_secs: 30,
        },
        delivery: DeliverySettings {
            enabled: true,
            concurrency: 4,
            claim_deadline_secs: 120,
            max_attempts: 10,
            max_age_hours: 72,
            retry_base_ms: 5_000,
            retry_max_secs: 900,
            poll_interval_ms: 500,
            shutdown_grace_secs: 30,
        },
        log: LogSettings {
            format: LogFormat::Human,
            level: "info".into(),
        },
        reconcile: ReconcileSettings {
            refresh_minutes: 60,
            stale_after_hours: 24,
            max_expected_loans: 200_000,
        },
        // Loopback; a remote Prometheus gets an address of its own (see docker-compose.yml).
        metrics: MetricsDefaults {
            enabled: true,
            bind: "127.0.0.1:9100",
        },
        web: WebSettings {
            secure_cookies: false,
            session_idle_minutes: 30,
            session_max_hours: 12,
            sign_in_attempts_per_minute: 5,
        },
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration is invalid:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Settings {
    /// Reads the file (if any) and the environment, then validates.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(defaults()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid(vec![format!(
                    "configuration file {} does not exist",
                    path.display()
                )]));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        Self::from_figment(figment.merge(env_provider()))
    }

    /// Builds settings from a TOML text plus the environment (tests and tools).
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        Self::from_figment(
            Figment::from(Serialized::defaults(defaults()))
                .merge(Toml::string(toml))
                .merge(env_provider()),
        )
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let mut settings: Settings = figment.extract().map_err(load_error)?;
        settings.resolve_secrets_from_env();
        settings.validate()?;
        Ok(settings)
    }

    fn resolve_secrets_from_env(&mut self) {
        for partner in &mut self.partners {
            if let Ok(secret) = std::env::var(partner_secret_env_var(&partner.id)) {
                partner.client_secret = Some(SecretString::from(secret));
            }
        }
    }

    pub fn bind_addr(&self) -> SocketAddr {
        self.server
            .bind
            .parse()
            .expect("validated in Settings::validate")
    }

    pub fn partner(&self, id: &PartnerId) -> Option<&PartnerSettings> {
        self.partners.iter().find(|p| &p.id == id)
    }
}

fn env_provider() -> Env {
    // `split` has already turned `__` into `.` when the filter runs.
    Env::prefixed(ENV_PREFIX).split("__").filter(|key| {
        let section = key.as_str().split('.').next().unwrap_or("");
        ENV_SECTIONS.iter().any(|s| section.eq_ignore_ascii_case(s))
    })
}

/// A `server.trusted_proxies` entry: an address (one host) or a CIDR block.
pub fn parse_trusted_proxy(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

/// `GATEWAY_PARTNER_<ID>_CLIENT_SECRET`, the id upper-cased with `-` as `_`.
pub fn partner_secret_env_var(id: &PartnerId) -> String {
    format!(
        "{ENV_PREFIX}PARTNER_{}_CLIENT_SECRET",
        id.as_str().to_ascii_uppercase().replace('-', "_")
    )
}

#[cfg(test)]
mod tests;
