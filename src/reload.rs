//! Reload without a restart (`SIGHUP`, `POST /api/v1/reload`): read the config again from the
//! same sources as at start (the file, then the environment and flags captured then, so the
//! precedence is the same), and apply what can change live — the watches and
//! `storage.findings_retention` (the engine reads it at each retention sweep).
//!
//! Order matters, because observations name their watch by index: the new watch table goes to
//! the engine first, as a message on the engine's own path, and only once the engine has taken
//! it (and committed what it forgot) do the sources switch to an extractor that may name the new
//! indices. Watches keep their index by name (see `correlate::engine::reconfigure`), so what
//! was normalized before the switch is judged by the same watch, or dropped if it is gone.
//!
//! Everything else (listeners, the storage directory, cluster, TLS, tokens, identity, limits...)
//! needs a restart: reported by name, not applied. An invalid file changes nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, ConfigError, Overrides, Watch};
use crate::correlate::engine::WatchChanges;
use crate::normalize::Extractor;
use crate::pipeline::WatchSender;
use crate::telemetry::events::ConfigReloaded;
use crate::telemetry::metrics::Metrics;

/// How long a reload waits for the engine to take the new watches (it looks every 50 ms).
const ENGINE_WAIT: Duration = Duration::from_secs(30);

/// The extractor in use, shared by every source and swapped whole when a reload changes the
/// watches: each request or tailed chunk takes the current one once (an `Arc` clone under a
/// read lock held for no longer than that).
#[derive(Debug, Clone)]
pub struct SharedExtractor(Arc<parking_lot::RwLock<Arc<Extractor>>>);

impl SharedExtractor {
    pub fn new(extractor: Extractor) -> Self {
        SharedExtractor(Arc::new(parking_lot::RwLock::new(Arc::new(extractor))))
    }

    /// The extractor to use now.
    pub fn current(&self) -> Arc<Extractor> {
        self.0.read().clone()
    }

    fn replace(&self, extractor: Extractor) {
        *self.0.write() = Arc::new(extractor);
    }
}

/// Where the running config came from, to read it again the same way.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The config file (`--config` or `CROSSTALK_CONFIG`); none: the embedded default.
    pub path: Option<PathBuf>,
    /// Environment and flag overrides as resolved at start.
    pub overrides: Overrides,
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load_with(self.path.as_deref(), &self.overrides)
    }
}

/// What a reload did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub watches: WatchChanges,
    /// Settings besides the watches that changed and were applied live, by key.
    pub applied: Vec<&'static str>,
    /// Settings that differ from the running ones and take effect only at the next start.
    pub needs_restart: Vec<&'static str>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(
        "more than {} watches over this process's life; restart to reload",
        u16::MAX
    )]
    TooManyWatches,
    #[error("the engine did not take the new watches: {0}")]
    Engine(String),
}

/// The running config and the watch table by slot, owned by one reload at a time.
struct Running {
    config: Config,
    /// Every watch name ever configured, by slot.
    slots: Vec<String>,
}

/// Re-reads the config and hands the new watches to the engine and the sources.
pub struct Reloader {
    source: ConfigSource,
    running: tokio::sync::Mutex<Running>,
    engine: WatchSender,
    extractor: SharedExtractor,
    metrics: Arc<Metrics>,
}

impl Reloader {
    pub fn new(
        source: ConfigSource,
        config: Config,
        engine: WatchSender,
        extractor: SharedExtractor,
        metrics: Arc<Metrics>,
    ) -> Self {
        let slots = config.watches.iter().map(|w| w.name.clone()).collect();
        Reloader {
            source,
            running: tokio::sync::Mutex::new(Running { config, slots }),
            engine,
            extractor,
            metrics,
        }
    }

    /// Reload once; counted and logged (`reason` says what asked: `sighup` or `api`).
    pub async fn reload(&self, reason: &'static str) -> Result<ReloadReport, ReloadError> {
        let outcome = self.apply().await;
        ConfigReloaded {
            reason,
            outcome: &outcome,
        }
        .emit(&self.metrics);
        outcome
    }

