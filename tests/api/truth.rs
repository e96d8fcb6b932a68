//! Issue 25, items 2 and 3: what validate (the API's and the upload page's "Check the file")
//! says is what the send will do, and a CSV problem is at the line the clerk's editor shows.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::web::plain::{post_sign_in, set_cookie};

const CSV: &str = "text/csv";

fn report(loans: &[&str], correction: bool) -> Value {
    let repayments: Vec<Value> = loans
        .iter()
        .map(|l| json!({"loan_id": l, "client_id": format!("C{l}"), "amount": "10.00"}))
        .collect();
    json!({"period": "2026-10", "correction": correction, "repayments": repayments})
}

/// The same loans as `report`, as a CSV file.
fn csv(loans: &[&str]) -> String {
    let mut text = String::from("loan_id,client_id,amount\r\n");
    for loan in loans {
        text.push_str(&format!("{loan},C{loan},10.00\r\n"));
    }
    text
}

async fn validate(app: &TestApp, key: &str, body: &Value) -> Answer {
    app.send(app.post("/v1/repayments/validate", key, body.to_string()))
        .await
}

async fn validate_csv(app: &TestApp, key: &str, query: &str, body: String) -> Answer {
    app.send(
        app.client
            .post(format!("{}/v1/repayments/validate{query}", app.address))
            .header("X-Api-Key", plain_key(key))
            .header("Content-Type", CSV)
            .body(body),
    )
    .await
}

/// Validate refuses, as the send does, loans an earlier report has in the period: with the
/// earlier report named to its branch and to an admin, not to another branch; and it claims
/// nothing, so a loan validated is still free to send.
async fn validate_refuses_loans_already_reported_as_the_send_does(backend: Backend) {
    let app = spawn(backend).await;
    let first = app.submit(NAIROBI, &report(&["L1", "L2"], false)).await;
    assert_eq!(first.status, 202, "{}", first.text);
    let first_id = first.body["id"].as_str().unwrap().to_owned();
    let stored = app.stored().await;
    let again = report(&["L3", "L2", "L1"], false);

    for key in [NAIROBI, HEAD_OFFICE] {
        let checked = validate(&app, key, &again).await;
        let sent = app.submit(key, &again).await;
        assert_eq!(checked.status, 422, "{key}: {}", checked.text);
        assert_eq!(checked.status, sent.status, "{}", sent.text);
        assert_eq!(checked.body["errors"], sent.body["errors"], "{key}");
        assert_eq!(
            checked.pointers(),
            ["/repayments/1/loan_id", "/repayments/2/loan_id"]
        );
        assert!(checked.text.contains(&first_id), "{}", checked.text);
        let file = validate_csv(&app, key, "?period=2026-10", csv(&["L3", "L2", "L1"])).await;
        assert_eq!(file.status, 422, "{}", file.text);
        assert_eq!(file.pointers(), checked.pointers(), "{}", file.text);
        assert!(file.text.contains(&first_id), "{}", file.text);
    }
    let checked = validate(&app, MOMBASA, &again).await;
    assert_eq!(checked.status, 422, "{}", checked.text);
    assert_eq!(
        checked.pointers(),
        ["/repayments/1/loan_id", "/repayments/2/loan_id"]
    );
    for error in checked.body["errors"].as_array().unwrap() {
        let detail = error["detail"].as_str().unwrap();
        assert!(
            detail.contains("already reported by another branch office this period"),
            "{detail}"
        );
    }
    assert!(!checked.text.contains(&first_id), "{}", checked.text);
    assert_eq!(
        checked.body["errors"],
        app.submit(MOMBASA, &again).await.body["errors"]
    );

    // A new loan checks clean, and validating it kept nothing: it is still free to send.
    let fresh = validate(&app, MOMBASA, &report(&["L3"], false)).await;
    assert_eq!(fresh.status, 200, "{}", fresh.text);
    assert!(fresh.body.get("not_checked").is_none(), "{}", fresh.text);
    assert_eq!(app.stored().await, stored, "validate stored nothing");
    let sent = app.submit(MOMBASA, &report(&["L3"], false)).await;
    assert_eq!(sent.status, 202, "{}", sent.text);
}

