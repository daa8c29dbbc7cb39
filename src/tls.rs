//! Optional TLS (rustls, ring provider) for every listener: `[tls] cert_file` and `key_file`
//! (PEM). The HTTP listeners negotiate h2 or http/1.1 by ALPN; gRPC uses tonic's own rustls.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("TLS certificate {0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("TLS setup failed: {0}")]
    Config(#[from] rustls::Error),
}

/// Loaded TLS material, for both the HTTP listeners and tonic.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl Tls {
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| TlsError::Read {
                path: path.to_owned(),
                message: e.to_string(),
            })
        };
        let cert_pem = read(cert_file)?;
        let key_pem = read(key_file)?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Read {
                path: cert_file.to_owned(),
                message: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate(cert_file.to_owned()));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Read {
            path: key_file.to_owned(),
            message: e.to_string(),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert_pem,
            key_pem,
        })
    }
}
