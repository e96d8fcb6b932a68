//! Builds the application from settings: store, Kiva client, HTTP server, delivery worker;
//! stops gracefully on SIGTERM or Ctrl-C.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::http::header;
use actix_web::middleware::{DefaultHeaders, from_fn};
use actix_web::{App, HttpServer, web};
use tokio_util::sync::CancellationToken;
use utoipa_swagger_ui::SwaggerUi;

use crate::api::metrics::{self as metrics_endpoint, Endpoint};
use crate::api::openapi::{self, OPENAPI_PATH};
use crate::api::{self, AppState, auth::ApiKeys, request_log};
use crate::config::EMBEDDED_PREFIX;
use crate::config::Settings;
use crate::delivery::{BatchKinds, Repayments, SystemClock, Worker, supervise};
use crate::intake::Intake;
use crate::kiva::KivaClient;
use crate::metrics::Metrics;
use crate::metrics::store::MeasuredStore;
use crate::periods::expected::ExpectedLoansCache;
use crate::periods::refresh::Scheduler;
use crate::store::ReportStore;
use crate::store::embedded::EmbeddedStore;
use crate::store::redis::RedisStore;

/// Seconds in-flight requests get to finish after SIGTERM or Ctrl-C.
pub const SHUTDOWN_GRACE_SECS: u64 = 10;

pub struct Application {
    server: Server,
    port: u16,
    worker: Option<Arc<Worker>>,
    refresher: Option<Scheduler>,
    shutdown_grace: Duration,
    metrics: Arc<Metrics>,
    /// `/metrics` on its own address (`metrics.bind`), with its port.
    metrics_server: Option<(Server, u16)>,
}

impl Application {
    /// The store named by `store.url`.
    pub fn build(settings: &Settings) -> anyhow::Result<Self> {
        Self::build_with_store(settings, build_store(settings)?)
    }

