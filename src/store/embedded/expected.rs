//! Kiva's expected loans and the refresh lock in SQLite: the snapshot is one row per partner
//! (replaced in one statement, so readers see the old one or the new one), and the lock a row
//! with an expiry. One process opens a directory, but the lock keeps the Redis semantics (a
//! holder, a TTL, unlock only by the holder) so both stores pass the same contract.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::{EmbeddedStore, decode, encode, now_ms, other};
use crate::domain::PartnerId;
use crate::store::{ExpectedLoansSnapshot, RefreshStatus, StoreError};

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS expected_loans (
    partner TEXT PRIMARY KEY,
    taken_at TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refresh_locks (
    partner TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS refresh_status (
    partner TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);
"#;

impl EmbeddedStore {
    pub(super) async fn put_expected_loans(
        &self,
        snapshot: &ExpectedLoansSnapshot,
    ) -> Result<(), StoreError> {
        let partner = snapshot.partner_id.to_string();
        // Encoded before the transaction: the store's one connection is not held meanwhile.
        let doc = encode(snapshot);
        let taken_at = encode(&snapshot.taken_at);
        self.transaction(move |tx| {
            tx.execute(
                "INSERT INTO expected_loans (partner, taken_at, doc) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (partner) DO UPDATE SET taken_at = excluded.taken_at, doc = excluded.doc",
                params![partner, taken_at, doc],
            )
            .map_err(other)?;
            Ok(())
        })
        .await
    }

    pub(super) async fn get_expected_loans(
        &self,
        partner: &PartnerId,
    ) -> Result<Option<ExpectedLoansSnapshot>, StoreError> {
        let partner = partner.to_string();
        let doc: Option<String> = self
            .read(move |tx| {
                tx.query_row(
                    "SELECT doc FROM expected_loans WHERE partner = ?1",
                    params![partner],
                    |row| row.get(0),
                )
                .optional()
                .map_err(other)
            })
            .await?;
        doc.as_deref().map(decode).transpose()
    }

    pub(super) async fn get_expected_loans_taken_at(
        &self,
        partner: &PartnerId,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let partner = partner.to_string();
        let taken_at: Option<String> = self
            .read(move |tx| {
                tx.query_row(
                    "SELECT taken_at FROM expected_loans WHERE partner = ?1",
                    params![partner],
                    |row| row.get(0),
                )
                .optional()
                .map_err(other)
            })
            .await?;
        taken_at.as_deref().map(decode).transpose()
    }

    pub(super) async fn take_refresh_lock(
        &self,
        partner: &PartnerId,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let partner = partner.to_string();
        let holder = holder.to_owned();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        self.transaction(move |tx| {
            let now = now_ms();
            tx.execute(
                "DELETE FROM refresh_locks WHERE partner = ?1 AND expires_at <= ?2",
                params![partner, now],
            )
            .map_err(other)?;
            let taken = tx
                .execute(
                    "INSERT INTO refresh_locks (partner, holder, expires_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (partner) DO NOTHING",
                    params![partner, holder, now.saturating_add(ttl_ms)],
                )
                .map_err(other)?;
            Ok(taken == 1)
        })
        .await
    }

    pub(super) async fn give_back_refresh_lock(
        &self,
        partner: &PartnerId,
        holder: &str,
    ) -> Result<(), StoreError> {
        let partner = partner.to_string();
        let holder = holder.to_owned();
        self.transaction(move |tx| {
            tx.execute(
                "DELETE FROM refresh_locks WHERE partner = ?1 AND holder = ?2",
                params![partner, holder],
            )
            .map_err(other)?;
            Ok(())
        })
        .await
    }

    pub(super) async fn put_refresh_status(
        &self,
        partner: &PartnerId,
        status: &RefreshStatus,
    ) -> Result<(), StoreError> {
        let partner = partner.to_string();
        // `running` is never stored: it is the lock's, read live.
        let doc = encode(&RefreshStatus {
            running: false,
            ..status.clone()
        });
        self.transaction(move |tx| {
            tx.execute(
                "INSERT INTO refresh_status (partner, doc) VALUES (?1, ?2) \
                 ON CONFLICT (partner) DO UPDATE SET doc = excluded.doc",
                params![partner, doc],
            )
            .map_err(other)?;
            Ok(())
        })
        .await
    }

    pub(super) async fn get_refresh_status(
        &self,
        partner: &PartnerId,
    ) -> Result<RefreshStatus, StoreError> {
        let partner = partner.to_string();
        let (doc, running) = self
            .read(move |tx| {
                let doc: Option<String> = tx
                    .query_row(
                        "SELECT doc FROM refresh_status WHERE partner = ?1",
                        params![partner],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(other)?;
                let running: bool = tx
                    .query_row(
                        "SELECT COUNT(*) > 0 FROM refresh_locks WHERE partner = ?1 AND expires_at > ?2",
                        params![partner, now_ms()],
                        |row| row.get(0),
                    )
                    .map_err(other)?;
                Ok((doc, running))
            })
            .await?;
        let mut status: RefreshStatus = match doc {
            Some(doc) => decode(&doc)?,
            None => RefreshStatus::default(),
        };
        status.running = running;
        Ok(status)
    }
}
