//! `repayment-gateway serve --demo`: the whole flow on one machine with nothing installed but
//! Rust — the embedded store, the Kiva sandbox in-process as "Kiva", two demo partners
//! (101 two-column, 102 three-column) and freshly made API keys, printed with ready-to-paste
//! curl commands.

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;

use crate::api::auth::new_key;
use crate::config::{EMBEDDED_PREFIX, Settings};
use crate::kiva::KivaClient;
use crate::periods::refresh::{RefreshOutcome, refresh_expected_loans};
use crate::sandbox::{DEMO_HOLD_LOAN, Sandbox, SandboxConfig, SandboxLoan};
use crate::startup::Application;

/// Where the demo keeps its data, relative to the working directory.
pub const DEMO_STORE: &str = "demo-data";

pub struct DemoKeys {
    pub two_column_branch: String,
    pub three_column_branch: String,
    pub admin: String,
}

/// The demo configuration; `GATEWAY_*` variables still override it (e.g. the bind address).
pub fn settings(sandbox: &Sandbox) -> anyhow::Result<(Settings, DemoKeys)> {
    let keys = DemoKeys {
        two_column_branch: new_key().0,
        three_column_branch: new_key().0,
        admin: new_key().0,
    };
    let hash = crate::api::auth::hash_key;
    let toml = format!(
        r#"
[server]
bind = "127.0.0.1:8080"
[store]
url = "embedded:{DEMO_STORE}"
[kiva]
token_url = "{token_url}"
audience = "{audience}"
api_base_url = "{base}"
request_timeout_secs = 10
[delivery]
poll_interval_ms = 200
retry_base_ms = 1000
retry_max_secs = 30
[[partners]]
id = "101"
name = "Demo MFI, two-column"
column_format = "two_column"
client_id = "demo-two-column"
client_secret = "demo-secret-101"
[[partners]]
id = "102"
name = "Demo MFI, three-column"
column_format = "three_column"
client_id = "demo-three-column"
client_secret = "demo-secret-102"
[[api_keys]]
name = "demo-kisumu"
partner = "101"
branch = "Kisumu"
role = "branch"
key_sha256 = "{k101}"
[[api_keys]]
name = "demo-nairobi"
partner = "102"
branch = "Nairobi"
role = "branch"
key_sha256 = "{k102}"
[[api_keys]]
name = "demo-admin"
partner = "*"
branch = "Head office"
role = "admin"
key_sha256 = "{kadmin}"
"#,
        token_url = sandbox.token_url(),
        audience = sandbox.audience(),
        base = sandbox.base_url(),
        k101 = hash(&keys.two_column_branch),
        k102 = hash(&keys.three_column_branch),
        kadmin = hash(&keys.admin),
    );
    Ok((Settings::from_toml_str(&toml)?, keys))
}

