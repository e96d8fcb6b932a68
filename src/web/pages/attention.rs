//! Needs attention: held, failed and rejected batches, oldest first, each with what to check
//! in PA2; and the two actions, behind a confirmation that shows the batch's loans and amounts.
//! The actions are the API's own (`api::batches::operate_batch`): admin keys only, recorded
//! with the key's name.

use actix_web::{HttpRequest, HttpResponse, web};
use maud::html;

use crate::api::AppState;
use crate::api::batches::{OperatorText, clean_text, operate_batch};
use crate::api::reports::{ListParams, find_report, list as list_reports};
use crate::config::Role;
use crate::store::{
    Batch, BatchState, BatchVersion, OperatorActionKind, Report, ReportStatus, report_of_batch,
};
use crate::web::i18n::Lang;
use crate::web::layout::{batch_state, report_label, total, when};
use crate::web::pages::months::{partner_for, partner_picker};
use crate::web::pages::reports::{action_link, action_name, action_slug};
use crate::web::session::{self, WebConfig};
use crate::web::{Ctx, Failure, PageError, field, form_fields, see_other};

/// Reports looked at, at most (the API's largest page): a backlog beyond it shows on later visits.
const MAX_REPORTS: usize = 200;
/// Batches on one page of the list: a page reads batches one at a time until it has these, so
/// its cost does not grow with the backlog or the reports' size.
pub(crate) const BATCHES_PER_PAGE: usize = 20;

#[derive(Debug, serde::Deserialize, Default)]
pub struct PartnerQuery {
    partner: Option<String>,
    /// Which page of batches (from 1, the oldest).
    page: Option<usize>,
}

pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    config: web::Data<WebConfig>,
    query: web::Query<PartnerQuery>,
) -> Result<HttpResponse, PageError> {
    let ctx = Ctx::of(&req, &state, &config).await?;
    let lang = ctx.lang;
    let partner = partner_for(&ctx, &state, query.partner.as_deref())?;
    let page = list_reports(
        &state,
        &ctx.viewer.caller,
        ListParams {
            status: Some(ReportStatus::NeedsAttention),
            partner_id: Some(partner.to_string()),
            limit: Some(MAX_REPORTS),
            ..ListParams::default()
        },
    )
    .await
    .map_err(|e| ctx.api(e))?;
    let number = query.page.unwrap_or(1).max(1);
    let skip = (number - 1).saturating_mul(BATCHES_PER_PAGE);
    // Oldest first: the longest wait is the first to see. Report ids are UUIDv7 (time order).
    let mut reports = page.reports;
    reports.sort_by_key(|report| report.id);
    // The listed reports (summaries, already limited to what the key may see) are walked a
    // batch at a time, keeping only this page's batches, without their repayments (the page
    // shows counts): a report of 10,000 repayments is never read whole.
    let mut items: Vec<(Report, Batch)> = Vec::new();
    let (mut found, mut more) = (0, false);
    'reports: for report in &reports {
        for id in report.batch_ids() {
            let Some((mut batch, _)) = state
                .store
                .batch(&partner, &id)
                .await
                .map_err(|e| ctx.api(e.into()))?
            else {
                continue;
            };
            if !matches!(
                batch.state,
                BatchState::Held | BatchState::Failed | BatchState::Rejected
            ) {
                continue;
            }
            if found == skip + BATCHES_PER_PAGE {
                more = true;
                break 'reports;
            }
            if found >= skip {
                batch.repayments = Vec::new();
                items.push((report.clone(), batch));
            }
            found += 1;
        }
    }
    let pq = crate::web::layout::encode(partner.as_str());
    let admin = ctx.viewer.caller.role == Role::Admin;
    let body = html! {
        h1 { (lang.t("attention.title")) }
        (partner_picker(&ctx, &state, &partner, "/web/attention"))
        p { (lang.t("attention.intro")) }
        @if !admin { p.hint { (lang.t("attention.admin_only")) } }
        @if items.is_empty() {
            p.notice.good { (lang.t("attention.none")) }
        }
        @for (report, batch) in &items {
            article.card data-batch=(batch.id) {
                h2 { a href={ "/web/reports/" (report.id) "#batch-" (batch.number) } {
                        (lang.f("attention.item", &[("report", &report_label(report.id)), ("n", &batch.number)])) }
                     " " (batch_state(lang, batch.state)) }
                p { (report.branch) " · " @if let Some(p) = report.period { (p) " · " }
                    (lang.f("attention.size", &[("n", &batch.repayment_count), ("amount", &total(batch.total_amount))]))
                    " · " (when(report.created_at)) }
                p.check { (check_in_pa2(lang, batch, report)) }
                @if admin {
                    p.actions { @for a in [OperatorActionKind::MarkDelivered, OperatorActionKind::Resend] {
                        @if a.allowed_from(batch.state) { (action_link(lang, &batch.id, a)) " " }
                    } }
                }
            }
        }
        @if number > 1 || more {
            nav.pages aria-label=(lang.t("attention.pages")) {
                @if number > 1 { a rel="prev" href={ "/web/attention?partner=" (pq) "&page=" (number - 1) } { (lang.t("attention.previous")) } " " }
                @if more { a rel="next" href={ "/web/attention?partner=" (pq) "&page=" (number + 1) } { (lang.t("attention.next")) } }
            }
        }
    };
    Ok(ctx.page(lang.t("attention.title"), body))
}

