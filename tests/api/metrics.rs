//! `GET /metrics`: a known sequence of events, then the exact counters and gauges, parsed from
//! the text (and checked by `promtool check metrics`); the queue gauges come from the store
//! (queue_summary.rs checks that summary against the batches).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use repayment_gateway::domain::PartnerId;
use repayment_gateway::sandbox::Fault;
use repayment_gateway::store::{BeginAttempt, ExpectedLoan, ExpectedLoansSnapshot};
use serde_json::json;

const NOT_REPORTED: &str = "repayment_gateway_expected_loans_not_reported";

use crate::helpers::{
    Backend, HEAD_OFFICE, NAIROBI, THREE_COL, TWO_COL, TestApp, spawn_app_for,
    spawn_delivery_rig_with, wait_until,
};

on_both_stores!(
    counters_and_queue_gauges_after_a_known_sequence,
    a_running_worker_says_so,
);

/// One sample: the metric name and its labels.
type Series = (String, BTreeMap<String, String>);

/// The samples of a text-format exposition (comments skipped).
fn parse(text: &str) -> BTreeMap<Series, f64> {
    let mut samples = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|l| !l.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                (k.to_owned(), v.trim_end_matches('"').to_owned())
            })
            .collect();
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().expect("a number"),
        };
        assert!(
            samples.insert((name.to_owned(), labels), value).is_none(),
            "{line} appears twice"
        );
    }
    samples
}

struct Scrape(BTreeMap<Series, f64>);

impl Scrape {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0.get(&(name.to_owned(), labels)).copied()
    }

    /// The value, which must be there.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }

    /// Every sample of `name`, as (labels, value).
    fn all(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.0
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| (l.clone(), *v))
            .collect()
    }
}

