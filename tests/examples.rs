//! The MIS integration kit (examples/): each example program, in its own runtime, against a
//! real gateway whose delivery worker sends to the in-process Kiva sandbox. The output of every
//! example is compared with one expected text, so all five print the same for the same input.

#[allow(dead_code)]
#[path = "support/cluster.rs"]
mod cluster_support;
#[allow(dead_code, unused_macros, unused_imports)]
#[path = "api/helpers.rs"]
mod helpers;
#[path = "examples/proxy.rs"]
mod proxy;
#[path = "examples/runtimes.rs"]
mod runtimes;

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::join_all;
use helpers::{
    Backend, DeliveryRig, GatedStore, NAIROBI, THREE_COL, TWO_COL, TWO_COL_BRANCH, plain_key,
    spawn_app_for, spawn_delivery_rig_with,
};
use proxy::Proxy;
use runtimes::{Invocation, JavaLaunch, Lang, PERIOD, Run, languages, run};
use sha2::{Digest, Sha256};

/// A gateway with its delivery worker running against the sandbox.
async fn gateway() -> DeliveryRig {
    spawn_delivery_rig_with(Backend::Embedded, |settings| {
        settings.delivery.enabled = true;
        settings.delivery.poll_interval_ms = 20;
    })
    .await
}

/// A CSV file in its own temporary directory (kept alive by the returned guard).
fn csv_file(content: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repayments.csv");
    std::fs::write(&path, content).unwrap();
    (dir, path)
}

fn idempotency_key(branch: &str, content: &str) -> String {
    let hash = hex::encode(Sha256::digest(content.as_bytes()));
    format!("mis-{branch}-{PERIOD}-{}", &hash[..32])
}

/// Ids of the reports the gateway stored, of both partners.
async fn reports(rig: &DeliveryRig) -> Vec<String> {
    rig.app
        .stored()
        .await
        .into_iter()
        .filter_map(|entry| entry.strip_prefix("report ").map(str::to_owned))
        .collect()
}

/// Every repayment the sandbox received, as `loan client amount` with the amount's digits
/// exactly as sent, in the order received.
fn uploaded(rig: &DeliveryRig) -> Vec<String> {
    rig.sandbox
        .uploads()
        .iter()
        .flat_map(|upload| upload.json["repayments"].as_array().unwrap().clone())
        .map(|r| {
            format!(
                "{} {} {}",
                r["loan_id"].as_str().unwrap(),
                r["client_id"].as_str().unwrap_or("-"),
                r["amount"]
            )
        })
        .collect()
}

fn assert_output(run: &Run, code: i32, expected: &str) {
    assert_eq!(run.code, code, "{run}");
    assert_eq!(run.stdout, expected, "{run}");
}

const THREE_COLUMN_CSV: &str = "loan_id,client_id,amount\n\
    L-0,C-0,25.00\n\
    \u{20}\"L-1\" , C-1 ,40.5\r\n\
    \n\
    L-2,C-2,0.125\n\
    L-3,C-3,1000000";

const THREE_COLUMN_UPLOADED: [&str; 4] = [
    "L-0 C-0 25.00",
    "L-1 C-1 40.5",
    "L-2 C-2 0.125",
    "L-3 C-3 1000000",
];

fn three_column_output(branch: &str, id: &str) -> String {
    format!(
        "idempotency-key: {}\n\
         accepted {id}: 4 repayments, total 1000065.625\n\
         status: delivered\n\
         L-0: accepted\n\
         L-1: warning\n\
         \x20 warning warning: Montant élevé : vérifier l’échéance\n\
         L-2: accepted\n\
         L-3: accepted\n",
        idempotency_key(branch, THREE_COLUMN_CSV)
    )
}

/// Runs one example against its own gateway, through `proxy` when asked; the rig, the proxy
/// and the run.
async fn run_alone(
    lang: Lang,
    content: &str,
    two_column: bool,
    lose_answer: bool,
) -> (DeliveryRig, Option<Proxy>, Run) {
    let rig = gateway().await;
    rig.sandbox
        .warn_on_loan(THREE_COL, "L-1", "Montant élevé : vérifier l’échéance");
    rig.sandbox.set_loan_status(TWO_COL, "L-6", "ended");
    let proxy = if lose_answer {
        Some(Proxy::start(&rig.app.address, true).await)
    } else {
        None
    };
    let (_dir, csv) = csv_file(content);
    let key = plain_key(if two_column { TWO_COL_BRANCH } else { NAIROBI });
    let url = proxy
        .as_ref()
        .map_or(rig.app.address.clone(), |p| p.url.clone());
    let result = run(
        lang,
        &Invocation {
            gateway_url: &url,
            api_key: &key,
            branch: "nairobi",
            csv: &csv,
            java: JavaLaunch::Compiled,
            poll_timeout_secs: 30,
            path: None,
            correction: false,
        },
    )
    .await;
    (rig, proxy, result)
}