/// What the operator must find out in PA2 before choosing, by state.
fn check_in_pa2(lang: Lang, batch: &Batch, report: &Report) -> String {
    let sent = batch
        .attempts
        .last()
        .map_or_else(|| when(report.created_at), |a| when(a.started_at));
    match batch.state {
        BatchState::Held => lang.f(
            "attention.check_held",
            &[
                ("n", &batch.repayment_count),
                ("amount", &total(batch.total_amount)),
                ("at", &sent),
            ],
        ),
        BatchState::Rejected => lang.t("attention.check_rejected").to_owned(),
        _ => lang.t("attention.check_failed").to_owned(),
    }
}

fn parse_action(slug: &str) -> Option<OperatorActionKind> {
    [
        OperatorActionKind::Resend,
        OperatorActionKind::MarkDelivered,
    ]
    .into_iter()
    .find(|a| action_slug(*a) == slug)
}

/// The batch `id` if the reader may see it (the same lookup as `GET /v1/reports/{id}`).
async fn find_batch(ctx: &Ctx, state: &AppState, id: &str) -> Result<(Report, Batch), PageError> {
    let report_id = report_of_batch(id).ok_or_else(|| ctx.fail(Failure::NotFound))?;
    let (report, batches) = find_report(state, &ctx.viewer.caller, &report_id.to_string())
        .await
        .map_err(|e| ctx.api(e))?;
    let batch = batches
        .into_iter()
        .find(|b| b.id == id)
        .ok_or_else(|| ctx.fail(Failure::NotFound))?;
    Ok((report, batch))
}

