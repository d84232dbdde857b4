//! Identity by certificate: the private CA, host certificates, and the TLS
//! configurations of both ends of the link.
//!
//! * The controller's CA signs the controller's server certificate and one client
//!   certificate per host; a host certificate's common name is its [`HostId`].
//! * The server certificate always carries [`CONTROLLER_SERVER_NAME`], and agents verify
//!   that name rather than whatever address they dialled. Addresses change (NAT, DNS,
//!   floating IPs); the controller's identity does not. Agent certificates carry only the
//!   client-auth usage, so one can never pose as the controller.
//! * A joining agent has no CA yet. It pins the CA by its SHA-256 fingerprint
//!   ([`PinnedCaVerifier`]): the server's chain must end in a CA with exactly that hash,
//!   and the leaf must verify against it as usual.
//!
//! Only the `ring` provider is used.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::ids::HostId;
use crate::protocol::{ALPN_AGENT, ALPN_ENROL};

/// The DNS name in every controller server certificate, verified by agents.
pub const CONTROLLER_SERVER_NAME: &str = "controller.cairn.internal";

/// Errors of certificate handling.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("could not parse {what}: {detail}")]
    Parse { what: &'static str, detail: String },
    #[error("{0}")]
    Fingerprint(String),
    #[error("QUIC configuration failed: {0}")]
    Quic(String),
}

/// The crypto provider used everywhere: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------- fingerprints

/// The SHA-256 of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(der: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Fingerprint(out)
    }

    /// Accepts `sha256:HEX`, plain `HEX`, and colon-separated hex as printed by openssl.
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        let t = s.trim();
        let t = t
            .strip_prefix("sha256:")
            .or_else(|| t.strip_prefix("SHA256:"))
            .unwrap_or(t);
        let hex_digits: String = t.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(&hex_digits).map_err(|_| {
            IdentityError::Fingerprint(format!(
                "--ca-sha256 {s:?} is not hex; expected sha256:<64 hex digits>"
            ))
        })?;
        let arr: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            IdentityError::Fingerprint(format!(
                "--ca-sha256 has {} bytes, a SHA-256 fingerprint has 32",
                b.len()
            ))
        })?;
        Ok(Fingerprint(arr))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

// ---------------------------------------------------------------- PEM

/// Encodes a certificate as PEM.
pub fn cert_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

fn pem_encode(tag: &str, der: &[u8]) -> String {
    use base64_lite::encode;
    let b64 = encode(der);
    let mut out = format!("-----BEGIN {tag}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {tag}-----\n"));
    out
}

/// Reads the first certificate from PEM text.
pub fn parse_cert_pem(pem: &str) -> Result<CertificateDer<'static>, IdentityError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| IdentityError::Parse {
        what: "certificate PEM",
        detail: e.to_string(),
    })
}

/// Reads a PKCS#8 private key from PEM text.
pub fn parse_key_pem(pem: &str) -> Result<KeyPair, IdentityError> {
    KeyPair::from_pem(pem).map_err(|e| IdentityError::Parse {
        what: "private key PEM",
        detail: e.to_string(),
    })
}

mod base64_lite {
    //! Standard base64 with padding, for PEM output only (decoding goes through
    //! rustls-pki-types).
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------- certificate facts

/// What Cairn needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub common_name: Option<String>,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
}

pub fn cert_info(der: &[u8]) -> Result<CertInfo, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| IdentityError::Parse {
        what: "certificate",
        detail: e.to_string(),
    })?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    Ok(CertInfo {
        common_name,
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
    })
}

/// Whether `key_pem` is the private key of the certificate's public key.
pub fn cert_matches_key(cert_der: &[u8], key_pem: &str) -> bool {
    let Ok(key) = parse_key_pem(key_pem) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return false;
    };
    cert.tbs_certificate
        .subject_pki
        .subject_public_key
        .data
        .as_ref()
        == key.public_key_raw()
}

/// The host id named by a client certificate.
pub fn host_id_of(cert_der: &[u8]) -> Result<HostId, IdentityError> {
    let info = cert_info(cert_der)?;
    let cn = info.common_name.ok_or_else(|| IdentityError::Parse {
        what: "client certificate",
        detail: "no common name".into(),
    })?;
    HostId::parse(&cn).map_err(|e| IdentityError::Parse {
        what: "client certificate",
        detail: e.to_string(),
    })
}

// ---------------------------------------------------------------- the CA

