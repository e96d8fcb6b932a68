//! The MIS-facing HTTP API.

pub mod auth;
pub mod batches;
pub mod body;
pub mod health;
pub mod idempotency;
pub mod metrics;
pub mod openapi;
pub mod partners;
pub mod periods;
pub mod problem;
pub mod repayments;
pub mod reports;
pub mod request_log;

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};

use crate::domain::PartnerId;
use crate::intake::Intake;
use crate::store::ReportStore;
use auth::ApiKeys;
use problem::ApiError;

/// Everything a handler needs, shared by all workers.
pub struct AppState {
    pub intake: Intake,
    pub store: Arc<dyn ReportStore>,
    pub api_keys: ApiKeys,
    /// Every configured partner, in configuration order.
    pub partners: Vec<PartnerId>,
    pub batch_size: usize,
    pub max_body_bytes: usize,
    /// `server.body_read_timeout_secs`.
    pub body_read_timeout: Duration,
    pub idempotency_ttl: Duration,
    /// The delivery loop of this process, when it runs one.
    pub worker: Option<Arc<crate::delivery::WorkerHealth>>,
    /// Kiva's expected-loans snapshot older than this is stale (`reconcile.stale_after_hours`).
    pub stale_after: Duration,
    /// Kiva's expected-loans snapshots as the period view reads them.
    pub snapshots: Arc<crate::periods::snapshot::SnapshotCache>,
    /// `reconcile.max_expected_loans`: the most loans a refresh keeps.
    pub max_expected_loans: usize,
    /// Kiva's expected loans, as intake compares reports with them.
    pub expected_loans: Arc<crate::periods::expected::ExpectedLoansCache>,
    /// Per partner: warn about, or refuse, repayments PA2 will ignore.
    pub unexpected_loans: std::collections::HashMap<PartnerId, crate::config::UnexpectedLoans>,
    /// For reads of Kiva's loans list (expected-loans refreshes on demand).
    pub kiva: Arc<crate::kiva::KivaClient>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

pub const SCHEMA_PATH: &str = "/v1/schemas/repayment-report.json";

/// Routes. Each resource answers other methods with a 405 problem, and unknown paths with 404.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| ApiError::BadRequest(format!("invalid query: {e}")).into()),
    )
    .service(
        web::resource("/v1/repayments")
            .route(web::post().to(repayments::submit))
            .default_service(web::to(not_allowed("POST"))),
    )
    .service(
        web::resource("/v1/repayments/validate")
            .route(web::post().to(repayments::validate))
            .default_service(web::to(not_allowed("POST"))),
    )
    .service(
        web::resource("/v1/periods")
            .route(web::get().to(periods::list_periods))
            .default_service(web::to(not_allowed("GET"))),
    )
    .service(
        web::resource("/v1/periods/{period}")
            .route(web::get().to(periods::get_period))
            .default_service(web::to(not_allowed("GET"))),
    )
    .service(
        web::resource("/v1/periods/{period}/not-reported")
            .route(web::get().to(periods::not_reported))
            .default_service(web::to(not_allowed("GET"))),
    )
    .service(
        web::resource("/v1/periods/{period}/not-expected")
            .route(web::get().to(periods::not_expected))
            .default_service(web::to(not_allowed("GET"))),
    )
    .service(
        web::resource("/v1/reports")
            .route(web::get().to(reports::list_reports))
            .default_service(web::to(not_allowed("GET"))),
    )
    .service(
        web::resource("/v1/reports/{id}")
            .route(web::get().to(reports::get_report))
            .default_service(web::to(not_allowed("GET"))),
    )
    .service(
        web::resource("/v1/batches/{id}/resend")
            .route(web::post().to(batches::resend))
            .default_service(web::to(not_allowed("POST"))),
    )
    .service(
        web::resource("/v1/batches/{id}/mark-delivered")
            .route(web::post().to(batches::mark_delivered))
            .default_service(web::to(not_allowed("POST"))),
    )
    .service(
        web::resource("/v1/partners/{id}/expected-loans/refresh")
            .route(web::post().to(partners::refresh_expected_loans))
            .default_service(web::to(not_allowed("POST"))),
    )
    .service(
        web::resource("/v1/partners/{id}/expected-loans")
            .route(web::get().to(partners::expected_loans))
            .default_service(web::to(not_allowed("GET"))),
    )
    .service(
        web::resource(SCHEMA_PATH)
            .route(web::get().to(report_schema))
            .default_service(web::to(not_allowed("GET"))),
    )
    .service(
        web::resource("/health/live")
            .route(web::get().to(health::live))
            .default_service(web::to(not_allowed("GET"))),
    )
    .service(
        web::resource("/health/ready")
            .route(web::get().to(health::ready))
            .default_service(web::to(not_allowed("GET"))),
    );
}

/// The JSON Schema of the report body, for MIS developers' own validators.
#[utoipa::path(get, path = "/v1/schemas/repayment-report.json", tag = "repayments", security(()),
    responses((status = 200, description = "JSON Schema 2020-12 of the body of `POST /v1/repayments`",
               content_type = "application/schema+json", body = Object)))]
pub async fn report_schema() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/schema+json")
        .body(crate::intake::schema::SCHEMA_TEXT)
}

/// A 405 problem naming the one method the resource takes, in `Allow` as RFC 9110 asks.
pub(crate) fn not_allowed(
    allow: &'static str,
) -> impl Fn(HttpRequest) -> std::future::Ready<HttpResponse> + Clone {
    move |req: HttpRequest| {
        use actix_web::ResponseError;
        let mut response =
            ApiError::MethodNotAllowed(format!("{} {}", req.method(), req.path())).error_response();
        response.headers_mut().insert(
            actix_web::http::header::ALLOW,
            actix_web::http::header::HeaderValue::from_static(allow),
        );
        std::future::ready(response)
    }
}

pub async fn not_found(req: HttpRequest) -> HttpResponse {
    use actix_web::ResponseError;
    ApiError::NotFound(format!("there is nothing at {}", req.path())).error_response()
}
