//! The OpenAPI 3.1 document: built by utoipa from the handlers, then given the report body's
//! JSON Schema verbatim, so the documented contract can't be looser than the enforced one.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::partners::ExpectedLoansView;
use super::problem::{ApiError, Problem};
use super::repayments::{NormalizedReport, WorkbookBody};
use super::reports::{ReportDetail, ReportList};
use crate::intake::Violation;
use crate::intake::schema::SCHEMA_DOCUMENT;
use crate::store::{
    Attempt, Batch, BatchResult, BatchState, ExpectedLoan, KivaProblem, OperatorAction,
    OperatorActionKind, RefreshStatus, RepaymentState, RepaymentView, Report, ReportStatus,
    StoredRepayment,
};

pub const OPENAPI_PATH: &str = "/api-docs/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "repayment-gateway",
        description = "Accepts monthly loan repayment reports from an MFI's MIS, checks them, queues them durably and delivers them to Kiva's Partner API.\n\nAuthenticate with the `X-Api-Key` header. Errors are RFC 9457 `application/problem+json`; a refused report lists every problem with a JSON Pointer.\n\nKiva Coordinators and operators: the month, the reports and what needs attention are on [the gateway's pages](/web/) (sign in with an API key).",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    servers((url = "/", description = "This gateway")),
    paths(
        super::repayments::submit,
        super::repayments::validate,
        super::reports::get_report,
        super::reports::list_reports,
        super::periods::list_periods,
        super::periods::get_period,
        super::periods::not_reported,
        super::periods::not_expected,
        super::batches::resend,
        super::batches::mark_delivered,
        super::partners::refresh_expected_loans,
        super::partners::expected_loans,
        super::report_schema,
        super::health::live,
        super::health::ready,
        super::metrics::scrape,
    ),
    components(schemas(
        Problem, Violation, Report, ReportDetail, ReportList, Batch, StoredRepayment,
        RepaymentView, ReportStatus, BatchState, RepaymentState, NormalizedReport, Attempt,
        BatchResult, KivaProblem, OperatorAction, OperatorActionKind, ExpectedLoansView,
        ExpectedLoan, RefreshStatus, WorkbookBody
    )),
    modifiers(&ApiKeyScheme),
    tags(
        (name = "repayments", description = "Submit and check repayment reports"),
        (name = "reports", description = "Follow what happened to each report"),
        (name = "periods", description = "The month: what was reported, what Kiva expects, and whether it is ready to finalize in PA2"),
        (name = "operators", description = "Decide about batches that need attention (admin keys)"),
        (name = "reconcile", description = "Kiva's expected loans, to close the month (admin keys)"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
struct ApiDoc;

struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                super::auth::API_KEY_HEADER,
                "A key issued by the gateway's operator (`repayment-gateway new-api-key`); it fixes the partner and branch.",
            ))),
        );
    }
}

/// The document as served at `/api-docs/openapi.json` and written by `repayment-gateway openapi`.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    let mut schema = SCHEMA_DOCUMENT.clone();
    if let Some(object) = schema.as_object_mut() {
        // `$id` would make the embedded schema resolve references against another base.
        object.remove("$schema");
        object.remove("$id");
    }
    doc["components"]["schemas"]["RepaymentReport"] = schema;
    add_problem_examples(&mut doc);
    file_parameter_examples_in_schemas(&mut doc);
    doc
}

/// Moves the example of each query parameter of an operation that takes a body (`period`,
/// `partner_id`, `sheet`, `delimiter`: files only) into its schema's `examples`. Swagger UI's
/// "Try it out" fills a parameter's `example` (or its schema's `example` or `default`) in and
/// sends it, and a JSON report with any of them is refused (400); the schema's `examples`
/// (JSON Schema 2020-12) it leaves out.
fn file_parameter_examples_in_schemas(doc: &mut serde_json::Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    let operations = paths
        .values_mut()
        .filter_map(|operations| operations.as_object_mut())
        .flat_map(|operations| operations.values_mut())
        .filter(|operation| operation.get("requestBody").is_some());
    for operation in operations {
        let Some(parameters) = operation["parameters"].as_array_mut() else {
            continue;
        };
        for parameter in parameters.iter_mut().filter(|p| p["in"] == "query") {
            let Some(example) = parameter.as_object_mut().and_then(|p| p.remove("example")) else {
                continue;
            };
            parameter["schema"]["examples"] = serde_json::json!([example]);
        }
    }
}

