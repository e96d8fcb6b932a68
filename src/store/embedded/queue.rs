//! The delivery queue in SQLite: the `queue` table stands for the Redis stream and its
//! consumer group (an entry per batch to send, claimed by a consumer, deleted when settled),
//! and every move of a batch is one transaction with the roll-up of its report's status.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Transaction, params};

use super::{
    EmbeddedStore, batches_of_report, encode, from_ms, name_of, now_ms, other, parse_name,
    report_row, reports::store_report,
};
use crate::domain::PartnerId;
use crate::store::{
    Attempt, AttemptEnd, Batch, BatchResult, BatchState, BatchVersion, BeginAttempt, ClaimedBatch,
    NewBatch, OperatorAction, OperatorActionKind, OperatorCommand, OperatorOutcome, Queue,
    QueueSummary, QueuedBatch, Report, ReportStatus, StoreError, check_enqueue, oldest_id_at,
    report_of_batch,
};

/// Retries promoted per call at most, as in the Redis backend.
const PROMOTE_LIMIT: i64 = 500;

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

#[async_trait::async_trait]
impl Queue for EmbeddedStore {
    async fn prepare_delivery(&self, _partner: &PartnerId) -> Result<(), StoreError> {
        Ok(())
    }

    async fn enqueue(&self, report: &Report, batches: &[NewBatch]) -> Result<(), StoreError> {
        check_enqueue(report, batches)?;
        let doc = encode(report);
        let batches: Vec<(String, String)> = batches
            .iter()
            .map(|b| (b.id.clone(), b.doc.clone()))
            .collect();
        let report = report.clone();
        self.transaction(move |tx| {
            // Report ids are never reused: the report there means this enqueue ran already.
            if report_row(tx, report.partner_id.as_str(), &report.id.to_string())?.is_some() {
                return Ok(());
            }
            store_report(tx, &report, &doc, &batches)
        })
        .await
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
                        batch: QueuedBatch {
                            doc,
                            column_format: report.column_format,
                        },
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
                            encode(&Attempt::unrecorded(attempt, began))
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
                Some((seq, doc)) if Attempt::is_unrecorded(&doc) => {
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

    async fn queue_summary(&self, partner: &PartnerId) -> Result<QueueSummary, StoreError> {
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
        command: &OperatorCommand,
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
            let action = OperatorAction {
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
        let floor = oldest_id_at(before).to_string();
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
