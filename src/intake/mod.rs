//! Request body → `RepaymentReport`: JSON syntax, the published JSON Schema, then the partner's
//! column rules; every problem is collected so one answer lists them all (the first
//! `MAX_LISTED_VIOLATIONS` of them, with the total).
//!
//! The work and memory per body are bounded whatever it holds: see `bounded`, and
//! `Intake::large_body_permit`, which limits how many large bodies are read and parsed at once.

mod bounded;
mod csv;
mod files;
pub mod schema;
mod xlsx;
mod xlsx_scan;

pub use self::csv::delimiter_named;
pub use self::xlsx_scan::MAX_UNPACKED_BYTES;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use serde_json::Value;

use crate::domain::{
    Amount, ClientId, ColumnFormat, IdError, LoanId, PartnerId, Period, Repayment, RepaymentReport,
    column_rule_violations,
};

/// One thing wrong with a submitted report, at the JSON Pointer (RFC 6901) of the offending
/// value; for a report sent as a file, also where in the file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Violation {
    /// JSON Pointer into the report (for a file, into the same report as JSON), e.g.
    /// `/repayments/3/amount`; `""` for a problem with the file as a whole.
    #[schema(example = "/repayments/3/amount")]
    pub pointer: String,
    /// What is wrong, in plain words.
    #[schema(example = "\"1.2345\" has 4 decimal places; at most 3 are allowed")]
    pub detail: String,
    /// CSV only: the line (1-based) the repayment starts on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = 5)]
    pub line: Option<u64>,
    /// Excel only: the sheet's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "Sheet1")]
    pub sheet: Option<String>,
    /// Excel only: the cell, column letter and row number, when the problem is one cell's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "C5")]
    pub cell: Option<String>,
    /// Excel only: the row number (1-based, as Excel shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = 5)]
    pub row: Option<u64>,
    /// Excel only: the column letter, when the problem is one cell's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "C")]
    pub column: Option<String>,
}

impl Violation {
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            detail: detail.into(),
            line: None,
            sheet: None,
            cell: None,
            row: None,
            column: None,
        }
    }
}

/// Most violations listed in one answer; the total is always given. A report of 10,000 bad
/// lines, or a body of a million unknown properties, would otherwise get a 422 of megabytes.
pub const MAX_LISTED_VIOLATIONS: usize = 100;

/// Violations in document order, keeping only the first `MAX_LISTED_VIOLATIONS` (and never
/// more than twice that in memory) while counting them all.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Violations {
    kept: Vec<Violation>,
    total: usize,
}

impl Violations {
    pub fn push(&mut self, violation: Violation) {
        self.push_with(|| violation);
    }

    pub fn push_with(&mut self, violation: impl FnOnce() -> Violation) {
        self.total += 1;
        self.kept.push(violation());
        if self.kept.len() >= 2 * MAX_LISTED_VIOLATIONS {
            self.trim();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    fn trim(&mut self) {
        sort_in_document_order(&mut self.kept);
        self.kept.truncate(MAX_LISTED_VIOLATIONS);
    }

    /// The first violations in document order, and how many there are in all.
    pub fn into_listed(mut self) -> (Vec<Violation>, usize) {
        self.trim();
        (self.kept, self.total)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("the body is not valid JSON: {message}{}", position(*line, *column))]
    MalformedJson {
        message: String,
        line: usize,
        column: usize,
    },
    #[error(
        "the report has more than {max} repayments (at least {at_least}); at most {max} are \
         accepted in one report: split it"
    )]
    TooManyRepayments { at_least: usize, max: usize },
    #[error("this API key may not submit reports for partner {0:?}")]
    PartnerNotAllowed(String),
    #[error("the report could not be read: the parser failed")]
    ParserFailed,
    /// A file that is not what its content type says (e.g. not a workbook at all).
    #[error("{0}")]
    MalformedFile(String),
    /// A workbook that unpacks to more than `MAX_UNPACKED_BYTES`.
    #[error("{0}")]
    TooLargeUnpacked(String),
    #[error("the report has {total} problem(s)")]
    Invalid {
        /// The first `MAX_LISTED_VIOLATIONS`, in document order.
        listed: Vec<Violation>,
        total: usize,
    },
}

/// A report sent as a file, and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// `text/csv`; the delimiter when given, else detected.
    Csv { delimiter: Option<u8> },
    /// An `.xlsx` workbook; the sheet when named, else the first.
    Xlsx { sheet: Option<String> },
}

/// What a file can't hold, given as query parameters, placed in the report exactly where the
/// JSON path has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileFields {
    pub period: Option<String>,
    pub partner_id: Option<String>,
}

/// Which partners an API key may act for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartnerScope {
    One(PartnerId),
    All,
}

