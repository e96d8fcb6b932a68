//! The HTTP client for Kiva's Partner API: one OAuth2 client-credentials token per partner,
//! cached and shared by every delivery worker, the repayments endpoint and the loans list.
//!
//! The client only reports facts (`SendOutcome`); whether to retry is delivery's decision.
//! What matters most here is telling "certainly not sent" from "maybe processed", because a
//! repeated repayments call creates a second upload in PA2.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};

use crate::metrics::{KivaCallEnd, KivaEndpoint};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use super::wire::UploadResult;
use super::{KivaAnswer, MAX_BODY_EXCERPT, SendOutcome};
use crate::config::{KivaSettings, PartnerSettings, partner_secret_env_var, redact_url};
use crate::domain::PartnerId;

const USER_AGENT: &str = concat!("repayment-gateway/", env!("CARGO_PKG_VERSION"));
const TOKEN_SCOPE: &str = "create:repayment read:loans";
/// Kiva asks not to request more loans than this per page.
pub const MAX_LOANS_PAGE: u32 = 300;
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Kiva always sends `expires_in`; should it ever not, a short lifetime keeps the token
/// endpoint quiet without trusting a token for long (a 401 refreshes it anyway).
const TOKEN_LIFETIME_WHEN_UNSAID: Duration = Duration::from_secs(300);
/// The most of any answer kept in memory: Kiva's answers are small, and a misbehaving proxy
/// must not be able to exhaust memory before the total timeout fires.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// The most of one loans-list page read: a page holds at most `MAX_LOANS_PAGE` loans of a few
/// hundred bytes each, so this leaves room for fields Kiva may add (about 14 KiB a loan) while
/// a page that ignores `limit`, or a proxy's endless body, is refused after 4 MiB rather than
/// parsed and kept.
pub const MAX_LOANS_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Error bodies quoted in a reason: enough to recognise the error, short enough for a log line.
const REASON_EXCERPT: usize = 300;
/// Below common load-balancer idle timeouts (60 s): reusing a connection the far end is
/// closing fails after the request was written, which would make a batch's fate unknown.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Shared by all delivery workers of the process; cheap to clone (one connection pool, one
/// token cache).
#[derive(Clone)]
pub struct KivaClient {
    inner: Arc<Inner>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

struct Inner {
    http: reqwest::Client,
    token_url: Url,
    audience: String,
    /// Without a trailing slash, so paths can be appended as text (the base may carry a path).
    api_base_url: String,
    partners: HashMap<PartnerId, PartnerAuth>,
}

struct PartnerAuth {
    client_id: String,
    client_secret: Option<SecretString>,
    /// Held across a token request: that is what keeps it to one in flight per partner.
    state: Mutex<TokenState>,
}

#[derive(Default)]
struct TokenState {
    current: Option<CachedToken>,
    /// Numbers the tokens fetched, so a caller refused with token N can tell whether someone
    /// else already replaced it.
    generation: u64,
    /// Lets callers that queued behind a failing token request share its failure instead of
    /// each waiting out their own timeout in turn.
    last_failure: Option<(Instant, String)>,
}

struct CachedToken {
    token: Token,
    refresh_at: Instant,
}

#[derive(Clone)]
struct Token {
    access: SecretString,
    generation: u64,
}

struct FetchedToken {
    access: SecretString,
    refresh_at: Instant,
}

/// One page of `GET /v3/partner/{id}/loans`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LoansPage {
    pub total_records: u64,
    pub loans: Vec<KivaLoan>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KivaLoan {
    pub internal_loan_id: String,
    pub internal_client_id: Option<String>,
    pub kiva_id: Option<u64>,
    pub status: String,
    /// The exact digits Kiva sent.
    pub loan_local_price: Option<String>,
    pub loan_currency: Option<String>,
    pub delinquent: Option<bool>,
}

/// An HTTP exchange that produced a status line and a fully read body.
struct RawAnswer {
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Bytes,
    /// More arrived than the endpoint's bound: `body` is its first part only.
    over_limit: bool,
}

enum Failure {
    /// Nothing was written to Kiva.
    NotSent(String),
    /// Something may have been written and processed.
    Unknown(String),
}

impl Failure {
    fn into_reason(self) -> String {
        match self {
            Failure::NotSent(reason) | Failure::Unknown(reason) => reason,
        }
    }
}

impl fmt::Debug for KivaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut partners: Vec<&str> = self.inner.partners.keys().map(|p| p.as_str()).collect();
        partners.sort_unstable();
        f.debug_struct("KivaClient")
            .field("token_url", &redact_url(self.inner.token_url.as_str()))
            .field("audience", &self.inner.audience)
            .field("api_base_url", &redact_url(&self.inner.api_base_url))
            .field("partners", &partners)
            .finish_non_exhaustive()
    }
}

