//! The gateway's Kiva sandbox (demo partners) answering every repayments call after a fixed
//! latency: `repayment-gateway sandbox` has no latency flag, the in-process API has.
//!
//! Usage: sandbox_with_latency --bind 127.0.0.1:PORT --latency-ms N
//! Prints the base URL once listening; stops on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use repayment_gateway::sandbox::{Sandbox, SandboxConfig};

fn usage() -> ! {
    eprintln!("usage: sandbox_with_latency --bind 127.0.0.1:PORT --latency-ms N");
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut bind: Option<SocketAddr> = None;
    let mut latency_ms = 0u64;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--bind" => bind = Some(value.parse().unwrap_or_else(|_| usage())),
            "--latency-ms" => latency_ms = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let bind = bind.unwrap_or_else(|| usage());
    let sandbox = Sandbox::start(SandboxConfig::demo(), bind).await?;
    sandbox.set_latency(Duration::from_millis(latency_ms));
    println!("{}", sandbox.base_url());
    repayment_gateway::startup::stop_signal().await;
    sandbox.shutdown();
    Ok(())
}
