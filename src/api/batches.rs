//! Operator actions on a batch: `POST /v1/batches/{id}/resend` and `/mark-delivered`.

use actix_web::{HttpRequest, HttpResponse, http::header, web};
use chrono::Utc;

use super::AppState;
use super::auth::Caller;
use super::problem::{ApiError, Problem};
use crate::config::Role;
use crate::intake::PartnerScope;
use crate::store::{
    Batch, BatchVersion, OperatorActionKind, OperatorCommand, OperatorOutcome, report_of_batch,
};
use serde::Deserialize;
use utoipa::ToSchema;

/// Queue a held, failed or rejected batch again.
///
/// For a `held` batch, first check in PA2 that Kiva does **not** have the upload: if it does,
/// use `mark-delivered` instead, or the repayments are counted twice. Admin keys only; the
/// action is recorded with the key's name and the time.
///
/// Send the batch's `version` (as read in `GET /v1/reports/{id}`) in `If-Match`: the action is
/// then refused with 409 if the batch changed since (another operator acted, or Kiva answered),
/// so a decision made on what was seen is never applied to a batch that moved on.
#[utoipa::path(
    post,
    path = "/v1/batches/{id}/resend",
    tag = "operators",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "Batch id, `{report id}.{number}`"),
        ("If-Match" = Option<String>, Header, description = "The batch's `version` as last read (quoted or not): the action is refused with 409 if the batch changed since. Without it (or `*`) the action applies to the batch as it is now, as before versions existed.", example = "\"held.1.0\"")),
    responses(
        (status = 200, description = "Queued again", body = Batch,
         headers(("ETag" = String, description = "The batch's new `version`, quoted"))),
        (status = 400, description = "`If-Match` is not a batch version.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin key.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such batch for this key.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The batch is not held, failed or rejected, or it changed since the `If-Match` version.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub async fn resend(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let expected = if_match(&req)?;
    let text = OperatorText::default();
    operate(
        &state,
        &caller,
        &id,
        OperatorActionKind::Resend,
        text,
        expected,
    )
    .await
}

/// The version in `If-Match`, if any: one version; `*` or no header is none.
fn if_match(req: &HttpRequest) -> Result<Option<BatchVersion>, ApiError> {
    let mut values = req.headers().get_all(header::IF_MATCH);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = || {
        ApiError::BadRequest(
            "If-Match must be one batch version as the batch's `version` shows it, e.g. \"held.1.0\""
                .into(),
        )
    };
    if values.next().is_some() {
        return Err(bad());
    }
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text == "*" {
        return Ok(None);
    }
    BatchVersion::parse(text).map(Some).ok_or_else(bad)
}

/// What an operator wrote with the action (mark delivered): kept with it.
#[derive(Debug, Default)]
pub(crate) struct OperatorText {
    pub upload_id: Option<String>,
    pub note: Option<String>,
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
/// `If-Match` with the batch's `version` as for `resend`.
#[utoipa::path(
    post,
    path = "/v1/batches/{id}/mark-delivered",
    tag = "operators",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "Batch id, `{report id}.{number}`"),
        ("If-Match" = Option<String>, Header, description = "The batch's `version` as last read (quoted or not): the action is refused with 409 if the batch changed since. Without it (or `*`) the action applies to the batch as it is now, as before versions existed.", example = "\"held.1.0\"")),
    request_body(content = Option<MarkDeliveredBody>, content_type = "application/json",
        description = "Optional: the upload id found in PA2 and a note, recorded with the action."),
    responses(
        (status = 200, description = "Closed as delivered", body = Batch,
         headers(("ETag" = String, description = "The batch's new `version`, quoted"))),
        (status = 400, description = "The body is not the JSON described, a text is over 500 characters, or `If-Match` is not a batch version.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin key.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such batch for this key.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The batch is not held, or it changed since the `If-Match` version.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub async fn mark_delivered(
    req: HttpRequest,
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
    let text = OperatorText {
        upload_id: clean_text(body.upload_id, "upload_id")?,
        note: clean_text(body.note, "note")?,
    };
    let expected = if_match(&req)?;
    operate(
        &state,
        &caller,
        &id,
        OperatorActionKind::MarkDelivered,
        text,
        expected,
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
    text: OperatorText,
    expected: Option<BatchVersion>,
) -> Result<HttpResponse, ApiError> {
    let batch = operate_batch(state, caller, id, action, text, expected).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, BatchVersion::of(&batch).etag()))
        .json(batch))
}

/// The action as the API and the web pages both take it: admin keys only, recorded with the
/// key's name; refused when the batch is no longer at the `expected` version (checked by the
/// store in the same atomic step as the action).
pub(crate) async fn operate_batch(
    state: &AppState,
    caller: &Caller,
    id: &str,
    action: OperatorActionKind,
    text: OperatorText,
    expected: Option<BatchVersion>,
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
        upload_id: text.upload_id,
        note: text.note,
        expected,
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
            OperatorOutcome::Changed(found) => {
                return Err(ApiError::Conflict(format!(
                    "the batch changed since it was read (version {}, now {found}: {} attempts, \
                     {} operator actions, {}); nothing was done: read it again and decide on \
                     what it shows now",
                    expected.map(|v| v.to_string()).unwrap_or_default(),
                    found.attempts,
                    found.actions,
                    found.state.as_str(),
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