/// A certificate and its key, both as PEM.
#[derive(Clone)]
pub struct CertAndKey {
    pub cert_der: Vec<u8>,
    pub key_pem: String,
}

impl fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertAndKey")
            .field("cert", &Fingerprint::of(&self.cert_der))
            .finish_non_exhaustive()
    }
}

/// The controller's private certificate authority.
pub struct Ca {
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ca({})", self.fingerprint())
    }
}

fn validity(params: &mut CertificateParams, ttl: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // Back-date a little: a host whose clock is a minute behind must still accept a
    // certificate issued "now". Capped at a tenth of the lifetime so short-lived
    // certificates are not mostly back-dating.
    let backdate = (ttl.as_secs() / 10).min(300) as i64;
    params.not_before = now - time::Duration::seconds(backdate);
    params.not_after = now + time::Duration::seconds(ttl.as_secs().min(i64::MAX as u64) as i64);
}

fn random_serial(params: &mut CertificateParams) {
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f; // positive
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
}

impl Ca {
    /// A new CA with a fresh ECDSA P-256 key.
    pub fn generate(name: &str, ttl: Duration) -> Result<(Self, String), IdentityError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "Cairn");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, ttl);
        random_serial(&mut params);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        let cert_der = cert.der().to_vec();
        let issuer = Issuer::new(params, key);
        Ok((Ca { cert_der, issuer }, key_pem))
    }

    /// Loads a CA from its certificate (DER) and key (PEM).
    pub fn load(cert_der: Vec<u8>, key_pem: &str) -> Result<Self, IdentityError> {
        let key = parse_key_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(cert_der.as_slice()), key)?;
        Ok(Ca { cert_der, issuer })
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert_der)
    }

    /// Issues the controller's server certificate for the given extra names (DNS names
    /// or IP addresses), always including [`CONTROLLER_SERVER_NAME`].
    pub fn issue_server(
        &self,
        names: &[String],
        ttl: Duration,
    ) -> Result<CertAndKey, IdentityError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "cairn-controller");
        params.distinguished_name = dn;
        let mut sans = vec![SanType::DnsName(CONTROLLER_SERVER_NAME.try_into()?)];
        for n in names {
            let san = match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.as_str().try_into()?),
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, ttl);
        random_serial(&mut params);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertAndKey {
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs an agent's certificate request for `host`. Only the request's public key
    /// is used; the subject, usages and lifetime are the controller's choice.
    pub fn sign_host(
        &self,
        csr_der: &[u8],
        host: &HostId,
        ttl: Duration,
    ) -> Result<Vec<u8>, IdentityError> {
        let csr = CertificateSigningRequestParams::from_der(&csr_der.into()).map_err(|e| {
            IdentityError::Parse {
                what: "certificate signing request",
                detail: e.to_string(),
            }
        })?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host.as_str());
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, ttl);
        random_serial(&mut params);
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(cert.der().to_vec())
    }
}

/// A fresh key for an agent and a certificate request for it. Returns (key PEM, CSR DER).
pub fn new_key_and_csr(hostname: &str) -> Result<(String, Vec<u8>), IdentityError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        hostname.chars().take(64).collect::<String>(),
    );
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

fn private_key(key_pem: &str) -> Result<PrivateKeyDer<'static>, IdentityError> {
    let key = parse_key_pem(key_pem)?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        key.serialize_der(),
    )))
}

// ---------------------------------------------------------------- QUIC configs

/// Streams an agent may have open towards the controller at once (its control
/// stream, requests, chunk fetches, volume saves); more wait for one to close.
/// quinn keeps a table entry per stream the peer may open, allocated up front, so
/// the controller's allowance costs it per connected host: at the agent's 4096 it
/// was about 330 KiB per host, a third of a gigabyte for a thousand idle hosts.
pub const AGENT_OPENED_STREAMS: u32 = 256;

/// The controller's transport settings for its agents: [`transport_config`], with
/// the smaller allowance of streams agents open ([`AGENT_OPENED_STREAMS`]).
pub fn controller_transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = base_transport();
    t.max_concurrent_bidi_streams(AGENT_OPENED_STREAMS.into());
    Arc::new(t)
}

/// Transport settings shared by both ends: keep-alives well inside the idle timeout,
/// so a quiet but healthy link never idles out while a dead peer is noticed in 30 s.
pub fn transport_config() -> Arc<quinn::TransportConfig> {
    Arc::new(base_transport())
}

