//! The frame every page shares: skip link, navigation, language switch, who is signed in.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::i18n::Lang;
use super::{Ctx, HOME};
use crate::config::Role;
use crate::domain::Amount;
use crate::store::{BatchState, RepaymentState, ReportStatus};

pub fn page(lang: Lang, ctx: Option<&Ctx>, title: &str, body: Markup) -> Markup {
    let here = ctx.map_or("/web/sign-in", |c| c.path.as_str());
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (lang.t("app.name")) }
                link rel="stylesheet" href="/web/assets/site.css";
            }
            body {
                a.skip href="#main" { (lang.t("nav.skip")) }
                header.top {
                    a.brand href=(HOME) { (lang.t("app.name")) }
                    @if let Some(ctx) = ctx {
                        nav aria-label=(lang.t("nav.label")) {
                            ul {
                                li { a href=(HOME) aria-current=[current(here, HOME)] { (lang.t("nav.months")) } }
                                li { a href="/web/reports" aria-current=[current(here, "/web/reports")] { (lang.t("nav.reports")) } }
                                li { a href="/web/attention" aria-current=[current(here, "/web/attention")] { (lang.t("nav.attention")) } }
                                li { a href="/web/upload" aria-current=[current(here, "/web/upload")] { (lang.t("nav.upload")) } }
                                li { a href="/swagger-ui/" { (lang.t("nav.api")) } }
                            }
                        }
                        (language_switch(lang, here))
                        div.who {
                            span { (lang.t("nav.signed_in_as")) " " strong { (ctx.viewer.caller.key_name) }
                                " (" (ctx.viewer.caller.branch) ", "
                                (match ctx.viewer.caller.role { Role::Admin => lang.t("role.admin"), Role::Branch => lang.t("role.branch") })
                                ")" }
                            form method="post" action="/web/sign-out" {
                                input type="hidden" name="csrf" value=(ctx.viewer.csrf);
                                button.link type="submit" { (lang.t("nav.sign_out")) }
                            }
                        }
                    } @else {
                        nav aria-label=(lang.t("nav.label")) {
                            ul { li { a href="/swagger-ui/" { (lang.t("nav.api")) } } }
                        }
                        (language_switch(lang, here))
                    }
                }
                main id="main" tabindex="-1" { (body) }
                footer { p { (lang.t("footer.text")) " " a href="/swagger-ui/" { "Swagger UI" } } }
            }
        }
    }
}

/// The other languages, on the header's first line: a reader who can't read this one finds it
/// before anything else that may wrap.
fn language_switch(lang: Lang, here: &str) -> Markup {
    html! {
        div.lang {
            @for other in Lang::ALL {
                @if other == lang {
                    span aria-current="true" lang=(other.code()) { (other.code().to_uppercase()) }
                } @else {
                    a href={ "/web/language?lang=" (other.code()) "&back=" (encode(here)) }
                        lang=(other.code()) hreflang=(other.code()) {
                        (other.code().to_uppercase())
                        span.visually-hidden { " " (other_name(other)) }
                    }
                }
            }
        }
    }
}

fn current(here: &str, link: &str) -> Option<&'static str> {
    let this = if link == HOME {
        here == HOME || here.starts_with("/web/months")
    } else {
        here.starts_with(link)
    };
    this.then_some("page")
}

/// Each language's name in itself, so a reader finds their own.
fn other_name(lang: Lang) -> &'static str {
    match lang {
        Lang::En => "English",
        Lang::Es => "Español",
    }
}

pub fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

pub fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// A total as a page shows it: the usual two decimals, more only when the sum has them
/// (`1283.75`, not `1283.750`; `450.00`; `75.625`). A sum keeps the most decimals of the amounts
/// it adds, so one `12.340` made every total it was in end in a zero. Pages only: what is
/// stored, sent to Kiva and answered by the API keeps the digits received.
pub fn total(amount: Amount) -> String {
    two_decimals_at_least(amount.as_decimal())
}

/// `total` of a sum the API gave as text (`NormalizedReport::total_amount`); text that is not
/// a number is shown as it is.
pub fn total_of_text(text: &str) -> String {
    text.parse()
        .map_or_else(|_| text.to_owned(), two_decimals_at_least)
}

fn two_decimals_at_least(decimal: rust_decimal::Decimal) -> String {
    let mut decimal = decimal.normalize();
    if decimal.scale() < 2 {
        decimal.rescale(2);
    }
    decimal.to_string()
}

/// How a page names a report: the last block of its id. Ids are UUIDv7, whose first blocks are
/// the time (every report of the same minute or so began alike); the last block is random,
/// so it tells reports apart, and the full id, shown on the report's page, ends with it.
pub fn report_label(id: uuid::Uuid) -> String {
    let text = id.to_string();
    text[text.len() - 12..].to_owned()
}

pub fn wire_name<T: serde::Serialize>(value: T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// How bad a state is, for the chip's colour (the text says it too: colour is never alone).
fn tone(name: &str) -> &'static str {
    match name {
        "delivered" | "accepted" => "good",
        "needs_attention" | "held" | "failed" | "rejected" | "rejected_by_kiva" => "bad",
        "delivered_with_problems" | "warning" => "warn",
        _ => "wait",
    }
}

pub fn report_status(lang: Lang, status: ReportStatus) -> Markup {
    let name = wire_name(status);
    chip(&name, status_text(lang, &name))
}

pub fn batch_state(lang: Lang, state: BatchState) -> Markup {
    let name = wire_name(state);
    chip(&name, status_text(lang, &name))
}

pub fn repayment_state(lang: Lang, state: RepaymentState) -> Markup {
    let name = wire_name(state);
    chip(&name, status_text(lang, &name))
}

fn chip(name: &str, text: &str) -> Markup {
    html! { span class={ "chip " (tone(name)) } data-state=(name) { (text) } }
}

pub fn status_text(lang: Lang, name: &str) -> &'static str {
    match name {
        "queued" => lang.t("state.queued"),
        "delivering" => lang.t("state.delivering"),
        "delivered" => lang.t("state.delivered"),
        "delivered_with_problems" => lang.t("state.delivered_with_problems"),
        "needs_attention" => lang.t("state.needs_attention"),
        "sending" => lang.t("state.sending"),
        "retry_wait" => lang.t("state.retry_wait"),
        "rejected" => lang.t("state.rejected"),
        "held" => lang.t("state.held"),
        "failed" => lang.t("state.failed"),
        "accepted" => lang.t("state.accepted"),
        "warning" => lang.t("state.warning"),
        "rejected_by_kiva" => lang.t("state.rejected_by_kiva"),
        _ => lang.t("state.unknown"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn totals_show_two_decimals_or_the_ones_the_sum_needs() {
        for (sum, shown) in [
            ("1283.750", "1283.75"),
            ("450", "450.00"),
            ("12.5", "12.50"),
            ("75.625", "75.625"),
            ("0", "0.00"),
            ("100.000", "100.00"),
        ] {
            assert_eq!(total(Amount::parse(sum).unwrap()), shown, "{sum}");
            assert_eq!(total_of_text(sum), shown, "{sum}");
        }
    }

    #[test]
    fn reports_made_in_the_same_instant_have_different_labels() {
        let ids: Vec<uuid::Uuid> = (0..1000).map(|_| uuid::Uuid::now_v7()).collect();
        let labels: HashSet<String> = ids.iter().map(|id| report_label(*id)).collect();
        assert_eq!(labels.len(), ids.len());
        for id in &ids {
            assert!(id.to_string().ends_with(&report_label(*id)));
        }
    }
}
