//! The messages of the controller↔agent link.
//!
//! ## Connections and streams
//!
//! An agent dials the controller over QUIC. The ALPN names what the connection is for:
//!
//! * [`ALPN_ENROL`] — a one-shot enrolment: no client certificate; one bidirectional
//!   stream carrying an [`EnrolRequest`] and an [`EnrolResponse`].
//! * [`ALPN_AGENT`] — the long-lived, mutually authenticated link. The agent opens the
//!   **control stream** first and sends a [`Hello`]; the controller answers with a
//!   [`Welcome`]. Heartbeats ([`AgentMsg::Heartbeat`]) then flow on that stream. Every
//!   request ([`AgentRequest`]) and every bulk transfer opens a stream of its own, so a
//!   large transfer never waits behind, or delays, a heartbeat.
//!
//! ## Versioning
//!
//! The first field of [`Hello`] and of [`EnrolRequest`] is the protocol version, a
//! `u32`. Receivers decode that field alone first ([`peek_version`]) so that a peer
//! speaking another version gets a clear "version mismatch" rather than a decode error.
//!
//! ## Closing
//!
//! A connection is closed with one of the [`CloseCode`]s and a human-readable reason;
//! the peer logs both.

use serde::{Deserialize, Serialize};

use crate::ids::HostId;
use crate::resources::{Capacity, HostFacts, Isolation, RuntimeFacts};
use crate::validate::{self, Invalid, Validate};
use crate::workload::{DesiredUpdate, InstanceReport};

/// The link protocol version spoken by this build.
pub const PROTOCOL_VERSION: u32 = 5;

/// ALPN of enrolment connections.
pub const ALPN_ENROL: &[u8] = b"cairn-enrol";
/// ALPN of mutually authenticated agent connections.
pub const ALPN_AGENT: &[u8] = b"cairn-agent";

/// Reasons for closing a connection, sent as the QUIC application error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// Orderly shutdown of either side.
    Normal = 0,
    /// The peers speak different protocol versions.
    VersionMismatch = 1,
    /// A frame was larger than the receiver's limit.
    FrameTooLarge = 2,
    /// A frame could not be decoded, or a message broke a bound.
    Garbled = 3,
    /// The connection lacks a valid client certificate.
    Unauthenticated = 4,
    /// The certificate names a host the controller does not know (or removed).
    UnknownHost = 5,
    /// A newer connection of the same host replaced this one.
    Replaced = 6,
    /// The peer did not follow the protocol (wrong first message, timeout).
    ProtocolViolation = 7,
    /// Enrolment refused (token or request problem); see the reason.
    EnrolRefused = 8,
}

impl CloseCode {
    pub fn from_u64(v: u64) -> Option<Self> {
        use CloseCode::*;
        [
            Normal,
            VersionMismatch,
            FrameTooLarge,
            Garbled,
            Unauthenticated,
            UnknownHost,
            Replaced,
            ProtocolViolation,
            EnrolRefused,
        ]
        .into_iter()
        .find(|c| *c as u64 == v)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::VersionMismatch => "version_mismatch",
            CloseCode::FrameTooLarge => "frame_too_large",
            CloseCode::Garbled => "garbled",
            CloseCode::Unauthenticated => "unauthenticated",
            CloseCode::UnknownHost => "unknown_host",
            CloseCode::Replaced => "replaced",
            CloseCode::ProtocolViolation => "protocol_violation",
            CloseCode::EnrolRefused => "enrol_refused",
        }
    }
}

#[cfg(feature = "link")]
impl From<CloseCode> for quinn::VarInt {
    fn from(c: CloseCode) -> Self {
        quinn::VarInt::from_u32(c as u32)
    }
}

/// The prefix every versioned first message shares.
#[derive(Debug, Deserialize)]
struct VersionProbe {
    protocol_version: u32,
}

/// Reads only the protocol version from the start of an encoded first message.
pub fn peek_version(payload: &[u8]) -> Option<u32> {
    postcard::take_from_bytes::<VersionProbe>(payload)
        .ok()
        .map(|(p, _)| p.protocol_version)
}

// ---------------------------------------------------------------- enrolment

