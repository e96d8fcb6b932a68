//! The repayments kind: a batch is one upload of a report's repayments (KIVA.md, repayments
//! endpoint), and Kiva's problems name the loans it refused.

use std::collections::HashSet;
use std::sync::Arc;

use super::kind::{BatchKind, REPAYMENTS, Unsent};
use crate::domain::{ColumnFormat, KivaRepayment, KivaRequest, PartnerId};
use crate::kiva::{KivaClient, SendOutcome};
use crate::store::{BatchDoc, KivaProblem, QueuedBatch};

/// Sends one batch body to Kiva. `KivaClient` in production.
#[async_trait::async_trait]
pub trait Uploader: Send + Sync + 'static {
    async fn send(&self, partner: &PartnerId, body: bytes::Bytes) -> SendOutcome;
}

#[async_trait::async_trait]
impl Uploader for KivaClient {
    async fn send(&self, partner: &PartnerId, body: bytes::Bytes) -> SendOutcome {
        self.send_repayments(partner, body).await
    }
}

pub struct Repayments {
    uploader: Arc<dyn Uploader>,
}

impl Repayments {
    pub fn new(uploader: Arc<dyn Uploader>) -> Self {
        Self { uploader }
    }
}

fn read(batch: &QueuedBatch) -> Result<BatchDoc, Unsent> {
    serde_json::from_str(&batch.doc).map_err(|e| {
        Unsent(format!(
            "the stored repayments can't be read ({e}); nothing was sent"
        ))
    })
}

#[async_trait::async_trait]
impl BatchKind for Repayments {
    fn name(&self) -> &'static str {
        REPAYMENTS
    }

    async fn send(&self, partner: &PartnerId, batch: &QueuedBatch) -> Result<SendOutcome, Unsent> {
        let body = kiva_body(&read(batch)?, batch.column_format);
        Ok(self.uploader.send(partner, body).await)
    }

    /// Counted as the report shows them: a repayment whose loan has an `error`.
    fn refused(&self, batch: &QueuedBatch, problems: &[KivaProblem]) -> usize {
        let refused: HashSet<&str> = problems
            .iter()
            .filter(|p| p.severity == "error")
            .filter_map(|p| p.loan_id.as_deref())
            .collect();
        if refused.is_empty() {
            return 0;
        }
        read(batch).map_or(0, |doc| {
            doc.repayments
                .iter()
                .filter(|r| refused.contains(r.loan_id.as_str()))
                .count()
        })
    }
}

/// The body of one call to Kiva: `client_id` only for three-column partners, amounts as JSON
/// numbers with exactly the digits accepted.
pub fn kiva_body(batch: &BatchDoc, format: ColumnFormat) -> bytes::Bytes {
    let repayments = batch
        .repayments
        .iter()
        .map(|r| KivaRepayment::new(format, &r.loan_id, r.client_id.as_ref(), r.amount))
        .collect();
    serde_json::to_vec(&KivaRequest { repayments })
        .expect("Kiva requests serialize")
        .into()
}