impl KivaClient {
    pub fn new(settings: &KivaSettings, partners: &[PartnerSettings]) -> anyhow::Result<Self> {
        let token_url = Url::parse(&settings.token_url).map_err(|e| {
            anyhow::anyhow!("kiva.token_url {:?}: {e}", redact_url(&settings.token_url))
        })?;
        let api_base_url = settings.api_base_url.trim_end_matches('/').to_owned();
        Url::parse(&api_base_url).map_err(|e| {
            anyhow::anyhow!(
                "kiva.api_base_url {:?}: {e}",
                redact_url(&settings.api_base_url)
            )
        })?;

        let timeout = Duration::from_secs(settings.request_timeout_secs.max(1));
        // Strictly shorter than the total timeout: when both could fire during a stalled
        // connect, the total one would win and report a never-sent request as maybe-sent.
        let connect_timeout = MAX_CONNECT_TIMEOUT.min(timeout.mul_f64(0.9));
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            // A redirect would re-send (or silently drop) a repayments body: never follow.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()?;

        let partners = partners
            .iter()
            .map(|p| {
                let auth = PartnerAuth {
                    client_id: p.client_id.clone(),
                    client_secret: p.client_secret.clone(),
                    state: Mutex::new(TokenState::default()),
                };
                (p.id.clone(), auth)
            })
            .collect();

        Ok(Self {
            inner: Arc::new(Inner {
                http,
                token_url,
                audience: settings.audience.clone(),
                api_base_url,
                partners,
            }),
            metrics: None,
        })
    }

    /// Counts this client's calls, their latency and token fetches in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// `perform`, timed and counted by endpoint and status.
    async fn perform(
        &self,
        partner: &PartnerId,
        endpoint: KivaEndpoint,
        request: reqwest::RequestBuilder,
    ) -> Result<RawAnswer, Failure> {
        let started = Instant::now();
        let max_bytes = match endpoint {
            KivaEndpoint::Loans => MAX_LOANS_PAGE_BYTES,
            _ => MAX_RESPONSE_BYTES,
        };
        let result = perform(request, max_bytes).await;
        if let Some(metrics) = &self.metrics {
            let end = match &result {
                Ok(answer) => KivaCallEnd::Status(answer.status.as_u16()),
                Err(Failure::NotSent(_)) => KivaCallEnd::NotSent,
                Err(Failure::Unknown(_)) => KivaCallEnd::TransportError,
            };
            metrics.kiva_call(partner, endpoint, end, started.elapsed());
        }
        result
    }

    /// POSTs `body` (already the exact JSON bytes `{"repayments":[...]}`) to
    /// `{api_base_url}/v3/partner/{partner_id}/repayments`. On a 401 or 403 the token is
    /// replaced and the same bytes are sent once more; the second answer is returned.
    pub async fn send_repayments(&self, partner: &PartnerId, body: Bytes) -> SendOutcome {
        let Some(auth) = self.inner.partners.get(partner) else {
            return SendOutcome::TokenUnavailable {
                reason: format!("partner {partner} is not configured in the gateway"),
            };
        };
        let url = match self.partner_url(partner, "repayments") {
            Ok(url) => url,
            Err(reason) => return SendOutcome::NotSent { reason },
        };
        let token = match self.token(partner, auth, None).await {
            Ok(token) => token,
            Err(reason) => return SendOutcome::TokenUnavailable { reason },
        };

        let first = self
            .post_repayments(partner, &url, &token, body.clone())
            .await;
        match first {
            Ok(answer) if is_token_refusal(answer.status) => {
                tracing::debug!(
                    partner = %partner,
                    status = answer.status.as_u16(),
                    "Kiva refused the access token; fetching a new one and sending once more"
                );
                let token = match self.token(partner, auth, Some(token.generation)).await {
                    Ok(token) => token,
                    Err(reason) => {
                        // Kiva refused the first call, so nothing was processed: the same
                        // outcome as having had no token at all.
                        return SendOutcome::TokenUnavailable {
                            reason: format!(
                                "Kiva refused the access token ({}) and no new one could be had: {reason}",
                                answer.status
                            ),
                        };
                    }
                };
                let second = self.post_repayments(partner, &url, &token, body).await;
                into_outcome(second, true)
            }
            other => into_outcome(other, false),
        }
    }