/// Sent by `cairn-agent join` on an [`ALPN_ENROL`] connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolRequest {
    pub protocol_version: u32,
    /// The join token as the operator gave it: `ID.SECRET`.
    pub token: String,
    /// A PKCS#10 request for the agent's freshly generated key. Only its public key is
    /// used: the controller chooses the subject (a new host id) itself.
    pub csr_der: Vec<u8>,
    pub hostname: String,
}

impl Validate for EnrolRequest {
    fn validate(&self) -> Result<(), Invalid> {
        validate::max_len("token", &self.token, 128)?;
        validate::max_items("csr_der", &self.csr_der, 8192)?;
        validate::max_len("hostname", &self.hostname, 253)
    }
}

/// Why an enrolment or renewal was refused. The agent shows `message` to the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalCode {
    TokenUnknown,
    TokenExpired,
    TokenUsedUp,
    BadRequest,
    VersionMismatch,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnrolResponse {
    Accepted {
        host_id: HostId,
        /// The agent's client certificate (DER), subject = `host_id`.
        cert_der: Vec<u8>,
        /// The CA certificate (DER) the agent trusts from now on.
        ca_der: Vec<u8>,
    },
    Refused {
        code: RefusalCode,
        message: String,
    },
}

// ---------------------------------------------------------------- agent link

/// The first message on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    pub facts: HostFacts,
    pub capacity: Capacity,
    pub runtime: RuntimeFacts,
    /// Whether instances on this host are fenced in.
    pub isolation: Isolation,
}

impl Validate for Hello {
    fn validate(&self) -> Result<(), Invalid> {
        self.facts.validate()?;
        self.capacity.validate()?;
        self.runtime.validate()?;
        self.isolation.validate()
    }
}

/// The controller's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u32,
    pub host_id: HostId,
    /// How often the agent sends heartbeats. The controller owns this setting so that
    /// its missed-heartbeat thresholds always match what agents do.
    pub heartbeat_interval_ms: u64,
    /// The controller's clock, so the agent can warn about a skewed clock (certificates
    /// depend on it).
    pub controller_time_ms: u64,
}

/// Messages from the agent on the control stream, after the Hello.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Boxing the heartbeat would cost an allocation per message for nothing: messages
// are decoded, handled and dropped one at a time.
#[allow(clippy::large_enum_variant)]
pub enum AgentMsg {
    Heartbeat(Heartbeat),
    /// Phases of instances: all of them when `full`, else the ones that changed.
    Instances {
        full: bool,
        reports: Vec<InstanceReport>,
    },
    /// The agent missed a desired-state version; send the full set.
    ResyncDesired,
}

impl Validate for AgentMsg {
    fn validate(&self) -> Result<(), Invalid> {
        match self {
            AgentMsg::Heartbeat(h) => {
                h.capacity.validate()?;
                h.runtime.validate()?;
                h.isolation.validate()?;
                validate::max_items("pulls", &h.pulls, crate::images::MAX_PULLS)?;
                validate::max_items("datasets", &h.datasets, MAX_CACHED_DATASETS)?;
                h.pulls.iter().try_for_each(Validate::validate)
            }
            AgentMsg::Instances { reports, .. } => {
                validate::max_items("reports", reports, crate::workload::MAX_DESIRED)?;
                reports.iter().try_for_each(Validate::validate)
            }
            AgentMsg::ResyncDesired => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Increases by one per heartbeat on a connection.
    pub seq: u64,
    pub capacity: Capacity,
    pub runtime: RuntimeFacts,
    /// Image pulls under way or recently failed (finished ones show up as images).
    pub pulls: Vec<crate::images::PullProgress>,
    /// Whether instances on this host are fenced in; a change is sent at once, not
    /// only with the next periodic heartbeat.
    pub isolation: Isolation,
    /// Dataset versions (their manifests) materialised and ready on this host: the
    /// scheduler prefers hosts that hold what a launch mounts.
    pub datasets: Vec<crate::chunks::ChunkId>,
    /// Launches waiting in the host's queue for container operations (the agent
    /// runs only a few creates at once): the scheduler steers new launches away
    /// from a host with a long queue. Added after protocol version 5 shipped, so it
    /// stays last and reads as 0 from an agent that does not send it.
    #[serde(default, deserialize_with = "trailing_or_default")]
    pub launch_queue: u32,
}

/// Reads a field added at the end of a message after agents without it were
/// deployed, as its default when the message ends before it. postcard is not
/// self-describing: an older agent's heartbeat simply stops where the field would
/// start, and `#[serde(default)]` alone does not help (postcard asks for every
/// field of a struct). Only for the last field of a message: whatever follows a
/// field read this way would be misread. (An older controller ignores the bytes
/// after the fields it knows, so the other direction needs nothing.)
fn trailing_or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(T::deserialize(d).unwrap_or_default())
}

/// Most cached dataset versions listed in one heartbeat.
pub const MAX_CACHED_DATASETS: usize = 1024;

/// Messages from the controller on the control stream, after the Welcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerMsg {
    /// Nothing to do.
    Noop,
    /// What this host should run.
    Desired(DesiredUpdate),
}

