//! The token cache: one token serves many sends, a refused one is replaced once, and no
//! secret reaches a reason or a log.

use super::*;

#[tokio::test]
async fn one_token_serves_many_sends_including_concurrent_ones() {
    let fake = FakeKiva::new();
    let running = fake.start();
    let client = client_for(&running);

    let concurrent = join_all((0..5).map(|_| send(&client))).await;
    for outcome in concurrent {
        assert_eq!(answered(outcome).status, 200);
    }
    for _ in 0..5 {
        let answer = answered(send(&client).await);
        assert_eq!(answer.status, 200);
        assert!(!answer.token_refreshed);
    }
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.repayment_calls(), 10);
}

#[tokio::test]
async fn the_token_request_is_a_form_with_audience_and_both_scopes() {
    let fake = FakeKiva::new();
    let running = fake.start();
    let client = client_for(&running);
    answered(send(&client).await);

    let requests = fake.token_requests.lock().unwrap().clone();
    let [seen] = requests.as_slice() else {
        panic!("{requests:?}")
    };
    assert_eq!(
        seen.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(&seen.body).unwrap();
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["client_id"], "cid");
    assert_eq!(form["client_secret"], SECRET);
    assert_eq!(form["audience"], AUDIENCE);
    let scopes: Vec<&str> = form["scope"].split(' ').collect();
    assert_eq!(scopes, ["create:repayment", "read:loans"]);
}