    /// Fetches a fresh token (not from the cache), for `check-config --online`. A token
    /// obtained this way replaces the cached one.
    pub async fn check_credentials(&self, partner: &PartnerId) -> Result<(), String> {
        let auth = self.partner(partner)?;
        let mut state = auth.state.lock().await;
        let fetched = self.fetch_token(partner, auth).await?;
        store_token(&mut state, fetched);
        Ok(())
    }

    /// `GET {api_base_url}/v3/partner/{id}/loans?status=..&offset=..&limit=..`, one `status`
    /// pair per entry of `statuses` (none: every status); `limit` is kept between 1 and
    /// [`MAX_LOANS_PAGE`]. Read-only. Kiva documents `status` as one value, so callers that
    /// need several statuses exactly should ask for one at a time.
    pub async fn loans(
        &self,
        partner: &PartnerId,
        statuses: &[&str],
        offset: u32,
        limit: u32,
    ) -> Result<LoansPage, String> {
        let auth = self.partner(partner)?;
        let mut url = self.partner_url(partner, "loans")?;
        {
            let mut query = url.query_pairs_mut();
            for status in statuses {
                query.append_pair("status", status);
            }
            query.append_pair("offset", &offset.to_string());
        }
        let limit = limit.clamp(1, MAX_LOANS_PAGE);
        url.query_pairs_mut()
            .append_pair("limit", &limit.to_string());

        let token = self.token(partner, auth, None).await?;
        let mut answer = self
            .exchange(
                (partner, KivaEndpoint::Loans),
                Method::GET,
                &url,
                &token,
                None,
            )
            .await
            .map_err(|f| format!("loans list: {}", f.into_reason()))?;
        if is_token_refusal(answer.status) {
            let token = self.token(partner, auth, Some(token.generation)).await?;
            answer = self
                .exchange(
                    (partner, KivaEndpoint::Loans),
                    Method::GET,
                    &url,
                    &token,
                    None,
                )
                .await
                .map_err(|f| format!("loans list: {}", f.into_reason()))?;
        }
        if !answer.status.is_success() {
            return Err(format!(
                "loans list: Kiva answered {}: {}",
                answer.status,
                excerpt(&answer.body, REASON_EXCERPT)
            ));
        }
        if answer.over_limit {
            return Err(format!(
                "loans list: the page is larger than {} MiB (asked for at most {limit} loans); \
                 not read further",
                MAX_LOANS_PAGE_BYTES / (1024 * 1024)
            ));
        }
        parse_loans_page(&answer.body, limit).map_err(|e| format!("loans list: {e}"))
    }

    fn partner(&self, partner: &PartnerId) -> Result<&PartnerAuth, String> {
        self.inner
            .partners
            .get(partner)
            .ok_or_else(|| format!("partner {partner} is not configured in the gateway"))
    }

    fn partner_url(&self, partner: &PartnerId, leaf: &str) -> Result<Url, String> {
        let text = format!("{}/v3/partner/{partner}/{leaf}", self.inner.api_base_url);
        Url::parse(&text).map_err(|e| format!("cannot build the URL {:?}: {e}", redact_url(&text)))
    }

    /// A usable token for `partner`: the cached one, or a new one. With `refused`, the token
    /// of that generation was refused by Kiva and must not be handed out again; if another
    /// caller has already replaced it, the replacement is used rather than fetching a third.
    async fn token(
        &self,
        partner: &PartnerId,
        auth: &PartnerAuth,
        refused: Option<u64>,
    ) -> Result<Token, String> {
        let asked_at = Instant::now();
        let mut state = auth.state.lock().await;
        if let Some(cached) = &state.current {
            let still_good = Instant::now() < cached.refresh_at;
            let not_refused = refused != Some(cached.token.generation);
            if still_good && not_refused {
                return Ok(cached.token.clone());
            }
        }
        if let Some((failed_at, reason)) = &state.last_failure
            && *failed_at >= asked_at
        {
            return Err(reason.clone());
        }
        state.current = None;
        match self.fetch_token(partner, auth).await {
            Ok(fetched) => Ok(store_token(&mut state, fetched)),
            Err(reason) => {
                state.last_failure = Some((Instant::now(), reason.clone()));
                Err(reason)
            }
        }
    }

    /// `request_token`, counted as a token fetch that succeeded or failed.
    async fn fetch_token(
        &self,
        partner: &PartnerId,
        auth: &PartnerAuth,
    ) -> Result<FetchedToken, String> {
        let result = self.request_token(partner, auth).await;
        if let Some(metrics) = &self.metrics {
            metrics.token_fetch(partner, result.is_ok());
        }
        result
    }

