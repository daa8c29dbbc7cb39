//! The command line: verbs, flags, and their exit codes (0 fine, 1 leaks found, 2 usage,
//! config or input error, 3 a watch named by `--expect` saw nothing). `main.rs` only parses and
//! calls [`run`].

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, DEFAULT_CONFIG, Overrides};
use crate::gate::{self, Format};

/// Exit codes.
pub const EXIT_OK: u8 = 0;
pub const EXIT_FINDINGS: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
/// A watch named by `--expect` saw no observation (a leak, exit 1, wins over it).
pub const EXIT_UNOBSERVED: u8 = 3;
/// `serve` ended without committing its state (an engine panic, a stop past the grace).
pub const EXIT_FAILURE: u8 = 1;
/// `discover --fail-on-suspect` found a leak suspect.
pub const EXIT_SUSPECT: u8 = 4;

#[derive(Debug, Parser)]
#[command(
    name = "crosstalk",
    version,
    about = "Catches cross-user state leaks from traces and WebSocket event logs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar (OTLP/gRPC, OTLP/HTTP, admin API).
    ///
    /// Settings come from, highest first: these flags, `CROSSTALK_<SECTION>_<KEY>` environment
    /// variables (e.g. CROSSTALK_LISTEN_ADMIN, CROSSTALK_STORAGE_DIR), the config file, the
    /// embedded default. A file that lists no [[watch]] keeps the default watches.
    Serve {
        /// Config file (or CROSSTALK_CONFIG); without either, the embedded default.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Start on a damaged store: keep a copy of the damaged files in the storage directory's
        /// `damaged-<time>/`, carry on with what can still be read (else an empty store).
        #[arg(long)]
        repair: bool,
        /// OTLP/gRPC listen address, e.g. 0.0.0.0:4317 (listen.otlp_grpc).
        #[arg(long, value_name = "ADDR")]
        otlp_grpc: Option<String>,
        /// OTLP/HTTP listen address, e.g. 0.0.0.0:4318 (listen.otlp_http).
        #[arg(long, value_name = "ADDR")]
        otlp_http: Option<String>,
        /// Admin listen address: /metrics, /live, /ready, /api/v1/... (listen.admin).
        #[arg(long, value_name = "ADDR")]
        admin: Option<String>,
        /// Directory of the SQLite store and the generated HMAC key (storage.dir).
        #[arg(long, value_name = "DIR")]
        storage_dir: Option<PathBuf>,
    },
    /// Print the pseudonym alerts and logs (and, in `hmac` mode, the API) use for a user id.
    UserHash {
        /// The sidecar's config file, for its HMAC key (`[privacy]`, or `<storage>/hmac.key`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The raw user id to look up.
        id: String,
    },
    /// Print or validate configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Look for leaks in exported telemetry files (OTLP JSON lines, event lines, gzip, `-`).
    Check {
        /// Config file for watches, identity and events fields; without it, the embedded default.
        #[arg(long)]
        config: Option<PathBuf>,
        /// How findings are printed.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Fail (exit 3) when this watch saw no observation; repeatable.
        #[arg(long = "expect", value_name = "WATCH")]
        expect: Vec<String>,
        /// Files to read: OTLP JSON (one export per line, or whole documents) or WebSocket event
        /// lines; gzip is detected; `-` reads stdin.
        #[arg(required = true, value_name = "FILES")]
        files: Vec<String>,
    },
    /// Point at attributes that behave like an object shared between users (advisory).
    Discover {
        /// Config file for identity, watches (skipped) and `[discovery]`; without it, the default.
        #[arg(long)]
        config: Option<PathBuf>,
        /// `text` (a table, suspects first, with the watch to paste) or `json` (`candidates`).
        #[arg(long, value_enum, default_value = "text")]
        format: DiscoverFormat,
        /// Exit 4 when there is a leak suspect (for CI); otherwise discovery always exits 0.
        #[arg(long)]
        fail_on_suspect: bool,
        /// Files to read, as for `check`: OTLP JSON lines or documents, gzip, `-` for stdin.
        #[arg(required = true, value_name = "FILES")]
        files: Vec<String>,
    },
    /// Run a command with its telemetry pointed at a live crosstalk; fail on leaks.
    Run {
        /// Config file for watches and identity (its listen addresses are replaced by free
        /// loopback ports); without it, the embedded default.
        #[arg(long)]
        config: Option<PathBuf>,
        /// How findings are printed.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Fail (exit 3) when this watch saw no observation; repeatable.
        #[arg(long = "expect", value_name = "WATCH")]
        expect: Vec<String>,
        /// How long to wait after CMD exits for its last exports.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// The command to run (after `--`), with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at crosstalk.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
}

