//! Reports in SQLite: the idempotency claim, the accept (one transaction: the period's loans
//! checked and claimed, the report, its batches and queue entries, the idempotency record), and
//! reading reports back.

use std::time::Duration;

use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    EmbeddedStore, batches_of_report, decode, encode, execute, name_of, now_ms, other, report_row,
    with_status,
};
use crate::domain::PartnerId;
use crate::store::{
    Batch, BatchDoc, Durability, EarlierReport, IdempotencyClaim, IdempotencyScope,
    IdempotentAccept, RecordedResponse, Report, ReportPage, ReportQuery, Reports, StoreError,
    loan_key,
};

fn idempotency_key(scope: &IdempotencyScope) -> String {
    let digest = hex::encode(Sha256::digest(scope.key.as_bytes()));
    format!("{}:{}:{digest}", scope.partner_id, scope.api_key_name)
}

/// Writes a report, its batches (id, document) and their queue entries: the writes of
/// `accept` after its checks, and all of `enqueue`.
pub(super) fn store_report(
    tx: &rusqlite::Transaction<'_>,
    report: &Report,
    doc: &str,
    batches: &[(String, String)],
) -> Result<(), StoreError> {
    let partner = report.partner_id.as_str();
    let id = report.id.to_string();
    execute(
        tx,
        "INSERT INTO reports (id, partner, branch, period, doc, status) VALUES (?1, ?2, ?3, ?4, ?5, 'queued')",
        params![
            id,
            partner,
            report.branch,
            report.period.map(|p| p.to_string()),
            doc
        ],
    )?;
    let queued_at = report.created_at.timestamp_millis();
    for (batch_id, batch_doc) in batches {
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
    Ok(())
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
            .map(|r| loan_key(report.column_format, r))
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
                        earlier.push(EarlierReport {
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
            store_report(tx, &report, &doc, &batches)?;
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

    /// The read-only twin of `accept`'s period check: the same queries, in a read transaction,
    /// nothing claimed.
    async fn check_accept(&self, report: &Report, batches: &[BatchDoc]) -> Result<(), StoreError> {
        if report.correction && report.corrects_any_branch {
            return Ok(());
        }
        let loans: Vec<String> = batches
            .iter()
            .flat_map(|b| &b.repayments)
            .map(|r| loan_key(report.column_format, r))
            .collect();
        let partner = report.partner_id.to_string();
        let period = report.period.map(|p| p.to_string()).unwrap_or_default();
        let correction = report.correction;
        let branch = report.branch.clone();
        let id = report.id.to_string();
        self.read(move |tx| {
            let mut earlier_of = tx
                .prepare_cached(
                    "SELECT l.report_id, l.position, r.branch FROM period_loans l LEFT JOIN reports r ON r.id = l.report_id WHERE l.partner = ?1 AND l.period = ?2 AND l.loan = ?3",
                )
                .map_err(other)?;
            let mut earlier = Vec::new();
            let mut foreign = Vec::new();
            for (position, loan) in loans.iter().enumerate() {
                let found: Option<(String, i64, Option<String>)> = earlier_of
                    .query_row(params![partner, period, loan], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })
                    .optional()
                    .map_err(other)?;
                let Some((report_id, earlier_position, its_branch)) = found else {
                    continue;
                };
                if correction {
                    if its_branch.as_deref() != Some(branch.as_str()) {
                        foreign.push(position);
                    }
                } else if report_id != id {
                    earlier.push(EarlierReport {
                        position,
                        report_id: Uuid::parse_str(&report_id).map_err(other)?,
                        earlier_position: Some(earlier_position as usize),
                        branch: its_branch,
                    });
                }
            }
            if !foreign.is_empty() {
                return Err(StoreError::OtherBranchLoans(foreign));
            }
            if !earlier.is_empty() {
                return Err(StoreError::AlreadyReported(earlier));
            }
            Ok(())
        })
        .await
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

    async fn durability(&self) -> Result<Durability, StoreError> {
        Ok(Durability {
            backend: "embedded".into(),
            level: "SQLite WAL, synchronous=FULL: on disk before each 202 and each send".into(),
            may_lose_acknowledged_writes: false,
            survives: vec!["process crash".into(), "host crash".into()],
            replica_acks: 0,
            replicas: None,
        })
    }
}
