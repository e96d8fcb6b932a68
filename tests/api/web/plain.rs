//! The pages' sessions and guards over plain HTTP (no browser needed): the session store on
//! both backends, the sign-in slow-down, cookie attributes, CSRF on sign-out, `/` leading to the
//! pages.

use std::time::Duration;

use chrono::Utc;
use repayment_gateway::store::WebSession;

use crate::helpers::*;

pub(super) fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The sign-in form's token cookie and hidden field, as a browser gets them.
pub(super) async fn sign_in_form(address: &str) -> (String, String) {
    let answer = no_redirects()
        .get(format!("{address}/web/sign-in"))
        .send()
        .await
        .unwrap();
    let cookie = set_cookie(&answer, "rg_sign_in").expect("the form sets its token cookie");
    let html = answer.text().await.unwrap();
    let field = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the form has its token")
        .to_owned();
    (cookie, field)
}

pub(crate) fn set_cookie(answer: &reqwest::Response, name: &str) -> Option<String> {
    answer
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

pub(crate) async fn post_sign_in(address: &str, key: &str) -> reqwest::Response {
    let (cookie, token) = sign_in_form(address).await;
    let value = cookie.split(';').next().unwrap().to_owned();
    no_redirects()
        .post(format!("{address}/web/sign-in"))
        .header("Cookie", value)
        .form(&[("csrf", token.as_str()), ("api_key", key)])
        .send()
        .await
        .unwrap()
}

async fn sessions_live_in_the_store_with_an_absolute_expiry(backend: Backend) {
    let app = spawn(backend).await;
    let store = &app.store;
    let now = Utc::now();
    let session = WebSession {
        key_sha256: "ab".repeat(32),
        csrf_token: "cd".repeat(32),
        created_at: now,
        expires_at: now + chrono::Duration::hours(1),
    };
    let idle = Duration::from_secs(600);
    store.create_session("h1", &session, idle).await.unwrap();
    assert_eq!(
        store.session("h1", idle, now).await.unwrap(),
        Some(session.clone())
    );
    assert_eq!(store.session("other", idle, now).await.unwrap(), None);
    // Past its absolute expiry, however recently used, it is gone.
    let later = now + chrono::Duration::hours(2);
    assert_eq!(store.session("h1", idle, later).await.unwrap(), None);
    assert_eq!(
        store.session("h1", idle, now).await.unwrap(),
        None,
        "and stays gone"
    );

    store.create_session("h2", &session, idle).await.unwrap();
    store.end_session("h2").await.unwrap();
    assert_eq!(store.session("h2", idle, now).await.unwrap(), None);
    store.end_session("h2").await.unwrap();
}

on_both_stores!(sessions_live_in_the_store_with_an_absolute_expiry);

#[tokio::test]
async fn the_store_keys_a_session_by_the_hash_of_its_id_never_the_id() {
    let app = spawn(Backend::Redis).await;
    let answer = post_sign_in(&app.address, &plain_key(NAIROBI)).await;
    assert_eq!(answer.status(), 303);
    let keys = app.redis_keys().await;
    let session_keys: Vec<_> = keys.iter().filter(|k| k.contains(":session:")).collect();
    assert_eq!(session_keys.len(), 1, "{keys:?}");
    let cookie = set_cookie(&answer, "rg_session").unwrap();
    let id = cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("rg_session=");
    assert!(
        !session_keys[0].contains(id),
        "the store is keyed by the id's hash, never the id"
    );
}

#[tokio::test]
async fn the_session_cookie_is_http_only_strict_and_secure_when_configured() {
    let app = spawn_app_for(Backend::Embedded, |s| s.web.secure_cookies = true, |s| s).await;
    let answer = post_sign_in(&app.address, &plain_key(HEAD_OFFICE)).await;
    assert_eq!(answer.status(), 303);
    assert_eq!(answer.headers()["location"], "/web/");
    let cookie = set_cookie(&answer, "rg_session").unwrap();
    let value = cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("rg_session=");
    assert_eq!(value.len(), 64, "32 random bytes, hex");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
}

#[tokio::test]
async fn failed_sign_ins_past_the_limit_are_answered_slowly_and_the_right_key_next_is_not() {
    let app = spawn_app_for(
        Backend::Embedded,
        |s| s.web.sign_in_attempts_per_minute = 2,
        |s| s,
    )
    .await;
    for _ in 0..2 {
        let answer = post_sign_in(&app.address, "not-a-key").await;
        assert_eq!(answer.status(), 401);
        assert!(set_cookie(&answer, "rg_session").is_none());
    }
    let answer = post_sign_in(&app.address, "not-a-key").await;
    assert_eq!(answer.status(), 429);
    assert!(set_cookie(&answer, "rg_session").is_none());
    let html = answer.text().await.unwrap();
    assert!(html.contains("each answer now comes more slowly"), "{html}");
    // Slowing guesses down must not lock the right key out (one proxy, one address for all).
    let answer = post_sign_in(&app.address, &plain_key(HEAD_OFFICE)).await;
    assert_eq!(answer.status(), 303);
    assert!(set_cookie(&answer, "rg_session").is_some());
    let html = answer.text().await.unwrap();
    assert!(!html.contains(&plain_key(HEAD_OFFICE)));
}

#[tokio::test]
async fn a_sign_in_without_the_forms_token_is_refused() {
    let app = spawn(Backend::Embedded).await;
    let answer = no_redirects()
        .post(format!("{}/web/sign-in", app.address))
        .form(&[("api_key", plain_key(HEAD_OFFICE).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);
    assert!(set_cookie(&answer, "rg_session").is_none());
}

#[tokio::test]
async fn sign_out_without_the_csrf_token_is_refused_and_the_session_stays() {
    let app = spawn(Backend::Embedded).await;
    let answer = post_sign_in(&app.address, &plain_key(NAIROBI)).await;
    let session = set_cookie(&answer, "rg_session").unwrap();
    let session = session.split(';').next().unwrap().to_owned();
    let refused = no_redirects()
        .post(format!("{}/web/sign-out", app.address))
        .header("Cookie", &session)
        .form(&[("csrf", "0".repeat(64))])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let page = no_redirects()
        .get(format!("{}/web/", app.address))
        .header("Cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "still signed in");
}

#[tokio::test]
async fn the_gateways_address_leads_to_the_pages_and_they_to_sign_in() {
    let app = spawn(Backend::Embedded).await;
    let client = no_redirects();
    for (path, to) in [
        ("/", "/web/"),
        ("/web/", "/web/sign-in"),
        ("/web/reports", "/web/sign-in"),
    ] {
        let answer = client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 303, "{path}");
        assert_eq!(answer.headers()["location"], to, "{path}");
    }
    let page = client
        .get(format!("{}/web/sign-in", app.address))
        .header("Accept-Language", "es-AR,es;q=0.9,en;q=0.5")
        .send()
        .await
        .unwrap();
    let html = page.text().await.unwrap();
    assert!(html.contains("<html lang=\"es\">"), "{html}");
    assert!(html.contains("href=\"/swagger-ui/\""));
}

#[tokio::test]
async fn a_page_given_a_query_it_cannot_read_answers_with_a_page_not_problem_json() {
    let app = spawn(Backend::Embedded).await;
    let answer = no_redirects()
        .get(format!("{}/web/language?back=/web/", app.address))
        .header("Accept-Language", "es")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let content_type = answer.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = answer.text().await.unwrap();
    assert!(html.contains("<html lang=\"es\">"), "{html}");
}