/// How `discover` prints its candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiscoverFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the embedded default configuration.
    Default,
    /// Validate a config file: exit 0, or 2 naming the bad key and why.
    Check {
        /// The config file to validate.
        file: PathBuf,
    },
}

/// `serve` flags: (section, key, value), applied over the environment.
type Flags = [(&'static str, &'static str, Option<String>)];

/// The config file (`--config`, else `CROSSTALK_CONFIG`, else the embedded default) with the
/// environment's `CROSSTALK_<SECTION>_<KEY>` and then `flags` applied over it.
fn load(config: &Option<PathBuf>, flags: &Flags) -> Result<Config, ExitCode> {
    load_config(config, flags).map_err(|e| {
        eprintln!("crosstalk: {e}");
        ExitCode::from(EXIT_USAGE)
    })
}

fn load_config(config: &Option<PathBuf>, flags: &Flags) -> Result<Config, ConfigError> {
    let env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    let mut overrides = Overrides::from_env(env)?;
    for name in &overrides.unknown_env {
        tracing::warn!(variable = %name, "unknown CROSSTALK_* environment variable ignored");
    }
    for (section, key, value) in flags {
        if let Some(v) = value {
            overrides.set(section, key, v.clone());
        }
    }
    let path = config
        .clone()
        .or_else(|| std::env::var_os("CROSSTALK_CONFIG").map(PathBuf::from));
    Config::load_with(path.as_deref(), &overrides)
}

