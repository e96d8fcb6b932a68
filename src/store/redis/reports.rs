//! Reports on Redis: the idempotency claim, the accept (one script: the period's loans
//! checked and claimed, the report, its batches and queue entries, the idempotency record), and
//! reading reports back.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{MAX_SCANNED_PER_PAGE, RedisStore, decode, encode, report_with_status};
use crate::domain::PartnerId;
use crate::store::{
    Batch, BatchDoc, BatchState, Durability, EarlierReport, IdempotencyClaim, IdempotencyScope,
    IdempotentAccept, RecordedResponse, Report, ReportPage, ReportQuery, Reports, StoreError,
    StoredRepayment, loan_key,
};

// One script per atomic step, each in a .lua file beside this one, headed by its KEYS, ARGV
// and the invariant it keeps.
static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("claim.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("release.lua")));
static ACCEPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("accept.lua")));

impl RedisStore {
    /// The accept script (accept.lua) for `report`, its batches (id, document) and the loan
    /// keys the period is checked and indexed by: the one atomic step of `accept` and of
    /// `enqueue`. Answers the script's reply.
    pub(super) async fn run_accept(
        &self,
        report: &Report,
        batches: &[(&str, String)],
        loans: impl Iterator<Item = String>,
        idempotency: Option<&IdempotentAccept>,
        idempotency_ttl: Duration,
    ) -> Result<Vec<String>, StoreError> {
        let partner = &report.partner_id;
        let report_key = self.report_key(partner, report.id);
        let period = report.period.map(|p| p.to_string()).unwrap_or_default();
        let mut invocation = ACCEPT.prepare_invoke();
        invocation
            .key(match idempotency {
                Some(i) => self.idempotency_key(&i.scope),
                // Unused, but declared in the same slot so the script stays cluster-safe.
                None => self.key(partner, "idem:none"),
            })
            .key(&report_key)
            .key(self.key(partner, "reports"))
            .key(self.key_of(partner, &["reports:branch:", &report.branch]))
            .key(self.stream_key(partner))
            .key(self.key_of(partner, &["period:", &period, ":loans"]))
            .key(self.key_of(partner, &["period:", &period, ":reports"]))
            .key(self.key(partner, "periods"))
            .key(self.state_index_key(partner, BatchState::Queued))
            .key(self.indexed_marker_key(partner));
        for (id, _) in batches {
            invocation.key(self.batch_key(partner, id));
        }
        invocation.key(self.key_of(partner, &["period:", &period, ":branches"]));
        invocation
            .arg(if idempotency.is_some() { "1" } else { "0" })
            .arg(idempotency.map_or("", |i| i.token.as_str()))
            .arg(idempotency_ttl.as_secs())
            .arg(idempotency.map_or(String::new(), |i| encode(&i.response)))
            .arg(
                report
                    .id
                    .hyphenated()
                    .encode_lower(&mut Uuid::encode_buffer()) as &str,
            )
            .arg(encode(report))
            .arg(report.created_at.timestamp_millis())
            .arg(match (report.correction, report.corrects_any_branch) {
                (false, _) => "0",
                (true, true) => "1",
                (true, false) => "2",
            })
            .arg(self.period_index_ttl.as_secs())
            .arg(&period);
        for (_, doc) in batches {
            invocation.arg(doc);
        }
        for (id, _) in batches {
            invocation.arg(*id);
        }
        for loan in loans {
            invocation.arg(loan);
        }
        self.write_repeatable(async |c| {
            let reply = invocation.invoke_async(c).await?;
            self.wait_for_copies(c, &report_key).await?;
            Ok(reply)
        })
        .await
    }

    fn idempotency_key(&self, scope: &IdempotencyScope) -> String {
        let digest = hex::encode(Sha256::digest(scope.key.as_bytes()));
        self.key(
            &scope.partner_id,
            &format!("idem:{}:{digest}", scope.api_key_name),
        )
    }

