//! Operator actions on a batch: `POST /v1/batches/{id}/resend` and `/mark-delivered`.

use actix_web::{HttpResponse, web};
use chrono::Utc;

use super::AppState;
use super::auth::Caller;
use super::problem::{ApiError, Problem};
use crate::config::Role;
use crate::intake::PartnerScope;
use crate::store::{Batch, OperatorActionKind, OperatorOutcome, report_of_batch};

/// Queue a held, failed or rejected batch again.
///
/// For a `held` batch, first check in PA2 that Kiva does **not** have the upload: if it does,
/// use `mark-delivered` instead, or the repayments are counted twice. Admin keys only; the
/// action is recorded with the key's name and the time.
#[utoipa::path(
    post,
    path = "/v1/batches/{id}/resend",
    tag = "operators",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "Batch id, `{report id}.{number}`")),
    responses(
        (status = 200, description = "Queued again", body = Batch),
        (status = 401, description = "Missing or unknown API key.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin key.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such batch for this key.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The batch is not held, failed or rejected.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub async fn resend(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    operate(&state, &caller, &id, OperatorActionKind::Resend).await
}

/// Close a held batch as delivered without sending it.
///
/// For when the operator found the upload in PA2 (Kiva processed it although the gateway
/// could not learn so). Admin keys only; recorded with the key's name and the time.
#[utoipa::path(
    post,
    path = "/v1/batches/{id}/mark-delivered",
    tag = "operators",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "Batch id, `{report id}.{number}`")),
    responses(
        (status = 200, description = "Closed as delivered", body = Batch),
        (status = 401, description = "Missing or unknown API key.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin key.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such batch for this key.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The batch is not held.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub async fn mark_delivered(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    operate(&state, &caller, &id, OperatorActionKind::MarkDelivered).await
}

async fn operate(
    state: &AppState,
    caller: &Caller,
    id: &str,
    action: OperatorActionKind,
) -> Result<HttpResponse, ApiError> {
    if caller.role != Role::Admin {
        return Err(ApiError::Forbidden(
            "only an admin key may resend or close a batch".into(),
        ));
    }
    let not_found = || ApiError::NotFound("no such batch for this API key".into());
    if report_of_batch(id).is_none() {
        return Err(not_found());
    }
    let partners = match &caller.scope {
        PartnerScope::One(p) => vec![p.clone()],
        PartnerScope::All => state.partners.clone(),
    };
    for partner in partners {
        let outcome = state
            .store
            .operate_batch(&partner, id, action, &caller.key_name, Utc::now())
            .await?;
        match outcome {
            OperatorOutcome::NotFound => continue,
            OperatorOutcome::Conflict(found) => {
                let allowed = match action {
                    OperatorActionKind::Resend => "held, failed or rejected",
                    OperatorActionKind::MarkDelivered => "held",
                };
                return Err(ApiError::Conflict(format!(
                    "the batch is {}; only a {allowed} batch can be {}",
                    serde_json::to_value(found)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    match action {
                        OperatorActionKind::Resend => "resent",
                        OperatorActionKind::MarkDelivered => "marked delivered",
                    }
                )));
            }
            OperatorOutcome::Done(batch) => {
                tracing::info!(batch = %id, by = %caller.key_name, state = ?batch.state, "operator action");
                return Ok(HttpResponse::Ok().json(batch));
            }
        }
    }
    Err(not_found())
}
