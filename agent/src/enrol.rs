//! `cairn-agent join`: trade a join token for a host identity.
//!
//! The agent trusts nothing yet except the CA fingerprint the operator gave it. It
//! generates its own key (which never leaves the host), sends a certificate request
//! with the token, and stores the certificate and CA it gets back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cairn_shared::framing;
use cairn_shared::identity::{self, Fingerprint, CONTROLLER_SERVER_NAME};
use cairn_shared::protocol::{
    describe_connection_error, CloseCode, EnrolRequest, EnrolResponse, RefusalCode,
    PROTOCOL_VERSION,
};

use crate::state::{AgentConfig, AgentState, StateDir, StateError};

const ENROL_TIMEOUT: Duration = Duration::from_secs(30);

/// What `join` takes.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// `HOST:PORT` of the controller's link.
    pub controller: String,
    pub token: String,
    pub ca_sha256: Fingerprint,
    pub state_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub hostname: String,
    /// Replace an existing enrolment in the state directory.
    pub force: bool,
}

/// Why enrolment failed. Each message is what the operator sees.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("{dir} is already enrolled as host {host}; pass --force to enrol again as a new host")]
    AlreadyEnrolled { dir: String, host: String },
    #[error("cannot resolve controller address {addr:?}: {detail}")]
    Resolve { addr: String, detail: String },
    #[error("refusing to enrol: the controller at {addr} presented a CA with fingerprint {seen}, but --ca-sha256 is {expected}; check that this is the right controller and fingerprint")]
    CaMismatch {
        addr: String,
        seen: String,
        expected: Fingerprint,
    },
    #[error("cannot connect to the controller at {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("the controller refused the enrolment: {message}")]
    Refused { code: RefusalCode, message: String },
    #[error("enrolment failed: {0}")]
    Protocol(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Identity(#[from] identity::IdentityError),
}

impl JoinError {
    /// Process exit code for `cairn-agent join`.
    pub fn exit_code(&self) -> i32 {
        match self {
            JoinError::AlreadyEnrolled { .. } => 3,
            JoinError::Refused { .. } => 4,
            JoinError::CaMismatch { .. } => 5,
            JoinError::Resolve { .. } | JoinError::Connect { .. } => 69, // EX_UNAVAILABLE
            _ => 1,
        }
    }
}

/// The name a host reports when none is given: the system host name.
pub fn system_hostname() -> String {
    sysinfo::System::host_name().unwrap_or_else(|| "unknown".into())
}

/// Resolves `HOST:PORT` to one socket address.
pub async fn resolve(addr: &str) -> Result<SocketAddr, JoinError> {
    let mut addrs = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| JoinError::Resolve {
            addr: addr.into(),
            detail: e.to_string(),
        })?;
    addrs.next().ok_or_else(|| JoinError::Resolve {
        addr: addr.into(),
        detail: "no addresses".into(),
    })
}

/// A client endpoint able to reach `remote`.
pub fn client_endpoint(remote: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let bind: SocketAddr = if remote.is_ipv6() {
        "[::]:0".parse()
    } else {
        "0.0.0.0:0".parse()
    }
    .map_err(|e| std::io::Error::other(format!("{e}")))?;
    cairn_shared::identity::endpoint(bind, None)
}

