//! Signed-in browser sessions of the web pages, kept in the store so that any gateway process
//! can serve any page of a session, and a sign-out anywhere ends it everywhere.
//!
//! The store never sees a session's id: it is keyed by the SHA-256 of the id, so whoever reads
//! the store (a backup, a `MONITOR`) can't take over a session.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::StoreError;

/// What a session carries. The API key itself is never kept: only its SHA-256, which is how
/// the configuration names keys, so removing a key from the configuration ends its sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebSession {
    pub key_sha256: String,
    /// The synchronizer token every state-changing form of the session must carry.
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    /// The absolute expiry: however active, the session ends here.
    pub expires_at: DateTime<Utc>,
}

/// Web sessions, keyed by the SHA-256 of the session id.
#[async_trait::async_trait]
pub trait Sessions: Send + Sync + 'static {
    /// Stores a new session; it lives `idle` without use, and never past `expires_at`.
    async fn create_session(
        &self,
        id_hash: &str,
        session: &WebSession,
        idle: Duration,
    ) -> Result<(), StoreError>;

    /// The session if it is alive at `now`; its idle expiry moves to `now + idle` (never past
    /// its absolute expiry) in the same step.
    async fn session(
        &self,
        id_hash: &str,
        idle: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<WebSession>, StoreError>;

    /// Ends the session (sign-out); ending one that is gone is not an error.
    async fn end_session(&self, id_hash: &str) -> Result<(), StoreError>;
}