#[tokio::test]
async fn every_example_delivers_a_report_and_prints_each_loans_state() {
    let runs = join_all(
        languages()
            .into_iter()
            .map(|lang| run_alone(lang, THREE_COLUMN_CSV, false, false)),
    )
    .await;
    for (rig, _, run) in &runs {
        let stored = reports(rig).await;
        assert_eq!(stored.len(), 1, "{run}");
        assert_output(run, 0, &three_column_output("nairobi", &stored[0]));
        assert_eq!(uploaded(rig), THREE_COLUMN_UPLOADED, "{run}");
    }
}

const TWO_COLUMN_CSV: &str = "\u{feff}loan_id,client_id,amount\r\nL-5,,12\r\nL-6,,7.5\r\n";

#[tokio::test]
async fn a_loan_kiva_refuses_is_printed_with_kivas_problem_and_exit_code_6() {
    let runs = join_all(
        languages()
            .into_iter()
            .map(|lang| run_alone(lang, TWO_COLUMN_CSV, true, false)),
    )
    .await;
    for (rig, _, run) in &runs {
        let stored = reports(rig).await;
        assert_eq!(stored.len(), 1, "{run}");
        let expected = format!(
            "idempotency-key: {}\n\
             accepted {}: 2 repayments, total 19.5\n\
             status: delivered_with_problems\n\
             L-5: accepted\n\
             L-6: rejected_by_kiva\n\
             \x20 error loan_not_paying_back: Loan is not in payingBack or defaulted status (status: ended)\n",
            idempotency_key("nairobi", TWO_COLUMN_CSV),
            stored[0]
        );
        assert_output(run, 6, &expected);
        // An empty client_id cell is left out of the report, not sent as "".
        assert_eq!(uploaded(rig), ["L-5 - 12", "L-6 - 7.5"], "{run}");
    }
}

const MISTAKES_CSV: &str = "loan_id,client_id,amount\n\
    L-0,C-0,1.2345\n\
    L-1,,40.5\n\
    L-2,C-2,abc\n\
    L-3,C-3,10\n";

#[tokio::test]
async fn a_refused_report_prints_every_pointer_and_exits_3_storing_nothing() {
    let runs = join_all(
        languages()
            .into_iter()
            .map(|lang| run_alone(lang, MISTAKES_CSV, false, false)),
    )
    .await;
    let first = &runs[0].2;
    for (rig, _, run) in &runs {
        assert_eq!(run.code, 3, "{run}");
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(
            lines[0],
            format!(
                "idempotency-key: {}",
                idempotency_key("nairobi", MISTAKES_CSV)
            ),
            "{run}"
        );
        assert!(lines[1].starts_with("refused: HTTP 422: "), "{run}");
        let pointers: Vec<&str> = lines[2..]
            .iter()
            .map(|line| line.split_once(": ").expect("pointer: detail").0)
            .collect();
        assert_eq!(
            pointers,
            [
                "/repayments/0/amount",
                "/repayments/1/client_id",
                "/repayments/2/amount"
            ],
            "{run}"
        );
        // The details are the gateway's; every example prints them the same way.
        assert_eq!(run.stdout, first.stdout, "{run}\ndiffers from\n{first}");
        assert!(reports(rig).await.is_empty(), "{run}");
        assert!(rig.sandbox.uploads().is_empty(), "{run}");
    }
}

#[tokio::test]
async fn a_lost_answer_is_retried_with_the_same_key_and_kiva_gets_each_loan_once() {
    let runs = join_all(
        languages()
            .into_iter()
            .map(|lang| run_alone(lang, THREE_COLUMN_CSV, false, true)),
    )
    .await;
    for (rig, proxy, run) in &runs {
        assert_eq!(proxy.as_ref().unwrap().lost(), 1, "{run}");
        assert!(
            run.stderr.contains("try 1 of 8 failed (network error"),
            "{run}"
        );
        let stored = reports(rig).await;
        assert_eq!(stored.len(), 1, "the retry stored a second report\n{run}");
        assert_output(run, 0, &three_column_output("nairobi", &stored[0]));
        assert_eq!(uploaded(rig), THREE_COLUMN_UPLOADED, "{run}");
    }
}

