//! Builds the application from settings: store, HTTP server; stops gracefully on SIGTERM.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use utoipa_swagger_ui::SwaggerUi;

use crate::api::openapi::{self, OPENAPI_PATH};
use crate::api::{self, AppState, auth::ApiKeys, request_log};
use crate::config::Settings;
use crate::intake::Intake;
use crate::store::ReportStore;
use crate::store::redis::RedisStore;

/// Seconds in-flight requests get to finish after SIGTERM or Ctrl-C.
const SHUTDOWN_GRACE_SECS: u64 = 10;

pub struct Application {
    server: Server,
    port: u16,
}

impl Application {
    /// The store named by `store.url`.
    pub fn build(settings: &Settings) -> anyhow::Result<Self> {
        let store = RedisStore::new(
            &settings.store.url,
            &settings.store.key_prefix,
            settings.store.pool_size,
            Duration::from_secs(settings.store.timeout_secs),
        )?;
        Self::build_with_store(settings, Arc::new(store))
    }

    /// With a given store: tests wrap the real one to pause it at chosen points.
    pub fn build_with_store(
        settings: &Settings,
        store: Arc<dyn ReportStore>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.bind_addr())
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.server.bind))?;
        let port = listener.local_addr()?.port();
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
            idempotency_ttl: Duration::from_secs(settings.store.idempotency_ttl_hours * 3600),
        });
        let document = openapi::document();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap(from_fn(request_log::log_request))
                .configure(api::configure)
                .service(
                    SwaggerUi::new("/swagger-ui/{_:.*}")
                        .external_url_unchecked(OPENAPI_PATH, document.clone()),
                )
                .default_service(web::to(api::not_found))
        })
        .shutdown_timeout(SHUTDOWN_GRACE_SECS)
        .listen(listener)?
        .run();
        Ok(Self { server, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
