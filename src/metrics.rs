//! Prometheus metrics: every name, label and bucket in one place.
//!
//! Each `Application` has its own registry (no global recorder), so the tests, which run many
//! gateways in one process, can assert exact values per gateway. Two kinds of series:
//! - counters and histograms, counted by this process where the event happens (intake,
//!   delivery worker, Kiva client, store calls through `MeasuredStore`);
//! - gauges of the queue (batches per state, oldest waiting and oldest held batch, the
//!   expected-loans snapshot), read from the store at each scrape: every gateway process on
//!   one Redis reports the same truth, whichever one Prometheus asks.
//!
//! Labels are few-valued only: partner, outcome, state, Kiva status, store operation; never a
//! report, batch or loan id. Times of events are exported as Unix timestamps (Prometheus'
//! advice: an age goes stale between scrapes, a timestamp does not); alert rules compute ages
//! with `time() - …`.

pub mod store;

use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::domain::{PartnerId, Period};
use crate::store::{BatchState, ReportStore, StoreError};

pub const PREFIX: &str = "repayment_gateway";

/// Kiva answers in tens of milliseconds to tens of seconds (`kiva.request_timeout_secs`).
const KIVA_BUCKETS: [f64; 11] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Redis answers in well under a millisecond; an fsync (SQLite, WAITAOF) takes milliseconds;
/// `store.timeout_secs` (5 s by default) bounds the rest.
const STORE_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The batch states the queue gauges count: every state a batch can stay in other than
/// `delivered` (which only grows, and is what Kiva's statement already shows).
pub const GAUGED_STATES: [BatchState; 6] = [
    BatchState::Queued,
    BatchState::Sending,
    BatchState::RetryWait,
    BatchState::Held,
    BatchState::Failed,
    BatchState::Rejected,
];

/// Which Kiva endpoint a call went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KivaEndpoint {
    Token,
    Repayments,
    Loans,
}

impl KivaEndpoint {
    fn label(self) -> &'static str {
        match self {
            KivaEndpoint::Token => "token",
            KivaEndpoint::Repayments => "repayments",
            KivaEndpoint::Loans => "loans",
        }
    }
}

/// How a call to Kiva ended, as the `status` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KivaCallEnd {
    /// Kiva answered with this HTTP status.
    Status(u16),
    /// Failed before the request was written (refused, DNS, TLS, connect timeout).
    NotSent,
    /// Failed after it may have been written (timeout, reset).
    TransportError,
}

impl KivaCallEnd {
    fn label(self) -> String {
        match self {
            KivaCallEnd::Status(status) => status.to_string(),
            KivaCallEnd::NotSent => "not_sent".into(),
            KivaCallEnd::TransportError => "transport_error".into(),
        }
    }
}

/// How a submission ended: accepted, an earlier answer replayed (the same Idempotency-Key and
/// report again), or the kind of error it got; the API tells which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntakeOutcome {
    Accepted,
    Replayed,
    Invalid,
    TooLarge,
    Conflict,
    Forbidden,
    Unavailable,
    Error,
}

impl IntakeOutcome {
    fn label(self) -> &'static str {
        match self {
            IntakeOutcome::Accepted => "accepted",
            IntakeOutcome::Replayed => "replayed",
            IntakeOutcome::Invalid => "invalid",
            IntakeOutcome::TooLarge => "too_large",
            IntakeOutcome::Conflict => "conflict",
            IntakeOutcome::Forbidden => "forbidden",
            IntakeOutcome::Unavailable => "unavailable",
            IntakeOutcome::Error => "error",
        }
    }
}

/// The delivery loop of this process as its gauges show it, read at each scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerReading {
    pub running: bool,
    /// When the loop last started a round, if it has.
    pub last_round_at: Option<DateTime<Utc>>,
}