    async fn request_token(
        &self,
        partner: &PartnerId,
        auth: &PartnerAuth,
    ) -> Result<FetchedToken, String> {
        let Some(secret) = auth.client_secret.as_ref() else {
            return Err(format!(
                "partner {partner} has no client_secret: set it in the configuration file or in {}",
                partner_secret_env_var(partner)
            ));
        };
        let form = serde_urlencoded::to_string([
            ("grant_type", "client_credentials"),
            ("client_id", auth.client_id.as_str()),
            ("client_secret", secret.expose_secret()),
            ("audience", self.inner.audience.as_str()),
            ("scope", TOKEN_SCOPE),
        ])
        .map_err(|e| format!("cannot encode the token request: {e}"))?;
        let scrub = |text: String| redact(text, secret.expose_secret());

        // The URL as reasons name it: an operator may have put a key in its query.
        let shown_url = redact_url(self.inner.token_url.as_str());
        // Measured before sending, so the cached lifetime errs on the short side.
        let sent_at = Instant::now();
        let request = self
            .inner
            .http
            .post(self.inner.token_url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(form);
        let answer = self
            .perform(partner, KivaEndpoint::Token, request)
            .await
            .map_err(|f| scrub(format!("token endpoint {}: {}", shown_url, f.into_reason())))?;
        if !answer.status.is_success() {
            return Err(scrub(format!(
                "token endpoint {} answered {}: {}",
                shown_url,
                answer.status,
                excerpt(&answer.body, REASON_EXCERPT)
            )));
        }
        // A 2xx body may hold a token: never quote it.
        let object = match serde_json::from_slice::<Value>(&answer.body) {
            Ok(Value::Object(object)) => object,
            _ => {
                return Err(format!(
                    "token endpoint {} answered {} with a body that is not a JSON object ({} bytes)",
                    shown_url,
                    answer.status,
                    answer.body.len()
                ));
            }
        };
        let access = match object.get("access_token") {
            Some(Value::String(token)) if !token.is_empty() => token.as_str(),
            _ => {
                return Err(format!(
                    "token endpoint {} answered {} without an access_token",
                    shown_url, answer.status
                ));
            }
        };
        if HeaderValue::from_str(&format!("Bearer {access}")).is_err() {
            return Err(format!(
                "token endpoint {} answered with an access_token that cannot be sent in a header",
                shown_url
            ));
        }

        let lifetime = object
            .get("expires_in")
            .and_then(as_u64)
            .map(Duration::from_secs)
            .unwrap_or(TOKEN_LIFETIME_WHEN_UNSAID);
        let margin = Duration::from_secs(60).min(lifetime / 10);
        let refresh_at = sent_at + lifetime.saturating_sub(margin);
        tracing::debug!(
            partner = %partner,
            expires_in = lifetime.as_secs(),
            "fetched a Kiva access token"
        );
        if let Some(kiva_partner) = object.get("partnerId").and_then(text_of)
            && kiva_partner != partner.as_str()
        {
            tracing::warn!(
                partner = %partner,
                kiva_partner_id = %kiva_partner,
                "Kiva issued this partner's token for partner {kiva_partner}, not {partner}: \
                 check the partner id and the client credentials in the configuration"
            );
        }
        Ok(FetchedToken {
            access: SecretString::from(access),
            refresh_at,
        })
    }

    async fn post_repayments(
        &self,
        partner: &PartnerId,
        url: &Url,
        token: &Token,
        body: Bytes,
    ) -> Result<RawAnswer, Failure> {
        let started = Instant::now();
        let result = self
            .exchange(
                (partner, KivaEndpoint::Repayments),
                Method::POST,
                url,
                token,
                Some(body),
            )
            .await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(answer) => tracing::debug!(
                partner = %partner,
                status = answer.status.as_u16(),
                elapsed_ms,
                "repayments call answered"
            ),
            Err(Failure::NotSent(reason)) => tracing::debug!(
                partner = %partner,
                elapsed_ms,
                reason = %reason,
                "repayments call not sent"
            ),
            Err(Failure::Unknown(reason)) => tracing::debug!(
                partner = %partner,
                elapsed_ms,
                reason = %reason,
                "repayments call failed after it may have been sent"
            ),
        }
        result
    }

    async fn exchange(
        &self,
        (partner, endpoint): (&PartnerId, KivaEndpoint),
        method: Method,
        url: &Url,
        token: &Token,
        json_body: Option<Bytes>,
    ) -> Result<RawAnswer, Failure> {
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {}", token.access.expose_secret()))
                .map_err(|_| Failure::NotSent("the access token is not a valid header".into()))?;
        // Keeps it out of any Debug output of the request.
        authorization.set_sensitive(true);
        let mut request = self
            .inner
            .http
            .request(method, url.clone())
            .header(ACCEPT, "application/json")
            .header(AUTHORIZATION, authorization);
        if let Some(body) = json_body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        self.perform(partner, endpoint, request)
            .await
            .map_err(|f| redact_failure(f, token.access.expose_secret()))
    }
}

