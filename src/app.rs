//! Wiring: builds every component from a [`Config`], binds the listeners, restores state, and
//! owns the one shutdown path (stop accepting → drain → flush the store → exit within the grace).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::Admin;
use crate::auth::BearerToken;
use crate::cluster::Coordinator;
use crate::config::Config;
use crate::correlate::Engine;
use crate::correlate::evidence::Evidence;
use crate::http::Handler;
use crate::normalize::Extractor;
use crate::pipeline::{self, EngineControl, EnginePanicked, IngestHandle};
use crate::privacy::Pseudonymizer;
use crate::ready::{Latch, Readiness};
use crate::reload::{ConfigSource, Reloader, SharedExtractor};
use crate::sinks::alertmanager::AlertSender;
use crate::sources::IngestContext;
use crate::sources::discovery_tap::DiscoveryTap;
use crate::sources::events::file::Tailer;
use crate::sources::otlp::grpc::{self as otlp_grpc, OtlpGrpc};
use crate::sources::otlp::http::OtlpHttp;
use crate::store::{FileCheckpoint, Store, StoreError, StoreReader};
use crate::telemetry::metrics::Metrics;
use crate::tls::Tls;

/// Why crosstalk could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] crate::privacy::KeyError),
    #[error(transparent)]
    Token(#[from] crate::auth::TokenError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot read or write the cluster node id (node.id) in {dir}: {source}")]
    NodeId {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Serve(#[from] ListenerFailed),
    #[error("cannot listen on {name} address {addr}: {source}")]
    Bind {
        name: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The addresses actually bound (port 0 in config becomes a real port here).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    pub admin: SocketAddr,
}

/// A running crosstalk.
pub struct App {
    pub addrs: BoundAddrs,
    pub metrics: Arc<Metrics>,
    pub reader: Arc<StoreReader>,
    shutdown: CancellationToken,
    servers: JoinSet<()>,
    tailers: Vec<std::thread::JoinHandle<()>>,
    engine: EngineControl,
    grace: Duration,
    /// A listener that failed after start: `stop` reports it.
    failed: mpsc::Receiver<ListenerFailed>,
    /// Re-reads the config on SIGHUP (and `POST /api/v1/reload`); none without a source.
    pub reloader: Option<Arc<Reloader>>,
}

async fn bind(name: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { name, addr, source })
}

/// The three listeners, bound before anything is served so a taken port fails the start.
struct Listeners {
    otlp_grpc: TcpListener,
    otlp_http: TcpListener,
    admin: TcpListener,
    addrs: BoundAddrs,
}

impl Listeners {
    async fn bind(listen: &crate::config::Listen) -> Result<Listeners, StartError> {
        let otlp_grpc = bind("otlp_grpc", listen.otlp_grpc).await?;
        let otlp_http = bind("otlp_http", listen.otlp_http).await?;
        let admin = bind("admin", listen.admin).await?;
        let addr = |l: &TcpListener| l.local_addr().expect("bound socket has an address");
        let addrs = BoundAddrs {
            otlp_grpc: addr(&otlp_grpc),
            otlp_http: addr(&otlp_http),
            admin: addr(&admin),
        };
        Ok(Listeners {
            otlp_grpc,
            otlp_http,
            admin,
            addrs,
        })
    }
}

/// What the store holds at start: opened, the engine restored from it and the tails'
/// offsets, read off the async workers.
struct Opened {
    store: Store,
    engine: Engine,
    ids: Option<Pseudonymizer>,
    offsets: HashMap<String, FileCheckpoint>,
}

async fn open_store(config: &Config, metrics: &Arc<Metrics>) -> Result<Opened, StartError> {
    let (config, metrics) = (config.clone(), metrics.clone());
    let opened = tokio::task::spawn_blocking(move || {
        let store = Store::open(&config.storage_dir)?;
        let ids = Pseudonymizer::for_ids(&config)?;
        let mut engine = new_engine(&config, &metrics, &ids);
        // Row by row into the engine: the peak is its own tables, never every row at once.
        engine.restore_from(|sink| store.restore_into(sink))?;
        let offsets = store.file_offsets()?;
        Ok::<_, StartError>(Opened {
            store,
            engine,
            ids,
            offsets,
        })
    })
    .await
    .expect("store task panicked")?;
    Ok(opened)
}

/// An engine as `config` wants it, empty.
fn new_engine(config: &Config, metrics: &Arc<Metrics>, ids: &Option<Pseudonymizer>) -> Engine {
    let mut engine = Engine::new(config, metrics.clone());
    if let Some(ids) = ids {
        engine = engine.with_pseudonyms(ids.clone());
    }
    if config.cluster.is_some() {
        engine = engine.with_cluster();
    }
    engine
}

/// The engine thread, started on the restored state, and what hangs off it.
struct Started {
    ingest: IngestHandle,
    control: EngineControl,
    evidence: Arc<parking_lot::Mutex<Evidence>>,
    coordinator: Option<Coordinator>,
}

fn start_engine(
    config: &Config,
    metrics: &Arc<Metrics>,
    store: Store,
    engine: Engine,
) -> Result<Started, StartError> {
    let evidence = engine.watch_evidence();
    tracing::info!(instances = engine.tracked_instances(), "state restored");
    let (link, coordinator) = match &config.cluster {
        Some(c) => {
            let node_id = crate::cluster::node_id(&config.storage_dir).map_err(|source| {
                StartError::NodeId {
                    dir: config.storage_dir.clone(),
                    source,
                }
            })?;
            let initial = engine.cluster_resync();
            let (link, coordinator) = crate::cluster::link(c, node_id, initial, metrics.clone());
            (Some(link), Some(coordinator))
        }
        None => (None, None),
    };
    let capacity = config.limits.queue_capacity;
    let (ingest, control) = pipeline::spawn(engine, store, capacity, metrics.clone(), link);
    Ok(Started {
        ingest,
        control,
        evidence,
        coordinator,
    })
}

/// A listener that stopped serving, or never started: fatal, at start and after.
#[derive(Debug, thiserror::Error)]
#[error("the {name} listener failed: {reason}")]
pub struct ListenerFailed {
    pub name: &'static str,
    pub reason: String,
}

/// One latch per listener, each released by the listener's own task once it serves.
struct Up {
    otlp_http: Latch,
    otlp_grpc: Latch,
    admin: Latch,
}

impl Up {
    fn new(readiness: &Readiness) -> Up {
        Up {
            otlp_http: readiness.latch("otlp_http"),
            otlp_grpc: readiness.latch("otlp_grpc"),
            admin: readiness.latch("admin"),
        }
    }
}

/// What every listener task shares: when to stop, how long to drain, where a failure goes.
#[derive(Clone)]
struct Serving {
    shutdown: CancellationToken,
    grace: Duration,
    /// Full-policy: one message per listener at most, so room is never short (3 slots).
    failed: mpsc::Sender<ListenerFailed>,
}

/// Serve OTLP/HTTP, OTLP/gRPC and admin on their bound listeners until `shutdown`.
fn serve_listeners(
    servers: &mut JoinSet<()>,
    (listeners, up): (Listeners, Up),
    (ctx, admin): (Arc<IngestContext>, Admin),
    tls: Option<Tls>,
    s: &Serving,
) {
    let acceptor = || tls.as_ref().map(|t| t.acceptor.clone());
    let bounds = listener_bounds(&ctx.limits, ctx.metrics.clone());
    let otlp = Arc::new(OtlpHttp { ctx: ctx.clone() });
    let otlp_http = (listeners.otlp_http, bounds("otlp_http"));
    servers.spawn(serve_http(otlp_http, otlp, acceptor(), s, up.otlp_http));
    let admin = Arc::new(admin);
    let admin_listener = (listeners.admin, bounds("admin"));
    servers.spawn(serve_http(admin_listener, admin, acceptor(), s, up.admin));
    let (grpc, s, grpc_bounds) = (OtlpGrpc::new(ctx), s.clone(), bounds("otlp_grpc"));
    servers.spawn(async move {
        let shutdown = s.shutdown.clone();
        let (listener, up) = (listeners.otlp_grpc, up.otlp_grpc);
        let served = otlp_grpc::serve(listener, grpc, grpc_bounds, tls, shutdown, up).await;
        if let Err(e) = served {
            let reason = chain(&e);
            tracing::error!(error = %reason, "OTLP/gRPC server failed; shutting down");
            let _ = s.failed.try_send(ListenerFailed {
                name: "otlp_grpc",
                reason,
            });
            s.shutdown.cancel();
        }
    });
}

/// hyper's accept loop is the first thing the task does: running is serving.
fn serve_http<H: Handler>(
    (listener, bounds): (TcpListener, crate::connections::Bounds),
    handler: Arc<H>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    s: &Serving,
    up: Latch,
) -> impl Future<Output = ()> + Send + 'static {
    let (shutdown, grace) = (s.shutdown.clone(), s.grace);
    async move {
        up.release();
        crate::http::serve(listener, handler, tls, bounds, shutdown, grace).await
    }
}

/// Each listener's connection bounds: `limits.max_connections` clamped so that the three
/// listeners together stay below the open-files limit (each keeps its own share, so a full
/// OTLP listener never takes the admin listener's descriptors).
fn listener_bounds(
    limits: &crate::config::Limits,
    metrics: Arc<Metrics>,
) -> impl Fn(&'static str) -> crate::connections::Bounds + use<> {
    let fd_limit = crate::connections::open_files_limit();
    let cap = crate::connections::per_listener_cap(limits.max_connections, fd_limit);
    if cap < limits.max_connections {
        tracing::warn!(
            configured = limits.max_connections,
            open_files_limit = fd_limit,
            per_listener = cap,
            "limits.max_connections clamped below the open-files limit"
        );
    }
    let (header, idle) = (limits.header_timeout, limits.idle_timeout);
    move |source| crate::connections::Bounds::new(source, cap, header, idle, metrics.clone())
}

/// An error with its sources: tonic's own message alone says only "transport error".
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out = format!("{out}: {s}");
        source = s.source();
    }
    out
}