/// Scrapes `/metrics` on the API's address; checks the format with promtool.
async fn scrape(app: &TestApp) -> Scrape {
    let answer = app.get("/metrics", None).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.content_type(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    promtool_check_metrics(&answer.text);
    Scrape(parse(&answer.text))
}

/// `promtool check metrics` (Debian's `prometheus` package; `scripts/install-deps` installs it)
/// parses the text and lints names, units and help texts.
fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool must be installed (scripts/install-deps: apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn seconds(at: DateTime<Utc>) -> f64 {
    at.timestamp_millis() as f64 / 1000.0
}

fn report_of(loans: &[(&str, &str)]) -> serde_json::Value {
    let repayments: Vec<_> = loans
        .iter()
        .map(|(loan, amount)| json!({"loan_id": loan, "client_id": format!("C-{}", &loan[2..]), "amount": amount}))
        .collect();
    json!({"period": "2026-10", "repayments": repayments})
}

const B: &str = "repayment_gateway_batches";

async fn counters_and_queue_gauges_after_a_known_sequence(backend: Backend) {
    // One batch per round, so each fault meets the batch it is meant for.
    let rig = spawn_delivery_rig_with(backend, |s| s.delivery.concurrency = 1).await;
    let app = &rig.app;
    let p = THREE_COL;

    // Before anything: every state counted 0, no oldest batch, no snapshot, no worker here.
    let before = scrape(app).await;
    for state in [
        "queued",
        "sending",
        "retry_wait",
        "held",
        "failed",
        "rejected",
    ] {
        assert_eq!(before.value(B, &[("partner", p), ("state", state)]), 0.0);
        assert_eq!(
            before.value(B, &[("partner", TWO_COL), ("state", state)]),
            0.0
        );
    }
    assert_eq!(before.value("repayment_gateway_store_up", &[]), 1.0);
    assert!(
        before
            .all("repayment_gateway_oldest_queued_batch_timestamp_seconds")
            .is_empty()
    );
    assert!(
        before
            .all("repayment_gateway_expected_loans_snapshot_timestamp_seconds")
            .is_empty()
    );
    assert_eq!(before.get("repayment_gateway_worker_up", &[]), None);
    assert!(before.all(NOT_REPORTED).is_empty());
    // Token fetches start at 0 for every configured partner (so `increase()` sees the first).
    for partner in [p, TWO_COL] {
        for outcome in ["ok", "failed"] {
            assert_eq!(
                before.value(
                    "repayment_gateway_kiva_token_fetches_total",
                    &[("outcome", outcome), ("partner", partner)]
                ),
                0.0
            );
        }
    }

    // Six reports accepted (2 + 1 + 1 + 1 + 1 + 1 repayments), one refused.
    let a = rig
        .submit(NAIROBI, &report_of(&[("L-1", "10.50"), ("L-2", "20.25")]))
        .await;
    let b = rig.submit(NAIROBI, &report_of(&[("L-3", "5.00")])).await;
    let c = rig.submit(NAIROBI, &report_of(&[("L-4", "1.25")])).await;
    let d = rig.submit(NAIROBI, &report_of(&[("L-5", "2.00")])).await;
    let e = rig.submit(NAIROBI, &report_of(&[("L-6", "3.00")])).await;
    let f = rig.submit(NAIROBI, &report_of(&[("L-7", "4.00")])).await;
    let refused = app.submit(NAIROBI, &json!({"period": "2026-10"})).await;
    assert_eq!(refused.status, 422, "{}", refused.text);
    let created = |report: &serde_json::Value| {
        DateTime::parse_from_rfc3339(report["created_at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc)
    };
    let (a_at, b_at) = (
        created(&rig.report(&a).await),
        created(&rig.report(&b).await),
    );

    let queued = scrape(app).await;
    assert_eq!(queued.value(B, &[("partner", p), ("state", "queued")]), 6.0);
    assert_eq!(
        queued.value(
            "repayment_gateway_oldest_queued_batch_timestamp_seconds",
            &[("partner", p)]
        ),
        seconds(a_at)
    );

    // A: the token endpoint fails (retry_wait). B: Kiva answers 500 (held). C: delivered.
    // D: 422 (rejected). E: 503 with a Retry-After past the age limit (failed). F: claimed and
    // begun, its answer not yet in (sending).
    rig.sandbox.push_token_fault(Fault::status(503, "down"));
    let worker = rig.worker();
    assert_eq!(worker.run_once().await.unwrap().claimed, 1);
    rig.sandbox.push_fault(Fault::status(500, "oops"));
    assert_eq!(worker.run_once().await.unwrap().claimed, 1);
    assert_eq!(worker.run_once().await.unwrap().claimed, 1);
    rig.sandbox
        .push_fault(Fault::status(422, r#"{"message": "no"}"#));
    assert_eq!(worker.run_once().await.unwrap().claimed, 1);
    rig.sandbox.push_fault(Fault::Status {
        status: 503,
        retry_after: Some("31536000".into()),
        body: "maintenance".into(),
    });
    assert_eq!(worker.run_once().await.unwrap().claimed, 1);
    let partner = PartnerId::parse(p).unwrap();
    let claimed = app
        .store
        .claim_batches(&partner, "metrics-test", 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let begun = app.store.begin_attempt(&claimed[0], Utc::now()).await;
    assert!(matches!(begun, Ok(BeginAttempt::Send { .. })), "{begun:?}");
    for (report, state) in [
        (&a, "retry_wait"),
        (&b, "held"),
        (&c, "delivered"),
        (&d, "rejected"),
        (&e, "failed"),
        (&f, "sending"),
    ] {
        assert_eq!(rig.report(report).await["batches"][0]["state"], state);
    }

    // Reports but no snapshot yet: nothing to count the month against.
    assert!(scrape(app).await.all(NOT_REPORTED).is_empty());

    // A known snapshot: five loans Kiva expects a repayment for (L-1 and L-3 are reported
    // this month, L-2 is reported but Kiva does not expect it), and one it does not (ended).
    let taken_at = Utc.timestamp_opt(1_790_000_000, 250_000_000).unwrap();
    let loan = |id: &str, status: &str| ExpectedLoan {
        internal_loan_id: id.into(),
        internal_client_id: Some(format!("C-{}", &id[2..])),
        kiva_id: None,
        status: status.into(),
        delinquent: None,
    };
    app.store
        .replace_expected_loans(&ExpectedLoansSnapshot {
            partner_id: PartnerId::parse(p).unwrap(),
            taken_at,
            pages: 1,
            loans: vec![
                loan("L-1", "payingBack"),
                loan("L-2", "ended"),
                loan("L-3", "defaulted"),
                loan("L-90", "payingBack"),
                loan("L-91", "defaulted"),
                loan("L-92", "payingBack"),
            ],
        })
        .await
        .unwrap();

    let s = scrape(app).await;
    let counts: Vec<(&str, f64)> = [
        "queued",
        "sending",
        "retry_wait",
        "held",
        "failed",
        "rejected",
    ]
    .iter()
    .map(|state| (*state, s.value(B, &[("partner", p), ("state", state)])))
    .collect();
    assert_eq!(
        counts,
        [
            ("queued", 0.0),
            ("sending", 1.0),
            ("retry_wait", 1.0),
            ("held", 1.0),
            ("failed", 1.0),
            ("rejected", 1.0)
        ]
    );
    assert_eq!(
        s.value(
            "repayment_gateway_oldest_queued_batch_timestamp_seconds",
            &[("partner", p)]
        ),
        seconds(a_at)
    );
    assert_eq!(
        s.value(
            "repayment_gateway_oldest_held_batch_timestamp_seconds",
            &[("partner", p)]
        ),
        seconds(b_at)
    );
    assert_eq!(
        s.get(
            "repayment_gateway_oldest_held_batch_timestamp_seconds",
            &[("partner", TWO_COL)]
        ),
        None
    );
    assert_eq!(
        s.value(
            "repayment_gateway_expected_loans_snapshot_timestamp_seconds",
            &[("partner", p)]
        ),
        1_790_000_000.25
    );

    // The snapshot changed, so the count is made at once, for the month reported.
    assert_eq!(
        s.all(NOT_REPORTED),
        [(
            BTreeMap::from([
                ("partner".to_owned(), p.to_owned()),
                ("period".to_owned(), "2026-10".to_owned())
            ]),
            3.0
        )]
    );

    let intake = "repayment_gateway_intake_requests_total";
    assert_eq!(s.value(intake, &[("outcome", "accepted")]), 6.0);
    assert_eq!(s.value(intake, &[("outcome", "invalid")]), 1.0);
    assert_eq!(s.all(intake).len(), 2);
    assert_eq!(
        s.value(
            "repayment_gateway_reports_accepted_total",
            &[("partner", p)]
        ),
        6.0
    );
    assert_eq!(
        s.value(
            "repayment_gateway_repayments_accepted_total",
            &[("partner", p)]
        ),
        7.0
    );
    assert_eq!(
        s.value(
            "repayment_gateway_repayment_amount_accepted_total",
            &[("partner", p)]
        ),
        46.0
    );

    let attempts = "repayment_gateway_delivery_attempts_total";
    for (outcome, n) in [
        ("retry_wait", 1.0),
        ("held", 1.0),
        ("delivered", 1.0),
        ("rejected", 1.0),
        ("failed", 1.0),
    ] {
        assert_eq!(
            s.value(attempts, &[("outcome", outcome), ("partner", p)]),
            n
        );
    }
    assert_eq!(s.all(attempts).len(), 5);

    // What Kiva was asked, as the sandbox counted it and the metrics say it.
    assert_eq!(rig.sandbox.token_requests(), 2);
    assert_eq!(rig.sandbox.repayment_requests(), 4);
    let kiva = "repayment_gateway_kiva_requests_total";
    let mut calls: Vec<(String, String, f64)> = s
        .all(kiva)
        .into_iter()
        .map(|(l, v)| {
            assert_eq!(l["partner"], p);
            (l["endpoint"].clone(), l["status"].clone(), v)
        })
        .collect();
    calls.sort_by(|x, y| x.partial_cmp(y).unwrap());
    assert_eq!(
        calls,
        [
            ("repayments".into(), "200".into(), 1.0),
            ("repayments".into(), "422".into(), 1.0),
            ("repayments".into(), "500".into(), 1.0),
            ("repayments".into(), "503".into(), 1.0),
            ("token".into(), "200".into(), 1.0),
            ("token".into(), "503".into(), 1.0),
        ]
    );
    let tokens = "repayment_gateway_kiva_token_fetches_total";
    assert_eq!(
        s.value(tokens, &[("outcome", "failed"), ("partner", p)]),
        1.0
    );
    assert_eq!(s.value(tokens, &[("outcome", "ok"), ("partner", p)]), 1.0);
    let latency = "repayment_gateway_kiva_request_duration_seconds";
    assert_eq!(
        s.value(&format!("{latency}_count"), &[("endpoint", "repayments")]),
        4.0
    );
    assert_eq!(
        s.value(
            &format!("{latency}_bucket"),
            &[("endpoint", "token"), ("le", "+Inf")]
        ),
        2.0
    );
    // The API's own store calls (the test's worker uses the store directly).
    assert_eq!(
        s.value(
            "repayment_gateway_store_operation_duration_seconds_count",
            &[("operation", "accept")]
        ),
        6.0
    );
    assert!(
        s.all("repayment_gateway_store_errors_total").is_empty(),
        "no store errors"
    );

    // The operator resends the held batch: nothing is held, and it waits again. A report sent
    // twice with one Idempotency-Key is accepted once, then its answer replayed.
    let held_batch = format!("{b}.1");
    let resent = rig.operate(HEAD_OFFICE, &held_batch, "resend").await;
    assert_eq!(resent.status, 200, "{}", resent.text);
    let g = report_of(&[("L-8", "1.00")]).to_string();
    for _ in 0..2 {
        let answer = app.submit_idempotent(NAIROBI, "metrics-g", &g).await;
        assert_eq!(answer.status, 202, "{}", answer.text);
    }
    let after = scrape(app).await;
    assert_eq!(after.value(B, &[("partner", p), ("state", "held")]), 0.0);
    assert_eq!(after.value(B, &[("partner", p), ("state", "queued")]), 2.0);
    assert_eq!(after.value(intake, &[("outcome", "accepted")]), 7.0);
    assert_eq!(after.value(intake, &[("outcome", "replayed")]), 1.0);
    assert_eq!(
        after.get(
            "repayment_gateway_oldest_held_batch_timestamp_seconds",
            &[("partner", p)]
        ),
        None
    );
    assert_eq!(
        after.value(
            "repayment_gateway_oldest_queued_batch_timestamp_seconds",
            &[("partner", p)]
        ),
        seconds(a_at)
    );

    // A report of the next month makes it the month counted; the last month's series goes.
    let mut november = report_of(&[("L-50", "1.00")]);
    november["period"] = json!("2026-11");
    let answer = app.submit(NAIROBI, &november).await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    let next = scrape(app).await;
    assert_eq!(next.all(NOT_REPORTED).len(), 1);
    assert_eq!(
        next.value(NOT_REPORTED, &[("partner", p), ("period", "2026-11")]),
        5.0
    );
}

async fn a_running_worker_says_so(backend: Backend) {
    let app = spawn_app_for(
        backend,
        |s| {
            s.delivery.enabled = true;
            s.delivery.poll_interval_ms = 50;
        },
        |store| store,
    )
    .await;
    wait_until("the worker has run a round", async || {
        let s = parse(&app.get("/metrics", None).await.text);
        s.contains_key(&(
            "repayment_gateway_worker_last_round_timestamp_seconds".to_owned(),
            BTreeMap::new(),
        ))
    })
    .await;
    let s = scrape(&app).await;
    assert_eq!(s.value("repayment_gateway_worker_up", &[]), 1.0);
    let last_round = s.value("repayment_gateway_worker_last_round_timestamp_seconds", &[]);
    let now = seconds(Utc::now());
    assert!(last_round <= now && last_round > now - 60.0, "{last_round}");
}

#[tokio::test]
async fn metrics_apart_with_a_bearer_token_refuse_a_scrape_without_it() {
    const TOKEN: &str = "scrape-token-do-not-log";
    let app = spawn_app_for(
        Backend::Embedded,
        |s| {
            s.metrics.bind = Some("127.0.0.1:0".into());
            s.metrics.bearer_token = Some(TOKEN.into());
        },
        |store| store,
    )
    .await;
    // Not on the API's address any more.
    assert_eq!(app.get("/metrics", None).await.status, 404);
    let url = format!("http://127.0.0.1:{}/metrics", app.metrics_port.unwrap());
    for authorization in [None, Some("Bearer wrong"), Some(TOKEN)] {
        let mut request = app.client.get(&url);
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        let answer = app.send(request).await;
        assert_eq!(answer.status, 401, "{}", answer.text);
        assert_eq!(answer.content_type(), "application/problem+json");
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
        assert!(!answer.text.contains(TOKEN));
    }
    let answer = app
        .send(
            app.client
                .get(&url)
                .header("Authorization", format!("Bearer {TOKEN}")),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    promtool_check_metrics(&answer.text);
    assert_eq!(
        Scrape(parse(&answer.text)).value("repayment_gateway_store_up", &[]),
        1.0
    );
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let app = spawn_app_for(Backend::Embedded, |s| s.metrics.enabled = false, |s| s).await;
    assert_eq!(app.get("/metrics", None).await.status, 404);
}

#[tokio::test]
async fn an_unreachable_store_reports_store_down_and_no_queue_numbers() {
    let mut app = crate::helpers::spawn_app().await;
    app.redis_mut().stop();
    let answer = app.get("/metrics", None).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let s = Scrape(parse(&answer.text));
    assert_eq!(s.value("repayment_gateway_store_up", &[]), 0.0);
    assert!(s.all(B).is_empty(), "no stale queue numbers");
    assert!(
        s.all("repayment_gateway_store_errors_total")
            .iter()
            .any(|(l, v)| l["operation"] == "queue_summary"
                && l["kind"] == "unavailable"
                && *v >= 1.0)
    );
}
