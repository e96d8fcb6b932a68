//! Reports: the list with its filters and paging (`api::reports::list`), and one report with
//! its batches, every attempt, operator actions and every repayment.

use actix_web::{HttpRequest, HttpResponse, web};
use maud::{Markup, html};
use serde::Deserialize;

use crate::api::AppState;
use crate::api::reports::{ListParams, find_report, list as list_reports};
use crate::config::Role;
use crate::store::{Batch, OperatorActionKind, ReportStatus};
use crate::web::i18n::Lang;
use crate::web::layout::{
    batch_state, encode, repayment_state, report_label, report_status, status_text, total, when,
    wire_name,
};
use crate::web::pages::months::partner_picker;
use crate::web::session::WebConfig;
use crate::web::{Ctx, Failure, PageError};

const PAGE: usize = 25;

#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    period: Option<String>,
    branch: Option<String>,
    status: Option<String>,
    partner: Option<String>,
    cursor: Option<String>,
}

const STATUSES: [ReportStatus; 5] = [
    ReportStatus::Queued,
    ReportStatus::Delivering,
    ReportStatus::Delivered,
    ReportStatus::DeliveredWithProblems,
    ReportStatus::NeedsAttention,
];

pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    config: web::Data<WebConfig>,
    filters: web::Query<Filters>,
) -> Result<HttpResponse, PageError> {
    let ctx = Ctx::of(&req, &state, &config).await?;
    let lang = ctx.lang;
    let f = filters.into_inner();
    let status = match f.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            STATUSES
                .into_iter()
                .find(|st| wire_name(*st) == s)
                .ok_or_else(|| ctx.fail(Failure::BadRequest))?,
        ),
    };
    let partner = crate::web::pages::months::partner_for(&ctx, &state, f.partner.as_deref())?;
    let page = list_reports(
        &state,
        &ctx.viewer.caller,
        ListParams {
            status,
            branch: f.branch.clone(),
            period: f.period.clone(),
            partner_id: Some(partner.to_string()),
            cursor: f.cursor.clone(),
            limit: Some(PAGE),
            ..ListParams::default()
        },
    )
    .await
    .map_err(|e| ctx.api(e))?;
    let admin = ctx.viewer.caller.role == Role::Admin;
    let keep = |name: &str, value: &Option<String>| -> String {
        value
            .as_deref()
            .filter(|v| !v.is_empty())
            .map(|v| format!("&{name}={}", encode(v)))
            .unwrap_or_default()
    };
    let next = page.next.map(|id| {
        format!(
            "/web/reports?cursor={id}&partner={}{}{}{}",
            encode(partner.as_str()),
            keep("period", &f.period),
            keep("branch", &f.branch),
            keep("status", &f.status)
        )
    });
    let body = html! {
        h1 { (lang.t("reports.title")) }
        (partner_picker(&ctx, &state, &partner, "/web/reports"))
        form.filters method="get" action="/web/reports" {
            input type="hidden" name="partner" value=(partner);
            div { label for="period" { (lang.t("reports.period")) }
                  input id="period" name="period" type="text" inputmode="numeric" pattern="[0-9]{4}-[0-9]{2}" placeholder="2026-10" value=[f.period.as_deref()]; }
            @if admin {
                div { label for="branch" { (lang.t("reports.branch")) }
                      input id="branch" name="branch" type="text" value=[f.branch.as_deref()]; }
            }
            div { label for="status" { (lang.t("reports.status")) }
                  select id="status" name="status" {
                      option value="" { (lang.t("reports.any_status")) }
                      @for st in STATUSES {
                          @let name = wire_name(st);
                          option value=(name) selected[f.status.as_deref() == Some(name.as_str())] { (status_text(lang, &name)) }
                      }
                  } }
            button type="submit" { (lang.t("reports.filter")) }
        }
        @if page.reports.is_empty() {
            p.notice { (lang.t("reports.none")) }
        } @else {
            div.table-wrap { table id="reports" {
                thead { tr {
                    th scope="col" { (lang.t("reports.report")) }
                    th scope="col" { (lang.t("reports.created")) }
                    th scope="col" { (lang.t("reports.period")) }
                    th scope="col" { (lang.t("reports.branch")) }
                    th scope="col" { (lang.t("reports.status")) }
                    th scope="col" { (lang.t("reports.repayments")) }
                    th scope="col" { (lang.t("reports.amount")) }
                    th scope="col" { (lang.t("reports.refused")) }
                } }
                tbody { @for r in &page.reports {
                    tr data-report=(r.id) {
                        th scope="row" { a href={ "/web/reports/" (r.id) } { (report_label(r.id)) }
                            @if r.correction { " " span.chip.wait { (lang.t("reports.correction")) } } }
                        td { (when(r.created_at)) }
                        td.id { @if let Some(p) = r.period { (p) } }
                        td { (r.branch) }
                        td { (report_status(lang, r.status)) }
                        td.num { (r.repayment_count) }
                        td.num { (total(r.total_amount)) }
                        td.num { (r.refused_by_kiva) }
                    }
                } }
            } }
        }
        @if let Some(next) = next {
            p { a rel="next" href=(next) { (lang.t("reports.next_page")) } }
        }
    };
    Ok(ctx.page(lang.t("reports.title"), body))
}

