//! The delivery queue takes a batch of any kind without a change to its code: a kind only this
//! test knows (it records what it was asked to send and answers as told) goes through the
//! store's queue and the worker, is held on a 500, resent by an operator and delivered, on
//! every store, while a repayments report in the same queue is delivered as always.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use repayment_gateway::delivery::kind::{BatchKind, Unsent, new_batch};
use repayment_gateway::domain::{Amount, ColumnFormat, PartnerId, Period};
use repayment_gateway::kiva::{KivaAnswer, LoanProblem, SendOutcome, Severity, UploadResult};
use repayment_gateway::store::{BatchDoc, KivaProblem, QueuedBatch, Report, ReportStatus};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::helpers::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Note {
    loan_id: String,
    text: String,
}

/// A kind of batch the gateway does not have: notes about loans.
struct Notes {
    name: &'static str,
    /// The HTTP status of each next answer (200 once they run out).
    answers: Mutex<VecDeque<u16>>,
    /// Every call: the partner and the notes it carried.
    sent: Mutex<Vec<(String, Vec<Note>)>>,
}

impl Notes {
    fn new(name: &'static str, answers: &[u16]) -> Arc<Self> {
        Arc::new(Self {
            name,
            answers: Mutex::new(answers.iter().copied().collect()),
            sent: Mutex::default(),
        })
    }

