//! The read-only twin of `accept`'s period check: the same queries, in a read transaction,
//! nothing claimed.

use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use super::{EmbeddedStore, other};
use crate::store::{BatchDoc, EarlierReport, Report, StoreError, loan_key};

impl EmbeddedStore {
    pub(super) async fn check_period_loans(
        &self,
        report: &Report,
        batches: &[BatchDoc],
    ) -> Result<(), StoreError> {
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
}
