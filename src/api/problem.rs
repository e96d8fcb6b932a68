//! RFC 9457 `application/problem+json` answers for everything that goes wrong.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::intake::{IntakeError, Violation};
use crate::metrics::IntakeOutcome;
use crate::store::StoreError;

pub const PROBLEM_JSON: &str = "application/problem+json";
/// Seconds an MIS should wait before retrying when the store is unreachable.
pub const STORE_RETRY_AFTER_SECS: u32 = 5;

/// An RFC 9457 problem. `type` identifies the kind of problem; `errors` lists every violation
/// of a report that was refused as invalid.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "/problems/invalid-report",
    "title": "The report is invalid",
    "status": 422,
    "detail": "the report has 1 problem(s); nothing was stored",
    "errors": [{"pointer": "/repayments/0/amount", "detail": "\"1.2345\" has 4 decimal places; at most 3 are allowed"}],
    "error_count": 1
}))]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    #[schema(example = 422)]
    pub status: u16,
    pub detail: String,
    /// Violations of a refused report, in document order: the first 100 at most.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Violation>,
    /// How many violations the report has in all; more than `errors` lists when the list was
    /// cut (then `detail` says so).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = 1)]
    pub error_count: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    MalformedJson(String),
    #[error("{0}")]
    MalformedFile(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("send a valid API key in the X-Api-Key header")]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("another request with this Idempotency-Key is still being processed; retry shortly")]
    IdempotencyInProgress,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body came too slowly (`server.body_read_timeout_secs`).
    #[error("{0}")]
    RequestTimeout(String),
    #[error(
        "send the report as application/json, text/csv or an Excel workbook \
         (application/vnd.openxmlformats-officedocument.spreadsheetml.sheet)"
    )]
    UnsupportedMediaType,
    #[error("the report has {total} problem(s); nothing was stored{}", cut_note(listed.len(), *total))]
    InvalidReport {
        listed: Vec<Violation>,
        total: usize,
    },
    /// What differs from the report the key was first used for.
    #[error("this Idempotency-Key was already used for {0}; use a new key for a new report")]
    IdempotencyKeyReused(String),
    #[error("the report store is unavailable; nothing was stored, retry later")]
    StoreUnavailable,
    /// The store took the write but did not confirm it: it may have been applied. `location`
    /// is where the report will be if it was.
    #[error(
        "the report store did not confirm the write in time, so the report may have been stored: look at {location} before sending it again; a retry with the same Idempotency-Key is always safe"
    )]
    OutcomeUnknown { location: String },
    /// As `OutcomeUnknown`, for a change other than a new report (an operator's action).
    #[error(
        "the report store did not confirm the change in time, so it may have been made: look at the batch again before repeating it"
    )]
    ChangeUnconfirmed,
    #[error(
        "an internal error occurred; nothing is known to be stored, retry with the same Idempotency-Key"
    )]
    Internal,
}

fn cut_note(listed: usize, total: usize) -> String {
    if listed < total {
        format!(
            ". Only the first {listed} are listed, in document order; fix them and send the \
             report again to see the rest"
        )
    } else {
        String::new()
    }
}