/// A correction passes validate when the send would take it: the reporting branch's own
/// loans, any loan for an admin; another branch's correction of them is refused by both. A
/// file says it is a correction in its query, and validate reads it there too.
async fn validate_checks_a_correction_by_the_send_s_branch_rules(backend: Backend) {
    let app = spawn(backend).await;
    let first = app.submit(NAIROBI, &report(&["L1", "L2"], false)).await;
    assert_eq!(first.status, 202, "{}", first.text);
    let correction = report(&["L1"], true);

    for key in [NAIROBI, HEAD_OFFICE] {
        let checked = validate(&app, key, &correction).await;
        assert_eq!(checked.status, 200, "{key}: {}", checked.text);
        assert_eq!(checked.body["correction"], true, "{}", checked.text);
        let file = validate_csv(&app, key, "?period=2026-10&correction=true", csv(&["L1"])).await;
        assert_eq!(file.status, 200, "{key}: {}", file.text);
        assert_eq!(file.body["correction"], true, "{}", file.text);
    }
    let file = validate_csv(&app, NAIROBI, "?period=2026-10", csv(&["L1"])).await;
    assert_eq!(file.status, 422, "not a correction: {}", file.text);

    let checked = validate(&app, MOMBASA, &correction).await;
    let sent = app.submit(MOMBASA, &correction).await;
    assert_eq!(checked.status, 422, "{}", checked.text);
    assert_eq!(sent.status, 422, "{}", sent.text);
    assert_eq!(checked.body["errors"], sent.body["errors"]);
    assert_eq!(checked.pointers(), ["/repayments/0/loan_id"]);
    assert!(checked.text.contains("another branch"), "{}", checked.text);
    let file = validate_csv(
        &app,
        MOMBASA,
        "?period=2026-10&correction=true",
        csv(&["L1"]),
    )
    .await;
    assert_eq!(file.status, 422, "{}", file.text);
    assert_eq!(file.pointers(), ["/repayments/0/loan_id"], "{}", file.text);

    let sent = app.submit(NAIROBI, &correction).await;
    assert_eq!(sent.status, 202, "{}", sent.text);
}

/// When the period's loans can't be read, validate does not answer as if they were checked:
/// the answer names the check it could not make, and the page says so instead of "no problem".
async fn validate_names_the_check_it_could_not_make(backend: Backend) {
    let mut gate = None;
    let app = spawn_app_for(
        backend,
        |_| {},
        |inner| {
            let gated = Arc::new(GatedStore::open(inner));
            gate = Some(gated.clone());
            gated
        },
    )
    .await;
    let store = gate.unwrap();
    let first = app.submit(NAIROBI, &report(&["L1"], false)).await;
    assert_eq!(first.status, 202, "{}", first.text);
    store.fail_accept_check.store(true, Ordering::SeqCst);

    let checked = validate(&app, NAIROBI, &report(&["L1"], false)).await;
    assert_eq!(checked.status, 200, "{}", checked.text);
    let not_checked = checked.body["not_checked"].to_string();
    assert!(
        not_checked.contains("already reported in this period"),
        "{}",
        checked.text
    );

    let page = check_on_the_page(&app, NAIROBI, csv(&["L1"]).as_bytes()).await;
    assert_eq!(page.0, 200, "{}", page.1);
    assert!(
        page.1.contains("not every check could be made"),
        "{}",
        page.1
    );
    assert!(
        page.1.contains("already reported in this period"),
        "{}",
        page.1
    );
    assert!(!page.1.contains("No problem found in"), "{}", page.1);
}

/// The page's "Check the file" refuses what its "Send" would: a loan already reported this
/// period, named by line.
async fn the_upload_page_check_refuses_loans_already_reported(backend: Backend) {
    let app = spawn(backend).await;
    let first = app.submit(NAIROBI, &report(&["L1", "L2"], false)).await;
    assert_eq!(first.status, 202, "{}", first.text);
    let (status, html) = check_on_the_page(&app, NAIROBI, csv(&["L3", "L2"]).as_bytes()).await;
    assert_eq!(status, 422, "{html}");
    assert!(html.contains("id=\"refused\""), "{html}");
    assert!(html.contains("already reported in this period"), "{html}");
    assert!(html.contains("/repayments/1/loan_id"), "{html}");
    let (status, html) = check_on_the_page(&app, MOMBASA, csv(&["L3", "L2"]).as_bytes()).await;
    assert_eq!(status, 422, "{html}");
    assert!(
        html.contains("already reported by another branch office this period"),
        "{html}"
    );
    let id = first.body["id"].as_str().unwrap();
    assert!(!html.contains(id), "{html}");
}

