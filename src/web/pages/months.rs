//! The months (home) and one month: the numbers of `GET /v1/periods/{period}`, from the very
//! function that answers it (`api::periods::month`).

use actix_web::{HttpRequest, HttpResponse, web};
use maud::{Markup, html};
use serde::Deserialize;

use crate::api::AppState;
use crate::api::periods::{
    admin_month, admin_snapshot, month as period_view, month_with, not_expected_csv,
    not_reported_csv, partner_of,
};
use crate::api::problem::ApiError;
use crate::config::Role;
use crate::domain::{PartnerId, Period};
use crate::intake::PartnerScope;
use crate::periods::view::{PeriodView, Reason, Tally};
use crate::store::RepaymentState;
use crate::web::i18n::Lang;
use crate::web::layout::{encode, repayment_state, report_label, status_text, total, when};
use crate::web::session::WebConfig;
use crate::web::{Ctx, Failure, PageError};

/// Months on one page of the home page (newest first; `?page=` for older ones). Each month
/// is built from all its reports, so the page's cost grows with this, not with the store.
pub(crate) const MONTHS_PER_PAGE: usize = 6;
/// Rows of a loan list shown on the page; the search finds the others, the CSV has them all.
const LIST_ROWS: usize = 100;

#[derive(Debug, Default, Deserialize)]
pub struct MonthQuery {
    partner: Option<String>,
    /// Search in the not-reported and not-expected lists.
    q: Option<String>,
    /// Which page of months (from 1, the newest).
    page: Option<usize>,
}