fn store_token(state: &mut TokenState, fetched: FetchedToken) -> Token {
    state.generation += 1;
    let token = Token {
        access: fetched.access,
        generation: state.generation,
    };
    state.current = Some(CachedToken {
        token: token.clone(),
        refresh_at: fetched.refresh_at,
    });
    state.last_failure = None;
    token
}

fn is_token_refusal(status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN
}

fn into_outcome(result: Result<RawAnswer, Failure>, token_refreshed: bool) -> SendOutcome {
    match result {
        Ok(answer) => SendOutcome::Answered(KivaAnswer {
            status: answer.status.as_u16(),
            retry_after: answer.retry_after,
            body_excerpt: excerpt(&answer.body, MAX_BODY_EXCERPT),
            result: UploadResult::parse(&answer.body),
            token_refreshed,
        }),
        Err(Failure::NotSent(reason)) => SendOutcome::NotSent { reason },
        Err(Failure::Unknown(reason)) => SendOutcome::Unknown { reason },
    }
}

/// Sends and reads the whole answer, sorting failures by whether anything reached the server.
async fn perform(request: reqwest::RequestBuilder, max_bytes: usize) -> Result<RawAnswer, Failure> {
    let mut response = request.send().await.map_err(|e| {
        // reqwest marks every failure of the connector (DNS, TCP connect, TLS handshake and
        // the connect timeout) as a connect error; only then is it certain nothing was written.
        if e.is_connect() {
            Failure::NotSent(describe(&e))
        } else {
            Failure::Unknown(describe(&e))
        }
    })?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let mut body = Vec::new();
    let mut over_limit = false;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = max_bytes - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if chunk.len() > room {
                    over_limit = true;
                    break;
                }
            }
            Ok(None) => break,
            // The status line is Kiva's answer: a 200 means it processed the call, whatever
            // became of the body. Calling this an unknown outcome would hold a delivered batch
            // (and invite a resend, a second upload); so it is answered, with the part that
            // arrived kept raw as the excerpt (empty result, as for any unreadable body).
            Err(e) => {
                tracing::warn!(
                    status = status.as_u16(),
                    received_bytes = body.len(),
                    error = %describe(&e),
                    "Kiva's answer was cut short; keeping its status and what arrived"
                );
                break;
            }
        }
    }
    Ok(RawAnswer {
        status,
        retry_after,
        body: Bytes::from(body),
        over_limit,
    })
}

/// The error with its causes: reqwest's own message alone ("error sending request") does not
/// say whether it was a refusal, a reset or a timeout.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    // reqwest names the URL; a token or key in its query must not reach a reason or a log.
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), &redact_url(url.as_str()));
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    if error.is_timeout() && !text.contains("timed out") {
        text.push_str(" (timed out)");
    }
    text
}

/// Belt and braces: no path is known to put a secret in a reason, but a server that echoes
/// the request in its error body would, possibly still form-encoded.
fn redact(mut text: String, secret: &str) -> String {
    if secret.is_empty() {
        return text;
    }
    let encoded = serde_urlencoded::to_string([("", secret)]).unwrap_or_default();
    let encoded = encoded.trim_start_matches('=');
    for form in [secret, encoded] {
        if !form.is_empty() && text.contains(form) {
            text = text.replace(form, "[redacted]");
        }
    }
    text
}

fn redact_failure(failure: Failure, secret: &str) -> Failure {
    match failure {
        Failure::NotSent(reason) => Failure::NotSent(redact(reason, secret)),
        Failure::Unknown(reason) => Failure::Unknown(redact(reason, secret)),
    }
}