    /// With a given store: tests wrap the real one to pause it at chosen points.
    pub fn build_with_store(
        settings: &Settings,
        store: Arc<dyn ReportStore>,
    ) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new().with_partners(&partner_ids(settings)));
        let store: Arc<dyn ReportStore> = Arc::new(MeasuredStore::new(store, metrics.clone()));
        let worker = if settings.delivery.enabled {
            Some(Arc::new(build_worker(
                settings,
                store.clone(),
                metrics.clone(),
            )?))
        } else {
            None
        };
        let kiva = Arc::new(
            KivaClient::new(&settings.kiva, &settings.partners)?.with_metrics(metrics.clone()),
        );
        let expected_loans = Arc::new(ExpectedLoansCache::default());
        let refresher = build_refresher(
            settings,
            store.clone(),
            kiva.clone(),
            Some(expected_loans.clone()),
        );
        let listener = TcpListener::bind(settings.bind_addr())
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.server.bind))?;
        let port = listener.local_addr()?.port();
        let endpoint = web::Data::new(metrics_endpoint_for(
            settings,
            store.clone(),
            metrics.clone(),
            worker.as_ref().map(|w| w.health()),
        ));
        let metrics_server = serve_metrics_apart(settings, endpoint.clone())?;
        let metrics_on_api = settings.metrics.on_server();
        let state = web::Data::new(AppState {
            intake: Intake::new(
                settings
                    .partners
                    .iter()
                    .map(|p| (p.id.clone(), p.column_format))
                    .collect(),
                settings.server.max_repayments,
            ),
            store,
            api_keys: ApiKeys::new(&settings.api_keys),
            partners: settings.partners.iter().map(|p| p.id.clone()).collect(),
            batch_size: settings.kiva.batch_size,
            max_body_bytes: settings.server.max_body_bytes,
            body_read_timeout: Duration::from_secs(settings.server.body_read_timeout_secs),
            idempotency_ttl: Duration::from_secs(settings.store.idempotency_ttl_hours * 3600),
            worker: worker.as_ref().map(|w| w.health()),
            stale_after: Duration::from_secs(settings.reconcile.stale_after_hours * 3600),
            max_expected_loans: settings.reconcile.max_expected_loans,
            snapshots: Arc::default(),
            expected_loans,
            unexpected_loans: settings
                .partners
                .iter()
                .map(|p| (p.id.clone(), p.unexpected_loans))
                .collect(),
            kiva,
            metrics: metrics.clone(),
        });
        let web_config = web::Data::new(crate::web::session::WebConfig::new(settings));
        let document = openapi::document();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(endpoint.clone())
                .app_data(web_config.clone())
                .wrap(from_fn(request_log::log_request))
                .wrap(edge_headers())
                .configure(crate::web::configure)
                .configure(api::configure)
                .configure(|cfg| {
                    if metrics_on_api {
                        metrics_endpoint::configure(cfg);
                    }
                })
                .service(
                    SwaggerUi::new("/swagger-ui/{_:.*}")
                        .external_url_unchecked(OPENAPI_PATH, document.clone()),
                )
                .default_service(web::to(api::not_found))
        })
        .shutdown_timeout(SHUTDOWN_GRACE_SECS)
        // Signals are handled in `run_until_stopped`, which must stop the worker too.
        .disable_signals()
        .listen(listener)?
        .run();
        Ok(Self {
            server,
            port,
            worker,
            refresher,
            shutdown_grace: Duration::from_secs(settings.delivery.shutdown_grace_secs),
            metrics,
            metrics_server,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// This application's metrics (tests count what their own workers do in them).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The port of `/metrics` when it is served apart (`metrics.bind`).
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_server.as_ref().map(|(_, port)| *port)
    }

    /// Serves (and delivers) until SIGTERM or Ctrl-C, then stops claiming, lets in-flight
    /// requests and deliveries finish within their grace periods, and returns.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let mut server = tokio::spawn(self.server);
        let metrics_handle = self.metrics_server.map(|(metrics_server, _)| {
            let handle = metrics_server.handle();
            tokio::spawn(metrics_server);
            handle
        });
        let worker = self
            .worker
            .map(|worker| (worker.shutdown_token(), tokio::spawn(supervise(worker))));
        let refresher_stop = CancellationToken::new();
        if let Some(refresher) = self.refresher {
            tokio::spawn(refresher.run(refresher_stop.clone()));
        }
        tokio::select! {
            result = &mut server => return result.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            () = stop_signal() => tracing::info!("stop requested"),
        }
        refresher_stop.cancel();
        if let Some((token, _)) = &worker {
            token.cancel();
        }
        handle.stop(true).await;
        if let Some(metrics_handle) = metrics_handle {
            metrics_handle.stop(false).await;
        }
        if let Some((_, task)) = worker
            && tokio::time::timeout(self.shutdown_grace, task)
                .await
                .is_err()
        {
            tracing::warn!(
                "deliveries still in flight after the grace period were abandoned; \
                 their batches will be held for an operator"
            );
        }
        Ok(())
    }
}

