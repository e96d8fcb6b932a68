//! The delivery queue on Redis: a stream per partner with the consumer group `delivery`, and
//! one script per move of a batch (BEGIN, RELEASE_ATTEMPT, FINISH, OPERATE), each with the
//! roll-up of its report's status and the state index in the same step; retries wait in a
//! sorted set until PROMOTE queues them again; PURGE deletes settled reports.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::Script;
use uuid::Uuid;

use super::{MAX_SCANNED_PER_PAGE, RedisStore, STATE_INDEX, encode, from_ms, parse_state};
use crate::domain::PartnerId;
use crate::store::{
    Attempt, AttemptEnd, Batch, BatchResult, BatchState, BatchVersion, BeginAttempt, ClaimedBatch,
    NewBatch, OperatorActionKind, OperatorCommand, OperatorOutcome, Queue, QueueSummary,
    QueuedBatch, Report, StoreError, UNRECORDED, check_enqueue, oldest_id_at,
};

/// Consumer group of the delivery streams.
const GROUP: &str = "delivery";

const ALL_STATES: [BatchState; 7] = [
    BatchState::Queued,
    BatchState::Sending,
    BatchState::RetryWait,
    BatchState::Delivered,
    BatchState::Rejected,
    BatchState::Held,
    BatchState::Failed,
];

/// Retries promoted per call at most; the rest wait for the next round.
const PROMOTE_LIMIT: usize = 500;

/// A delivery step (one .lua file beside this one, headed by its KEYS, ARGV and the invariant
/// it keeps), run as one script with the prelude they share: the roll-up and the state index.
fn delivery_script(body: &str) -> Script {
    Script::new(&format!("#!lua\n{}\n{body}", include_str!("rollup.lua")))
}

static BEGIN: LazyLock<Script> = LazyLock::new(|| delivery_script(include_str!("begin.lua")));
static RELEASE_ATTEMPT: LazyLock<Script> =
    LazyLock::new(|| delivery_script(include_str!("release_attempt.lua")));
static FINISH: LazyLock<Script> = LazyLock::new(|| delivery_script(include_str!("finish.lua")));
static OPERATE: LazyLock<Script> = LazyLock::new(|| delivery_script(include_str!("operate.lua")));
static PROMOTE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("promote.lua")));
static PURGE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("purge.lua")));

impl RedisStore {
    /// KEYS of the delivery scripts for `batch_id` (see the layout in rollup.lua).
    fn delivery_keys(&self, partner: &PartnerId, batch_id: &str, report: &Report) -> Vec<String> {
        let batch = self.batch_key(partner, batch_id);
        let mut keys = vec![
            batch.clone(),
            self.report_key(partner, report.id),
            self.stream_key(partner),
            self.key(partner, "retries"),
            format!("{batch}:attempts"),
            format!("{batch}:actions"),
        ];
        keys.extend(
            STATE_INDEX
                .iter()
                .map(|s| self.state_index_key(partner, *s)),
        );
        keys.extend(report.batch_ids().map(|id| self.batch_key(partner, &id)));
        keys
    }

    async fn ensure_group(&self, stream: &str) -> Result<(), StoreError> {
        let result: Result<(), StoreError> = self
            .with_connection(async |c| {
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(stream)
                    .arg(GROUP)
                    // From the start of the stream: entries added before the group existed
                    // (or before a Redis without persistence came back) must not be skipped.
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(c)
                    .await
            })
            .await;
        match result {
            Err(StoreError::Other(e)) if e.contains("BUSYGROUP") => Ok(()),
            other => other,
        }
    }
}

type StreamEntries = Vec<(String, Vec<(String, String)>)>;

fn claimed_from(partner: &PartnerId, entries: StreamEntries, reclaimed: bool) -> Vec<ClaimedBatch> {
    entries
        .into_iter()
        .filter_map(|(entry_id, fields)| {
            let batch_id = fields.into_iter().find(|(k, _)| k == "batch")?.1;
            Some(ClaimedBatch {
                partner_id: partner.clone(),
                entry_id,
                batch_id,
                reclaimed,
            })
        })
        .collect()
}

#[async_trait::async_trait]
impl Queue for RedisStore {
    async fn prepare_delivery(&self, partner: &PartnerId) -> Result<(), StoreError> {
        self.ensure_group(&self.stream_key(partner)).await
    }