pub async fn detail(
    req: HttpRequest,
    state: web::Data<AppState>,
    config: web::Data<WebConfig>,
    id: web::Path<String>,
    done: web::Query<Done>,
) -> Result<HttpResponse, PageError> {
    let ctx = Ctx::of(&req, &state, &config).await?;
    let lang = ctx.lang;
    let (report, batches) = find_report(&state, &ctx.viewer.caller, &id)
        .await
        .map_err(|e| ctx.api(e))?;
    let title = lang.f("report.title", &[("id", &report_label(report.id))]);
    let body = html! {
        h1 { (title) }
        @if let Some(done) = done.done.as_deref() {
            p.notice.good role="status" id="done" {
                (match done {
                    "resend" => lang.t("report.done_resend"),
                    "sent" => lang.t("report.done_sent"),
                    _ => lang.t("report.done_mark_delivered"),
                })
            }
        }
        dl.facts {
            dt { (lang.t("report.id")) } dd { code { (report.id) } }
            dt { (lang.t("reports.status")) } dd data-field="status" { (report_status(lang, report.status)) }
            dt { (lang.t("reports.period")) } dd { @if let Some(p) = report.period { (p) } }
            dt { (lang.t("reports.branch")) } dd { (report.branch) }
            dt { (lang.t("report.submitted_by")) } dd { (report.submitted_by) }
            dt { (lang.t("reports.created")) } dd { (when(report.created_at)) }
            dt { (lang.t("reports.repayments")) } dd { (report.repayment_count) }
            dt { (lang.t("reports.amount")) } dd { (total(report.total_amount)) }
            dt { (lang.t("reports.refused")) } dd { (report.refused_by_kiva) }
            @if report.correction { dt { (lang.t("reports.correction")) } dd { (lang.t("common.yes")) } }
        }
        @for batch in &batches { (batch_section(&ctx, batch)) }
    };
    Ok(ctx.page(&title, body))
}

#[derive(Debug, Default, Deserialize)]
pub struct Done {
    done: Option<String>,
}

