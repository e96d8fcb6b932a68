//! What a newcomer meets in the first hour (issue 9): a retry that differs only in layout is
//! a retry, a refused reuse says what differs, an every-partner admin key lists across
//! partners, and a browser at `/` lands on Swagger UI.

use serde_json::json;

use crate::helpers::*;

const FIRST: &str = r#"{"period":"2026-10","repayments":[
    {"loan_id":"L1","client_id":"C1","amount":"25.00"},
    {"loan_id":"L2","client_id":"C2","amount":40.5},
    {"loan_id":"L3","client_id":"C3","amount":"25.00"}]}"#;

async fn the_same_report_in_another_layout_is_replayed(backend: Backend) {
    let app = spawn(backend).await;
    let first = app.submit_idempotent(NAIROBI, "layout", FIRST).await;
    assert_eq!(first.status, 202, "{}", first.text);
    // Other white space, other key order, the amount as a string: the same report.
    let same = r#"{ "repayments" : [ {"amount":"25.00","client_id":"C1","loan_id":"L1"},
        {"client_id":"C2", "amount":"40.5", "loan_id":"L2"},
        {"loan_id":"L3","amount":25.00,"client_id":"C3"} ],
      "period" : "2026-10" }"#;

    let again = app.submit_idempotent(NAIROBI, "layout", same).await;

    assert_eq!(again.status, 202, "{}", again.text);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.text, first.text);
    assert_eq!(app.stream_entries(THREE_COL).await.len(), 1);
}

async fn a_reused_key_names_what_differs(backend: Backend) {
    let app = spawn(backend).await;
    assert_eq!(app.submit_idempotent(NAIROBI, "k", FIRST).await.status, 202);

    let other_amount = FIRST.replacen(
        r#"{"loan_id":"L3","client_id":"C3","amount":"25.00"}"#,
        r#"{"loan_id":"L3","client_id":"C3","amount":"26.00"}"#,
        1,
    );
    let reused = app.submit_idempotent(NAIROBI, "k", &other_amount).await;
    assert_eq!(reused.status, 422, "{}", reused.text);
    assert_eq!(reused.body["type"], "/problems/idempotency-key-reused");
    let detail = reused.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("repayment 3's amount (/repayments/2/amount): 25.00 then 26.00"),
        "{detail}"
    );

    let fewer = r#"{"period":"2026-10","repayments":[
        {"loan_id":"L1","client_id":"C1","amount":"25.00"},
        {"loan_id":"L2","client_id":"C2","amount":40.5}]}"#;
    let reused = app.submit_idempotent(NAIROBI, "k", fewer).await;
    assert_eq!(reused.status, 422, "{}", reused.text);
    let detail = reused.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("the number of repayments: 3 then 2"),
        "{detail}"
    );

    let other_period = FIRST.replace("2026-10", "2026-11");
    let reused = app.submit_idempotent(NAIROBI, "k", &other_period).await;
    let detail = reused.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("the period: 2026-10 then 2026-11"),
        "{detail}"
    );
    assert_eq!(app.stream_entries(THREE_COL).await.len(), 1);
}