    fn sent(&self) -> Vec<(String, Vec<Note>)> {
        self.sent.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl BatchKind for Notes {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn send(&self, partner: &PartnerId, batch: &QueuedBatch) -> Result<SendOutcome, Unsent> {
        #[derive(Deserialize)]
        struct Stored {
            items: Vec<Note>,
        }
        let stored: Stored = serde_json::from_str(&batch.doc).map_err(|e| Unsent(e.to_string()))?;
        let status = self.answers.lock().unwrap().pop_front().unwrap_or(200);
        self.sent
            .lock()
            .unwrap()
            .push((partner.to_string(), stored.items));
        let delivered = status == 200;
        Ok(SendOutcome::Answered(KivaAnswer {
            status,
            retry_after: None,
            body_excerpt: format!(r#"{{"answered":{status}}}"#),
            result: UploadResult {
                upload_id: delivered.then(|| "notes-1".into()),
                problems: if delivered {
                    vec![LoanProblem {
                        loan_id: Some("L-7".into()),
                        code: Some("unknown_loan".into()),
                        details: None,
                        severity: Severity::Error,
                    }]
                } else {
                    Vec::new()
                },
                ..UploadResult::default()
            },
            token_refreshed: false,
        }))
    }

    fn refused(&self, _batch: &QueuedBatch, problems: &[KivaProblem]) -> usize {
        problems.iter().filter(|p| p.severity == "error").count()
    }
}

fn notes() -> Vec<Note> {
    ["L-7", "L-8"]
        .iter()
        .map(|loan| Note {
            loan_id: loan.to_string(),
            text: format!("a note about {loan}"),
        })
        .collect()
}

/// Queues one batch of `kind`'s notes through the store's queue API; its report's id.
async fn enqueue(rig: &DeliveryRig, kind: &dyn BatchKind) -> String {
    let id = Uuid::now_v7();
    let items = notes();
    let report = Report {
        id,
        partner_id: PartnerId::parse(THREE_COL).unwrap(),
        branch: "Nairobi".into(),
        submitted_by: "notes intake".into(),
        created_at: repayment_gateway::delivery::Clock::now(&*rig.clock),
        period: Some(Period::parse("2026-09").unwrap()),
        correction: false,
        corrects_any_branch: false,
        column_format: ColumnFormat::ThreeColumn,
        status: ReportStatus::Queued,
        repayment_count: items.len(),
        total_amount: Amount::zero(),
        batch_count: 1,
        refused_by_kiva: 0,
    };
    let doc = BatchDoc {
        id: format!("{id}.1"),
        report_id: id,
        number: 1,
        repayment_count: items.len(),
        total_amount: Amount::zero(),
        repayments: Vec::new(),
    };
    let batch = new_batch(kind, &doc, &items);
    rig.app
        .store
        .enqueue(&report, std::slice::from_ref(&batch))
        .await
        .unwrap();
    // A repeat changes nothing.
    rig.app.store.enqueue(&report, &[batch]).await.unwrap();
    id.to_string()
}

async fn a_second_kind_of_batch_is_sent_held_resent_and_delivered_beside_repayments(
    backend: Backend,
) {
    let rig = spawn_delivery_rig(backend).await;
    let kind = Notes::new("test_notes", &[500]);
    let notes_report = enqueue(&rig, kind.as_ref()).await;
    let repayments = rig.submit(NAIROBI, &three_column_report(3, "10.00")).await;
    let worker = rig.worker_with(kind.clone());

    assert_eq!(rig.drain(&worker).await, 2, "one call for each batch");
    assert_eq!(kind.sent(), [(THREE_COL.to_owned(), notes())]);
    let report = rig.report(&notes_report).await;
    let batch = &report["batches"][0];
    assert_eq!(report["status"], "needs_attention", "{report}");
    assert_eq!(batch["state"], "held", "{batch}");
    assert_eq!(batch["attempts"][0]["http_status"], 500);
    assert_eq!(batch["attempts"][0]["kiva_body"], r#"{"answered":500}"#);
    let uploads = rig.sandbox.uploads();
    assert_eq!(
        uploads.len(),
        1,
        "only the repayments went to Kiva's repayments"
    );
    assert!(!uploads[0].body.contains("note"), "{}", uploads[0].body);
    assert_eq!(rig.report(&repayments).await["status"], "delivered");

    assert_eq!(
        rig.drain(&worker).await,
        0,
        "a held batch is not sent again"
    );
    let batch_id = format!("{notes_report}.1");
    assert_eq!(rig.operate(NAIROBI, &batch_id, "resend").await.status, 403);
    let resent = rig.operate(HEAD_OFFICE, &batch_id, "resend").await;
    assert_eq!(resent.status, 200, "{}", resent.text);
    assert_eq!(resent.body["state"], "queued");

    assert_eq!(rig.drain(&worker).await, 1);
    assert_eq!(kind.sent().len(), 2);
    let report = rig.report(&notes_report).await;
    let batch = &report["batches"][0];
    assert_eq!(batch["state"], "delivered", "{batch}");
    assert_eq!(batch["result"]["upload_id"], "notes-1");
    assert_eq!(batch["result"]["problems"][0]["loan_id"], "L-7");
    assert_eq!(batch["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(batch["attempts"][1]["http_status"], 200);
    assert_eq!(batch["operator_actions"][0]["action"], "resend");
    assert_eq!(report["status"], "delivered_with_problems");
    assert_eq!(report["refused_by_kiva"], 1);
    assert_eq!(rig.sandbox.uploads().len(), 1);
    assert_eq!(rig.report(&repayments).await["status"], "delivered");
}

async fn a_batch_of_a_kind_the_worker_does_not_know_is_held_unsent(backend: Backend) {
    let rig = spawn_delivery_rig(backend).await;
    let journals = Notes::new("journals", &[]);
    let id = enqueue(&rig, journals.as_ref()).await;

    assert_eq!(rig.drain(&rig.worker()).await, 0);
    let report = rig.report(&id).await;
    let batch = &report["batches"][0];
    assert_eq!(batch["state"], "held", "{batch}");
    let reason = batch["result"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("\"journals\"") && reason.contains("nothing was sent"),
        "{reason}"
    );
    assert_eq!(batch["attempts"][0]["error"], reason);
    assert!(rig.sandbox.uploads().is_empty());

    // A gateway that knows the kind sends it once an operator resends it.
    let batch_id = format!("{id}.1");
    assert_eq!(
        rig.operate(HEAD_OFFICE, &batch_id, "resend").await.status,
        200
    );
    assert_eq!(rig.drain(&rig.worker_with(journals.clone())).await, 1);
    assert_eq!(journals.sent().len(), 1);
    assert_eq!(rig.report(&id).await["batches"][0]["state"], "delivered");
}

on_both_stores!(
    a_second_kind_of_batch_is_sent_held_resent_and_delivered_beside_repayments,
    a_batch_of_a_kind_the_worker_does_not_know_is_held_unsent,
);
