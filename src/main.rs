use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // One TLS provider for the process, chosen here rather than left to crate features: when a
    // build has two compiled in (a test build also gets aws-lc-rs, through fantoccini), rustls
    // refuses to pick one and the Redis TLS client, which asks rustls for its default, panics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = repayment_gateway::cli::Cli::parse();
    match repayment_gateway::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
