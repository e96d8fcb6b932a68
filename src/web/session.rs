//! Signed-in sessions of the pages: an opaque random id in an `HttpOnly; SameSite=Strict`
//! cookie, the session itself in the store (by the id's SHA-256), so any gateway process serves
//! it and a sign-out ends it everywhere. Also the CSRF tokens and the sign-in rate limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, SameSite, time::Duration as CookieDuration};
use chrono::Utc;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::AppState;
use crate::api::auth::Caller;
use crate::config::WebSettings;
use crate::store::{StoreError, WebSession};

pub const SESSION_COOKIE: &str = "rg_session";
/// The sign-in form's own token (double-submit): no session exists yet to keep it in, and
/// without it another site could sign a browser in with the other site's key.
pub const SIGN_IN_COOKIE: &str = "rg_sign_in";

pub struct WebConfig {
    pub idle: Duration,
    pub max_age: Duration,
    pub secure_cookies: bool,
    pub limiter: SignInLimiter,
}

impl WebConfig {
    pub fn new(settings: &WebSettings) -> Self {
        Self {
            idle: Duration::from_secs(settings.session_idle_minutes * 60),
            max_age: Duration::from_secs(settings.session_max_hours * 3600),
            secure_cookies: settings.secure_cookies,
            limiter: SignInLimiter::new(settings.sign_in_attempts_per_minute),
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

/// Failed sign-ins per client address in the last minute. A client with `limit` failures in
/// the window is refused before its key is even looked at, so guessing can't go faster than
/// `limit` keys a minute per address. In-process: each gateway process counts on its own.
/// (Not `governor`: its limiters count every attempt and cannot be asked without spending
/// one, while only failures should count here: a coordinator who signs in often is fine.)
pub struct SignInLimiter {
    limit: usize,
    failures: Mutex<HashMap<IpAddr, Vec<Instant>>>,
}

const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; past it, stale ones are forgotten first.
const MAX_CLIENTS: usize = 10_000;

impl SignInLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            limit: per_minute.max(1) as usize,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this client may try now.
    pub fn allows(&self, client: IpAddr) -> bool {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.get_mut(&client).is_none_or(|times| {
            times.retain(|t| now.duration_since(*t) < WINDOW);
            times.len() < self.limit
        })
    }

    pub fn failed(&self, client: IpAddr) {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= MAX_CLIENTS {
            failures.retain(|_, times| times.iter().any(|t| now.duration_since(*t) < WINDOW));
        }
        failures.entry(client).or_default().push(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_refused_after_its_failures_and_others_are_not() {
        let limiter = SignInLimiter::new(2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(limiter.allows(a));
        limiter.failed(a);
        assert!(limiter.allows(a));
        limiter.failed(a);
        assert!(!limiter.allows(a));
        assert!(limiter.allows(b));
    }

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
