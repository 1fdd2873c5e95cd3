//! The `readmark` command-line tool: a realistic demo workload on an
//! embedded store, and (as they land) benchmarks and inspection commands.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