/// Tail one event log on its own thread (its reads and waits block).
fn spawn_tailer(tailer: Tailer) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("crosstalk-tail".into())
        .spawn(move || tailer.run())
        .expect("spawning a tail thread")
}

impl App {
    /// Open the store, restore state, start the engine, bind and serve every listener.
    /// Returns once `/ready` answers 200, or with the first listener that could not serve.
    /// No reload: see [`App::start_from`].
    pub async fn start(config: Config) -> Result<App, StartError> {
        Self::start_from(config, None).await
    }

    /// [`App::start`], reloadable (SIGHUP, `POST /api/v1/reload`) from `source` when given.
    pub async fn start_from(
        config: Config,
        source: Option<ConfigSource>,
    ) -> Result<App, StartError> {
        let tls = match &config.tls {
            Some(t) => Some(Tls::load(&t.cert_file, &t.key_file)?),
            None => None,
        };
        Self::launch(config, tls, source).await
    }

    async fn launch(
        config: Config,
        tls: Option<Tls>,
        source: Option<ConfigSource>,
    ) -> Result<App, StartError> {
        // Every latch is taken before any is released, so /ready never reads a gap as ready.
        let readiness = Readiness::default();
        let restoring = readiness.latch("state");
        let up = Up::new(&readiness);
        let metrics = Arc::new(Metrics::for_config(&config));
        let Opened {
            store,
            engine,
            ids,
            offsets,
        } = open_store(&config, &metrics).await?;
        let reader = Arc::new(store.reader()?);
        let triage = Arc::new(store.triage()?);
        let key = Pseudonymizer::of(&config)?;
        let store = if config.alertmanager.is_some() {
            store.with_alerting()
        } else {
            store
        };
        let outbox = Arc::new(store.outbox()?);
        let store_health = store.health();
        let started = start_engine(&config, &metrics, store, engine)?;
        restoring.release();
        let listeners = Listeners::bind(&config.listen).await?;
        let addrs = listeners.addrs;

        let shutdown = CancellationToken::new();
        let grace = config.shutdown_grace;
        let (failed_tx, mut failed) = mpsc::channel(3);
        let serving = Serving {
            shutdown: shutdown.clone(),
            grace,
            failed: failed_tx,
        };
        let extractor = SharedExtractor::new(Extractor::new(&config));
        let reloader = source.map(|source| {
            let (to_engine, extractor) = (started.control.reloads(), extractor.clone());
            let running = config.clone();
            Arc::new(Reloader::new(
                source,
                running,
                to_engine,
                extractor,
                metrics.clone(),
            ))
        });
        let discovery = DiscoveryTap::start(&config, metrics.clone());
        let ctx = Arc::new(IngestContext {
            ingest: started.ingest.clone(),
            extractor: extractor.clone(),
            metrics: metrics.clone(),
            limits: config.limits.clone(),
            token: BearerToken::load(config.auth.otlp_token_file.as_deref())?,
            discovery: discovery.clone(),
        });
        let admin = Admin {
            metrics: metrics.clone(),
            reader: reader.clone(),
            store: store_health,
            ready: readiness.clone(),
            token: BearerToken::load(config.auth.admin_token_file.as_deref())?,
            evidence: started.evidence,
            discovery,
            pseudonyms: ids,
            triage,
            reloader: reloader.clone(),
        };
        let mut servers = JoinSet::new();
        serve_listeners(&mut servers, (listeners, up), (ctx, admin), tls, &serving);
        if let Some(am) = &config.alertmanager {
            let sender = AlertSender {
                findings_base: am
                    .external_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{}", addrs.admin)),
                config: am.clone(),
                outbox,
                pseudonyms: key,
                user_ids: config.privacy.user_ids,
                metrics: metrics.clone(),
            };
            servers.spawn(sender.run(shutdown.clone()));
        }
        if let Some(coordinator) = started.coordinator {
            servers.spawn(coordinator.run(shutdown.clone()));
        }
        let tail = |path: &PathBuf| Tailer {
            path: path.clone(),
            start_at: config.events.start_at,
            poll: config.events.poll_interval,
            checkpoint: offsets.get(&*path.to_string_lossy()).cloned(),
            extractor: extractor.clone(),
            ingest: started.ingest.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        };
        let tailers = config
            .events
            .files
            .iter()
            .map(|p| spawn_tailer(tail(p)))
            .collect();
        drop(started.ingest);
        tokio::select! {
            _ = readiness.wait() => {}
            Some(e) = failed.recv() => return Err(e.into()),
        }
        Ok(App {
            addrs,
            metrics,
            reader,
            shutdown,
            servers,
            tailers,
            engine: started.control,
            grace,
            failed,
            reloader,
        })
    }

