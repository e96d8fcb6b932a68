//! The HTTP client for Kiva's Partner API: one OAuth2 client-credentials token per partner,
//! cached and shared by every delivery worker, the repayments endpoint and the loans list.
//!
//! The client only reports facts (`SendOutcome`); whether to retry is delivery's decision.
//! What matters most here is telling "certainly not sent" from "maybe processed", because a
//! repeated repayments call creates a second upload in PA2.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode, Url};

use crate::metrics::{KivaCallEnd, KivaEndpoint};
use secrecy::ExposeSecret;
use tokio::sync::Mutex;

use super::wire::UploadResult;
use super::{KivaAnswer, MAX_BODY_EXCERPT, SendOutcome};
use crate::config::{KivaSettings, PartnerSettings, redact_url};
use crate::domain::PartnerId;

mod loans;
mod token;
mod transport;

pub use loans::{KivaLoan, LoansPage};
use token::{PartnerAuth, Token, TokenState};
use transport::{Failure, RawAnswer, excerpt, perform, redact_failure};

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

#[cfg(test)]
mod tests;
