//! The controller's own keys and certificates: created by `init`, loaded at start,
//! and the server certificate renewed before it runs out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cairn_shared::fsutil;
use cairn_shared::identity::{self, Ca, CertAndKey, Fingerprint};

use crate::auth;
use crate::config::{
    ApiConfig, AuthConfig, CertificatesConfig, ControllerConfig, DataDir, HostsConfig, LinkConfig,
    TlsFiles,
};

/// Lifetime of the CA: long, because replacing it means re-enrolling every host.
const CA_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(
        "{path} already exists; pass --force to overwrite (this invalidates every enrolled agent)"
    )]
    AlreadyInitialised { path: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error("{0}")]
    Config(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PkiError {
    let context = context.into();
    move |source| PkiError::Io { context, source }
}

/// What `init` takes.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub server_names: Vec<String>,
    pub api_listen: std::net::SocketAddr,
    pub web: WebTls,
    pub link_listen: std::net::SocketAddr,
    pub hosts: HostsConfig,
    /// Lifetime of agents' client certificates.
    pub agent_cert_ttl: Duration,
    pub force: bool,
    /// `[store]`: sled (the default) or etcd.
    pub store: crate::config::StoreConfig,
}

/// How browsers reach the API listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebTls {
    /// Plain HTTP; allowed on loopback only.
    Http,
    /// Plain HTTP behind the site's own TLS terminator.
    BehindProxy,
    /// HTTPS with the server certificate `init` makes.
    InitCert,
    /// HTTPS with the admin's own certificate chain and key.
    Files { cert: PathBuf, key: PathBuf },
}

impl WebTls {
    /// Parses `--web-tls`; `auto` is plain HTTP on loopback and HTTPS elsewhere.
    pub fn parse(s: &str, listen: std::net::SocketAddr) -> Result<Self, String> {
        let t = match s {
            "auto" if listen.ip().is_loopback() => WebTls::Http,
            "auto" | "https" => WebTls::InitCert,
            "http" => WebTls::Http,
            "behind-proxy" => WebTls::BehindProxy,
            other => match other.strip_prefix("https:").and_then(|r| r.split_once(':')) {
                Some((c, k)) if !c.is_empty() && !k.is_empty() => WebTls::Files {
                    cert: c.into(),
                    key: k.into(),
                },
                _ => {
                    return Err(format!(
                        "--web-tls must be auto, http, https, https:CERT:KEY or behind-proxy, not {other:?}"
                    ))
                }
            },
        };
        if t == WebTls::Http && !listen.ip().is_loopback() {
            return Err(format!(
                "refusing plain HTTP on {listen}: passwords and sessions would cross the network in the clear; use --web-tls https, https:CERT:KEY or behind-proxy"
            ));
        }
        Ok(t)
    }
}

/// What `init` produced, for printing.
#[derive(Debug)]
pub struct InitOutcome {
    pub ca_fingerprint: Fingerprint,
    pub admin_token: String,
    pub config: ControllerConfig,
}

/// Creates the CA, server certificate, admin token and config in `dir`.
pub fn init(dir: &DataDir, opts: &InitOptions) -> Result<InitOutcome, PkiError> {
    if !opts.force {
        if let Some(existing) = dir.init_files().into_iter().find(|p| p.exists()) {
            return Err(PkiError::AlreadyInitialised {
                path: existing.display().to_string(),
            });
        }
    }
    fsutil::create_private_dir(dir.root())
        .map_err(io(format!("creating {}", dir.root().display())))?;
    if opts.force && dir.state().exists() {
        // A new CA orphans every host in the old store; start the store afresh too.
        std::fs::remove_dir_all(dir.state()).map_err(io("removing the old state store"))?;
    }
    let (ca, ca_key_pem) = Ca::generate("Cairn CA", CA_TTL)?;
    let certificates = CertificatesConfig {
        server_names: opts.server_names.clone(),
        agent_cert_ttl_secs: opts.agent_cert_ttl.as_secs(),
        server_cert_ttl_secs: 365 * 24 * 3600,
    };
    let server = ca.issue_server(
        &certificates.server_names,
        Duration::from_secs(certificates.server_cert_ttl_secs),
    )?;
    let admin_token = auth::new_admin_token();
    let config = ControllerConfig {
        images: Default::default(),
        chunks: Default::default(),
        volumes: Default::default(),
        groups: Default::default(),
        registration: Default::default(),
        api: ApiConfig {
            listen: opts.api_listen,
            tls: match &opts.web {
                WebTls::InitCert => Some(TlsFiles {
                    cert: "controller.crt".into(),
                    key: "controller.key".into(),
                }),
                WebTls::Files { cert, key } => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                WebTls::Http | WebTls::BehindProxy => None,
            },
            behind_tls_proxy: opts.web == WebTls::BehindProxy,
            ..ApiConfig::plain(opts.api_listen)
        },
        link: LinkConfig {
            listen: opts.link_listen,
            max_frame_bytes: cairn_shared::framing::MAX_FRAME_LEN,
        },
        hosts: opts.hosts.clone(),
        certificates,
        instances: Default::default(),
        proxy: Default::default(),
        pools: vec![],
        cloud_hosts: None,
        store: opts.store.clone(),
        auth: AuthConfig {
            admin_token_sha256: auth::digest_hex(&admin_token),
            oidc: None,
            front_proxy: None,
        },
    };
    config.validate().map_err(PkiError::Config)?;

    // Secrets first, the config last: a config file means a complete data directory.
    fsutil::write_secret(&dir.ca_key(), ca_key_pem.as_bytes()).map_err(io("writing ca.key"))?;
    fsutil::write_atomic(
        &dir.ca_cert(),
        identity::cert_pem(ca.cert_der()).as_bytes(),
        0o644,
    )
    .map_err(io("writing ca.crt"))?;
    write_server(dir, &server)?;
    fsutil::write_secret(&dir.admin_token(), format!("{admin_token}\n").as_bytes())
        .map_err(io("writing admin.token"))?;
    fsutil::write_secret(&dir.config(), config.to_toml().as_bytes())
        .map_err(io("writing config.toml"))?;
    Ok(InitOutcome {
        ca_fingerprint: ca.fingerprint(),
        admin_token,
        config,
    })
}

