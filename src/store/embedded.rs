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

mod check;
mod expected;
mod sessions;
mod summary;
mod writer;

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    AttemptEnd, Batch, BatchDoc, BatchProgress, BatchResult, BatchState, BeginAttempt,
    ClaimedBatch, IdempotencyClaim, IdempotencyScope, IdempotentAccept, OperatorActionKind,
    OperatorOutcome, RecordedResponse, Report, ReportPage, ReportQuery, ReportStatus, Reports,
    StoreError, report_of_batch,
};
use super::{
    BatchVersion, ExpectedLoansSnapshot, Periods, Queue, RefreshStatus, Sessions, WebSession,
};
use crate::domain::{PartnerId, Period};

/// Retries promoted per call at most, as in the Redis backend.
const PROMOTE_LIMIT: i64 = 500;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS reports (
    id TEXT PRIMARY KEY,
    partner TEXT NOT NULL,
    branch TEXT NOT NULL,
    period TEXT,
    doc TEXT NOT NULL,
    status TEXT NOT NULL,
    -- Repayments Kiva refused in delivered batches.
    refused INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS reports_by_partner ON reports (partner, id);
CREATE INDEX IF NOT EXISTS reports_by_branch ON reports (partner, branch, id);
CREATE INDEX IF NOT EXISTS reports_by_period ON reports (partner, period, id);
-- One loan, one report per period: the report (and position) that has each loan of a period.
CREATE TABLE IF NOT EXISTS period_loans (
    partner TEXT NOT NULL,
    period TEXT NOT NULL,
    loan TEXT NOT NULL,
    report_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (partner, period, loan)
);
CREATE INDEX IF NOT EXISTS period_loans_by_report ON period_loans (report_id);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    partner TEXT NOT NULL,
    report_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    queued_at INTEGER NOT NULL,
    next_attempt_at INTEGER,
    result TEXT,
    -- As in the Redis backend: `attempt` when the current retry budget began, and the queue
    -- entry whose worker wrote `sending` (the fence FINISH must match).
    budget_from INTEGER NOT NULL DEFAULT 0,
    fence TEXT
);
CREATE INDEX IF NOT EXISTS batches_by_report ON batches (report_id);
-- The queue gauges of /metrics, read at every scrape: the count of each state kept by the
-- triggers below in the same transaction as every write of `batches` (COUNT(*) would read
-- every batch not delivered, 0.9 s of CPU per scrape at 1.4 million in the bench), and the
-- oldest of each state found in this index.
DROP INDEX IF EXISTS batches_by_state;
CREATE INDEX IF NOT EXISTS batches_by_state_queued ON batches (partner, state, queued_at);
CREATE TABLE IF NOT EXISTS batch_counts (
    partner TEXT NOT NULL,
    state TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (partner, state)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS batch_counts_insert AFTER INSERT ON batches BEGIN
    INSERT INTO batch_counts (partner, state, n) VALUES (new.partner, new.state, 1)
        ON CONFLICT (partner, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS batch_counts_update AFTER UPDATE OF state, partner ON batches
WHEN old.state IS NOT new.state OR old.partner IS NOT new.partner BEGIN
    UPDATE batch_counts SET n = n - 1 WHERE partner = old.partner AND state = old.state;
    INSERT INTO batch_counts (partner, state, n) VALUES (new.partner, new.state, 1)
        ON CONFLICT (partner, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS batch_counts_delete AFTER DELETE ON batches BEGIN
    UPDATE batch_counts SET n = n - 1 WHERE partner = old.partner AND state = old.state;
END;
CREATE TABLE IF NOT EXISTS attempts (seq INTEGER PRIMARY KEY AUTOINCREMENT, batch_id TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS attempts_by_batch ON attempts (batch_id, seq);
CREATE TABLE IF NOT EXISTS actions (seq INTEGER PRIMARY KEY AUTOINCREMENT, batch_id TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS actions_by_batch ON actions (batch_id, seq);
-- The delivery queue: an entry per batch to send. `consumer` and `claimed_at` are set while
-- a worker holds it (Redis: the consumer group's pending list); it is deleted when settled.
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    partner TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    consumer TEXT,
    claimed_at INTEGER
);
CREATE INDEX IF NOT EXISTS queue_by_partner ON queue (partner, consumer, seq);
CREATE TABLE IF NOT EXISTS retries (batch_id TEXT PRIMARY KEY, partner TEXT NOT NULL, due INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS retries_by_due ON retries (partner, due);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    token TEXT NOT NULL,
    record TEXT,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_by_expiry ON idempotency (expires_at);
"#;

/// Columns added after the first release: a database made by an older gateway gets them at
/// start (`CREATE TABLE IF NOT EXISTS` leaves an existing table as it is).
const ADDED_COLUMNS: [(&str, &str, &str); 4] = [
    ("batches", "budget_from", "INTEGER NOT NULL DEFAULT 0"),
    ("batches", "fence", "TEXT"),
    // When the current attempt's `sending` was written (ms), for the record of an attempt
    // whose outcome never came.
    ("batches", "sending_at", "INTEGER"),
    ("reports", "refused", "INTEGER NOT NULL DEFAULT 0"),
];

/// `PRAGMA user_version` from which `batch_counts` is kept by its triggers; a database made
/// before has it counted once, at the first start.
const COUNTED_VERSION: i64 = 1;

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(other)?;
    if version < COUNTED_VERSION {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             DELETE FROM batch_counts;
             INSERT INTO batch_counts (partner, state, n)
                 SELECT partner, state, COUNT(*) FROM batches GROUP BY partner, state;
             PRAGMA user_version = {COUNTED_VERSION};
             COMMIT;"
        ))
        .map_err(other)?;
    }
    for (table, column, declaration) in ADDED_COLUMNS {
        let present: bool = conn
            .query_row(
                &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
                params![column],
                |row| row.get(0),
            )
            .map_err(other)?;
        if !present {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {declaration}"
            ))
            .map_err(other)?;
        }
    }
    Ok(())
}

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
        conn.execute_batch(SCHEMA).map_err(other)?;
        conn.execute_batch(expected::SCHEMA).map_err(other)?;
        conn.execute_batch(sessions::SCHEMA).map_err(other)?;
        migrate(&conn)?;
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

fn idempotency_key(scope: &IdempotencyScope) -> String {
    let digest = hex::encode(Sha256::digest(scope.key.as_bytes()));
    format!("{}:{}:{digest}", scope.partner_id, scope.api_key_name)
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

/// The report's status from its batches' states: the same rule as the Redis `rollup`.
fn rollup(tx: &Transaction<'_>, report_id: &str) -> Result<(), StoreError> {
    let mut stmt = tx
        .prepare_cached("SELECT state FROM batches WHERE report_id = ?1")
        .map_err(other)?;
    let states: Vec<String> = stmt
        .query_map(params![report_id], |row| row.get(0))
        .map_err(other)?
        .collect::<Result<_, _>>()
        .map_err(other)?;
    let count = |s: &str| states.iter().filter(|x| *x == s).count();
    let refused: i64 = tx
        .query_row(
            "SELECT refused FROM reports WHERE id = ?1",
            params![report_id],
            |row| row.get(0),
        )
        .map_err(other)?;
    let status = if ["held", "rejected", "failed"].iter().any(|s| count(s) > 0) {
        ReportStatus::NeedsAttention
    } else if count("delivered") == states.len() && refused > 0 {
        ReportStatus::DeliveredWithProblems
    } else if count("delivered") == states.len() {
        ReportStatus::Delivered
    } else if count("queued") == states.len() {
        ReportStatus::Queued
    } else {
        ReportStatus::Delivering
    };
    tx.execute(
        "UPDATE reports SET status = ?1 WHERE id = ?2",
        params![name_of(status), report_id],
    )
    .map_err(other)?;
    Ok(())
}

fn settle(tx: &Transaction<'_>, entry: &str) -> Result<(), StoreError> {
    tx.execute("DELETE FROM queue WHERE seq = ?1", params![entry])
        .map_err(other)?;
    Ok(())
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

#[async_trait::async_trait]
impl Reports for EmbeddedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.transaction(|tx| tx.query_row("SELECT 1", [], |_| Ok(())).map_err(other))
            .await
    }

    async fn claim_idempotency(
        &self,
        scope: &IdempotencyScope,
        ttl: Duration,
    ) -> Result<IdempotencyClaim, StoreError> {
        let key = idempotency_key(scope);
        let token = Uuid::new_v4().to_string();
        let expires_at = now_ms() + ttl.as_millis() as i64;
        self.transaction(move |tx| {
            let now = now_ms();
            tx.execute(
                "DELETE FROM idempotency WHERE key = ?1 AND expires_at <= ?2",
                params![key, now],
            )
            .map_err(other)?;
            let row: Option<(String, Option<String>)> = tx
                .query_row(
                    "SELECT state, record FROM idempotency WHERE key = ?1",
                    params![key],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(other)?;
            match row {
                None => {
                    tx.execute(
                        "INSERT INTO idempotency (key, state, token, expires_at) VALUES (?1, 'in_progress', ?2, ?3)",
                        params![key, token, expires_at],
                    )
                    .map_err(other)?;
                    Ok(IdempotencyClaim::Claimed { token })
                }
                Some((state, _)) if state == "in_progress" => Ok(IdempotencyClaim::InProgress),
                Some((_, record)) => {
                    let record: RecordedResponse = decode(record.as_deref().unwrap_or(""))?;
                    Ok(IdempotencyClaim::Completed(record))
                }
            }
        })
        .await
    }

    async fn release_idempotency(
        &self,
        scope: &IdempotencyScope,
        token: &str,
    ) -> Result<(), StoreError> {
        let key = idempotency_key(scope);
        let token = token.to_owned();
        self.transaction(move |tx| {
            tx.execute(
                "DELETE FROM idempotency WHERE key = ?1 AND state = 'in_progress' AND token = ?2",
                params![key, token],
            )
            .map_err(other)?;
            Ok(())
        })
        .await
    }

    async fn accept(
        &self,
        report: &Report,
        batches: &[BatchDoc],
        idempotency: Option<&IdempotentAccept>,
        idempotency_ttl: Duration,
    ) -> Result<(), StoreError> {
        // Everything that needs no database is done here, on the caller's task, so that the
        // one writer thread spends its time in SQLite only.
        let doc = encode(report);
        let loans: Vec<String> = batches
            .iter()
            .flat_map(|b| &b.repayments)
            .map(|r| super::loan_key(report.column_format, r))
            .collect();
        let batches: Vec<(String, String)> =
            batches.iter().map(|b| (b.id.clone(), encode(b))).collect();
        let report = report.clone();
        let idempotency = idempotency.map(|i| {
            (
                idempotency_key(&i.scope),
                i.token.clone(),
                encode(&i.response),
            )
        });
        self.transaction(move |tx| {
            let now = now_ms();
            if let Some((key, token, _)) = &idempotency {
                let ours: Option<i64> = tx
                    .query_row(
                        "SELECT 1 FROM idempotency WHERE key = ?1 AND state = 'in_progress' AND token = ?2 AND expires_at > ?3",
                        params![key, token, now],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(other)?;
                if ours.is_none() {
                    return Err(StoreError::ClaimLost);
                }
            }
            let partner = report.partner_id.as_str();
            let id = report.id.to_string();
            let period = report.period.map(|p| p.to_string()).unwrap_or_default();
            // Checked inside the same IMMEDIATE transaction that writes the report: two
            // reports with one loan can't both get in. One statement per loan checks and
            // claims it (`OR IGNORE` leaves a loan another report has, and says so by changing
            // no row); only those are looked up, to name the earlier report. A refusal undoes
            // the loans claimed before it: the writer rolls a failed unit back to its own
            // savepoint (see `writer`).
            if report.correction && !report.corrects_any_branch {
                // A branch corrects only loans its own branch reported: the branch of the
                // report that has the loan now (a report no longer kept counts as another's;
                // an admin key can correct it).
                let mut owner = tx
                    .prepare_cached(
                        "SELECT r.branch FROM period_loans l LEFT JOIN reports r ON r.id = l.report_id WHERE l.partner = ?1 AND l.period = ?2 AND l.loan = ?3",
                    )
                    .map_err(other)?;
                let mut foreign = Vec::new();
                for (position, loan) in loans.iter().enumerate() {
                    let found: Option<Option<String>> = owner
                        .query_row(params![partner, period, loan], |row| row.get(0))
                        .optional()
                        .map_err(other)?;
                    if let Some(branch) = found
                        && branch.as_deref() != Some(report.branch.as_str())
                    {
                        foreign.push(position);
                    }
                }
                if !foreign.is_empty() {
                    return Err(StoreError::OtherBranchLoans(foreign));
                }
            }
            if report.correction {
                let mut remember = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO period_loans (partner, period, loan, report_id, position) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .map_err(other)?;
                for (position, loan) in loans.iter().enumerate() {
                    remember
                        .execute(params![partner, period, loan, id, position as i64])
                        .map_err(other)?;
                }
            } else {
                let mut claim = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO period_loans (partner, period, loan, report_id, position) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .map_err(other)?;
                let mut earlier_of = tx
                    .prepare_cached(
                        "SELECT l.report_id, l.position, r.branch FROM period_loans l LEFT JOIN reports r ON r.id = l.report_id WHERE l.partner = ?1 AND l.period = ?2 AND l.loan = ?3",
                    )
                    .map_err(other)?;
                let mut earlier = Vec::new();
                for (position, loan) in loans.iter().enumerate() {
                    let claimed = claim
                        .execute(params![partner, period, loan, id, position as i64])
                        .map_err(other)?;
                    if claimed == 1 {
                        continue;
                    }
                    let (report_id, earlier_position, branch): (String, i64, Option<String>) = earlier_of
                        .query_row(params![partner, period, loan], |row| {
                            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                        })
                        .map_err(other)?;
                    // Intake lets no loan into a report twice; were one there, it is not an
                    // earlier report's.
                    if report_id != id {
                        earlier.push(super::EarlierReport {
                            position,
                            report_id: Uuid::parse_str(&report_id).map_err(other)?,
                            earlier_position: Some(earlier_position as usize),
                            branch,
                        });
                    }
                }
                if !earlier.is_empty() {
                    return Err(StoreError::AlreadyReported(earlier));
                }
            }
            execute(
                tx,
                "INSERT INTO reports (id, partner, branch, period, doc, status) VALUES (?1, ?2, ?3, ?4, ?5, 'queued')",
                params![id, partner, report.branch, report.period.map(|p| p.to_string()), doc],
            )?;
            let queued_at = report.created_at.timestamp_millis();
            for (batch_id, batch_doc) in &batches {
                execute(
                    tx,
                    "INSERT INTO batches (id, partner, report_id, doc, state, attempt, queued_at) VALUES (?1, ?2, ?3, ?4, 'queued', 0, ?5)",
                    params![batch_id, partner, id, batch_doc, queued_at],
                )?;
                execute(
                    tx,
                    "INSERT INTO queue (partner, batch_id) VALUES (?1, ?2)",
                    params![partner, batch_id],
                )?;
            }
            if let Some((key, _, record)) = &idempotency {
                execute(
                    tx,
                    "UPDATE idempotency SET state = 'done', record = ?2, expires_at = ?3 WHERE key = ?1",
                    params![key, record, now + idempotency_ttl.as_millis() as i64],
                )?;
            }
            // Expired keys go here rather than in a background task: accepts are frequent
            // enough, and the index makes it cheap.
            execute(
                tx,
                "DELETE FROM idempotency WHERE expires_at <= ?1",
                params![now],
            )?;
            Ok(())
        })
        .await
    }

    async fn check_accept(&self, report: &Report, batches: &[BatchDoc]) -> Result<(), StoreError> {
        self.check_period_loans(report, batches).await
    }

    async fn report(
        &self,
        partner: &PartnerId,
        id: Uuid,
    ) -> Result<Option<(Report, Vec<Batch>)>, StoreError> {
        let partner = partner.to_string();
        self.read(move |tx| {
            let Some(report) = report_row(tx, &partner, &id.to_string())? else {
                return Ok(None);
            };
            let batches = batches_of_report(tx, &report)?;
            Ok(Some((report, batches)))
        })
        .await
    }

    async fn reports(
        &self,
        partner: &PartnerId,
        query: &ReportQuery,
    ) -> Result<ReportPage, StoreError> {
        let partner = partner.to_string();
        let query = query.clone();
        self.read(move |tx| {
            let limit = query.limit.max(1);
            let mut stmt = tx
                .prepare_cached(
                    "SELECT doc, status, refused FROM reports
                     WHERE partner = ?1
                       AND (?2 IS NULL OR branch = ?2)
                       AND (?3 IS NULL OR status = ?3)
                       AND (?4 IS NULL OR period = ?4)
                       AND (?5 IS NULL OR id < ?5)
                       AND (?7 = 0 OR refused > 0)
                     ORDER BY id DESC LIMIT ?6",
                )
                .map_err(other)?;
            let rows: Vec<(String, String, i64)> = stmt
                .query_map(
                    params![
                        partner,
                        query.branch,
                        query.status.map(name_of),
                        query.period.map(|p| p.to_string()),
                        query.after.map(|a| a.to_string()),
                        limit as i64,
                        query.refused_only
                    ],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .map_err(other)?
                .collect::<Result<_, _>>()
                .map_err(other)?;
            let reports: Vec<Report> = rows
                .iter()
                .map(|(doc, status, refused)| with_status(doc, status, *refused))
                .collect::<Result<_, _>>()?;
            // As with Redis: a full page carries a cursor; the next page may be empty.
            let next = (reports.len() == limit)
                .then(|| reports.last().map(|r| r.id))
                .flatten();
            Ok(ReportPage { reports, next })
        })
        .await
    }

    async fn durability(&self) -> Result<super::Durability, StoreError> {
        Ok(super::Durability {
            backend: "embedded".into(),
            level: "SQLite WAL, synchronous=FULL: on disk before each 202 and each send".into(),
            may_lose_acknowledged_writes: false,
            survives: vec!["process crash".into(), "host crash".into()],
            replica_acks: 0,
            replicas: None,
        })
    }
}

#[async_trait::async_trait]
impl Queue for EmbeddedStore {
    async fn prepare_delivery(&self, _partner: &PartnerId) -> Result<(), StoreError> {
        Ok(())
    }

    async fn promote_due_retries(
        &self,
        partner: &PartnerId,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let partner = partner.to_string();
        self.transaction(move |tx| {
            let mut stmt = tx
                .prepare_cached("SELECT batch_id FROM retries WHERE partner = ?1 AND due <= ?2 ORDER BY due LIMIT ?3")
                .map_err(other)?;
            let due: Vec<String> = stmt
                .query_map(params![partner, now.timestamp_millis(), PROMOTE_LIMIT], |row| row.get(0))
                .map_err(other)?
                .collect::<Result<_, _>>()
                .map_err(other)?;
            for batch in &due {
                tx.execute("DELETE FROM retries WHERE batch_id = ?1", params![batch]).map_err(other)?;
                tx.execute("INSERT INTO queue (partner, batch_id) VALUES (?1, ?2)", params![partner, batch])
                    .map_err(other)?;
            }
            Ok(due.len())
        })
        .await
    }

    async fn claim_batches(
        &self,
        partner: &PartnerId,
        consumer: &str,
        count: usize,
        reclaim_after: Duration,
    ) -> Result<Vec<ClaimedBatch>, StoreError> {
        let partner_id = partner.clone();
        let consumer = consumer.to_owned();
        self.transaction(move |tx| {
            let now = now_ms();
            let partner = partner_id.as_str();
            let mut claimed = Vec::new();
            // Entries another consumer has held too long first (Redis: XAUTOCLAIM), then new
            // ones (XREADGROUP).
            let queries = [
                ("SELECT seq, batch_id FROM queue WHERE partner = ?1 AND consumer IS NOT NULL AND claimed_at <= ?2 ORDER BY seq LIMIT ?3", true),
                ("SELECT seq, batch_id FROM queue WHERE partner = ?1 AND consumer IS NULL AND ?2 = ?2 ORDER BY seq LIMIT ?3", false),
            ];
            for (sql, reclaimed) in queries {
                let room = count.saturating_sub(claimed.len());
                if room == 0 {
                    break;
                }
                let mut stmt = tx.prepare_cached(sql).map_err(other)?;
                let rows: Vec<(i64, String)> = stmt
                    .query_map(params![partner, now - reclaim_after.as_millis() as i64, room as i64], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                    .map_err(other)?
                    .collect::<Result<_, _>>()
                    .map_err(other)?;
                for (seq, batch_id) in rows {
                    tx.execute(
                        "UPDATE queue SET consumer = ?1, claimed_at = ?2 WHERE seq = ?3",
                        params![consumer, now, seq],
                    )
                    .map_err(other)?;
                    claimed.push(ClaimedBatch {
                        partner_id: partner_id.clone(),
                        entry_id: seq.to_string(),
                        batch_id,
                        reclaimed,
                    });
                }
            }
            Ok(claimed)
        })
        .await
    }

    async fn begin_attempt(
        &self,
        claimed: &ClaimedBatch,
        now: DateTime<Utc>,
    ) -> Result<BeginAttempt, StoreError> {
        let claimed = claimed.clone();
        self.transaction(move |tx| {
            let row: Option<(String, String, i64, Option<String>)> = tx
                .query_row(
                    "SELECT state, report_id, queued_at, fence FROM batches WHERE partner = ?1 AND id = ?2",
                    params![claimed.partner_id.as_str(), claimed.batch_id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                )
                .optional()
                .map_err(other)?;
            let Some((state, report_id, queued_at, fence)) = row else {
                tracing::error!(batch = %claimed.batch_id, "queued batch is missing; dropping the entry");
                settle(tx, &claimed.entry_id)?;
                return Ok(BeginAttempt::Skip(BatchState::Failed));
            };
            match state.as_str() {
                "queued" | "retry_wait" => {
                    tx.execute(
                        "UPDATE batches SET attempt = attempt + 1, state = 'sending', next_attempt_at = NULL, fence = ?2, sending_at = ?3 WHERE id = ?1",
                        params![claimed.batch_id, claimed.entry_id, now.timestamp_millis()],
                    )
                    .map_err(other)?;
                    rollup(tx, &report_id)?;
                    let (attempt, budget_from, doc): (u32, u32, String) = tx
                        .query_row(
                            "SELECT attempt, budget_from, doc FROM batches WHERE id = ?1",
                            params![claimed.batch_id],
                            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                        )
                        .map_err(other)?;
                    let report = report_row(tx, claimed.partner_id.as_str(), &report_id)?
                        .ok_or_else(|| other("batch without its report"))?;
                    Ok(BeginAttempt::Send {
                        attempt,
                        attempts_in_budget: attempt - budget_from.min(attempt.saturating_sub(1)),
                        batch: decode(&doc)?,
                        column_format: report.column_format,
                        queued_at: from_ms(queued_at).unwrap_or(report.created_at),
                    })
                }
                "sending" if fence.as_deref().is_none_or(|f| f == claimed.entry_id) => {
                    // This very entry was begun by a worker that stopped before settling it:
                    // Kiva may have the upload, and a second one would be counted twice.
                    settle(tx, &claimed.entry_id)?;
                    // The attempt's own record never came: keep one that says when it began.
                    let (attempt, sending_at): (u32, Option<i64>) = tx
                        .query_row(
                            "SELECT attempt, sending_at FROM batches WHERE id = ?1",
                            params![claimed.batch_id],
                            |row| Ok((row.get(0)?, row.get(1)?)),
                        )
                        .map_err(other)?;
                    let began = sending_at.and_then(from_ms).unwrap_or(now);
                    tx.execute(
                        "INSERT INTO attempts (batch_id, doc) VALUES (?1, ?2)",
                        params![
                            claimed.batch_id,
                            encode(&super::Attempt::unrecorded(attempt, began))
                        ],
                    )
                    .map_err(other)?;
                    let held = BatchResult::held_after_worker_stopped();
                    tx.execute(
                        "UPDATE batches SET state = 'held', result = ?2, fence = NULL WHERE id = ?1",
                        params![claimed.batch_id, encode(&held)],
                    )
                    .map_err(other)?;
                    rollup(tx, &report_id)?;
                    Ok(BeginAttempt::Held)
                }
                settled => {
                    settle(tx, &claimed.entry_id)?;
                    Ok(BeginAttempt::Skip(parse_name(settled)?))
                }
            }
        })
        .await
    }

    async fn finish_attempt(
        &self,
        claimed: &ClaimedBatch,
        attempt: u32,
        end: &AttemptEnd,
    ) -> Result<(), StoreError> {
        let claimed = claimed.clone();
        let end = end.clone();
        self.transaction(move |tx| {
            settle(tx, &claimed.entry_id)?;
            let recorded: Option<(i64, String)> = tx
                .query_row(
                    "SELECT seq, doc FROM attempts WHERE batch_id = ?1 AND json_extract(doc, '$.number') = ?2",
                    params![claimed.batch_id, attempt],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(other)?;
            match recorded {
                // The take-over's stand-in for this attempt: the real record replaces it.
                Some((seq, doc)) if super::Attempt::is_unrecorded(&doc) => {
                    tx.execute(
                        "UPDATE attempts SET doc = ?2 WHERE seq = ?1",
                        params![seq, encode(&end.attempt)],
                    )
                    .map_err(other)?;
                }
                // A repeat of a FINISH whose answer was lost: all of it is written already.
                Some(_) => return Ok(()),
                // The attempt happened (Kiva may have been called), so it is kept even when
                // stale.
                None => {
                    tx.execute(
                        "INSERT INTO attempts (batch_id, doc) VALUES (?1, ?2)",
                        params![claimed.batch_id, encode(&end.attempt)],
                    )
                    .map_err(other)?;
                }
            }
            let row: Option<(String, Option<String>, String)> = tx
                .query_row(
                    "SELECT state, fence, report_id FROM batches WHERE partner = ?1 AND id = ?2",
                    params![claimed.partner_id.as_str(), claimed.batch_id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()
                .map_err(other)?;
            let Some((state, fence, report_id)) = row else {
                return Err(other(format!("batch {} is gone", claimed.batch_id)));
            };
            if state != "sending" || fence.as_deref() != Some(claimed.entry_id.as_str()) {
                // Taken over and held, or decided by an operator, while this attempt was
                // out: the newer decision stands.
                return Ok(());
            }
            let due = end.retry_at.map(|t| t.timestamp_millis());
            tx.execute(
                "UPDATE batches SET state = ?2, result = ?3, next_attempt_at = ?4, fence = NULL WHERE id = ?1",
                params![
                    claimed.batch_id,
                    name_of(end.state),
                    encode(&end.result),
                    due
                ],
            )
            .map_err(other)?;
            if end.state == BatchState::Delivered && end.refused_by_kiva > 0 {
                tx.execute(
                    "UPDATE reports SET refused = refused + ?2 WHERE id = ?1",
                    params![report_id, end.refused_by_kiva as i64],
                )
                .map_err(other)?;
            }
            if let (BatchState::RetryWait, Some(due)) = (end.state, due) {
                tx.execute(
                    "INSERT OR REPLACE INTO retries (batch_id, partner, due) VALUES (?1, ?2, ?3)",
                    params![claimed.batch_id, claimed.partner_id.as_str(), due],
                )
                .map_err(other)?;
            }
            rollup(tx, &report_id)
        })
        .await
    }

    async fn queue_summary(&self, partner: &PartnerId) -> Result<super::QueueSummary, StoreError> {
        self.read_queue_summary(partner).await
    }

    async fn batch(
        &self,
        partner: &PartnerId,
        batch_id: &str,
    ) -> Result<Option<(Batch, String)>, StoreError> {
        let partner = partner.to_string();
        let batch_id = batch_id.to_owned();
        self.read(move |tx| one_batch(tx, &partner, &batch_id))
            .await
    }

    async fn operate_batch(
        &self,
        partner: &PartnerId,
        batch_id: &str,
        command: &super::OperatorCommand,
    ) -> Result<OperatorOutcome, StoreError> {
        let partner = partner.to_string();
        let batch_id = batch_id.to_owned();
        let command = command.clone();
        let kind = command.action;
        self.transaction(move |tx| {
            let row: Option<(String, String)> = tx
                .query_row(
                    "SELECT state, report_id FROM batches WHERE partner = ?1 AND id = ?2",
                    params![partner, batch_id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(other)?;
            let Some((state, report_id)) = row else {
                return Ok(OperatorOutcome::NotFound);
            };
            let from: BatchState = parse_name(&state)?;
            if let Some(expected) = command.expected {
                let count = |table: &str| -> Result<usize, StoreError> {
                    tx.query_row(
                        &format!("SELECT COUNT(*) FROM {table} WHERE batch_id = ?1"),
                        params![batch_id],
                        |row| row.get::<_, i64>(0),
                    )
                    .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                    .map_err(other)
                };
                let found = BatchVersion {
                    state: from,
                    attempts: count("attempts")?,
                    actions: count("actions")?,
                };
                if found != expected {
                    return Ok(OperatorOutcome::Changed(found));
                }
            }
            if !kind.allowed_from(from) {
                return Ok(OperatorOutcome::Conflict(from));
            }
            let action = super::OperatorAction {
                action: kind,
                by: command.by.clone(),
                at: command.at,
                upload_id: command.upload_id.clone(),
                note: command.note.clone(),
                from_state: from,
            };
            let now = command.at;
            tx.execute(
                "INSERT INTO actions (batch_id, doc) VALUES (?1, ?2)",
                params![batch_id, encode(&action)],
            )
            .map_err(other)?;
            match kind {
                OperatorActionKind::Resend => {
                    // A fresh retry budget: attempts count again from here (history kept).
                    tx.execute(
                        "UPDATE batches SET state = 'queued', queued_at = ?2, next_attempt_at = NULL, result = NULL, fence = NULL, budget_from = attempt WHERE id = ?1",
                        params![batch_id, now.timestamp_millis()],
                    )
                    .map_err(other)?;
                    tx.execute("DELETE FROM retries WHERE batch_id = ?1", params![batch_id]).map_err(other)?;
                    tx.execute("INSERT INTO queue (partner, batch_id) VALUES (?1, ?2)", params![partner, batch_id])
                        .map_err(other)?;
                }
                OperatorActionKind::MarkDelivered => {
                    let result = BatchResult::marked_delivered(&command);
                    tx.execute(
                        "UPDATE batches SET state = 'delivered', result = ?2, fence = NULL WHERE id = ?1",
                        params![batch_id, encode(&result)],
                    )
                    .map_err(other)?;
                }
            }
            rollup(tx, &report_id)?;
            Ok(match one_batch(tx, &partner, &batch_id)? {
                Some((batch, _)) => OperatorOutcome::Done(Box::new(batch)),
                None => OperatorOutcome::NotFound,
            })
        })
        .await
    }

    async fn release_attempt(&self, claimed: &ClaimedBatch) -> Result<(), StoreError> {
        let claimed = claimed.clone();
        self.transaction(move |tx| {
            let pending = tx
                .execute("DELETE FROM queue WHERE seq = ?1", params![claimed.entry_id])
                .map_err(other)?
                == 1;
            let row: Option<(String, Option<String>, String)> = tx
                .query_row(
                    "SELECT state, fence, report_id FROM batches WHERE partner = ?1 AND id = ?2",
                    params![claimed.partner_id.as_str(), claimed.batch_id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()
                .map_err(other)?;
            let Some((state, fence, report_id)) = row else {
                return Ok(());
            };
            let ours = state == "sending" && fence.as_deref() == Some(claimed.entry_id.as_str());
            if ours {
                // The attempt BEGIN counted never happened.
                tx.execute(
                    "UPDATE batches SET state = 'queued', attempt = attempt - 1, fence = NULL WHERE id = ?1",
                    params![claimed.batch_id],
                )
                .map_err(other)?;
                rollup(tx, &report_id)?;
            }
            if ours || (pending && (state == "queued" || state == "retry_wait")) {
                tx.execute(
                    "INSERT INTO queue (partner, batch_id) VALUES (?1, ?2)",
                    params![claimed.partner_id.as_str(), claimed.batch_id],
                )
                .map_err(other)?;
            }
            Ok(())
        })
        .await
    }

    async fn purge_settled(
        &self,
        partner: &PartnerId,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let partner = partner.to_string();
        // Ids are UUIDv7: every report created before `before` sorts below this one.
        let floor = super::oldest_id_at(before).to_string();
        self.transaction(move |tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT id FROM reports WHERE partner = ?1 AND id < ?2
                       AND status IN ('delivered', 'delivered_with_problems')
                     ORDER BY id LIMIT ?3",
                )
                .map_err(other)?;
            let ids: Vec<String> = stmt
                .query_map(params![partner, floor, limit as i64], |row| row.get(0))
                .map_err(other)?
                .collect::<Result<_, _>>()
                .map_err(other)?;
            for id in &ids {
                for sql in [
                    "DELETE FROM attempts WHERE batch_id IN (SELECT id FROM batches WHERE report_id = ?1)",
                    "DELETE FROM actions WHERE batch_id IN (SELECT id FROM batches WHERE report_id = ?1)",
                    "DELETE FROM batches WHERE report_id = ?1",
                    "DELETE FROM period_loans WHERE report_id = ?1",
                    "DELETE FROM reports WHERE id = ?1",
                ] {
                    tx.execute(sql, params![id]).map_err(other)?;
                }
            }
            Ok(ids.len())
        })
        .await
    }

    async fn queued_batches(&self, partner: &PartnerId) -> Result<Vec<String>, StoreError> {
        let partner = partner.to_string();
        self.read(move |tx| {
            let mut stmt = tx
                .prepare_cached("SELECT batch_id FROM queue WHERE partner = ?1 ORDER BY seq")
                .map_err(other)?;
            stmt.query_map(params![partner], |row| row.get(0))
                .map_err(other)?
                .collect::<Result<_, _>>()
                .map_err(other)
        })
        .await
    }
}

#[async_trait::async_trait]
impl Periods for EmbeddedStore {
    async fn period_reports(
        &self,
        partner: &PartnerId,
        period: Period,
        branch: Option<&str>,
    ) -> Result<Vec<(Report, Vec<Batch>)>, StoreError> {
        let partner = partner.to_string();
        let branch = branch.map(str::to_owned);
        self.read(move |tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT doc, status, refused FROM reports WHERE partner = ?1 AND period = ?2
                       AND (?3 IS NULL OR branch = ?3) ORDER BY id",
                )
                .map_err(other)?;
            let rows: Vec<(String, String, i64)> = stmt
                .query_map(params![partner, period.to_string(), branch], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .map_err(other)?
                .collect::<Result<_, _>>()
                .map_err(other)?;
            rows.iter()
                .map(|(doc, status, refused)| {
                    let report = with_status(doc, status, *refused)?;
                    let batches = batches_of_report(tx, &report)?;
                    Ok((report, batches))
                })
                .collect()
        })
        .await
    }

    async fn periods(&self, partner: &PartnerId) -> Result<Vec<Period>, StoreError> {
        let partner = partner.to_string();
        self.read(move |tx| {
            let mut stmt = tx
                // A skip-scan: one index seek per period, newest first. `SELECT DISTINCT` read
                // every report of the partner (70 ms at 1.2 million in the bench), and
                // `/metrics` asks at every scrape (the not-reported gauge).
                .prepare_cached(
                    "WITH RECURSIVE p(period) AS (
                         SELECT MAX(period) FROM reports WHERE partner = ?1
                         UNION ALL
                         SELECT (SELECT MAX(period) FROM reports
                                 WHERE partner = ?1 AND period < p.period)
                         FROM p WHERE p.period IS NOT NULL
                     )
                     SELECT period FROM p WHERE period IS NOT NULL",
                )
                .map_err(other)?;
            let periods: Vec<String> = stmt
                .query_map(params![partner], |row| row.get(0))
                .map_err(other)?
                .collect::<Result<_, _>>()
                .map_err(other)?;
            Ok(periods
                .iter()
                .filter_map(|p| Period::parse(p).ok())
                .collect())
        })
        .await
    }

    // Kiva's expected loans: see `expected`.

    async fn replace_expected_loans(
        &self,
        snapshot: &ExpectedLoansSnapshot,
    ) -> Result<(), StoreError> {
        self.put_expected_loans(snapshot).await
    }

    async fn expected_loans(
        &self,
        partner: &PartnerId,
    ) -> Result<Option<ExpectedLoansSnapshot>, StoreError> {
        self.get_expected_loans(partner).await
    }

    async fn expected_loans_taken_at(
        &self,
        partner: &PartnerId,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.get_expected_loans_taken_at(partner).await
    }

    async fn lock_refresh(
        &self,
        partner: &PartnerId,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.take_refresh_lock(partner, holder, ttl).await
    }

    async fn unlock_refresh(&self, partner: &PartnerId, holder: &str) -> Result<(), StoreError> {
        self.give_back_refresh_lock(partner, holder).await
    }

    async fn record_refresh(
        &self,
        partner: &PartnerId,
        status: &RefreshStatus,
    ) -> Result<(), StoreError> {
        self.put_refresh_status(partner, status).await
    }

    async fn refresh_status(&self, partner: &PartnerId) -> Result<RefreshStatus, StoreError> {
        self.get_refresh_status(partner).await
    }
}

#[async_trait::async_trait]
impl Sessions for EmbeddedStore {
    async fn create_session(
        &self,
        id_hash: &str,
        session: &WebSession,
        idle: Duration,
    ) -> Result<(), StoreError> {
        self.put_session(id_hash, session, idle).await
    }

    async fn session(
        &self,
        id_hash: &str,
        idle: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<WebSession>, StoreError> {
        self.touch_session(id_hash, idle, now).await
    }

    async fn end_session(&self, id_hash: &str) -> Result<(), StoreError> {
        self.delete_session(id_hash).await
    }
}

fn one_batch(
    tx: &Transaction<'_>,
    partner: &str,
    batch_id: &str,
) -> Result<Option<(Batch, String)>, StoreError> {
    let Some(report_id) = report_of_batch(batch_id) else {
        return Ok(None);
    };
    let Some(report) = report_row(tx, partner, &report_id.to_string())? else {
        return Ok(None);
    };
    let batch = batches_of_report(tx, &report)?
        .into_iter()
        .find(|b| b.id == batch_id);
    Ok(batch.map(|b| (b, report.branch)))
}