pub async fn confirm(
    req: HttpRequest,
    state: web::Data<AppState>,
    config: web::Data<WebConfig>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, PageError> {
    let ctx = Ctx::of(&req, &state, &config).await?;
    let lang = ctx.lang;
    let (id, slug) = path.into_inner();
    let action = parse_action(&slug).ok_or_else(|| ctx.fail(Failure::NotFound))?;
    let (report, batch) = find_batch(&ctx, &state, &id).await?;
    if ctx.viewer.caller.role != Role::Admin {
        return Err(ctx.fail(Failure::Forbidden));
    }
    if !action.allowed_from(batch.state) {
        return Err(ctx.fail(Failure::Conflict));
    }
    let title = format!(
        "{}: {}",
        action_name(lang, action),
        lang.f(
            "attention.item",
            &[("report", &report_label(report.id)), ("n", &batch.number)]
        )
    );
    let body = html! {
        h1 { (title) }
        p { (batch_state(lang, batch.state)) " " (check_in_pa2(lang, &batch, &report)) }
        p.notice.warn { (match action {
            OperatorActionKind::Resend => lang.t("confirm.resend_warning"),
            OperatorActionKind::MarkDelivered => lang.t("confirm.mark_delivered_warning"),
        }) }
        div.table-wrap { table id="confirm-loans" {
            caption { (lang.f("attention.size", &[("n", &batch.repayment_count), ("amount", &total(batch.total_amount))])) }
            thead { tr {
                th scope="col" { (lang.t("month.loan")) }
                th scope="col" { (lang.t("month.client")) }
                th scope="col" { (lang.t("reports.amount")) }
            } }
            tbody { @for r in &batch.repayments {
                tr { td.id { (r.repayment.loan_id.as_str()) } td.id { @if let Some(c) = &r.repayment.client_id { (c.as_str()) } } td.num { (r.repayment.amount) } }
            } }
        } }
        form.card method="post" action={ "/web/batches/" (batch.id) "/" (slug) } {
            input type="hidden" name="csrf" value=(ctx.viewer.csrf);
            // What this page showed: the action is refused if the batch changed since (another
            // operator, another tab, or Kiva's answer to a resend).
            input type="hidden" name="version" value=(batch.version);
            @if action == OperatorActionKind::MarkDelivered {
                label for="upload_id" { (lang.t("confirm.upload_id")) }
                input id="upload_id" name="upload_id" type="text" maxlength="500";
                label for="note" { (lang.t("confirm.note")) }
                input id="note" name="note" type="text" maxlength="500";
            }
            button type="submit" id="confirm" { (lang.t("confirm.yes")) " " (action_name(lang, action)) }
            " " a href={ "/web/reports/" (report.id) "#batch-" (batch.number) } { (lang.t("confirm.cancel")) }
        }
    };
    Ok(ctx.page(&title, body))
}

pub async fn act(
    req: HttpRequest,
    state: web::Data<AppState>,
    config: web::Data<WebConfig>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, PageError> {
    let ctx = Ctx::of(&req, &state, &config).await?;
    let fields = form_fields(&body);
    // Before anything else, so a forged post learns nothing, not even whether the batch exists.
    if !session::tokens_match(field(&fields, "csrf"), &ctx.viewer.csrf) {
        return Err(ctx.fail(Failure::Csrf));
    }
    let (id, slug) = path.into_inner();
    let action = parse_action(&slug).ok_or_else(|| ctx.fail(Failure::NotFound))?;
    let (report, batch) = find_batch(&ctx, &state, &id).await?;
    // A form without a version was made before versions existed, or by hand: what it was
    // confirmed against is unknown, so it is refused as changed.
    let expected = field(&fields, "version")
        .and_then(BatchVersion::parse)
        .ok_or_else(|| ctx.fail(Failure::Conflict))?;
    let text = if action == OperatorActionKind::MarkDelivered {
        let text = |name| field(&fields, name).map(str::to_owned);
        OperatorText {
            upload_id: clean_text(text("upload_id"), "upload_id").map_err(|e| ctx.api(e))?,
            note: clean_text(text("note"), "note").map_err(|e| ctx.api(e))?,
        }
    } else {
        OperatorText::default()
    };
    operate_batch(
        &state,
        &ctx.viewer.caller,
        &batch.id,
        action,
        text,
        Some(expected),
    )
    .await
    .map_err(|e| ctx.api(e))?;
    Ok(see_other(&format!(
        "/web/reports/{}?done={}#batch-{}",
        report.id,
        match action {
            OperatorActionKind::Resend => "resend",
            OperatorActionKind::MarkDelivered => "mark-delivered",
        },
        batch.number
    )))
}
