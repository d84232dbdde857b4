//! The TLS side of the HTTP listener: the acceptor [`crate::http_server`] wraps
//! connections in.
//!
//! The certificate is read from files (the one `init` made, or the admin's own) and
//! re-read when they change, checked at most once a minute on a handshake: the
//! controller renews its own certificate in place, and sites rotate theirs with
//! certbot or similar, neither of which should need a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the HTTPS listener cannot start.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the HTTPS certificate {path}: {reason}")]
pub struct TlsError {
    path: String,
    reason: String,
}

/// A certificate and key from files, reloaded when their modification time changes.
#[derive(Debug)]
struct FileResolver {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamp: Option<(SystemTime, SystemTime)>,
    checked: Instant,
}

fn stamp(cert: &PathBuf, key: &PathBuf) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(cert)?, m(key)?))
}

fn load(cert: &PathBuf, key: &PathBuf) -> Result<Arc<CertifiedKey>, TlsError> {
    let err = |p: &PathBuf, reason: String| TlsError {
        path: p.display().to_string(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(err(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| err(key, e.to_string()))?;
    let provider = cairn_shared::identity::provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| err(key, e.to_string()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| err(key, e.to_string()))?;
    Ok(Arc::new(ck))
}

impl FileResolver {
    fn new(cert: PathBuf, key: PathBuf) -> Result<Self, TlsError> {
        let loaded = load(&cert, &key)?;
        let stamp = stamp(&cert, &key);
        Ok(FileResolver {
            cert,
            key,
            state: Mutex::new(Loaded {
                key: loaded,
                stamp,
                checked: Instant::now(),
            }),
        })
    }
}

impl ResolvesServerCert for FileResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.checked.elapsed() >= Duration::from_secs(60) {
            st.checked = Instant::now();
            let now = stamp(&self.cert, &self.key);
            if now.is_some() && now != st.stamp {
                match load(&self.cert, &self.key) {
                    Ok(k) => {
                        tracing::info!(cert = %self.cert.display(), "reloaded the HTTPS certificate");
                        st.key = k;
                        st.stamp = now;
                    }
                    // Keep serving the old one: a half-written renewal must not take
                    // the site down.
                    Err(e) => tracing::warn!(error = %e, "keeping the previous HTTPS certificate"),
                }
            }
        }
        Some(st.key.clone())
    }
}

/// The TLS acceptor for the configured files.
pub fn acceptor(cert: PathBuf, key: PathBuf) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let resolver = FileResolver::new(cert.clone(), key)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(cairn_shared::identity::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            path: cert.display().to_string(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// The acceptor for the `[api]` settings: `None` for plain HTTP. Relative paths are
/// in the data directory `root`.
pub fn configured(
    api: &crate::config::ApiConfig,
    root: &std::path::Path,
) -> Result<Option<tokio_rustls::TlsAcceptor>, TlsError> {
    api.tls
        .as_ref()
        .map(|files| acceptor(root.join(&files.cert), root.join(&files.key)))
        .transpose()
}