/// What the months table shows of one month: kept instead of the month's whole view (its
/// lists of loans), which is dropped as soon as this is taken from it.
struct MonthRow {
    period: Period,
    expected: Option<(usize, usize)>,
    repayments: usize,
    amount: crate::domain::Amount,
    chips: Vec<(String, &'static str)>,
    ready: bool,
    why: Vec<Reason>,
}

impl MonthRow {
    fn of(v: PeriodView) -> Self {
        MonthRow {
            period: v.period,
            expected: v.expected_loans.as_ref().map(|e| (e.reported, e.expected)),
            repayments: v.total.repayments,
            amount: v.total.amount,
            chips: v
                .branches
                .into_iter()
                .map(|b| {
                    let state = branch_state(&b.tally);
                    (b.branch, state)
                })
                .collect(),
            ready: v.ready_to_finalize,
            why: v.why,
        }
    }
}

/// The partner the page is about: the one asked for, the key's own, or (an every-partner
/// admin key) the first configured.
pub(crate) fn partner_for(
    ctx: &Ctx,
    state: &AppState,
    named: Option<&str>,
) -> Result<PartnerId, PageError> {
    let named = named.filter(|n| !n.is_empty());
    match partner_of(state, &ctx.viewer.caller, named) {
        Ok(partner) => Ok(partner),
        Err(ApiError::BadRequest(_)) if named.is_none() => state
            .partners
            .first()
            .cloned()
            .ok_or_else(|| ctx.fail(Failure::NotFound)),
        Err(e) => Err(ctx.api(e)),
    }
}

/// Links to the other partners, for an admin key that serves several.
pub(crate) fn partner_picker(
    ctx: &Ctx,
    state: &AppState,
    current: &PartnerId,
    path: &str,
) -> Markup {
    let lang = ctx.lang;
    let several = matches!(ctx.viewer.caller.scope, PartnerScope::All) && state.partners.len() > 1;
    html! {
        @if several {
            nav.partners aria-label=(lang.t("months.partners")) {
                (lang.t("months.partner")) ": "
                @for p in &state.partners {
                    @if p == current { strong aria-current="page" { (p) } " " }
                    @else { a href={ (path) "?partner=" (encode(p.as_str())) } { (p) } " " }
                }
            }
        }
    }
}

pub async fn months(
    req: HttpRequest,
    state: web::Data<AppState>,
    config: web::Data<WebConfig>,
    query: web::Query<MonthQuery>,
) -> Result<HttpResponse, PageError> {
    let ctx = Ctx::of(&req, &state, &config).await?;
    let lang = ctx.lang;
    let partner = partner_for(&ctx, &state, query.partner.as_deref())?;
    let caller = &ctx.viewer.caller;
    let admin = caller.role == Role::Admin;
    let page = query.page.unwrap_or(1).max(1);
    let periods = state
        .store
        .periods(&partner)
        .await
        .map_err(|e| ctx.api(e.into()))?;
    let pages = periods.len().div_ceil(MONTHS_PER_PAGE).max(1);
    let page = page.min(pages);
    let snapshot = admin_snapshot(&state, caller, &partner)
        .await
        .map_err(|e| ctx.api(e))?;
    let mut views = Vec::new();
    for period in periods
        .into_iter()
        .skip((page - 1).saturating_mul(MONTHS_PER_PAGE))
        .take(MONTHS_PER_PAGE)
    {
        let view = month_with(&state, caller, &partner, period, snapshot.as_deref())
            .await
            .map_err(|e| ctx.api(e))?;
        views.push(MonthRow::of(view));
    }
    drop(snapshot);
    let pq = encode(partner.as_str());
    let body = html! {
        h1 { (lang.t("months.title")) }
        (partner_picker(&ctx, &state, &partner, "/web/"))
        p { (lang.f("months.intro", &[("partner", &partner)])) }
        @if !admin { p.hint { (lang.t("months.branch_only")) } }
        @if views.is_empty() {
            p.notice { (lang.t("months.none")) }
        } @else {
            div.table-wrap {
                table.stack id="months" {
                    caption.visually-hidden { (lang.t("months.title")) }
                    thead { tr {
                        th scope="col" { (lang.t("months.month")) }
                        th scope="col" { (lang.t("months.reported")) }
                        th scope="col" { (lang.t("months.amount")) }
                        th scope="col" { (lang.t("months.branches")) }
                        th scope="col" { (lang.t("months.ready")) }
                    } }
                    tbody {
                        @for v in &views {
                            tr data-period=(v.period) {
                                th.id scope="row" { a href={ "/web/months/" (v.period) "?partner=" (pq) } { (v.period) } }
                                td data-label=(lang.t("months.reported")) { (reported_of_expected(lang, v)) }
                                td.num data-label=(lang.t("months.amount")) data-field="amount" { (total(v.amount)) }
                                td data-label=(lang.t("months.branches")) { @for (branch, state) in &v.chips { (branch_chip(lang, branch, state)) " " } }
                                td data-label=(lang.t("months.ready")) { (readiness(lang, &partner, v.ready, &v.why)) }
                            }
                        }
                    }
                }
            }
        }
        @if pages > 1 {
            nav.pages aria-label=(lang.t("months.pages")) {
                @if page > 1 { a rel="prev" href={ "/web/?partner=" (pq) "&page=" (page - 1) } { (lang.t("months.newer")) } " " }
                span data-field="page" { (lang.f("months.page_of", &[("n", &page), ("m", &pages)])) }
                @if page < pages { " " a rel="next" href={ "/web/?partner=" (pq) "&page=" (page + 1) } { (lang.t("months.older")) } }
            }
        }
    };
    Ok(ctx.page(lang.t("months.title"), body))
}

fn reported_of_expected(lang: Lang, v: &MonthRow) -> Markup {
    html! {
        @match v.expected {
            Some((reported, expected)) => span data-field="reported-of-expected" {
                (lang.f("months.n_of_m", &[("n", &reported), ("m", &expected)]))
            },
            None => span data-field="repayments" {
                (lang.f("months.n_repayments", &[("n", &v.repayments)]))
            },
        }
    }
}

/// One branch's standing, from its repayments' states: what most needs doing first.
fn branch_state(tally: &Tally) -> &'static str {
    let has = |states: &[RepaymentState]| states.iter().any(|s| tally.by_state.contains_key(s));
    if has(&[
        RepaymentState::Held,
        RepaymentState::Failed,
        RepaymentState::Rejected,
    ]) {
        "needs_attention"
    } else if has(&[RepaymentState::Queued, RepaymentState::Sending]) {
        "delivering"
    } else if has(&[RepaymentState::RejectedByKiva]) {
        "delivered_with_problems"
    } else {
        "delivered"
    }
}