/// `config check`: the resolved watch list, so a file that drops them is seen at once.
fn print_check(file: &std::path::Path, c: &Config) {
    println!("{}: ok ({} watches)", file.display(), c.watches.len());
    let l = &c.listen;
    println!(
        "listen: otlp_grpc {}, otlp_http {}, admin {}",
        l.otlp_grpc, l.otlp_http, l.admin
    );
    if c.default_watches {
        println!("watches: the defaults (the file lists no [[watch]])");
    }
    for w in &c.watches {
        println!("  {}", w.summary());
    }
    if c.watches.is_empty() {
        eprintln!("crosstalk: warning: nothing is watched (`watch = []`): no leak can be found");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime")
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve {
            config,
            repair,
            otlp_grpc,
            otlp_http,
            admin,
            storage_dir,
        } => match load(
            &config,
            &[
                ("listen", "otlp_grpc", otlp_grpc),
                ("listen", "otlp_http", otlp_http),
                ("listen", "admin", admin),
                (
                    "storage",
                    "dir",
                    storage_dir.map(|d| d.display().to_string()),
                ),
            ],
        ) {
            Ok(config) if repair && !repair_store(&config.storage_dir) => {
                ExitCode::from(EXIT_USAGE)
            }
            Ok(config) => runtime().block_on(serve(config)),
            Err(code) => code,
        },
        Command::UserHash { config, id } => {
            let config = match load(&config, &[]) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let p = &config.privacy;
            let key = crate::privacy::Pseudonymizer::load_existing(
                p.hmac_key.as_deref(),
                p.hmac_key_file.as_deref(),
                &config.storage_dir,
            );
            match key {
                Ok(p) => {
                    println!("{}", p.pseudonym(&id));
                    ExitCode::from(EXIT_OK)
                }
                Err(e) => {
                    eprintln!("crosstalk: {e}");
                    ExitCode::from(EXIT_USAGE)
                }
            }
        }
        Command::Config {
            action: ConfigAction::Default,
        } => {
            print!("{DEFAULT_CONFIG}");
            ExitCode::from(EXIT_OK)
        }
        Command::Config {
            action: ConfigAction::Check { file },
        } => match load_config(&Some(file.clone()), &[]) {
            Ok(c) => {
                print_check(&file, &c);
                ExitCode::from(EXIT_OK)
            }
            Err(e) => {
                eprintln!("crosstalk: {}: {e}", file.display());
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Check {
            config,
            format,
            expect,
            files,
        } => {
            let config = match load(&config, &[]).and_then(|c| known_watches(c, &expect)) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match gate::check(&config, &files) {
                Ok(outcome) => finish(&outcome, format, &expect),
                Err(e) => {
                    eprintln!("crosstalk: {e}");
                    ExitCode::from(EXIT_USAGE)
                }
            }
        }
        Command::Discover {
            config,
            format,
            fail_on_suspect,
            files,
        } => match load(&config, &[]) {
            Ok(config) => discover(&config, format, fail_on_suspect, &files),
            Err(code) => code,
        },
        Command::Run {
            config,
            format,
            expect,
            grace,
            command,
        } => match load(&config, &[]).and_then(|c| known_watches(c, &expect)) {
            Ok(config) => runtime().block_on(run_command(config, format, expect, grace, command)),
            Err(code) => code,
        },
    }
}

/// `--expect` must name configured watches: a typo would otherwise pass forever.
fn known_watches(config: Config, expect: &[String]) -> Result<Config, ExitCode> {
    match expect
        .iter()
        .find(|e| !config.watches.iter().any(|w| &w.name == *e))
    {
        Some(unknown) => {
            eprintln!("crosstalk: --expect {unknown}: no watch of that name is configured");
            Err(ExitCode::from(EXIT_USAGE))
        }
        None => Ok(config),
    }
}

/// Print the outcome; exit 1 on findings, else 3 if an expected watch saw nothing, else 0.
fn finish(outcome: &gate::Outcome, format: Format, expect: &[String]) -> ExitCode {
    let unobserved = outcome.unobserved(expect);
    let mut out = std::io::stdout().lock();
    if let Err(e) =
        gate::print_outcome(&mut out, outcome, &unobserved, format).and_then(|_| out.flush())
    {
        eprintln!("crosstalk: cannot write findings: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    // Text already says so on stdout; other formats are for machines, so tell the human too.
    if format != Format::Text {
        for name in &unobserved {
            eprintln!("crosstalk: expected watch `{name}` saw no observation");
        }
    }
    ExitCode::from(if !outcome.findings.is_empty() {
        EXIT_FINDINGS
    } else if !unobserved.is_empty() {
        EXIT_UNOBSERVED
    } else {
        EXIT_OK
    })
}

/// `serve --repair`: say what was kept and where; false when the store cannot be repaired.
fn repair_store(dir: &std::path::Path) -> bool {
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

fn discover(
    config: &Config,
    format: DiscoverFormat,
    fail_on_suspect: bool,
    files: &[String],
) -> ExitCode {
    let report = match gate::discover_files(config, files) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("crosstalk: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let text = match format {
        DiscoverFormat::Text => crate::correlate::discovery::report::render_text(&report),
        DiscoverFormat::Json => match serde_json::to_string_pretty(&report) {
            Ok(j) => j + "\n",
            Err(e) => {
                eprintln!("crosstalk: cannot write the report: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        eprintln!("crosstalk: cannot write the report: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let suspect = report
        .candidates
        .iter()
        .any(|c| c.verdict == crate::correlate::discovery::Verdict::LeakSuspect);
    ExitCode::from(if fail_on_suspect && suspect {
        EXIT_SUSPECT
    } else {
        EXIT_OK
    })
}

async fn serve(config: Config) -> ExitCode {
    let started = std::time::Instant::now();
    if config.watches.is_empty() {
        tracing::warn!(
            "NOTHING IS WATCHED: the config sets `watch = []`, so no shared instance can be \
             found (only misdelivered events); remove it to keep the default watches"
        );
    }
    let app = match crate::App::start(config).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("crosstalk: {e}");
            return ExitCode::from(EXIT_USAGE);
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
    let token = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
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

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `crosstalk run`: a private crosstalk on free loopback ports, CMD pointed at it.
async fn run_command(
    mut config: Config,
    format: Format,
    expect: Vec<String>,
    grace: Duration,
    command: Vec<String>,
) -> ExitCode {
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
    let http = app.addrs.otlp_http;
    let status = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{http}"))
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("CROSSTALK_EVENTS_URL", format!("http://{http}/v1/events"))
        .env(
            "CROSSTALK_GRPC_ENDPOINT",
            format!("http://{}", app.addrs.otlp_grpc),
        )
        .status()
        .await;
    let status = match status {
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
    let outcome = gate::Outcome::of(&engine);
    let verdict = finish(&outcome, format, &expect);
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