    async fn apply(&self) -> Result<ReloadReport, ReloadError> {
        let mut running = self.running.lock().await;
        let source = self.source.clone();
        let new = tokio::task::spawn_blocking(move || source.load())
            .await
            .map_err(|e| ReloadError::Engine(e.to_string()))??;
        // Taken only once the engine has the new table: a failed reload leaves both as they were.
        let mut names = running.slots.clone();
        let slots = layout(&mut names, &new.watches)?;
        let watches = self
            .engine
            .send(slots.clone(), new.findings_retention, ENGINE_WAIT)
            .await
            .map_err(ReloadError::Engine)?;
        let refs: Vec<Option<&Watch>> = slots.iter().map(Option::as_ref).collect();
        self.extractor
            .replace(Extractor::with_watches(&running.config, &refs));
        let needs_restart = needs_restart(&running.config, &new);
        let mut applied = Vec::new();
        if new.findings_retention != running.config.findings_retention {
            applied.push("storage.findings_retention");
        }
        running.slots = names;
        running.config.watches = new.watches;
        running.config.default_watches = new.default_watches;
        running.config.findings_retention = new.findings_retention;
        Ok(ReloadReport {
            watches,
            applied,
            needs_restart,
        })
    }
}

/// `watches` laid out by slot: a known name keeps its slot, a new one takes the next; slots of
/// names no longer configured are `None`. `names` grows with the new names.
pub fn layout(
    names: &mut Vec<String>,
    watches: &[Watch],
) -> Result<Vec<Option<Watch>>, ReloadError> {
    let mut slots: Vec<Option<Watch>> = vec![None; names.len()];
    for w in watches {
        match names.iter().position(|n| *n == w.name) {
            Some(i) => slots[i] = Some(w.clone()),
            None if names.len() < u16::MAX as usize => {
                names.push(w.name.clone());
                slots.push(Some(w.clone()));
            }
            None => return Err(ReloadError::TooManyWatches),
        }
    }
    Ok(slots)
}

/// The settings (other than those a reload applies) that differ, by config section or key.
pub fn needs_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    // Debug forms compare every field of settings types that have no `PartialEq` (some hold
    // secrets and are never printed); this runs once per reload.
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let (r, n) = (running, new);
    let sections: [(&'static str, bool); 14] = [
        ("listen", differs(&r.listen, &n.listen)),
        ("storage", differs(&r.storage_dir, &n.storage_dir)),
        ("identity", differs(&r.identity, &n.identity)),
        ("attribution", differs(&r.attribution, &n.attribution)),
        ("limits", differs(&r.limits, &n.limits)),
        ("events", differs(&r.events, &n.events)),
        ("shutdown", differs(&r.shutdown_grace, &n.shutdown_grace)),
        ("privacy", differs(&r.privacy, &n.privacy)),
        ("alertmanager", differs(&r.alertmanager, &n.alertmanager)),
        ("auth", differs(&r.auth, &n.auth)),
        ("cluster", differs(&r.cluster, &n.cluster)),
        ("tls", differs(&r.tls, &n.tls)),
        ("evidence", differs(&r.evidence_window, &n.evidence_window)),
        ("discovery", differs(&r.discovery, &n.discovery)),
    ];
    sections
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml(text).unwrap()
    }

    const A: &str = "[[watch]]\nname = \"a\"\nattribute = \"a.id\"\n";
    const B: &str = "[[watch]]\nname = \"b\"\nattribute = \"b.id\"\n";
    const C: &str = "[[watch]]\nname = \"c\"\nattribute = \"c.id\"\n";

    #[test]
    fn watches_keep_their_slot_by_name_and_removed_slots_stay_taken() {
        let mut names = vec!["a".to_owned(), "b".to_owned()];
        let slots = layout(&mut names, &config(&format!("{C}{A}")).watches).unwrap();
        let named: Vec<Option<&str>> = (slots.iter())
            .map(|s| s.as_ref().map(|w| w.name.as_str()))
            .collect();
        assert_eq!(named, [Some("a"), None, Some("c")]);
        let slots = layout(&mut names, &config(&format!("{B}{C}")).watches).unwrap();
        let named: Vec<Option<&str>> = (slots.iter())
            .map(|s| s.as_ref().map(|w| w.name.as_str()))
            .collect();
        assert_eq!(named, [None, Some("b"), Some("c")], "b revived in its slot");
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn settings_that_need_a_restart_are_named_and_watches_are_not_among_them() {
        let running = config(A);
        assert!(needs_restart(&running, &config(&format!("{A}{B}"))).is_empty());
        let moved = config(&format!(
            "[listen]\nadmin = \"127.0.0.1:9999\"\n[storage]\ndir = \"/elsewhere\"\n{A}"
        ));
        assert_eq!(needs_restart(&running, &moved), ["listen", "storage"]);
    }
}