fn batch_section(ctx: &Ctx, b: &Batch) -> Markup {
    let lang = ctx.lang;
    let admin = ctx.viewer.caller.role == Role::Admin;
    let id = format!("batch-{}", b.number);
    html! {
        section.batch id=(id) aria-labelledby={ "h-" (id) } data-batch=(b.id) {
            h2 id={ "h-" (id) } { (lang.f("report.batch", &[("n", &b.number)])) " " (batch_state(lang, b.state)) }
            dl.facts {
                dt { (lang.t("reports.repayments")) } dd { (b.repayment_count) }
                dt { (lang.t("reports.amount")) } dd { (total(b.total_amount)) }
                @if let Some(r) = &b.result {
                    @if let Some(u) = &r.upload_id { dt { (lang.t("report.upload_id")) } dd { (u) } }
                    dt { (lang.t("report.reason")) } dd lang="en" { (r.reason) }
                }
                @if let Some(at) = b.next_attempt_at { dt { (lang.t("report.next_attempt")) } dd { (when(at)) } }
            }
            @if admin {
                @let actions = [OperatorActionKind::Resend, OperatorActionKind::MarkDelivered];
                @let allowed: Vec<_> = actions.into_iter().filter(|a| a.allowed_from(b.state)).collect();
                @if !allowed.is_empty() {
                    p.actions { @for a in allowed { (action_link(lang, &b.id, a)) " " } }
                }
            }
            h3 { (lang.t("report.attempts")) }
            @if b.attempts.is_empty() { p { (lang.t("report.no_attempts")) } } @else {
                div.table-wrap { table {
                    thead { tr {
                        th scope="col" { "#" }
                        th scope="col" { (lang.t("report.started")) }
                        th scope="col" { (lang.t("report.duration")) }
                        th scope="col" { (lang.t("report.outcome")) }
                        th scope="col" { (lang.t("report.http_or_error")) }
                        th scope="col" { (lang.t("report.kiva_answer")) }
                        th scope="col" { (lang.t("report.upload_id")) }
                    } }
                    tbody { @for a in &b.attempts {
                        tr {
                            th scope="row" { (a.number) }
                            td { (when(a.started_at)) }
                            td.num { (lang.f("report.ms", &[("ms", &a.duration_ms)])) }
                            td { (batch_state(lang, a.outcome)) }
                            td { @if let Some(s) = a.http_status { "HTTP " (s) } @if let Some(e) = &a.error { span lang="en" { (e) } } }
                            td { @if let Some(k) = &a.kiva_body { details { summary { (lang.t("report.show")) } pre lang="en" { (k) } } } }
                            td { @if let Some(u) = &a.upload_id { (u) } }
                        }
                    } }
                } }
            }
            @if !b.operator_actions.is_empty() {
                h3 { (lang.t("report.operator_actions")) }
                ul { @for a in &b.operator_actions {
                    li { (when(a.at)) ": " strong { (action_name(lang, a.action)) } " — " (a.by)
                         " (" (lang.t("report.from_state")) " " (status_text(lang, &wire_name(a.from_state))) ")"
                         @if let Some(u) = &a.upload_id { ", " (lang.t("report.upload_id")) " " (u) }
                         @if let Some(n) = &a.note { ": " q { (n) } } }
                } }
            }
            h3 { (lang.t("report.repayments")) }
            div.table-wrap { table.repayments {
                thead { tr {
                    th scope="col" { "#" }
                    th scope="col" { (lang.t("month.loan")) }
                    th scope="col" { (lang.t("month.client")) }
                    th scope="col" { (lang.t("reports.amount")) }
                    th scope="col" { (lang.t("reports.status")) }
                    th scope="col" { (lang.t("report.problems")) }
                } }
                tbody { @for r in &b.repayments {
                    tr {
                        th scope="row" { (r.repayment.position + 1) }
                        td.id { (r.repayment.loan_id.as_str()) }
                        td.id { @if let Some(c) = &r.repayment.client_id { (c.as_str()) } }
                        td.num { (r.repayment.amount) }
                        td { (repayment_state(lang, r.state)) }
                        td lang="en" { @for p in &r.problems {
                            (p.severity) @if let Some(c) = &p.code { " " (c) } @if let Some(d) = &p.details { ": " (d) } br;
                        } }
                    }
                } }
            } }
        }
    }
}

pub(crate) fn action_name(lang: Lang, action: OperatorActionKind) -> &'static str {
    match action {
        OperatorActionKind::Resend => lang.t("action.resend"),
        OperatorActionKind::MarkDelivered => lang.t("action.mark_delivered"),
    }
}

pub(crate) fn action_slug(action: OperatorActionKind) -> &'static str {
    match action {
        OperatorActionKind::Resend => "resend",
        OperatorActionKind::MarkDelivered => "mark-delivered",
    }
}

/// The way to an action goes through its confirmation page (a plain link: works without JS).
pub(crate) fn action_link(lang: Lang, batch: &str, action: OperatorActionKind) -> Markup {
    html! {
        a.button href={ "/web/batches/" (batch) "/" (action_slug(action)) } data-action=(action_slug(action)) {
            (action_name(lang, action)) "…"
        }
    }
}
