//! The `crosstalk` binary: parse the command line, start logging, hand over to [`crosstalk::cli`].
#![forbid(unsafe_code)]

use clap::Parser;

/// jemalloc instead of the C library's allocator: about 8 B of bookkeeping per small allocation
/// instead of 16, and freed memory goes back to the OS on its own, so the resident set follows
/// what crosstalk holds (a restore's or a flood's peak does not stay resident). A background
/// thread returns it about a second after it was freed, idle or not (see `.cargo/config.toml`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = match crosstalk::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                crosstalk::cli::EXIT_USAGE
            } else {
                0
            };
            let _ = e.print();
            return std::process::ExitCode::from(code);
        }
    };
    crosstalk::telemetry::init();
    crosstalk::cli::run(cli)
}
