//! The Kiva stand-in, driven over HTTP the way the gateway's client drives it.

use std::net::SocketAddr;
use std::time::Duration;

use repayment_gateway::sandbox::{Fault, ResponseShape, Sandbox, SandboxConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest a test waits for something to become true.
const DEADLINE: Duration = Duration::from_secs(10);
const TWO_COLUMN: (&str, &str, &str) = ("101", "demo-two-column", "demo-secret-101");
const THREE_COLUMN: (&str, &str, &str) = ("102", "demo-three-column", "demo-secret-102");
const BOTH_SCOPES: &str = "create:repayment read:loans";

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn start() -> Sandbox {
    start_with(SandboxConfig::demo()).await
}

async fn start_with(config: SandboxConfig) -> Sandbox {
    Sandbox::start(config, local())
        .await
        .expect("sandbox starts")
}

async fn request_token(
    sandbox: &Sandbox,
    (_, client_id, secret): (&str, &str, &str),
    audience: &str,
    scope: &str,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(sandbox.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", secret),
            ("audience", audience),
            ("scope", scope),
        ])
        .send()
        .await
        .expect("token endpoint answers")
}

async fn token(sandbox: &Sandbox, partner: (&str, &str, &str), scope: &str) -> String {
    let response = request_token(sandbox, partner, &sandbox.audience(), scope).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

fn repayments_url(sandbox: &Sandbox, partner_id: &str) -> String {
    format!("{}/v3/partner/{partner_id}/repayments", sandbox.base_url())
}

async fn post_repayments(
    client: &reqwest::Client,
    sandbox: &Sandbox,
    partner_id: &str,
    token: &str,
    body: &str,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(repayments_url(sandbox, partner_id))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(body.to_owned())
        .send()
        .await
}

async fn post_ok(sandbox: &Sandbox, token: &str, body: &str) -> (StatusCode, Value) {
    let response = post_repayments(&reqwest::Client::new(), sandbox, "101", token, body)
        .await
        .expect("repayments endpoint answers");
    let status = response.status();
    (status, response.json().await.unwrap())
}

const ONE_REPAYMENT: &str = r#"{"repayments":[{"loan_id":"L-1001","amount":25.00}]}"#;

#[tokio::test]
async fn a_token_is_issued_for_good_credentials_and_refused_otherwise() {
    let sandbox = start().await;
    let audience = sandbox.audience();

    let issued = request_token(&sandbox, THREE_COLUMN, &audience, BOTH_SCOPES).await;
    assert_eq!(issued.status(), StatusCode::OK);
    assert_eq!(issued.headers()["cache-control"], "no-store");
    let body: Value = issued.json().await.unwrap();
    let access_token = body["access_token"].as_str().unwrap();
    assert!(access_token.starts_with("sbx_") && access_token.len() == 36);
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 43199);
    assert_eq!(body["scope"], BOTH_SCOPES);
    assert_eq!(body["iss"], format!("{}/", sandbox.base_url()));
    assert_eq!(body["partnerId"], json!("102"), "partnerId is a string");
    assert_eq!(body["jti"].as_str().unwrap().len(), 36);

    let (_, client_id, _) = TWO_COLUMN;
    let bad_secret = request_token(
        &sandbox,
        ("101", client_id, "not-the-secret"),
        &audience,
        "create:repayment",
    )
    .await;
    assert_eq!(bad_secret.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        bad_secret.json::<Value>().await.unwrap(),
        json!({"error": "access_denied", "error_description": "Unauthorized"})
    );

    let bad_audience = request_token(
        &sandbox,
        TWO_COLUMN,
        "https://elsewhere.example",
        "create:repayment",
    )
    .await;
    assert_eq!(bad_audience.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        bad_audience.json::<Value>().await.unwrap()["error"],
        "access_denied"
    );

    let no_scope = request_token(&sandbox, TWO_COLUMN, &audience, "openid").await;
    assert_eq!(no_scope.status(), StatusCode::FORBIDDEN);

    let malformed = reqwest::Client::new()
        .post(sandbox.token_url())
        .form(&[("client_id", "demo-two-column")])
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        malformed.json::<Value>().await.unwrap()["error"],
        "invalid_request"
    );

    assert_eq!(sandbox.token_requests(), 5);
    assert_eq!(sandbox.tokens_issued(), 1);
}