impl ApiError {
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::MalformedJson(_) => ("malformed-json", "The body is not valid JSON"),
            ApiError::MalformedFile(_) => ("malformed-file", "The file can't be read"),
            ApiError::BadRequest(_) => ("bad-request", "The request is malformed"),
            ApiError::Unauthenticated => ("unauthenticated", "Missing or unknown API key"),
            ApiError::Forbidden(_) => ("forbidden", "Not allowed for this API key"),
            ApiError::NotFound(_) => ("not-found", "Not found"),
            ApiError::MethodNotAllowed(_) => ("method-not-allowed", "Method not allowed"),
            ApiError::IdempotencyInProgress => (
                "idempotency-in-progress",
                "A request with this Idempotency-Key is in progress",
            ),
            ApiError::Conflict(_) => ("conflict", "Not possible in the current state"),
            ApiError::PayloadTooLarge(_) => ("payload-too-large", "The report is too large"),
            ApiError::RequestTimeout(_) => ("request-timeout", "The body came too slowly"),
            ApiError::UnsupportedMediaType => {
                ("unsupported-media-type", "Unsupported content type")
            }
            ApiError::InvalidReport { .. } => ("invalid-report", "The report is invalid"),
            ApiError::IdempotencyKeyReused(_) => (
                "idempotency-key-reused",
                "Idempotency-Key reused with another body",
            ),
            ApiError::StoreUnavailable => ("store-unavailable", "The report store is unavailable"),
            ApiError::OutcomeUnknown { .. } => {
                ("outcome-unknown", "The report may have been stored")
            }
            ApiError::ChangeUnconfirmed => ("outcome-unknown", "The change may have been made"),
            ApiError::Internal => ("internal", "Internal error"),
        }
    }

    pub fn problem(&self) -> Problem {
        let (slug, title) = self.kind();
        Problem {
            problem_type: format!("/problems/{slug}"),
            title: title.to_owned(),
            status: self.status_code().as_u16(),
            detail: self.to_string(),
            errors: match self {
                ApiError::InvalidReport { listed, .. } => listed.clone(),
                _ => Vec::new(),
            },
            error_count: match self {
                ApiError::InvalidReport { total, .. } => Some(*total),
                _ => None,
            },
        }
    }

    /// How the intake counter counts a submission that ended in this error.
    pub fn intake_outcome(&self) -> IntakeOutcome {
        match self {
            ApiError::MalformedJson(_)
            | ApiError::MalformedFile(_)
            | ApiError::BadRequest(_)
            | ApiError::UnsupportedMediaType
            | ApiError::RequestTimeout(_)
            | ApiError::InvalidReport { .. } => IntakeOutcome::Invalid,
            ApiError::PayloadTooLarge(_) => IntakeOutcome::TooLarge,
            ApiError::IdempotencyInProgress
            | ApiError::IdempotencyKeyReused(_)
            | ApiError::Conflict(_) => IntakeOutcome::Conflict,
            ApiError::Unauthenticated | ApiError::Forbidden(_) => IntakeOutcome::Forbidden,
            ApiError::StoreUnavailable
            | ApiError::OutcomeUnknown { .. }
            | ApiError::ChangeUnconfirmed => IntakeOutcome::Unavailable,
            ApiError::NotFound(_) | ApiError::MethodNotAllowed(_) | ApiError::Internal => {
                IntakeOutcome::Error
            }
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::MalformedFile(_) | ApiError::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::IdempotencyInProgress | ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::InvalidReport { .. } | ApiError::IdempotencyKeyReused(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::StoreUnavailable
            | ApiError::OutcomeUnknown { .. }
            | ApiError::ChangeUnconfirmed => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
        match self {
            ApiError::StoreUnavailable => {
                response.insert_header((header::RETRY_AFTER, STORE_RETRY_AFTER_SECS));
            }
            ApiError::ChangeUnconfirmed => {
                response.insert_header((header::RETRY_AFTER, STORE_RETRY_AFTER_SECS));
            }
            ApiError::OutcomeUnknown { location } => {
                response.insert_header((header::RETRY_AFTER, STORE_RETRY_AFTER_SECS));
                response.insert_header((header::LOCATION, location.as_str()));
            }
            ApiError::IdempotencyInProgress => {
                response.insert_header((header::RETRY_AFTER, 1));
            }
            // The rest of the body may still be on its way: this connection can't carry
            // another request.
            ApiError::RequestTimeout(_) => {
                response.force_close();
            }
            _ => {}
        }
        response.body(serde_json::to_string(&self.problem()).expect("problems serialize"))
    }
}

impl From<IntakeError> for ApiError {
    fn from(e: IntakeError) -> Self {
        match e {
            IntakeError::MalformedJson { .. } => ApiError::MalformedJson(e.to_string()),
            IntakeError::TooManyRepayments { .. } | IntakeError::TooLargeUnpacked(_) => {
                ApiError::PayloadTooLarge(e.to_string())
            }
            IntakeError::MalformedFile(message) => ApiError::MalformedFile(message),
            IntakeError::PartnerNotAllowed(_) => ApiError::Forbidden(e.to_string()),
            IntakeError::Invalid { listed, total } => ApiError::InvalidReport { listed, total },
            IntakeError::ParserFailed => {
                tracing::error!("a report parser thread failed");
                ApiError::Internal
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(reason) => {
                tracing::warn!(%reason, "store unavailable");
                ApiError::StoreUnavailable
            }
            StoreError::ClaimLost => ApiError::IdempotencyInProgress,
            // The accept handles its own (it knows where the report would be); elsewhere, an
            // operator action, the caller is told to look at the batch again.
            StoreError::OutcomeUnknown(reason) | StoreError::NotReplicated(reason) => {
                tracing::warn!(%reason, "store write not confirmed");
                ApiError::ChangeUnconfirmed
            }
            StoreError::AlreadyReported(earlier) => already_reported(&earlier, |_| true),
            StoreError::OtherBranchLoans(positions) => {
                let mut listed = crate::intake::Violations::default();
                for position in positions {
                    listed.push(Violation::new(
                        format!("/repayments/{position}/loan_id"),
                        "this loan was reported by another branch office this period: a \
                         branch corrects only its own branch's loans; ask an admin to correct \
                         it, or leave it out"
                            .to_owned(),
                    ));
                }
                let (listed, total) = listed.into_listed();
                ApiError::InvalidReport { listed, total }
            }
            StoreError::Other(reason) => {
                tracing::error!(%reason, "store error");
                ApiError::Internal
            }
        }
    }
}

/// What an MIS does about a loan already reported in the period. Where a person reads it, the
/// upload page, says it with its own checkbox instead (`web::pages::upload`).
pub(crate) const SEND_AS_CORRECTION: &str =
    "Leave it out, or send \"correction\": true if this report corrects that one";

/// The refusal of loans reported earlier in the period. `detailed(earlier)` says whether the
/// caller may learn where the earlier report has the loan: an admin always, a branch key for
/// its own branch's reports only; to anyone else, another branch's report is not named.
pub(crate) fn already_reported(
    earlier: &[crate::store::EarlierReport],
    detailed: impl Fn(&crate::store::EarlierReport) -> bool,
) -> ApiError {
    let mut listed = crate::intake::Violations::default();
    for e in earlier {
        let pointer = format!("/repayments/{}/loan_id", e.position);
        let message = if detailed(e) {
            let place = e
                .earlier_position
                .map(|at| format!(" (its /repayments/{at})"))
                .unwrap_or_default();
            format!(
                "this loan was already reported in this period, in report {}{place}: \
                 PA2 would count it twice. {SEND_AS_CORRECTION}",
                e.report_id
            )
        } else {
            "this loan was already reported by another branch office this period: PA2 would \
             count it twice. Leave it out; only an admin key may correct another branch's loan"
                .to_owned()
        };
        listed.push(Violation::new(pointer, message));
    }
    let (listed, total) = listed.into_listed();
    ApiError::InvalidReport { listed, total }
}
