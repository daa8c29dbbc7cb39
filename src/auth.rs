//! Bearer-token authentication for the listeners (`[auth] otlp_token_file`, `admin_token_file`).
//!
//! Tokens are read once at start-up from files (so they can be mounted secrets), compared in
//! constant time, and never logged.

use std::path::{Path, PathBuf};

use http::HeaderValue;
use subtle::ConstantTimeEq;

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {0} is empty")]
    Empty(PathBuf),
}

/// A shared secret a client must present as `Authorization: Bearer <token>`.
#[derive(Clone)]
pub struct BearerToken(Vec<u8>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl BearerToken {
    pub fn new(token: &str) -> Self {
        BearerToken(token.as_bytes().to_vec())
    }

    /// Read a token file; surrounding whitespace (a trailing newline) is not part of the token.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty(path.to_owned()));
        }
        Ok(Self::new(token))
    }

    /// Load an optional token file.
    pub fn load(path: Option<&Path>) -> Result<Option<Self>, TokenError> {
        path.map(Self::from_file).transpose()
    }

    /// Whether an `Authorization` header value carries this token.
    pub fn accepts(&self, header: Option<&HeaderValue>) -> bool {
        let Some(value) = header.map(HeaderValue::as_bytes) else {
            return false;
        };
        let presented = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "));
        presented.is_some_and(|p| bool::from(p.trim_ascii().ct_eq(&self.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_exact_bearer_token() {
        let t = BearerToken::new("s3cret");
        let h = |v: &str| HeaderValue::from_str(v).unwrap();
        assert!(t.accepts(Some(&h("Bearer s3cret"))));
        assert!(!t.accepts(Some(&h("Bearer s3cre"))));
        assert!(!t.accepts(Some(&h("Bearer s3cretx"))));
        assert!(!t.accepts(Some(&h("Basic s3cret"))));
        assert!(!t.accepts(Some(&h("s3cret"))));
        assert!(!t.accepts(None));
    }

    #[test]
    fn token_file_is_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "abc\n").unwrap();
        let t = BearerToken::from_file(&p).unwrap();
        assert!(t.accepts(Some(&HeaderValue::from_static("Bearer abc"))));
        std::fs::write(&p, "\n").unwrap();
        assert!(BearerToken::from_file(&p).is_err());
    }
}
