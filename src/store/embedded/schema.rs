//! The embedded store's tables, made at open and brought up to date from what an older
//! gateway made (columns added since, counts kept by triggers since).

use rusqlite::{Connection, params};

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

const EXPECTED_LOANS: &str = r#"
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

const SESSIONS: &str = r#"
CREATE TABLE IF NOT EXISTS web_sessions (
    id_hash TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    idle_until INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
"#;

/// Makes what is missing and brings an older database up to date.
pub(super) fn prepare(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(EXPECTED_LOANS)?;
    conn.execute_batch(SESSIONS)?;
    migrate(conn)
}

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version < COUNTED_VERSION {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             DELETE FROM batch_counts;
             INSERT INTO batch_counts (partner, state, n)
                 SELECT partner, state, COUNT(*) FROM batches GROUP BY partner, state;
             PRAGMA user_version = {COUNTED_VERSION};
             COMMIT;"
        ))?;
    }
    for (table, column, declaration) in ADDED_COLUMNS {
        let present: bool = conn.query_row(
            &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
            params![column],
            |row| row.get(0),
        )?;
        if !present {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {declaration}"
            ))?;
        }
    }
    Ok(())
}