/// A partner that rejects unexpected loans: the page's check lists them, as the send would
/// refuse them (it answered an error page).
async fn the_upload_page_check_lists_unexpected_loans_a_partner_rejects(backend: Backend) {
    let rig = spawn_delivery_rig_with(backend, |s| {
        s.partners[0].unexpected_loans = repayment_gateway::config::UnexpectedLoans::Reject;
    })
    .await;
    refresh(&rig.app).await;
    let file = "loan_id,client_id,amount\r\nL-1,C-1,1\r\nL-unknown,C-1,1\r\n";
    let checked = validate_csv(&rig.app, NAIROBI, "?period=2026-09", file.into()).await;
    assert_eq!(checked.status, 422, "{}", checked.text);
    assert_eq!(
        checked.pointers(),
        ["/repayments/1/loan_id"],
        "{}",
        checked.text
    );
    let (status, html) = check_on_the_page(&rig.app, NAIROBI, file.as_bytes()).await;
    assert_eq!(status, 422, "{html}");
    assert!(html.contains("L-unknown"), "{html}");
}

on_both_stores!(
    validate_refuses_loans_already_reported_as_the_send_does,
    validate_checks_a_correction_by_the_send_s_branch_rules,
    validate_names_the_check_it_could_not_make,
    the_upload_page_check_refuses_loans_already_reported,
    the_upload_page_check_lists_unexpected_loans_a_partner_rejects,
);

/// Issue 25 item 3: Excel on Windows writes `\r\n`; a bad amount on line 6 was reported at
/// line 5, on the API and the page. Every line end, and a quoted field across lines.
#[tokio::test]
async fn a_csv_problem_is_at_the_line_the_editor_shows_on_the_api_and_the_page() {
    let app = spawn(Backend::Embedded).await;
    for end in ["\r\n", "\n", "\r"] {
        let file = [
            "loan_id,client_id,amount",
            "L-1,C-1,1.00",
            "L-2,\"C-2",
            "continued\",2.00",
            "L-3,C-3,3.00",
            "L-4,C-4,4.0000",
        ]
        .join(end)
            + end;
        let checked = validate_csv(&app, NAIROBI, "?period=2026-10", file.clone()).await;
        assert_eq!(checked.status, 422, "{end:?}: {}", checked.text);
        // The client id across two lines is refused too, at the line it starts on.
        assert_eq!(
            checked.pointers(),
            ["/repayments/1/client_id", "/repayments/3/amount"],
            "{end:?}"
        );
        let at: Vec<&Value> = checked.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["line"])
            .collect();
        assert_eq!(at, [&json!(3), &json!(6)], "{end:?}: {}", checked.text);
        let (status, html) = check_on_the_page(&app, NAIROBI, file.as_bytes()).await;
        assert_eq!(status, 422, "{end:?}: {html}");
        assert!(html.contains("line 6"), "{end:?}: {html}");
        assert!(html.contains("line 3"), "{end:?}: {html}");
        assert!(!html.contains("line 5"), "{end:?}: {html}");
    }
}

/// Kiva's expected loans read into the store, as an admin asks for it.
async fn refresh(app: &TestApp) {
    let answer = app
        .send(
            app.client
                .post(format!(
                    "{}/v1/partners/{THREE_COL}/expected-loans/refresh",
                    app.address
                ))
                .header("X-Api-Key", plain_key(HEAD_OFFICE)),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    wait_until("the refresh ends", async || {
        let status = app
            .get(
                &format!("/v1/partners/{THREE_COL}/expected-loans"),
                Some(HEAD_OFFICE),
            )
            .await
            .body;
        status["refresh"]["running"] == false
    })
    .await;
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

const BOUNDARY: &str = "truth-test-boundary";

/// The upload page's "Check the file" over plain HTTP, signed in with `key`, for 2026-10
/// (2026-09 where the file has `L-unknown`): its status and HTML.
async fn check_on_the_page(app: &TestApp, key: &str, file: &[u8]) -> (u16, String) {
    let signed_in = post_sign_in(&app.address, &plain_key(key)).await;
    assert_eq!(signed_in.status(), 303);
    let cookie = set_cookie(&signed_in, "rg_session").expect("a session cookie");
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let page = no_redirects()
        .get(format!("{}/web/upload", app.address))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page has its token")
        .to_owned();
    let period = if file.windows(9).any(|w| w == b"L-unknown") {
        "2026-09"
    } else {
        "2026-10"
    };
    let part = |name: &str, value: &str| {
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        )
        .into_bytes()
    };
    let mut body = [
        part("csrf", &csrf),
        part("idempotency_key", &"c".repeat(64)),
    ]
    .concat();
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"nairobi.csv\"\r\nContent-Type: text/csv\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(b"\r\n");
    body.extend(part("period", period));
    body.extend(part("step", "check"));
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    let answer = no_redirects()
        .post(format!("{}/web/upload", app.address))
        .header("Cookie", &cookie)
        .header(
            "Content-Type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap())
}
