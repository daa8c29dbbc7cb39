//! User-id pseudonyms: HMAC-SHA256 under a per-deployment key, so that alerts and logs (and,
//! in `hmac` mode, the store and API) can name a user without carrying the raw id.
//!
//! The key comes from `[privacy] hmac_key` or `hmac_key_file`; without either it is generated
//! once into `<storage dir>/hmac.key` (mode 0600) and reused, so pseudonyms are stable across
//! restarts and `crosstalk user-hash ID` can look a user up.

use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::{Config, UserIds};

/// Why the key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read HMAC key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write HMAC key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("HMAC key in {0} is empty")]
    Empty(PathBuf),
    #[error(
        "no HMAC key at {0}: `user-hash` uses the running sidecar's key, and a new one would \
         match no alert; pass the sidecar's --config (or CROSSTALK_STORAGE_DIR), or set \
         [privacy] hmac_key / hmac_key_file"
    )]
    Missing(PathBuf),
    #[error("no random source for a new HMAC key: {0}")]
    Random(String),
}

/// Maps user (and tenant) ids to stable pseudonyms.
#[derive(Clone)]
pub struct Pseudonymizer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymizer(..)")
    }
}

impl Pseudonymizer {
    pub fn new(key: &[u8]) -> Self {
        Pseudonymizer { key: key.to_vec() }
    }

    /// The key of a sidecar with `config` (alerts and logs always use it): `[privacy]`, else
    /// generated once into its storage directory.
    pub fn of(config: &Config) -> Result<Self, KeyError> {
        let p = &config.privacy;
        Self::load(
            p.hmac_key.as_deref(),
            p.hmac_key_file.as_deref(),
            &config.storage_dir,
        )
    }

    /// The key a sidecar with `config` already uses, never a new one (`user-hash`).
    pub fn existing_of(config: &Config) -> Result<Self, KeyError> {
        let p = &config.privacy;
        Self::load_existing(
            p.hmac_key.as_deref(),
            p.hmac_key_file.as_deref(),
            &config.storage_dir,
        )
    }

    /// The key that replaces user and tenant ids in the engine, store and API: only in
    /// `user_ids = "hmac"` mode; otherwise None, and no key is read or made.
    pub fn for_ids(config: &Config) -> Result<Option<Self>, KeyError> {
        (config.privacy.user_ids == UserIds::Hmac)
            .then(|| Self::of(config))
            .transpose()
    }

    /// The key from config, else from `<storage_dir>/hmac.key`, generated if absent.
    pub fn load(
        inline: Option<&str>,
        key_file: Option<&Path>,
        storage_dir: &Path,
    ) -> Result<Self, KeyError> {
        match Self::load_existing(inline, key_file, storage_dir) {
            Err(KeyError::Missing(path)) => {
                let mut raw = [0u8; 32];
                getrandom::fill(&mut raw).map_err(|e| KeyError::Random(e.to_string()))?;
                let key = hex::encode(raw);
                write_private(&path, key.as_bytes())
                    .map_err(|source| KeyError::Write { path, source })?;
                Ok(Self::new(key.as_bytes()))
            }
            other => other,
        }
    }

    /// The key a sidecar with this config uses, never a new one: for looking users up.
    /// A generated key that is absent is [`KeyError::Missing`].
    pub fn load_existing(
        inline: Option<&str>,
        key_file: Option<&Path>,
        storage_dir: &Path,
    ) -> Result<Self, KeyError> {
        if let Some(key) = inline {
            return Ok(Self::new(key.as_bytes()));
        }
        let path = key_file
            .map(Path::to_owned)
            .unwrap_or_else(|| storage_dir.join("hmac.key"));
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key = trim(&bytes);
                if key.is_empty() {
                    return Err(KeyError::Empty(path));
                }
                Ok(Self::new(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && key_file.is_none() => {
                Err(KeyError::Missing(path))
            }
            Err(source) => Err(KeyError::Read { path, source }),
        }
    }

    /// `u_` and 16 hex digits of HMAC-SHA256(key, id).
    pub fn pseudonym(&self, id: &str) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        let tag = mac.finalize().into_bytes();
        format!("u_{}", hex::encode(&tag[..8]))
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_keyed_and_not_the_id() {
        let a = Pseudonymizer::new(b"k1");
        let b = Pseudonymizer::new(b"k2");
        assert_eq!(a.pseudonym("alice"), a.pseudonym("alice"));
        assert_ne!(a.pseudonym("alice"), a.pseudonym("bob"));
        assert_ne!(a.pseudonym("alice"), b.pseudonym("alice"));
        assert!(!a.pseudonym("alice").contains("alice"));
        assert_eq!(a.pseudonym("alice").len(), 18);
    }

    #[test]
    fn generated_key_is_kept_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = Pseudonymizer::load(None, None, dir.path()).unwrap();
        let second = Pseudonymizer::load(None, None, dir.path()).unwrap();
        assert_eq!(first.pseudonym("x"), second.pseudonym("x"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("hmac.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_named_key_file_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(Pseudonymizer::load(None, Some(&missing), dir.path()).is_err());
    }
}