/// A request from the agent on a stream of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentRequest {
    /// A fresh certificate for a new key, for the same host id, before the old one expires.
    RenewCertificate { csr_der: Vec<u8> },
    /// The bytes of an uploaded image archive from `offset` on, so an interrupted
    /// fetch resumes where it stopped. Answered by [`AgentResponse::ImageStream`],
    /// after which the stream carries the raw bytes to the end of the archive.
    FetchImage { archive: String, offset: u64 },
    /// The encoded manifest of a dataset version (or any manifest). Answered by
    /// [`AgentResponse::Manifest`], after which the stream carries exactly `len` raw
    /// bytes and ends. The agent checks the bytes hash to `manifest` and validates
    /// the manifest whole before trusting any of it.
    FetchManifest { manifest: crate::chunks::ChunkId },
    /// Chunks, at most [`MAX_FETCH_CHUNKS`] of them. Answered by
    /// [`AgentResponse::Chunks`], after which the stream carries, for each requested
    /// id in order, one chunk frame (u32 big-endian length, then the bytes), and
    /// ends. If any chunk is absent the answer is [`AgentResponse::Refused`] naming
    /// it. A chunk found corrupt while the stream is under way resets the stream
    /// with a [`ChunkStreamCode`] that carries the reason and the chunk's index, so
    /// the agent can say which chunk and why.
    FetchChunks { chunks: Vec<crate::chunks::ChunkId> },
    /// Like [`AgentRequest::FetchManifest`], as a delta from `base`, a manifest the
    /// agent holds (the previous version, usually). Answered by
    /// [`AgentResponse::ManifestDelta`], after which the stream carries exactly `len`
    /// bytes of an encoded `chunks::delta::Delta`, or, when the controller does not
    /// hold `base` or a delta would not be smaller, as `FetchManifest` is. The agent
    /// checks the rebuilt bytes hash to `manifest`.
    FetchManifestDelta {
        manifest: crate::chunks::ChunkId,
        base: crate::chunks::ChunkId,
    },
    /// The manifest of an uploaded image archive (named by the BLAKE3 of its bytes,
    /// as in `ImageSource::Controller`), answered as `FetchManifest` is: the agent
    /// then fetches only the chunks it lacks, so two archives sharing base layers
    /// share them on the wire too. The agent checks the assembled file's hash is the
    /// archive's name.
    FetchImageManifest { archive: String },
    /// Which of `chunks` the controller lacks (a volume save asks before it
    /// sends). Answered by [`AgentResponse::Missing`].
    MissingChunks { chunks: Vec<crate::chunks::ChunkId> },
    /// A pack of chunks follows: exactly `len` bytes of frames
    /// (`[32-byte id][u32 BE length][bytes]`, see [`crate::chunks::push_frame`]),
    /// at most [`MAX_PACK_BYTES`]. The controller checks every chunk against its
    /// id before storing any and answers [`AgentResponse::Stored`] once they are
    /// durable.
    StoreChunks { len: u64 },
    /// The block signatures (`chunks::patch::signature`) of `chunks`, which the
    /// agent's new chunks replace: answered by [`AgentResponse::Signatures`], after
    /// which the stream carries exactly `len` bytes: per chunk asked, in order, a
    /// u32 BE length and that many bytes of signature (0: the controller lacks it).
    ChunkSignatures { chunks: Vec<crate::chunks::ChunkId> },
    /// Like [`AgentRequest::StoreChunks`], for chunks sent as deltas from chunks
    /// the controller holds: exactly `len` bytes of frames
    /// `[32-byte new id][32-byte base id][u32 BE length][delta]` follow. Each chunk
    /// is rebuilt and checked against its id before any is stored; one that does
    /// not rebuild refuses the pack, naming it (the agent sends it whole).
    StoreChunkDeltas { len: u64 },
    /// A snapshot of the volume of `instance` (placed on this host): exactly `len`
    /// bytes of an encoded manifest follow, every chunk of which must already be
    /// on the controller. `base_generation` is the volume generation the host's
    /// copy started from; `final_save` says the instance is being stopped, so the
    /// lease is released once the snapshot is stored. Answered by
    /// [`AgentResponse::Committed`] or a refusal (over quota, chunks missing).
    CommitSnapshot {
        instance: crate::ids::InstanceId,
        base_generation: u64,
        final_save: bool,
        len: u64,
        /// The body is an encoded `chunks::delta::Delta` from a manifest the
        /// controller holds (the snapshot the host's copy started from), not the
        /// whole manifest: a save of a tree of 10,000 files that changed a few
        /// sends a few KiB. A base the controller lacks is refused (the message
        /// starts with `base_unknown`), and the agent sends the whole manifest.
        delta: bool,
    },
}

