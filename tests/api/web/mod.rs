//! The coordinator's pages in a real headless Chromium, against the real gateway (Redis store,
//! worker driven step by step, the in-process Kiva sandbox): sign-in as branch and admin, the
//! month's numbers against `GET /v1/periods/{period}`, branch isolation by URL, a held batch
//! resent and then delivered, a form without its CSRF token refused, Spanish with no English
//! left, sign-out ending the session, every page also fetched without JavaScript. Screenshots
//! of every page in both languages land in `target/screenshots/`.

mod advice;
mod browser;
mod edge;
mod lists;
mod looks;
pub(crate) mod plain;
mod upload;

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::helpers::*;
use browser::Browser;
use repayment_gateway::web::i18n::{Lang, messages};

const PERIOD: &str = "2026-10";

/// The gateway with a month in it: Nairobi's report delivered (Kiva refuses its ended loan
/// `L-7`), Mombasa's held (Kiva answered 500), and Kiva's expected loans read.
pub(crate) struct Month {
    pub(crate) rig: DeliveryRig,
    pub(crate) worker: repayment_gateway::delivery::Worker,
    pub(crate) nairobi: String,
    pub(crate) mombasa: String,
}

async fn a_month_with_a_held_batch() -> Month {
    let rig = spawn_delivery_rig(Backend::Redis).await;
    rig.sandbox.set_loan_status(THREE_COL, "L-7", "ended");
    let refresh = post_refresh(&rig.app, HEAD_OFFICE).await;
    assert!(refresh.status < 300, "{}", refresh.text);
    wait_until("Kiva's expected loans are read", async || {
        period_json(&rig.app).await["expected_loans"].is_object()
    })
    .await;
    let worker = rig.worker();
    let nairobi = rig
        .submit(
            NAIROBI,
            &json!({"period": PERIOD, "repayments": [
                {"loan_id": "L-1", "client_id": "C-1", "amount": "25.00"},
                {"loan_id": "L-2", "client_id": "C-2", "amount": "40.50"},
                {"loan_id": "L-7", "client_id": "C-7", "amount": "10.125"}]}),
        )
        .await;
    assert_eq!(rig.drain(&worker).await, 1);
    rig.sandbox
        .push_fault(repayment_gateway::sandbox::Fault::status(500, "{}"));
    let mombasa = rig
        .submit(
            MOMBASA,
            &json!({"period": PERIOD, "repayments": [
                {"loan_id": "L-3", "client_id": "C-3", "amount": "12.340"}]}),
        )
        .await;
    assert_eq!(rig.drain(&worker).await, 1);
    assert_eq!(batch_state(&rig, &mombasa).await, "held");
    Month {
        rig,
        worker,
        nairobi,
        mombasa,
    }
}

async fn period_json(app: &TestApp) -> Value {
    let answer = app
        .get(&format!("/v1/periods/{PERIOD}"), Some(HEAD_OFFICE))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.body
}