fn branch_chip(lang: Lang, branch: &str, name: &str) -> Markup {
    let tone = match name {
        "needs_attention" => "bad",
        "delivering" => "wait",
        "delivered_with_problems" => "warn",
        _ => "good",
    };
    html! { span class={ "chip " (tone) } data-state=(name) { (branch) ": " (status_text(lang, name)) } }
}

fn readiness(lang: Lang, partner: &PartnerId, ready: bool, why: &[Reason]) -> Markup {
    html! {
        @if ready {
            span.chip.good data-field="ready" data-ready="true" { (lang.t("months.ready_yes")) }
        } @else {
            span.chip.bad data-field="ready" data-ready="false" { (lang.t("months.ready_no")) }
            ul.reasons { @for r in why { li { (reason(lang, partner, *r)) } } }
        }
    }
}

pub(crate) fn reason(lang: Lang, partner: &PartnerId, reason: Reason) -> String {
    match reason {
        Reason::NoReport => lang.t("reason.no_report").to_owned(),
        Reason::NotDelivered {
            batches,
            repayments,
        } => lang.f(
            "reason.not_delivered",
            &[("batches", &batches), ("repayments", &repayments)],
        ),
        Reason::NeedsOperator { batches } => {
            lang.f("reason.needs_operator", &[("batches", &batches)])
        }
        Reason::RefusedByKiva { loans } => lang.f("reason.refused_by_kiva", &[("loans", &loans)]),
        Reason::RefusedNotPayingBack { loans } => {
            lang.f("reason.refused_not_paying_back", &[("loans", &loans)])
        }
        Reason::NoSnapshot => lang.f("reason.no_snapshot", &[("partner", partner)]),
        Reason::StaleSnapshot { hours } => lang.f(
            "reason.stale_snapshot",
            &[("hours", &hours), ("partner", partner)],
        ),
        Reason::NotReported { loans } => lang.f("reason.not_reported", &[("loans", &loans)]),
        Reason::Repeated { loans } => lang.f("reason.repeated", &[("loans", &loans)]),
    }
}

