//! `POST /v1/repayments` and `POST /v1/repayments/validate`.

use actix_web::http::header::{self, HeaderMap};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use tokio::sync::OwnedSemaphorePermit;
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::auth::Caller;
use super::body::{BodyError, ReadDeadline, read_limited};
use super::idempotency;
use super::problem::{ApiError, Problem};
use crate::config::{Role, UnexpectedLoans};
use crate::domain::{ColumnFormat, KivaRequest, RepaymentReport};
use crate::intake::{FileFields, FileKind, LARGE_BODY_BYTES, PartnerScope, Violation};
use crate::metrics::IntakeOutcome;
use crate::periods::expected::ExpectedLoansCheck;
use crate::store::{
    IDEMPOTENCY_CLAIM_TTL, IdempotencyClaim, IdempotencyScope, IdempotentAccept, RecordedResponse,
    Report, StoreError, batches_of,
};

mod check;
pub(crate) use check::check_report;
use check::report_record;

pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";
pub const REPLAYED_HEADER: &str = "Idempotent-Replayed";
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Submit a month's repayments.
///
/// The body is checked against the published JSON Schema and the partner's column rules;
/// every problem is listed in one 422 answer. An accepted report is stored and queued for
/// delivery to Kiva in batches of at most `kiva.batch_size` repayments before the 202 is sent.
/// Send an `Idempotency-Key` so that a retry after a lost answer cannot create a second report.
#[utoipa::path(
    post,
    path = "/v1/repayments",
    tag = "repayments",
    security(("api_key" = [])),
    params(
        ("period" = Option<String>, Query, pattern = "^20[0-9]{2}-(0[1-9]|1[0-2])$", example = "2026-10",
         description = "Files only: the reporting month, as `period` in a JSON report."),
        ("correction" = Option<bool>, Query, description = "Files only: the report corrects one already sent for the period."),
        ("partner_id" = Option<String>, Query, pattern = "^[A-Za-z0-9_-]{1,64}$", example = "102",
         description = "Files only: as `partner_id` in a JSON report (admin keys that serve several partners)."),
        ("sheet" = Option<String>, Query, description = "Excel only: the sheet to read; the first by default.", example = "October"),
        ("delimiter" = Option<String>, Query, description = "CSV only: `,` `;` or `tab`; detected from the first line by default (also accepted as a `delimiter` parameter of the content type).", example = ";"),
        ("Idempotency-Key" = Option<String>, Header, max_length = 255, min_length = 1, nullable = false,
         description = "Makes retries safe: one key per report, 1 to 255 visible ASCII characters, e.g. `<period>-<branch>-<n>` (make up your own: a key already used for another report is refused). The same key with the same report replays the first answer for at least 24 h; with another report it is refused (422, saying what differs); while the first request is in progress, 409. Scoped to the API key.")
    ),
    request_body(
        description = "The report: JSON (its schema is `schemas/repayment-report.schema.json`, also served at `/v1/schemas/repayment-report.json`); or a CSV file (UTF-8, with or without BOM; `,` `;` or tab, detected or given as `delimiter`; an optional header `loan_id`, `client_id`, `amount`, else PA2's order: loan, amount or loan, client, amount); or an Excel workbook (first sheet unless `sheet` names another). A file is read into the same report as JSON and checked by the same rules; each problem also gives its `line` (CSV) or `sheet`, `row`, `column` and `cell` (Excel).",
        content(
            (RepaymentReportBody = "application/json"),
            (String = "text/csv", example = json!("loan_id,client_id,amount\nL-1042970,C-184729,25.00\nL-1043223,C-481395,40.50\n")),
            (WorkbookBody = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
        )
    ),
    responses(
        (status = 202, description = "Accepted, stored and queued for delivery; `warnings` names the repayments PA2 will ignore.", body = AcceptedReport,
         headers(("Location" = String, description = "`/v1/reports/{id}`"),
                 ("Idempotent-Replayed" = String, description = "`true` when this is the replayed answer to an earlier request with the same Idempotency-Key"))),
        (status = 400, description = "The body is not JSON (the detail gives line and column), a file is not what its content type says or a workbook holds what no report needs, e.g. more shared strings than rows allow (`/problems/malformed-file`), or the Idempotency-Key or a query parameter is malformed.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key may not submit for the named partner.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request with the same Idempotency-Key is still in progress.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 408, description = "The body was not received in full within `server.body_read_timeout_secs` (120 s by default); nothing was stored.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body, the number of repayments (rows), or what a workbook unpacks to is over the limit.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`, `text/csv` or an `.xlsx` workbook.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Every schema and column-rule violation, each with a JSON Pointer (and for a file its line or cell); or an Idempotency-Key reused with another body. Nothing was stored.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`/problems/store-unavailable`: the store is unreachable and nothing was stored. `/problems/outcome-unknown`: the store did not confirm the write, so the report may have been stored: `Location` says where it will be; look there, or retry with the same Idempotency-Key (always safe).", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait"),
                 ("Location" = String, description = "With `/problems/outcome-unknown`: `/v1/reports/{id}`, where the report is if it was stored"))),
    )
)]
pub async fn submit(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let result = submit_report(state.clone(), caller, request, payload).await;
    state.metrics.intake_request(match &result {
        Ok(response) if response.headers().contains_key(REPLAYED_HEADER) => IntakeOutcome::Replayed,
        Ok(_) => IntakeOutcome::Accepted,
        Err(error) => error.intake_outcome(),
    });
    result
}

async fn submit_report(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let kind = body_kind(&request)?;
    let idempotency_key = idempotency_key(request.headers())?;
    let report = read_report(&state, &caller, &kind, request.headers(), payload).await?;
    accept_report(&state, &caller, &kind, report, idempotency_key).await
}

/// Stores a report read by intake, as `POST /v1/repayments` does (the pages' upload too): the
/// expected-loans check, the atomic accept, and the Idempotency-Key rules. The 202 answer, or
/// the replay of the first one.
pub(crate) async fn accept_report(
    state: &AppState,
    caller: &Caller,
    kind: &BodyKind,
    report: RepaymentReport,
    idempotency_key: Option<String>,
) -> Result<HttpResponse, ApiError> {
    // A file says `correction` in the query, a JSON report in its body.
    let correction = report.correction() || kind.correction();
    let report = report.with_correction(correction);
    if caller.scope == PartnerScope::All {
        tracing::Span::current().record("partner", report.partner_id().as_str());
    }
    let (warnings, expected_loans_check) = expected_loans_check(state, &report).await?;

    let id = Uuid::now_v7();
    let batches = batches_of(id, &report, state.batch_size);
    let record = report_record(id, caller, &report, batches.len());
    let location = format!("/v1/reports/{id}");
    let response_body = serde_json::to_string(&AcceptedReport {
        report: &record,
        warnings,
        expected_loans_check,
    })
    .expect("reports serialize");

    match idempotency_key {
        None => {
            let accepted = state
                .store
                .accept(&record, &batches, None, state.idempotency_ttl)
                .await;
            settle_accept(state, caller, &record, &location, accepted).await?;
        }
        Some(key) => {
            let scope = IdempotencyScope {
                partner_id: record.partner_id.clone(),
                api_key_name: caller.key_name.clone(),
                key,
            };
            let fingerprint = idempotency::fingerprint(&report);
            match state
                .store
                .claim_idempotency(&scope, IDEMPOTENCY_CLAIM_TTL)
                .await?
            {
                IdempotencyClaim::InProgress => return Err(ApiError::IdempotencyInProgress),
                IdempotencyClaim::Completed(first)
                    if idempotency::matches(&first.fingerprint, &report) =>
                {
                    return Ok(replay(first));
                }
                IdempotencyClaim::Completed(first) => {
                    return Err(ApiError::IdempotencyKeyReused(
                        reused_detail(state, &scope, &first, &report).await,
                    ));
                }
                IdempotencyClaim::Claimed { token } => {
                    let accept = IdempotentAccept {
                        scope,
                        token,
                        response: RecordedResponse {
                            fingerprint,
                            status: 202,
                            location: Some(location.clone()),
                            body: response_body.clone(),
                        },
                    };
                    let accepted = state
                        .store
                        .accept(&record, &batches, Some(&accept), state.idempotency_ttl)
                        .await;
                    let settled = settle_accept(state, caller, &record, &location, accepted).await;
                    if settled.is_err() {
                        // No 202: free the key for the MIS's retry, even when the outcome is
                        // unknown (a kept claim refused every retry 409 until it expired).
                        // Safe: the release deletes only a claim still in progress under this
                        // token, so an accept that completed it keeps its answer for the
                        // retry to replay; and an accept that lands later finds its claim
                        // gone and writes nothing (CLAIMLOST). If the store is away this
                        // fails too, and the claim expires after IDEMPOTENCY_CLAIM_TTL.
                        let _ = state
                            .store
                            .release_idempotency(&accept.scope, &accept.token)
                            .await;
                    }
                    settled?;
                }
            }
        }
    }
    tracing::Span::current().record("report_id", tracing::field::display(id));
    state.metrics.report_accepted(&record);
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, location))
        .content_type("application/json")
        .body(response_body))
}

/// Says what differs from the report the key was first used for, read from the store (the
/// recorded answer's `Location` names it); without it, just that it is another report.
async fn reused_detail(
    state: &AppState,
    scope: &IdempotencyScope,
    first: &RecordedResponse,
    report: &RepaymentReport,
) -> String {
    let first_id = first
        .location
        .as_deref()
        .and_then(|l| l.strip_prefix("/v1/reports/"))
        .and_then(|id| Uuid::parse_str(id).ok());
    let differences = match first_id {
        Some(id) => match state.store.report(&scope.partner_id, id).await {
            Ok(Some((stored, batches))) => idempotency::differences(&stored, &batches, report),
            _ => vec![],
        },
        None => vec![],
    };
    idempotency::reused_detail(&differences)
}

/// Turns an accept whose outcome is unknown (Redis took the script but its answer was lost)
/// into the truth where it can be had: the report's id was chosen before the accept, so if
/// it can be read now, it was stored and the answer is the 202. If it can't be read, it may
/// still land: the MIS is told so, with where to look, never "nothing was stored".
async fn settle_accept(
    state: &AppState,
    caller: &Caller,
    record: &Report,
    location: &str,
    accepted: Result<(), StoreError>,
) -> Result<(), ApiError> {
    match accepted {
        Ok(()) => Ok(()),
        Err(StoreError::OutcomeUnknown(reason)) => {
            tracing::warn!(%reason, report_id = %record.id, "accept not confirmed; looking for the report");
            match state.store.report(&record.partner_id, record.id).await {
                Ok(Some(_)) => Ok(()),
                _ => Err(ApiError::OutcomeUnknown {
                    location: location.to_owned(),
                }),
            }
        }
        // Stored on the master, but a failover may still lose it: the MIS must not take it
        // for a 202. Its retry with the same key is answered from what the store then has.
        Err(StoreError::NotReplicated(reason)) => {
            tracing::warn!(%reason, report_id = %record.id, "accept not acknowledged by the replicas");
            Err(ApiError::OutcomeUnknown {
                location: location.to_owned(),
            })
        }
        // A branch learns which report has the loan only when the report is its own: the id
        // is what it needs to choose between leaving the loan out and a correction, and it
        // tells nothing of another branch. An earlier report no longer kept counts as another's.
        Err(StoreError::AlreadyReported(earlier)) if caller.role != Role::Admin => {
            Err(super::problem::already_reported(&earlier, |e| {
                e.branch.as_deref() == Some(caller.branch.as_str())
            }))
        }
        Err(error) => Err(error.into()),
    }
}

/// What `POST /v1/repayments` would store and send, without storing anything.
#[derive(Debug, Serialize, ToSchema)]
pub struct NormalizedReport {
    #[schema(example = "123")]
    pub partner_id: String,
    pub column_format: ColumnFormat,
    #[schema(example = "2026-10")]
    pub period: Option<String>,
    #[schema(example = 2)]
    pub repayment_count: usize,
    #[schema(example = "65.00")]
    pub total_amount: String,
    #[schema(example = 1)]
    pub batch_count: usize,
    /// The bodies of the calls to Kiva's repayments endpoint, one per batch, exactly as they
    /// would be sent: `client_id` only for three-column partners, `amount` a JSON number with
    /// the digits received.
    #[schema(value_type = Vec<Object>, example = json!([{"repayments": [{"loan_id": "L-1042970", "client_id": "C-184729", "amount": 25.00}]}]))]
    pub kiva_requests: Vec<Box<serde_json::value::RawValue>>,
    /// Repayments PA2 will ignore (Kiva does not expect their loans).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Violation>,
    pub expected_loans_check: Option<ExpectedLoansCheck>,
    /// The report corrects one already sent for the period (from the body, or a file's query).
    pub correction: bool,
    /// Checks `POST /v1/repayments` makes that this answer could not (e.g. the store was
    /// unreachable, so whether a loan was already reported this period is not known): sending
    /// may still be refused for them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_checked: Vec<String>,
}

/// The 202 answer: the stored report, and what intake found against Kiva's loans.
#[derive(Debug, Serialize, ToSchema)]
pub struct AcceptedReport<'a> {
    #[serde(flatten)]
    pub report: &'a Report,
    /// Repayments PA2 will ignore, each at its JSON Pointer: Kiva does not list their loans,
    /// or lists them in a status other than payingBack or defaulted. The report was accepted
    /// all the same (the partner's `unexpected_loans = "reject"` refuses it instead).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Violation>,
    pub expected_loans_check: ExpectedLoansCheck,
}

/// Compares the report with Kiva's expected loans; for a partner that rejects unexpected
/// loans, refuses the report naming them.
async fn expected_loans_check(
    state: &AppState,
    report: &RepaymentReport,
) -> Result<(Vec<Violation>, ExpectedLoansCheck), ApiError> {
    let (warnings, check) = state
        .expected_loans
        .check(state.store.as_ref(), report)
        .await?;
    let rule = state
        .unexpected_loans
        .get(report.partner_id())
        .copied()
        .unwrap_or_default();
    if rule == UnexpectedLoans::Reject && !warnings.is_empty() {
        let total = warnings.len();
        let mut listed = crate::intake::Violations::default();
        warnings.into_iter().for_each(|w| listed.push(w));
        let (listed, _) = listed.into_listed();
        return Err(ApiError::InvalidReport { listed, total });
    }
    Ok((warnings, check))
}

impl NormalizedReport {
    fn of(report: &RepaymentReport, batch_size: usize) -> Self {
        let format = report.column_format();
        let kiva_requests: Vec<_> = report
            .batches(batch_size)
            .map(|batch| {
                let repayments = batch.iter().map(|r| r.to_kiva_json(format)).collect();
                serde_json::value::to_raw_value(&KivaRequest { repayments })
                    .expect("Kiva requests serialize")
            })
            .collect();
        Self {
            partner_id: report.partner_id().to_string(),
            column_format: format,
            period: Some(report.period().to_string()),
            repayment_count: report.repayments().len(),
            total_amount: report.total_amount().to_string(),
            batch_count: kiva_requests.len(),
            kiva_requests,
            warnings: Vec::new(),
            expected_loans_check: None,
            correction: report.correction(),
            not_checked: Vec::new(),
        }
    }
}

/// Check a report without storing it.
///
/// Runs every check of `POST /v1/repayments` but the Idempotency-Key's (including whether a
/// loan was already reported this period, read without claiming it) and answers with the
/// normalized report: the exact calls that would go to Kiva. Nothing is stored or queued. A
/// check that could not be made is named in `not_checked`.
#[utoipa::path(
    post,
    path = "/v1/repayments/validate",
    tag = "repayments",
    security(("api_key" = [])),
    request_body(
        description = "The report: JSON (its schema is `schemas/repayment-report.schema.json`, also served at `/v1/schemas/repayment-report.json`); or a CSV file (UTF-8, with or without BOM; `,` `;` or tab, detected or given as `delimiter`; an optional header `loan_id`, `client_id`, `amount`, else PA2's order: loan, amount or loan, client, amount); or an Excel workbook (first sheet unless `sheet` names another). A file is read into the same report as JSON and checked by the same rules; each problem also gives its `line` (CSV) or `sheet`, `row`, `column` and `cell` (Excel).",
        content(
            (RepaymentReportBody = "application/json"),
            (String = "text/csv", example = json!("loan_id,client_id,amount\nL-1042970,C-184729,25.00\nL-1043223,C-481395,40.50\n")),
            (WorkbookBody = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
        )
    ),
    params(
        ("period" = Option<String>, Query, pattern = "^20[0-9]{2}-(0[1-9]|1[0-2])$", example = "2026-10",
         description = "Files only: the reporting month, as `period` in a JSON report."),
        ("correction" = Option<bool>, Query, description = "Files only: the report corrects one already sent for the period."),
        ("partner_id" = Option<String>, Query, pattern = "^[A-Za-z0-9_-]{1,64}$", example = "102",
         description = "Files only: as `partner_id` in a JSON report (admin keys that serve several partners)."),
        ("sheet" = Option<String>, Query, description = "Excel only: the sheet to read; the first by default.", example = "October"),
        ("delimiter" = Option<String>, Query, description = "CSV only: `,` `;` or `tab`; detected from the first line by default (also accepted as a `delimiter` parameter of the content type).", example = ";"),
    ),
    responses(
        (status = 200, description = "The report is valid; this is what would be sent.", body = NormalizedReport),
        (status = 400, description = "The body is not JSON, a file is not what its content type says or a workbook holds what no report needs (`/problems/malformed-file`), or a query parameter is malformed.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key may not submit for the named partner.", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body was not received in full within `server.body_read_timeout_secs` (120 s by default); nothing was stored.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Over the size limits.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not `application/json`, `text/csv` or an `.xlsx` workbook.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Every violation, each with a JSON Pointer (and for a file its line or cell), as `POST /v1/repayments` would refuse the report: loans already reported this period by an earlier report (unless a correction), a branch's correction of another branch's loans, loans Kiva does not expect for a partner that rejects them.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable for the expected-loans check. When only the period's loans could not be read, the answer is 200 and `not_checked` says so.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn validate(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let kind = body_kind(&request)?;
    let report = read_report(&state, &caller, &kind, request.headers(), payload).await?;
    Ok(HttpResponse::Ok().json(check_report(&state, &caller, &kind, report).await?))
}

/// Stands in the OpenAPI document for `schemas/repayment-report.schema.json`, which replaces
/// it verbatim when the document is built (see `openapi::document`).
#[derive(ToSchema)]
#[schema(as = RepaymentReport)]
#[allow(dead_code)]
pub struct RepaymentReportBody {
    repayments: Vec<serde_json::Value>,
}

/// An `.xlsx` workbook, e.g. `examples/files/repayments.xlsx`.
#[derive(ToSchema)]
#[schema(as = Workbook, value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct WorkbookBody(Vec<u8>);

fn replay(first: RecordedResponse) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(first.status)
        .unwrap_or(actix_web::http::StatusCode::ACCEPTED);
    let mut response = HttpResponse::build(status);
    response
        .insert_header((REPLAYED_HEADER, "true"))
        .content_type("application/json");
    if let Some(location) = first.location {
        response.insert_header((header::LOCATION, location));
    }
    response.body(first.body)
}

/// What the body is, from its Content-Type, and for a file what the query parameters add.
#[derive(Debug)]
pub(crate) enum BodyKind {
    Json,
    File {
        kind: FileKind,
        fields: FileFields,
        correction: bool,
    },
}

impl BodyKind {
    fn correction(&self) -> bool {
        match self {
            BodyKind::Json => false,
            BodyKind::File { correction, .. } => *correction,
        }
    }
}

pub const CSV: &str = "text/csv";
pub const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

/// The query parameters of a report sent as a file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQuery {
    period: Option<String>,
    partner_id: Option<String>,
    #[serde(default)]
    correction: bool,
    sheet: Option<String>,
    delimiter: Option<String>,
}

/// Query parameters that carry a file's report fields (a JSON report has them in its body).
const FILE_PARAMETERS: [&str; 5] = ["period", "correction", "partner_id", "sheet", "delimiter"];

fn body_kind(request: &HttpRequest) -> Result<BodyKind, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let (essence, parameters) = content_type.split_once(';').unwrap_or((content_type, ""));
    let essence = essence.trim().to_ascii_lowercase();
    if essence == "application/json" {
        // Silently ignoring `?period=` here would let a JSON report look like it had one.
        let file_parameter = url::form_urlencoded::parse(request.query_string().as_bytes())
            .any(|(name, _)| FILE_PARAMETERS.contains(&name.as_ref()));
        if file_parameter {
            return Err(ApiError::BadRequest(
                "query parameters (period, correction, partner_id, sheet, delimiter) are for CSV \
                 and Excel files; a JSON report carries period, correction and partner_id in its body"
                    .into(),
            ));
        }
        return Ok(BodyKind::Json);
    }
    if essence != CSV && essence != XLSX {
        return Err(ApiError::UnsupportedMediaType);
    }
    let query: FileQuery = serde_urlencoded::from_str(request.query_string())
        .map_err(|e| ApiError::BadRequest(format!("the query string is malformed: {e}")))?;
    let kind = if essence == CSV {
        let given = delimiter_parameter(parameters).or(query.delimiter.as_deref());
        let delimiter = match given {
            None => None,
            Some(text) => Some(crate::intake::delimiter_named(text).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "delimiter {text:?} is not one of `,` `;` or tab (`tab`)"
                ))
            })?),
        };
        FileKind::Csv { delimiter }
    } else {
        FileKind::Xlsx { sheet: query.sheet }
    };
    Ok(BodyKind::File {
        kind,
        fields: FileFields {
            period: query.period,
            partner_id: query.partner_id,
        },
        correction: query.correction,
    })
}

/// The `delimiter` parameter of a CSV content type: `delimiter=;` (the `;` is its value, not
/// a separator), `delimiter=";"`, `delimiter=tab`.
fn delimiter_parameter(parameters: &str) -> Option<&str> {
    const NAME: &str = "delimiter=";
    let at = parameters.to_ascii_lowercase().find(NAME)? + NAME.len();
    let rest = &parameters[at..];
    if let Some(quoted) = rest.strip_prefix('"') {
        return quoted.split('"').next();
    }
    if rest.starts_with(';') {
        return Some(";");
    }
    rest.split(';').next().map(str::trim)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY_LEN
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
            ))
        })?;
    Ok(Some(key.to_owned()))
}

/// Reads the body and the report in it. A body larger than `LARGE_BODY_BYTES` is read and
/// parsed only with one of the intake's few permits, and parsed on its parser threads, so a
/// crowd of large (or hostile) bodies queues for the permits, bounded in memory, while small
/// reports are read at once and the HTTP workers stay free to answer them. A workbook always
/// is: its cost is what it unpacks to, not its size.
async fn read_report(
    state: &web::Data<AppState>,
    caller: &Caller,
    kind: &BodyKind,
    headers: &HeaderMap,
    payload: web::Payload,
) -> Result<RepaymentReport, ApiError> {
    let (body, permit) = read_body(payload, headers, state).await?;
    parse_report(state, caller, kind, body, permit).await
}

/// The report in a body already read (the pages' upload reads its file from a form), parsed as
/// `read_report` parses it: a large body or a workbook only with a large-body permit, on a
/// parser thread.
pub(crate) async fn parse_report(
    state: &AppState,
    caller: &Caller,
    kind: &BodyKind,
    body: web::Bytes,
    mut permit: Option<OwnedSemaphorePermit>,
) -> Result<RepaymentReport, ApiError> {
    if permit.is_none() && body.len() > LARGE_BODY_BYTES {
        permit = Some(state.intake.large_body_permit().await);
    }
    let file = match kind {
        BodyKind::Json => None,
        BodyKind::File { kind, fields, .. } => Some((kind.clone(), fields.clone())),
    };
    if permit.is_none() && matches!(file, Some((FileKind::Xlsx { .. }, _))) {
        permit = Some(state.intake.large_body_permit().await);
    }
    let scope = caller.scope.clone();
    let report = match (permit, file) {
        (None, None) => state.intake.read(&body, &scope),
        (None, Some((kind, fields))) => state.intake.read_file(&body, &kind, &fields, &scope),
        (Some(permit), file) => {
            let report = state
                .intake
                .on_parser_thread(move |intake| match file {
                    None => intake.read(&body, &scope),
                    Some((kind, fields)) => intake.read_file(&body, &kind, &fields, &scope),
                })
                .await;
            drop(permit);
            report
        }
    };
    Ok(report?)
}

/// The whole body, as `body::read_limited` reads it; a declared length over `max` is refused
/// before anything is read.
async fn read_body(
    mut payload: web::Payload,
    headers: &HeaderMap,
    state: &AppState,
) -> Result<(web::Bytes, Option<OwnedSemaphorePermit>), ApiError> {
    let declared = declared_length(headers);
    let max = state.max_body_bytes;
    if declared.is_some_and(|n| n > max) {
        return Err(BodyError::TooLarge { max }.into());
    }
    let mut deadline = ReadDeadline::start(state.body_read_timeout);
    Ok(read_limited(&mut payload, declared, max, &state.intake, &mut deadline).await?)
}

/// The `Content-Length` the client declared, if it is a number.
pub(crate) fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}