/// Headers on every answer that has not set its own: no content sniffing (a report's text is
/// never run as a script or style), and nothing of the gateway, Swagger UI included, framed by
/// another site (clickjacking). The pages set a stricter policy of their own.
fn edge_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::X_FRAME_OPTIONS, "DENY"))
        .add((header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"))
}

fn partner_ids(settings: &Settings) -> Vec<crate::domain::PartnerId> {
    settings.partners.iter().map(|p| p.id.clone()).collect()
}

/// What `/metrics` reads in this process.
pub fn metrics_endpoint_for(
    settings: &Settings,
    store: Arc<dyn ReportStore>,
    metrics: Arc<Metrics>,
    worker: Option<Arc<crate::delivery::WorkerHealth>>,
) -> Endpoint {
    Endpoint {
        metrics,
        store,
        partners: partner_ids(settings),
        worker,
        bearer_token: settings.metrics.bearer_token.clone(),
        not_reported: crate::periods::not_reported::NotReported::new(
            settings
                .partners
                .iter()
                .map(|p| (p.id.clone(), p.column_format))
                .collect(),
            Duration::from_secs(settings.reconcile.stale_after_hours * 3600),
        ),
    }
}

/// `/metrics` on `metrics.bind`, when set (and metrics are enabled), with its port.
pub fn serve_metrics_apart(
    settings: &Settings,
    endpoint: web::Data<Endpoint>,
) -> anyhow::Result<Option<(Server, u16)>> {
    let Some(bind) = settings
        .metrics
        .bind_addr()
        .filter(|_| settings.metrics.enabled)
    else {
        return Ok(None);
    };
    let listener = TcpListener::bind(bind)
        .map_err(|e| anyhow::anyhow!("cannot listen on metrics.bind {bind}: {e}"))?;
    let port = listener.local_addr()?.port();
    Ok(Some((metrics_endpoint::serve(listener, endpoint)?, port)))
}

/// The delivery worker for `settings`, sending through a real Kiva client.
pub fn build_worker(
    settings: &Settings,
    store: Arc<dyn ReportStore>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Worker> {
    let kiva = KivaClient::new(&settings.kiva, &settings.partners)?.with_metrics(metrics.clone());
    Ok(Worker::new(
        store,
        BatchKinds::default().with(Arc::new(Repayments::new(Arc::new(kiva)))),
        Arc::new(SystemClock),
        &settings.partners,
        settings.delivery.clone(),
        Duration::from_secs(settings.kiva.request_timeout_secs),
    )
    .with_retention(Duration::from_secs(
        settings.store.retention_days * 24 * 3600,
    ))
    .with_metrics(metrics))
}

/// The expected-loans schedule, unless `reconcile.refresh_minutes` is 0 or no partner is set.
pub fn build_refresher(
    settings: &Settings,
    store: Arc<dyn ReportStore>,
    kiva: Arc<KivaClient>,
    intake: Option<Arc<ExpectedLoansCache>>,
) -> Option<Scheduler> {
    let minutes = settings.reconcile.refresh_minutes;
    (minutes > 0 && !settings.partners.is_empty()).then(|| Scheduler {
        store,
        kiva,
        partners: settings.partners.iter().map(|p| p.id.clone()).collect(),
        every: Duration::from_secs(minutes * 60),
        max_loans: settings.reconcile.max_expected_loans,
        intake,
    })
}

/// `build_store`, then, for Redis, a look at the server's persistence: a Redis without AOF,
/// or one that may evict keys, can lose what the gateway acknowledged, so the gateway refuses
/// to start on one unless `store.allow_unsafe_redis` says otherwise. A Redis that does not
/// answer yet is checked once it does (requests meanwhile answer 503).
pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn ReportStore>> {
    let store = build_store(settings)?;
    if settings.store.url.starts_with(EMBEDDED_PREFIX) {
        return Ok(store);
    }
    let redis = RedisStore::new(
        &settings.store.url,
        &settings.store.key_prefix,
        1,
        Duration::from_secs(settings.store.timeout_secs),
    )?
    .with_replica_acks(
        settings.store.replica_acks,
        Duration::from_millis(settings.store.replica_ack_timeout_ms),
    );
    match redis.check_persistence().await {
        Ok(persistence) => {
            let problems = persistence.problems();
            if !problems.is_empty() && !settings.store.allow_unsafe_redis {
                anyhow::bail!(
                    "the Redis at store.url can lose accepted reports:\n  - {}\n\
                     fix its configuration (see README, \"Durability\"), or set \
                     store.allow_unsafe_redis = true for a trial",
                    problems.join("\n  - ")
                );
            }
            for problem in &problems {
                tracing::warn!(%problem, "store.allow_unsafe_redis is set: running on an unsafe Redis");
            }
            tracing::info!(durability = %persistence.durability(settings.store.replica_acks).level, "store ready");
        }
        Err(error) => {
            tracing::warn!(%error, "Redis does not answer yet; its persistence is checked once it does");
        }
    }
    // The serving store learns whether it can use WAITAOF on its own first check.
    let serving = store.clone();
    tokio::spawn(async move {
        while serving.durability().await.is_err() {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    Ok(store)
}

/// The store named by `store.url`: `embedded:PATH` or a Redis URL.
pub fn build_store(settings: &Settings) -> anyhow::Result<Arc<dyn ReportStore>> {
    if let Some(path) = settings.store.url.strip_prefix(EMBEDDED_PREFIX) {
        return Ok(Arc::new(EmbeddedStore::open(std::path::Path::new(path))?));
    }
    Ok(Arc::new(
        RedisStore::new(
            &settings.store.url,
            &settings.store.key_prefix,
            settings.store.pool_size,
            Duration::from_secs(settings.store.timeout_secs),
        )?
        .with_replica_acks(
            settings.store.replica_acks,
            Duration::from_millis(settings.store.replica_ack_timeout_ms),
        ),
    ))
}

/// Resolves on SIGTERM (how orchestrators stop a process) or Ctrl-C.
pub async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
