//! Wiring: builds every component from a [`Config`], binds the listeners, restores state, and
//! owns the one shutdown path (stop accepting → drain → flush the store → exit within the grace).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::Admin;
use crate::auth::BearerToken;
use crate::config::{Config, UserIds};
use crate::correlate::Engine;
use crate::normalize::Extractor;
use crate::pipeline::{self, EngineControl, EnginePanicked};
use crate::privacy::Pseudonymizer;
use crate::sinks::alertmanager::AlertSender;
use crate::sources::IngestContext;
use crate::sources::discovery_tap::DiscoveryTap;
use crate::sources::events::file::Tailer;
use crate::sources::otlp::grpc::{self as otlp_grpc, OtlpGrpc};
use crate::sources::otlp::http::OtlpHttp;
use crate::store::{Store, StoreError, StoreReader};
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
}

/// The HMAC key: from config, else generated once into the storage directory.
pub fn pseudonymizer(config: &Config) -> Result<Pseudonymizer, crate::privacy::KeyError> {
    Pseudonymizer::load(
        config.privacy.hmac_key.as_deref(),
        config.privacy.hmac_key_file.as_deref(),
        &config.storage_dir,
    )
}

async fn bind(name: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { name, addr, source })
}

impl App {
    /// Open the store, restore state, start the engine, bind and serve every listener.
    /// Returns once `/ready` answers 200.
    pub async fn start(config: Config) -> Result<App, StartError> {
        let metrics = Arc::new(Metrics::for_config(&config));
        let store_dir = config.storage_dir.clone();
        let (store, restored, offsets) = tokio::task::spawn_blocking(move || {
            let store = Store::open(&store_dir)?;
            let restored = store.restore()?;
            let offsets = store.file_offsets()?;
            Ok::<_, StoreError>((store, restored, offsets))
        })
        .await
        .expect("store task panicked")?;
        let reader = Arc::new(store.reader()?);
        let triage = Arc::new(store.triage()?);
        let pseudonyms = pseudonymizer(&config)?;
        let store = if config.alertmanager.is_some() {
            store.with_alerting()
        } else {
            store
        };
        let outbox = Arc::new(store.outbox()?);
        let store_health = store.health();
        let fresh_engine = {
            let (config, metrics, pseudonyms) =
                (config.clone(), metrics.clone(), pseudonyms.clone());
            move || {
                let mut engine = Engine::new(&config, metrics.clone());
                if config.privacy.user_ids == UserIds::Hmac {
                    engine = engine.with_pseudonyms(pseudonyms.clone());
                }
                if config.cluster.is_some() {
                    engine = engine.with_cluster();
                }
                engine
            }
        };
        let mut engine = fresh_engine();
        engine.restore(restored);
        let evidence = engine.watch_evidence();
        tracing::info!(instances = engine.tracked_instances(), "state restored");
        let mut cluster = None;
        let mut cluster_link: Option<pipeline::ClusterLink> = None;
        if let Some(c) = &config.cluster {
            let (tx, rx) = tokio::sync::mpsc::channel(c.max_pending);
            let dropped = metrics.cluster_dropped.clone();
            // Full-policy: drop and count; the coordinator's own queue is the bounded buffer.
            let checks: pipeline::ClusterSink = Box::new(move |checks| {
                for check in checks {
                    if tx.try_send(check).is_err() {
                        dropped.inc();
                    }
                }
            });
            let (verdict_tx, verdicts) = tokio::sync::mpsc::channel(pipeline::VERDICT_CAPACITY);
            cluster_link = Some(pipeline::ClusterLink { checks, verdicts });
            let node_id = crate::cluster::node_id(&config.storage_dir).map_err(|source| {
                StartError::NodeId {
                    dir: config.storage_dir.clone(),
                    source,
                }
            })?;
            let initial = engine.cluster_resync();
            cluster = Some((c.clone(), rx, verdict_tx, node_id, initial));
        }
        let (ingest, engine) = pipeline::spawn(
            engine,
            store,
            config.limits.queue_capacity,
            metrics.clone(),
            cluster_link,
            Some(Box::new(move |store: &Store| {
                let mut engine = fresh_engine();
                engine.restore(store.restore()?);
                Ok(engine)
            })),
        );

        let grpc_listener = bind("otlp_grpc", config.listen.otlp_grpc).await?;
        let http_listener = bind("otlp_http", config.listen.otlp_http).await?;
        let admin_listener = bind("admin", config.listen.admin).await?;
        let addrs = BoundAddrs {
            otlp_grpc: grpc_listener
                .local_addr()
                .expect("bound socket has an address"),
            otlp_http: http_listener
                .local_addr()
                .expect("bound socket has an address"),
            admin: admin_listener
                .local_addr()
                .expect("bound socket has an address"),
        };

        let otlp_token = BearerToken::load(config.auth.otlp_token_file.as_deref())?;
        let tls = match &config.tls {
            Some(t) => Some(Tls::load(&t.cert_file, &t.key_file)?),
            None => None,
        };
        let admin_token = BearerToken::load(config.auth.admin_token_file.as_deref())?;
        let extractor = Arc::new(Extractor::new(&config));
        let discovery = DiscoveryTap::start(&config, metrics.clone());
        let ctx = Arc::new(IngestContext {
            ingest: ingest.clone(),
            extractor: extractor.clone(),
            metrics: metrics.clone(),
            limits: config.limits.clone(),
            token: otlp_token,
            discovery: discovery.clone(),
        });
        let shutdown = CancellationToken::new();
        let grace = config.shutdown_grace;
        let ready = Arc::new(AtomicBool::new(false));
        let mut servers = JoinSet::new();
        servers.spawn(crate::http::serve(
            http_listener,
            Arc::new(OtlpHttp { ctx: ctx.clone() }),
            tls.as_ref().map(|t| t.acceptor.clone()),
            shutdown.clone(),
            grace,
        ));
        let grpc_shutdown = shutdown.clone();
        let grpc = OtlpGrpc::new(ctx);
        let grpc_tls = tls.clone();
        servers.spawn(async move {
            if let Err(e) = otlp_grpc::serve(grpc_listener, grpc, grpc_tls, grpc_shutdown).await {
                tracing::error!(error = %e, "OTLP/gRPC server failed");
            }
        });
        servers.spawn(crate::http::serve(
            admin_listener,
            Arc::new(Admin {
                metrics: metrics.clone(),
                reader: reader.clone(),
                store: store_health,
                ready: ready.clone(),
                token: admin_token,
                evidence,
                discovery,
                pseudonyms: (config.privacy.user_ids == crate::config::UserIds::Hmac)
                    .then(|| pseudonyms.clone()),
                triage,
            }),
            tls.as_ref().map(|t| t.acceptor.clone()),
            shutdown.clone(),
            grace,
        ));

        if let Some(am) = &config.alertmanager {
            let sender = AlertSender {
                findings_base: am
                    .external_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{}", addrs.admin)),
                config: am.clone(),
                outbox,
                pseudonyms,
                user_ids: config.privacy.user_ids,
                metrics: metrics.clone(),
            };
            servers.spawn(sender.run(shutdown.clone()));
        }

        if let Some((config, checks, verdicts, node_id, initial)) = cluster {
            let coordinator = crate::cluster::Coordinator {
                config,
                node_id,
                checks,
                verdicts,
                initial,
                metrics: metrics.clone(),
            };
            servers.spawn(coordinator.run(shutdown.clone()));
        }

        let mut tailers = Vec::new();
        for path in &config.events.files {
            let key = path.to_string_lossy().into_owned();
            let tailer = Tailer {
                path: path.clone(),
                start_at: config.events.start_at,
                poll: config.events.poll_interval,
                checkpoint: offsets.get(&key).cloned(),
                extractor: extractor.clone(),
                ingest: ingest.clone(),
                metrics: metrics.clone(),
                shutdown: shutdown.clone(),
            };
            let handle = std::thread::Builder::new()
                .name("crosstalk-tail".into())
                .spawn(move || tailer.run())
                .expect("spawning a tail thread");
            tailers.push(handle);
        }
        drop(ingest);
        ready.store(true, Ordering::Release);
        Ok(App {
            addrs,
            metrics,
            reader,
            shutdown,
            servers,
            tailers,
            engine,
            grace,
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
        match tokio::time::timeout(left, finish).await {
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
}