#[tokio::test]
async fn an_upload_is_recorded_byte_for_byte_with_its_exact_numbers() {
    let sandbox = start().await;
    let token = token(&sandbox, TWO_COLUMN, "create:repayment").await;
    let body = "{\"repayments\": [\n  {\"loan_id\": \"L-1001\", \"amount\": 25.00},\n  \
                {\"loan_id\": \"L-1002\", \"client_id\": \"C-1002\", \"amount\": 1234567890.123456789}\n]}";

    let (status, answer) = post_ok(&sandbox, &token, body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer,
        json!({"code": "ok", "message": "Repayments received", "upload_id": 1, "problems": []})
    );
    let (_, second) = post_ok(&sandbox, &token, ONE_REPAYMENT).await;
    assert_eq!(second["upload_id"], 2);

    let uploads = sandbox.uploads();
    assert_eq!(uploads.len(), 2);
    let first = &uploads[0];
    assert_eq!(first.upload_id, 1);
    assert_eq!(first.partner_id, "101");
    assert_eq!(first.body, body);
    assert_eq!(first.authorization, token);
    let amounts: Vec<String> = first.json["repayments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|repayment| repayment["amount"].as_number().unwrap().to_string())
        .collect();
    assert_eq!(amounts, ["25.00", "1234567890.123456789"]);
    assert!(
        !format!("{first:?}").contains(&token),
        "Debug hides the token"
    );
    assert_eq!(sandbox.repayment_requests(), 2);
}

#[tokio::test]
async fn loans_kiva_would_not_take_come_back_as_problems() {
    let sandbox = start().await;
    let token = token(&sandbox, TWO_COLUMN, "create:repayment").await;
    sandbox.warn_on_loan("101", "L-1002", "Amount is unusually large");
    sandbox.set_loan_status("101", "L-1003", "refunded");
    let body = r#"{"repayments":[
        {"loan_id":"L-1001","amount":10},
        {"loan_id":"L-1002","amount":99999},
        {"loan_id":"L-1003","amount":10},
        {"loan_id":"L-1005","amount":10},
        {"loan_id":"L-1006","amount":10},
        {"loan_id":"L-9999","amount":10}
    ]}"#;

    let (status, answer) = post_ok(&sandbox, &token, body).await;

    assert_eq!(status, StatusCode::OK, "problems don't refuse the upload");
    let problems = answer["problems"].as_array().unwrap();
    assert_eq!(
        problems[0],
        json!({"loan_id": "L-1002", "details": "Amount is unusually large", "code": "warning", "severity": "warning"})
    );
    assert_eq!(
        problems[1]["details"],
        "Loan is not in payingBack or defaulted status (status: refunded)"
    );
    assert_eq!(
        problems[2],
        json!({
            "loan_id": "L-1006",
            "details": "Loan is not in payingBack or defaulted status (status: ended)",
            "code": "loan_not_paying_back",
            "severity": "error"
        })
    );
    assert_eq!(problems[3]["loan_id"], "L-9999");
    assert_eq!(problems[3]["code"], "loan_not_found");
    assert_eq!(problems[3]["severity"], "error");
    assert_eq!(problems.len(), 4, "the defaulted loan L-1005 is fine");
    assert_eq!(sandbox.uploads().len(), 1);
}

#[tokio::test]
async fn a_three_column_loan_must_match_its_client() {
    let sandbox = start().await;
    let token = token(&sandbox, THREE_COLUMN, "create:repayment").await;
    let body = r#"{"repayments":[
        {"loan_id":"L-2001","client_id":"C-2001","amount":10},
        {"loan_id":"L-2002","client_id":"C-2001","amount":10}
    ]}"#;
    let response = post_repayments(&reqwest::Client::new(), &sandbox, "102", &token, body)
        .await
        .unwrap();
    let answer: Value = response.json().await.unwrap();
    let problems = answer["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0]["loan_id"], "L-2002");
    assert_eq!(problems[0]["code"], "loan_not_found");
}