pub async fn month(
    req: HttpRequest,
    state: web::Data<AppState>,
    config: web::Data<WebConfig>,
    period: web::Path<String>,
    query: web::Query<MonthQuery>,
) -> Result<HttpResponse, PageError> {
    let ctx = Ctx::of(&req, &state, &config).await?;
    let lang = ctx.lang;
    let partner = partner_for(&ctx, &state, query.partner.as_deref())?;
    let period = Period::parse(&period).map_err(|_| ctx.fail(Failure::NotFound))?;
    let v = period_view(&state, &ctx.viewer.caller, &partner, period)
        .await
        .map_err(|e| ctx.api(e))?;
    let q = query.q.as_deref().map(str::trim).unwrap_or_default();
    let matches = |texts: &[Option<&str>]| {
        q.is_empty()
            || texts
                .iter()
                .flatten()
                .any(|t| t.to_lowercase().contains(&q.to_lowercase()))
    };
    let pq = encode(partner.as_str());
    let title = lang.f("month.title", &[("period", &v.period)]);
    let t = &v.total;
    let body = html! {
        h1 { (title) }
        (partner_picker(&ctx, &state, &partner, &format!("/web/months/{}", v.period)))
        section aria-labelledby="h-summary" {
            h2 id="h-summary" { (lang.t("month.summary")) }
            dl.facts {
                dt { (lang.t("month.reports")) } dd data-field="reports" { (t.reports) }
                dt { (lang.t("month.corrections")) } dd data-field="corrections" { (t.corrections) }
                dt { (lang.t("month.repayments")) } dd data-field="repayments" { (t.repayments) }
                dt { (lang.t("month.amount")) } dd data-field="amount" { (total(t.amount)) }
                @if let Some(e) = &v.expected_loans {
                    dt { (lang.t("month.expected")) } dd data-field="expected" { (e.expected) }
                    dt { (lang.t("month.reported")) } dd data-field="reported" { (e.reported) }
                    dt { (lang.t("month.pending")) } dd data-field="pending" { (e.pending) }
                    dt { (lang.t("month.not_reported")) } dd data-field="not-reported" { (e.not_reported) }
                    dt { (lang.t("month.snapshot")) } dd { (when(e.taken_at)) @if e.stale { " " span.chip.warn { (lang.t("month.stale")) } } }
                }
            }
            (readiness(lang, &partner, v.ready_to_finalize, &v.why))
        }
        section aria-labelledby="h-branches" {
            h2 id="h-branches" { (lang.t("month.branches")) }
            div.table-wrap { table.stack id="branches" {
                thead { tr {
                    th scope="col" { (lang.t("month.branch")) }
                    th scope="col" { (lang.t("month.reports")) }
                    th scope="col" { (lang.t("month.repayments")) }
                    th scope="col" { (lang.t("month.amount")) }
                    th scope="col" { (lang.t("month.states")) }
                } }
                tbody { @for b in &v.branches {
                    tr data-branch=(b.branch) {
                        th scope="row" { a href={ "/web/reports?period=" (v.period) "&branch=" (encode(&b.branch)) "&partner=" (pq) } { (b.branch) } }
                        td.num data-label=(lang.t("month.reports")) { (b.tally.reports) }
                        td.num data-label=(lang.t("month.repayments")) { (b.tally.repayments) }
                        td.num data-label=(lang.t("month.amount")) data-field="amount" { (total(b.tally.amount)) }
                        td data-label=(lang.t("month.states")) { @for (s, n) in &b.tally.by_state { (repayment_state(lang, *s)) " " (n) " " } }
                    }
                } }
            } }
        }
        @if ctx.viewer.caller.role == Role::Admin {
            form.search method="get" role="search" {
                input type="hidden" name="partner" value=(partner);
                label for="q" { (lang.t("month.search")) }
                input id="q" name="q" type="search" value=(q);
                button type="submit" { (lang.t("month.search_button")) }
            }
            section aria-labelledby="h-not-reported" {
                h2 id="h-not-reported" { (lang.t("month.not_reported_title")) " (" (v.not_reported.len()) ")" }
                p { a download href={ "/web/months/" (v.period) "/not-reported.csv?partner=" (pq) } { (lang.t("month.download_csv")) }
                    @if v.not_reported.len() > LIST_ROWS { " " span.hint { (lang.f("month.first_rows", &[("n", &LIST_ROWS)])) } } }
                div.table-wrap { table id="not-reported" {
                    thead { tr {
                        th scope="col" { (lang.t("month.loan")) }
                        th scope="col" { (lang.t("month.client")) }
                        th scope="col" { (lang.t("month.kiva_id")) }
                        th scope="col" { (lang.t("month.kiva_status")) }
                    } }
                    tbody { @for l in v.not_reported.iter().filter(|l| matches(&[Some(l.internal_loan_id.as_str()), l.internal_client_id.as_deref()])).take(LIST_ROWS) {
                        tr { td.id { (l.internal_loan_id) } td.id { (l.internal_client_id.as_deref().unwrap_or("")) }
                             td.id { @if let Some(k) = l.kiva_id { (k) } } td { (l.status) } }
                    } }
                } }
            }
            section aria-labelledby="h-not-expected" {
                h2 id="h-not-expected" { (lang.t("month.not_expected_title")) " (" (v.not_expected.len()) ")" }
                p { a download href={ "/web/months/" (v.period) "/not-expected.csv?partner=" (pq) } { (lang.t("month.download_csv")) }
                    @if v.not_expected.len() > LIST_ROWS { " " span.hint { (lang.f("month.first_rows", &[("n", &LIST_ROWS)])) } } }
                div.table-wrap { table id="not-expected" {
                    thead { tr {
                        th scope="col" { (lang.t("month.loan")) }
                        th scope="col" { (lang.t("month.client")) }
                        th scope="col" { (lang.t("month.kiva_status")) }
                        th scope="col" { (lang.t("month.branch")) }
                        th scope="col" { (lang.t("month.report")) }
                    } }
                    tbody { @for r in v.not_expected.iter().filter(|r| matches(&[Some(r.loan_id.as_str()), r.client_id.as_deref()])).take(LIST_ROWS) {
                        tr { td.id { (r.loan_id) } td.id { (r.client_id.as_deref().unwrap_or("")) }
                             td { (r.kiva_status.as_deref().unwrap_or(lang.t("month.not_in_list"))) }
                             td { (r.branch) }
                             td { a href={ "/web/reports/" (r.report_id) } { (report_label(r.report_id)) } " #" (r.position + 1) } }
                    } }
                } }
            }
        }
        section aria-labelledby="h-repeated" {
            h2 id="h-repeated" { (lang.t("month.repeated_title")) " (" (v.repeated.len()) ")" }
            @if v.repeated.is_empty() { p { (lang.t("month.none")) } } @else {
                ul { @for r in &v.repeated {
                    li { span.id { (r.loan_id) } @if let Some(c) = &r.client_id { " / " span.id { (c) } } ": "
                        @for id in &r.reports { a href={ "/web/reports/" (id) } { (report_label(*id)) } " " } }
                } }
            }
        }
        section aria-labelledby="h-refused" {
            h2 id="h-refused" { (lang.t("month.refused_title")) " (" (v.rejected_by_kiva.len()) ")" }
            @if v.rejected_by_kiva.is_empty() { p { (lang.t("month.none")) } } @else {
                div.table-wrap { table id="refused" {
                    thead { tr {
                        th scope="col" { (lang.t("month.loan")) }
                        th scope="col" { (lang.t("month.branch")) }
                        th scope="col" { (lang.t("month.report")) }
                        th scope="col" { (lang.t("month.kiva_words")) }
                    } }
                    tbody { @for r in &v.rejected_by_kiva {
                        tr { td { span.id { (r.loan_id) } @if let Some(c) = &r.client_id { " / " span.id { (c) } } }
                             td { (r.branch) }
                             td { a href={ "/web/reports/" (r.report_id) } { (report_label(r.report_id)) } }
                             td lang="en" { @for d in &r.details { (d) br; } } }
                    } }
                } }
            }
        }
    };
    Ok(ctx.page(&title, body))
}

pub async fn month_csv(
    req: HttpRequest,
    state: web::Data<AppState>,
    config: web::Data<WebConfig>,
    path: web::Path<(String, String)>,
    query: web::Query<MonthQuery>,
) -> Result<HttpResponse, PageError> {
    let ctx = Ctx::of(&req, &state, &config).await?;
    let (period, list) = path.into_inner();
    let partner = partner_for(&ctx, &state, query.partner.as_deref())?;
    let (view, partner) = admin_month(&state, &ctx.viewer.caller, &period, Some(partner.as_str()))
        .await
        .map_err(|e| ctx.api(e))?;
    match list.as_str() {
        "not-reported" => not_reported_csv(&view, &partner),
        "not-expected" => not_expected_csv(&view, &partner),
        _ => return Err(ctx.fail(Failure::NotFound)),
    }
    .map_err(|e| ctx.api(e))
}
