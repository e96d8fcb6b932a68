//! `GET /v1/reports/{id}` and `GET /v1/reports`.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::auth::Caller;
use super::problem::{ApiError, Problem};
use crate::config::Role;
use crate::domain::{PartnerId, Period};
use crate::intake::PartnerScope;
use crate::store::{Batch, Report, ReportPage, ReportQuery, ReportStatus};

pub const DEFAULT_PAGE: usize = 50;
pub const MAX_PAGE: usize = 200;

/// A report with its batches and each repayment's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportDetail {
    #[serde(flatten)]
    pub report: Report,
    /// How many of the report's repayments are in each state (the sum of its batches').
    #[schema(value_type = Object, example = json!({"accepted": 398, "rejected_by_kiva": 2}))]
    pub repayment_states: std::collections::BTreeMap<crate::store::RepaymentState, usize>,
    pub batches: Vec<Batch>,
}

/// Follow one report.
///
/// The report, its batches (one Kiva call each) and every repayment with its state. A branch
/// key sees only its own branch's reports; any other answers 404.
#[utoipa::path(
    get,
    path = "/v1/reports/{id}",
    tag = "reports",
    security(("api_key" = [])),
    params(("id" = Uuid, Path, description = "Report id, from the `Location` of the 202 answer")),
    responses(
        (status = 200, description = "The report", body = ReportDetail),
        (status = 401, description = "Missing or unknown API key.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such report for this API key.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub async fn get_report(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (report, batches) = find_report(&state, &caller, &id).await?;
    let mut repayment_states: std::collections::BTreeMap<_, usize> =
        std::collections::BTreeMap::new();
    for (state, n) in batches.iter().flat_map(|b| &b.repayment_states) {
        *repayment_states.entry(*state).or_insert(0) += n;
    }
    Ok(HttpResponse::Ok().json(ReportDetail {
        report,
        repayment_states,
        batches,
    }))
}

/// The report if `caller` may read it; another branch's report is "not found", as one that
/// does not exist (its existence is not the branch's business either).
pub(crate) async fn find_report(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(Report, Vec<Batch>), ApiError> {
    let not_found = || ApiError::NotFound("no such report for this API key".into());
    let id = Uuid::parse_str(id).map_err(|_| not_found())?;
    for partner in visible_partners(state, &caller.scope) {
        if let Some((report, batches)) = state.store.report(&partner, id).await? {
            if !caller.may_read(&report.partner_id, &report.branch) {
                return Err(not_found());
            }
            return Ok((report, batches));
        }
    }
    Err(not_found())
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only reports in this status.
    pub(crate) status: Option<ReportStatus>,
    /// `true`: only reports with loans Kiva refused (`rejected_by_kiva`), delivered or not.
    pub(crate) refused_by_kiva: Option<bool>,
    /// Only this branch's reports (admin keys; a branch key always sees only its own).
    pub(crate) branch: Option<String>,
    /// Only reports for this month, `YYYY-MM`. Empty: no filter.
    #[param(pattern = "^(20[0-9]{2}-(0[1-9]|1[0-2]))?$", example = "2026-10")]
    pub(crate) period: Option<String>,
    /// Only this partner's reports. An admin key that serves every partner lists them all
    /// without it.
    #[param(pattern = "^[A-Za-z0-9_-]{0,64}$", example = "102")]
    pub(crate) partner_id: Option<String>,
    /// `next_cursor` of the previous page. Empty: the first page.
    #[param(
        pattern = "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})?$"
    )]
    pub(crate) cursor: Option<String>,
    /// Reports per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub(crate) limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReportList {
    /// Newest first.
    pub reports: Vec<Report>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// List reports, newest first.
///
/// A branch key lists its branch's reports, a partner's admin key its partner's, and an
/// admin key that serves every partner all partners' (or one, with `partner_id`).
/// `next_cursor` pages on in every case.
#[utoipa::path(
    get,
    path = "/v1/reports",
    tag = "reports",
    security(("api_key" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "A page of reports", body = ReportList),
        (status = 400, description = "A filter or the cursor is malformed.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key may not read that partner's reports.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub async fn list_reports(
    state: web::Data<AppState>,
    caller: Caller,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, ApiError> {
    let page = list(&state, &caller, params.into_inner()).await?;
    Ok(HttpResponse::Ok().json(ReportList {
        reports: page.reports,
        next_cursor: page.next.map(|id| id.to_string()),
    }))
}

/// One page of the reports `caller` may see, as the API lists them (the web pages too).
pub(crate) async fn list(
    state: &AppState,
    caller: &Caller,
    mut params: ListParams,
) -> Result<ReportPage, ApiError> {
    // `?branch=&cursor=` is how many HTTP clients say "no filter".
    for value in [
        &mut params.branch,
        &mut params.period,
        &mut params.partner_id,
        &mut params.cursor,
    ] {
        if value.as_deref() == Some("") {
            *value = None;
        }
    }
    // `None`: every configured partner (an every-partner admin key without `partner_id`).
    let partner = match (&params.partner_id, &caller.scope) {
        (Some(named), scope) => {
            let id = PartnerId::parse(named).map_err(ApiError::BadRequest)?;
            if !scope.allows(&id) || !state.partners.contains(&id) {
                return Err(ApiError::Forbidden(format!(
                    "this API key may not read reports of partner {named:?}"
                )));
            }
            Some(id)
        }
        (None, PartnerScope::One(id)) => Some(id.clone()),
        (None, PartnerScope::All) => None,
    };
    let period = params
        .period
        .as_deref()
        .map(Period::parse)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let after = params
        .cursor
        .as_deref()
        .map(|c| {
            Uuid::parse_str(c)
                .map_err(|_| ApiError::BadRequest("cursor is not one this API gave".into()))
        })
        .transpose()?;
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    // A branch key asking for another branch gets an empty page, as for a branch with none.
    if caller.role == Role::Branch && params.branch.as_ref().is_some_and(|b| b != &caller.branch) {
        return Ok(ReportPage {
            reports: vec![],
            next: None,
        });
    }
    let branch = match caller.role {
        Role::Admin => params.branch,
        Role::Branch => Some(caller.branch.clone()),
    };
    let query = ReportQuery {
        branch,
        status: params.status,
        period,
        refused_only: params.refused_by_kiva.unwrap_or(false),
        after,
        limit,
    };
    Ok(match partner {
        Some(partner) => state.store.reports(&partner, &query).await?,
        None => across_partners(state, &query).await?,
    })
}

/// One page over every configured partner, newest first. Report ids are UUIDv7, ordered by
/// time across partners, and each store pages by id (`after` is exclusive), so the page is
/// the newest `limit` of each partner's own page, and its last id is a cursor that is right
/// for every partner: what the cut left out is older than it and comes on the next page.
async fn across_partners(state: &AppState, query: &ReportQuery) -> Result<ReportPage, ApiError> {
    let mut reports = Vec::new();
    let mut more = false;
    for partner in &state.partners {
        let page = state.store.reports(partner, query).await?;
        more |= page.next.is_some();
        reports.extend(page.reports);
    }
    reports.sort_by_key(|r| std::cmp::Reverse(r.id));
    more |= reports.len() > query.limit;
    reports.truncate(query.limit);
    let next = if more {
        reports.last().map(|r| r.id)
    } else {
        None
    };
    Ok(ReportPage { reports, next })
}

fn visible_partners(state: &AppState, scope: &PartnerScope) -> Vec<PartnerId> {
    match scope {
        PartnerScope::One(id) => vec![id.clone()],
        PartnerScope::All => state.partners.clone(),
    }
}
