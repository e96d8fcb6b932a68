//! Command line: `serve`, `worker`, `sandbox`, `openapi`, `new-api-key`, `check-config`,
//! `healthcheck`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Settings, redact_url};

#[derive(Debug, Parser)]
#[command(
    name = "repayment-gateway",
    version,
    about = "Between an MFI's MIS and Kiva's Partner API"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API.
    Serve {
        /// TOML configuration (see config/gateway.example.toml); GATEWAY_* variables override it.
        #[arg(long, short, env = "GATEWAY_CONFIG", conflicts_with = "demo")]
        config: Option<PathBuf>,
        /// Try everything without Kiva credentials or Redis: embedded store in ./demo-data, the
        /// Kiva sandbox in-process, demo partners and fresh API keys (printed).
        #[arg(long)]
        demo: bool,
    },
    /// Run only the delivery worker and the expected-loans schedule (no HTTP API), e.g. as a
    /// separate process or container.
    Worker {
        #[arg(long, short, env = "GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the local Kiva stand-in, to try the whole flow without Kiva credentials.
    Sandbox {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9090")]
        bind: std::net::SocketAddr,
    },
    /// Print the OpenAPI document, or write it to a file.
    Openapi {
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Make a new random API key and print it with the hash for the configuration.
    NewApiKey,
    /// Validate a configuration and say what is wrong, by key.
    CheckConfig {
        #[arg(long, short, env = "GATEWAY_CONFIG")]
        config: Option<PathBuf>,
        /// Also fetch a token from Kiva for each partner and report, per partner, what works.
        #[arg(long)]
        online: bool,
    },
    /// Exit 0 when the gateway answers GET /health/ready with 200, else 1: a container
    /// healthcheck for an image without curl.
    Healthcheck {
        /// What to probe; by default /health/ready on the configured `server.bind` (a
        /// wildcard address such as 0.0.0.0 is probed on loopback).
        #[arg(long, conflicts_with = "config")]
        url: Option<String>,
        #[arg(long, short, env = "GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { demo: true, .. } => crate::demo::run().await?,
        Command::Serve { config, .. } => {
            let settings = Settings::load(config.as_deref())?;
            crate::telemetry::init(&settings.log);
            let store = crate::startup::open_store(&settings).await?;
            let app = crate::startup::Application::build_with_store(&settings, store)?;
            tracing::info!(
                bind = %settings.server.bind,
                port = app.port(),
                partners = settings.partners.len(),
                api_keys = settings.api_keys.len(),
                "repayment-gateway listening; Swagger UI at /swagger-ui/"
            );
            app.run_until_stopped().await?;
            tracing::info!("stopped");
        }
        Command::Worker { config } => {
            let settings = Settings::load(config.as_deref())?;
            crate::telemetry::init(&settings.log);
            let partners: Vec<_> = settings.partners.iter().map(|p| p.id.clone()).collect();
            let metrics =
                std::sync::Arc::new(crate::metrics::Metrics::new().with_partners(&partners));
            let store: std::sync::Arc<dyn crate::store::ReportStore> =
                std::sync::Arc::new(crate::metrics::store::MeasuredStore::new(
                    crate::startup::open_store(&settings).await?,
                    metrics.clone(),
                ));
            let kiva = std::sync::Arc::new(
                crate::kiva::KivaClient::new(&settings.kiva, &settings.partners)?
                    .with_metrics(metrics.clone()),
            );
            let refresher = crate::startup::build_refresher(&settings, store.clone(), kiva, None);
            let worker = std::sync::Arc::new(crate::startup::build_worker(
                &settings,
                store.clone(),
                metrics.clone(),
            )?);
            let token = worker.shutdown_token();
            if let Some(refresher) = refresher {
                tokio::spawn(refresher.run(token.clone()));
            }
            // A worker has no HTTP API: it is scraped on `metrics.bind`, when set.
            let endpoint = actix_web::web::Data::new(crate::startup::metrics_endpoint_for(
                &settings,
                store,
                metrics,
                Some(worker.health()),
            ));
            let metrics_server = crate::startup::serve_metrics_apart(&settings, endpoint)?;
            let metrics_handle = metrics_server.map(|(server, port)| {
                tracing::info!(port, "metrics served on metrics.bind");
                let handle = server.handle();
                tokio::spawn(server);
                handle
            });
            let running = tokio::spawn(crate::delivery::supervise(worker));
            crate::startup::stop_signal().await;
            token.cancel();
            if let Some(handle) = metrics_handle {
                handle.stop(false).await;
            }
            let grace = std::time::Duration::from_secs(settings.delivery.shutdown_grace_secs);
            if tokio::time::timeout(grace, running).await.is_err() {
                tracing::warn!(
                    "deliveries still in flight were abandoned; their batches will be held"
                );
            }
        }
        Command::Sandbox { bind } => {
            crate::telemetry::init(&crate::config::LogSettings {
                format: crate::config::LogFormat::Human,
                level: "info".into(),
            });
            let config = crate::sandbox::SandboxConfig::demo();
            let sandbox = crate::sandbox::Sandbox::start(config.clone(), bind).await?;
            println!("Kiva sandbox on {}", sandbox.base_url());
            println!("  kiva.token_url    = \"{}\"", sandbox.token_url());
            println!("  kiva.audience     = \"{}\"", sandbox.audience());
            println!("  kiva.api_base_url = \"{}\"", sandbox.base_url());
            for p in &config.partners {
                println!(
                    "  partner {}: client_id \"{}\", client_secret \"{}\" (sandbox-only credentials)",
                    p.partner_id, p.client_id, p.client_secret
                );
            }
            crate::startup::stop_signal().await;
            sandbox.shutdown();
            sandbox.stopped().await;
        }
        Command::Openapi { output } => {
            let text = crate::api::openapi::document_text();
            match output {
                Some(path) => std::fs::write(&path, text)?,
                None => print!("{text}"),
            }
        }
        Command::NewApiKey => {
            let (key, hash) = crate::api::auth::new_key();
            println!("key:        {key}");
            println!("key_sha256: {hash}");
            println!();
            println!(
                "Give the key to the MIS (it is shown only now); put key_sha256 in an [[api_keys]] entry."
            );
        }
        Command::CheckConfig { config, online } => {
            let settings = Settings::load(config.as_deref())?;
            println!(
                "configuration is valid: {} partner(s), {} API key(s), store {}",
                settings.partners.len(),
                settings.api_keys.len(),
                redact_url(&settings.store.url)
            );
            if online {
                check_online(&settings).await?;
            }
        }
        Command::Healthcheck { url, config } => healthcheck(url, config.as_deref()).await?,
    }
    Ok(())
}

/// Seconds the probe may take; a container healthcheck has its own, longer, timeout.
const HEALTHCHECK_TIMEOUT_SECS: u64 = 5;

async fn healthcheck(url: Option<String>, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let url = match url {
        Some(url) => url,
        None => {
            let settings = Settings::load(config)?;
            let bind: std::net::SocketAddr = settings.server.bind.parse()?;
            let ip = match bind.ip() {
                ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
                ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
                ip => ip,
            };
            let probed = std::net::SocketAddr::new(ip, bind.port());
            format!("http://{probed}/health/ready")
        }
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(HEALTHCHECK_TIMEOUT_SECS))
        .build()?;
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status != reqwest::StatusCode::OK {
        anyhow::bail!("{url}: {status}: {body}");
    }
    println!("ready: {body}");
    Ok(())
}

/// Fetches a token for each partner from `kiva.token_url`: proves the URL, the audience and
/// each partner's credentials and scopes, without sending any repayment.
async fn check_online(settings: &Settings) -> anyhow::Result<()> {
    let kiva = crate::kiva::KivaClient::new(&settings.kiva, &settings.partners)?;
    println!(
        "token URL {} (audience {})",
        settings.kiva.token_url, settings.kiva.audience
    );
    let mut failed = 0;
    for partner in &settings.partners {
        match kiva.check_credentials(&partner.id).await {
            Ok(()) => println!(
                "  partner {} ({}): ok, a token was issued",
                partner.id, partner.name
            ),
            Err(reason) => {
                failed += 1;
                println!(
                    "  partner {} ({}): FAILED: {reason}",
                    partner.id, partner.name
                );
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} partner(s) could not get a token from Kiva");
    }
    Ok(())
}