/// Every example sends the very same bytes for the same file (the gateway compares a retry's
/// body with the first one's), so after the first, the others get the first's answer again.
#[tokio::test]
async fn the_same_file_gets_the_same_key_and_one_report_whichever_example_sends_it() {
    let languages = languages();
    let rig = gateway().await;
    rig.sandbox
        .warn_on_loan(THREE_COL, "L-1", "Montant élevé : vérifier l’échéance");
    let (_dir, csv) = csv_file(THREE_COLUMN_CSV);
    let key = plain_key(NAIROBI);
    let mut runs = Vec::new();
    for lang in languages {
        runs.push(
            run(
                lang,
                &Invocation {
                    gateway_url: &rig.app.address,
                    api_key: &key,
                    branch: "head-office",
                    csv: &csv,
                    // The command examples/README.md gives, once.
                    java: JavaLaunch::Source,
                    poll_timeout_secs: 30,
                    path: None,
                    correction: false,
                },
            )
            .await,
        );
    }
    let stored = reports(&rig).await;
    assert_eq!(
        stored.len(),
        1,
        "{}",
        runs.iter().map(Run::to_string).collect::<String>()
    );
    for run in &runs {
        assert_output(run, 0, &three_column_output("head-office", &stored[0]));
    }
    assert_eq!(uploaded(&rig), THREE_COLUMN_UPLOADED);
}

/// A cron host may lack jq: the bash example then prints the gateway's JSON as it came, and
/// its exit codes are the same.
#[tokio::test]
async fn the_bash_example_works_without_jq() {
    if !languages().contains(&Lang::Bash) {
        return;
    }
    // Only what submit.sh calls besides jq.
    let bin = tempfile::tempdir().unwrap();
    for tool in [
        "bash",
        "curl",
        "sha256sum",
        "iconv",
        "tr",
        "wc",
        "mktemp",
        "rm",
        "head",
        "seq",
        "sed",
        "tail",
        "grep",
        "cut",
        "cp",
        "cat",
        "sleep",
    ] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|dir| dir.join(tool))
            .find(|candidate| candidate.is_file())
            .unwrap_or_else(|| panic!("{tool} is on the PATH"));
        std::os::unix::fs::symlink(found, bin.path().join(tool)).unwrap();
    }
    let rig = gateway().await;
    let key = plain_key(NAIROBI);
    let mut outputs = Vec::new();
    for content in [THREE_COLUMN_CSV, MISTAKES_CSV] {
        let (_dir, csv) = csv_file(content);
        let run = run(
            Lang::Bash,
            &Invocation {
                gateway_url: &rig.app.address,
                api_key: &key,
                branch: "nairobi",
                csv: &csv,
                java: JavaLaunch::Compiled,
                poll_timeout_secs: 30,
                path: Some(bin.path()),
                correction: false,
            },
        )
        .await;
        outputs.push(run);
    }
    let stored = reports(&rig).await;
    assert_eq!(stored.len(), 1);
    let delivered = &outputs[0];
    assert_eq!(delivered.code, 0, "{delivered}");
    let head = format!(
        "idempotency-key: {}\naccepted {}: 4 repayments, total 1000065.625\nstatus: delivered\n{{\"id\":\"{}\"",
        idempotency_key("nairobi", THREE_COLUMN_CSV),
        stored[0],
        stored[0]
    );
    assert!(delivered.stdout.starts_with(&head), "{delivered}");
    let refused = &outputs[1];
    assert_eq!(refused.code, 3, "{refused}");
    assert!(
        refused
            .stdout
            .contains("refused: HTTP 422:\n{\"type\":\"/problems/invalid-report\""),
        "{refused}"
    );
    for pointer in [
        "/repayments/0/amount",
        "/repayments/1/client_id",
        "/repayments/2/amount",
    ] {
        assert!(
            refused
                .stdout
                .contains(&format!("\"pointer\":\"{pointer}\"")),
            "{refused}"
        );
    }
}

/// What every example sends for `THREE_COLUMN_CSV`, byte for byte: amounts as the CSV's text.
const THREE_COLUMN_BODY: &str = concat!(
    r#"{"period":"2026-10","repayments":["#,
    r#"{"loan_id":"L-0","client_id":"C-0","amount":"25.00"},"#,
    r#"{"loan_id":"L-1","client_id":"C-1","amount":"40.5"},"#,
    r#"{"loan_id":"L-2","client_id":"C-2","amount":"0.125"},"#,
    r#"{"loan_id":"L-3","client_id":"C-3","amount":"1000000"}]}"#
);