/// Most chunks one [`AgentRequest::ChunkSignatures`] asks about.
pub const MAX_SIGNATURE_CHUNKS: usize = 64;

/// Largest pack one [`AgentRequest::StoreChunks`] carries.
pub const MAX_PACK_BYTES: u64 = 16 * 1024 * 1024;
/// Largest snapshot manifest an agent may commit.
pub const MAX_SNAPSHOT_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;

/// What a committed snapshot became on the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommitOutcome {
    /// The volume's new head, at this generation (also when nothing changed).
    Head { generation: u64 },
    /// Kept beside the head: the instance no longer holds the volume's lease or
    /// started from an older head. Never made head, never discarded.
    Conflict { reason: String },
    /// Kept aside and flagged until the user or an admin confirms it: it would
    /// empty the volume or delete too many of its files.
    Halted { reason: String },
}

/// Most chunks one [`AgentRequest::FetchChunks`] asks for.
pub const MAX_FETCH_CHUNKS: usize = 1024;

/// Largest manifest the controller serves and the agent accepts, in bytes (a
/// manifest of a million entries is far below it).
pub const MAX_MANIFEST_BYTES: u64 = 256 * 1024 * 1024;

/// Why the controller reset a chunk stream once bytes were flowing.
///
/// The QUIC reset code carries the reason in its upper bits and, in its low 16
/// bits, the index (in the request) of the chunk concerned ([`ChunkStreamCode::reset_code`]):
/// a reset may discard bytes already in flight, so where the agent was reading
/// does not tell which chunk the controller was at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ChunkStreamCode {
    /// The chunk's bytes in the controller's store do not match its name.
    Corrupt = 1,
    /// The chunk vanished from the store after the request was accepted.
    Missing = 2,
    /// The controller could not read its store (see its log).
    Internal = 3,
    /// The agent did not read for too long.
    Stalled = 4,
}

impl ChunkStreamCode {
    /// The reset code for this reason about the `index`th chunk asked for.
    pub fn reset_code(self, index: usize) -> u64 {
        ((self as u64) << 16) | (index as u64 & 0xffff)
    }

    /// The reason and chunk index a reset code carries.
    pub fn split(code: u64) -> Option<(Self, usize)> {
        use ChunkStreamCode::*;
        let reason = [Corrupt, Missing, Internal, Stalled]
            .into_iter()
            .find(|c| *c as u64 == code >> 16)?;
        Some((reason, (code & 0xffff) as usize))
    }

    /// What happened to `chunk`, in words for the user.
    pub fn describe(self, chunk: &crate::chunks::ChunkId) -> String {
        match self {
            ChunkStreamCode::Corrupt => format!("chunk {chunk} is corrupt on the controller"),
            ChunkStreamCode::Missing => format!("chunk {chunk} is missing on the controller"),
            ChunkStreamCode::Internal => {
                format!("the controller could not read chunk {chunk}; see its log")
            }
            ChunkStreamCode::Stalled => {
                format!("the controller gave up sending chunk {chunk}: the agent read too slowly")
            }
        }
    }
}

