//! API keys: the MIS sends `X-Api-Key`; the gateway knows only each key's SHA-256.

use std::collections::HashMap;
use std::future::{Ready, ready};

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use sha2::{Digest, Sha256};

use super::AppState;
use super::problem::ApiError;
use crate::config::{ApiKeySettings, Role};
use crate::domain::PartnerId;
use crate::intake::PartnerScope;

pub const API_KEY_HEADER: &str = "X-Api-Key";

/// Who is calling: an API key's name, never its value.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_name: String,
    pub branch: String,
    pub role: Role,
    pub scope: PartnerScope,
}

impl Caller {
    /// A branch key sees its own branch's reports; an admin key every report of its partners.
    pub fn may_read(&self, partner: &PartnerId, branch: &str) -> bool {
        self.scope.allows(partner) && (self.role == Role::Admin || self.branch == branch)
    }
}

#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    by_hash: HashMap<String, Caller>,
}

impl ApiKeys {
    pub fn new(keys: &[ApiKeySettings]) -> Self {
        let by_hash = keys
            .iter()
            .map(|k| {
                let scope = match PartnerId::parse(&k.partner) {
                    Ok(id) => PartnerScope::One(id),
                    Err(_) => PartnerScope::All,
                };
                let caller = Caller {
                    key_name: k.name.clone(),
                    branch: k.branch.clone(),
                    role: k.role,
                    scope,
                };
                (k.key_sha256.to_ascii_lowercase(), caller)
            })
            .collect();
        Self { by_hash }
    }

    pub fn identify(&self, presented: &str) -> Option<&Caller> {
        self.by_hash.get(&hash_key(presented))
    }

    /// The key with this SHA-256 (hex), as a web session remembers it.
    pub fn by_hash(&self, key_sha256: &str) -> Option<&Caller> {
        self.by_hash.get(key_sha256)
    }
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new random key (256 bits) and the hash to put in the configuration.
pub fn new_key() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let key = format!("rg_{}", hex::encode(bytes));
    let hash = hash_key(&key);
    (key, hash)
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req
            .app_data::<web::Data<AppState>>()
            .expect("AppState is registered");
        let caller = req
            .headers()
            .get(API_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|key| state.api_keys.identify(key.trim()))
            .cloned();
        if let Some(caller) = &caller {
            let span = tracing::Span::current();
            span.record("api_key", caller.key_name.as_str());
            span.record("branch", caller.branch.as_str());
            if let PartnerScope::One(p) = &caller.scope {
                span.record("partner", p.as_str());
            }
        }
        ready(caller.ok_or(ApiError::Unauthenticated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_keys_are_unique_and_match_their_hash() {
        let (a, hash) = new_key();
        let (b, _) = new_key();
        assert_ne!(a, b);
        assert_eq!(hash_key(&a), hash);
        assert_eq!(hash.len(), 64);
    }
}