    /// A token that, once cancelled, starts the shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Run until the shutdown token is cancelled, then shut down.
    pub async fn run_until_shutdown(self) -> Result<Engine, StopError> {
        self.shutdown.cancelled().await;
        self.stop(false).await
    }

    /// The one shutdown path: stop accepting, let requests in flight finish, stop the tails,
    /// let the engine take what is queued and commit it. Gives up after the grace period.
    /// `settle`: judge observations still waiting for their trace's user now rather than keep
    /// them for the next start.
    pub async fn stop(mut self, settle: bool) -> Result<Engine, StopError> {
        let deadline = Instant::now() + self.grace;
        self.shutdown.cancel();
        let servers = async { while self.servers.join_next().await.is_some() {} };
        if tokio::time::timeout(self.grace, servers).await.is_err() {
            tracing::warn!("listeners did not drain within the grace period");
        }
        let tailers = std::mem::take(&mut self.tailers);
        let engine = self.engine;
        let finish = tokio::task::spawn_blocking(move || {
            for t in tailers {
                let _ = t.join();
            }
            engine.finish(settle)
        });
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(500));
        let stopped = tokio::time::timeout(left, finish).await;
        if let Ok(failed) = self.failed.try_recv() {
            return Err(failed.into());
        }
        match stopped {
            Ok(Ok(finished)) => Ok(finished?),
            Ok(Err(join)) => Err(EnginePanicked(join.to_string()).into()),
            Err(_) => Err(StopError::Timeout(self.grace)),
        }
    }
}

