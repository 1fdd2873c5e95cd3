//! Command-line entry point.

mod demo;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "readmark",
    version,
    about = "Read receipts storage engine: demo and tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a realistic workload (DMs, groups, channels; members scrolling and
    /// marking read) on a store, print what it did and sample answers.
    Demo(DemoArgs),
}

/// Options of `readmark demo`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct DemoArgs {
    /// Store directory; default: a temporary directory removed at exit.
    #[arg(long)]
    pub(crate) path: Option<PathBuf>,
    /// Seed of the workload generator (same seed, same operations).
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// Number of users.
    #[arg(long, default_value_t = 3_000)]
    pub(crate) users: u64,
    /// Number of workload steps (a step is a burst of messages or a reading
    /// session).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) steps: u64,
    /// Hide the progress bar.
    #[arg(long)]
    pub(crate) quiet: bool,
}

pub(crate) fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("readmark: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