impl Validate for AgentRequest {
    fn validate(&self) -> Result<(), Invalid> {
        match self {
            AgentRequest::RenewCertificate { csr_der } => {
                validate::max_items("csr_der", csr_der, 8192)
            }
            AgentRequest::FetchImage { archive, .. }
            | AgentRequest::FetchImageManifest { archive } => {
                if crate::images::is_archive_hash(archive) {
                    Ok(())
                } else {
                    Err(Invalid::new("archive", "not a BLAKE3 hash"))
                }
            }
            AgentRequest::FetchManifest { .. } | AgentRequest::FetchManifestDelta { .. } => Ok(()),
            AgentRequest::MissingChunks { chunks } => {
                validate::max_items("chunks", chunks, MAX_FETCH_CHUNKS)
            }
            AgentRequest::ChunkSignatures { chunks } => {
                validate::max_items("chunks", chunks, MAX_SIGNATURE_CHUNKS)
            }
            AgentRequest::StoreChunks { len } | AgentRequest::StoreChunkDeltas { len } => {
                if *len == 0 || *len > MAX_PACK_BYTES {
                    return Err(Invalid::new(
                        "len",
                        format!("a pack is 1 to {MAX_PACK_BYTES} bytes"),
                    ));
                }
                Ok(())
            }
            AgentRequest::CommitSnapshot { len, .. } => {
                if *len == 0 || *len > MAX_SNAPSHOT_MANIFEST_BYTES {
                    return Err(Invalid::new(
                        "len",
                        format!("a manifest is 1 to {MAX_SNAPSHOT_MANIFEST_BYTES} bytes"),
                    ));
                }
                Ok(())
            }
            AgentRequest::FetchChunks { chunks } => {
                if chunks.is_empty() {
                    return Err(Invalid::new("chunks", "no chunks asked for"));
                }
                validate::max_items("chunks", chunks, MAX_FETCH_CHUNKS)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentResponse {
    Certificate {
        cert_der: Vec<u8>,
    },
    /// The archive follows as raw bytes: `size_bytes` in all, of which the stream
    /// carries those from the requested offset.
    ImageStream {
        size_bytes: u64,
    },
    /// The manifest follows as `len` raw bytes.
    Manifest {
        len: u64,
    },
    /// The chunks follow, one frame each, in the order asked.
    Chunks,
    Refused {
        code: RefusalCode,
        message: String,
    },
    /// The manifest follows as `len` bytes of an encoded delta from the base asked.
    ManifestDelta {
        len: u64,
    },
    /// The chunks of a [`AgentRequest::MissingChunks`] the controller lacks, in
    /// the order asked.
    Missing {
        chunks: Vec<crate::chunks::ChunkId>,
    },
    /// A pack is stored and durable: `stored` chunks were new.
    Stored {
        stored: u64,
    },
    /// The signatures asked for follow as `len` bytes.
    Signatures {
        len: u64,
    },
    /// A snapshot is stored and durable, as this.
    Committed(CommitOutcome),
}

/// Describes why a connection ended, in words an operator can act on.
#[cfg(feature = "link")]
pub fn describe_connection_error(err: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as E;
    match err {
        E::ApplicationClosed(c) => {
            let code = CloseCode::from_u64(c.error_code.into_inner())
                .map(CloseCode::as_str)
                .unwrap_or("unknown");
            format!(
                "closed by peer ({code}): {}",
                String::from_utf8_lossy(&c.reason)
            )
        }
        E::LocallyClosed => "closed locally".into(),
        E::TimedOut => "timed out: no packets from the peer within the idle timeout".into(),
        E::Reset => "reset by peer (it restarted or forgot the connection)".into(),
        E::VersionMismatch => "QUIC version mismatch".into(),
        E::TransportError(e) => format!("transport error: {e}"),
        E::ConnectionClosed(c) => format!("closed by peer's transport: {c}"),
        E::CidsExhausted => "connection ids exhausted".into(),
    }
}

/// The close code and reason of an application close, if that is how it ended.
#[cfg(feature = "link")]
pub fn application_close(err: &quinn::ConnectionError) -> Option<(Option<CloseCode>, String)> {
    match err {
        quinn::ConnectionError::ApplicationClosed(c) => Some((
            CloseCode::from_u64(c.error_code.into_inner()),
            String::from_utf8_lossy(&c.reason).into_owned(),
        )),
        _ => None,
    }
}
