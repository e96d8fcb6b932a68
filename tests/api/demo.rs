//! `serve --demo` as a newcomer runs it: the banner's commands pasted as printed, in order.

use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncBufReadExt;

use crate::crash::free_port;
use crate::helpers::*;

/// A demo started in a directory of its own, and the banner it printed.
struct Demo {
    child: tokio::process::Child,
    banner: Vec<String>,
    port: u16,
    metrics_port: u16,
}

async fn start_demo(cwd: &Path) -> Demo {
    let port = free_port();
    let metrics_port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_repayment-gateway"))
        .args(["serve", "--demo"])
        .current_dir(cwd)
        .env("GATEWAY_SERVER__BIND", format!("127.0.0.1:{port}"))
        // Not the default 9100: other test runs on this machine may hold it.
        .env("GATEWAY_METRICS__BIND", format!("127.0.0.1:{metrics_port}"))
        .env_remove("GATEWAY_CONFIG")
        .env_remove("GATEWAY_STORE__URL")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains("Ctrl-C stops the demo");
            banner.push(line);
            if done {
                break;
            }
        }
    })
    .await
    .expect("the demo prints its banner");
    // The demo logs to the same stdout: keep reading it, or a full pipe blocks the gateway.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Demo {
        child,
        banner,
        port,
        metrics_port,
    }
}

impl Demo {
    /// The banner's commands that contain `what`.
    fn commands(&self, what: &str) -> Vec<String> {
        self.banner
            .iter()
            .filter(|l| l.starts_with("curl ") && l.contains(what))
            .cloned()
            .collect()
    }

    /// The key printed on the line that names `branch`.
    fn key(&self, branch: &str) -> String {
        let line = self.banner.iter().find(|l| l.contains(branch)).unwrap();
        line.split_whitespace().last().unwrap().to_owned()
    }
}

