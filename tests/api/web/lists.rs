//! The months and needs-attention pages list a page at a time (their cost must not grow with
//! the store), and their numbers stay those of the API.

use serde_json::json;

use super::plain::{post_sign_in, set_cookie};
use crate::helpers::*;

async fn page(rig: &DeliveryRig, cookie: &str, path: &str) -> String {
    let answer = rig
        .app
        .client
        .get(format!("{}{path}", rig.app.address))
        .header("Cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{path}");
    answer.text().await.unwrap()
}

/// The `data-period` of each row of the months table, in order.
fn periods_listed(html: &str) -> Vec<String> {
    html.split("<tr data-period=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect()
}

/// The row of `period` in the months table.
fn row<'a>(html: &'a str, period: &str) -> &'a str {
    let start = html
        .find(&format!("<tr data-period=\"{period}\""))
        .unwrap_or_else(|| panic!("no row for {period}"));
    let rest = &html[start..];
    &rest[..rest.find("</tr>").unwrap()]
}

fn batches_listed(html: &str) -> Vec<String> {
    html.split("data-batch=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect()
}

async fn the_months_and_attention_pages_list_a_page_at_a_time_with_the_apis_numbers(
    backend: Backend,
) {
    let rig = spawn_delivery_rig_with(backend, |s| s.kiva.batch_size = 1).await;
    let refresh = post_refresh(&rig.app, HEAD_OFFICE).await;
    assert_eq!(refresh.status, 202, "{}", refresh.text);
    wait_until("Kiva's expected loans are read", async || {
        rig.app
            .get(
                &format!("/v1/partners/{THREE_COL}/expected-loans"),
                Some(HEAD_OFFICE),
            )
            .await
            .body["refresh"]["last_succeeded_at"]
            .is_string()
    })
    .await;
    // Eight months; month i reports loans L-0 to L-i, all delivered.
    let worker = rig.worker();
    for i in 0..8 {
        let repayments: Vec<_> = (0..=i)
            .map(|l| json!({"loan_id": format!("L-{l}"), "client_id": format!("C-{l}"), "amount": "1"}))
            .collect();
        rig.submit(
            NAIROBI,
            &json!({"period": format!("2026-0{}", i + 1), "repayments": repayments}),
        )
        .await;
    }
    assert_eq!(rig.drain(&worker).await, 36);
    // Then Kiva fails 23 calls in a row: 23 batches (of one repayment) held.
    for _ in 0..23 {
        rig.sandbox
            .push_fault(repayment_gateway::sandbox::Fault::status(500, "{}"));
    }
    let repayments: Vec<_> = (100..123)
        .map(|l| json!({"loan_id": format!("L-{l}"), "client_id": format!("C-{l}"), "amount": "2"}))
        .collect();
    let held = rig
        .submit(
            MOMBASA,
            &json!({"period": "2026-08", "repayments": repayments}),
        )
        .await;
    assert_eq!(rig.drain(&worker).await, 23);

    let api = rig.app.get("/v1/periods", Some(HEAD_OFFICE)).await;
    assert_eq!(api.status, 200, "{}", api.text);
    let api_periods = api.body["periods"].as_array().unwrap().clone();
    assert_eq!(api_periods.len(), 8);

    let signed_in = post_sign_in(&rig.app.address, &plain_key(HEAD_OFFICE)).await;
    let cookie = set_cookie(&signed_in, "rg_session").expect("signed in");
    let cookie = cookie.split(';').next().unwrap().to_owned();

    let first = page(&rig, &cookie, "/web/").await;
    let second = page(&rig, &cookie, "/web/?page=2").await;
    assert_eq!(
        periods_listed(&first),
        [
            "2026-08", "2026-07", "2026-06", "2026-05", "2026-04", "2026-03"
        ]
    );
    assert_eq!(periods_listed(&second), ["2026-02", "2026-01"]);
    assert!(
        first.contains("Page 1 of 2") && first.contains("page=2\""),
        "{first}"
    );
    assert!(!first.contains("rel=\"prev\""));
    assert!(second.contains("Page 2 of 2") && second.contains("page=1\""));
    assert!(!second.contains("rel=\"next\""));
    for p in &api_periods {
        let period = p["period"].as_str().unwrap();
        let html = if period >= "2026-03" { &first } else { &second };
        let row = row(html, period);
        let (reported, expected) = (
            p["reported"].as_u64().unwrap(),
            p["expected"].as_u64().unwrap(),
        );
        let month: u64 = period[5..].parse().unwrap();
        assert_eq!((reported, expected), (month, 500), "{p}");
        assert!(
            row.contains(&format!("{reported} reported of {expected} expected")),
            "{row}"
        );
        assert!(
            row.contains(&format!(
                "data-field=\"amount\">{}<",
                super::shown_total(p["amount"].as_str().unwrap())
            )),
            "{row}"
        );
        let ready = p["ready_to_finalize"].as_bool().unwrap();
        assert!(row.contains(&format!("data-ready=\"{ready}\"")), "{row}");
    }
    // 2026-08's Mombasa chip says it needs attention; Nairobi's is delivered.
    let august = row(&first, "2026-08");
    assert!(
        august.contains("data-state=\"needs_attention\">Mombasa"),
        "{august}"
    );
    assert!(
        august.contains("data-state=\"delivered\">Nairobi"),
        "{august}"
    );
    // A page past the last shows the last.
    assert_eq!(
        periods_listed(&page(&rig, &cookie, "/web/?page=3").await),
        ["2026-02", "2026-01"]
    );

    let first = page(&rig, &cookie, "/web/attention").await;
    let second = page(&rig, &cookie, "/web/attention?page=2").await;
    let batch = |n: usize| format!("{held}.{n}");
    assert_eq!(
        batches_listed(&first),
        (1..=20).map(batch).collect::<Vec<_>>()
    );
    assert_eq!(
        batches_listed(&second),
        (21..=23).map(batch).collect::<Vec<_>>()
    );
    assert!(first.contains("rel=\"next\"") && !first.contains("rel=\"prev\""));
    assert!(second.contains("rel=\"prev\"") && !second.contains("rel=\"next\""));
    let report = rig.report(&held).await;
    let states = batch_states(&report);
    assert_eq!(states.len(), 23);
    assert!(states.iter().all(|s| s == "held"), "{states:?}");
    assert!(batches_listed(&page(&rig, &cookie, "/web/attention?page=3").await).is_empty());
}

on_both_stores!(the_months_and_attention_pages_list_a_page_at_a_time_with_the_apis_numbers);
