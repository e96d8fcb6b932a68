//! Kiva's expected loans per partner, for admins: refresh on demand, and what the snapshot
//! holds (`/v1/partners/{id}/expected-loans`).

use std::collections::BTreeMap;

use actix_web::{HttpResponse, http::header, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Caller;
use super::problem::{ApiError, Problem};
use crate::config::Role;
use crate::domain::PartnerId;
use crate::periods::refresh;
use crate::store::{ExpectedLoan, RefreshStatus};

/// The partner's expected-loans snapshot and its refreshes.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExpectedLoansView {
    #[schema(example = "123")]
    pub partner_id: String,
    pub refresh: RefreshStatus,
    /// When the snapshot was taken; absent when there is none yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub taken_at: Option<DateTime<Utc>>,
    /// Pages requested from Kiva to build it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = 2)]
    pub pages: Option<u32>,
    /// Loans Kiva expects a repayment for (`payingBack` and `defaulted`).
    #[schema(example = 354)]
    pub expected: usize,
    /// Loans in the snapshot by Kiva's status.
    pub by_status: BTreeMap<String, usize>,
    /// With `?include=loans`: every loan of the snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loans: Option<Vec<ExpectedLoan>>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ExpectedLoansQuery {
    /// `loans` to list every loan of the snapshot.
    pub include: Option<String>,
}

/// The partner named in the path, if the caller is an admin of it.
fn admin_partner(state: &AppState, caller: &Caller, id: &str) -> Result<PartnerId, ApiError> {
    let not_found = || ApiError::NotFound(format!("no partner {id:?} for this API key"));
    let partner = PartnerId::parse(id).map_err(|_| not_found())?;
    if !state.partners.contains(&partner) || !caller.scope.allows(&partner) {
        return Err(not_found());
    }
    if caller.role != Role::Admin {
        return Err(ApiError::Forbidden(
            "only an admin key may see or refresh the partner's expected loans".into(),
        ));
    }
    Ok(partner)
}

fn status_location(partner: &PartnerId) -> String {
    format!("/v1/partners/{partner}/expected-loans")
}

/// Refresh the partner's expected loans from Kiva's loans list now.
///
/// Reads `payingBack` and `defaulted` loans (and `ended`, `refunded`, so loans PA2 ignores can
/// be named), page by page, and replaces the snapshot once the read is complete; a failed
/// refresh keeps the previous snapshot. Runs in the background: poll the `Location`. Only one
/// refresh per partner runs at a time, across every gateway process. Nothing is sent to Kiva
/// but reads.
#[utoipa::path(
    post,
    path = "/v1/partners/{id}/expected-loans/refresh",
    tag = "reconcile",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "Kiva partner id", example = "102")),
    responses(
        (status = 202, description = "Started; the status is at `Location`.", body = RefreshStatus,
         headers(("Location" = String, description = "`/v1/partners/{id}/expected-loans`"))),
        (status = 401, description = "Missing or unknown API key.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin key.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such partner for this key.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A refresh of this partner is already running.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub async fn refresh_expected_loans(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let partner = admin_partner(&state, &caller, &id)?;
    // The lock is taken here, before answering, so two requests can't both be told 202.
    let Some(locked) =
        refresh::begin(state.store.clone(), &partner, state.max_expected_loans).await?
    else {
        return Err(ApiError::Conflict(format!(
            "a refresh of partner {partner}'s expected loans is already running; poll {}",
            status_location(&partner)
        )));
    };
    tracing::info!(%partner, by = %caller.key_name, "expected loans refresh requested");
    let kiva = state.kiva.clone();
    let locked = locked.telling(state.expected_loans.clone());
    tokio::spawn(async move {
        // The outcome is recorded in the store (the status), and logged by the refresh.
        let _ = locked.run(&kiva).await;
    });
    let status = state.store.refresh_status(&partner).await?;
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, status_location(&partner)))
        .json(status))
}

/// The partner's expected loans: the snapshot's time, size and counts by status, and the
/// state of its refreshes.
#[utoipa::path(
    get,
    path = "/v1/partners/{id}/expected-loans",
    tag = "reconcile",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "Kiva partner id", example = "102"), ExpectedLoansQuery),
    responses(
        (status = 200, description = "The snapshot and its refreshes", body = ExpectedLoansView),
        (status = 400, description = "Unknown `include`.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin key.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such partner for this key.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub async fn expected_loans(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    query: web::Query<ExpectedLoansQuery>,
) -> Result<HttpResponse, ApiError> {
    let partner = admin_partner(&state, &caller, &id)?;
    let include_loans = match query.include.as_deref() {
        None | Some("") => false,
        Some("loans") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "include: {other:?} is not known; use include=loans"
            )));
        }
    };
    let refresh = state.store.refresh_status(&partner).await?;
    let snapshot = state.store.expected_loans(&partner).await?;
    let mut by_status = BTreeMap::new();
    let mut expected = 0;
    for loan in snapshot.iter().flat_map(|s| &s.loans) {
        *by_status.entry(loan.status.clone()).or_insert(0) += 1;
        expected += usize::from(loan.is_expected());
    }
    Ok(HttpResponse::Ok().json(ExpectedLoansView {
        partner_id: partner.to_string(),
        refresh,
        taken_at: snapshot.as_ref().map(|s| s.taken_at),
        pages: snapshot.as_ref().map(|s| s.pages),
        expected,
        by_status,
        loans: snapshot.filter(|_| include_loans).map(|s| s.loans),
    }))
}