/// Gives each error answer of each operation its own examples, made by the code that makes
/// the answers: the `Problem` schema's one example (an invalid report) would otherwise stand
/// for every error.
fn add_problem_examples(doc: &mut serde_json::Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, operations) in paths.iter_mut() {
        let Some(operations) = operations.as_object_mut() else {
            continue;
        };
        for (method, operation) in operations.iter_mut() {
            let Some(responses) = operation["responses"].as_object_mut() else {
                continue;
            };
            for (status, response) in responses.iter_mut() {
                let Some(content) = response
                    .pointer_mut("/content/application~1problem+json")
                    .and_then(|c| c.as_object_mut())
                else {
                    continue;
                };
                let examples: serde_json::Map<_, _> = problem_examples(path, method, status)
                    .into_iter()
                    .map(|(name, error)| {
                        let problem = serde_json::to_value(error.problem()).expect("serializes");
                        let summary = problem["title"].clone();
                        (
                            name.to_owned(),
                            serde_json::json!({"summary": summary, "value": problem}),
                        )
                    })
                    .collect();
                if !examples.is_empty() {
                    content.insert("examples".into(), examples.into());
                }
            }
        }
    }
}

/// The answers an operation gives with `status`, named, as the handlers make them.
fn problem_examples(path: &str, method: &str, status: &str) -> Vec<(&'static str, ApiError)> {
    let submits = path.starts_with("/v1/repayments");
    let batch = path.starts_with("/v1/batches/");
    match (status, method) {
        ("400", _) if submits => vec![(
            "malformed-json",
            ApiError::MalformedJson(
                "the body is not valid JSON: expected `,` or `]` (line 4, column 9)".into(),
            ),
        )],
        ("400", _) => vec![(
            "bad-request",
            ApiError::BadRequest("limit must be between 1 and 200".into()),
        )],
        ("401", _) => vec![("unauthenticated", ApiError::Unauthenticated)],
        ("403", _) if submits => vec![(
            "forbidden",
            ApiError::Forbidden("this API key may not submit reports for partner \"124\"".into()),
        )],
        ("403", _) if batch => vec![(
            "forbidden",
            ApiError::Forbidden("only an admin key may resend or close a batch".into()),
        )],
        ("403", _) => vec![(
            "forbidden",
            ApiError::Forbidden("this API key may not read reports of partner \"124\"".into()),
        )],
        ("404", _) if batch => vec![(
            "not-found",
            ApiError::NotFound("no such batch for this API key".into()),
        )],
        ("404", _) => vec![(
            "not-found",
            ApiError::NotFound("no such report for this API key".into()),
        )],
        ("409", _) if path.ends_with("/resend") => vec![(
            "conflict",
            ApiError::Conflict(
                "the batch is delivered; only a held, failed or rejected batch can be resent"
                    .into(),
            ),
        )],
        ("409", _) if batch => vec![(
            "conflict",
            ApiError::Conflict(
                "the batch is queued; only a held batch can be marked delivered".into(),
            ),
        )],
        ("409", _) => vec![("idempotency-in-progress", ApiError::IdempotencyInProgress)],
        ("408", _) => vec![(
            "request-timeout",
            ApiError::RequestTimeout(
                "the body was not received in full within 120 s; send it again".into(),
            ),
        )],
        ("413", _) => vec![(
            "payload-too-large",
            ApiError::PayloadTooLarge(
                "the report has more than 10000 repayments (at least 10001); at most 10000 are \
                 accepted in one report: split it"
                    .into(),
            ),
        )],
        ("415", _) => vec![("unsupported-media-type", ApiError::UnsupportedMediaType)],
        ("422", _) => {
            let mut examples = vec![("invalid-report", invalid_report())];
            if path == "/v1/repayments" {
                examples.push((
                    "idempotency-key-reused",
                    ApiError::IdempotencyKeyReused(
                        "a different report: repayment 3's amount (/repayments/2/amount): \
                         25.00 then 26.00"
                            .into(),
                    ),
                ));
            }
            examples
        }
        ("503", _) if path == "/v1/repayments" => vec![
            ("store-unavailable", ApiError::StoreUnavailable),
            (
                "outcome-unknown",
                ApiError::OutcomeUnknown {
                    location: "/v1/reports/019a4c5e-8f2b-7c3d-9e4f-5a6b7c8d9e0f".into(),
                },
            ),
        ],
        ("503", _) if batch => vec![
            ("store-unavailable", ApiError::StoreUnavailable),
            ("outcome-unknown", ApiError::ChangeUnconfirmed),
        ],
        ("503", _) => vec![("store-unavailable", ApiError::StoreUnavailable)],
        _ => vec![],
    }
}

fn invalid_report() -> ApiError {
    use crate::intake::Violation;
    ApiError::InvalidReport {
        listed: vec![
            Violation::new(
                "/repayments/1/amount",
                "\"1.2345\" has 4 decimal places; at most 3 are allowed",
            ),
            Violation::new(
                "/repayments/3",
                "loan \"L-1042970\" of client \"C-184729\" appears twice, at /repayments/0 \
                 and /repayments/3: send one repayment per loan",
            ),
        ],
        total: 2,
    }
}

/// Pretty-printed, with a final newline, as checked in under `openapi/`.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).expect("serializes");
    text.push('\n');
    text
}