pub struct Metrics {
    registry: Registry,
    intake_requests: IntCounterVec,
    reports_accepted: IntCounterVec,
    repayments_accepted: IntCounterVec,
    amount_accepted: CounterVec,
    delivery_attempts: IntCounterVec,
    kiva_requests: IntCounterVec,
    kiva_duration: HistogramVec,
    token_fetches: IntCounterVec,
    store_duration: HistogramVec,
    store_errors: IntCounterVec,
    batches: IntGaugeVec,
    oldest_queued: GaugeVec,
    oldest_held: GaugeVec,
    snapshot_taken: GaugeVec,
    not_reported: IntGaugeVec,
    store_up: IntGauge,
    worker_up: IntGauge,
    worker_last_round: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn name(rest: &str) -> String {
    format!("{PREFIX}_{rest}")
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // Names and help texts are constants: registering them can only fail on a
        // programming error (a duplicate or malformed name), which the unit tests catch.
        fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone()))
                .expect("metric names are valid and unique");
            c
        }
        let counter = |n: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name(n), help), labels).expect("valid counter"),
            )
        };
        let gauge = |n: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                GaugeVec::new(Opts::new(name(n), help), labels).expect("valid gauge"),
            )
        };
        let histogram = |n: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(name(n), help).buckets(buckets.to_vec()),
                    labels,
                )
                .expect("valid histogram"),
            )
        };
        Self {
            intake_requests: counter(
                "intake_requests_total",
                "Report submissions (POST /v1/repayments) by outcome.",
                &["outcome"],
            ),
            reports_accepted: counter(
                "reports_accepted_total",
                "Reports accepted (stored and queued).",
                &["partner"],
            ),
            repayments_accepted: counter(
                "repayments_accepted_total",
                "Repayments in accepted reports.",
                &["partner"],
            ),
            amount_accepted: register(
                &registry,
                CounterVec::new(
                    Opts::new(
                        name("repayment_amount_accepted_total"),
                        "Sum of the amounts of accepted repayments, in the partner's local currency (exact sums are in the period view).",
                    ),
                    &["partner"],
                )
                .expect("valid counter"),
            ),
            delivery_attempts: counter(
                "delivery_attempts_total",
                "Attempts to deliver a batch to Kiva, by the state they left the batch in.",
                &["partner", "outcome"],
            ),
            kiva_requests: counter(
                "kiva_requests_total",
                "HTTP calls to Kiva by endpoint and HTTP status (not_sent, transport_error when none came).",
                &["partner", "endpoint", "status"],
            ),
            kiva_duration: histogram(
                "kiva_request_duration_seconds",
                "Duration of HTTP calls to Kiva, until the whole answer was read.",
                &["endpoint"],
                &KIVA_BUCKETS,
            ),
            token_fetches: counter(
                "kiva_token_fetches_total",
                "Access token requests to Kiva's token endpoint, by outcome (ok, failed).",
                &["partner", "outcome"],
            ),
            store_duration: histogram(
                "store_operation_duration_seconds",
                "Duration of store operations (Redis or embedded).",
                &["operation"],
                &STORE_BUCKETS,
            ),
            store_errors: counter(
                "store_errors_total",
                "Store operations that failed, by kind (unavailable, outcome_unknown, other).",
                &["operation", "kind"],
            ),
            batches: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        name("batches"),
                        "Batches per state, read from the store (delivered ones are not counted).",
                    ),
                    &["partner", "state"],
                )
                .expect("valid gauge"),
            ),
            oldest_queued: gauge(
                "oldest_queued_batch_timestamp_seconds",
                "When the oldest batch not yet delivered (queued, sending or retry_wait) was queued; absent when there is none.",
                &["partner"],
            ),
            oldest_held: gauge(
                "oldest_held_batch_timestamp_seconds",
                "When the oldest held batch was queued; absent when none is held.",
                &["partner"],
            ),
            snapshot_taken: gauge(
                "expected_loans_snapshot_timestamp_seconds",
                "When Kiva's expected-loans list in the store was read; absent when never.",
                &["partner"],
            ),
            not_reported: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        name("expected_loans_not_reported"),
                        "Loans Kiva expects a repayment for (payingBack, defaulted) that no report of the partner's current month has, as the period view counts them; counted again when the month or the snapshot changes, else at most once a minute; absent without a snapshot or a report.",
                    ),
                    &["partner", "period"],
                )
                .expect("valid gauge"),
            ),
            store_up: register(
                &registry,
                IntGauge::new(
                    name("store_up"),
                    "1 when the store answered this scrape's reads, 0 when it did not.",
                )
                .expect("valid gauge"),
            ),
            worker_up: register(
                &registry,
                IntGauge::new(
                    name("worker_up"),
                    "1 while this process's delivery loop runs, 0 while it is down (being restarted); absent in a process without one.",
                )
                .expect("valid gauge"),
            ),
            worker_last_round: register(
                &registry,
                Gauge::new(
                    name("worker_last_round_timestamp_seconds"),
                    "When this process's delivery loop last started a round; absent in a process without one.",
                )
                .expect("valid gauge"),
            ),
            registry,
        }
    }

    /// Starts the partners' token fetch counters at 0: a series that appears only with its
    /// first failure shows no `increase()` for it, and the token alert would miss it.
    pub fn with_partners(self, partners: &[PartnerId]) -> Self {
        for partner in partners {
            for outcome in ["ok", "failed"] {
                self.token_fetches
                    .with_label_values(&[partner.as_str(), outcome]);
            }
        }
        self
    }

    pub fn intake_request(&self, outcome: IntakeOutcome) {
        self.intake_requests
            .with_label_values(&[outcome.label()])
            .inc();
    }

    pub fn report_accepted(&self, report: &crate::store::Report) {
        let partner = report.partner_id.as_str();
        self.reports_accepted.with_label_values(&[partner]).inc();
        self.repayments_accepted
            .with_label_values(&[partner])
            .inc_by(report.repayment_count as u64);
        // A float is enough for a rate on a dashboard; money is exact everywhere else.
        let amount: f64 = report
            .total_amount
            .as_decimal()
            .to_string()
            .parse()
            .unwrap_or(0.0);
        self.amount_accepted
            .with_label_values(&[partner])
            .inc_by(amount.max(0.0));
    }

    pub fn delivery_attempt(&self, partner: &PartnerId, outcome: BatchState) {
        self.delivery_attempts
            .with_label_values(&[partner.as_str(), state_label(outcome)])
            .inc();
    }

    pub fn kiva_call(
        &self,
        partner: &PartnerId,
        endpoint: KivaEndpoint,
        end: KivaCallEnd,
        took: Duration,
    ) {
        self.kiva_requests
            .with_label_values(&[partner.as_str(), endpoint.label(), &end.label()])
            .inc();
        self.kiva_duration
            .with_label_values(&[endpoint.label()])
            .observe(took.as_secs_f64());
    }

    pub fn token_fetch(&self, partner: &PartnerId, ok: bool) {
        self.token_fetches
            .with_label_values(&[partner.as_str(), if ok { "ok" } else { "failed" }])
            .inc();
    }

    pub fn store_call(&self, operation: &str, took: Duration, error: Option<&StoreError>) {
        self.store_duration
            .with_label_values(&[operation])
            .observe(took.as_secs_f64());
        let kind = match error {
            None => return,
            Some(StoreError::Unavailable(_)) => "unavailable",
            Some(StoreError::OutcomeUnknown(_)) => "outcome_unknown",
            Some(StoreError::NotReplicated(_)) => "not_replicated",
            Some(StoreError::Other(_)) => "other",
            // Answers about the request, not failures of the store.
            Some(
                StoreError::ClaimLost
                | StoreError::AlreadyReported(_)
                | StoreError::OtherBranchLoans(_),
            ) => return,
        };
        self.store_errors
            .with_label_values(&[operation, kind])
            .inc();
    }

    /// The not-reported count of the partner's current month, as the period view counts it,
    /// replacing the series of the month it counted before.
    pub fn set_not_reported(
        &self,
        partner: &PartnerId,
        previous: Option<Period>,
        now: Option<(Period, usize)>,
    ) {
        let p = partner.as_str();
        if let Some(previous) = previous
            && now.is_none_or(|(period, _)| period != previous)
        {
            let _ = self
                .not_reported
                .remove_label_values(&[p, &previous.to_string()]);
        }
        if let Some((period, count)) = now {
            self.not_reported
                .with_label_values(&[p, &period.to_string()])
                .set(count as i64);
        }
    }

    /// Reads the queue gauges from the store and renders every series in Prometheus' text
    /// format (version 0.0.4). `store_up` is false when the caller's own reads failed.
    pub async fn render(
        &self,
        store: &dyn ReportStore,
        partners: &[PartnerId],
        worker: Option<WorkerReading>,
        mut store_up: bool,
    ) -> String {
        for partner in partners {
            let p = partner.as_str();
            match store.queue_summary(partner).await {
                Ok(summary) => {
                    for state in GAUGED_STATES {
                        self.batches
                            .with_label_values(&[p, state_label(state)])
                            .set(summary.count(state) as i64);
                    }
                    set_or_remove(&self.oldest_queued, p, summary.oldest_queued_at);
                    set_or_remove(&self.oldest_held, p, summary.oldest_held_at);
                }
                Err(error) => {
                    store_up = false;
                    tracing::warn!(partner = %partner, %error, "metrics: queue gauges not read");
                    // Last scrape's numbers would pass for today's: leave the series out.
                    for state in GAUGED_STATES {
                        let _ = self.batches.remove_label_values(&[p, state_label(state)]);
                    }
                    let _ = self.oldest_queued.remove_label_values(&[p]);
                    let _ = self.oldest_held.remove_label_values(&[p]);
                }
            }
            match store.expected_loans_taken_at(partner).await {
                Ok(taken_at) => set_or_remove(&self.snapshot_taken, p, taken_at),
                Err(_) => {
                    store_up = false;
                    let _ = self.snapshot_taken.remove_label_values(&[p]);
                }
            }
        }
        self.store_up.set(i64::from(store_up));
        let mut families = self.registry.gather();
        match worker {
            Some(reading) => {
                self.worker_up.set(i64::from(reading.running));
                if let Some(at) = reading.last_round_at {
                    self.worker_last_round.set(seconds(at));
                }
            }
            None => {
                // A process without a delivery loop must not look like one whose loop is down.
                let worker_series = [
                    name("worker_up"),
                    name("worker_last_round_timestamp_seconds"),
                ];
                families.retain(|f| !worker_series.iter().any(|n| n == f.name()));
            }
        }
        if worker.is_some_and(|reading| reading.last_round_at.is_none()) {
            let unset = name("worker_last_round_timestamp_seconds");
            families.retain(|f| f.name() != unset);
        }
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut text)
            .expect("the text encoder writes to a Vec");
        String::from_utf8(text).expect("the text format is UTF-8")
    }
}

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn state_label(state: BatchState) -> &'static str {
    match state {
        BatchState::Queued => "queued",
        BatchState::Sending => "sending",
        BatchState::RetryWait => "retry_wait",
        BatchState::Delivered => "delivered",
        BatchState::Rejected => "rejected",
        BatchState::Held => "held",
        BatchState::Failed => "failed",
    }
}

fn seconds(at: DateTime<Utc>) -> f64 {
    at.timestamp_millis() as f64 / 1000.0
}

fn set_or_remove(gauge: &GaugeVec, partner: &str, at: Option<DateTime<Utc>>) {
    match at {
        Some(at) => gauge.with_label_values(&[partner]).set(seconds(at)),
        None => {
            let _ = gauge.remove_label_values(&[partner]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_registered_once_with_the_prefix() {
        let metrics = Metrics::new();
        metrics.intake_request(IntakeOutcome::Accepted);
        metrics.token_fetch(&PartnerId::parse("1").unwrap(), false);
        let names: Vec<String> = metrics
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        assert!(names.iter().all(|n| n.starts_with("repayment_gateway_")));
        assert!(names.contains(&"repayment_gateway_intake_requests_total".to_owned()));
        assert!(names.contains(&"repayment_gateway_kiva_token_fetches_total".to_owned()));
    }

    #[test]
    fn kiva_call_ends_are_labelled_by_status_or_transport_failure() {
        assert_eq!(KivaCallEnd::Status(503).label(), "503");
        assert_eq!(KivaCallEnd::NotSent.label(), "not_sent");
        assert_eq!(KivaCallEnd::TransportError.label(), "transport_error");
    }
}