    /// The refusal of `report`, from the accept's `position=report` answers: reads the earlier
    /// reports, in one round trip, to say where each has the loan. Only the answers a refusal
    /// lists (`MAX_LISTED_VIOLATIONS`, the first in document order) are placed, so a month sent
    /// again reads at most that many reports, whatever its size. Best effort: if the reads
    /// fail, or an earlier report was purged since, the refusal still names the report,
    /// without the place.
    async fn earlier_reports(
        &self,
        report: &Report,
        batches: &[BatchDoc],
        answers: &[String],
    ) -> Vec<EarlierReport> {
        let parsed: Vec<(usize, Uuid, Option<usize>)> =
            answers.iter().filter_map(|a| parse_earlier(a)).collect();
        let loans: Vec<&StoredRepayment> = batches.iter().flat_map(|b| &b.repayments).collect();
        let loan_at = |position: usize| Some(loan_key(report.column_format, loans.get(position)?));
        // The (earlier report, loan) pairs to place, and no more: an earlier report may hold
        // thousands of loans, of which only the repeated ones are looked up.
        let mut places: std::collections::HashMap<(Uuid, String), Option<usize>> = parsed
            .iter()
            .take(crate::intake::MAX_LISTED_VIOLATIONS)
            .filter(|(_, _, at)| at.is_none())
            .filter_map(|(position, id, _)| Some(((*id, loan_at(*position)?), None)))
            .collect();
        // Every listed loan's earlier report is read for its branch (who may be told which
        // report it is); only those whose place the index lacks for their batches too.
        let mut wanted: Vec<String> = parsed
            .iter()
            .take(crate::intake::MAX_LISTED_VIOLATIONS)
            .map(|(_, id, _)| id.to_string())
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut branches: std::collections::HashMap<Uuid, String> =
            std::collections::HashMap::new();
        let read = async {
            let found = self.report_docs(&report.partner_id, &wanted).await?;
            for earlier in &found {
                branches.insert(earlier.id, earlier.branch.clone());
            }
            let placing: Vec<Report> = found
                .into_iter()
                .filter(|r| places.keys().any(|(id, _)| *id == r.id))
                .collect();
            let their_batches = self.batches_of_many(&placing).await?;
            Ok::<_, StoreError>(placing.into_iter().zip(their_batches))
        };
        match read.await {
            Ok(found) => {
                for (earlier, its_batches) in found {
                    for repayment in its_batches.iter().flat_map(|b| &b.repayments) {
                        let key = loan_key(earlier.column_format, &repayment.repayment);
                        if let Some(place) = places.get_mut(&(earlier.id, key)) {
                            *place = Some(repayment.repayment.position);
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "could not read the earlier reports a refused report repeats")
            }
        }
        parsed
            .into_iter()
            .map(|(position, report_id, at)| EarlierReport {
                position,
                report_id,
                earlier_position: at.or_else(|| {
                    let loan = loan_at(position)?;
                    places.get(&(report_id, loan)).copied().flatten()
                }),
                branch: branches.get(&report_id).cloned(),
            })
            .collect()
    }
}

/// `position=report`, or `position=report:position` as indexes written before kept it.
fn parse_earlier(text: &str) -> Option<(usize, Uuid, Option<usize>)> {
    let (position, earlier) = text.split_once('=')?;
    let (report, at) = match earlier.split_once(':') {
        Some((report, at)) => (report, Some(at.parse().ok()?)),
        None => (earlier, None),
    };
    Some((position.parse().ok()?, Uuid::parse_str(report).ok()?, at))
}

#[async_trait::async_trait]
impl Reports for RedisStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.with_connection(async |c| redis::cmd("PING").query_async::<String>(c).await)
            .await
            .map(drop)
    }

    async fn claim_idempotency(
        &self,
        scope: &IdempotencyScope,
        ttl: Duration,
    ) -> Result<IdempotencyClaim, StoreError> {
        let key = self.idempotency_key(scope);
        let token = Uuid::new_v4().to_string();
        // A replay answers 202 for a report whose own accept may never have been confirmed on
        // disk or on the replicas (its first answer was outcome-unknown: NotReplicated). So
        // where writes wait for copies, the replay does too: the claim script writes once more
        // and the copies are awaited for that write, which follows the accept in the
        // replication stream and in the AOF (WAIT and WAITAOF count a connection's own last
        // write, so a read alone would wait for nothing).
        let wait = self.replica_acks > 0 || self.waitaof.load(std::sync::atomic::Ordering::Relaxed);
        let reply: Vec<String> = self
            .with_connection(async |c| {
                let reply: Vec<String> = CLAIM
                    .key(&key)
                    .arg(&token)
                    .arg(ttl.as_millis() as u64)
                    .arg(if wait { "1" } else { "0" })
                    .invoke_async(c)
                    .await?;
                if wait && reply.first().map(String::as_str) == Some("done") {
                    self.wait_for_copies(c, &key).await?;
                }
                Ok(reply)
            })
            .await?;
        match reply.first().map(String::as_str) {
            Some("claimed") => Ok(IdempotencyClaim::Claimed { token }),
            Some("in_progress") => Ok(IdempotencyClaim::InProgress),
            Some("done") => {
                let record: RecordedResponse = decode(reply.get(1).map_or("", String::as_str))?;
                Ok(IdempotencyClaim::Completed(record))
            }
            _ => Err(StoreError::Other(format!(
                "unexpected claim reply {reply:?}"
            ))),
        }
    }

