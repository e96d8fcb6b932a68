//! `GET /v1/periods`, `GET /v1/periods/{period}` and its not-reported / not-expected lists.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Caller;
use super::problem::{ApiError, Problem};
use crate::config::Role;
use crate::domain::{Amount, PartnerId, Period};
use crate::intake::PartnerScope;
use crate::periods::view::{self, NotExpected, PeriodInput, PeriodView};
use crate::store::{ExpectedLoan, ExpectedLoansSnapshot};

/// Periods listed at most by `GET /v1/periods`.
const MAX_PERIODS: usize = 24;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PartnerParam {
    /// The partner; required for an admin key that serves several partners.
    #[param(pattern = "^[A-Za-z0-9_-]{0,64}$", example = "102")]
    partner_id: Option<String>,
}

/// One period's headline numbers.
#[derive(Debug, Serialize, ToSchema)]
pub struct PeriodSummary {
    #[schema(value_type = String, example = "2026-10")]
    pub period: Period,
    #[schema(example = 12)]
    pub reports: usize,
    #[schema(example = 320)]
    pub repayments: usize,
    #[schema(value_type = String, example = "1250.00")]
    pub amount: Amount,
    /// Expected loans with a repayment Kiva accepted (admin keys, with a snapshot).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = 298)]
    pub reported: Option<usize>,
    /// Loans Kiva expects (admin keys, with a snapshot).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = 354)]
    pub expected: Option<usize>,
    pub ready_to_finalize: bool,
    pub reasons: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PeriodList {
    /// Newest first (at most 24).
    pub periods: Vec<PeriodSummary>,
}

/// The months a partner has reports for, with their headline numbers.
#[utoipa::path(
    get,
    path = "/v1/periods",
    tag = "periods",
    security(("api_key" = [])),
    params(PartnerParam),
    responses(
        (status = 200, description = "Newest first", body = PeriodList),
        (status = 400, description = "partner_id is missing (every-partner admin key) or malformed.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key may not read that partner.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub async fn list_periods(
    state: web::Data<AppState>,
    caller: Caller,
    params: web::Query<PartnerParam>,
) -> Result<HttpResponse, ApiError> {
    let partner = partner_of(&state, &caller, params.partner_id.as_deref())?;
    let snapshot = admin_snapshot(&state, &caller, &partner).await?;
    let mut periods = Vec::new();
    for period in state
        .store
        .periods(&partner)
        .await?
        .into_iter()
        .take(MAX_PERIODS)
    {
        // One month's view at a time, dropped once summed up.
        let v = month_with(&state, &caller, &partner, period, snapshot.as_deref()).await?;
        periods.push(PeriodSummary {
            period,
            reports: v.total.reports,
            repayments: v.total.repayments,
            amount: v.total.amount,
            reported: v.expected_loans.as_ref().map(|e| e.reported),
            expected: v.expected_loans.as_ref().map(|e| e.expected),
            ready_to_finalize: v.ready_to_finalize,
            reasons: v.reasons,
        });
    }
    Ok(HttpResponse::Ok().json(PeriodList { periods }))
}

/// The month: what each branch reported, what Kiva expects, and whether it is ready.
///
/// Per branch and in total: reports, repayments, the exact amount and repayments by state.
/// With an admin key, Kiva's side too (from the expected-loans snapshot): how many expected
/// loans were reported (as PA2 counts them), which were not, which reported loans PA2 will
/// ignore, and every reason the month is not ready to finalize in PA2. A branch key sees its
/// own branch's part.
#[utoipa::path(
    get,
    path = "/v1/periods/{period}",
    tag = "periods",
    security(("api_key" = [])),
    params(("period" = String, Path, description = "`YYYY-MM`", example = "2026-10"), PartnerParam),
    responses(
        (status = 200, description = "The month", body = PeriodView),
        (status = 400, description = "The period or partner_id is malformed, or partner_id is missing.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key may not read that partner.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub async fn get_period(
    state: web::Data<AppState>,
    caller: Caller,
    period: web::Path<String>,
    params: web::Query<PartnerParam>,
) -> Result<HttpResponse, ApiError> {
    let partner = partner_of(&state, &caller, params.partner_id.as_deref())?;
    let period = Period::parse(&period).map_err(ApiError::BadRequest)?;
    Ok(HttpResponse::Ok().json(month(&state, &caller, &partner, period).await?))
}

/// Expected loans with no repayment this period, as JSON or, with `Accept: text/csv`, as a
/// CSV file to hand to the branches.
#[utoipa::path(
    get,
    path = "/v1/periods/{period}/not-reported",
    tag = "periods",
    security(("api_key" = [])),
    params(("period" = String, Path, description = "`YYYY-MM`", example = "2026-10"), PartnerParam),
    responses(
        (status = 200, description = "The loans", content(
            (Vec<ExpectedLoan> = "application/json"),
            (String = "text/csv", example = "internal_loan_id,internal_client_id,kiva_id,status,delinquent\nL-2003,C-2003,2400203,payingBack,false\n"))),
        (status = 400, description = "Malformed period or partner_id.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Admin keys only.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn not_reported(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    period: web::Path<String>,
    params: web::Query<PartnerParam>,
) -> Result<HttpResponse, ApiError> {
    let (view, partner) =
        admin_month(&state, &caller, &period, params.partner_id.as_deref()).await?;
    if wants_csv(&request) {
        return not_reported_csv(&view, &partner);
    }
    Ok(HttpResponse::Ok().json(view.not_reported))
}

/// Reported repayments PA2 will ignore (Kiva does not expect their loans), as JSON or CSV.
#[utoipa::path(
    get,
    path = "/v1/periods/{period}/not-expected",
    tag = "periods",
    security(("api_key" = [])),
    params(("period" = String, Path, description = "`YYYY-MM`", example = "2026-10"), PartnerParam),
    responses(
        (status = 200, description = "The repayments", content(
            (Vec<NotExpected> = "application/json"),
            (String = "text/csv", example = "loan_id,client_id,kiva_status,branch,report_id,position\nL-2006,C-2006,ended,Nairobi,0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b,2\n"))),
        (status = 400, description = "Malformed period or partner_id.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Admin keys only.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn not_expected(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    period: web::Path<String>,
    params: web::Query<PartnerParam>,
) -> Result<HttpResponse, ApiError> {
    let (view, partner) =
        admin_month(&state, &caller, &period, params.partner_id.as_deref()).await?;
    if wants_csv(&request) {
        return not_expected_csv(&view, &partner);
    }
    Ok(HttpResponse::Ok().json(view.not_expected))
}

/// The not-reported list as a CSV file (the API's answer to `Accept: text/csv`, and the
/// pages' download).
pub(crate) fn not_reported_csv(
    view: &PeriodView,
    partner: &PartnerId,
) -> Result<HttpResponse, ApiError> {
    let rows = view.not_reported.iter().map(|l| {
        [
            l.internal_loan_id.clone(),
            l.internal_client_id.clone().unwrap_or_default(),
            l.kiva_id.map(|k| k.to_string()).unwrap_or_default(),
            l.status.clone(),
            l.delinquent.map(|d| d.to_string()).unwrap_or_default(),
        ]
    });
    let header = [
        "internal_loan_id",
        "internal_client_id",
        "kiva_id",
        "status",
        "delinquent",
    ];
    csv_answer(
        &format!("{partner}-{}-not-reported.csv", view.period),
        header,
        rows,
    )
}

/// The not-expected list as a CSV file.
pub(crate) fn not_expected_csv(
    view: &PeriodView,
    partner: &PartnerId,
) -> Result<HttpResponse, ApiError> {
    let rows = view.not_expected.iter().map(|r| {
        [
            r.loan_id.clone(),
            r.client_id.clone().unwrap_or_default(),
            r.kiva_status
                .clone()
                .unwrap_or_else(|| "not in Kiva's list".into()),
            r.branch.clone(),
            r.report_id.to_string(),
            r.position.to_string(),
        ]
    });
    let header = [
        "loan_id",
        "client_id",
        "kiva_status",
        "branch",
        "report_id",
        "position",
    ];
    csv_answer(
        &format!("{partner}-{}-not-expected.csv", view.period),
        header,
        rows,
    )
}

pub(crate) async fn admin_month(
    state: &AppState,
    caller: &Caller,
    period: &str,
    partner: Option<&str>,
) -> Result<(PeriodView, PartnerId), ApiError> {
    if caller.role != Role::Admin {
        return Err(ApiError::Forbidden(
            "Kiva's expected loans are the whole partner's: use an admin key".into(),
        ));
    }
    let partner = partner_of(state, caller, partner)?;
    let period = Period::parse(period).map_err(ApiError::BadRequest)?;
    Ok((month(state, caller, &partner, period).await?, partner))
}

/// The month as `caller` may see it: a branch key its branch, without Kiva's side. The web
/// pages show this very view, so page and API can't disagree.
pub(crate) async fn month(
    state: &AppState,
    caller: &Caller,
    partner: &PartnerId,
    period: Period,
) -> Result<PeriodView, ApiError> {
    let snapshot = admin_snapshot(state, caller, partner).await?;
    month_with(state, caller, partner, period, snapshot.as_deref()).await
}

/// Kiva's snapshot for an admin key (`None` for a branch key, which does not see Kiva's side).
pub(crate) async fn admin_snapshot(
    state: &AppState,
    caller: &Caller,
    partner: &PartnerId,
) -> Result<Option<std::sync::Arc<ExpectedLoansSnapshot>>, ApiError> {
    if caller.role != Role::Admin {
        return Ok(None);
    }
    Ok(state.snapshots.get(state.store.as_ref(), partner).await?)
}

/// `month` with Kiva's snapshot already read (`None` for a branch key): a page of several
/// months reads the snapshot once, not once a month.
pub(crate) async fn month_with(
    state: &AppState,
    caller: &Caller,
    partner: &PartnerId,
    period: Period,
    snapshot: Option<&ExpectedLoansSnapshot>,
) -> Result<PeriodView, ApiError> {
    let whole_partner = caller.role == Role::Admin;
    let branch = (!whole_partner).then_some(caller.branch.as_str());
    let reports = state.store.period_reports(partner, period, branch).await?;
    let snapshot = snapshot.filter(|_| whole_partner);
    Ok(view::build(PeriodInput {
        period,
        partner_id: partner,
        column_format: state
            .intake
            .column_format(partner)
            .ok_or_else(|| ApiError::NotFound(format!("no partner {partner}")))?,
        reports: &reports,
        snapshot,
        whole_partner,
        now: chrono::Utc::now(),
        stale_after: state.stale_after,
    }))
}

/// The partner a request is about: named (and allowed), or the key's own.
pub fn partner_of(
    state: &AppState,
    caller: &Caller,
    named: Option<&str>,
) -> Result<PartnerId, ApiError> {
    match (named.filter(|n| !n.is_empty()), &caller.scope) {
        (Some(named), scope) => {
            let id = PartnerId::parse(named).map_err(ApiError::BadRequest)?;
            if !scope.allows(&id) || !state.partners.contains(&id) {
                return Err(ApiError::Forbidden(format!(
                    "this API key may not read partner {named:?}"
                )));
            }
            Ok(id)
        }
        (None, PartnerScope::One(id)) => Ok(id.clone()),
        (None, PartnerScope::All) => match state.partners.as_slice() {
            [only] => Ok(only.clone()),
            _ => Err(ApiError::BadRequest(
                "partner_id is required: this admin key serves several partners".into(),
            )),
        },
    }
}

fn wants_csv(request: &HttpRequest) -> bool {
    request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/csv"))
}

/// Branches open these files in Excel, and their cells hold text from branches and from Kiva:
/// a cell that a spreadsheet would read as a formula (or, after a tab or CR, as the start of
/// one) gets a leading `'`, OWASP's rule for CSV injection. The `'` shows in the cell; a
/// formula run on a coordinator's machine is worse.
fn neutralized(cell: &String) -> std::borrow::Cow<'_, [u8]> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{cell}").into_bytes().into(),
        _ => cell.as_bytes().into(),
    }
}

fn csv_answer<const N: usize>(
    filename: &str,
    header: [&str; N],
    mut rows: impl Iterator<Item = [String; N]>,
) -> Result<HttpResponse, ApiError> {
    let mut out = csv::Writer::from_writer(Vec::new());
    let written = out
        .write_record(header)
        .and_then(|()| rows.try_for_each(|row| out.write_record(row.iter().map(neutralized))));
    let body = written
        .map_err(|e| e.to_string())
        .and_then(|()| out.into_inner().map_err(|e| e.to_string()))
        .map_err(|reason| {
            tracing::error!(%reason, "CSV not written");
            ApiError::Internal
        })?;
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        // Loans and borrowers' ids: never kept by a shared cache or the browser's.
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{filename}\""),
        ))
        .body(body))
}