async fn an_every_partner_admin_key_lists_across_partners_page_by_page(backend: Backend) {
    let app = spawn(backend).await;
    let mut submitted = vec![];
    for i in 0..5 {
        let (key, partner) = if i % 2 == 0 {
            (NAIROBI, THREE_COL)
        } else {
            (TWO_COL_BRANCH, TWO_COL)
        };
        let body = json!({"period": "2026-10", "repayments": [
            {"loan_id": format!("L{i}"), "client_id": format!("C{i}"), "amount": "10.00"}]});
        let accepted = app.submit(key, &body).await;
        assert_eq!(accepted.status, 202, "{}", accepted.text);
        submitted.push((accepted.body["id"].as_str().unwrap().to_owned(), partner));
    }
    let newest_first: Vec<_> = submitted.iter().rev().map(|(id, _)| id.clone()).collect();

    let mut seen = vec![];
    let mut path = "/v1/reports?status=queued&limit=2".to_owned();
    for _ in 0..5 {
        let page = app.get(&path, Some(NETWORK_ADMIN)).await;
        assert_eq!(page.status, 200, "{}", page.text);
        for report in page.body["reports"].as_array().unwrap() {
            seen.push(report["id"].as_str().unwrap().to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/reports?status=queued&limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);

    let one = app
        .get(
            &format!("/v1/reports?partner_id={TWO_COL}"),
            Some(NETWORK_ADMIN),
        )
        .await;
    let ids: Vec<_> = one.body["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<_> = submitted
        .iter()
        .rev()
        .filter(|(_, p)| *p == TWO_COL)
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(ids, expected);
    // A partner's own admin key still sees only its partner.
    let own = app.get("/v1/reports", Some(HEAD_OFFICE)).await;
    assert_eq!(own.body["reports"].as_array().unwrap().len(), 3);
}

on_both_stores!(
    the_same_report_in_another_layout_is_replayed,
    a_reused_key_names_what_differs,
    an_every_partner_admin_key_lists_across_partners_page_by_page,
);

#[tokio::test]
async fn a_browser_at_the_root_is_sent_to_the_pages_which_link_swagger_ui() {
    let app = spawn(Backend::Embedded).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let answer = app.send(client.get(format!("{}/", app.address))).await;
    assert_eq!(answer.status, 303, "{}", answer.text);
    assert_eq!(answer.header("location"), Some("/web/"));
    // Followed, as a browser does, it is the sign-in page, which links Swagger UI.
    let page = app.send(app.client.get(format!("{}/", app.address))).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("href=\"/swagger-ui/\""), "{}", page.text);
    let swagger = app
        .send(app.client.get(format!("{}/swagger-ui/", app.address)))
        .await;
    assert_eq!(swagger.status, 200);
    assert!(swagger.text.contains("swagger-ui"), "{}", swagger.text);
}

/// The README's error table lists every problem the API documents (each one's examples are
/// made by the code that makes the answer), and names where the document is served.
#[test]
fn the_readme_lists_every_documented_problem_and_the_served_document() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let doc = repayment_gateway::api::openapi::document();
    let mut missing = vec![];
    for operations in doc["paths"].as_object().unwrap().values() {
        for operation in operations.as_object().unwrap().values() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                let examples = &response["content"]["application/problem+json"]["examples"];
                for example in examples.as_object().into_iter().flat_map(|e| e.values()) {
                    let row = format!(
                        "| {status} | `{}` |",
                        example["value"]["type"].as_str().unwrap()
                    );
                    if !readme.contains(&row) && !missing.contains(&row) {
                        missing.push(row);
                    }
                }
            }
        }
    }
    assert!(missing.is_empty(), "README's error table lacks {missing:?}");
    assert!(readme.contains(repayment_gateway::api::openapi::OPENAPI_PATH));
    assert!(readme.contains("partner_id=102"));
}

/// The Quick start's example loans exist in the demo's sandbox (partner 102, three-column),
/// so following the README against `serve --demo` delivers them instead of `loan_not_found`.
#[test]
fn the_readmes_example_loans_are_in_the_demo_sandbox() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let loans = repayment_gateway::sandbox::SandboxConfig::demo().loans;
    let mut found = 0;
    for part in readme.split(r#"{"loan_id": ""#).skip(1) {
        let loan = part.split('"').next().unwrap();
        let Some(client) = part
            .split_once(r#""client_id": ""#)
            .map(|(_, rest)| rest.split('"').next().unwrap())
        else {
            continue;
        };
        assert!(
            loans.iter().any(|l| l.partner_id == "102"
                && l.internal_loan_id == loan
                && l.internal_client_id == client
                && l.status == "payingBack"),
            "the README's loan {loan} of {client} is not a paying-back loan of the demo"
        );
        found += 1;
    }
    assert!(found >= 2, "{found}");
}

/// `repayment-gateway healthcheck`: exit 0 when `/health/ready` answers 200, 1 otherwise;
/// by default on the configured bind address (a wildcard bind probed on loopback).
#[tokio::test]
async fn the_healthcheck_subcommand_probes_readiness() {
    let app = spawn(Backend::Embedded).await;
    let run = async |args: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_repayment-gateway"))
            .arg("healthcheck")
            .args(args)
            .env_remove("GATEWAY_CONFIG")
            .output()
            .await
            .unwrap()
    };
    let ready = run(&["--url", &format!("{}/health/ready", app.address)]).await;
    assert!(ready.status.success(), "{ready:?}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let down = run(&[
        "--url",
        &format!("http://127.0.0.1:{closed_port}/health/ready"),
    ])
    .await;
    assert_eq!(down.status.code(), Some(1), "{down:?}");

    let port = app.address.rsplit(':').next().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&format!("embedded:{}", dir.path().join("s").display())).replace(
        "bind = \"127.0.0.1:0\"",
        &format!("bind = \"0.0.0.0:{port}\""),
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let configured = run(&["--config", path.to_str().unwrap()]).await;
    assert!(configured.status.success(), "{configured:?}");
}