    async fn release_idempotency(
        &self,
        scope: &IdempotencyScope,
        token: &str,
    ) -> Result<(), StoreError> {
        let key = self.idempotency_key(scope);
        self.with_connection(async |c| RELEASE.key(&key).arg(token).invoke_async::<String>(c).await)
            .await
            .map(drop)
    }

    async fn accept(
        &self,
        report: &Report,
        batches: &[BatchDoc],
        idempotency: Option<&IdempotentAccept>,
        idempotency_ttl: Duration,
    ) -> Result<(), StoreError> {
        let docs: Vec<(&str, String)> = batches
            .iter()
            .map(|batch| (batch.id.as_str(), encode(batch)))
            .collect();
        let loans = batches
            .iter()
            .flat_map(|b| &b.repayments)
            .map(|repayment| loan_key(report.column_format, repayment));
        let reply = self
            .run_accept(report, &docs, loans, idempotency, idempotency_ttl)
            .await?;
        match reply.split_first() {
            Some((first, earlier)) if first == "reported" => Err(StoreError::AlreadyReported(
                self.earlier_reports(report, batches, earlier).await,
            )),
            Some((first, positions)) if first == "foreign" => Err(StoreError::OtherBranchLoans(
                positions.iter().filter_map(|p| p.parse().ok()).collect(),
            )),
            _ => Ok(()),
        }
    }

    /// The read-only twin of the accept script's period check (accept.lua): the same keys, the
    /// same answers, nothing written. HMGET and HGET on single keys, so it works on a cluster too.
    async fn check_accept(&self, report: &Report, batches: &[BatchDoc]) -> Result<(), StoreError> {
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

    async fn report(
        &self,
        partner: &PartnerId,
        id: Uuid,
    ) -> Result<Option<(Report, Vec<Batch>)>, StoreError> {
        let Some(report) = self.report_doc(partner, id).await? else {
            return Ok(None);
        };
        let batches = self.batches(&report).await?;
        Ok(Some((report, batches)))
    }

    async fn reports(
        &self,
        partner: &PartnerId,
        query: &ReportQuery,
    ) -> Result<ReportPage, StoreError> {
        let index = match &query.branch {
            Some(branch) => self.key(partner, &format!("reports:branch:{branch}")),
            None => self.key(partner, "reports"),
        };
        let mut upper = match query.after {
            Some(id) => format!("({id}"),
            None => "+".to_owned(),
        };
        let limit = query.limit.max(1);
        let mut found = Vec::with_capacity(limit);
        let mut scanned = 0;
        loop {
            let chunk = (limit - found.len()).max(50);
            let ids: Vec<String> = self
                .with_connection(async |c| {
                    redis::cmd("ZREVRANGEBYLEX")
                        .arg(&index)
                        .arg(&upper)
                        .arg("-")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(chunk)
                        .query_async(c)
                        .await
                })
                .await?;
            if ids.is_empty() {
                return Ok(ReportPage {
                    reports: found,
                    next: None,
                });
            }
            let docs = self.live_docs(partner, &ids).await?;
            let exhausted = ids.len() < chunk;
            for (id, (doc, status, refused)) in ids.iter().zip(docs) {
                scanned += 1;
                upper = format!("({id}");
                let Some(doc) = doc else { continue };
                let report = report_with_status(&doc, status.as_deref(), refused)?;
                let matches = query.status.is_none_or(|s| s == report.status)
                    && (!query.refused_only || report.refused_by_kiva > 0)
                    && query.period.is_none_or(|p| Some(p) == report.period);
                if matches {
                    found.push(report);
                    if found.len() == limit {
                        let next = found.last().map(|r| r.id);
                        return Ok(ReportPage {
                            reports: found,
                            next,
                        });
                    }
                }
            }
            if exhausted {
                return Ok(ReportPage {
                    reports: found,
                    next: None,
                });
            }
            if scanned >= MAX_SCANNED_PER_PAGE {
                let next = Uuid::parse_str(upper.trim_start_matches('(')).ok();
                return Ok(ReportPage {
                    reports: found,
                    next,
                });
            }
        }
    }

    async fn durability(&self) -> Result<Durability, StoreError> {
        Ok(self
            .check_persistence()
            .await?
            .durability(self.replica_acks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_report_is_read_with_or_without_its_position() {
        let id = "0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b";
        let uuid = Uuid::parse_str(id).unwrap();
        assert_eq!(parse_earlier(&format!("3={id}")), Some((3, uuid, None)));
        assert_eq!(
            parse_earlier(&format!("3={id}:7")),
            Some((3, uuid, Some(7)))
        );
        assert_eq!(parse_earlier("3"), None);
        assert_eq!(parse_earlier(&format!("x={id}")), None);
        assert_eq!(parse_earlier(&format!("3={id}:x")), None);
    }
}
