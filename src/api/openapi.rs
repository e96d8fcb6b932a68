//! The OpenAPI 3.1 document: built by utoipa from the handlers, then given the report body's
//! JSON Schema verbatim, so the documented contract can't be looser than the enforced one.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::partners::ExpectedLoansView;
use super::problem::Problem;
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
        description = "Accepts monthly loan repayment reports from an MFI's MIS, checks them, queues them durably and delivers them to Kiva's Partner API.\n\nAuthenticate with the `X-Api-Key` header. Errors are RFC 9457 `application/problem+json`; a refused report lists every problem with a JSON Pointer.",
        license(name = "Apache-2.0")
    ),
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
    doc
}

/// Pretty-printed, with a final newline, as checked in under `openapi/`.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).expect("serializes");
    text.push('\n');
    text
}
