//! What is particular to one kind of batch (repayments today, journals next): the call to
//! Kiva and how Kiva's answer counts against the batch's items. Everything else about a batch
//! (the queue, claiming, fencing, retry, hold and reject, operator actions, attempt history,
//! retention) is the same for every kind and knows none of them.
//!
//! A batch's kind is the `kind` field of its stored document. Repayments batches have none, so
//! every batch stored before kinds existed reads as what it is, and a repayments batch is
//! written byte for byte as before.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::PartnerId;
use crate::kiva::SendOutcome;
use crate::store::{BatchDoc, KivaProblem, NewBatch, QueuedBatch};

/// The kind of a batch whose document names none.
pub const REPAYMENTS: &str = "repayments";

/// What one kind of batch needs from the worker.
#[async_trait::async_trait]
pub trait BatchKind: Send + Sync + 'static {
    /// The `kind` its batches are stored with (`repayments` is stored as no kind at all).
    fn name(&self) -> &'static str;

    /// One call to Kiva for this batch, from what the store kept for it. `Err` means nothing
    /// was sent (the document is not one this kind can read): the batch is held, with the
    /// reason, for an operator.
    async fn send(&self, partner: &PartnerId, batch: &QueuedBatch) -> Result<SendOutcome, Unsent>;

    /// How many of the batch's items Kiva refused, from the problems of its answer (for a
    /// delivered batch).
    fn refused(&self, batch: &QueuedBatch, problems: &[KivaProblem]) -> usize;
}

/// Why a batch was not sent; kept as the reason it is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsent(pub String);

/// The kinds a worker sends, by name.
#[derive(Clone, Default)]
pub struct BatchKinds {
    by_name: HashMap<&'static str, Arc<dyn BatchKind>>,
}

impl BatchKinds {
    /// Registers `kind` (replacing one of the same name).
    pub fn with(mut self, kind: Arc<dyn BatchKind>) -> Self {
        self.by_name.insert(kind.name(), kind);
        self
    }

    /// The kind that sends `batch`: one this gateway does not know is never sent (a batch of
    /// a newer gateway's kind, read by an older one, waits for an operator instead).
    pub fn of(&self, batch: &QueuedBatch) -> Result<&dyn BatchKind, Unsent> {
        let name = kind_of(&batch.doc)?;
        self.by_name
            .get(name.as_str())
            .map(|kind| &**kind)
            .ok_or_else(|| {
                Unsent(format!(
                    "a batch of kind {name:?}, which this gateway does not send; nothing was \
                     sent: resend it from a gateway that knows the kind"
                ))
            })
    }
}

/// The name of the kind that wrote `doc`.
fn kind_of(doc: &str) -> Result<String, Unsent> {
    #[derive(Deserialize)]
    struct Kind {
        #[serde(default)]
        kind: Option<String>,
    }
    let read: Kind = serde_json::from_str(doc).map_err(|e| {
        Unsent(format!(
            "the stored batch can't be read ({e}); nothing was sent"
        ))
    })?;
    Ok(read.kind.unwrap_or_else(|| REPAYMENTS.to_owned()))
}

/// A batch of `kind` for `Queue::enqueue`: the `BatchDoc` that reports and pages read (its
/// repayments empty, `repayment_count` its number of items), with the kind's name and
/// `items`, what the kind sends, beside it in the same document.
pub fn new_batch(kind: &dyn BatchKind, doc: &BatchDoc, items: &impl Serialize) -> NewBatch {
    // A map built by hand rather than `#[serde(flatten)]`, which the crate-wide
    // `arbitrary_precision` breaks.
    let mut stored = serde_json::to_value(doc).expect("batch documents serialize");
    if let Some(fields) = stored.as_object_mut() {
        fields.insert("kind".into(), kind.name().into());
        fields.insert(
            "items".into(),
            serde_json::to_value(items).expect("batch items serialize"),
        );
    }
    NewBatch {
        id: doc.id.clone(),
        doc: stored.to_string(),
    }
}