pub async fn run() -> anyhow::Result<()> {
    let sandbox =
        Sandbox::start(SandboxConfig::demo(), SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let (settings, keys) = settings(&sandbox)?;
    crate::telemetry::init(&settings.log);
    // A store named by `GATEWAY_STORE__URL` is the operator's, and kept.
    let fresh = settings.store.url == format!("{EMBEDDED_PREFIX}{DEMO_STORE}");
    if fresh {
        empty_store(Path::new(DEMO_STORE))?;
    }
    let store = crate::startup::build_store(&settings)?;
    let app = Application::build_with_store(&settings, store.clone())?;
    let base = format!("http://127.0.0.1:{}", app.port());
    // Before anything is printed, so the period view already knows what Kiva expects.
    let kiva = KivaClient::new(&settings.kiva, &settings.partners)?;
    let mut expected = Vec::new();
    for partner in &settings.partners {
        match refresh_expected_loans(
            store.clone(),
            &kiva,
            &partner.id,
            settings.reconcile.max_expected_loans,
        )
        .await
        {
            Ok(RefreshOutcome::Refreshed { loans, pages }) => expected.push(format!(
                "partner {}: {loans} loans read in {pages} pages",
                partner.id
            )),
            Ok(RefreshOutcome::AlreadyRunning) => {}
            Err(error) => expected.push(format!("partner {}: refresh failed: {error}", partner.id)),
        }
    }
    let metrics = app
        .metrics_port()
        .map(|port| format!("http://127.0.0.1:{port}/metrics"));
    let data = if fresh {
        format!("data in ./{DEMO_STORE}, emptied at each start")
    } else {
        "data in the store GATEWAY_STORE__URL names, kept from earlier runs".to_owned()
    };
    let loans = SandboxConfig::demo().loans;
    println!(
        "{}",
        banner(&base, &keys, &data, &loans, &expected, metrics.as_deref())
    );
    app.run_until_stopped().await?;
    sandbox.shutdown();
    Ok(())
}

/// Each demo starts from an empty store: its keys are new at each start and its "Kiva"
/// forgets what it was sent, and an earlier run's reports would make the printed commands
/// replay that run's answers (their Idempotency-Keys) or be refused (loans already reported
/// for 2026-10). Only the store's own files go, and not while another process has it open
/// (opening it then says so).
fn empty_store(dir: &Path) -> anyhow::Result<()> {
    let Ok(lock) = File::options().write(true).open(dir.join("lock")) else {
        return Ok(());
    };
    if lock.try_lock().is_err() {
        return Ok(());
    }
    for name in ["gateway.db", "gateway.db-wal", "gateway.db-shm"] {
        match std::fs::remove_file(dir.join(name)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                anyhow::bail!("cannot empty the demo's store {}: {error}", dir.display())
            }
            _ => {}
        }
    }
    Ok(())
}

/// How many loans the sandbox has for `partner`, by status: its loans list pages them.
fn loan_count(loans: &[SandboxLoan], partner: &str) -> String {
    let mine: Vec<&SandboxLoan> = loans.iter().filter(|l| l.partner_id == partner).collect();
    let mut statuses: Vec<(&str, usize)> = Vec::new();
    for loan in &mine {
        match statuses.iter_mut().find(|(s, _)| *s == loan.status) {
            Some((_, count)) => *count += 1,
            None => statuses.push((&loan.status, 1)),
        }
    }
    let by_status: Vec<String> = statuses
        .iter()
        .map(|(status, count)| {
            let status = if *status == "payingBack" {
                "paying back"
            } else {
                status
            };
            format!("{count} {status}")
        })
        .collect();
    format!("{} loans ({})", mine.len(), by_status.join(", "))
}