/// Enrols and writes the state directory. Returns the new state.
pub async fn join(opts: &JoinOptions) -> Result<AgentState, JoinError> {
    let dir = StateDir::new(&opts.state_dir);
    if dir.is_enrolled() && !opts.force {
        let host = AgentState::load(&dir)
            .map(|s| s.config.host_id.to_string())
            .unwrap_or_else(|_| "?".into());
        return Err(JoinError::AlreadyEnrolled {
            dir: opts.state_dir.display().to_string(),
            host,
        });
    }
    for (k, v) in &opts.labels {
        cairn_shared::validate::label("label", k, v)
            .map_err(|e| JoinError::Protocol(e.to_string()))?;
    }
    let addr = resolve(&opts.controller).await?;
    let endpoint = client_endpoint(addr).map_err(|e| JoinError::Connect {
        addr: addr.to_string(),
        detail: e.to_string(),
    })?;
    let result = enrol_on(&endpoint, addr, opts).await;
    endpoint.close(CloseCode::Normal.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    let state = result?;
    state.save(&dir)?;
    Ok(state)
}

/// The enrolment exchange on an existing endpoint (hollow agents share one).
pub async fn enrol_on(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    opts: &JoinOptions,
) -> Result<AgentState, JoinError> {
    let (client, verifier) = identity::enrol_client_config(opts.ca_sha256)?;
    let connecting = endpoint
        .connect_with(client, addr, CONTROLLER_SERVER_NAME)
        .map_err(|e| JoinError::Connect {
            addr: addr.to_string(),
            detail: e.to_string(),
        })?;
    let conn = match tokio::time::timeout(ENROL_TIMEOUT, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            if let Some(seen) = verifier.seen() {
                if !seen.contains(&opts.ca_sha256) {
                    let seen = seen
                        .iter()
                        .map(|f| f.to_string())
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(JoinError::CaMismatch {
                        addr: addr.to_string(),
                        seen,
                        expected: opts.ca_sha256,
                    });
                }
            }
            return Err(JoinError::Connect {
                addr: addr.to_string(),
                detail: describe_connection_error(&e),
            });
        }
        Err(_) => {
            return Err(JoinError::Connect {
                addr: addr.to_string(),
                detail: "no answer within 30 s (is UDP to that port open?)".into(),
            })
        }
    };
    let (key_pem, csr_der) = identity::new_key_and_csr(&opts.hostname)?;
    let req = EnrolRequest {
        protocol_version: PROTOCOL_VERSION,
        token: opts.token.trim().to_owned(),
        csr_der,
        hostname: opts.hostname.clone(),
    };
    let exchange = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| describe_connection_error(&e))?;
        framing::write(&mut send, &req, 64 * 1024)
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        framing::read::<_, EnrolResponse>(&mut recv, 64 * 1024)
            .await
            .map_err(|e| {
                conn.close_reason()
                    .map(|c| describe_connection_error(&c))
                    .unwrap_or_else(|| e.to_string())
            })?
            .ok_or_else(|| "the controller closed the stream without an answer".to_string())
    };
    let response = tokio::time::timeout(ENROL_TIMEOUT, exchange)
        .await
        .map_err(|_| JoinError::Protocol("no answer within 30 s".into()))?
        .map_err(JoinError::Protocol);
    conn.close(CloseCode::Normal.into(), b"enrolled");
    match response? {
        EnrolResponse::Refused { code, message } => Err(JoinError::Refused { code, message }),
        EnrolResponse::Accepted {
            host_id,
            cert_der,
            ca_der,
        } => {
            // The CA we are told to trust must be the one we pinned.
            if identity::Fingerprint::of(&ca_der) != opts.ca_sha256 {
                return Err(JoinError::CaMismatch {
                    addr: addr.to_string(),
                    seen: identity::Fingerprint::of(&ca_der).to_string(),
                    expected: opts.ca_sha256,
                });
            }
            if identity::host_id_of(&cert_der).ok().as_ref() != Some(&host_id)
                || !identity::cert_matches_key(&cert_der, &key_pem)
            {
                return Err(JoinError::Protocol(
                    "the controller returned a certificate that does not match the request".into(),
                ));
            }
            Ok(AgentState {
                config: AgentConfig {
                    controller: opts.controller.clone(),
                    host_id,
                    hostname: Some(opts.hostname.clone()),
                    labels: opts.labels.clone(),
                    oci_runtime: None,
                    images: Default::default(),
                    datasets: Default::default(),
                    container_slots: None,
                },
                ca_der,
                cert_der,
                key_pem,
            })
        }
    }
}
