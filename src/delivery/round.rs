//! One round of the worker: each partner claimed for on its own, slots shared fairly.

use std::sync::atomic::Ordering;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;

use super::{Partner, Round, Worker};
use crate::domain::PartnerId;
use crate::store::{ClaimedBatch, StoreError};

impl Worker {
    /// One round: queue due retries, claim up to `concurrency` batches (taking over those
    /// another worker left too long), send them, record the outcomes. Tests drive the worker
    /// with this, step by step.
    ///
    /// Each partner's keys may live on another node, so each partner is claimed for on its
    /// own: one partner's store error (a node refusing writes, failing over) is logged and
    /// skips that partner only; batches claimed for others are still sent this round. The
    /// round is an error only when no partner's keys answered. Slots are shared fairly: each
    /// partner first gets an equal share (at least one slot, starting from a partner that
    /// moves on every round, so with fewer slots than partners each gets its turn), then
    /// slots left over go to partners with more queued, so a backlog at one partner neither
    /// waits behind nor delays another's first batch by more than a round.
    pub async fn run_once(&self) -> Result<Round, StoreError> {
        self.health.round_started();
        let now = self.clock.now();
        let count = self.partners.len();
        if count == 0 {
            return Ok(Round::default());
        }
        let first = self.next_partner.fetch_add(1, Ordering::Relaxed) % count;
        let order: Vec<&Partner> = (0..count)
            .map(|i| &self.partners[(first + i) % count])
            .collect();
        let slots = self.settings.concurrency;
        let share = (slots / count).max(1);
        // The first pass asks every partner at once, so a node that hangs until the store
        // timeout delays only the partners whose keys it holds.
        let firsts = futures_util::future::join_all(order.iter().enumerate().map(
            |(place, partner)| async move {
                // With fewer slots than partners, those after the last slot only get what the
                // others leave.
                let want = if place < slots { share } else { 0 };
                (
                    partner,
                    want,
                    self.claim_for(&partner.id, now, want, true).await,
                )
            },
        ))
        .await;
        let mut claimed = Vec::new();
        let mut answered = 0;
        let mut last_error = None;
        let mut more_queued = Vec::new();
        for (partner, want, result) in firsts {
            match result {
                Ok(batches) => {
                    answered += 1;
                    if batches.len() == want {
                        more_queued.push(*partner);
                    }
                    claimed.extend(batches);
                }
                Err(error) => {
                    tracing::warn!(partner = %partner.id, %error, "this partner's deliveries paused this round: store error");
                    last_error = Some(error);
                }
            }
        }
        // Spare slots, in this round's order: the partner with a backlog takes what the
        // others did not need.
        for partner in more_queued {
            let room = slots.saturating_sub(claimed.len());
            if room == 0 {
                break;
            }
            match self.claim_for(&partner.id, now, room, false).await {
                Ok(batches) => claimed.extend(batches),
                Err(error) => {
                    tracing::warn!(partner = %partner.id, %error, "could not claim more for this partner this round")
                }
            }
        }
        if answered == 0
            && let Some(error) = last_error
        {
            return Err(error);
        }
        let round_claimed = claimed.len();
        let sent = futures_util::stream::iter(claimed)
            .map(|(c, claimed_at)| self.deliver(c, claimed_at))
            .buffer_unordered(self.settings.concurrency)
            .fold(0, async |sent, result| match result {
                Ok(true) => sent + 1,
                Ok(false) => sent,
                Err(error) => {
                    // The entry stays pending and is taken over after the claim deadline.
                    tracing::warn!(%error, "delivery interrupted");
                    sent
                }
            })
            .await;
        Ok(Round {
            claimed: round_claimed,
            sent,
        })
    }

    /// Queues the partner's due retries (when `promote`) and claims up to `want` of its
    /// batches, each with the time it was claimed.
    async fn claim_for(
        &self,
        partner: &PartnerId,
        now: DateTime<Utc>,
        want: usize,
        promote: bool,
    ) -> Result<Vec<(ClaimedBatch, Instant)>, StoreError> {
        if promote {
            self.store.promote_due_retries(partner, now).await?;
        }
        if want == 0 {
            return Ok(Vec::new());
        }
        // Taken before the call: the store starts the entry's idle time no earlier.
        let claimed_at = Instant::now();
        Ok(self
            .store
            .claim_batches(partner, &self.consumer, want, self.claim_deadline())
            .await?
            .into_iter()
            .map(|c| (c, claimed_at))
            .collect())
    }
}
