//! Sign-in with an API key, sign-out, and the language switch.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use maud::html;
use serde::Deserialize;

use crate::api::AppState;
use crate::api::auth::hash_key;
use crate::web::i18n::{LANG_COOKIE, Lang};
use crate::web::limiter::client_address;
use crate::web::session::{self, SESSION_COOKIE, SIGN_IN_COOKIE, WebConfig};
use crate::web::{
    Failure, HOME, PageError, field, form_fields, html as page_html, layout, see_other,
};

/// Longest key accepted in the form (the gateway's keys are 67 characters).
const MAX_KEY: usize = 256;

pub async fn form(
    req: HttpRequest,
    state: web::Data<AppState>,
    config: web::Data<WebConfig>,
) -> HttpResponse {
    if let Ok(Some(_)) = session::viewer(&req, &state, &config).await {
        return see_other(HOME);
    }
    sign_in_page(&req, &config, Lang::of(&req), StatusCode::OK, None)
}

/// The form, with a fresh double-submit token in its field and its cookie.
fn sign_in_page(
    req: &HttpRequest,
    config: &WebConfig,
    lang: Lang,
    status: StatusCode,
    problem: Option<&str>,
) -> HttpResponse {
    let token = session::random_token();
    let body = html! {
        h1 { (lang.t("sign_in.title")) }
        p { (lang.t("sign_in.intro")) }
        @if let Some(problem) = problem {
            p.notice.bad role="alert" id="sign-in-problem" { (problem) }
        }
        form.card method="post" action="/web/sign-in" {
            input type="hidden" name="csrf" value=(token);
            label for="api_key" { (lang.t("sign_in.key_label")) }
            input id="api_key" name="api_key" type="password" required autocomplete="off"
                maxlength=(MAX_KEY) aria-describedby="key-hint"
                aria-invalid=[problem.map(|_| "true")];
            p.hint id="key-hint" { (lang.t("sign_in.key_hint")) }
            button type="submit" { (lang.t("sign_in.submit")) }
        }
    };
    let mut response = page_html(
        status,
        layout::page(lang, None, lang.t("sign_in.title"), body),
    );
    if let Ok(value) = session::set_cookie(req, config, SIGN_IN_COOKIE, &token, None).parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

pub async fn sign_in(
    req: HttpRequest,
    state: web::Data<AppState>,
    config: web::Data<WebConfig>,
    body: web::Bytes,
) -> Result<HttpResponse, PageError> {
    let lang = Lang::of(&req);
    let fields = form_fields(&body);
    let expected = session::cookie(&req, SIGN_IN_COOKIE).unwrap_or_default();
    if !session::tokens_match(field(&fields, "csrf"), &expected) {
        return Err(PageError::new(lang, Failure::Csrf));
    }
    let client = client_address(&req, &config.trusted_proxies);
    // The key is looked at first, whatever the client's failures: the right key always gets
    // in at once, and only wrong ones wait (a stranger sharing the coordinator's address, or
    // proxy, slows only themselves).
    let key = field(&fields, "api_key").unwrap_or_default().trim();
    let caller = (key.len() <= MAX_KEY)
        .then(|| state.api_keys.identify(key))
        .flatten();
    let Some(caller) = caller else {
        // Never the key: the start of its hash tells an operator whether one key keeps failing.
        let hash = hash_key(key);
        let failed = config.limiter.failed(client, &hash[..16]);
        tracing::warn!(
            %client,
            key_sha256_prefix = &hash[..8],
            client_failures = failed.client_failures,
            key_failures = failed.key_failures,
            "failed sign-in"
        );
        if failed.delay.is_zero() {
            return Ok(sign_in_page(
                &req,
                &config,
                lang,
                StatusCode::UNAUTHORIZED,
                Some(lang.t("sign_in.unknown_key")),
            ));
        }
        tokio::time::sleep(failed.delay).await;
        return Ok(sign_in_page(
            &req,
            &config,
            lang,
            StatusCode::TOO_MANY_REQUESTS,
            Some(lang.t("sign_in.too_many")),
        ));
    };
    let id = session::start(&state, &config, &hash_key(key))
        .await
        .map_err(|_| PageError::new(lang, Failure::Unavailable))?;
    tracing::info!(api_key = %caller.key_name, "signed in to the pages");
    let mut response = see_other(HOME);
    for cookie in [
        session::set_cookie(&req, &config, SESSION_COOKIE, &id, None),
        session::set_cookie(&req, &config, SIGN_IN_COOKIE, "", Some(Default::default())),
    ] {
        if let Ok(value) = cookie.parse() {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    Ok(response)
}

pub async fn sign_out(
    req: HttpRequest,
    state: web::Data<AppState>,
    config: web::Data<WebConfig>,
    body: web::Bytes,
) -> Result<HttpResponse, PageError> {
    let ctx = crate::web::Ctx::of(&req, &state, &config).await?;
    if !session::tokens_match(field(&form_fields(&body), "csrf"), &ctx.viewer.csrf) {
        return Err(ctx.fail(Failure::Csrf));
    }
    session::end(&req, &state)
        .await
        .map_err(|_| ctx.fail(Failure::Unavailable))?;
    let mut response = see_other("/web/sign-in");
    let gone = session::set_cookie(&req, &config, SESSION_COOKIE, "", Some(Default::default()));
    if let Ok(value) = gone.parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}

#[derive(Deserialize)]
pub struct LanguageChoice {
    lang: String,
    back: Option<String>,
}

/// Keeps the reader's language in a cookie (a year) and goes back to the page. Only pages of
/// this site are gone back to: `back` is never a way to send a reader elsewhere.
pub async fn language(
    req: HttpRequest,
    config: web::Data<WebConfig>,
    choice: web::Query<LanguageChoice>,
) -> HttpResponse {
    let back = choice
        .back
        .as_deref()
        // Printable ASCII only: a control character (CR, LF, NUL) can't go in `Location`.
        .filter(|b| {
            b.starts_with("/web/") && !b.contains('\\') && b.bytes().all(|c| c.is_ascii_graphic())
        })
        .unwrap_or(HOME);
    let mut response = see_other(back);
    if let Some(lang) = Lang::parse(&choice.lang) {
        let cookie = session::set_cookie(
            &req,
            &config,
            LANG_COOKIE,
            lang.code(),
            Some(std::time::Duration::from_secs(365 * 24 * 3600)),
        );
        if let Ok(value) = cookie.parse() {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}
