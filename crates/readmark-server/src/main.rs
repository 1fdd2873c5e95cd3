//! `readmark-server`: see the crate's docs for the protocol and
//! `readmark-server serve --help` for the settings.

use clap::Parser;

/// The receipt service: readmark behind authenticated WebSocket push and
/// an HTTP API for the backend.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: readmark_server::cli::Command,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match readmark_server::cli::run(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("readmark-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