    async fn enqueue(&self, report: &Report, batches: &[NewBatch]) -> Result<(), StoreError> {
        check_enqueue(report, batches)?;
        let docs: Vec<(&str, String)> = batches
            .iter()
            .map(|b| (b.id.as_str(), b.doc.clone()))
            .collect();
        // The accept's own script: with no loans and no idempotency key, its checks pass and
        // it writes the report, the batches and their queue entries.
        self.run_accept(report, &docs, std::iter::empty(), None, Duration::ZERO)
            .await
            .map(drop)
    }

    async fn promote_due_retries(
        &self,
        partner: &PartnerId,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let keys = [self.key(partner, "retries"), self.stream_key(partner)];
        self.with_connection(async |c| {
            PROMOTE
                .key(&keys[0])
                .key(&keys[1])
                .arg(now.timestamp_millis())
                .arg(PROMOTE_LIMIT)
                .invoke_async(c)
                .await
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
        let stream = self.stream_key(partner);
        let min_idle = reclaim_after.as_millis() as u64;
        // Twice at most: a NOGROUP (Redis restarted without the group) re-creates it once.
        for _ in 0..2 {
            let result = self
                .with_connection(async |c| {
                    let (_, stale, _): (String, StreamEntries, Vec<String>) =
                        redis::cmd("XAUTOCLAIM")
                            .arg(&stream)
                            .arg(GROUP)
                            .arg(consumer)
                            .arg(min_idle)
                            .arg("0-0")
                            .arg("COUNT")
                            .arg(count)
                            .query_async(c)
                            .await?;
                    let mut claimed = claimed_from(partner, stale, true);
                    if claimed.len() < count {
                        let reply: Option<Vec<(String, StreamEntries)>> = redis::cmd("XREADGROUP")
                            .arg("GROUP")
                            .arg(GROUP)
                            .arg(consumer)
                            .arg("COUNT")
                            .arg(count - claimed.len())
                            .arg("STREAMS")
                            .arg(&stream)
                            .arg(">")
                            .query_async(c)
                            .await?;
                        for (_, entries) in reply.unwrap_or_default() {
                            claimed.extend(claimed_from(partner, entries, false));
                        }
                    }
                    Ok(claimed)
                })
                .await;
            match result {
                Err(StoreError::Other(e)) if e.contains("NOGROUP") => {
                    tracing::warn!(partner = %partner, "delivery group missing; creating it");
                    self.ensure_group(&stream).await?;
                }
                other => return other,
            }
        }
        Ok(Vec::new())
    }

    async fn begin_attempt(
        &self,
        claimed: &ClaimedBatch,
        now: DateTime<Utc>,
    ) -> Result<BeginAttempt, StoreError> {
        let partner = &claimed.partner_id;
        let Some(report) = self.report_of(partner, &claimed.batch_id).await? else {
            // A queue entry without its report (its keys were lost): nothing to send.
            tracing::error!(batch = %claimed.batch_id, "queued batch has no report; dropping the entry");
            let stream = self.stream_key(partner);
            self.with_connection(async |c| {
                redis::pipe()
                    .cmd("XACK")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(&claimed.entry_id)
                    .cmd("XDEL")
                    .arg(&stream)
                    .arg(&claimed.entry_id)
                    .query_async::<()>(c)
                    .await
            })
            .await?;
            return Ok(BeginAttempt::Skip(BatchState::Failed));
        };
        let keys = self.delivery_keys(partner, &claimed.batch_id, &report);
        let held = BatchResult::held_after_worker_stopped();
        let reply: Vec<String> = self
            .write(async |c| {
                let mut invocation = BEGIN.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                let reply: Vec<String> = invocation
                    .arg(&claimed.entry_id)
                    .arg(now.timestamp_millis())
                    .arg(encode(&held))
                    .arg(&claimed.batch_id)
                    .arg(encode(&Attempt::unrecorded(0, now)))
                    .arg(Attempt::time_text(&now))
                    .invoke_async(c)
                    .await?;
                // `sending` must be on disk before Kiva is called: a Redis that lost it would
                // hand the batch out again as queued, and it would be uploaded twice.
                if reply.first().map(String::as_str) == Some("send") {
                    self.wait_for_copies(c, &keys[0]).await?;
                }
                Ok(reply)
            })
            .await?;
        match reply.first().map(String::as_str) {
            Some("send") => {
                let number = |i: usize| reply.get(i).and_then(|a| a.parse::<u32>().ok());
                let attempt = number(1).unwrap_or(1);
                let budget_from = number(2).unwrap_or(0).min(attempt.saturating_sub(1));
                let queued_at = reply
                    .get(4)
                    .and_then(|ms| ms.parse::<i64>().ok())
                    .and_then(from_ms);
                Ok(BeginAttempt::Send {
                    attempt,
                    attempts_in_budget: attempt - budget_from,
                    batch: QueuedBatch {
                        doc: reply.get(3).cloned().unwrap_or_default(),
                        column_format: report.column_format,
                    },
                    queued_at: queued_at.unwrap_or(report.created_at),
                })
            }
            Some("held") => Ok(BeginAttempt::Held),
            _ => Ok(BeginAttempt::Skip(
                parse_state(reply.get(1).map(String::as_str)).unwrap_or(BatchState::Failed),
            )),
        }
    }

    async fn release_attempt(&self, claimed: &ClaimedBatch) -> Result<(), StoreError> {
        let partner = &claimed.partner_id;
        let Some(report) = self.report_of(partner, &claimed.batch_id).await? else {
            return Ok(());
        };
        let keys = self.delivery_keys(partner, &claimed.batch_id, &report);
        self.write(async |c| {
            let mut invocation = RELEASE_ATTEMPT.prepare_invoke();
            for key in &keys {
                invocation.key(key);
            }
            invocation
                .arg(&claimed.entry_id)
                .arg(&claimed.batch_id)
                .invoke_async::<String>(c)
                .await
        })
        .await
        .map(drop)
    }

    async fn finish_attempt(
        &self,
        claimed: &ClaimedBatch,
        attempt: u32,
        end: &AttemptEnd,
    ) -> Result<(), StoreError> {
        let partner = &claimed.partner_id;
        let report = self
            .report_of(partner, &claimed.batch_id)
            .await?
            .ok_or_else(|| StoreError::Other(format!("report of {} is gone", claimed.batch_id)))?;
        let keys = self.delivery_keys(partner, &claimed.batch_id, &report);
        let _: String = self
            .write(async |c| {
                let mut invocation = FINISH.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                let reply: String = invocation
                    .arg(&claimed.entry_id)
                    .arg(attempt.to_string())
                    .arg(end.state.as_str())
                    .arg(encode(&end.result))
                    .arg(encode(&end.attempt))
                    .arg(
                        end.retry_at
                            .map_or(String::new(), |t| t.timestamp_millis().to_string()),
                    )
                    .arg(&claimed.batch_id)
                    .arg(end.refused_by_kiva)
                    .arg(UNRECORDED)
                    .invoke_async(c)
                    .await?;
                // Kiva's answer lost with a master would leave the batch to be held (or, for
                // a retry, resent): the worker repeats FINISH until the replicas have it.
                self.wait_for_copies(c, &keys[0]).await?;
                Ok(reply)
            })
            .await?;
        Ok(())
    }

    async fn operate_batch(
        &self,
        partner: &PartnerId,
        batch_id: &str,
        command: &OperatorCommand,
    ) -> Result<OperatorOutcome, StoreError> {
        let Some(report) = self.report_of(partner, batch_id).await? else {
            return Ok(OperatorOutcome::NotFound);
        };
        let (kind, now) = (command.action, command.at);
        let keys = self.delivery_keys(partner, batch_id, &report);
        // `from_state` is appended by the script, which alone knows it atomically.
        let action = encode(command);
        let result = BatchResult::marked_delivered(command);
        let allowed: String = ALL_STATES
            .iter()
            .filter(|s| kind.allowed_from(**s))
            .fold(",".to_owned(), |list, s| list + s.as_str() + ",");
        let kind_arg = match kind {
            OperatorActionKind::Resend => "resend",
            OperatorActionKind::MarkDelivered => "mark_delivered",
        };
        let reply: Vec<String> = self
            .write(async |c| {
                let mut invocation = OPERATE.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                let reply = invocation
                    .arg(kind_arg)
                    .arg(&action)
                    .arg(now.timestamp_millis())
                    .arg(encode(&result))
                    .arg(&allowed)
                    .arg(batch_id)
                    .arg(command.expected.map(|v| v.to_string()).unwrap_or_default())
                    .invoke_async::<Vec<String>>(c)
                    .await?;
                // An operator's decision answered as made must survive a failover like a
                // 202: a lost resend or mark-delivered would bring the batch back held.
                if reply.first().map(String::as_str) == Some("done") {
                    self.wait_for_copies(c, &keys[0]).await?;
                }
                Ok(reply)
            })
            .await?;
        match reply.first().map(String::as_str) {
            Some("done") => {
                let batch = self.batches_of_one(&report, batch_id).await?;
                Ok(batch.map_or(OperatorOutcome::NotFound, |b| {
                    OperatorOutcome::Done(Box::new(b))
                }))
            }
            Some("conflict") => Ok(OperatorOutcome::Conflict(parse_state(
                reply.get(1).map(String::as_str),
            )?)),
            Some("changed") => reply
                .get(1)
                .and_then(|v| BatchVersion::parse(v))
                .map(OperatorOutcome::Changed)
                .ok_or_else(|| StoreError::Other(format!("unexpected OPERATE reply {reply:?}"))),
            _ => Ok(OperatorOutcome::NotFound),
        }
    }

    async fn queued_batches(&self, partner: &PartnerId) -> Result<Vec<String>, StoreError> {
        let stream = self.stream_key(partner);
        let entries: StreamEntries = self
            .with_connection(async |c| {
                redis::cmd("XRANGE")
                    .arg(&stream)
                    .arg("-")
                    .arg("+")
                    .query_async(c)
                    .await
            })
            .await?;
        Ok(claimed_from(partner, entries, false)
            .into_iter()
            .map(|c| c.batch_id)
            .collect())
    }

    async fn queue_summary(&self, partner: &PartnerId) -> Result<QueueSummary, StoreError> {
        self.read_queue_summary(partner).await
    }

    async fn batch(
        &self,
        partner: &PartnerId,
        batch_id: &str,
    ) -> Result<Option<(Batch, String)>, StoreError> {
        let Some(report) = self.report_of(partner, batch_id).await? else {
            return Ok(None);
        };
        let batch = self.batches_of_one(&report, batch_id).await?;
        Ok(batch.map(|b| (b, report.branch)))
    }

    async fn purge_settled(
        &self,
        partner: &PartnerId,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let index = self.key(partner, "reports");
        // Ids are UUIDv7, so every report created before `before` sorts below this one.
        let floor = oldest_id_at(before);
        let mut lower = "-".to_owned();
        let (mut purged, mut scanned) = (0, 0);
        while purged < limit && scanned < MAX_SCANNED_PER_PAGE * 10 {
            let ids: Vec<String> = self
                .with_connection(async |c| {
                    redis::cmd("ZRANGEBYLEX")
                        .arg(&index)
                        .arg(&lower)
                        .arg(format!("({floor}"))
                        .arg("LIMIT")
                        .arg(0)
                        .arg(100)
                        .query_async(c)
                        .await
                })
                .await?;
            let Some(last) = ids.last() else { break };
            lower = format!("({last}");
            for id in &ids {
                scanned += 1;
                let Ok(id) = Uuid::parse_str(id) else {
                    continue;
                };
                let Some(report) = self.report_doc(partner, id).await? else {
                    continue;
                };
                if !report.status.is_settled() {
                    continue;
                }
                let mut invocation = PURGE.prepare_invoke();
                invocation
                    .key(self.report_key(partner, id))
                    .key(&index)
                    .key(self.key(partner, &format!("reports:branch:{}", report.branch)))
                    .key(self.key(
                        partner,
                        &format!(
                            "period:{}:reports",
                            report.period.map(|p| p.to_string()).unwrap_or_default()
                        ),
                    ));
                for batch in report.batch_ids() {
                    let key = self.batch_key(partner, &batch);
                    invocation
                        .key(format!("{key}:attempts"))
                        .key(format!("{key}:actions"))
                        .key(key);
                }
                invocation.arg(id.to_string());
                let deleted: i64 = self
                    .with_connection(async |c| invocation.invoke_async(c).await)
                    .await?;
                purged += deleted as usize;
                if purged == limit {
                    break;
                }
            }
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_is_named_as_serde_names_it() {
        // The scripts compare these names with the `state` fields serde wrote.
        for state in ALL_STATES {
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.as_str())
            );
        }
    }
}
