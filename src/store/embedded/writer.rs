//! Group commit for the embedded store. One thread owns the write connection and takes every
//! unit of work waiting in its queue, runs them in ONE transaction (each inside its own
//! SAVEPOINT), commits with one fsync, and only then answers each caller. A 202 therefore
//! still means "on disk" (`synchronous = FULL`), but a burst of accepts pays one fsync per
//! group instead of one per report: while one group's fsync runs, the next group gathers.
//!
//! Invariants, in the order they matter:
//! - No caller is answered `Ok` before the COMMIT that holds its writes has returned.
//! - A unit that fails (its `Err`, or a panic) is rolled back to its own savepoint, so the
//!   others in its group commit as if it had never run; a unit sees the writes of the units
//!   queued before it (they are in the same transaction), so the checks that make accepts
//!   exclusive (one loan per period, idempotency claims) hold across a group exactly as they
//!   did across separate transactions.
//! - If SQLite drops the whole transaction (it does on I/O errors, a full disk, out of
//!   memory), every unit already run in it is answered with an error, and the units not yet
//!   run go into a fresh transaction: nothing is answered `Ok` that was not committed.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use crate::store::StoreError;

/// At most this many units in one transaction: bounds how long a group holds the first
/// caller's answer, and how much one failed COMMIT takes down with it.
const MAX_GROUP: usize = 256;

/// One caller's work: run inside the group's transaction, answered once the group's fate is
/// known.
pub(super) trait Unit: Send {
    /// Runs the work; true when it succeeded (its savepoint is kept).
    fn run(&mut self, tx: &Transaction<'_>) -> bool;
    /// Answers the caller: `committed` is the group's outcome (why it did not commit).
    fn answer(self: Box<Self>, committed: Result<(), &str>);
}

/// A closure and the channel its caller awaits.
pub(super) struct Job<T, F> {
    work: Option<F>,
    value: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
{
    pub(super) fn unit(work: F) -> (Box<dyn Unit>, oneshot::Receiver<Result<T, StoreError>>) {
        let (reply, answer) = oneshot::channel();
        let job = Self {
            work: Some(work),
            value: None,
            reply,
        };
        (Box::new(job), answer)
    }
}

impl<T, F> Unit for Job<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
{
    fn run(&mut self, tx: &Transaction<'_>) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let value = work(tx);
        let ok = value.is_ok();
        self.value = Some(value);
        ok
    }

    fn answer(self: Box<Self>, committed: Result<(), &str>) {
        let committed = committed.map_err(|e| StoreError::Other(e.to_owned()));
        let answer = match (self.value, committed) {
            (Some(Ok(value)), Ok(())) => Ok(value),
            (Some(Ok(_)), Err(e)) => Err(e),
            (Some(Err(e)), _) => Err(e),
            // Never ran to the end: it panicked (the message went to stderr), or the group's
            // transaction could not even begin.
            (None, Err(e)) => Err(e),
            (None, Ok(())) => Err(StoreError::Other(
                "the store's work panicked; nothing of it was written".into(),
            )),
        };
        // The caller may have gone (its request was dropped): nothing to tell.
        let _ = self.reply.send(answer);
    }
}

/// The queue into the writer thread. Dropping it ends the thread once the queue is drained.
pub(super) struct Writer {
    queue: mpsc::Sender<Box<dyn Unit>>,
}

impl Writer {
    pub(super) fn start(conn: Connection) -> Result<Self, StoreError> {
        let (queue, units) = mpsc::channel::<Box<dyn Unit>>();
        std::thread::Builder::new()
            .name("embedded-store-writer".into())
            .spawn(move || run(conn, units))
            .map_err(|e| StoreError::Other(format!("cannot start the store's writer: {e}")))?;
        Ok(Self { queue })
    }

    pub(super) fn submit(&self, unit: Box<dyn Unit>) -> Result<(), StoreError> {
        self.queue
            .send(unit)
            .map_err(|_| StoreError::Other("the store's writer has stopped".into()))
    }
}

fn run(mut conn: Connection, units: mpsc::Receiver<Box<dyn Unit>>) {
    while let Ok(first) = units.recv() {
        let mut group = VecDeque::from([first]);
        // No waiting for more: the units that arrive while this group's fsync runs form the
        // next group, so a lone request is never delayed and a burst is grouped by itself.
        while group.len() < MAX_GROUP {
            match units.try_recv() {
                Ok(unit) => group.push_back(unit),
                Err(_) => break,
            }
        }
        commit_group(&mut conn, group);
    }
}

/// Runs `group` in as few transactions as it takes (one, unless SQLite drops one midway) and
/// answers every unit.
pub(super) fn commit_group(conn: &mut Connection, mut group: VecDeque<Box<dyn Unit>>) {
    while !group.is_empty() {
        let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                let error = format!("cannot begin a store transaction: {e}");
                for unit in group {
                    unit.answer(Err(&error));
                }
                return;
            }
        };
        let mut done = Vec::with_capacity(group.len());
        let mut lost = None;
        while let Some(mut unit) = group.pop_front() {
            if let Err(e) = tx.execute_batch("SAVEPOINT unit") {
                lost = Some(e.to_string());
                group.push_front(unit);
                break;
            }
            let ok = catch_unwind(AssertUnwindSafe(|| unit.run(&tx))).unwrap_or(false);
            done.push(unit);
            if tx.is_autocommit() {
                // SQLite rolled the whole transaction back under this unit's feet.
                lost = Some("the store's transaction was rolled back by an error".into());
                break;
            }
            let end = if ok {
                "RELEASE unit"
            } else {
                "ROLLBACK TO unit; RELEASE unit"
            };
            if let Err(e) = tx.execute_batch(end) {
                lost = Some(e.to_string());
                break;
            }
        }
        let committed = match lost {
            None => tx.commit().map_err(|e| e.to_string()),
            Some(e) => {
                // Dropping `tx` rolls back whatever is left of it.
                drop(tx);
                Err(e)
            }
        };
        let committed = committed.map_err(|e| format!("the store did not commit: {e}"));
        for unit in done {
            unit.answer(committed.as_ref().map(|_| ()).map_err(String::as_str));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY)")
            .unwrap();
        conn
    }

