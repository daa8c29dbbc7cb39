//! `crosstalk serve`: start the [`App`], print the one machine-readable ready line, run until a
//! signal asks for shutdown (SIGHUP reloads the config), and map how it ended to the exit code
//! (0 stopped cleanly; 1 state not committed; 2 could not start). Signal handling lives in
//! [`Signals`] alone.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::App;
use crate::cli::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use crate::config::Config;
use crate::reload::{ConfigSource, Reloader};

/// Run the sidecar until SIGTERM or Ctrl-C; `source` is read again on SIGHUP.
pub async fn serve(config: Config, source: ConfigSource) -> ExitCode {
    let started = std::time::Instant::now();
    if config.watches.is_empty() {
        tracing::warn!(
            "NOTHING IS WATCHED: the config sets `watch = []`, so no shared instance can be \
             found (only misdelivered events); remove it to keep the default watches"
        );
    }
    let app = match App::start_from(config, Some(source)).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("crosstalk: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // Before the ready line: a supervisor may send SIGTERM as soon as it reads it, and the
    // default action would kill the process without draining (SIGHUP's too).
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("crosstalk: cannot install signal handlers: {e}");
            let _ = app.stop(false).await;
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let a = app.addrs;
    tracing::info!(otlp_grpc = %a.otlp_grpc, otlp_http = %a.otlp_http, admin = %a.admin,
        startup_ms = started.elapsed().as_millis() as u64, "crosstalk ready");
    // One machine-readable line, so that scripts and tests using port 0 learn the ports.
    println!(
        "{}",
        serde_json::json!({"ready": true, "otlp_grpc": a.otlp_grpc.to_string(),
            "otlp_http": a.otlp_http.to_string(), "admin": a.admin.to_string()})
    );
    let _ = std::io::stdout().flush();
    tokio::spawn(obey(signals, app.shutdown_token(), app.reloader.clone()));
    match app.run_until_shutdown().await {
        Ok(_) => {
            tracing::info!("stopped");
            ExitCode::from(EXIT_OK)
        }
        Err(e) => {
            tracing::error!(error = %e, "stopped uncleanly");
            eprintln!("crosstalk: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Act on each signal as it comes, until one asks for shutdown.
async fn obey(mut signals: Signals, shutdown: CancellationToken, reloader: Option<Arc<Reloader>>) {
    loop {
        match signals.next().await {
            Asked::Shutdown => {
                tracing::info!("shutting down");
                shutdown.cancel();
                return;
            }
            // Off this loop: a reload waits for the engine, and SIGTERM must not wait for it.
            // The outcome is logged and counted by the reload itself.
            Asked::Reload => match reloader.clone() {
                Some(r) => drop(tokio::spawn(async move { r.reload("sighup").await })),
                None => tracing::warn!("SIGHUP ignored: this process cannot reload"),
            },
        }
    }
}

/// What a signal asks of the running sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// SIGTERM or SIGINT: drain and stop.
    Shutdown,
    /// SIGHUP: read the config again and apply its watches.
    Reload,
}

/// The signals `serve` listens to once started; one more is one field here, one arm in
/// [`Signals::next`] and one variant of [`Asked`].
pub struct Signals {
    term: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Wait for the next signal.
    pub async fn next(&mut self) -> Asked {
        tokio::select! {
            _ = self.term.recv() => Asked::Shutdown,
            _ = self.interrupt.recv() => Asked::Shutdown,
            _ = self.hangup.recv() => Asked::Reload,
        }
    }
}

/// `serve --repair`: say what was kept and where; false when the store cannot be repaired.
pub fn repair_store(dir: &std::path::Path) -> bool {
    match crate::store::guard::repair(dir) {
        Ok(r) => {
            match (&r.kept_in, r.salvaged) {
                (None, _) => eprintln!("crosstalk: store in {} is sound", dir.display()),
                (Some(kept), true) => eprintln!(
                    "crosstalk: damaged store files copied to {}; kept what could be read",
                    kept.display()
                ),
                (Some(kept), false) => eprintln!(
                    "crosstalk: damaged store moved to {}; starting with an empty store",
                    kept.display()
                ),
            }
            true
        }
        Err(e) => {
            eprintln!("crosstalk: cannot repair the store: {e}");
            false
        }
    }
}
