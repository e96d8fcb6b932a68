//! The repayments call: what is sent, and how each way a call can end is reported.

use std::time::SystemTime;

use super::super::transport::parse_retry_after;
use super::*;

#[tokio::test]
async fn the_body_arrives_unchanged_with_the_documented_headers() {
    let fake = FakeKiva::new();
    let running = fake.start();
    let client = client_for(&running);

    let answer = answered(send(&client).await);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.result.upload_id.as_deref(), Some("1"));

    let requests = fake.api_requests.lock().unwrap().clone();
    let [seen] = requests.as_slice() else {
        panic!("{requests:?}")
    };
    assert_eq!(seen.path, "/partner-api/v3/partner/123/repayments");
    assert_eq!(&seen.body[..], BODY);
    assert_eq!(seen.content_type.as_deref(), Some("application/json"));
    assert_eq!(seen.accept.as_deref(), Some("application/json"));
    assert_eq!(seen.authorization.as_deref(), Some("Bearer tok-1"));
    assert!(
        seen.user_agent
            .as_deref()
            .is_some_and(|ua| ua.starts_with("repayment-gateway/")),
        "{:?}",
        seen.user_agent
    );
}

#[tokio::test]
async fn a_refused_connection_is_not_sent() {
    let fake = FakeKiva::new();
    let running = fake.start();
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };

    let client = KivaClient::new(
        &kiva_settings(&running.base, &dead, 5),
        &partner_settings(Some(SECRET)),
    )
    .unwrap();
    match send(&client).await {
        SendOutcome::NotSent { reason } => assert_no_secrets(&reason),
        other => panic!("{other:?}"),
    }

    // The token endpoint unreachable: no token, nothing sent.
    let client = KivaClient::new(
        &kiva_settings(&dead, &running.base, 5),
        &partner_settings(Some(SECRET)),
    )
    .unwrap();
    match send(&client).await {
        SendOutcome::TokenUnavailable { reason } => {
            assert!(reason.contains("oauth2/token"), "{reason}");
            assert_no_secrets(&reason);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.repayment_calls(), 0);
}

#[tokio::test]
async fn a_connect_timeout_is_not_sent() {
    // A listener that never accepts, its accept queue filled: the kernel then drops
    // further SYNs and a connect hangs, as it would towards a black-holed address.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    let mut queue_full = false;
    for _ in 0..64 {
        let connect = tokio::net::TcpStream::connect(addr);
        match tokio::time::timeout(Duration::from_millis(300), connect).await {
            Ok(Ok(stream)) => fillers.push(stream),
            _ => {
                queue_full = true;
                break;
            }
        }
    }
    assert!(queue_full, "the accept queue never filled");

    let fake = FakeKiva::new();
    let running = fake.start();
    let client = KivaClient::new(
        &kiva_settings(&running.base, &format!("http://{addr}"), 1),
        &partner_settings(Some(SECRET)),
    )
    .unwrap();
    match send(&client).await {
        SendOutcome::NotSent { reason } => {
            assert!(reason.contains("timed out"), "{reason}");
            assert_no_secrets(&reason);
        }
        other => panic!("{other:?}"),
    }
    drop(listener);
}

#[tokio::test]
async fn a_server_that_never_answers_leaves_the_outcome_unknown() {
    let fake = FakeKiva::new().repayments(|_, _| Reply::Stall);
    let running = fake.start();
    let client = KivaClient::new(
        &kiva_settings(&running.base, &running.base, 1),
        &partner_settings(Some(SECRET)),
    )
    .unwrap();
    match send(&client).await {
        SendOutcome::Unknown { reason } => {
            assert!(reason.contains("timed out"), "{reason}");
            assert_no_secrets(&reason);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.repayment_calls(), 1);
}

/// The status line is the answer (a 200: Kiva processed the call); see `perform`.
#[tokio::test]
async fn a_body_cut_off_after_the_status_is_still_the_answer() {
    let fake = FakeKiva::new().repayments(|_, _| Reply::BrokenBody);
    let running = fake.start();
    let client = client_for(&running);
    let answer = answered(send(&client).await);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.result, UploadResult::default());
    assert_no_secrets(&answer.body_excerpt);
}

