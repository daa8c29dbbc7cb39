//! The command line: verbs, flags, and their exit codes (0 fine, 1 leaks found, 2 usage,
//! config or input error, 3 a watch named by `--expect` saw nothing). `main.rs` only parses and
//! calls [`run`], which loads the config and dispatches: `serve` to [`crate::serve`], `check`,
//! `discover` and `run` to [`crate::gate`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, DEFAULT_CONFIG, Overrides};
use crate::gate::{self, DiscoverFormat, Format};
use crate::privacy::Pseudonymizer;
use crate::reload::ConfigSource;
use crate::serve;

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
        #[command(flatten)]
        gate: GateArgs,
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
        #[command(flatten)]
        gate: GateArgs,
        /// How long to wait after CMD exits for its last exports.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// The command to run (after `--`), with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at crosstalk.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
}

/// The flags `check` and `run` share.
#[derive(Debug, clap::Args)]
pub struct GateArgs {
    /// Config file for watches, identity and events fields (`run` replaces its listen
    /// addresses with free loopback ports); without it, the embedded default.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// How findings are printed.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Fail (exit 3) when this watch saw no observation; repeatable.
    #[arg(long = "expect", value_name = "WATCH")]
    pub expect: Vec<String>,
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

/// [`load`], and where the config came from, kept for `serve` to reload it the same way.
fn load_source(
    config: &Option<PathBuf>,
    flags: &Flags,
) -> Result<(Config, ConfigSource), ExitCode> {
    let loaded = config_source(config, flags).and_then(|s| Ok((s.load()?, s)));
    loaded.map_err(|e| {
        eprintln!("crosstalk: {e}");
        ExitCode::from(EXIT_USAGE)
    })
}

fn load_config(config: &Option<PathBuf>, flags: &Flags) -> Result<Config, ConfigError> {
    config_source(config, flags)?.load()
}

/// The file and the overrides (environment, then flags) as resolved now.
fn config_source(config: &Option<PathBuf>, flags: &Flags) -> Result<ConfigSource, ConfigError> {
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
    Ok(ConfigSource { path, overrides })
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
        } => match load_source(
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
            Ok((config, _)) if repair && !serve::repair_store(&config.storage_dir) => {
                ExitCode::from(EXIT_USAGE)
            }
            Ok((config, source)) => runtime().block_on(serve::serve(config, source)),
            Err(code) => code,
        },
        Command::UserHash { config, id } => {
            let config = match load(&config, &[]) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match Pseudonymizer::existing_of(&config) {
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
        Command::Check { gate: args, files } => match load(&args.config, &[]) {
            Ok(config) => gate::check_command(&config, args.format, &args.expect, &files),
            Err(code) => code,
        },
        Command::Discover {
            config,
            format,
            fail_on_suspect,
            files,
        } => match load(&config, &[]) {
            Ok(config) => gate::discover_command(&config, format, fail_on_suspect, &files),
            Err(code) => code,
        },
        Command::Run {
            gate: args,
            grace,
            command,
        } => match load(&args.config, &[]) {
            Ok(config) => runtime().block_on(gate::run::run(
                config,
                args.format,
                args.expect,
                grace,
                command,
            )),
            Err(code) => code,
        },
    }
}