impl PartnerScope {
    pub fn allows(&self, partner: &PartnerId) -> bool {
        match self {
            PartnerScope::One(p) => p == partner,
            PartnerScope::All => true,
        }
    }
}

/// Bodies larger than this are read and parsed only with a permit from
/// `Intake::large_body_permit`, and parsed by `Intake::read_large`: small reports never wait,
/// large ones queue.
pub const LARGE_BODY_BYTES: usize = 256 * 1024;

type ParseJob = Box<dyn FnOnce() + Send>;

/// Reads reports for the partners this gateway is configured for.
#[derive(Clone)]
pub struct Intake {
    column_formats: HashMap<PartnerId, ColumnFormat>,
    max_repayments: usize,
    large_bodies: Arc<Semaphore>,
    parsers: std::sync::mpsc::Sender<ParseJob>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("column_formats", &self.column_formats)
            .field("max_repayments", &self.max_repayments)
            .finish_non_exhaustive()
    }
}

impl Intake {
    /// The partner's column format, when it is configured.
    pub fn column_format(&self, partner: &PartnerId) -> Option<ColumnFormat> {
        self.column_formats.get(partner).copied()
    }

    pub fn new(column_formats: HashMap<PartnerId, ColumnFormat>, max_repayments: usize) -> Self {
        // One large body per core: parsing is CPU-bound, so more at once only adds memory.
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            column_formats,
            max_repayments,
            large_bodies: Arc::new(Semaphore::new(cores)),
            parsers: spawn_parsers(cores),
        }
    }

    /// Waits for a turn to read and parse a body larger than `LARGE_BODY_BYTES`; hold the
    /// permit until `read_large` has returned.
    pub async fn large_body_permit(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.large_bodies)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// `read` on one of the intake's own parser threads, one per core, so that parsing a large
    /// body never blocks an HTTP worker. Always the same few threads: with glibc's malloc, each
    /// new thread that parses a large body gets an arena of its own that keeps its peak size,
    /// and a general blocking pool took the process from 100 to 240 MB under hostile bodies.
    pub async fn read_large(
        &self,
        body: bytes::Bytes,
        scope: PartnerScope,
    ) -> Result<RepaymentReport, IntakeError> {
        self.on_parser_thread(move |intake| intake.read(&body, &scope))
            .await
    }

    /// `read` (or `read_file`) on one of the intake's parser threads; see `read_large`.
    pub async fn on_parser_thread(
        &self,
        read: impl FnOnce(&Intake) -> Result<RepaymentReport, IntakeError> + Send + 'static,
    ) -> Result<RepaymentReport, IntakeError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let intake = self.clone();
        let job: ParseJob = Box::new(move || {
            // A panic (a bug) must not take a parser thread away: the caller sees `done`
            // dropped and answers with an internal error.
            let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(&intake)));
            if let Ok(read) = read {
                let _ = done.send(read);
            }
        });
        if self.parsers.send(job).is_err() {
            return Err(IntakeError::ParserFailed);
        }
        result.await.unwrap_or(Err(IntakeError::ParserFailed))
    }

    pub fn read(&self, body: &[u8], scope: &PartnerScope) -> Result<RepaymentReport, IntakeError> {
        let parsed = bounded::parse(body, self.max_repayments)?;
        self.check(&parsed.value, parsed.unknown, scope)
    }

    /// A CSV or Excel file: read into the very tree `read` checks, each violation then given
    /// its place in the file.
    pub fn read_file(
        &self,
        body: &[u8],
        kind: &FileKind,
        fields: &FileFields,
        scope: &PartnerScope,
    ) -> Result<RepaymentReport, IntakeError> {
        let format = self.file_format(fields.partner_id.as_deref(), scope)?;
        let table = match kind {
            FileKind::Csv { delimiter } => {
                self::csv::read(body, *delimiter, format, self.max_repayments)?
            }
            FileKind::Xlsx { sheet } => {
                self::xlsx::read(body, sheet.as_deref(), format, self.max_repayments)?
            }
        };
        let value = files::as_json(
            &table,
            fields.period.as_deref(),
            fields.partner_id.as_deref(),
        );
        match self.check(&value, Violations::default(), scope) {
            Err(IntakeError::Invalid { listed, total }) => Err(IntakeError::Invalid {
                listed: files::locate(&table, listed),
                total,
            }),
            read => read,
        }
    }

    /// The column format of the partner a file is for, which tells its columns apart when it
    /// has no header; `None` when the partner is not known (`check` then says why).
    fn file_format(
        &self,
        partner_id: Option<&str>,
        scope: &PartnerScope,
    ) -> Result<Option<ColumnFormat>, IntakeError> {
        let id = match (partner_id.map(PartnerId::parse), scope) {
            (Some(Ok(id)), scope) if !scope.allows(&id) => {
                return Err(IntakeError::PartnerNotAllowed(id.to_string()));
            }
            (Some(Ok(id)), _) => id,
            (None, PartnerScope::One(id)) => id.clone(),
            _ => return Ok(None),
        };
        Ok(self.column_formats.get(&id).copied())
    }

    /// The schema, then the partner's column rules, over a bounded tree of the report;
    /// `found` holds what was already found while reading it.
    fn check(
        &self,
        value: &Value,
        mut found: Violations,
        scope: &PartnerScope,
    ) -> Result<RepaymentReport, IntakeError> {
        let partner = self.partner(value, scope, &mut found)?;
        let items = value
            .get("repayments")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        let entries: Vec<Entry> = items
            .iter()
            .enumerate()
            .map(|(i, item)| read_entry(i, item))
            .collect();

        // Schema violations go straight to the capped list; only their pointers are kept
        // (bounded by the tree, itself bounded by `max_repayments`), to tell which of the
        // entries' own problems the schema already reported.
        let mut at_schema = HashSet::new();
        schema::for_each_violation(value, |mut violation| {
            // An amount's digits are judged on its literal text by `Amount::parse`, for
            // numbers and strings alike; its message replaces the schema's, so `1.5000` and
            // `"1.5000"` get the same answer.
            if let Some(entry) = amount_position(&violation.pointer).and_then(|i| entries.get(i))
                && entry.amount_is_text
                && let Some(problem) = entry
                    .problems
                    .iter()
                    .find(|p| p.pointer == violation.pointer)
            {
                violation.detail.clone_from(&problem.detail);
            }
            at_schema.insert(violation.pointer.clone());
            found.push(violation);
        });
        // A problem at a pointer the schema already reported, or inside it, is the same one.
        let flagged = |pointer: &str| {
            at_schema.contains(pointer)
                || pointer
                    .match_indices('/')
                    .any(|(i, _)| at_schema.contains(&pointer[..i]))
        };

        // Required: a missing period is the schema's violation.
        let period = match value.get("period").and_then(Value::as_str) {
            Some(text) => match Period::parse(text) {
                Ok(period) => Some(period),
                Err(message) => {
                    if !flagged("/period") {
                        found.push(Violation::new("/period", message));
                    }
                    None
                }
            },
            None => None,
        };
        let correction = value
            .get("correction")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        for problem in entries.iter().flat_map(|e| &e.problems) {
            if !flagged(&problem.pointer) {
                found.push(problem.clone());
            }
        }
        if let Some((_, format)) = &partner {
            // Identifiers are checked even where the amount was unreadable, so a duplicate
            // is reported in the same answer as the bad amount.
            let ids = entries.iter().enumerate().filter_map(|(i, e)| {
                let client_unreadable =
                    e.problems.iter().any(|p| p.pointer.ends_with("/client_id"));
                match (&e.loan_id, client_unreadable) {
                    (Some(loan), false) => Some((i, loan, e.client_id.as_ref())),
                    _ => None,
                }
            });
            for rule in column_rule_violations(*format, ids) {
                let pointer = match rule.field {
                    Some(field) => format!("/repayments/{}/{field}", rule.position),
                    None => format!("/repayments/{}", rule.position),
                };
                found.push(Violation::new(pointer, rule.message));
            }
        }

        if !found.is_empty() {
            let (listed, total) = found.into_listed();
            return Err(IntakeError::Invalid { listed, total });
        }
        let (partner_id, format) = partner.expect("a missing partner is a violation");
        let repayments = entries
            .into_iter()
            .map(|e| match (e.loan_id, e.amount) {
                (Some(loan_id), Some(amount)) => Repayment {
                    loan_id,
                    client_id: e.client_id,
                    amount,
                },
                _ => unreachable!("an unreadable entry is a violation"),
            })
            .collect();
        Ok(RepaymentReport::from_checked(
            partner_id,
            format,
            period.expect("a missing period is a violation"),
            repayments,
        )
        .with_correction(correction))
    }

    /// The partner the report is for: named by `partner_id`, or implied by a single-partner key.
    fn partner(
        &self,
        value: &Value,
        scope: &PartnerScope,
        violations: &mut Violations,
    ) -> Result<Option<(PartnerId, ColumnFormat)>, IntakeError> {
        let named = match value.get("partner_id") {
            None => None,
            Some(Value::String(text)) => match PartnerId::parse(text) {
                Ok(id) => Some(id),
                // The schema already reported the malformed id.
                Err(_) => return Ok(None),
            },
            Some(_) => return Ok(None),
        };
        let id = match (named, scope) {
            (Some(id), scope) if !scope.allows(&id) => {
                return Err(IntakeError::PartnerNotAllowed(id.to_string()));
            }
            (Some(id), _) => id,
            (None, PartnerScope::One(id)) => id.clone(),
            (None, PartnerScope::All) => {
                violations.push(Violation::new(
                    "/partner_id",
                    "partner_id is required: this admin key serves several partners",
                ));
                return Ok(None);
            }
        };
        match self.column_formats.get(&id) {
            Some(format) => Ok(Some((id, *format))),
            None => {
                violations.push(Violation::new(
                    "/partner_id",
                    format!(
                        "{:?} is not a partner this gateway is configured for",
                        id.as_str()
                    ),
                ));
                Ok(None)
            }
        }
    }
}

