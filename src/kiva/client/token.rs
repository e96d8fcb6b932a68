//! The access token per partner: cached, shared by every caller, and fetched by one caller
//! at a time.

use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::sync::Mutex;

use super::transport::{as_u64, excerpt, redact, text_of};
use super::{KivaClient, REASON_EXCERPT, TOKEN_LIFETIME_WHEN_UNSAID, TOKEN_SCOPE};
use crate::config::{partner_secret_env_var, redact_url};
use crate::domain::PartnerId;
use crate::metrics::KivaEndpoint;

pub(super) struct PartnerAuth {
    pub(super) client_id: String,
    pub(super) client_secret: Option<SecretString>,
    /// Held across a token request: that is what keeps it to one in flight per partner.
    pub(super) state: Mutex<TokenState>,
}

#[derive(Default)]
pub(super) struct TokenState {
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
pub(super) struct Token {
    pub(super) access: SecretString,
    pub(super) generation: u64,
}

struct FetchedToken {
    access: SecretString,
    refresh_at: Instant,
}

impl KivaClient {
    /// Fetches a fresh token (not from the cache), for `check-config --online`. A token
    /// obtained this way replaces the cached one.
    pub async fn check_credentials(&self, partner: &PartnerId) -> Result<(), String> {
        let auth = self.partner(partner)?;
        let mut state = auth.state.lock().await;
        let fetched = self.fetch_token(partner, auth).await?;
        store_token(&mut state, fetched);
        Ok(())
    }

    /// A usable token for `partner`: the cached one, or a new one. With `refused`, the token
    /// of that generation was refused by Kiva and must not be handed out again; if another
    /// caller has already replaced it, the replacement is used rather than fetching a third.
    pub(super) async fn token(
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