#[tokio::test]
async fn a_refused_token_is_replaced_once_and_the_same_body_sent_again() {
    for refusal in [401, 403] {
        let fake = FakeKiva::new().repayments(move |n, _| {
            if n == 1 {
                reply(refusal, "")
            } else {
                reply(200, r#"{"upload_id":2}"#)
            }
        });
        let running = fake.start();
        let client = client_for(&running);

        let answer = answered(send(&client).await);
        assert_eq!(answer.status, 200, "after {refusal}");
        assert!(answer.token_refreshed);
        assert_eq!(answer.result.upload_id.as_deref(), Some("2"));
        assert_eq!(fake.token_calls(), 2);
        assert_eq!(fake.repayment_calls(), 2);
        let requests = fake.api_requests.lock().unwrap().clone();
        assert_eq!(requests[0].authorization.as_deref(), Some("Bearer tok-1"));
        assert_eq!(requests[1].authorization.as_deref(), Some("Bearer tok-2"));
        assert_eq!(&requests[1].body[..], BODY);

        // The new token is cached for the next call.
        assert!(!answered(send(&client).await).token_refreshed);
        assert_eq!(fake.token_calls(), 2);
    }
}

#[tokio::test]
async fn a_second_refusal_is_returned_after_only_one_refresh() {
    let fake = FakeKiva::new().repayments(|_, _| reply(401, r#"{"message":"nope"}"#));
    let running = fake.start();
    let client = client_for(&running);

    let answer = answered(send(&client).await);
    assert_eq!(answer.status, 401);
    assert!(answer.token_refreshed);
    assert_eq!(answer.body_excerpt, r#"{"message":"nope"}"#);
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.repayment_calls(), 2);
}

#[tokio::test]
async fn concurrent_callers_refused_with_the_same_token_share_one_refresh() {
    let fake = FakeKiva::new().repayments(|_, seen| {
        if seen.authorization.as_deref() == Some("Bearer tok-1") {
            reply(401, "")
        } else {
            reply(200, "")
        }
    });
    let running = fake.start();
    let client = client_for(&running);

    for outcome in join_all((0..5).map(|_| send(&client))).await {
        let answer = answered(outcome);
        assert_eq!(answer.status, 200);
        assert!(answer.token_refreshed);
    }
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.repayment_calls(), 10);
}

#[tokio::test]
async fn a_failing_token_endpoint_means_nothing_is_sent() {
    let fake = FakeKiva::new().token(|_, _| reply(503, "maintenance"));
    let running = fake.start();
    let client = client_for(&running);

    // Callers queued behind the failing request share its failure.
    for outcome in join_all((0..5).map(|_| send(&client))).await {
        match outcome {
            SendOutcome::TokenUnavailable { reason } => {
                assert!(reason.contains("503"), "{reason}");
                assert!(reason.contains("maintenance"), "{reason}");
                assert_no_secrets(&reason);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.repayment_calls(), 0);

    // A later call tries again rather than reusing an old failure.
    assert!(matches!(
        send(&client).await,
        SendOutcome::TokenUnavailable { .. }
    ));
    assert_eq!(fake.token_calls(), 2);
}

#[tokio::test]
async fn unusable_token_answers_are_token_unavailable() {
    let bodies = [
        "<html>login</html>",
        r#"{"token_type":"bearer"}"#,
        r#"{"access_token":""}"#,
        r#"{"access_token":"tok-\n1"}"#,
    ];
    for body in bodies {
        let fake = FakeKiva::new().token(move |_, _| reply(200, body));
        let running = fake.start();
        let client = client_for(&running);
        match send(&client).await {
            SendOutcome::TokenUnavailable { reason } => assert_no_secrets(&reason),
            other => panic!("{body}: {other:?}"),
        }
        assert_eq!(fake.repayment_calls(), 0);
    }
}

#[tokio::test]
async fn a_token_endpoint_echoing_the_secret_does_not_leak_it() {
    let fake = FakeKiva::new()
        .token(|_, seen| reply(400, String::from_utf8_lossy(&seen.body).into_owned()));
    let running = fake.start();
    let client = client_for(&running);

    match send(&client).await {
        SendOutcome::TokenUnavailable { reason } => {
            assert!(reason.contains("400"), "{reason}");
            assert!(reason.contains("[redacted]"), "{reason}");
            assert_no_secrets(&reason);
        }
        other => panic!("{other:?}"),
    }
    let err = client.check_credentials(&partner()).await.unwrap_err();
    assert_no_secrets(&err);

    // Echoed form-encoded, a secret with reserved characters no longer reads as itself.
    let odd = "a+b/c=d&e f";
    let client = KivaClient::new(
        &kiva_settings(&running.base, &running.base, 5),
        &partner_settings(Some(odd)),
    )
    .unwrap();
    let err = client.check_credentials(&partner()).await.unwrap_err();
    let encoded = serde_urlencoded::to_string([("s", odd)]).unwrap();
    assert!(!err.contains(odd), "{err}");
    assert!(!err.contains(&encoded[2..]), "{err}");
    assert!(err.contains("client_secret=[redacted]&"), "{err}");
}

#[tokio::test]
async fn debug_output_holds_no_secret_or_token() {
    let fake = FakeKiva::new();
    let running = fake.start();
    let client = client_for(&running);
    answered(send(&client).await);

    let debug = format!("{client:?}");
    assert!(debug.contains("123"), "{debug}");
    assert_no_secrets(&debug);
    assert_no_secrets(&format!("{:?}", send(&client).await));
}

#[tokio::test]
async fn a_missing_secret_or_partner_is_token_unavailable() {
    let fake = FakeKiva::new();
    let running = fake.start();
    let client = KivaClient::new(
        &kiva_settings(&running.base, &running.base, 5),
        &partner_settings(None),
    )
    .unwrap();
    match send(&client).await {
        SendOutcome::TokenUnavailable { reason } => {
            assert!(reason.contains("client_secret"), "{reason}");
            assert!(
                reason.contains("GATEWAY_PARTNER_123_CLIENT_SECRET"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    let other = PartnerId::parse("999").unwrap();
    match client
        .send_repayments(&other, Bytes::from_static(BODY))
        .await
    {
        SendOutcome::TokenUnavailable { reason } => assert!(reason.contains("999")),
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.token_calls(), 0);
}

#[tokio::test]
async fn tokens_are_refreshed_before_they_expire() {
    let fake = FakeKiva::new().token(|n, _| token_reply(n, 0));
    let running = fake.start();
    let client = client_for(&running);
    answered(send(&client).await);
    answered(send(&client).await);
    assert_eq!(fake.token_calls(), 2);

    let fake = FakeKiva::new().token(|n, _| token_reply(n, 10));
    let running = fake.start();
    let client = client_for(&running);
    answered(send(&client).await);
    answered(send(&client).await);
    assert_eq!(fake.token_calls(), 1);
}

#[tokio::test]
async fn check_credentials_always_asks_the_token_endpoint() {
    let fake = FakeKiva::new();
    let running = fake.start();
    let client = client_for(&running);
    client.check_credentials(&partner()).await.unwrap();
    client.check_credentials(&partner()).await.unwrap();
    assert_eq!(fake.token_calls(), 2);
    // ...and what it fetched serves the next send.
    let requests = {
        answered(send(&client).await);
        fake.api_requests.lock().unwrap().clone()
    };
    assert_eq!(requests[0].authorization.as_deref(), Some("Bearer tok-2"));
    assert_eq!(fake.token_calls(), 2);

    let failing = FakeKiva::new().token(|_, _| reply(401, r#"{"error":"access_denied"}"#));
    let running = failing.start();
    let err = client_for(&running)
        .check_credentials(&partner())
        .await
        .unwrap_err();
    assert!(
        err.contains("401") && err.contains("access_denied"),
        "{err}"
    );
}