/// The example's POST meets the same Idempotency-Key still in flight (held inside the store):
/// it gets 409, waits as `Retry-After` says, and its retry gets the first request's report.
/// No worker runs, so the report stays queued past `POLL_TIMEOUT_SECS`.
async fn run_against_the_same_key_in_flight(lang: Lang) -> (Vec<String>, String, Run) {
    let mut gate = None;
    let app = spawn_app_for(
        Backend::Embedded,
        |_| {},
        |store| {
            let gated = Arc::new(GatedStore::new(store));
            gate = Some(gated.clone());
            gated
        },
    )
    .await;
    let gate = gate.unwrap();
    let proxy = Proxy::start(&app.address, false).await;
    let (_dir, csv) = csv_file(THREE_COLUMN_CSV);
    let idempotency_key = idempotency_key("nairobi", THREE_COLUMN_CSV);
    let api_key = plain_key(NAIROBI);
    let first = app.submit_idempotent(NAIROBI, &idempotency_key, THREE_COLUMN_BODY);
    let example = async {
        gate.reached.notified().await;
        let release = async {
            proxy.conflict_answered.notified().await;
            gate.release.notify_one();
        };
        let how = Invocation {
            gateway_url: &proxy.url,
            api_key: &api_key,
            branch: "nairobi",
            csv: &csv,
            java: JavaLaunch::Compiled,
            poll_timeout_secs: 1,
            path: None,
            correction: false,
        };
        tokio::join!(run(lang, &how), release).0
    };
    let (first, run) = tokio::join!(first, example);
    assert_eq!(first.status, 202, "{}", first.text);
    let stored = app
        .stored()
        .await
        .into_iter()
        .filter(|entry| entry.starts_with("report "))
        .collect();
    (stored, first.body["id"].as_str().unwrap().to_owned(), run)
}

#[tokio::test]
async fn a_409_is_retried_after_retry_after_and_a_report_not_final_in_time_exits_7() {
    let runs = join_all(
        languages()
            .into_iter()
            .map(run_against_the_same_key_in_flight),
    )
    .await;
    for (stored, first_id, run) in &runs {
        assert!(
            run.stderr
                .contains("try 1 of 8 failed (HTTP 409); retrying in 1 s"),
            "{run}"
        );
        assert_eq!(stored, &[format!("report {first_id}")], "{run}");
        let expected = format!(
            "idempotency-key: {}\n\
             accepted {first_id}: 4 repayments, total 1000065.625\n\
             status: queued (not final after 1 s)\n\
             L-0: queued\n\
             L-1: queued\n\
             L-2: queued\n\
             L-3: queued\n",
            idempotency_key("nairobi", THREE_COLUMN_CSV)
        );
        assert_output(run, 7, &expected);
    }
}

/// `THREE_COLUMN_CSV` with L-2's amount corrected.
const CORRECTED_CSV: &str = "loan_id,client_id,amount\n\
    L-0,C-0,25.00\n\
    L-1,C-1,40.5\n\
    L-2,C-2,0.25\n\
    L-3,C-3,1000000\n";

/// A corrected file after the first: refused as loans already reported, then sent with
/// `REPORT_CORRECTION=true` as a correction, under a key of its own, and delivered.
async fn correct_a_report(lang: Lang) -> (DeliveryRig, Run, Run, Run) {
    let rig = gateway().await;
    let key = plain_key(NAIROBI);
    let mut runs = Vec::new();
    for (content, correction) in [
        (THREE_COLUMN_CSV, false),
        (CORRECTED_CSV, false),
        (CORRECTED_CSV, true),
    ] {
        let (_dir, csv) = csv_file(content);
        let how = Invocation {
            correction,
            ..Invocation::new(&rig.app.address, &key, &csv)
        };
        runs.push(run(lang, &how).await);
    }
    let corrected = runs.pop().unwrap();
    let refused = runs.pop().unwrap();
    let first = runs.pop().unwrap();
    (rig, first, refused, corrected)
}

#[tokio::test]
async fn each_example_sends_a_correction_when_told() {
    let runs = join_all(languages().into_iter().map(correct_a_report)).await;
    for (rig, first, refused, corrected) in &runs {
        assert_eq!(first.code, 0, "{first}");
        assert_eq!(refused.code, 3, "{refused}");
        assert!(
            refused
                .stdout
                .contains("/repayments/0/loan_id: this loan was already reported"),
            "{refused}"
        );
        let mut stored = reports(rig).await;
        assert_eq!(stored.len(), 2, "{corrected}");
        // Ids are UUIDv7: the correction's is the later.
        stored.sort();
        let hash = hex::encode(Sha256::digest(CORRECTED_CSV.as_bytes()));
        let expected = format!(
            "idempotency-key: mis-nairobi-{PERIOD}-correction-{}\n\
             accepted {}: 4 repayments, total 1000065.75\n\
             status: delivered\n\
             L-0: accepted\n\
             L-1: accepted\n\
             L-2: accepted\n\
             L-3: accepted\n",
            &hash[..32],
            stored[1]
        );
        assert_output(corrected, 0, &expected);
        let report = rig.app.report(NAIROBI, &stored[1]).await;
        assert_eq!(report.body["correction"], true, "{}", report.text);
        assert!(
            uploaded(rig).contains(&"L-2 C-2 0.25".to_owned()),
            "{corrected}"
        );
    }
}