fn base_transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(30)) {
        t.max_idle_timeout(Some(idle));
    }
    // Every proxied browser connection is a stream of its own, so a busy host carries
    // thousands at once.
    t.max_concurrent_bidi_streams(4096u32.into());
    t.max_concurrent_uni_streams(64u32.into());
    // Windows large enough for a fast stream on a LAN, and a bound on what one peer
    // can make the other buffer (quinn's default connection window is unlimited).
    t.stream_receive_window((4u32 << 20).into());
    t.receive_window((64u32 << 20).into());
    t.send_window(64 << 20);
    t
}

/// Socket buffer size asked for on both ends of the link. The kernel default (about
/// 208 KiB) drops datagrams on a fast stream through the proxy: measured on loopback,
/// a 1 GiB download lost ~0.5 % of its packets to full receive buffers, each loss a
/// congestion event. The kernel caps the request at `net.core.rmem_max`/`wmem_max`.
pub const UDP_BUFFER_BYTES: usize = 4 << 20;

/// Binds a UDP socket for a QUIC endpoint with [`UDP_BUFFER_BYTES`] buffers (best
/// effort: a smaller kernel cap is logged, not fatal).
pub fn udp_socket(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    if let Err(e) = state.set_recv_buffer_size((&socket).into(), UDP_BUFFER_BYTES) {
        tracing::debug!(error = %e, "cannot raise the UDP receive buffer");
    }
    if let Err(e) = state.set_send_buffer_size((&socket).into(), UDP_BUFFER_BYTES) {
        tracing::debug!(error = %e, "cannot raise the UDP send buffer");
    }
    Ok(socket)
}

/// A QUIC endpoint on a socket from [`udp_socket`]; a server when `server` is given.
pub fn endpoint(
    addr: std::net::SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    endpoint_with_reset_key(addr, server, None)
}

/// [`endpoint`] whose stateless-reset key is derived from `secret` instead of
/// drawn at random. A server that keeps it across restarts answers the packets of
/// connections its previous process held with a reset the peer recognises
/// (RFC 9000 §10.3), so agents reconnect at once instead of after the idle
/// timeout, and a save in flight is retried without waiting for it.
pub fn endpoint_with_reset_key(
    addr: std::net::SocketAddr,
    server: Option<quinn::ServerConfig>,
    secret: Option<&[u8]>,
) -> std::io::Result<quinn::Endpoint> {
    let socket = udp_socket(addr)?;
    let config = match secret {
        Some(s) => {
            let key = blake3::derive_key("cairn link stateless reset key v1", s);
            let mut c = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                &key,
            )));
            // Connection ids carry a keyed hash the endpoint checks before it
            // answers a packet of an unknown connection: the key must outlive the
            // process too, or the new one drops the old ids unanswered.
            let cid = blake3::derive_key("cairn link connection id key v1", s);
            let cid_key = u64::from_le_bytes([
                cid[0], cid[1], cid[2], cid[3], cid[4], cid[5], cid[6], cid[7],
            ]);
            c.cid_generator(move || {
                Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            });
            c
        }
        None => quinn::EndpointConfig::default(),
    };
    quinn::Endpoint::new(config, server, socket, Arc::new(quinn::TokioRuntime))
}

/// The controller's QUIC server configuration. Client certificates are optional at
/// the TLS layer, because enrolling agents have none yet; a certificate that *is*
/// presented must chain to the CA, and the link refuses agent connections without
/// one (see the controller's link module).
pub fn server_config(
    ca_der: &[u8],
    server: &CertAndKey,
) -> Result<quinn::ServerConfig, IdentityError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| IdentityError::Quic(e.to_string()))?;
    let chain = vec![
        CertificateDer::from(server.cert_der.clone()),
        CertificateDer::from(ca_der.to_vec()),
    ];
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, private_key(&server.key_pem)?)?;
    tls.alpn_protocols = vec![ALPN_AGENT.to_vec(), ALPN_ENROL.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| IdentityError::Quic(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(controller_transport_config());
    Ok(cfg)
}

/// The agent's configuration for the mutually authenticated link.
pub fn agent_client_config(
    ca_der: &[u8],
    cert_der: &[u8],
    key_pem: &str,
) -> Result<quinn::ClientConfig, IdentityError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec()))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from(cert_der.to_vec())],
            private_key(key_pem)?,
        )?;
    tls.alpn_protocols = vec![ALPN_AGENT.to_vec()];
    quic_client(tls)
}

