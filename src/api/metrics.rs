//! `GET /metrics`: alone on `metrics.bind` (by default `127.0.0.1:9100`, so it is not
//! reachable where the MIS is), or on the API's own address with `metrics.bind = "server"`;
//! optionally behind a bearer token (`metrics.bearer_token`).

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::problem::{PROBLEM_JSON, Problem};
use crate::delivery::WorkerHealth;
use crate::domain::PartnerId;
use crate::metrics::{CONTENT_TYPE, Metrics};
use crate::periods::not_reported::NotReported;
use crate::store::ReportStore;

/// What a scrape reads.
pub struct Endpoint {
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn ReportStore>,
    pub partners: Vec<PartnerId>,
    pub worker: Option<Arc<WorkerHealth>>,
    pub bearer_token: Option<SecretString>,
    pub not_reported: NotReported,
}

pub const PATH: &str = "/metrics";

/// Prometheus metrics of this gateway process; queue gauges are read from the store.
///
/// Served on `metrics.bind`, by default `127.0.0.1:9100` apart from the API; on the API's
/// address only with `metrics.bind = "server"`.
#[utoipa::path(get, path = "/metrics", tag = "health", security(()),
    responses(
        (status = 200, description = "Prometheus text format 0.0.4 (see README, \"Monitoring\")",
         content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 401, description = "`metrics.bearer_token` is set and the request did not carry it",
         content_type = "application/problem+json", body = Problem),
    ))]
pub async fn scrape(endpoint: web::Data<Endpoint>, request: HttpRequest) -> HttpResponse {
    if let Some(expected) = &endpoint.bearer_token
        && !bearer_matches(&request, expected)
    {
        let problem = Problem {
            problem_type: "/problems/unauthenticated".into(),
            title: "Missing or wrong bearer token".into(),
            status: 401,
            detail: "send the metrics bearer token as `Authorization: Bearer <token>`".into(),
            errors: Vec::new(),
            error_count: None,
        };
        return HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
            .content_type(PROBLEM_JSON)
            .json(problem);
    }
    let months_read = endpoint
        .not_reported
        .update(
            endpoint.store.as_ref(),
            &endpoint.partners,
            &endpoint.metrics,
        )
        .await;
    let text = endpoint
        .metrics
        .render(
            endpoint.store.as_ref(),
            &endpoint.partners,
            endpoint.worker.as_ref().map(|health| health.reading()),
            months_read,
        )
        .await;
    HttpResponse::Ok().content_type(CONTENT_TYPE).body(text)
}

/// Compares digests, so the time taken says nothing about how much of the token matched.
fn bearer_matches(request: &HttpRequest, expected: &SecretString) -> bool {
    let Some(given) = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    Sha256::digest(given.trim().as_bytes()) == Sha256::digest(expected.expose_secret().as_bytes())
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource(PATH).route(web::get().to(scrape)));
}

/// `/metrics` alone on its own listener (`metrics.bind`).
pub fn serve(listener: TcpListener, endpoint: web::Data<Endpoint>) -> std::io::Result<Server> {
    Ok(
        HttpServer::new(move || App::new().app_data(endpoint.clone()).configure(configure))
            .workers(1)
            .disable_signals()
            .shutdown_timeout(1)
            .listen(listener)?
            .run(),
    )
}
