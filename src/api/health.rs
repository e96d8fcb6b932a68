//! Liveness and readiness for load balancers and orchestrators.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::problem::{ApiError, STORE_RETRY_AFTER_SECS};

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Readiness, with what an operator needs to judge it.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ok`, or `unavailable` (also answered with 503).
    #[schema(example = "ok")]
    status: &'static str,
    /// What an acknowledged report survives on this store.
    durability: Option<crate::store::Durability>,
    /// This process's delivery loop, when it runs one.
    #[serde(skip_serializing_if = "Option::is_none")]
    worker: Option<crate::delivery::WorkerStatus>,
    /// Why the gateway is not ready.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    problems: Vec<String>,
}

/// The process is up.
#[utoipa::path(get, path = "/health/live", tag = "health", security(()),
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// The gateway can accept reports (its store answers) and, where this process delivers, its
/// delivery loop is running.
#[utoipa::path(get, path = "/health/ready", tag = "health", security(()),
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "The store is unreachable, or the delivery loop is down (being restarted)", body = Readiness,
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ))]
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut problems = Vec::new();
    let durability = match async {
        state.store.ping().await?;
        state.store.durability().await
    }
    .await
    {
        Ok(durability) => Some(durability),
        Err(error) => {
            problems.push(format!("{error}"));
            None
        }
    };
    let worker = state.worker.as_ref().map(|w| w.status());
    if worker.as_ref().is_some_and(|w| !w.running) {
        problems.push("the delivery loop is not running; it is being restarted".into());
    }
    let body = Readiness {
        status: if problems.is_empty() {
            "ok"
        } else {
            "unavailable"
        },
        durability,
        worker,
        problems,
    };
    Ok(if body.problems.is_empty() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header((actix_web::http::header::RETRY_AFTER, STORE_RETRY_AFTER_SECS))
            .json(body)
    })
}
