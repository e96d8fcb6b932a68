//! The gateway's Kiva sandbox (demo partners) answering every repayments call after a fixed
//! latency: `repayment-gateway sandbox` has no latency flag, the in-process API has.
//!
//! Usage: sandbox_with_latency --bind 127.0.0.1:PORT --latency-ms N [--loans N]
//! `--loans N` gives demo partner 102 N more loans Kiva expects repayments for (`B-<i>`, client
//! `BC-<i>`, one in ten `defaulted`, the rest `payingBack`) and 5,000 `ended` ones after them,
//! for the expected-loans refresh and the period view (bench/month).
//! Prints the base URL once listening; stops on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use repayment_gateway::sandbox::{Sandbox, SandboxConfig, SandboxLoan};

fn usage() -> ! {
    eprintln!("usage: sandbox_with_latency --bind 127.0.0.1:PORT --latency-ms N [--loans N]");
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut bind: Option<SocketAddr> = None;
    let mut latency_ms = 0u64;
    let mut loans = 0u64;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--bind" => bind = Some(value.parse().unwrap_or_else(|_| usage())),
            "--latency-ms" => latency_ms = value.parse().unwrap_or_else(|_| usage()),
            "--loans" => loans = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let bind = bind.unwrap_or_else(|| usage());
    let sandbox = Sandbox::start(SandboxConfig::demo(), bind).await?;
    sandbox.set_latency(Duration::from_millis(latency_ms));
    if loans > 0 {
        sandbox.add_loans((0..loans + 5_000).map(|i| SandboxLoan {
            partner_id: "102".into(),
            internal_loan_id: format!("B-{i}"),
            internal_client_id: format!("BC-{i}"),
            kiva_id: 5_000_000 + i,
            status: match i {
                i if i >= loans => "ended",
                i if i % 10 == 0 => "defaulted",
                _ => "payingBack",
            }
            .into(),
            loan_local_price: "50000.00".into(),
            loan_currency: "UGX".into(),
            delinquent: i % 7 == 0,
        }));
    }
    println!("{}", sandbox.base_url());
    repayment_gateway::startup::stop_signal().await;
    sandbox.shutdown();
    Ok(())
}
