use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = repayment_gateway::cli::Cli::parse();
    match repayment_gateway::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