    fn insert(key: &'static str) -> impl FnOnce(&Transaction<'_>) -> Result<(), StoreError> {
        move |tx| {
            tx.execute("INSERT INTO t (k) VALUES (?1)", [key])
                .map_err(|e| StoreError::Other(e.to_string()))?;
            Ok(())
        }
    }

    fn keys(conn: &Connection) -> Vec<String> {
        let mut stmt = conn.prepare("SELECT k FROM t ORDER BY k").unwrap();
        stmt.query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[tokio::test]
    async fn a_failed_unit_is_rolled_back_alone_and_the_rest_of_its_group_commits() {
        let mut conn = store();
        let (a, a_answer) = Job::unit(insert("a"));
        // Writes, then fails: its write must not survive.
        let (b, b_answer) = Job::unit(|tx: &Transaction<'_>| -> Result<(), StoreError> {
            insert("b")(tx)?;
            Err(StoreError::ClaimLost)
        });
        // Sees `a` (same transaction) and is refused by the primary key, as a second
        // transaction would have been.
        let (a_again, a_again_answer) = Job::unit(insert("a"));
        let (c, c_answer) = Job::unit(insert("c"));
        let (boom, boom_answer) = Job::unit(|tx: &Transaction<'_>| -> Result<(), StoreError> {
            insert("d")(tx)?;
            panic!("a unit that panics");
        });
        commit_group(&mut conn, VecDeque::from([a, b, a_again, c, boom]));

        assert!(a_answer.await.unwrap().is_ok());
        assert!(matches!(
            b_answer.await.unwrap(),
            Err(StoreError::ClaimLost)
        ));
        assert!(a_again_answer.await.unwrap().is_err());
        assert!(c_answer.await.unwrap().is_ok());
        assert!(boom_answer.await.unwrap().is_err());
        assert_eq!(keys(&conn), ["a", "c"]);
        assert!(conn.is_autocommit(), "the group's transaction is closed");
    }

    #[tokio::test]
    async fn no_unit_is_answered_ok_when_the_commit_fails() {
        let mut conn = store();
        // A deferred foreign key is checked at COMMIT: the commit fails, after every unit ran.
        conn.execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE child (k TEXT REFERENCES t (k) DEFERRABLE INITIALLY DEFERRED)",
        )
        .unwrap();
        let (a, a_answer) = Job::unit(insert("a"));
        let (orphan, orphan_answer) = Job::unit(|tx: &Transaction<'_>| {
            tx.execute("INSERT INTO child (k) VALUES ('nobody')", [])
                .map_err(|e| StoreError::Other(e.to_string()))?;
            Ok(())
        });
        commit_group(&mut conn, VecDeque::from([a, orphan]));

        assert!(a_answer.await.unwrap().is_err());
        assert!(orphan_answer.await.unwrap().is_err());
        assert!(conn.is_autocommit());
        assert!(keys(&conn).is_empty(), "nothing of the group was written");
    }

    #[tokio::test]
    async fn the_writer_answers_units_sent_from_many_tasks() {
        let writer = std::sync::Arc::new(Writer::start(store()).unwrap());
        let mut answers = Vec::new();
        for i in 0..200 {
            let writer = writer.clone();
            answers.push(tokio::spawn(async move {
                let (unit, answer) = Job::unit(move |tx: &Transaction<'_>| {
                    tx.execute("INSERT INTO t (k) VALUES (?1)", [format!("k{i:03}")])
                        .map_err(|e| StoreError::Other(e.to_string()))?;
                    Ok(i)
                });
                writer.submit(unit).unwrap();
                answer.await.unwrap().unwrap()
            }));
        }
        for (i, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.await.unwrap(), i);
        }
        let (count, answer) = Job::unit(|tx: &Transaction<'_>| {
            tx.query_row("SELECT COUNT(*) FROM t", [], |row| row.get::<_, i64>(0))
                .map_err(|e| StoreError::Other(e.to_string()))
        });
        writer.submit(count).unwrap();
        assert_eq!(answer.await.unwrap().unwrap(), 200);
    }
}
