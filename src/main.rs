//! The `crosstalk` binary: parse the command line, start logging, hand over to [`crosstalk::cli`].
#![forbid(unsafe_code)]

use clap::Parser;

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