/// `Retry-After` as delta-seconds or an HTTP-date; a date in the past means now.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// At most `max` bytes of the body as text, cut on a char boundary; invalid UTF-8 is
/// replaced rather than dropped so the excerpt still shows what came.
fn excerpt(body: &[u8], max: usize) -> String {
    // A char that starts before `max` ends within 3 bytes after it, so this prefix holds
    // every char that can fit, and only chars past `max` can be cut by it.
    let prefix = &body[..body.len().min(max + 3)];
    let mut text = String::from_utf8_lossy(prefix).into_owned();
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// One page, refused when it holds more than the `limit` loans asked for: a list that ignores
/// `limit` has no bound a client can rely on.
fn parse_loans_page(body: &[u8], limit: u32) -> Result<LoansPage, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let object = value.as_object().ok_or("not a JSON object")?;
    // `total_records` from the integration that runs against Kiva, `totalRecords` from Kiva's
    // own typed client.
    let total_records = object
        .get("total_records")
        .or_else(|| object.get("totalRecords"))
        .and_then(as_u64)
        .ok_or("no total_records")?;
    let items: &[Value] = match object.get("data") {
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => &[],
        Some(_) => return Err("data is not a list".into()),
    };
    if items.len() > limit as usize {
        return Err(format!(
            "Kiva sent {} loans for a page of at most {limit}",
            items.len()
        ));
    }
    let loans = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let loan = item
                .as_object()
                .ok_or_else(|| format!("data[{i}] is not an object"))?;
            kiva_loan(loan).map_err(|e| format!("data[{i}]: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(LoansPage {
        total_records,
        loans,
    })
}

fn kiva_loan(loan: &Map<String, Value>) -> Result<KivaLoan, String> {
    let field = |key: &str| loan.get(key).and_then(text_of);
    Ok(KivaLoan {
        internal_loan_id: field("internal_loan_id").ok_or("no internal_loan_id")?,
        internal_client_id: field("internal_client_id"),
        kiva_id: loan.get("kiva_id").and_then(as_u64),
        status: field("status").ok_or("no status")?,
        loan_local_price: field("loan_local_price"),
        loan_currency: field("loan_currency"),
        delinquent: loan.get("delinquent").and_then(Value::as_bool),
    })
}

