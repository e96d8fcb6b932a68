//! How the pages look, measured in the browser: the language switch on the header's first
//! line, months and ids never broken at their hyphen, totals with the usual decimals, reports
//! told apart by their labels, and at phone width every column on the screen.

use serde_json::Value;

use super::Month;
use super::browser::Browser;

const PHONE: (u32, u32) = (390, 844);
const DESKTOP: (u32, u32) = (1280, 1000);

async fn js(b: &Browser, script: &str) -> Value {
    b.client.execute(script, vec![]).await.unwrap()
}

async fn window(b: &Browser, (width, height): (u32, u32)) {
    b.client.set_window_size(width, height).await.unwrap();
}

/// The texts of the page's months, loan and client ids (and the months table's links) that
/// the browser broke over more than one line.
async fn broken_tokens(b: &Browser) -> Vec<Value> {
    let broken = js(
        b,
        "const lines = e => { const r = document.createRange(); r.selectNodeContents(e);
             return new Set([...r.getClientRects()].map(x => Math.round(x.top))).size; };
         return [...document.querySelectorAll('.id, tr[data-period] th a')]
             .filter(e => e.textContent.trim() && lines(e) > 1).map(e => e.textContent);",
    )
    .await;
    broken.as_array().unwrap().clone()
}

/// How far the page, or any table's box, reaches past the window's right edge.
async fn overflow(b: &Browser) -> Value {
    js(
        b,
        "const w = window.innerWidth;
         const wraps = [...document.querySelectorAll('.table-wrap')]
             .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.querySelector('table').id);
         return {page: document.documentElement.scrollWidth - w, tables: wraps};",
    )
    .await
}

async fn header_lines(b: &Browser) {
    let tops = js(
        b,
        "const top = css => document.querySelector(css).getBoundingClientRect().top;
         return [top('header .brand'), top('header .lang')];",
    )
    .await;
    let (brand, lang) = (tops[0].as_f64().unwrap(), tops[1].as_f64().unwrap());
    assert!(
        (brand - lang).abs() < 12.0,
        "the EN/ES switch is on the header's first line at 1280 px: brand at {brand}, switch at {lang}"
    );
}

/// On the months page (`/web/`), signed in as an admin, in either language.
pub(super) async fn months_page(b: &Browser) {
    window(b, DESKTOP).await;
    header_lines(b).await;
    assert_eq!(broken_tokens(b).await, Vec::<Value>::new());
    window(b, PHONE).await;
    let ready = js(
        b,
        "const r = document.querySelector('#months [data-field=ready]').getBoundingClientRect();
         return r.right <= window.innerWidth && r.left >= 0;",
    )
    .await;
    assert_eq!(
        ready,
        Value::Bool(true),
        "\"Ready to finalize?\" is on the phone's screen"
    );
    let over = overflow(b).await;
    assert_eq!(over["page"], 0, "{over}");
    assert_eq!(over["tables"], serde_json::json!([]), "{over}");
    assert_eq!(broken_tokens(b).await, Vec::<Value>::new());
    b.screenshot(&format!("months-phone-{}", lang(b).await))
        .await;
    window(b, DESKTOP).await;
}

/// On the month's page, signed in as an admin, before any report but the fixture's and the
/// clerk's: Mombasa's one repayment of `12.340` is its total.
pub(super) async fn month_page(b: &Browser) {
    assert_eq!(
        b.text("#branches tr[data-branch=Mombasa] [data-field=amount]")
            .await,
        "12.34",
        "a total shows the usual decimals"
    );
    for size in [DESKTOP, PHONE] {
        window(b, size).await;
        assert_eq!(broken_tokens(b).await, Vec::<Value>::new(), "{size:?}");
    }
    let over = overflow(b).await;
    assert_eq!(over["page"], 0, "{over}");
    let tables = over["tables"].as_array().unwrap();
    assert!(
        !tables.contains(&Value::String("branches".into())),
        "the branch table fits a phone: {over}"
    );
    window(b, DESKTOP).await;
}

/// On the reports page: every report has its own label, the end of its id.
pub(super) async fn reports_page(b: &Browser, m: &Month) {
    let rows = js(
        b,
        "return [...document.querySelectorAll('#reports tbody tr')]
             .map(tr => [tr.dataset.report, tr.querySelector('th a').textContent]);",
    )
    .await;
    let rows: Vec<(String, String)> = serde_json::from_value(rows).unwrap();
    assert!(rows.len() >= 3, "{rows:?}");
    let mut labels: Vec<&str> = rows.iter().map(|(_, label)| label.as_str()).collect();
    labels.sort();
    labels.dedup();
    assert_eq!(
        labels.len(),
        rows.len(),
        "each report its own label: {rows:?}"
    );
    for (id, label) in &rows {
        assert!(id.ends_with(label.as_str()), "{id} ends with {label}");
    }
    assert_eq!(
        b.text(&format!(
            "tr[data-report='{}'] td.num:nth-of-type(6)",
            m.mombasa
        ))
        .await,
        "12.34"
    );
}

async fn lang(b: &Browser) -> String {
    b.attr("html", "lang").await.unwrap_or_default()
}
