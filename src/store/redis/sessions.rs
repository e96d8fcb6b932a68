//! Web sessions on Redis: `rg:session:<sha256 of the id>`, a hash with `doc` (the session,
//! JSON) and `expires_ms` (its absolute expiry), under a PX expiry that is the idle one.
//! Sessions are not a partner's, so the key has no hash tag: each script touches one key only,
//! which is all Redis Cluster asks.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::Script;

use super::{RedisStore, decode, encode};
use crate::store::{Sessions, StoreError, WebSession};

static TOUCH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("touch.lua")));

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl RedisStore {
    fn session_key(&self, id_hash: &str) -> String {
        format!("{}:session:{id_hash}", self.prefix)
    }
}

#[async_trait::async_trait]
impl Sessions for RedisStore {
    async fn create_session(
        &self,
        id_hash: &str,
        session: &WebSession,
        idle: Duration,
    ) -> Result<(), StoreError> {
        let key = self.session_key(id_hash);
        let doc = encode(session);
        let expires_ms = session.expires_at.timestamp_millis();
        let left = (session.expires_at - Utc::now()).num_milliseconds();
        let ttl = millis(idle).min(left.max(1));
        self.write(async |c| {
            redis::pipe()
                .atomic()
                .cmd("HSET")
                .arg(&key)
                .arg("doc")
                .arg(&doc)
                .arg("expires_ms")
                .arg(expires_ms)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(ttl)
                .ignore()
                .query_async::<()>(c)
                .await
        })
        .await
    }

    async fn session(
        &self,
        id_hash: &str,
        idle: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<WebSession>, StoreError> {
        let key = self.session_key(id_hash);
        let doc: Option<String> = self
            .write(async |c| {
                TOUCH
                    .key(&key)
                    .arg(now.timestamp_millis())
                    .arg(millis(idle))
                    .invoke_async(c)
                    .await
            })
            .await?;
        doc.as_deref().map(decode).transpose()
    }

    async fn end_session(&self, id_hash: &str) -> Result<(), StoreError> {
        let key = self.session_key(id_hash);
        self.write(async |c| redis::cmd("DEL").arg(&key).query_async::<i64>(c).await)
            .await
            .map(drop)
    }
}
