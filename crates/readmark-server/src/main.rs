//! `readmark-server`: see the crate's docs for the protocol and
//! `readmark-server serve --help` for the settings.

use clap::Parser;

// jemalloc for the whole process, RocksDB's C++ included, as in the
// `readmark` binary: glibc's per-thread arenas kept freed memory, and RSS
// grew under a flat heap (docs/benchmarks.md).
#[cfg(all(target_os = "linux", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
/// jemalloc's settings, read before `main`: a background thread returns
/// freed pages after 1 s (not 10 s, and not only when the arena is busy),
/// so RSS follows what is in use (docs/benchmarks.md, "The hour with
/// jemalloc").
#[cfg(all(target_os = "linux", not(target_env = "msvc")))]
#[unsafe(export_name = "malloc_conf")]
static MALLOC_CONF: Option<&'static std::ffi::c_char> =
    Some(unsafe { &*c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:1000".as_ptr() });

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
