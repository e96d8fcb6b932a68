//! What the Kiva client reports for the strange answers Kiva (or what stands in front of it)
//! could send, each produced by the sandbox. The rule: once a status line has arrived, Kiva
//! has answered, and the answer is returned as `Answered` with that status (a 200 means Kiva
//! processed the call) whatever the body, which is kept raw in the excerpt; only when no
//! status line arrives in time is the outcome unknown.

use std::time::Duration;

use bytes::Bytes;
use repayment_gateway::config::{KivaSettings, PartnerSettings};
use repayment_gateway::domain::{ColumnFormat, PartnerId};
use repayment_gateway::kiva::{KivaAnswer, KivaClient, SendOutcome, Severity, UploadResult};
use repayment_gateway::sandbox::{Fault, Sandbox, SandboxConfig};
use secrecy::SecretString;

const BODY: &str = r#"{"repayments":[{"loan_id":"L-1001","amount":25.00}]}"#;
const DEADLINE: Duration = Duration::from_secs(10);

async fn sandbox() -> Sandbox {
    Sandbox::start(SandboxConfig::demo(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("sandbox starts")
}

fn client(sandbox: &Sandbox, timeout_secs: u64) -> KivaClient {
    let settings = KivaSettings {
        token_url: sandbox.token_url(),
        audience: sandbox.audience(),
        api_base_url: sandbox.base_url(),
        batch_size: 200,
        request_timeout_secs: timeout_secs,
    };
    let partner = PartnerSettings {
        id: PartnerId::parse("101").unwrap(),
        name: "Demo two-column".into(),
        column_format: ColumnFormat::TwoColumn,
        client_id: "demo-two-column".into(),
        client_secret: Some(SecretString::from("demo-secret-101")),
        resend_on_unknown_outcome: false,
        unexpected_loans: Default::default(),
    };
    KivaClient::new(&settings, &[partner]).unwrap()
}

async fn send(client: &KivaClient) -> SendOutcome {
    client
        .send_repayments(
            &PartnerId::parse("101").unwrap(),
            Bytes::from_static(BODY.as_bytes()),
        )
        .await
}

fn answered(outcome: SendOutcome) -> KivaAnswer {
    match outcome {
        SendOutcome::Answered(answer) => answer,
        other => panic!("expected an answer, got {other:?}"),
    }
}

/// The client hands absurd values on as they are (saturated, never a panic): what to do with
/// a ten-year wait is the delivery worker's decision, under its own age limit.
#[tokio::test]
async fn absurd_and_past_retry_after_values_are_returned_without_panicking() {
    let sandbox = sandbox().await;
    let client = client(&sandbox, 5);
    for (value, expected) in [
        ("99999999999999999999", Duration::from_secs(u64::MAX)),
        ("315360000", Duration::from_secs(315_360_000)),
        ("Wed, 21 Oct 2015 07:28:00 GMT", Duration::ZERO),
    ] {
        sandbox.push_fault(Fault::Status {
            status: 503,
            retry_after: Some(value.into()),
            body: r#"{"code":"unavailable"}"#.into(),
        });
        let answer = answered(send(&client).await);
        assert_eq!(answer.status, 503);
        assert_eq!(answer.retry_after, Some(expected), "Retry-After: {value}");
    }
}

/// A 200 whose body is an HTML page: Kiva processed the call (the sandbox recorded the
/// upload); the body, unreadable as Kiva's JSON, is kept raw and the result is empty.
#[tokio::test]
async fn html_on_a_200_is_an_answer_with_its_raw_body_kept() {
    let sandbox = sandbox().await;
    let client = client(&sandbox, 5);
    sandbox.push_fault(Fault::HtmlAfterUpload(
        "<html><body>Service temporarily unavailable</body></html>".into(),
    ));
    let answer = answered(send(&client).await);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.result, UploadResult::default());
    assert!(
        answer.body_excerpt.starts_with("<html><body>Service"),
        "{}",
        answer.body_excerpt
    );
    assert_eq!(sandbox.uploads().len(), 1);
}

/// A 200 whose body stops short of its Content-Length: still Kiva's answer that it processed
/// the call, not an unknown outcome (which would hold a delivered batch for an operator); what
/// arrived is kept raw.
#[tokio::test]
async fn a_200_cut_short_is_an_answer_with_what_arrived_not_an_unknown_outcome() {
    let sandbox = sandbox().await;
    let client = client(&sandbox, 5);
    sandbox.push_fault(Fault::TruncatedAfterUpload { sent_bytes: 12 });
    let answer = answered(send(&client).await);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body_excerpt.len(), 12, "{}", answer.body_excerpt);
    assert!(
        answer.body_excerpt.starts_with('{'),
        "{}",
        answer.body_excerpt
    );
    assert_eq!(answer.result, UploadResult::default());
    assert_eq!(sandbox.uploads().len(), 1);
}

