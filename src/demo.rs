//! `repayment-gateway serve --demo`: the whole flow on one machine with nothing installed but
//! Rust — the embedded store, the Kiva sandbox in-process as "Kiva", two demo partners
//! (101 two-column, 102 three-column) and freshly made API keys, printed with ready-to-paste
//! curl commands.

use std::net::SocketAddr;

use crate::api::auth::new_key;
use crate::config::Settings;
use crate::kiva::KivaClient;
use crate::periods::refresh::{RefreshOutcome, refresh_expected_loans};
use crate::sandbox::{Sandbox, SandboxConfig};
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
    let store = crate::startup::build_store(&settings)?;
    let app = Application::build_with_store(&settings, store.clone())?;
    let base = format!("http://127.0.0.1:{}", app.port());
    // Before anything is printed, so the period view already knows what Kiva expects.
    let kiva = KivaClient::new(&settings.kiva, &settings.partners)?;
    let mut expected = Vec::new();
    for partner in &settings.partners {
        match refresh_expected_loans(store.clone(), &kiva, &partner.id).await {
            Ok(RefreshOutcome::Refreshed { loans, pages }) => expected.push(format!(
                "partner {}: {loans} loans read in {pages} pages",
                partner.id
            )),
            Ok(RefreshOutcome::AlreadyRunning) => {}
            Err(error) => expected.push(format!("partner {}: refresh failed: {error}", partner.id)),
        }
    }
    println!("{}", banner(&base, &keys, &expected));
    app.run_until_stopped().await?;
    sandbox.shutdown();
    Ok(())
}

fn banner(base: &str, keys: &DemoKeys, expected: &[String]) -> String {
    format!(
        r#"
repayment-gateway demo: data in ./{DEMO_STORE}, "Kiva" is the sandbox inside this process.

  Swagger UI:  {base}/swagger-ui/
  API keys (new at each start):
    partner 102 (three-column), branch Nairobi:  {k102}
    partner 101 (two-column), branch Kisumu:     {k101}
    admin, every partner:                        {admin}

Submit a report (loan L-2006 is "ended", so Kiva will refuse that one loan):
curl -s -i -X POST {base}/v1/repayments -H 'X-Api-Key: {k102}' -H 'Content-Type: application/json' -H 'Idempotency-Key: demo-2026-10-1' -d '{{"period":"2026-10","repayments":[{{"loan_id":"L-2001","client_id":"C-2001","amount":"25.00"}},{{"loan_id":"L-2002","client_id":"C-2002","amount":40.5}},{{"loan_id":"L-2006","client_id":"C-2006","amount":"10"}}]}}'

Follow it (delivered within a second):
curl -s {base}/v1/reports/REPORT_ID -H 'X-Api-Key: {k102}'

What needs an operator:
curl -s '{base}/v1/reports?status=needs_attention&partner_id=102' -H 'X-Api-Key: {admin}'

Kiva's expected loans (read from the loans list at start: {expected}):
curl -s {base}/v1/partners/102/expected-loans -H 'X-Api-Key: {admin}'
Refresh them now:
curl -s -i -X POST {base}/v1/partners/102/expected-loans/refresh -H 'X-Api-Key: {admin}'

Ctrl-C stops the demo."#,
        k102 = keys.three_column_branch,
        k101 = keys.two_column_branch,
        admin = keys.admin,
        expected = expected.join("; "),
    )
}
