//! Upload: a branch clerk picks the MIS export (CSV, Excel or JSON), sees every problem by row
//! and column, fixes the file and picks it again; "Send" checks again and stores it. The form
//! carries an idempotency key made when the page was drawn, so a double click stores one
//! report. Reading, checking and storing are the API's own (`api::repayments`).

use actix_multipart::Multipart;
use actix_web::error::PayloadError;
use actix_web::http::{ConnectionType, StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use futures_util::StreamExt;
use maud::{Markup, html};
use tokio::sync::OwnedSemaphorePermit;

use crate::api::AppState;
use crate::api::body::{BodyError, ReadDeadline, read_limited};
use crate::api::problem::{ApiError, SEND_AS_CORRECTION};
use crate::api::repayments::{
    BodyKind, accept_report, check_report, declared_length, parse_report,
};
use crate::intake::{FileFields, FileKind, PartnerScope, Violation};
use crate::web::i18n::Lang;
use crate::web::layout::total_of_text;
use crate::web::session::{self, WebConfig};
use crate::web::{Ctx, Failure, PageError, html as page_html, layout, see_other};

/// What the form sent.
#[derive(Default)]
struct Form {
    idempotency_key: Option<String>,
    period: Option<String>,
    partner: Option<String>,
    correction: bool,
    send: bool,
    file_name: String,
    file: web::Bytes,
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
    payload: web::Payload,
) -> Result<HttpResponse, PageError> {
    // The session (its cookie) before anything of the body is read, then the form's token
    // before its file is: a forged or stranger's form costs the gateway no file in memory.
    let ctx = Ctx::of(&req, &state, &config).await?;
    let lang = ctx.lang;
    // The multipart parser buffers a part's head, and a boundary line, until it ends, with no
    // limit of its own, and a chunked body declares no length: 6 MiB of one head that never
    // ended were held until the read deadline. So the whole body is counted as it comes.
    let limit = state.max_body_bytes + FORM_OVERHEAD;
    let mut received = 0usize;
    let limited = payload.map(move |chunk| {
        let chunk = chunk?;
        received += chunk.len();
        if received > limit {
            return Err(PayloadError::Overflow);
        }
        Ok(chunk)
    });
    let payload = Multipart::new(req.headers(), limited);
    let (mut sent, permit) = match read_form(&req, payload, &state, &ctx.viewer.csrf).await {
        Ok(read) => read,
        // Refused with the rest of the body unread: the connection can't carry another request.
        Err(refusal) => {
            let mut answer = ctx.fail(refusal).error_response();
            answer.head_mut().set_connection_type(ConnectionType::Close);
            return Ok(answer);
        }
    };
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
    let file = std::mem::take(&mut sent.file);
    let report = match parse_report(&state, caller, &kind, file, permit).await {
        Ok(report) => report,
        Err(error) => return Ok(refused(&ctx, &state, &sent, &key, error)),
    };
    if !sent.send {
        let checked = match check_report(&state, caller, &kind, report).await {
            Ok(checked) => checked,
            Err(error) => return Ok(refused(&ctx, &state, &sent, &key, error)),
        };
        let body = html! {
            h1 { (lang.t("upload.title")) }
            @let values: [(&str, &dyn std::fmt::Display); 4] = [("n", &checked.repayment_count), ("amount", &total_of_text(&checked.total_amount)),
                                       ("period", &checked.period.as_deref().unwrap_or("")), ("file", &sent.file_name)];
            @if checked.not_checked.is_empty() {
                p.notice.good role="status" id="checked" { (lang.f("upload.ok", &values)) }
            } @else {
                // A check that could not be made is said, never passed as "no problem".
                p.notice.warn role="status" id="checked" { (lang.f("upload.partly", &values)) }
                ul #not-checked { @for note in &checked.not_checked { li lang="en" { (note) } } }
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

/// Form bytes allowed besides the file: the other fields and the parts' heads.
const FORM_OVERHEAD: usize = 64 * 1024;
/// Longest value of a field other than the file.
const MAX_FIELD: usize = 1024;

/// The form's fields, in the order the browser sends them, which is the page's (HTML's form
/// encoding keeps tree order). The session's token must come first: no other field, and above
/// all not the file, is read before it matched. (Not the token in the form's URL, which works
/// as well without JavaScript: URLs end up in access logs, history and `Referer`.) The file is
/// read as the API reads a body (`api::body`): the same limit, large-body turn and deadline,
/// and the turn is returned to be held until the file is parsed.
async fn read_form(
    req: &HttpRequest,
    mut payload: Multipart,
    state: &AppState,
    csrf: &str,
) -> Result<(Form, Option<OwnedSemaphorePermit>), Failure> {
    let max = state.max_body_bytes;
    let declared = declared_length(req.headers());
    if declared.is_some_and(|n| n > max + FORM_OVERHEAD) {
        return Err(Failure::BadRequest);
    }
    let mut deadline = ReadDeadline::start(state.body_read_timeout);
    let mut form = Form::default();
    let mut permit = None;
    let (mut token_matched, mut file_read, mut other_bytes) = (false, false, 0);
    while let Some(field) = deadline.next(&mut payload).await.map_err(refusal)? {
        let mut field = field.map_err(|_| Failure::BadRequest)?;
        let name = field.name().unwrap_or_default().to_owned();
        if !token_matched && name != "csrf" {
            return Err(Failure::Csrf);
        }
        if name == "file" {
            if file_read {
                return Err(Failure::BadRequest);
            }
            form.file_name = field
                .content_disposition()
                .and_then(|d| d.get_filename())
                .unwrap_or_default()
                .to_owned();
            let (file, turn) =
                read_limited(&mut field, declared, max, &state.intake, &mut deadline)
                    .await
                    .map_err(refusal)?;
            (form.file, permit, file_read) = (file, turn, true);
            continue;
        }
        let mut value = Vec::new();
        while let Some(chunk) = deadline.next(&mut field).await.map_err(refusal)? {
            let chunk = chunk.map_err(|_| Failure::BadRequest)?;
            other_bytes += chunk.len();
            if value.len() + chunk.len() > MAX_FIELD || other_bytes > FORM_OVERHEAD {
                return Err(Failure::BadRequest);
            }
            value.extend_from_slice(&chunk);
        }
        let text = || String::from_utf8_lossy(&value).trim().to_owned();
        match name.as_str() {
            "csrf" if !token_matched => {
                if !session::tokens_match(Some(&text()), csrf) {
                    return Err(Failure::Csrf);
                }
                token_matched = true;
            }
            "idempotency_key" => form.idempotency_key = Some(text()),
            "period" => form.period = Some(text()),
            "partner" => form.partner = Some(text()),
            "correction" => form.correction = text() == "true",
            "step" => form.send = text() == "send",
            _ => {}
        }
    }
    if !token_matched {
        return Err(Failure::Csrf);
    }
    Ok((form, permit))
}

fn refusal(error: BodyError) -> Failure {
    match error {
        BodyError::TimedOut { .. } => Failure::TimedOut,
        BodyError::TooLarge { .. } | BodyError::Unreadable(_) => Failure::BadRequest,
    }
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
                    td { (detail(lang, &v.detail)) }
                }
            } }
        } }
    }
}

/// A problem as the page says it: the API's words, with the advice to send `"correction": true`
/// replaced by the form's own way, its checkbox.
fn detail(lang: Lang, detail: &str) -> Markup {
    match detail.strip_suffix(SEND_AS_CORRECTION) {
        Some(problem) => html! {
            span lang="en" { (problem.trim_end()) } " "
            span { (lang.f("upload.as_correction", &[("correction", &lang.t("upload.correction"))])) }
        },
        None => html! { span lang="en" { (detail) } },
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
