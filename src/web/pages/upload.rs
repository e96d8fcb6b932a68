//! Upload: a branch clerk picks the MIS export (CSV, Excel or JSON), sees every problem by row
//! and column, fixes the file and picks it again; "Send" checks again and stores it. The form
//! carries an idempotency key made when the page was drawn, so a double click stores one
//! report. Reading, checking and storing are the API's own (`api::repayments`).

use actix_multipart::Multipart;
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use maud::{Markup, html};

use crate::api::AppState;
use crate::api::problem::ApiError;
use crate::api::repayments::{BodyKind, accept_report, check_report, parse_report};
use crate::intake::{FileFields, FileKind, PartnerScope, Violation};
use crate::web::session::{self, WebConfig};
use crate::web::{Ctx, Failure, PageError, html as page_html, layout, see_other};

/// What the form sent.
#[derive(Default)]
struct Form {
    csrf: Option<String>,
    idempotency_key: Option<String>,
    period: Option<String>,
    partner: Option<String>,
    correction: bool,
    send: bool,
    file_name: String,
    file: Vec<u8>,
}

pub async fn form(
    req: HttpRequest,
    state: web::Data<AppState>,
    config: web::Data<WebConfig>,
) -> Result<HttpResponse, PageError> {
    let ctx = Ctx::of(&req, &state, &config).await?;
    let lang = ctx.lang;
    let body = html! {
        h1 { (lang.t("upload.title")) }
        p { (lang.t("upload.intro")) }
        (upload_form(&ctx, &state, &Form::default(), None))
    };
    Ok(ctx.page(lang.t("upload.title"), body))
}

fn upload_form(ctx: &Ctx, state: &AppState, sent: &Form, key: Option<&str>) -> Markup {
    let lang = ctx.lang;
    // A new key for a new page; the same key again when the page answers a check, so the
    // "send" that follows it is one report however often it is clicked.
    let key = key.map_or_else(session::random_token, str::to_owned);
    html! {
        form.card method="post" action="/web/upload" enctype="multipart/form-data" {
            input type="hidden" name="csrf" value=(ctx.viewer.csrf);
            input type="hidden" name="idempotency_key" value=(key);
            @if matches!(ctx.viewer.caller.scope, PartnerScope::All) {
                label for="partner" { (lang.t("upload.partner")) }
                select id="partner" name="partner" {
                    @for p in &state.partners {
                        option value=(p) selected[sent.partner.as_deref() == Some(p.as_str())] { (p) }
                    }
                }
            }
            label for="file" { (lang.t("upload.file")) }
            input id="file" name="file" type="file" required accept=".csv,.xlsx,.json,text/csv,application/json";
            p.hint { (lang.t("upload.file_hint")) }
            label for="period" { (lang.t("upload.period")) }
            input id="period" name="period" type="text" inputmode="numeric" pattern="[0-9]{4}-[0-9]{2}"
                placeholder="2026-10" value=[sent.period.as_deref()] aria-describedby="period-hint";
            p.hint id="period-hint" { (lang.t("upload.period_hint")) }
            label.check { input type="checkbox" name="correction" value="true" checked[sent.correction]; " " (lang.t("upload.correction")) }
            button type="submit" name="step" value="check" id="check" { (lang.t("upload.check")) }
            " "
            button type="submit" name="step" value="send" id="send" { (lang.t("upload.send")) }
        }
    }
}

