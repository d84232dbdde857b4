//! Images on the link: where an instance's image comes from, which images a host
//! should hold before anyone asks (pre-pull), the registry credentials for pulling
//! them, and how pulls are going.
//!
//! Registry images always travel as digests (`REGISTRY/REPO@sha256:…`): the
//! controller resolves a blueprint's tag once, so every host runs the same bits.
//! Images uploaded to the controller (`cairn images push`) travel as the archive's
//! BLAKE3 hash and are run by their image id (`sha256:…`).

use serde::{Deserialize, Serialize};

use crate::validate::{self, Invalid, Validate};

/// Most images in one host's desired set.
pub const MAX_DESIRED_IMAGES: usize = 256;
/// Most registries with credentials.
pub const MAX_CREDENTIALS: usize = 64;
/// Most pulls listed in one heartbeat.
pub const MAX_PULLS: usize = 256;
/// Longest image reference.
pub const MAX_REFERENCE: usize = 512;

/// Where the bytes of an image come from.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageSource {
    /// Already on the host, put there by the operator (blueprint `pull = "never"`,
    /// like Kubernetes' `imagePullPolicy: Never`): never pulled.
    Host,
    /// Pulled from the registry named in the reference, which is a digest reference.
    Registry,
    /// An archive (`docker save`) uploaded to the controller, fetched over the link,
    /// verified against `archive` (BLAKE3, hex) and loaded into Docker.
    Controller { archive: String, size_bytes: u64 },
}

/// An image a host should hold, and how to get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSpec {
    /// What containers are created from: `REGISTRY/REPO@sha256:…` for registry
    /// images, the image id `sha256:…` for uploaded ones, the name as written for
    /// host images.
    pub reference: String,
    pub source: ImageSource,
}

/// A login for one registry. The password is sent to agents (they pull), never
/// returned by the controller's API and never logged: `Debug` hides it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryCredential {
    /// The registry's host and optional port, as it appears in references
    /// (`registry.example.org`, `127.0.0.1:5000`).
    pub registry: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// The images a host should hold whether or not anything runs from them, and the
/// credentials for every pull on that host (pre-pulls and on-demand pulls).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredImages {
    pub prepull: Vec<ImageSpec>,
    pub credentials: Vec<RegistryCredential>,
}

impl Validate for DesiredImages {
    fn validate(&self) -> Result<(), Invalid> {
        validate::max_items("images.prepull", &self.prepull, MAX_DESIRED_IMAGES)?;
        validate::max_items("images.credentials", &self.credentials, MAX_CREDENTIALS)?;
        for i in &self.prepull {
            i.validate()?;
        }
        for c in &self.credentials {
            validate::max_len("images.credentials.registry", &c.registry, 255)?;
            validate::max_len("images.credentials.username", &c.username, 255)?;
            validate::max_len("images.credentials.password", &c.password, 4096)?;
        }
        Ok(())
    }
}

impl Validate for ImageSpec {
    fn validate(&self) -> Result<(), Invalid> {
        validate::max_len("image.reference", &self.reference, MAX_REFERENCE)?;
        if let ImageSource::Controller { archive, .. } = &self.source {
            if archive.len() != 64 || !archive.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Invalid::new(
                    "image.source.archive",
                    "must be 64 hexadecimal digits (a BLAKE3 hash)",
                ));
            }
        }
        Ok(())
    }
}

/// Where one pull stands.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullPhase {
    /// Waiting for a free pull slot.
    Queued,
    /// Bytes are arriving.
    Pulling,
    /// An uploaded archive is being loaded into Docker.
    Loading,
    /// The last attempt failed; the next one starts after `retry_in_ms`.
    Retrying { error: String, retry_in_ms: u64 },
    /// Every attempt failed; the agent stops trying until the image is wanted again.
    Failed { error: String },
}

/// Progress of one image pull (or archive fetch) on a host.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullProgress {
    pub reference: String,
    pub phase: PullPhase,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub layers_done: u32,
    pub layers_total: u32,
    pub bytes_done: u64,
    /// Known bytes so far; grows as Docker learns layer sizes.
    pub bytes_total: u64,
    /// Started for the desired set rather than for a launch.
    pub prepull: bool,
}

impl PullProgress {
    /// Whole percent done, from bytes when they are known, else from layers.
    pub fn percent(&self) -> u32 {
        (self.bytes_done.min(self.bytes_total) * 100)
            .checked_div(self.bytes_total)
            .map(|p| p as u32)
            .or_else(|| {
                (self.layers_done.min(self.layers_total) * 100).checked_div(self.layers_total)
            })
            .unwrap_or(0)
    }
}

impl Validate for PullProgress {
    fn validate(&self) -> Result<(), Invalid> {
        validate::max_len("pull.reference", &self.reference, MAX_REFERENCE)?;
        match &self.phase {
            PullPhase::Retrying { error, .. } | PullPhase::Failed { error } => {
                validate::max_len("pull.error", error, 4096)
            }
            _ => Ok(()),
        }
    }
}

/// BLAKE3 of a file in lowercase hex, read in 1 MiB pieces (never whole): how an
/// uploaded archive is named by the CLI, checked by the controller and verified by
/// the agent after a fetch. Blocking; call it on the blocking pool.
pub fn blake3_file(path: &std::path::Path) -> std::io::Result<String> {
    let f = std::fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    h.update_reader(std::io::BufReader::with_capacity(1 << 20, f))?;
    Ok(h.finalize().to_hex().to_string())
}

/// Whether `s` is a BLAKE3 hash in lowercase hex.
pub fn is_archive_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let c = RegistryCredential {
            registry: "r.example:5000".into(),
            username: "course".into(),
            password: "hunter2".into(),
        };
        let shown = format!(
            "{c:?} {:?}",
            DesiredImages {
                prepull: vec![],
                credentials: vec![c.clone()]
            }
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("course"));
    }

    #[test]
    fn percent_prefers_bytes_then_layers() {
        let mut p = PullProgress {
            reference: "r/x@sha256:00".into(),
            phase: PullPhase::Pulling,
            attempt: 1,
            layers_done: 1,
            layers_total: 4,
            bytes_done: 0,
            bytes_total: 0,
            prepull: false,
        };
        assert_eq!(p.percent(), 25);
        p.bytes_total = 200;
        p.bytes_done = 70;
        assert_eq!(p.percent(), 35);
        p.bytes_done = 900;
        assert_eq!(p.percent(), 100);
    }

    #[test]
    fn archive_hashes_are_checked() {
        let spec = |a: &str| ImageSpec {
            reference: "sha256:ab".into(),
            source: ImageSource::Controller {
                archive: a.into(),
                size_bytes: 1,
            },
        };
        assert!(spec(&"a".repeat(64)).validate().is_ok());
        assert!(spec("../../etc/passwd").validate().is_err());
        assert!(is_archive_hash(&"0f".repeat(32)));
        assert!(!is_archive_hash(&"0F".repeat(32)));
    }
}