/// A string or a number as text; with `arbitrary_precision`, a number keeps its exact digits.
fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// A whole number given as a JSON number (`43199`, `43199.0`) or as digits in a string.
fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(number) => number.as_u64().or_else(|| {
            number
                .as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0 && *f < u64::MAX as f64)
                .map(|f| f as u64)
        }),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use actix_web::dev::ServerHandle;
    use actix_web::http::StatusCode as ActixStatus;
    use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
    use futures_util::future::join_all;

    use super::*;
    use crate::domain::ColumnFormat;

    const SECRET: &str = "s3cret-do-not-leak";
    const AUDIENCE: &str = "https://partner-api.audience.test";
    const PARTNER: &str = "123";
    const BODY: &[u8] = br#"{"repayments":[{"loan_id":"L1","amount":25.00}]}"#;

    /// What the fake saw of one request.
    #[derive(Debug, Clone)]
    struct Seen {
        path: String,
        query: String,
        content_type: Option<String>,
        accept: Option<String>,
        authorization: Option<String>,
        user_agent: Option<String>,
        body: Bytes,
    }

    enum Reply {
        Answer {
            status: u16,
            headers: Vec<(&'static str, String)>,
            body: String,
        },
        /// Accepts the request and never answers.
        Stall,
        /// Sends the status line and part of the body, then breaks the connection.
        BrokenBody,
    }

    fn reply(status: u16, body: impl Into<String>) -> Reply {
        Reply::Answer {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    fn token_reply(n: usize, expires_in: u64) -> Reply {
        reply(
            200,
            serde_json::json!({
                "access_token": format!("tok-{n}"),
                "token_type": "bearer",
                "expires_in": expires_in,
                "scope": TOKEN_SCOPE,
                "partnerId": PARTNER,
            })
            .to_string(),
        )
    }

    type Script = Arc<dyn Fn(usize, &Seen) -> Reply + Send + Sync>;

    /// A stand-in for Kiva; each endpoint counts its calls (1-based `n` for the script).
    #[derive(Clone)]
    struct FakeKiva {
        token_calls: Arc<AtomicUsize>,
        repayment_calls: Arc<AtomicUsize>,
        loans_calls: Arc<AtomicUsize>,
        token_requests: Arc<StdMutex<Vec<Seen>>>,
        api_requests: Arc<StdMutex<Vec<Seen>>>,
        token_script: Script,
        repayments_script: Script,
        loans_script: Script,
    }

    impl FakeKiva {
        fn new() -> Self {
            Self {
                token_calls: Arc::default(),
                repayment_calls: Arc::default(),
                loans_calls: Arc::default(),
                token_requests: Arc::default(),
                api_requests: Arc::default(),
                token_script: Arc::new(|n, _| token_reply(n, 43199)),
                repayments_script: Arc::new(|_, _| reply(200, r#"{"upload_id":1,"problems":[]}"#)),
                loans_script: Arc::new(|_, _| reply(200, r#"{"total_records":0,"data":[]}"#)),
            }
        }

        fn token(mut self, f: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> Self {
            self.token_script = Arc::new(f);
            self
        }

        fn repayments(mut self, f: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> Self {
            self.repayments_script = Arc::new(f);
            self
        }

        fn loans(mut self, f: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> Self {
            self.loans_script = Arc::new(f);
            self
        }

        fn token_calls(&self) -> usize {
            self.token_calls.load(Ordering::SeqCst)
        }

        fn repayment_calls(&self) -> usize {
            self.repayment_calls.load(Ordering::SeqCst)
        }

        fn start(&self) -> Running {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let fake = web::Data::new(self.clone());
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(fake.clone())
                    .route("/oauth2/token", web::post().to(token_endpoint))
                    .route(
                        "/partner-api/v3/partner/{id}/repayments",
                        web::post().to(repayments_endpoint),
                    )
                    .route(
                        "/partner-api/v3/partner/{id}/loans",
                        web::get().to(loans_endpoint),
                    )
            })
            .workers(1)
            .disable_signals()
            .listen(listener)
            .unwrap()
            .run();
            let handle = server.handle();
            tokio::spawn(server);
            Running { base, handle }
        }
    }

    struct Running {
        base: String,
        handle: ServerHandle,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            // `stop` sends the command before returning; its future only awaits completion.
            #[allow(clippy::let_underscore_future)]
            let _ = self.handle.stop(false);
        }
    }

    fn seen(request: &HttpRequest, body: Bytes) -> Seen {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Seen {
            path: request.path().to_owned(),
            query: request.query_string().to_owned(),
            content_type: header("content-type"),
            accept: header("accept"),
            authorization: header("authorization"),
            user_agent: header("user-agent"),
            body,
        }
    }

    async fn respond(reply: Reply) -> HttpResponse {
        match reply {
            Reply::Answer {
                status,
                headers,
                body,
            } => {
                let mut response = HttpResponse::build(ActixStatus::from_u16(status).unwrap());
                for header in headers {
                    response.insert_header(header);
                }
                response.content_type("application/json").body(body)
            }
            Reply::Stall => std::future::pending().await,
            Reply::BrokenBody => {
                // A first chunk beyond actix's write buffer and a yield before the error make
                // sure the status line is on the wire before the connection breaks.
                let body = futures_util::stream::unfold(0, |step| async move {
                    match step {
                        0 => Some((Ok(Bytes::from(vec![b' '; 64 * 1024])), 1)),
                        1 => {
                            tokio::task::yield_now().await;
                            Some((Err(std::io::Error::other("cut")), 2))
                        }
                        _ => None,
                    }
                });
                HttpResponse::Ok()
                    .content_type("application/json")
                    .streaming(body)
            }
        }
    }

    async fn token_endpoint(
        fake: web::Data<FakeKiva>,
        request: HttpRequest,
        body: Bytes,
    ) -> HttpResponse {
        let n = fake.token_calls.fetch_add(1, Ordering::SeqCst) + 1;
        let seen = seen(&request, body);
        let reply = (fake.token_script)(n, &seen);
        fake.token_requests.lock().unwrap().push(seen);
        respond(reply).await
    }

    async fn repayments_endpoint(
        fake: web::Data<FakeKiva>,
        request: HttpRequest,
        body: Bytes,
    ) -> HttpResponse {
        let n = fake.repayment_calls.fetch_add(1, Ordering::SeqCst) + 1;
        let seen = seen(&request, body);
        let reply = (fake.repayments_script)(n, &seen);
        fake.api_requests.lock().unwrap().push(seen);
        respond(reply).await
    }

    async fn loans_endpoint(
        fake: web::Data<FakeKiva>,
        request: HttpRequest,
        body: Bytes,
    ) -> HttpResponse {
        let n = fake.loans_calls.fetch_add(1, Ordering::SeqCst) + 1;
        let seen = seen(&request, body);
        let reply = (fake.loans_script)(n, &seen);
        fake.api_requests.lock().unwrap().push(seen);
        respond(reply).await
    }

    fn partner() -> PartnerId {
        PartnerId::parse(PARTNER).unwrap()
    }

    fn partner_settings(secret: Option<&str>) -> Vec<PartnerSettings> {
        vec![PartnerSettings {
            id: partner(),
            name: "Demo MFI".into(),
            column_format: ColumnFormat::TwoColumn,
            client_id: "cid".into(),
            client_secret: secret.map(SecretString::from),
            resend_on_unknown_outcome: false,
            unexpected_loans: Default::default(),
        }]
    }

    /// Token URL, audience and API base deliberately share nothing, and the base carries a
    /// path and a trailing slash.
    fn kiva_settings(token_base: &str, api_base: &str, timeout_secs: u64) -> KivaSettings {
        KivaSettings {
            token_url: format!("{token_base}/oauth2/token"),
            audience: AUDIENCE.into(),
            api_base_url: format!("{api_base}/partner-api/"),
            batch_size: 200,
            request_timeout_secs: timeout_secs,
        }
    }

    fn client_for(running: &Running) -> KivaClient {
        KivaClient::new(
            &kiva_settings(&running.base, &running.base, 5),
            &partner_settings(Some(SECRET)),
        )
        .unwrap()
    }

    async fn send(client: &KivaClient) -> SendOutcome {
        client
            .send_repayments(&partner(), Bytes::from_static(BODY))
            .await
    }

    fn answered(outcome: SendOutcome) -> KivaAnswer {
        match outcome {
            SendOutcome::Answered(answer) => answer,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn assert_no_secrets(text: &str) {
        assert!(!text.contains(SECRET), "the client secret leaked: {text}");
        assert!(!text.contains("tok-"), "an access token leaked: {text}");
    }

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

    #[tokio::test]
    async fn a_loans_page_is_read_with_exact_values() {
        let fake = FakeKiva::new().loans(|n, _| {
            if n == 1 {
                return reply(403, "");
            }
            reply(
                200,
                r#"{"total_records": 2, "data": [
                    {"internal_loan_id": "L1", "internal_client_id": "C1", "kiva_id": 1042970,
                     "status": "payingBack", "loan_local_price": 1234.50,
                     "loan_currency": "KES", "delinquent": false, "extra": [1]},
                    {"internal_loan_id": 16693, "internal_client_id": null, "kiva_id": "77",
                     "status": "defaulted", "loan_local_price": "99.10"}
                ]}"#,
            )
        });
        let running = fake.start();
        let client = client_for(&running);

        let page = client
            .loans(&partner(), &["payingBack"], 600, 1000)
            .await
            .unwrap();
        assert_eq!(page.total_records, 2);
        assert_eq!(
            page.loans,
            vec![
                KivaLoan {
                    internal_loan_id: "L1".into(),
                    internal_client_id: Some("C1".into()),
                    kiva_id: Some(1042970),
                    status: "payingBack".into(),
                    loan_local_price: Some("1234.50".into()),
                    loan_currency: Some("KES".into()),
                    delinquent: Some(false),
                },
                KivaLoan {
                    internal_loan_id: "16693".into(),
                    internal_client_id: None,
                    kiva_id: Some(77),
                    status: "defaulted".into(),
                    loan_local_price: Some("99.10".into()),
                    loan_currency: None,
                    delinquent: None,
                },
            ]
        );
        let requests = fake.api_requests.lock().unwrap().clone();
        assert_eq!(requests.len(), 2, "one resend after the 403");
        assert_eq!(requests[1].path, "/partner-api/v3/partner/123/loans");
        assert_eq!(requests[1].query, "status=payingBack&offset=600&limit=300");
        assert_eq!(requests[1].authorization.as_deref(), Some("Bearer tok-2"));
        assert_eq!(fake.token_calls(), 2);
    }

    #[tokio::test]
    async fn a_loans_page_counted_as_total_records_in_camel_case_is_read_and_statuses_repeat() {
        let fake = FakeKiva::new().loans(|_, _| {
            reply(
                200,
                r#"{"totalRecords": 301, "data": [{"internal_loan_id": "L1", "status": "ended"}]}"#,
            )
        });
        let running = fake.start();
        let client = client_for(&running);
        let page = client
            .loans(&partner(), &["payingBack", "defaulted"], 300, 300)
            .await
            .unwrap();
        assert_eq!(page.total_records, 301);
        assert_eq!(page.loans.len(), 1);
        let requests = fake.api_requests.lock().unwrap().clone();
        assert_eq!(
            requests[0].query,
            "status=payingBack&status=defaulted&offset=300&limit=300"
        );
    }

    #[tokio::test]
    async fn loans_errors_name_the_problem() {
        let fake = FakeKiva::new().loans(|n, _| match n {
            1 => reply(500, "boom"),
            2 => reply(200, "not json"),
            _ => reply(200, r#"{"total_records":1,"data":[{"status":"ended"}]}"#),
        });
        let running = fake.start();
        let client = client_for(&running);
        let mut errors = Vec::new();
        for _ in 0..3 {
            errors.push(client.loans(&partner(), &[], 0, 10).await.unwrap_err());
        }
        assert!(
            errors[0].contains("500") && errors[0].contains("boom"),
            "{errors:?}"
        );
        assert!(errors[1].contains("not JSON"), "{errors:?}");
        assert!(
            errors[2].contains("data[0]: no internal_loan_id"),
            "{errors:?}"
        );
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
}
