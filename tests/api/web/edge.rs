//! The pages' HTTP edge under attack, over plain HTTP: the upload's token checked before its
//! file is read, a trickled upload cut off, sign-in failures that slow a stranger down without
//! keeping the right key out, `X-Forwarded-For` believed only from trusted proxies, the headers
//! every answer carries, and one session used across two gateway processes.

use std::sync::Arc;

use repayment_gateway::config::Settings;
use repayment_gateway::store::ReportStore;

use super::plain::{no_redirects, post_sign_in, set_cookie, sign_in_form};
use crate::helpers::*;
use crate::raw_http::answer_to_partial_request;

/// The session cookie (`rg_session=…`) of a new sign-in on `address`.
async fn session_cookie(address: &str, key: &str) -> String {
    let answer = post_sign_in(address, &plain_key(key)).await;
    assert_eq!(answer.status(), 303);
    let cookie = set_cookie(&answer, "rg_session").expect("a session cookie");
    cookie.split(';').next().unwrap().to_owned()
}

/// The CSRF token in the forms of the upload page, for this session.
async fn csrf_token(address: &str, cookie: &str) -> String {
    let html = no_redirects()
        .get(format!("{address}/web/upload"))
        .header("Cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page has its token")
        .to_owned()
}

const BOUNDARY: &str = "gateway-test-boundary";

fn part(name: &str, value: &str) -> Vec<u8> {
    format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
        .into_bytes()
}

/// A multipart form as a browser sends it: `before` the file, the file, then `after` it.
fn form(before: &[(&str, &str)], file: &[u8], after: &[(&str, &str)]) -> Vec<u8> {
    let mut body: Vec<u8> = before.iter().flat_map(|(n, v)| part(n, v)).collect();
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"nairobi.csv\"\r\nContent-Type: text/csv\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(b"\r\n");
    body.extend(after.iter().flat_map(|(n, v)| part(n, v)));
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn upload_head(address: &str, cookie: &str, length: usize) -> String {
    let host = address.trim_start_matches("http://");
    format!(
        "POST /web/upload HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n\r\n"
    )
}

/// A 4 MiB CSV file (the body limit) of which only the first 64 KiB is sent: what a crowd of
/// forged uploads would make the page hold if it read files before their token.
async fn answer_to_a_large_upload_cut_short(
    app: &TestApp,
    cookie: &str,
    before: &[(&str, &str)],
) -> Option<(u16, String)> {
    let line = b"L-1,C-1,1.00\n";
    let file: Vec<u8> = line
        .iter()
        .copied()
        .cycle()
        .take(4 * 1024 * 1024 - 4096)
        .collect();
    let body = form(before, &file, &[("period", "2026-10"), ("step", "check")]);
    let head = upload_head(&app.address, cookie, body.len());
    answer_to_partial_request(&app.address, &head, &body[..64 * 1024]).await
}

#[tokio::test]
async fn an_upload_with_a_wrong_token_is_refused_before_its_file_is_read() {
    let app = spawn(Backend::Embedded).await;
    let cookie = session_cookie(&app.address, NAIROBI).await;
    let wrong = "0".repeat(64);
    let answer = answer_to_a_large_upload_cut_short(
        &app,
        &cookie,
        &[("csrf", &wrong), ("idempotency_key", &"a".repeat(64))],
    )
    .await;
    let (status, text) = answer.expect("an answer before the rest of the file is sent");
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("Form refused"), "{text}");
}

#[tokio::test]
async fn an_upload_whose_file_comes_before_its_token_is_refused_unread() {
    let app = spawn(Backend::Embedded).await;
    let cookie = session_cookie(&app.address, NAIROBI).await;
    let answer = answer_to_a_large_upload_cut_short(&app, &cookie, &[]).await;
    let (status, text) = answer.expect("an answer before the rest of the file is sent");
    assert_eq!(status, 403, "{text}");
}

#[tokio::test]
async fn an_upload_with_its_token_first_is_checked_as_before() {
    let app = spawn(Backend::Embedded).await;
    let cookie = session_cookie(&app.address, NAIROBI).await;
    let csrf = csrf_token(&app.address, &cookie).await;
    let body = form(
        &[("csrf", &csrf), ("idempotency_key", &"b".repeat(64))],
        b"loan_id,client_id,amount\nL-1,C-1,25.00\nL-2,C-2,40.50\n",
        &[("period", "2026-10"), ("step", "check")],
    );
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
    assert_eq!(answer.status(), 200);
    let html = answer.text().await.unwrap();
    assert!(html.contains("id=\"checked\""), "{html}");
    assert!(html.contains("2 repayment(s), 65.50 in total"), "{html}");
}