pub async fn upload(
    req: HttpRequest,
    state: web::Data<AppState>,
    config: web::Data<WebConfig>,
    payload: Multipart,
) -> Result<HttpResponse, PageError> {
    let ctx = Ctx::of(&req, &state, &config).await?;
    let lang = ctx.lang;
    let sent = read_form(payload, state.max_body_bytes).await;
    let Ok(sent) = sent else {
        // A form that could not be read at all, or a file over the limit: no token checked yet,
        // and nothing was changed.
        return Err(ctx.fail(Failure::BadRequest));
    };
    if !session::tokens_match(sent.csrf.as_deref(), &ctx.viewer.csrf) {
        return Err(ctx.fail(Failure::Csrf));
    }
    let key = sent
        .idempotency_key
        .clone()
        .filter(|k| k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| ctx.fail(Failure::BadRequest))?;
    let name = sent.file_name.to_ascii_lowercase();
    let kind = if name.ends_with(".json") {
        BodyKind::Json
    } else {
        BodyKind::File {
            kind: if name.ends_with(".xlsx") {
                FileKind::Xlsx { sheet: None }
            } else {
                FileKind::Csv { delimiter: None }
            },
            fields: FileFields {
                period: sent.period.clone().filter(|p| !p.is_empty()),
                partner_id: sent.partner.clone().filter(|p| !p.is_empty()),
            },
            correction: sent.correction,
        }
    };
    let caller = &ctx.viewer.caller;
    let report = match parse_report(
        &state,
        caller,
        &kind,
        web::Bytes::from(sent.file.clone()),
        None,
    )
    .await
    {
        Ok(report) => report,
        Err(error) => return Ok(refused(&ctx, &state, &sent, &key, error)),
    };
    if !sent.send {
        let checked = check_report(&state, &report)
            .await
            .map_err(|e| ctx.api(e))?;
        let body = html! {
            h1 { (lang.t("upload.title")) }
            p.notice.good role="status" id="checked" {
                (lang.f("upload.ok", &[("n", &checked.repayment_count), ("amount", &checked.total_amount),
                                       ("period", &checked.period.as_deref().unwrap_or("")), ("file", &sent.file_name)]))
            }
            @if !checked.warnings.is_empty() {
                p.notice.warn { (lang.t("upload.warnings")) }
                (problems(&ctx, &checked.warnings))
            }
            (upload_form(&ctx, &state, &sent, Some(&key)))
        };
        return Ok(ctx.page(lang.t("upload.title"), body));
    }
    let answer = match accept_report(&state, caller, &kind, report, Some(key.clone())).await {
        Ok(answer) => answer,
        Err(error) => return Ok(refused(&ctx, &state, &sent, &key, error)),
    };
    let report = answer
        .headers()
        .get(header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .and_then(|l| l.strip_prefix("/v1/reports/"))
        .ok_or_else(|| ctx.fail(Failure::Internal))?;
    Ok(see_other(&format!("/web/reports/{report}?done=sent")))
}

/// The form's fields; the file read up to `max` bytes (the API's body limit).
async fn read_form(mut payload: Multipart, max: usize) -> Result<Form, ()> {
    let mut form = Form::default();
    while let Some(field) = payload.next().await {
        let mut field = field.map_err(drop)?;
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            form.file_name = field
                .content_disposition()
                .and_then(|d| d.get_filename())
                .unwrap_or_default()
                .to_owned();
        }
        let limit = if name == "file" { max } else { 1024 };
        let mut value = Vec::new();
        while let Some(chunk) = field.next().await {
            value.extend_from_slice(&chunk.map_err(drop)?);
            if value.len() > limit {
                return Err(());
            }
        }
        let text = || String::from_utf8_lossy(&value).trim().to_owned();
        match name.as_str() {
            "csrf" => form.csrf = Some(text()),
            "idempotency_key" => form.idempotency_key = Some(text()),
            "period" => form.period = Some(text()),
            "partner" => form.partner = Some(text()),
            "correction" => form.correction = text() == "true",
            "step" => form.send = text() == "send",
            "file" => form.file = value,
            _ => {}
        }
    }
    Ok(form)
}

/// The file's problems, each where the clerk finds it: line (CSV) or cell (Excel), column.
fn problems(ctx: &Ctx, violations: &[Violation]) -> Markup {
    let lang = ctx.lang;
    html! {
        div.table-wrap { table id="problems" {
            thead { tr {
                th scope="col" { (lang.t("upload.row")) }
                th scope="col" { (lang.t("upload.column")) }
                th scope="col" { (lang.t("upload.problem")) }
            } }
            tbody { @for v in violations {
                tr {
                    td { @if let Some(line) = v.line { (lang.f("upload.line", &[("n", &line)])) }
                         @else if let Some(cell) = &v.cell { (lang.f("upload.cell", &[("cell", cell)])) }
                         @else { code { (v.pointer) } } }
                    td { @if let Some(c) = column(v) { (c) } }
                    td lang="en" { (v.detail) }
                }
            } }
        } }
    }
}

/// The column a problem is in: Excel's letter, or (CSV) the field the pointer ends with, which
/// is the column's name in the file's header (`loan_id`, `client_id`, `amount`).
fn column(v: &Violation) -> Option<&str> {
    v.column.as_deref().or_else(|| {
        v.line?;
        v.pointer
            .rsplit('/')
            .next()
            .filter(|field| !field.is_empty() && !field.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// A file (or a send) refused: why, with every problem, and the form to try again.
fn refused(ctx: &Ctx, state: &AppState, sent: &Form, key: &str, error: ApiError) -> HttpResponse {
    let lang = ctx.lang;
    let (status, listed, total) = match &error {
        ApiError::InvalidReport { listed, total } => {
            (StatusCode::UNPROCESSABLE_ENTITY, listed.as_slice(), *total)
        }
        _ => (StatusCode::BAD_REQUEST, &[][..], 0),
    };
    let body = html! {
        h1 { (lang.t("upload.title")) }
        p.notice.bad role="alert" id="refused" {
            @if total > 0 { (lang.f("upload.problems", &[("n", &total), ("file", &sent.file_name)])) }
            @else { (lang.t("upload.refused")) " " span lang="en" { (error.to_string()) } }
        }
        @if !listed.is_empty() { (problems(ctx, listed)) }
        (upload_form(ctx, state, sent, Some(key)))
    };
    let status = match error {
        ApiError::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::IdempotencyInProgress | ApiError::IdempotencyKeyReused(_) => StatusCode::CONFLICT,
        ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
        _ => status,
    };
    page_html(
        status,
        layout::page(lang, Some(ctx), lang.t("upload.title"), body),
    )
}