/// `count` threads that run parse jobs until the last `Intake` clone is dropped.
/// " (line L, column C)", or nothing when the position is not known (line 0).
fn position(line: usize, column: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(" (line {line}, column {column})")
    }
}

fn spawn_parsers(count: usize) -> std::sync::mpsc::Sender<ParseJob> {
    let (jobs, queue) = std::sync::mpsc::channel::<ParseJob>();
    let queue = Arc::new(std::sync::Mutex::new(queue));
    for n in 0..count {
        let queue = Arc::clone(&queue);
        std::thread::Builder::new()
            .name(format!("intake-parser-{n}"))
            .spawn(move || {
                loop {
                    // The lock is held only while waiting for a job, not while running it.
                    let job = match queue.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            })
            .expect("a parser thread starts");
    }
    jobs
}

/// `Some(3)` for `/repayments/3/amount`.
fn amount_position(pointer: &str) -> Option<usize> {
    pointer
        .strip_prefix("/repayments/")?
        .strip_suffix("/amount")?
        .parse()
        .ok()
}

/// What could be read of one entry of `repayments`, and what could not.
struct Entry {
    loan_id: Option<LoanId>,
    client_id: Option<ClientId>,
    amount: Option<Amount>,
    /// The amount was a JSON number or string, judged on its text by `Amount::parse`.
    amount_is_text: bool,
    problems: Vec<Violation>,
}

fn read_entry(position: usize, item: &Value) -> Entry {
    let at = |field: &str| format!("/repayments/{position}/{field}");
    let mut problems = Vec::new();
    let Some(object) = item.as_object() else {
        return Entry {
            loan_id: None,
            client_id: None,
            amount: None,
            amount_is_text: false,
            problems: vec![Violation::new(
                format!("/repayments/{position}"),
                "must be an object",
            )],
        };
    };
    let loan_id = read_identifier(
        object,
        position,
        "loan_id",
        true,
        LoanId::from_json,
        &mut problems,
    );
    let client_id = read_identifier(
        object,
        position,
        "client_id",
        false,
        ClientId::from_json,
        &mut problems,
    );
    let amount_is_text = matches!(
        object.get("amount"),
        Some(Value::Number(_) | Value::String(_))
    );
    let amount = match object.get("amount") {
        // With `arbitrary_precision`, a JSON number's text is exactly what the MIS wrote.
        Some(Value::Number(n)) => Amount::parse(n.as_str()),
        Some(Value::String(s)) => Amount::parse(s),
        Some(_) => Err("amount must be a number or a string".to_owned()),
        None => Err("amount is required".to_owned()),
    };
    let amount = amount
        .map_err(|message| problems.push(Violation::new(at("amount"), message)))
        .ok();
    Entry {
        loan_id,
        client_id,
        amount,
        amount_is_text,
        problems,
    }
}

fn read_identifier<T>(
    object: &serde_json::Map<String, Value>,
    position: usize,
    field: &str,
    required: bool,
    parse: fn(&Value) -> Option<Result<T, IdError>>,
    problems: &mut Vec<Violation>,
) -> Option<T> {
    let pointer = || format!("/repayments/{position}/{field}");
    let problem = match object.get(field).map(parse) {
        Some(Some(Ok(id))) => return Some(id),
        Some(Some(Err(e))) => format!("{field} {e}"),
        Some(None) => format!("{field} must be a string or a whole number"),
        None if required => format!("{field} is required"),
        None => return None,
    };
    problems.push(Violation::new(pointer(), problem));
    None
}

/// Top-level fields first, then repayments by position; within one position, the order found.
fn sort_in_document_order(violations: &mut [Violation]) {
    violations.sort_by_key(|v| {
        v.pointer
            .strip_prefix("/repayments/")
            .and_then(|rest| rest.split('/').next())
            .and_then(|n| n.parse::<usize>().ok())
            .map_or(0, |n| n + 1)
    });
}

#[cfg(test)]
mod csv_lines_tests;
#[cfg(test)]
mod tests;