#[tokio::test]
async fn the_array_shape_wraps_the_same_result() {
    let sandbox = start().await;
    sandbox.set_response_shape(ResponseShape::Array);
    let token = token(&sandbox, TWO_COLUMN, "create:repayment").await;

    let (status, answer) = post_ok(&sandbox, &token, ONE_REPAYMENT).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer,
        json!([{"code": "ok", "message": "Repayments received", "upload_id": 1, "problems": []}])
    );
}

#[tokio::test]
async fn revoked_and_expired_tokens_answer_401() {
    let sandbox = start().await;
    let old = token(&sandbox, TWO_COLUMN, "create:repayment").await;
    sandbox.revoke_tokens();

    let (status, answer) = post_ok(&sandbox, &old, ONE_REPAYMENT).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer["code"], "unauthorized");
    let fresh = token(&sandbox, TWO_COLUMN, "create:repayment").await;
    assert_eq!(
        post_ok(&sandbox, &fresh, ONE_REPAYMENT).await.0,
        StatusCode::OK
    );

    let expiring = start_with(SandboxConfig {
        token_ttl_secs: 0,
        ..SandboxConfig::demo()
    })
    .await;
    let expired = token(&expiring, TWO_COLUMN, "create:repayment").await;
    let (status, answer) = post_ok(&expiring, &expired, ONE_REPAYMENT).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer["message"], "the token has expired");

    assert_eq!(sandbox.repayment_requests(), 2);
    assert_eq!(sandbox.uploads().len(), 1);
}