/// Why a shutdown did not end with the engine's state committed.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error(transparent)]
    Panicked(#[from] EnginePanicked),
    #[error("the engine did not finish within the grace period ({0:?})")]
    Timeout(Duration),
    #[error(transparent)]
    Listener(#[from] ListenerFailed),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defect 5: a gRPC server that cannot serve (here: tonic refuses the TLS key) used to be
    /// logged while `start` returned and `/ready` said 200.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_grpc_listener_that_cannot_serve_fails_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let made = std::process::Command::new("openssl")
            .current_dir(dir.path())
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args([
                "-subj",
                "/CN=localhost",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
            ])
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        let mut tls = Tls::load(&dir.path().join("cert.pem"), &dir.path().join("key.pem")).unwrap();
        tls.key_pem = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec();
        let mut config = Config::default_config();
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        (config.listen.otlp_grpc, config.listen.otlp_http) = (loopback, loopback);
        config.listen.admin = loopback;
        config.storage_dir = dir.path().join("data");
        let started = tokio::time::timeout(
            Duration::from_secs(20),
            App::launch(config, Some(tls), None),
        )
        .await
        .expect("start neither hangs nor waits for a listener that failed");
        match started {
            Err(StartError::Serve(ListenerFailed { name, reason })) => {
                assert_eq!(name, "otlp_grpc");
                assert!(
                    reason.contains("key") || reason.contains("TLS") || reason.contains("tls"),
                    "{reason}"
                );
            }
            Err(e) => panic!("failed for another reason: {e}"),
            Ok(_) => panic!("started (and would answer /ready 200) without a gRPC server"),
        }
    }
}
