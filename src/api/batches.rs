//! Operator actions on a batch: `POST /v1/batches/{id}/resend` and `/mark-delivered`.

use actix_web::{HttpResponse, web};
use chrono::Utc;

use super::AppState;
use super::auth::Caller;
use super::problem::{ApiError, Problem};
use crate::config::Role;
use crate::intake::PartnerScope;
use crate::store::{Batch, OperatorActionKind, OperatorCommand, OperatorOutcome, report_of_batch};
use serde::Deserialize;
use utoipa::ToSchema;

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
    operate(&state, &caller, &id, OperatorActionKind::Resend, None, None).await
}

/// What an operator may say when closing a held batch (all optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkDeliveredBody {
    /// Kiva's upload id of the batch, as PA2 shows it: recorded as the batch's `upload_id`.
    #[schema(example = "884213")]
    upload_id: Option<String>,
    /// Why, in the operator's words: kept with the action.
    #[schema(example = "found in PA2 as upload 884213, 12 Nov")]
    note: Option<String>,
}

/// Longest upload id or note kept.
const MAX_TEXT: usize = 500;

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
    request_body(content = Option<MarkDeliveredBody>, content_type = "application/json",
        description = "Optional: the upload id found in PA2 and a note, recorded with the action."),
    responses(
        (status = 200, description = "Closed as delivered", body = Batch),
        (status = 400, description = "The body is not the JSON described, or a text is over 500 characters.", body = Problem, content_type = "application/problem+json"),
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
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: MarkDeliveredBody = if body.iter().all(u8::is_ascii_whitespace) {
        MarkDeliveredBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!(
                "the body must be {{\"upload_id\": \"...\", \"note\": \"...\"}} (both optional): {e}"
            ))
        })?
    };
    let upload_id = clean_text(body.upload_id, "upload_id")?;
    let note = clean_text(body.note, "note")?;
    operate(
        &state,
        &caller,
        &id,
        OperatorActionKind::MarkDelivered,
        upload_id,
        note,
    )
    .await
}

/// An operator's text, trimmed; empty is none; too long or with control characters refused.
pub(crate) fn clean_text(text: Option<String>, name: &str) -> Result<Option<String>, ApiError> {
    match text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()) {
        Some(t) if t.chars().count() > MAX_TEXT || t.chars().any(char::is_control) => {
            Err(ApiError::BadRequest(format!(
                "{name} must be at most {MAX_TEXT} characters, without control characters"
            )))
        }
        other => Ok(other),
    }
}

async fn operate(
    state: &AppState,
    caller: &Caller,
    id: &str,
    action: OperatorActionKind,
    upload_id: Option<String>,
    note: Option<String>,
) -> Result<HttpResponse, ApiError> {
    let batch = operate_batch(state, caller, id, action, upload_id, note).await?;
    Ok(HttpResponse::Ok().json(batch))
}

/// The action as the API and the web pages both take it: admin keys only, recorded with the
/// key's name.
pub(crate) async fn operate_batch(
    state: &AppState,
    caller: &Caller,
    id: &str,
    action: OperatorActionKind,
    upload_id: Option<String>,
    note: Option<String>,
) -> Result<Batch, ApiError> {
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
    let command = OperatorCommand {
        action,
        by: caller.key_name.clone(),
        at: Utc::now(),
        upload_id,
        note,
    };
    for partner in partners {
        let outcome = state.store.operate_batch(&partner, id, &command).await?;
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
                return Ok(*batch);
            }
        }
    }
    Err(not_found())
}