/// Problems naming loans the batch did not contain are reported as Kiva sent them; matching
/// problems to the batch's loans is the delivery worker's business.
#[tokio::test]
async fn problems_for_loans_not_in_the_batch_are_reported_as_sent() {
    let sandbox = sandbox().await;
    let client = client(&sandbox, 5);
    sandbox.push_fault(Fault::ProblemsForOtherLoans(vec!["L-NOT-SENT".into()]));
    let answer = answered(send(&client).await);
    assert_eq!(answer.status, 200);
    assert!(answer.result.upload_id.is_some());
    let foreign: Vec<_> = answer
        .result
        .problems
        .iter()
        .filter(|p| p.loan_id.as_deref() == Some("L-NOT-SENT"))
        .collect();
    assert_eq!(foreign.len(), 1, "{:?}", answer.result.problems);
    assert_eq!(foreign[0].severity, Severity::Error);
}

/// No status line within the client's timeout: the call may have been processed (the sandbox
/// does record it), so the outcome is unknown.
#[tokio::test]
async fn headers_later_than_the_timeout_are_an_unknown_outcome() {
    let sandbox = sandbox().await;
    let client = client(&sandbox, 1);
    sandbox.push_fault(Fault::Stall(Duration::from_secs(3)));
    match send(&client).await {
        SendOutcome::Unknown { reason } => assert!(reason.contains("timed out"), "{reason}"),
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
    sandbox.wait_for_uploads(1, DEADLINE).await;
}

/// A credential an operator put in a Kiva URL's query stays out of the reasons the client
/// gives (they are logged and recorded with each attempt).
#[tokio::test]
async fn a_secret_in_a_kiva_url_is_not_repeated_in_a_reason() {
    let sandbox = sandbox().await;
    let settings = KivaSettings {
        // Port 9 (discard) refuses: the token request fails, naming its URL.
        token_url: "http://127.0.0.1:9/oauth/token?api_key=SECRET-IN-QUERY".into(),
        audience: sandbox.audience(),
        api_base_url: sandbox.base_url(),
        batch_size: 200,
        request_timeout_secs: 5,
    };
    let partner = PartnerSettings {
        id: PartnerId::parse("101").unwrap(),
        name: "Demo two-column".into(),
        column_format: ColumnFormat::TwoColumn,
        client_id: "demo-two-column".into(),
        client_secret: Some(SecretString::from("demo-secret-101")),
        resend_on_unknown_outcome: false,
        unexpected_loans: Default::default(),
    };
    let client = KivaClient::new(&settings, &[partner]).unwrap();
    assert!(!format!("{client:?}").contains("SECRET-IN-QUERY"));
    match send(&client).await {
        SendOutcome::TokenUnavailable { reason } => {
            assert!(reason.contains("api_key=***"), "{reason}");
            assert!(!reason.contains("SECRET-IN-QUERY"), "{reason}");
        }
        other => panic!("expected no token, got {other:?}"),
    }
}
