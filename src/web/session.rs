//! Signed-in sessions of the pages: an opaque random id in an `HttpOnly; SameSite=Strict`
//! cookie, the session itself in the store (by the id's SHA-256), so any gateway process serves
//! it and a sign-out ends it everywhere. Also the CSRF tokens.

use std::time::Duration;

use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, SameSite, time::Duration as CookieDuration};
use chrono::Utc;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::AppState;
use crate::api::auth::Caller;
use crate::config::{Settings, parse_trusted_proxy};
use crate::store::{StoreError, WebSession};
use crate::web::limiter::SignInLimiter;

pub const SESSION_COOKIE: &str = "rg_session";
/// The sign-in form's own token (double-submit): no session exists yet to keep it in, and
/// without it another site could sign a browser in with the other site's key.
pub const SIGN_IN_COOKIE: &str = "rg_sign_in";

pub struct WebConfig {
    pub idle: Duration,
    pub max_age: Duration,
    pub secure_cookies: bool,
    pub limiter: SignInLimiter,
    /// `server.trusted_proxies`: whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl WebConfig {
    pub fn new(settings: &Settings) -> Self {
        let web = &settings.web;
        Self {
            idle: Duration::from_secs(web.session_idle_minutes * 60),
            max_age: Duration::from_secs(web.session_max_hours * 3600),
            secure_cookies: web.secure_cookies,
            limiter: SignInLimiter::new(web.sign_in_attempts_per_minute),
            trusted_proxies: settings
                .server
                .trusted_proxies
                .iter()
                .filter_map(|p| parse_trusted_proxy(p))
                .collect(),
        }
    }
}

/// A signed-in reader: who (as the API knows the key) and the session's CSRF token.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub caller: Caller,
    pub csrf: String,
}

/// 32 random bytes, hex: session ids and CSRF tokens.
pub fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn id_hash(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// The value of cookie `name`, if the request has it.
pub fn cookie(req: &HttpRequest, name: &str) -> Option<String> {
    req.cookie(name).map(|c| c.value().to_owned())
}

/// A `Set-Cookie` value: `HttpOnly; SameSite=Strict; Path=/`, and `Secure` when configured or
/// when the request came over TLS. `max_age` 0 deletes the cookie.
pub fn set_cookie(
    req: &HttpRequest,
    config: &WebConfig,
    name: &str,
    value: &str,
    max_age: Option<Duration>,
) -> String {
    let secure = config.secure_cookies || req.connection_info().scheme() == "https";
    let mut cookie = Cookie::build(name, value)
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .secure(secure)
        .finish();
    if let Some(age) = max_age {
        cookie.set_max_age(CookieDuration::seconds(
            i64::try_from(age.as_secs()).unwrap_or(i64::MAX),
        ));
    }
    cookie.to_string()
}

/// Starts a session for the key with this SHA-256; the new session id (the cookie's value).
pub async fn start(
    state: &AppState,
    config: &WebConfig,
    key_sha256: &str,
) -> Result<String, StoreError> {
    let id = random_token();
    let now = Utc::now();
    let session = WebSession {
        key_sha256: key_sha256.to_owned(),
        csrf_token: random_token(),
        created_at: now,
        expires_at: now + chrono::Duration::from_std(config.max_age).unwrap_or_default(),
    };
    state
        .store
        .create_session(&id_hash(&id), &session, config.idle)
        .await?;
    Ok(id)
}

/// The reader of this request, if its session is alive and its key still configured.
pub async fn viewer(
    req: &HttpRequest,
    state: &AppState,
    config: &WebConfig,
) -> Result<Option<Viewer>, StoreError> {
    let Some(id) = cookie(req, SESSION_COOKIE).filter(|id| is_token(id)) else {
        return Ok(None);
    };
    let Some(session) = state
        .store
        .session(&id_hash(&id), config.idle, Utc::now())
        .await?
    else {
        return Ok(None);
    };
    Ok(state
        .api_keys
        .by_hash(&session.key_sha256)
        .map(|caller| Viewer {
            caller: caller.clone(),
            csrf: session.csrf_token,
        }))
}

/// Ends the request's session in the store (all processes see it ended).
pub async fn end(req: &HttpRequest, state: &AppState) -> Result<(), StoreError> {
    match cookie(req, SESSION_COOKIE).filter(|id| is_token(id)) {
        Some(id) => state.store.end_session(&id_hash(&id)).await,
        None => Ok(()),
    }
}

fn is_token(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Compares a posted token with the expected one in constant time (no early exit that would
/// let response times reveal a prefix).
pub fn tokens_match(posted: Option<&str>, expected: &str) -> bool {
    let Some(posted) = posted else { return false };
    !expected.is_empty() && bool::from(posted.as_bytes().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_match_exactly() {
        let t = random_token();
        assert!(tokens_match(Some(&t), &t));
        assert!(!tokens_match(Some(&t[1..]), &t));
        assert!(!tokens_match(None, &t));
        assert!(!tokens_match(Some(""), ""));
        assert_ne!(random_token(), t);
    }
}