#[tokio::test]
async fn retry_after_is_read_in_both_forms() {
    let fake = FakeKiva::new().repayments(|n, _| {
        let header = match n {
            1 => Some("120".to_owned()),
            2 => Some(httpdate::fmt_http_date(
                SystemTime::now() + Duration::from_secs(300),
            )),
            3 => Some("Sun, 06 Nov 1994 08:49:37 GMT".to_owned()),
            4 => Some("soon".to_owned()),
            _ => None,
        };
        Reply::Answer {
            status: 503,
            headers: header.map(|h| ("retry-after", h)).into_iter().collect(),
            body: String::new(),
        }
    });
    let running = fake.start();
    let client = client_for(&running);

    let mut retry_after = Vec::new();
    for _ in 0..5 {
        let answer = answered(send(&client).await);
        assert_eq!(answer.status, 503);
        retry_after.push(answer.retry_after);
    }
    assert_eq!(retry_after[0], Some(Duration::from_secs(120)));
    let date = retry_after[1].unwrap();
    assert!(
        (Duration::from_secs(298)..=Duration::from_secs(300)).contains(&date),
        "{date:?}"
    );
    assert_eq!(retry_after[2], Some(Duration::ZERO));
    assert_eq!(retry_after[3], None);
    assert_eq!(retry_after[4], None);
}

#[tokio::test]
async fn the_excerpt_is_cut_but_the_whole_body_is_parsed() {
    let padding = "é".repeat(MAX_BODY_EXCERPT);
    let body = format!(
        r#"{{"upload_id":7,"message":"x{padding}","problems":[{{"loan_id":"L9","severity":"error"}}]}}"#
    );
    let sent = body.clone();
    let fake = FakeKiva::new().repayments(move |_, _| reply(200, sent.clone()));
    let running = fake.start();
    let client = client_for(&running);

    let answer = answered(send(&client).await);
    assert!(answer.body_excerpt.len() <= MAX_BODY_EXCERPT);
    assert!(answer.body_excerpt.len() >= MAX_BODY_EXCERPT - 1);
    assert!(body.starts_with(&answer.body_excerpt));
    assert_eq!(answer.result.problems.len(), 1);
    assert_eq!(answer.result.problems[0].loan_id.as_deref(), Some("L9"));
    assert!(answer.result.has_errors());
}

#[test]
fn retry_after_values() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    assert_eq!(parse_retry_after(" 5 ", now), Some(Duration::from_secs(5)));
    assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
    let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
    assert_eq!(
        parse_retry_after(&later, now),
        Some(Duration::from_secs(90))
    );
    let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
    assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("-5", now), None);
    assert_eq!(parse_retry_after("", now), None);
    assert_eq!(parse_retry_after("1.5", now), None);
}

#[test]
fn excerpts_cut_on_char_boundaries() {
    assert_eq!(excerpt(b"short", 10), "short");
    assert_eq!(excerpt("ééé".as_bytes(), 5), "éé");
    assert_eq!(excerpt("aé".as_bytes(), 2), "a");
    assert_eq!(excerpt(b"ab\xffcd", 4), "ab");
    assert_eq!(excerpt(b"ab\xffcd", 5), "ab\u{fffd}");
    let four_byte = "a😀😀".as_bytes();
    assert_eq!(excerpt(four_byte, 4), "a");
    assert_eq!(excerpt(four_byte, 8), "a😀");
    assert_eq!(excerpt(four_byte, 9), "a😀😀");
}

#[test]
fn connect_timeout_is_below_the_total_timeout() {
    // Checked through the builder's inputs: the client itself does not expose them.
    let one = Duration::from_secs(1);
    assert!(MAX_CONNECT_TIMEOUT.min(one.mul_f64(0.9)) < one);
    assert_eq!(
        MAX_CONNECT_TIMEOUT.min(Duration::from_secs(30).mul_f64(0.9)),
        MAX_CONNECT_TIMEOUT
    );
}