fn banner(
    base: &str,
    keys: &DemoKeys,
    data: &str,
    loans: &[SandboxLoan],
    expected: &[String],
    metrics: Option<&str>,
) -> String {
    // Apart from the API, on this host only (`metrics.bind`); none when turned off.
    let metrics = metrics.map_or_else(
        || "Metrics are turned off (metrics.enabled = false).".to_owned(),
        |url| {
            format!(
                "Prometheus metrics (amounts per partner, the queue), on this host only, apart from the API:\ncurl -s {url}"
            )
        },
    );
    // The id of the newest report a key sees, for commands that work when pasted as printed.
    let newest = |query: &str, key: &str| {
        format!(
            r#"$(curl -s '{base}/v1/reports?{query}limit=1' -H 'X-Api-Key: {key}' | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')"#
        )
    };
    let submit = |key: &str, idempotency_key: &str, body: &str| {
        format!(
            "curl -s -i -X POST {base}/v1/repayments -H 'X-Api-Key: {key}' -H 'Content-Type: application/json' -H 'Idempotency-Key: {idempotency_key}' -d '{body}'"
        )
    };
    let k102 = &keys.three_column_branch;
    let admin = &keys.admin;
    format!(
        r#"
repayment-gateway demo: {data}; "Kiva" is the sandbox inside this process.

  The page for the Kiva Coordinator and the operator (English or Spanish):
               {base}/   sign in with the admin key below (sees every branch, can act);
                         a branch key shows that branch only
  Swagger UI:  {base}/swagger-ui/
  API keys (new at each start):
    partner 102 (three-column), branch Nairobi:  {k102}
    partner 101 (two-column), branch Kisumu:     {k101}
    admin, every partner:                        {admin}

Loans the sandbox knows (loan_id / client_id):
  partner 102: {loans102}, among them
               L-2001/C-2001 .. L-2004/C-2004, L-1042970/C-184729, L-1043223/C-481395 (paying
               back: accepted), L-2005/C-2005 (defaulted: accepted), L-2006/C-2006 (ended: Kiva
               refuses that loan), then from L-2007/C-2007 on, of each 20: 14 paying back,
               2 defaulted, 3 ended, 1 refunded (Kiva refuses the ended and refunded loans)
  partner 101: {loans101}, L-1001 ..
               likewise (two-column: client_id is optional)
  both:        {hold}/C-HOLD: the first batch with it gets a 500 from "Kiva", so the gateway
               holds the batch for an operator
  Any other loan id: Kiva refuses that loan (loan_not_found).

Submit a report (loan L-2006 is "ended", so Kiva will refuse that one loan):
{submit_ok}

Follow Nairobi's newest report (delivered within a second; run it again to see it change):
curl -s "{base}/v1/reports/{newest_nairobi}" -H 'X-Api-Key: {k102}'

See a batch held, and resolve it. Submit a report with loan {hold}:
{submit_hold}
What needs an operator (every partner; add &partner_id=102 for one):
curl -s '{base}/v1/reports?status=needs_attention' -H 'X-Api-Key: {admin}'
"Kiva" did not process the held batch (look in PA2 for real), so resend it (the batch id is the
report id and its number, ".1"); or, had the upload been in PA2, use /mark-delivered instead:
curl -s -X POST "{base}/v1/batches/{newest_held}.1/resend" -H 'X-Api-Key: {admin}'
Then follow Nairobi's newest report again: it is delivered.
Or, on the page: "Needs attention" lists the held batch, with "Mark delivered" and "Resend".

The month as the Kiva Coordinator sees it before finalizing in PA2 ("reported of expected", the
loans not reported, those PA2 will ignore, and why it is not ready yet):
curl -s '{base}/v1/periods/2026-10?partner_id=102' -H 'X-Api-Key: {admin}'
The expected loans nobody reported, as a CSV for the branches:
curl -s '{base}/v1/periods/2026-10/not-reported?partner_id=102' -H 'Accept: text/csv' -H 'X-Api-Key: {admin}'

Kiva's expected loans (read from the loans list at start: {expected}):
curl -s {base}/v1/partners/102/expected-loans -H 'X-Api-Key: {admin}'
Refresh them now:
curl -s -i -X POST {base}/v1/partners/102/expected-loans/refresh -H 'X-Api-Key: {admin}'

{metrics}

Ctrl-C stops the demo."#,
        k101 = keys.two_column_branch,
        loans102 = loan_count(loans, "102"),
        loans101 = loan_count(loans, "101"),
        expected = expected.join("; "),
        hold = DEMO_HOLD_LOAN,
        submit_ok = submit(
            k102,
            "demo-2026-10-1",
            r#"{"period":"2026-10","repayments":[{"loan_id":"L-2001","client_id":"C-2001","amount":"25.00"},{"loan_id":"L-2002","client_id":"C-2002","amount":40.5},{"loan_id":"L-2006","client_id":"C-2006","amount":"10"}]}"#
        ),
        submit_hold = submit(
            k102,
            "demo-2026-10-hold",
            r#"{"period":"2026-10","repayments":[{"loan_id":"L-HOLD","client_id":"C-HOLD","amount":"12.50"},{"loan_id":"L-2003","client_id":"C-2003","amount":"25.00"}]}"#
        ),
        newest_nairobi = newest("", k102),
        newest_held = newest("status=needs_attention&", admin),
    )
}