fn write_server(dir: &DataDir, server: &CertAndKey) -> Result<(), PkiError> {
    fsutil::write_secret(&dir.server_key(), server.key_pem.as_bytes())
        .map_err(io("writing controller.key"))?;
    fsutil::write_atomic(
        &dir.server_cert(),
        identity::cert_pem(&server.cert_der).as_bytes(),
        0o644,
    )
    .map_err(io("writing controller.crt"))
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(io(format!("reading {}", path.display())))
}

/// The controller's identity, loaded at start.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: Arc<Ca>,
    pub server: CertAndKey,
}

impl Pki {
    /// Loads the CA and server certificate, renewing the latter if less than a third of
    /// its lifetime is left.
    pub fn load(dir: &DataDir, config: &ControllerConfig) -> Result<Self, PkiError> {
        let ca_der = identity::parse_cert_pem(&read(&dir.ca_cert())?)?.to_vec();
        let ca = Ca::load(ca_der, &read(&dir.ca_key())?)?;
        let cert_der = identity::parse_cert_pem(&read(&dir.server_cert())?)?.to_vec();
        let mut server = CertAndKey {
            cert_der,
            key_pem: read(&dir.server_key())?,
        };
        let pki = Pki {
            ca: Arc::new(ca),
            server: server.clone(),
        };
        if let Some(renewed) = pki.renew_if_due(&server, dir, config)? {
            server = renewed;
        }
        Ok(Pki { server, ..pki })
    }

    /// Issues and writes a new server certificate if less than a third of `current`'s
    /// lifetime is left (the long-running controller calls this hourly). Returns the new
    /// one, if any.
    pub fn renew_if_due(
        &self,
        current: &CertAndKey,
        dir: &DataDir,
        config: &ControllerConfig,
    ) -> Result<Option<CertAndKey>, PkiError> {
        let info = identity::cert_info(&current.cert_der)?;
        let now = cairn_shared::time::now_ms() as i64 / 1000;
        let lifetime = (info.not_after_unix - info.not_before_unix).max(1);
        if info.not_after_unix - now >= lifetime / 3 {
            return Ok(None);
        }
        tracing::info!(
            not_after = info.not_after_unix,
            "renewing the controller's server certificate"
        );
        let server = self.ca.issue_server(
            &config.certificates.server_names,
            Duration::from_secs(config.certificates.server_cert_ttl_secs),
        )?;
        write_server(dir, &server)?;
        Ok(Some(server))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn opts() -> InitOptions {
        InitOptions {
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            api_listen: "127.0.0.1:0".parse().unwrap(),
            web: WebTls::Http,
            link_listen: "127.0.0.1:0".parse().unwrap(),
            hosts: HostsConfig::default(),
            agent_cert_ttl: Duration::from_secs(30 * 24 * 3600),
            force: false,
            store: Default::default(),
        }
    }

    #[test]
    fn web_tls_choices_refuse_plain_http_off_loopback() {
        let lo: std::net::SocketAddr = "127.0.0.1:7080".parse().unwrap();
        let any: std::net::SocketAddr = "0.0.0.0:7080".parse().unwrap();
        assert_eq!(WebTls::parse("auto", lo).unwrap(), WebTls::Http);
        assert_eq!(WebTls::parse("auto", any).unwrap(), WebTls::InitCert);
        assert_eq!(
            WebTls::parse("behind-proxy", any).unwrap(),
            WebTls::BehindProxy
        );
        assert_eq!(
            WebTls::parse("https:/etc/c.pem:/etc/k.pem", any).unwrap(),
            WebTls::Files {
                cert: "/etc/c.pem".into(),
                key: "/etc/k.pem".into()
            }
        );
        assert!(WebTls::parse("http", any)
            .unwrap_err()
            .contains("refusing plain HTTP"));
        assert!(WebTls::parse("https:", any).is_err());
        assert!(WebTls::parse("tls", lo).is_err());
    }

    #[test]
    fn init_writes_private_files_and_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let out = init(&dir, &opts()).unwrap();
        for p in [
            dir.ca_key(),
            dir.server_key(),
            dir.admin_token(),
            dir.config(),
        ] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        let err = init(&dir, &opts()).unwrap_err().to_string();
        assert!(err.contains("already exists; pass --force"), "{err}");
        let cfg = ControllerConfig::load(&dir.config()).unwrap();
        assert!(auth::matches_digest(
            &out.admin_token,
            &cfg.auth.admin_token_sha256
        ));
        let pki = Pki::load(&dir, &cfg).unwrap();
        assert_eq!(pki.ca.fingerprint(), out.ca_fingerprint);

        let again = init(
            &dir,
            &InitOptions {
                force: true,
                ..opts()
            },
        )
        .unwrap();
        assert_ne!(again.ca_fingerprint, out.ca_fingerprint);
        assert_ne!(again.admin_token, out.admin_token);
    }
}