#[tokio::test]
async fn a_trickled_upload_is_cut_off_at_the_read_deadline() {
    let app = spawn_app_for(
        Backend::Embedded,
        |s| s.server.body_read_timeout_secs = 1,
        |s| s,
    )
    .await;
    let cookie = session_cookie(&app.address, NAIROBI).await;
    let csrf = csrf_token(&app.address, &cookie).await;
    let answer = answer_to_a_large_upload_cut_short(
        &app,
        &cookie,
        &[("csrf", &csrf), ("idempotency_key", &"c".repeat(64))],
    )
    .await;
    let (status, text) = answer.expect("the gateway gives up on the body, not the client");
    assert_eq!(status, 408, "{text}");
}

/// Signs in from `forwarded_for` (as a proxy would say in `X-Forwarded-For`); the status.
async fn sign_in_from(address: &str, key: &str, forwarded_for: Option<&str>) -> u16 {
    let (cookie, token) = sign_in_form(address).await;
    let mut request = no_redirects()
        .post(format!("{address}/web/sign-in"))
        .header("Cookie", cookie.split(';').next().unwrap())
        .form(&[("csrf", token.as_str()), ("api_key", key)]);
    if let Some(client) = forwarded_for {
        request = request.header("X-Forwarded-For", client);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn wrong_keys_from_a_shared_address_are_slowed_but_the_right_key_still_gets_in() {
    let app = spawn_app_for(
        Backend::Embedded,
        |s| s.web.sign_in_attempts_per_minute = 2,
        |s| s,
    )
    .await;
    let address = app.address.as_str();
    for _ in 0..2 {
        assert_eq!(sign_in_from(address, "not-a-key", None).await, 401);
    }
    // A stranger keeps guessing from the same address (one proxy for everyone) while the
    // coordinator signs in.
    let right = plain_key(HEAD_OFFICE);
    let (stranger, other, coordinator) = tokio::join!(
        sign_in_from(address, "not-a-key", None),
        sign_in_from(address, "another-wrong-key", None),
        sign_in_from(address, &right, None),
    );
    assert_eq!(coordinator, 303, "the right key gets in");
    assert_eq!((stranger, other), (429, 429), "wrong keys are slowed down");
    assert_eq!(
        sign_in_from(address, &plain_key(NAIROBI), None).await,
        303,
        "and so does another right key"
    );
}

#[tokio::test]
async fn x_forwarded_for_names_the_client_only_behind_a_trusted_proxy() {
    let behind_proxy = spawn_app_for(
        Backend::Embedded,
        |s| {
            s.web.sign_in_attempts_per_minute = 1;
            s.server.trusted_proxies = vec!["127.0.0.0/8".into()];
        },
        |s| s,
    )
    .await;
    let address = behind_proxy.address.as_str();
    let stranger = Some("198.51.100.7, 127.0.0.1");
    assert_eq!(sign_in_from(address, "not-a-key", stranger).await, 401);
    assert_eq!(sign_in_from(address, "not-a-key", stranger).await, 429);
    assert_eq!(
        sign_in_from(address, "not-a-key", Some("203.0.113.9")).await,
        401,
        "another client behind the same proxy is counted apart"
    );
    // A client can't pick a fresh address by writing the header itself: the proxy appends
    // the address it saw, and only that one (the nearest untrusted) counts.
    let spoofed = Some("192.0.2.1, 198.51.100.7");
    assert_eq!(sign_in_from(address, "not-a-key", spoofed).await, 429);

    let direct = spawn_app_for(
        Backend::Embedded,
        |s| s.web.sign_in_attempts_per_minute = 1,
        |s| s,
    )
    .await;
    let address = direct.address.as_str();
    assert_eq!(sign_in_from(address, "not-a-key", stranger).await, 401);
    assert_eq!(
        sign_in_from(address, "not-a-key", Some("203.0.113.9")).await,
        429,
        "without trusted proxies the header is ignored: the peer is the client"
    );
}

#[tokio::test]
async fn answers_say_nosniff_swagger_ui_is_never_framed_and_csv_files_are_not_cached() {
    let app = spawn(Backend::Embedded).await;
    let client = no_redirects();
    let get = async |path: &str, cookie: Option<&str>, accept: Option<&str>| {
        let mut request = client.get(format!("{}{path}", app.address));
        if let Some(cookie) = cookie {
            request = request.header("Cookie", cookie);
        }
        if let Some(accept) = accept {
            request = request.header("Accept", accept);
        }
        request.send().await.unwrap()
    };
    let cookie = session_cookie(&app.address, HEAD_OFFICE).await;
    let swagger = get("/swagger-ui/", None, None).await;
    assert_eq!(swagger.status(), 200);
    assert_eq!(swagger.headers()["x-frame-options"], "DENY");
    let csp = swagger.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    for answer in [
        swagger,
        get("/health/live", None, None).await,
        get("/v1/reports", None, None).await,
        get("/web/sign-in", None, None).await,
    ] {
        assert_eq!(answer.headers()["x-content-type-options"], "nosniff");
    }
    let page_csv = get("/web/months/2026-10/not-reported.csv", Some(&cookie), None).await;
    let api_csv = client
        .get(format!("{}/v1/periods/2026-10/not-reported", app.address))
        .header("X-Api-Key", plain_key(HEAD_OFFICE))
        .header("Accept", "text/csv")
        .send()
        .await
        .unwrap();
    for csv in [page_csv, api_csv] {
        assert_eq!(csv.status(), 200, "{}", csv.url());
        assert_eq!(csv.headers()["cache-control"], "no-store", "{}", csv.url());
        assert_eq!(csv.headers()["x-content-type-options"], "nosniff");
    }
}

#[tokio::test]
async fn a_language_switch_back_to_an_address_with_control_characters_goes_home() {
    let app = spawn(Backend::Embedded).await;
    for back in [
        "/web/%0D%0ASet-Cookie:%20x=1",
        "/web/%00",
        "/web/\t",
        "/web/%7F",
    ] {
        let answer = no_redirects()
            .get(format!("{}/web/language?lang=es&back={back}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 303, "{back}");
        assert_eq!(answer.headers()["location"], "/web/", "{back}");
    }
}

#[tokio::test]
async fn a_session_started_on_one_gateway_is_used_and_ended_on_another() {
    let a = spawn(Backend::Redis).await;
    let redis = a.redis();
    let settings = Settings::from_toml_str(&test_config(&redis.url())).unwrap();
    let store: Arc<dyn ReportStore> = Arc::new(redis_store(redis));
    let b = spawn_app_with_settings(&settings, store);
    let page = async |app: &TestApp, cookie: &str| {
        no_redirects()
            .get(format!("{}/web/reports", app.address))
            .header("Cookie", cookie)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };

    let cookie = session_cookie(&a.address, NAIROBI).await;
    assert_eq!(page(&a, &cookie).await, 200);
    assert_eq!(page(&b, &cookie).await, 200, "B serves A's session");
    let csrf = csrf_token(&b.address, &cookie).await;
    let out = no_redirects()
        .post(format!("{}/web/sign-out", b.address))
        .header("Cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(out.headers()["location"], "/web/sign-in");
    assert_eq!(page(&a, &cookie).await, 303, "signed out on B is out on A");
    assert_eq!(page(&b, &cookie).await, 303);
}

/// The multipart parser buffers a part's head until its blank line (and a boundary line until
/// its end) with no limit of its own, and a chunked body declares no length: 6 MiB of one head
/// that never ends were held (and searched again at each chunk) until the read deadline.
#[tokio::test]
async fn an_upload_whose_part_head_never_ends_is_refused_at_the_form_limit() {
    let app = spawn(Backend::Embedded).await;
    let cookie = session_cookie(&app.address, NAIROBI).await;
    let host = app.address.trim_start_matches("http://");
    let head = format!(
        "POST /web/upload HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    let mut part =
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"csrf\"\r\nX-Pad: ")
            .into_bytes();
    part.resize(6 * 1024 * 1024, b'a');
    let mut body = Vec::new();
    for chunk in part.chunks(64 * 1024) {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(chunk);
        body.extend_from_slice(b"\r\n");
    }
    // The last chunk is never sent: the body has not ended.
    let answer = answer_to_partial_request(&app.address, &head, &body).await;
    let (status, text) = answer.expect("an answer before the body ends");
    assert_eq!(status, 400, "{text}");
}
