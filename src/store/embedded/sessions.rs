//! Web sessions in SQLite: one row per session, keyed by the SHA-256 of its id, with its idle
//! and absolute expiry in milliseconds. Expired rows are swept when a session is created.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::{EmbeddedStore, decode, encode, now_ms, other};
use crate::store::{Sessions, StoreError, WebSession};

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait::async_trait]
impl Sessions for EmbeddedStore {
    async fn create_session(
        &self,
        id_hash: &str,
        session: &WebSession,
        idle: Duration,
    ) -> Result<(), StoreError> {
        let id_hash = id_hash.to_owned();
        let doc = encode(session);
        let expires = session.expires_at.timestamp_millis();
        let now = now_ms();
        let idle_until = now.saturating_add(millis(idle)).min(expires);
        self.transaction(move |tx| {
            tx.execute(
                "DELETE FROM web_sessions WHERE idle_until <= ?1 OR expires_at <= ?1",
                params![now],
            )
            .map_err(other)?;
            tx.execute(
                "INSERT OR REPLACE INTO web_sessions (id_hash, doc, idle_until, expires_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![id_hash, doc, idle_until, expires],
            )
            .map_err(other)?;
            Ok(())
        })
        .await
    }

    async fn session(
        &self,
        id_hash: &str,
        idle: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<WebSession>, StoreError> {
        let id_hash = id_hash.to_owned();
        let now = now.timestamp_millis();
        let idle = millis(idle);
        let doc: Option<String> = self
            .transaction(move |tx| {
                let doc: Option<String> = tx
                    .query_row(
                        "SELECT doc FROM web_sessions \
                         WHERE id_hash = ?1 AND idle_until > ?2 AND expires_at > ?2",
                        params![id_hash, now],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(other)?;
                if doc.is_some() {
                    tx.execute(
                        "UPDATE web_sessions SET idle_until = MIN(?2 + ?3, expires_at) \
                         WHERE id_hash = ?1",
                        params![id_hash, now, idle],
                    )
                    .map_err(other)?;
                } else {
                    // An expired session is gone for good, as on Redis: a reader with an
                    // earlier clock must not bring it back.
                    tx.execute(
                        "DELETE FROM web_sessions WHERE id_hash = ?1",
                        params![id_hash],
                    )
                    .map_err(other)?;
                }
                Ok(doc)
            })
            .await?;
        doc.as_deref().map(decode).transpose()
    }

    async fn end_session(&self, id_hash: &str) -> Result<(), StoreError> {
        let id_hash = id_hash.to_owned();
        self.transaction(move |tx| {
            tx.execute(
                "DELETE FROM web_sessions WHERE id_hash = ?1",
                params![id_hash],
            )
            .map_err(other)?;
            Ok(())
        })
        .await
    }
}