/// A client configuration with no client certificate, trusting the given CA (used by
/// tests to prove such clients are refused).
pub fn anonymous_client_config(
    ca_der: &[u8],
    alpn: &[u8],
) -> Result<quinn::ClientConfig, IdentityError> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec()))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    quic_client(tls)
}

fn quic_client(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, IdentityError> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| IdentityError::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport_config());
    Ok(cfg)
}

/// The enrolment client configuration: trusts whichever CA has the pinned fingerprint.
/// The returned verifier remembers what it saw, so a mismatch can be reported in words
/// rather than as a bare TLS alert.
pub fn enrol_client_config(
    pinned: Fingerprint,
) -> Result<(quinn::ClientConfig, Arc<PinnedCaVerifier>), IdentityError> {
    let verifier = Arc::new(PinnedCaVerifier {
        pinned,
        provider: provider(),
        seen: Mutex::new(None),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_ENROL.to_vec()];
    Ok((quic_client(tls)?, verifier))
}

/// Verifies a server whose CA is known only by fingerprint (trust on first use, made
/// safe by the operator-supplied hash).
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pinned: Fingerprint,
    provider: Arc<CryptoProvider>,
    seen: Mutex<Option<Vec<Fingerprint>>>,
}

impl PinnedCaVerifier {
    /// The fingerprints of the CA certificates the server presented, if the handshake
    /// got that far.
    pub fn seen(&self) -> Option<Vec<Fingerprint>> {
        self.seen.lock().ok().and_then(|s| s.clone())
    }

    pub fn pinned(&self) -> Fingerprint {
        self.pinned
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen: Vec<Fingerprint> = intermediates.iter().map(|c| Fingerprint::of(c)).collect();
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(seen.clone());
        }
        let Some(ca) = intermediates
            .iter()
            .find(|c| Fingerprint::of(c) == self.pinned)
        else {
            return Err(rustls::Error::General(format!(
                "the controller's CA fingerprint is not {}",
                self.pinned
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The certificates a connection's peer presented, if any.
pub fn peer_certificates(conn: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
    conn.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()
        .map(|b| *b)
}

/// The ALPN a connection negotiated.
pub fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()
        .and_then(|h| h.protocol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_common_spellings() {
        let fp = Fingerprint::of(b"hello");
        let s = fp.to_string();
        assert_eq!(Fingerprint::parse(&s).unwrap(), fp);
        assert_eq!(
            Fingerprint::parse(s.trim_start_matches("sha256:")).unwrap(),
            fp
        );
        let colons = hex::encode(fp.0)
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(Fingerprint::parse(&colons).unwrap(), fp);
        assert!(Fingerprint::parse("sha256:abcd").is_err());
        assert!(Fingerprint::parse("zz").is_err());
    }

    #[test]
    fn ca_signs_hosts_and_survives_reload() {
        let (ca, key_pem) = Ca::generate("test CA", Duration::from_secs(3600)).unwrap();
        let reloaded = Ca::load(ca.cert_der().to_vec(), &key_pem).unwrap();
        assert_eq!(reloaded.fingerprint(), ca.fingerprint());
        let host = HostId::generate();
        let (_key, csr) = new_key_and_csr("node1").unwrap();
        let cert = reloaded
            .sign_host(&csr, &host, Duration::from_secs(600))
            .unwrap();
        assert_eq!(host_id_of(&cert).unwrap(), host);
        assert!(cert_matches_key(&cert, &_key));
        assert!(!cert_matches_key(&cert, &key_pem));
        let info = cert_info(&cert).unwrap();
        assert!(info.not_after_unix - info.not_before_unix <= 600 + 60 + 1);
        // The reloaded CA's signature verifies against the original CA certificate.
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca.cert_der().to_vec()))
            .unwrap();
        let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
        v.verify_client_cert(&CertificateDer::from(cert), &[], UnixTime::now())
            .unwrap();
    }

    #[test]
    fn garbage_csr_is_an_error_not_a_panic() {
        let (ca, _) = Ca::generate("t", Duration::from_secs(60)).unwrap();
        assert!(ca
            .sign_host(b"not a csr", &HostId::generate(), Duration::from_secs(60))
            .is_err());
    }

    #[test]
    fn pem_round_trips() {
        let (ca, _) = Ca::generate("t", Duration::from_secs(60)).unwrap();
        let pem = cert_pem(ca.cert_der());
        assert_eq!(parse_cert_pem(&pem).unwrap().as_ref(), ca.cert_der());
    }
}