/// Its standard output, run exactly as printed (sh -c), as a newcomer pastes it.
async fn sh(command: &str) -> String {
    let out = tokio::process::Command::new("sh")
        .args(["-c", command])
        .output()
        .await
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn id_in(answer: &str) -> String {
    answer
        .lines()
        .find_map(|l| l.strip_prefix("location: /v1/reports/"))
        .unwrap()
        .trim()
        .to_owned()
}

/// The banner's report, its held batch and the resend, each command run as printed: each does
/// what the banner says.
async fn follow_the_banner(demo: &Demo) {
    let submits = demo.commands("-X POST http");
    let (submit, submit_hold) = (&submits[0], &submits[1]);
    let follow = &demo.commands("/v1/reports/$(")[0];
    let attention = &demo.commands("status=needs_attention' ")[0];
    let resend = &demo.commands("/resend")[0];
    let scrape = &demo.commands("/metrics")[0];

    let answer = sh(submit).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(!answer.contains("idempotent-replayed"), "{answer}");
    let id = id_in(&answer);
    let mut report = serde_json::Value::Null;
    // L-2006 is `ended`: Kiva refuses that loan, so the report says so.
    wait_until("the demo delivers the report", async || {
        report = serde_json::from_str(&sh(follow).await).unwrap_or_default();
        report["status"] == "delivered_with_problems"
    })
    .await;
    assert_eq!(report["refused_by_kiva"], 1, "{report}");
    assert_eq!(report["id"], id.as_str());
    let metrics = sh(scrape).await;
    assert!(
        metrics.contains("repayment_gateway_reports_accepted_total"),
        "{metrics}"
    );
    let repayments = &report["batches"][0]["repayments"];
    assert_eq!(repayments[0]["state"], "accepted");
    assert_eq!(repayments[2]["state"], "rejected_by_kiva");

    // The held batch: seen by the operator's command, resent by the printed one, delivered.
    let answer = sh(submit_hold).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(!answer.contains("idempotent-replayed"), "{answer}");
    let held = id_in(&answer);
    wait_until("the demo holds the L-HOLD batch", async || {
        let list: serde_json::Value =
            serde_json::from_str(&sh(attention).await).unwrap_or_default();
        list["reports"][0]["id"] == held.as_str()
    })
    .await;
    report = serde_json::from_str(&sh(follow).await).unwrap();
    assert_eq!(report["batches"][0]["state"], "held", "{report}");
    let resent: serde_json::Value = serde_json::from_str(&sh(resend).await).unwrap();
    assert_eq!(resent["id"], format!("{held}.1"), "{resent}");
    wait_until("the resent batch is delivered", async || {
        report = serde_json::from_str(&sh(follow).await).unwrap_or_default();
        report["status"] == "delivered"
    })
    .await;
    assert_eq!(report["id"], held.as_str());
    let repayments = &report["batches"][0]["repayments"];
    assert_eq!(repayments[0]["state"], "accepted", "{report}");
    assert_eq!(repayments[1]["state"], "accepted", "{report}");
}

/// Run twice in the same directory, the second demo's printed commands do what they say as
/// the first's did: the demo starts from an empty store (its second run used to replay the
/// first run's answers, and had no held batch to resend).
#[tokio::test]
async fn the_demo_serves_swagger_and_its_printed_curl_delivers_a_report_run_after_run() {
    let cwd = tempfile::tempdir().unwrap();
    let mut demo = start_demo(cwd.path()).await;
    let (port, banner) = (demo.port, &demo.banner);
    // The metrics, apart from the API, as printed; not on the API's address.
    let scrape = &demo.commands("/metrics")[0];
    assert!(
        scrape.contains(&format!("127.0.0.1:{}/metrics", demo.metrics_port)),
        "{scrape}"
    );
    assert!(!banner.iter().any(|l| l.contains("REPORT_ID")));
    assert!(banner.iter().any(|l| l.contains("L-1042970/C-184729")));
    assert!(
        banner
            .iter()
            .any(|l| l.contains(&format!("http://127.0.0.1:{port}/swagger-ui/")))
    );
    assert!(banner.iter().any(|l| l.contains("emptied at each start")));
    // The sandbox's loans, counted as its loans list pages them (not the handful named).
    let loans = repayment_gateway::sandbox::SandboxConfig::demo().loans;
    for partner in ["101", "102"] {
        let count = loans.iter().filter(|l| l.partner_id == partner).count();
        assert!(count > 300, "{count}");
        assert!(
            banner
                .iter()
                .any(|l| l.contains(&format!("partner {partner}: {count} loans ("))),
            "{banner:#?}"
        );
    }

    // The page's address and the key to sign in with are printed, and `/` leads to the page.
    let page_line = banner
        .iter()
        .position(|l| {
            l.contains(&format!(
                "http://127.0.0.1:{port}/   sign in with the admin key"
            ))
        })
        .expect("the demo prints the page's address");
    assert!(
        banner[page_line..]
            .iter()
            .any(|l| l.contains("admin, every partner:") && l.contains("rg_"))
    );
    let page = reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap();
    assert_eq!(page.url().path(), "/web/sign-in");
    assert_eq!(page.status(), 200);
    let swagger = reqwest::get(format!("http://127.0.0.1:{port}/swagger-ui/"))
        .await
        .unwrap();
    assert_eq!(swagger.status(), 200);
    let on_api = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert_eq!(on_api.status(), 404, "not on the API's address");

    follow_the_banner(&demo).await;
    assert!(cwd.path().join("demo-data").join("gateway.db").exists());
    demo.child.kill().await.unwrap();

    let demo = start_demo(cwd.path()).await;
    follow_the_banner(&demo).await;
}

/// The outputs examples/README.md shows: each block that starts with an Idempotency-Key, with
/// the sample file and the exit code its introducing line names, and the report id as `<id>`.
fn readme_outputs() -> Vec<(String, i32, String)> {
    let readme = std::fs::read_to_string("examples/README.md").unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    let mut outputs = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        if *line != "```" || !lines[at + 1].starts_with("idempotency-key: mis-") {
            continue;
        }
        let intro = lines[at - 1];
        let sample = ["repayments-three-column.csv", "repayments-two-column.csv"]
            .into_iter()
            .find(|sample| intro.contains(sample))
            .unwrap_or_else(|| panic!("which sample? {intro}"));
        let code = intro
            .rsplit_once("exit code ")
            .and_then(|(_, code)| code.trim_end_matches(':').parse().ok())
            .unwrap_or_else(|| panic!("which exit code? {intro}"));
        let block: Vec<&str> = lines[at + 1..]
            .iter()
            .take_while(|l| **l != "```")
            .copied()
            .collect();
        outputs.push((sample.to_owned(), code, without_id(&block.join("\n"))));
    }
    outputs
}

fn without_id(output: &str) -> String {
    output
        .lines()
        .map(|line| match line.strip_prefix("accepted ") {
            Some(rest) => format!("accepted <id>:{}", rest.split_once(':').unwrap().1),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// After the demo's own reports, each shipped sample sent by examples/submit.sh with the key
/// the demo prints for its partner is accepted (the three-column sample's loans were the
/// banner's, so it was refused as already reported) and prints what examples/README.md shows.
#[tokio::test]
async fn the_shipped_samples_after_the_demos_reports_print_what_the_examples_readme_shows() {
    let cwd = tempfile::tempdir().unwrap();
    let demo = start_demo(cwd.path()).await;
    follow_the_banner(&demo).await;
    let outputs = readme_outputs();
    assert_eq!(outputs.len(), 2, "{outputs:?}");
    for (sample, code, expected) in outputs {
        let branch = if sample.contains("three-column") {
            "branch Nairobi:"
        } else {
            "branch Kisumu:"
        };
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let out = tokio::process::Command::new(examples.join("submit.sh"))
            .arg(examples.join(&sample))
            .env("GATEWAY_URL", format!("http://127.0.0.1:{}", demo.port))
            .env("GATEWAY_API_KEY", demo.key(branch))
            .env("REPORT_PERIOD", "2026-10")
            .env_remove("GATEWAY_BRANCH")
            .env_remove("REPORT_CORRECTION")
            .env("POLL_TIMEOUT_SECS", "30")
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{sample}\n{stdout}{stderr}");
        assert_eq!(without_id(&stdout), expected, "{sample}\n{stderr}");
    }
}
