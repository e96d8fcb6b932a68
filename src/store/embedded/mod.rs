//! The embedded backend: one SQLite database in a directory, for a gateway that runs as a
//! single process on one server with no Redis to install. Every step that the Redis backend
//! does in one Lua script is one SQLite transaction here, with the same rules, so both pass
//! the same contract suite.
//!
//! Crash safety: WAL journal with `synchronous = FULL`, so a committed accept survives a
//! crash or power loss. Every write goes through one writer thread that commits whatever is
//! waiting in one transaction and one fsync (`writer`: group commit), and answers each caller
//! only after that commit; reads run on a second, read-only connection (WAL lets it read the
//! last commit while the writer writes), so a long read never holds up an accept. Only one process may open a directory: a second one would claim the
//! same queue entries without knowing of the first, so opening takes an exclusive lock on
//! `<dir>/lock` for the life of the store.

mod periods;
mod queue;
mod reports;
mod schema;
mod sessions;
mod summary;
mod writer;

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::store::{Batch, BatchDoc, BatchProgress, Report, StoreError};

pub struct EmbeddedStore {
    writer: writer::Writer,
    reader: Arc<Mutex<Connection>>,
    // Held for the life of the store: the lock is released when the file is closed.
    _lock: File,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn from_ms(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

fn other(e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(doc: &str) -> Result<T, StoreError> {
    serde_json::from_str(doc).map_err(|e| StoreError::Other(format!("unreadable record: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("store records always serialize")
}

fn name_of<T: serde::Serialize>(value: T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .expect("enums serialize as strings")
}

fn parse_name<T: serde::de::DeserializeOwned>(name: &str) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|e| StoreError::Other(format!("unknown state {name}: {e}")))
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`. Fails with a clear message when another
    /// process has it open.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            other(format!(
                "cannot create the store directory {}: {e}",
                dir.display()
            ))
        })?;
        let lock_path = dir.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| other(format!("cannot open {}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Other(format!(
                    "the embedded store {} is already in use by another gateway process; only one \
                     process may open it (stop the other one, or use Redis to run several)",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(other(format!("cannot lock {}: {e}", lock_path.display())));
            }
        }
        let path = dir.join("gateway.db");
        let conn = Connection::open(&path)
            .map_err(|e| other(format!("cannot open {}: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(other)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(other)?;
        schema::prepare(&conn).map_err(other)?;
        // Room for every statement the store runs, so that the accept's stay compiled.
        conn.set_prepared_statement_cache_capacity(128);
        let reader = Connection::open(&path)
            .map_err(|e| other(format!("cannot open {}: {e}", path.display())))?;
        // A read path that tried to write would fail its tests instead of writing behind the
        // writer's back.
        reader
            .pragma_update(None, "query_only", "ON")
            .map_err(other)?;
        Ok(Self {
            writer: writer::Writer::start(conn)?,
            reader: Arc::new(Mutex::new(reader)),
            _lock: lock,
        })
    }

    /// Runs `work` on the writer, inside its group's IMMEDIATE transaction: `Ok` once the
    /// group committed (on disk), and rolled back alone (to its savepoint) when it returns
    /// `Err`.
    async fn transaction<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (unit, answer) = writer::Job::unit(work);
        self.writer.submit(unit)?;
        answer
            .await
            .map_err(|_| other("the store's writer stopped before answering"))?
    }

    /// Runs read-only `work` in one read transaction (one consistent snapshot of the last
    /// commit) on the blocking pool.
    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = reader
                .lock()
                .map_err(|_| other("the store lock is poisoned"))?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Deferred)
                .map_err(other)?;
            let value = work(&tx)?;
            tx.commit().map_err(other)?;
            Ok(value)
        })
        .await
        .map_err(other)?
    }
}

/// `tx.execute` through the statement cache: the accept's statements run for every report,
/// on the one writer thread, and compiling them each time was a good part of its work.
fn execute(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<usize, StoreError> {
    tx.prepare_cached(sql)
        .and_then(|mut statement| statement.execute(params))
        .map_err(other)
}

fn report_row(tx: &Transaction<'_>, partner: &str, id: &str) -> Result<Option<Report>, StoreError> {
    tx.query_row(
        "SELECT doc, status, refused FROM reports WHERE partner = ?1 AND id = ?2",
        params![partner, id],
        |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get(2)?,
            ))
        },
    )
    .optional()
    .map_err(other)?
    .map(|(doc, status, refused)| with_status(&doc, &status, refused))
    .transpose()
}

fn with_status(doc: &str, status: &str, refused: i64) -> Result<Report, StoreError> {
    let mut report: Report = decode(doc)?;
    report.refused_by_kiva = refused.max(0) as usize;
    report.status = parse_name(status)?;
    Ok(report)
}

/// id, doc, state, next_attempt_at, result.
type BatchRow = (String, String, String, Option<i64>, Option<String>);

fn batches_of_report(tx: &Transaction<'_>, report: &Report) -> Result<Vec<Batch>, StoreError> {
    let mut stmt = tx
        .prepare_cached(
            "SELECT id, doc, state, next_attempt_at, result FROM batches
             WHERE partner = ?1 AND report_id = ?2",
        )
        .map_err(other)?;
    let rows: Vec<BatchRow> = stmt
        .query_map(
            params![report.partner_id.as_str(), report.id.to_string()],
            |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            },
        )
        .map_err(other)?
        .collect::<Result<_, _>>()
        .map_err(other)?;
    let mut batches = Vec::with_capacity(rows.len());
    for (id, doc, state, next, result) in rows {
        let list = |table: &str| -> Result<Vec<String>, StoreError> {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT doc FROM {table} WHERE batch_id = ?1 ORDER BY seq"
                ))
                .map_err(other)?;
            stmt.query_map(params![id], |row| row.get(0))
                .map_err(other)?
                .collect::<Result<_, _>>()
                .map_err(other)
        };
        let doc: BatchDoc = decode(&doc)?;
        let progress = BatchProgress {
            state: parse_name(&state)?,
            next_attempt_at: next.and_then(from_ms),
            result: result.map(|r| decode(&r)).transpose()?,
            attempts: list("attempts")?
                .iter()
                .map(|a| decode(a))
                .collect::<Result<_, _>>()?,
            operator_actions: list("actions")?
                .iter()
                .map(|a| decode(a))
                .collect::<Result<_, _>>()?,
        };
        batches.push(Batch::assemble(doc, progress));
    }
    batches.sort_by_key(|b| b.number);
    Ok(batches)
}
