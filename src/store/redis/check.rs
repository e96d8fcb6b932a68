//! The read-only twin of the accept script's period check (see `ACCEPT`): the same keys, the
//! same answers, nothing written. HMGET and HGET on single keys, so it works on a cluster too.

use uuid::Uuid;

use super::RedisStore;
use crate::store::{BatchDoc, Report, StoreError, loan_key};

impl RedisStore {
    pub(super) async fn check_period_loans(
        &self,
        report: &Report,
        batches: &[BatchDoc],
    ) -> Result<(), StoreError> {
        if report.correction && report.corrects_any_branch {
            return Ok(());
        }
        let partner = &report.partner_id;
        let period = report.period.map(|p| p.to_string()).unwrap_or_default();
        let loans_key = self.key_of(partner, &["period:", &period, ":loans"]);
        let branches_key = self.key_of(partner, &["period:", &period, ":branches"]);
        let loans: Vec<String> = batches
            .iter()
            .flat_map(|b| &b.repayments)
            .map(|r| loan_key(report.column_format, r))
            .collect();
        let mut found: Vec<(usize, String)> = Vec::new();
        // In chunks, as the script does: one reply holds at most a chunk's reports.
        for (chunk_at, chunk) in loans.chunks(1000).enumerate() {
            let key = loans_key.clone();
            let reply: Vec<Option<String>> = self
                .with_connection(async |c| {
                    redis::cmd("HMGET")
                        .arg(&key)
                        .arg(chunk)
                        .query_async(c)
                        .await
                })
                .await?;
            found.extend(
                reply
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, r)| Some((chunk_at * 1000 + i, r?))),
            );
        }
        if found.is_empty() {
            return Ok(());
        }
        if report.correction {
            // A branch's correction: loans whose report is another branch's (or unknown).
            let mut known: std::collections::HashMap<String, Option<String>> =
                std::collections::HashMap::new();
            let mut foreign = Vec::new();
            for (position, value) in &found {
                // Older index entries hold `report:position`.
                let id = value.split(':').next().unwrap_or_default().to_owned();
                if !known.contains_key(&id) {
                    let key = branches_key.clone();
                    let field = id.clone();
                    let branch: Option<String> = self
                        .with_connection(async |c| {
                            redis::cmd("HGET")
                                .arg(&key)
                                .arg(&field)
                                .query_async(c)
                                .await
                        })
                        .await?;
                    known.insert(id.clone(), branch);
                }
                if known[&id].as_deref() != Some(report.branch.as_str()) {
                    foreign.push(*position);
                }
            }
            return match foreign.is_empty() {
                true => Ok(()),
                false => Err(StoreError::OtherBranchLoans(foreign)),
            };
        }
        let answers: Vec<String> = found
            .into_iter()
            .filter(|(_, value)| {
                // Not this very report (a validate never has one stored; kept for symmetry).
                value
                    .split(':')
                    .next()
                    .and_then(|v| Uuid::parse_str(v).ok())
                    != Some(report.id)
            })
            .map(|(position, value)| format!("{position}={value}"))
            .collect();
        if answers.is_empty() {
            return Ok(());
        }
        Err(StoreError::AlreadyReported(
            self.earlier_reports(report, batches, &answers).await,
        ))
    }
}
