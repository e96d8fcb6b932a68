//! A period's reports, and Kiva's expected loans with the refresh lock, on Redis. Period keys
//! (written by the accept): `rg:{p}:period:<period>:reports`, the period's report ids;
//! `rg:{p}:periods`, the periods with reports. Expected loans, under the partner's hash tag:
//! - `rg:{p}:expected`: hash; `doc` the whole snapshot (JSON), `taken_at` its time (JSON).
//!   One HSET writes both, so a reader sees the old snapshot or the new one, never a mix,
//!   and `taken_at` can be read without the (possibly megabytes of) loans;
//! - `rg:{p}:refresh:lock`: the holder of the refresh lock, with a PX expiry;
//! - `rg:{p}:refresh:status`: the last recorded `RefreshStatus` (JSON).

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::Script;

use super::{RedisStore, decode, encode};
use crate::domain::{PartnerId, Period};
use crate::store::{Batch, ExpectedLoansSnapshot, Periods, RefreshStatus, Report, StoreError};

static UNLOCK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("unlock.lua")));

impl RedisStore {
    fn expected_key(&self, partner: &PartnerId) -> String {
        self.key(partner, "expected")
    }

    fn refresh_lock_key(&self, partner: &PartnerId) -> String {
        self.key(partner, "refresh:lock")
    }

    fn refresh_status_key(&self, partner: &PartnerId) -> String {
        self.key(partner, "refresh:status")
    }
}

#[async_trait::async_trait]
impl Periods for RedisStore {
    async fn period_reports(
        &self,
        partner: &PartnerId,
        period: Period,
        branch: Option<&str>,
    ) -> Result<Vec<(Report, Vec<Batch>)>, StoreError> {
        let index = self.key(partner, &format!("period:{period}:reports"));
        let ids: Vec<String> = self
            .with_connection(async |c| {
                redis::cmd("ZRANGE")
                    .arg(&index)
                    .arg(0)
                    .arg(-1)
                    .query_async(c)
                    .await
            })
            .await?;
        let reports: Vec<Report> = self
            .report_docs(partner, &ids)
            .await?
            .into_iter()
            .filter(|r| branch.is_none_or(|b| r.branch == b))
            .collect();
        let batches = self.batches_of_many(&reports).await?;
        Ok(reports.into_iter().zip(batches).collect())
    }

    async fn periods(&self, partner: &PartnerId) -> Result<Vec<Period>, StoreError> {
        let index = self.key(partner, "periods");
        let periods: Vec<String> = self
            .with_connection(async |c| {
                redis::cmd("ZRANGE")
                    .arg(&index)
                    .arg(0)
                    .arg(-1)
                    .arg("REV")
                    .query_async(c)
                    .await
            })
            .await?;
        Ok(periods
            .iter()
            .filter_map(|p| Period::parse(p).ok())
            .collect())
    }

    async fn replace_expected_loans(
        &self,
        snapshot: &ExpectedLoansSnapshot,
    ) -> Result<(), StoreError> {
        let key = self.expected_key(&snapshot.partner_id);
        let doc = encode(snapshot);
        let taken_at = encode(&snapshot.taken_at);
        self.write(async |c| {
            redis::cmd("HSET")
                .arg(&key)
                .arg("doc")
                .arg(&doc)
                .arg("taken_at")
                .arg(&taken_at)
                .query_async::<i64>(c)
                .await
        })
        .await
        .map(drop)
    }

    async fn expected_loans(
        &self,
        partner: &PartnerId,
    ) -> Result<Option<ExpectedLoansSnapshot>, StoreError> {
        let key = self.expected_key(partner);
        let doc: Option<String> = self
            .with_connection(async |c| redis::cmd("HGET").arg(&key).arg("doc").query_async(c).await)
            .await?;
        doc.as_deref().map(decode).transpose()
    }

    async fn expected_loans_taken_at(
        &self,
        partner: &PartnerId,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let key = self.expected_key(partner);
        let taken_at: Option<String> = self
            .with_connection(async |c| {
                redis::cmd("HGET")
                    .arg(&key)
                    .arg("taken_at")
                    .query_async(c)
                    .await
            })
            .await?;
        taken_at.as_deref().map(decode).transpose()
    }

    async fn lock_refresh(
        &self,
        partner: &PartnerId,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.refresh_lock_key(partner);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let reply: Option<String> = self
            .write(async |c| {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(holder)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(c)
                    .await
            })
            .await?;
        Ok(reply.is_some())
    }

    async fn unlock_refresh(&self, partner: &PartnerId, holder: &str) -> Result<(), StoreError> {
        let key = self.refresh_lock_key(partner);
        self.write(async |c| UNLOCK.key(&key).arg(holder).invoke_async::<i64>(c).await)
            .await
            .map(drop)
    }

    async fn record_refresh(
        &self,
        partner: &PartnerId,
        status: &RefreshStatus,
    ) -> Result<(), StoreError> {
        let key = self.refresh_status_key(partner);
        // `running` is never stored: it is the lock's, read live.
        let doc = encode(&RefreshStatus {
            running: false,
            ..status.clone()
        });
        self.write(async |c| {
            redis::cmd("SET")
                .arg(&key)
                .arg(&doc)
                .query_async::<String>(c)
                .await
        })
        .await
        .map(drop)
    }

    async fn refresh_status(&self, partner: &PartnerId) -> Result<RefreshStatus, StoreError> {
        let keys = [
            self.refresh_status_key(partner),
            self.refresh_lock_key(partner),
        ];
        // One MGET (both keys are in the partner's slot): the status and the lock as of one
        // moment.
        let (doc, lock): (Option<String>, Option<String>) = self
            .with_connection(async |c| redis::cmd("MGET").arg(&keys).query_async(c).await)
            .await?;
        let mut status: RefreshStatus = match doc {
            Some(doc) => decode(&doc)?,
            None => RefreshStatus::default(),
        };
        status.running = lock.is_some();
        Ok(status)
    }
}
