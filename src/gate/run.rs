//! `crosstalk run -- CMD`: a private crosstalk on free loopback ports and a temporary store,
//! CMD run with its OTLP exporters pointed at it; after CMD exits (and a grace for its last
//! exports) the engine stops and its findings decide the exit code, as for `check`. CMD's own
//! failure wins: its exit code is passed on.

use std::process::ExitCode;
use std::time::Duration;

use super::{Format, Outcome, finish, known_watches};
use crate::cli::{EXIT_FINDINGS, EXIT_USAGE};
use crate::config::Config;

/// Run `command` against a private crosstalk; the exit code says whether it passes.
pub async fn run(
    mut config: Config,
    format: Format,
    expect: Vec<String>,
    grace: Duration,
    command: Vec<String>,
) -> ExitCode {
    if let Err(code) = known_watches(&config, &expect) {
        return code;
    }
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.listen.otlp_grpc = loopback;
    config.listen.otlp_http = loopback;
    config.listen.admin = loopback;
    let storage = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("crosstalk: cannot create a temporary store: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    config.storage_dir = storage.path().to_owned();
    let app = match crate::App::start(config).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("crosstalk: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let status = match spawn(&command, &app.addrs).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("crosstalk: cannot run `{}`: {e}", command[0]);
            let _ = app.stop(true).await;
            return ExitCode::from(EXIT_USAGE);
        }
    };
    tokio::time::sleep(grace).await;
    // Without the engine there is no verdict: "no findings" would be a false all-clear.
    let engine = match app.stop(true).await {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("crosstalk: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let verdict = finish(&Outcome::of(&engine), format, &expect);
    if !status.success() {
        eprintln!("crosstalk: `{}` failed ({status})", command.join(" "));
        return ExitCode::from(
            status
                .code()
                .map(|c| c.clamp(1, 255) as u8)
                .unwrap_or(EXIT_FINDINGS),
        );
    }
    verdict
}

/// Run CMD to its end with the OTLP endpoints (and the kit's) pointed at `addrs`.
async fn spawn(
    command: &[String],
    addrs: &crate::app::BoundAddrs,
) -> std::io::Result<std::process::ExitStatus> {
    let http = addrs.otlp_http;
    tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{http}"))
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("CROSSTALK_EVENTS_URL", format!("http://{http}/v1/events"))
        .env(
            "CROSSTALK_GRPC_ENDPOINT",
            format!("http://{}", addrs.otlp_grpc),
        )
        .status()
        .await
}