async fn batch_state(rig: &DeliveryRig, report: &str) -> String {
    rig.report(report).await["batches"][0]["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn sign_in(b: &Browser, address: &str, key: &str) {
    b.goto(&format!("{address}/web/sign-in")).await;
    b.type_into("#api_key", &plain_key(key)).await;
    b.click("form.card button[type=submit]").await;
    b.wait_path("/web/").await;
}

async fn sign_out(b: &Browser) {
    b.click("form[action='/web/sign-out'] button").await;
    b.wait_path("/web/sign-in").await;
}

#[tokio::test]
async fn the_pages_work_in_a_real_browser_for_branch_and_admin_in_both_languages() {
    let m = a_month_with_a_held_batch().await;
    let address = m.rig.app.address.clone();
    let b = Browser::start().await;

    // `/` leads to the pages, which ask for a key first.
    b.goto(&format!("{address}/")).await;
    assert_eq!(b.path().await, "/web/sign-in");
    assert_eq!(b.attr("html", "lang").await.as_deref(), Some("en"));
    b.screenshot("sign-in-en").await;

    a_branch_user_sees_only_their_branch(&b, &m).await;
    let admin_cookie = the_month_page_shows_the_numbers_of_the_api(&b, &m).await;
    every_page_works_without_javascript(&m, &admin_cookie).await;
    a_held_batch_is_resent_after_a_refused_forged_form_and_then_shows_delivered(&b, &m).await;
    the_spanish_pages_have_no_english_left(&b, &m).await;
    let last = b.cookie("rg_session").await.unwrap();
    assert_eq!(
        session_answer(&m, &last).await,
        200,
        "the session works before sign-out"
    );
    sign_out(&b).await;
    assert_eq!(
        session_answer(&m, &last).await,
        303,
        "after sign-out the old cookie leads to the sign-in page"
    );
    b.client.clone().close().await.unwrap();
}

async fn a_branch_user_sees_only_their_branch(b: &Browser, m: &Month) {
    let address = &m.rig.app.address;
    sign_in(b, address, NAIROBI).await;
    let row = format!("tr[data-period='{PERIOD}']");
    assert_eq!(
        b.text(&format!("{row} [data-field=repayments]")).await,
        "3 repayments"
    );
    assert_eq!(
        b.text(&format!("{row} [data-field=amount]")).await,
        "75.625"
    );
    assert_eq!(
        b.count(&format!("{row} .chip[data-state]")).await,
        1,
        "Nairobi's only"
    );
    assert!(
        b.text(&format!("{row} .chip[data-state]"))
            .await
            .starts_with("Nairobi")
    );
    b.screenshot("months-branch-en").await;

    // Mombasa's report, by its address: the page says not found, as the API does.
    b.goto(&format!("{address}/web/reports/{}", m.mombasa))
        .await;
    assert_eq!(b.text("h1").await, "Not found");
    b.screenshot("not-found-en").await;
    let status = reqwest::Client::new()
        .get(format!("{address}/web/reports/{}", m.mombasa))
        .header(
            "Cookie",
            format!("rg_session={}", b.cookie("rg_session").await.unwrap()),
        )
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
    // Nor does the branch see the held batch's actions.
    b.goto(&format!("{address}/web/batches/{}.1/resend", m.mombasa))
        .await;
    assert_eq!(b.text("h1").await, "Not found");
    upload::a_clerk_uploads_a_file_fixes_its_problems_and_sends_it_once(b, m).await;
    sign_out(b).await;
}

/// Signs in as admin; returns the session cookie.
async fn the_month_page_shows_the_numbers_of_the_api(b: &Browser, m: &Month) -> String {
    let address = &m.rig.app.address;
    sign_in(b, address, HEAD_OFFICE).await;
    let api = period_json(&m.rig.app).await;
    let expected = &api["expected_loans"];
    assert_eq!(
        b.text(&format!(
            "tr[data-period='{PERIOD}'] [data-field=reported-of-expected]"
        ))
        .await,
        format!(
            "{} reported of {} expected",
            expected["reported"], expected["expected"]
        )
    );
    b.screenshot("months-en").await;
    looks::months_page(b).await;

    b.goto(&format!("{address}/web/months/{PERIOD}")).await;
    let num = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for (field, value) in [
        ("reports", &api["total"]["reports"]),
        ("corrections", &api["total"]["corrections"]),
        ("repayments", &api["total"]["repayments"]),
        ("amount", &api["total"]["amount"]),
        ("expected", &expected["expected"]),
        ("reported", &expected["reported"]),
        ("pending", &expected["pending"]),
        ("not-reported", &expected["not_reported"]),
    ] {
        assert_eq!(
            b.text(&format!("#h-summary ~ dl [data-field={field}]"))
                .await,
            match field {
                "amount" => shown_total(&num(value)),
                _ => num(value),
            },
            "{field}"
        );
    }
    assert_eq!(
        b.attr("#h-summary ~ [data-field=ready]", "data-ready")
            .await,
        Some(api["ready_to_finalize"].to_string())
    );
    assert_eq!(
        b.count("#h-summary ~ ul.reasons li").await,
        api["reasons"].as_array().unwrap().len()
    );
    let not_reported = api["not_reported"].as_array().unwrap().len();
    assert_eq!(not_reported, 494, "500 loans, L-7 ended, 5 reported");
    assert_eq!(
        b.count("#not-reported tbody tr").await,
        100,
        "the first 100; the CSV has all"
    );
    assert_eq!(b.count("#not-expected tbody tr").await, 1, "L-7 is ended");
    assert!(b.text("#refused").await.contains("L-7"));
    looks::month_page(b).await;
    advice::month_page(b).await;
    b.screenshot("month-en").await;
    b.client.set_window_size(390, 844).await.unwrap();
    b.screenshot("month-phone-en").await;
    b.client.set_window_size(1280, 1000).await.unwrap();

    // The search narrows the list without JavaScript (a GET form).
    b.type_into("#q", "L-40").await;
    b.click("form.search button").await;
    b.wait_for("input#q[value='L-40']").await;
    assert_eq!(
        b.count("#not-reported tbody tr").await,
        11,
        "L-40 and L-400…L-409"
    );

    b.goto(&format!("{address}/web/reports")).await;
    assert_eq!(b.count("#reports tbody tr").await, 3);
    looks::reports_page(b, m).await;
    b.screenshot("reports-en").await;
    b.goto(&format!("{address}/web/reports/{}", m.nairobi))
        .await;
    assert_eq!(b.count("table.repayments tbody tr").await, 3);
    b.screenshot("report-en").await;
    b.cookie("rg_session").await.expect("a session cookie")
}

async fn a_held_batch_is_resent_after_a_refused_forged_form_and_then_shows_delivered(
    b: &Browser,
    m: &Month,
) {
    let address = &m.rig.app.address;
    let batch = format!("{}.1", m.mombasa);
    b.goto(&format!("{address}/web/attention")).await;
    assert_eq!(b.count("article[data-batch]").await, 1);
    b.screenshot("attention-en").await;
    b.click(&format!(
        "article[data-batch='{batch}'] a[data-action=resend]"
    ))
    .await;
    assert_eq!(b.path().await, format!("/web/batches/{batch}/resend"));
    let loans = b.text("#confirm-loans tbody").await;
    assert_eq!(
        loans.split_whitespace().collect::<Vec<_>>(),
        ["L-3", "C-3", "12.340"]
    );
    b.screenshot("confirm-en").await;

    // The same form without its token: refused, and nothing changes.
    b.client
        .execute(
            "document.querySelector('form.card input[name=csrf]').remove();",
            vec![],
        )
        .await
        .unwrap();
    b.click("#confirm").await;
    b.wait_for("p.notice.bad[role=alert]").await;
    assert_eq!(b.text("h1").await, "Form refused");
    b.screenshot("csrf-refused-en").await;
    assert_eq!(batch_state(&m.rig, &m.mombasa).await, "held");
    let partner = repayment_gateway::domain::PartnerId::parse(THREE_COL).unwrap();
    assert!(
        m.rig
            .app
            .store
            .queued_batches(&partner)
            .await
            .unwrap()
            .is_empty()
    );

    b.goto(&format!("{address}/web/batches/{batch}/resend"))
        .await;
    b.click("#confirm").await;
    b.wait_path(&format!("/web/reports/{}", m.mombasa)).await;
    assert!(b.text("#done").await.contains("queued"));
    let report = m.rig.report(&m.mombasa).await;
    let actions = &report["batches"][0]["operator_actions"];
    assert_eq!(actions.as_array().unwrap().len(), 1);
    assert_eq!(actions[0]["by"], HEAD_OFFICE);
    assert_eq!(actions[0]["action"], "resend");

    let uploads_before = m.rig.sandbox.uploads().len();
    assert_eq!(m.rig.drain(&m.worker).await, 1);
    assert_eq!(m.rig.sandbox.uploads().len(), uploads_before + 1);
    b.goto(&format!("{address}/web/reports/{}", m.mombasa))
        .await;
    assert_eq!(
        b.attr(
            &format!("section[data-batch='{batch}'] h2 .chip"),
            "data-state"
        )
        .await
        .as_deref(),
        Some("delivered")
    );
    b.screenshot("report-resent-en").await;
    b.goto(&format!("{address}/web/attention")).await;
    assert_eq!(b.count("article[data-batch]").await, 0);
}

/// Texts of the English messages that must not show on a Spanish page: each message that
/// differs in Spanish, cut at its placeholders into pieces long enough to mean something.
fn english_texts() -> Vec<String> {
    let (en, es) = (messages(Lang::En), messages(Lang::Es));
    let mut texts: Vec<String> = en
        .iter()
        .filter(|(key, text)| es.get(*key) != Some(*text))
        .flat_map(|(_, text)| {
            text.split(['{', '}'])
                .step_by(2)
                .map(str::trim)
                .filter(|piece| piece.chars().filter(|c| c.is_alphabetic()).count() >= 5)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    texts.sort();
    texts.dedup();
    texts
}

async fn the_spanish_pages_have_no_english_left(b: &Browser, m: &Month) {
    let address = &m.rig.app.address;
    let english = english_texts();
    assert!(english.len() > 100, "{}", english.len());
    // A second held batch, to see the confirmation and mark it delivered in Spanish.
    m.rig
        .sandbox
        .push_fault(repayment_gateway::sandbox::Fault::status(500, "{}"));
    let held = m
        .rig
        .submit(
            MOMBASA,
            &json!({"period": PERIOD, "repayments": [
                {"loan_id": "L-4", "client_id": "C-4", "amount": "5"}]}),
        )
        .await;
    assert_eq!(m.rig.drain(&m.worker).await, 1);

    b.goto(&format!("{address}/web/")).await;
    b.click(".lang a[hreflang=es]").await;
    b.wait_for("html[lang=es]").await;
    assert_eq!(b.attr("html", "lang").await.as_deref(), Some("es"));
    let mut pages: HashMap<&str, String> = HashMap::new();
    pages.insert("months", format!("{address}/web/"));
    pages.insert("month", format!("{address}/web/months/{PERIOD}"));
    pages.insert("reports", format!("{address}/web/reports"));
    pages.insert("report", format!("{address}/web/reports/{}", m.nairobi));
    pages.insert(
        "report-resent",
        format!("{address}/web/reports/{}", m.mombasa),
    );
    pages.insert("attention", format!("{address}/web/attention"));
    pages.insert("upload", format!("{address}/web/upload"));
    pages.insert(
        "confirm",
        format!("{address}/web/batches/{held}.1/mark-delivered"),
    );
    pages.insert("not-found", format!("{address}/web/reports/not-a-report"));
    let mut names: Vec<_> = pages.keys().copied().collect();
    names.sort();
    for name in names {
        b.goto(&pages[name]).await;
        let text = b.text_outside_quotes().await;
        let left = english_in(&text, &english);
        assert!(
            left.is_empty(),
            "English on the Spanish {name} page: {left:?}\n{text}"
        );
        b.screenshot(&format!("{name}-es")).await;
        if name == "months" {
            looks::months_page(b).await;
        }
        if name == "not-found" {
            assert_eq!(b.text("h1").await, "No encontrado");
        }
    }

    // Mark delivered, in Spanish, with PA2's upload id.
    b.goto(&pages["confirm"]).await;
    b.type_into("#upload_id", "884213").await;
    b.click("#confirm").await;
    b.wait_for("#done").await;
    assert!(b.text("#done").await.contains("entregado"));
    let report = m.rig.report(&held).await;
    assert_eq!(report["batches"][0]["state"], "delivered");
    assert_eq!(report["batches"][0]["result"]["upload_id"], "884213");

    b.goto(&format!("{address}/web/months/{PERIOD}")).await;
    b.client.set_window_size(390, 844).await.unwrap();
    b.screenshot("month-phone-es").await;
    b.client.set_window_size(1280, 1000).await.unwrap();

    // Signed out, the sign-in page in Spanish too (the language cookie stays).
    sign_out(b).await;
    let text = b.text_outside_quotes().await;
    let left = english_in(&text, &english);
    assert!(
        left.is_empty(),
        "English on the Spanish sign-in page: {left:?}"
    );
    b.screenshot("sign-in-es").await;
    // Back in English and signed in as admin for what follows.
    b.goto(&format!("{address}/web/language?lang=en&back=/web/sign-in"))
        .await;
    sign_in(b, address, HEAD_OFFICE).await;
}

/// Every page, fetched as a browser without JavaScript would: the whole content and every form
/// is in the HTML itself, and there is no script at all.
async fn every_page_works_without_javascript(m: &Month, cookie: &str) {
    let address = &m.rig.app.address;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let api = period_json(&m.rig.app).await;
    let pages = [
        (
            "/web/".to_owned(),
            vec![format!("data-period=\"{PERIOD}\"")],
        ),
        (
            format!("/web/months/{PERIOD}"),
            vec![
                format!(
                    "data-field=\"expected\">{}<",
                    api["expected_loans"]["expected"]
                ),
                format!(
                    "data-field=\"amount\">{}<",
                    shown_total(api["total"]["amount"].as_str().unwrap())
                ),
                "id=\"not-reported\"".to_owned(),
            ],
        ),
        (
            "/web/reports".to_owned(),
            vec![format!("data-report=\"{}\"", m.nairobi)],
        ),
        (
            format!("/web/reports/{}", m.mombasa),
            vec!["data-state=\"held\"".to_owned()],
        ),
        (
            "/web/attention".to_owned(),
            vec![format!("data-batch=\"{}.1\"", m.mombasa)],
        ),
        (
            "/web/upload".to_owned(),
            vec!["enctype=\"multipart/form-data\"".to_owned()],
        ),
        (
            format!("/web/batches/{}.1/resend", m.mombasa),
            vec![
                "<form".to_owned(),
                "method=\"post\"".to_owned(),
                "name=\"csrf\"".to_owned(),
            ],
        ),
    ];
    for (path, wanted) in pages {
        let answer = client
            .get(format!("{address}{path}"))
            .header("Cookie", format!("rg_session={cookie}"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{path}");
        let html = answer.text().await.unwrap();
        assert!(!html.contains("<script"), "{path} has a script");
        assert!(html.contains("<h1>"), "{path} has a heading");
        for w in wanted {
            assert!(html.contains(&w), "{path} lacks {w}");
        }
    }
    // Without JavaScript a CSV download is a plain link.
    let csv = client
        .get(format!("{address}/web/months/{PERIOD}/not-reported.csv"))
        .header("Cookie", format!("rg_session={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    let text = csv.text().await.unwrap();
    assert!(text.starts_with("internal_loan_id,"), "{text}");
    assert_eq!(
        text.lines().count() - 1,
        api["not_reported"].as_array().unwrap().len()
    );
}

/// A total of the API (its exact digits) as the pages show it: two decimals, more only when
/// the sum has them.
pub(crate) fn shown_total(api: &str) -> String {
    let mut total: rust_decimal::Decimal = api.parse().unwrap();
    total = total.normalize();
    if total.scale() < 2 {
        total.rescale(2);
    }
    total.to_string()
}

/// The status of the months page for a request with this session cookie (no redirects
/// followed: an ended session answers 303 to the sign-in page).
async fn session_answer(m: &Month, cookie: &str) -> u16 {
    let answer = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/web/", m.rig.app.address))
        .header("Cookie", format!("rg_session={cookie}"))
        .send()
        .await
        .unwrap();
    if answer.status() == 303 {
        assert_eq!(answer.headers()["location"], "/web/sign-in");
    }
    answer.status().as_u16()
}

/// The English texts found in `text` as whole words (`Client` is not in `Cliente`).
fn english_in<'a>(text: &str, english: &'a [String]) -> Vec<&'a String> {
    english
        .iter()
        .filter(|e| {
            text.match_indices(e.as_str()).any(|(at, _)| {
                let before = text[..at].chars().next_back();
                let after = text[at + e.len()..].chars().next();
                !before.is_some_and(char::is_alphanumeric)
                    && !after.is_some_and(char::is_alphanumeric)
            })
        })
        .collect()
}