#[tokio::test]
async fn requests_kiva_would_refuse_are_refused_in_order() {
    let sandbox = start().await;
    let client = reqwest::Client::new();
    let repayment_only = token(&sandbox, TWO_COLUMN, "create:repayment").await;
    let loans_only = token(&sandbox, TWO_COLUMN, "read:loans").await;

    let no_token = client
        .post(repayments_url(&sandbox, "101"))
        .json(&json!({"repayments": [{"loan_id": "L-1001", "amount": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(no_token.headers()["www-authenticate"], "Bearer");

    let other_partner = post_repayments(&client, &sandbox, "102", &repayment_only, ONE_REPAYMENT)
        .await
        .unwrap();
    assert_eq!(other_partner.status(), StatusCode::FORBIDDEN);
    let no_scope = post_repayments(&client, &sandbox, "101", &loans_only, ONE_REPAYMENT)
        .await
        .unwrap();
    assert_eq!(no_scope.status(), StatusCode::FORBIDDEN);

    let not_json = client
        .post(repayments_url(&sandbox, "101"))
        .bearer_auth(&repayment_only)
        .header("content-type", "text/csv")
        .body("L-1001,25.00")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let string_amount = r#"{"repayments":[{"loan_id":"L-1001","amount":"25.00"}]}"#;
    let refused = post_repayments(&client, &sandbox, "101", &repayment_only, string_amount)
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let answer: Value = refused.json().await.unwrap();
    assert_eq!(answer["code"], "bad_request");
    assert_eq!(
        answer["problems"],
        json!([{
            "loan_id": "L-1001",
            "details": "repayments[0]: amount must be a JSON number, not a string",
            "code": "invalid_repayment",
            "severity": "error"
        }])
    );

    assert_eq!(sandbox.repayment_requests(), 5);
    assert!(sandbox.uploads().is_empty());
}

#[tokio::test]
async fn a_status_fault_answers_once_with_its_retry_after() {
    let sandbox = start().await;
    let token = token(&sandbox, TWO_COLUMN, "create:repayment").await;
    sandbox.push_fault(Fault::Status {
        status: 503,
        retry_after: Some("120".to_owned()),
        body: r#"{"code":"unavailable"}"#.to_owned(),
    });
    let client = reqwest::Client::new();

    let faulted = post_repayments(&client, &sandbox, "101", &token, ONE_REPAYMENT)
        .await
        .unwrap();
    assert_eq!(faulted.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(faulted.headers()["retry-after"], "120");
    assert_eq!(faulted.headers()["content-type"], "application/json");
    assert_eq!(faulted.text().await.unwrap(), r#"{"code":"unavailable"}"#);
    assert!(sandbox.uploads().is_empty());

    let next = post_repayments(&client, &sandbox, "101", &token, ONE_REPAYMENT)
        .await
        .unwrap();
    assert_eq!(next.status(), StatusCode::OK);
    assert_eq!(sandbox.repayment_requests(), 2);
    assert_eq!(sandbox.uploads().len(), 1);
}

#[tokio::test]
async fn a_fault_comes_before_the_token_check() {
    let sandbox = start().await;
    sandbox.push_fault(Fault::status(429, "slow down"));
    let (status, answer) = {
        let response = post_repayments(
            &reqwest::Client::new(),
            &sandbox,
            "101",
            "not-a-token",
            ONE_REPAYMENT,
        )
        .await
        .unwrap();
        (response.status(), response.text().await.unwrap())
    };
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer, "slow down");
}

#[tokio::test]
async fn a_dropped_connection_gives_the_client_an_error_and_records_nothing() {
    let sandbox = start().await;
    let token = token(&sandbox, TWO_COLUMN, "create:repayment").await;
    let client = reqwest::Client::new();
    // A kept-alive connection, as the gateway's client would have: the drop must not be
    // retried by the HTTP client on a fresh connection behind our back.
    let warm = post_repayments(&client, &sandbox, "101", &token, ONE_REPAYMENT)
        .await
        .unwrap();
    assert_eq!(warm.status(), StatusCode::OK);
    sandbox.push_fault(Fault::DropConnection);

    let error = post_repayments(&client, &sandbox, "101", &token, ONE_REPAYMENT)
        .await
        .expect_err("no response");

    assert!(!error.is_timeout() && !error.is_connect(), "{error:?}");
    assert_eq!(sandbox.repayment_requests(), 2);
    assert_eq!(sandbox.uploads().len(), 1);
    let again = post_repayments(&client, &sandbox, "101", &token, ONE_REPAYMENT)
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(sandbox.uploads().len(), 2);
}

#[tokio::test]
async fn a_stall_outlasts_the_client_and_is_processed_anyway() {
    let sandbox = start().await;
    let token = token(&sandbox, TWO_COLUMN, "create:repayment").await;
    sandbox.push_fault(Fault::Stall(Duration::from_secs(1)));
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();

    let error = post_repayments(&impatient, &sandbox, "101", &token, ONE_REPAYMENT)
        .await
        .expect_err("the client gives up first");

    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(sandbox.repayment_requests(), 1);
    // Like a slow Kiva that did process the call: the upload exists though nobody saw the answer.
    sandbox.wait_for_uploads(1, DEADLINE).await;
    assert_eq!(sandbox.uploads()[0].body, ONE_REPAYMENT);
}

#[tokio::test]
async fn token_faults_apply_to_the_token_route() {
    let sandbox = start().await;
    sandbox.push_token_fault(Fault::status(500, "<html>oops</html>"));
    sandbox.push_token_fault(Fault::DropConnection);
    let audience = sandbox.audience();

    let failed = request_token(&sandbox, TWO_COLUMN, &audience, "create:repayment").await;
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        failed.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    let dropped = reqwest::Client::new()
        .post(sandbox.token_url())
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await;
    assert!(dropped.is_err());
    token(&sandbox, TWO_COLUMN, "create:repayment").await;

    assert_eq!(sandbox.token_requests(), 3);
    assert_eq!(sandbox.tokens_issued(), 1);
    assert_eq!(sandbox.repayment_requests(), 0);
}

#[tokio::test]
async fn waiting_for_requests_resolves_when_they_arrive() {
    let sandbox = start().await;
    let token = token(&sandbox, TWO_COLUMN, "create:repayment").await;
    sandbox.set_latency(Duration::from_millis(50));
    let sender = {
        let sandbox = sandbox.clone();
        tokio::spawn(async move {
            for _ in 0..3 {
                post_ok(&sandbox, &token, ONE_REPAYMENT).await;
            }
        })
    };

    sandbox.wait_for_repayment_requests(3, DEADLINE).await;

    sender.await.unwrap();
    assert_eq!(sandbox.uploads().len(), 3);
}

#[tokio::test]
#[should_panic(expected = "expected at least 1")]
async fn waiting_for_requests_that_never_come_panics() {
    let sandbox = start().await;
    sandbox
        .wait_for_repayment_requests(1, Duration::from_millis(10))
        .await;
}

async fn loans(
    sandbox: &Sandbox,
    partner_id: &str,
    token: &str,
    query: &str,
) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .get(format!(
            "{}/v3/partner/{partner_id}/loans?{query}",
            sandbox.base_url()
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

fn loan_ids(page: &Value) -> Vec<&str> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|loan| loan["internal_loan_id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn the_loans_list_pages_and_filters() {
    let sandbox = start().await;
    let token = token(&sandbox, TWO_COLUMN, BOTH_SCOPES).await;

    let (status, first) = loans(
        &sandbox,
        "101",
        &token,
        "status=payingBack&offset=0&limit=3",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // L-1001..L-1004 and the demo's L-HOLD.
    assert_eq!(first["total_records"], 5);
    assert_eq!(loan_ids(&first), ["L-1001", "L-1002", "L-1003"]);
    assert_eq!(
        first["data"][0],
        json!({
            "internal_loan_id": "L-1001",
            "internal_client_id": "C-1001",
            "kiva_id": 2400101,
            "status": "payingBack",
            "loan_local_price": "25000.00",
            "loan_currency": "KES",
            "delinquent": false
        })
    );
    let (_, second) = loans(
        &sandbox,
        "101",
        &token,
        "status=payingBack&offset=3&limit=3",
    )
    .await;
    assert_eq!(second["total_records"], 5);
    assert_eq!(loan_ids(&second), ["L-1004", "L-HOLD"]);
    assert_eq!(second["data"][0]["delinquent"], true);

    let (_, expected) = loans(
        &sandbox,
        "101",
        &token,
        "status=payingBack,defaulted&limit=300",
    )
    .await;
    assert_eq!(expected["total_records"], 6);
    let (_, all) = loans(&sandbox, "101", &token, "").await;
    assert_eq!(all["total_records"], 7);
    let (_, searched) = loans(&sandbox, "101", &token, "query=c-1005").await;
    assert_eq!(loan_ids(&searched), ["L-1005"]);

    let (status, _) = loans(&sandbox, "101", &token, "limit=301").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = loans(&sandbox, "102", &token, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let repayment_only = self::token(&sandbox, TWO_COLUMN, "create:repayment").await;
    let (status, _) = loans(&sandbox, "101", &repayment_only, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_refused() {
    let sandbox = start().await;
    let client = reqwest::Client::new();

    let missing = client
        .get(format!("{}/v2/anything", sandbox.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        missing.json::<Value>().await.unwrap(),
        json!({"code": "not_found"})
    );

    let wrong_method = client
        .get(repayments_url(&sandbox, "101"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.headers()["allow"], "POST");
    assert_eq!(sandbox.repayment_requests(), 0, "only POSTs count");
}

#[tokio::test]
async fn one_connection_serves_request_after_request() {
    let sandbox = start().await;
    let address = sandbox.base_url().trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!("GET /nothing HTTP/1.1\r\nhost: {address}\r\n\r\n");
    stream
        .write_all(format!("{request}{request}").as_bytes())
        .await
        .unwrap();

    let mut received = String::new();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(DEADLINE, async {
        while received.matches("HTTP/1.1 404").count() < 2 {
            let read = stream.read(&mut buffer).await.unwrap();
            assert_ne!(read, 0, "the connection closed after {received:?}");
            received.push_str(std::str::from_utf8(&buffer[..read]).unwrap());
        }
    })
    .await
    .expect("two answers on one connection");
}

#[tokio::test]
async fn after_shutdown_connections_are_refused() {
    let sandbox = start().await;
    let url = sandbox.token_url();
    sandbox.shutdown();

    let refused = reqwest::Client::new().post(&url).send().await.unwrap_err();
    assert!(refused.is_connect(), "{refused:?}");
    tokio::time::timeout(DEADLINE, sandbox.stopped())
        .await
        .expect("stopped");
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_sandbox() {
    let sandbox = start().await;
    let url = sandbox.token_url();
    let clone = sandbox.clone();
    drop(sandbox);
    assert!(
        reqwest::Client::new().post(&url).send().await.is_ok(),
        "a clone keeps it running"
    );

    drop(clone);
    let refused = reqwest::Client::new().post(&url).send().await.unwrap_err();
    assert!(refused.is_connect(), "{refused:?}");
}
