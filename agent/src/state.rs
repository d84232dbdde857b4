//! The agent's state directory: who it is and whom it trusts.
//!
//! ```text
//! STATE_DIR/agent.toml   controller address, host id, labels (0600)
//! STATE_DIR/ca.crt       the controller's CA (0600)
//! STATE_DIR/agent.crt    this host's client certificate (0600)
//! STATE_DIR/agent.key    its private key (0600)
//! ```
//! Everything else the agent holds is a cache it can rebuild.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cairn_shared::fsutil;
use cairn_shared::identity;
use cairn_shared::ids::HostId;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{dir} holds no enrolment (no agent.toml); run `cairn-agent join` first")]
    NotEnrolled { dir: String },
    #[error("{path}: {detail}")]
    Bad { path: String, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// The editable part of the state: `agent.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// `HOST:PORT` of the controller's link (UDP).
    pub controller: String,
    pub host_id: HostId,
    /// The name this host reports; the system host name if absent.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Labels this host advertises, e.g. `gpu = "true"`. Edit and restart to change.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The OCI runtime for instance containers (e.g. `runsc` for gVisor); Docker's
    /// default when absent.
    #[serde(default)]
    pub oci_runtime: Option<String>,
    /// Image pulls and garbage collection (`[images]` in agent.toml).
    #[serde(default)]
    pub images: ImagesSettings,
    /// The dataset cache (`[datasets]` in agent.toml).
    #[serde(default)]
    pub datasets: DatasetsSettings,
    /// Container creates run at once on this host; the others wait in line (see
    /// `runtime::queue`). 4 when absent; `cairn-agent run --container-slots`
    /// overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_slots: Option<usize>,
}

/// How much disk this agent gives dataset versions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatasetsSettings {
    /// Bytes the dataset cache (materialised trees plus their chunks) may hold
    /// before versions no container uses are evicted, least recently used first.
    /// Default 20 GiB: a fixed figure rather than a share of the disk, so that what
    /// an operator sees does not change with whatever else fills the disk. A launch
    /// whose datasets do not fit even after evicting every unused version goes
    /// ahead over the limit (a running course matters more than the cap); a
    /// pre-fetch waits instead.
    #[serde(default = "default_cache_limit")]
    pub cache_limit_bytes: u64,
}

fn default_cache_limit() -> u64 {
    20 << 30
}

impl Default for DatasetsSettings {
    fn default() -> Self {
        DatasetsSettings {
            cache_limit_bytes: default_cache_limit(),
        }
    }
}

/// How this agent pulls images and keeps Docker's disk in check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImagesSettings {
    /// Pre-pulls running at once. Pulls for launches never wait behind pre-pulls.
    #[serde(default = "default_pull_concurrency")]
    pub pull_concurrency: u32,
    /// Attempts per pull before it is reported failed.
    #[serde(default = "default_pull_attempts")]
    pub pull_attempts: u32,
    /// Garbage collection starts when Docker's data root is more used than this.
    #[serde(default = "default_gc_high")]
    pub gc_high_water_percent: f64,
    /// ... and removes images until usage is under this.
    #[serde(default = "default_gc_low")]
    pub gc_low_water_percent: f64,
    /// How often disk usage is checked.
    #[serde(default = "default_gc_interval")]
    pub gc_interval_secs: u64,
}

fn default_pull_concurrency() -> u32 {
    2
}
fn default_pull_attempts() -> u32 {
    4
}
fn default_gc_high() -> f64 {
    85.0
}
fn default_gc_low() -> f64 {
    80.0
}
fn default_gc_interval() -> u64 {
    60
}

impl Default for ImagesSettings {
    fn default() -> Self {
        ImagesSettings {
            pull_concurrency: default_pull_concurrency(),
            pull_attempts: default_pull_attempts(),
            gc_high_water_percent: default_gc_high(),
            gc_low_water_percent: default_gc_low(),
            gc_interval_secs: default_gc_interval(),
        }
    }
}

impl ImagesSettings {
    /// Rejects settings the agent cannot work with, saying which and why.
    pub fn validate(&self) -> Result<(), String> {
        let (low, high) = (self.gc_low_water_percent, self.gc_high_water_percent);
        // Written so that NaN fails too.
        if !(low.is_finite() && high.is_finite() && 0.0 <= low && low < high && high <= 100.0) {
            return Err(format!(
                "[images] needs 0 <= gc_low_water_percent < gc_high_water_percent <= 100, \
                 but gc_low_water_percent = {low} and gc_high_water_percent = {high}"
            ));
        }
        if self.gc_interval_secs == 0 {
            return Err("[images] gc_interval_secs must be at least 1".into());
        }
        Ok(())
    }
}

/// Everything an enrolled agent needs to connect.
#[derive(Clone)]
pub struct AgentState {
    pub config: AgentConfig,
    pub ca_der: Vec<u8>,
    pub cert_der: Vec<u8>,
    pub key_pem: String,
}

impl std::fmt::Debug for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Paths inside a state directory.
#[derive(Debug, Clone)]
pub struct StateDir(PathBuf);

impl StateDir {
    pub fn new(p: impl Into<PathBuf>) -> Self {
        StateDir(p.into())
    }
    pub fn root(&self) -> &Path {
        &self.0
    }
    pub fn config(&self) -> PathBuf {
        self.0.join("agent.toml")
    }
    pub fn ca(&self) -> PathBuf {
        self.0.join("ca.crt")
    }
    pub fn cert(&self) -> PathBuf {
        self.0.join("agent.crt")
    }
    pub fn key(&self) -> PathBuf {
        self.0.join("agent.key")
    }
    pub fn is_enrolled(&self) -> bool {
        self.config().exists()
    }
}

fn read(path: &Path) -> Result<String, StateError> {
    std::fs::read_to_string(path).map_err(|source| StateError::Io {
        context: format!("reading {}", path.display()),
        source,
    })
}

fn bad(path: &Path, detail: impl ToString) -> StateError {
    StateError::Bad {
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

impl AgentState {
    pub fn load(dir: &StateDir) -> Result<Self, StateError> {
        if !dir.is_enrolled() {
            return Err(StateError::NotEnrolled {
                dir: dir.root().display().to_string(),
            });
        }
        let config: AgentConfig =
            toml::from_str(&read(&dir.config())?).map_err(|e| bad(&dir.config(), e))?;
        for (k, v) in &config.labels {
            cairn_shared::validate::label("labels", k, v).map_err(|e| bad(&dir.config(), e))?;
        }
        config
            .images
            .validate()
            .map_err(|e| bad(&dir.config(), e))?;
        let ca_der = identity::parse_cert_pem(&read(&dir.ca())?)
            .map_err(|e| bad(&dir.ca(), e))?
            .to_vec();
        let (cert_der, key_pem) = load_key_pair(dir)?;
        Ok(AgentState {
            config,
            ca_der,
            cert_der,
            key_pem,
        })
    }

    /// Writes the whole state; the config goes last, so its presence means the rest is
    /// complete.
    pub fn save(&self, dir: &StateDir) -> Result<(), StateError> {
        fsutil::create_private_dir(dir.root()).map_err(|source| StateError::Io {
            context: format!("creating {}", dir.root().display()),
            source,
        })?;
        self.save_cert(dir)?;
        write(&dir.ca(), identity::cert_pem(&self.ca_der).as_bytes())?;
        let text = toml::to_string_pretty(&self.config).map_err(|e| bad(&dir.config(), e))?;
        write(&dir.config(), text.as_bytes())
    }

    /// Writes the key and certificate (after enrolment or renewal).
    ///
    /// Two files cannot be replaced in one atomic step, so both are first written whole
    /// as `*.next`, then renamed into place. If a crash falls between the renames,
    /// [`AgentState::load`] picks whichever key and certificate belong together.
    pub fn save_cert(&self, dir: &StateDir) -> Result<(), StateError> {
        let (key_next, cert_next) = (next(&dir.key()), next(&dir.cert()));
        write(&key_next, self.key_pem.as_bytes())?;
        write(&cert_next, identity::cert_pem(&self.cert_der).as_bytes())?;
        rename(&key_next, &dir.key())?;
        rename(&cert_next, &dir.cert())
    }

    /// Seconds until the certificate expires, and its whole lifetime.
    pub fn cert_remaining(&self, now_unix: i64) -> Option<(i64, i64)> {
        let info = identity::cert_info(&self.cert_der).ok()?;
        Some((
            info.not_after_unix - now_unix,
            info.not_after_unix - info.not_before_unix,
        ))
    }
}

fn next(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".next");
    PathBuf::from(s)
}

fn rename(from: &Path, to: &Path) -> Result<(), StateError> {
    std::fs::rename(from, to).map_err(|source| StateError::Io {
        context: format!("renaming {} to {}", from.display(), to.display()),
        source,
    })
}

/// Finds the newest certificate and key that belong together among the current files
/// and any `*.next` left by an interrupted renewal, and puts them in place.
fn load_key_pair(dir: &StateDir) -> Result<(Vec<u8>, String), StateError> {
    let mut certs = vec![];
    for p in [dir.cert(), next(&dir.cert())] {
        if let Ok(text) = std::fs::read_to_string(&p) {
            if let Ok(der) = identity::parse_cert_pem(&text) {
                certs.push((p, der.to_vec()));
            }
        }
    }
    let mut keys = vec![];
    for p in [dir.key(), next(&dir.key())] {
        if let Ok(text) = std::fs::read_to_string(&p) {
            keys.push((p, text));
        }
    }
    let mut best: Option<(i64, usize, usize)> = None;
    for (ci, (_, der)) in certs.iter().enumerate() {
        let Ok(info) = identity::cert_info(der) else {
            continue;
        };
        for (ki, (_, key)) in keys.iter().enumerate() {
            if identity::cert_matches_key(der, key)
                && best.is_none_or(|(na, _, _)| info.not_after_unix > na)
            {
                best = Some((info.not_after_unix, ci, ki));
            }
        }
    }
    let Some((_, ci, ki)) = best else {
        return Err(bad(&dir.cert(), "no certificate in the state directory matches a private key there; enrol again with `cairn-agent join --force`"));
    };
    let (cert_path, cert_der) = certs.swap_remove(ci);
    let (key_path, key_pem) = keys.swap_remove(ki);
    if key_path != dir.key() {
        rename(&key_path, &dir.key())?;
    }
    if cert_path != dir.cert() {
        rename(&cert_path, &dir.cert())?;
    }
    Ok((cert_der, key_pem))
}

fn write(path: &Path, data: &[u8]) -> Result<(), StateError> {
    fsutil::write_secret(path, data).map_err(|source| StateError::Io {
        context: format!("writing {}", path.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn enrolled(dir: &StateDir) -> (AgentState, identity::Ca) {
        let (ca, _) = identity::Ca::generate("t", Duration::from_secs(3600)).unwrap();
        let host = HostId::generate();
        let (key_pem, csr) = identity::new_key_and_csr("n").unwrap();
        let cert_der = ca.sign_host(&csr, &host, Duration::from_secs(600)).unwrap();
        let st = AgentState {
            config: AgentConfig {
                controller: "127.0.0.1:7443".into(),
                host_id: host,
                hostname: None,
                labels: [("gpu".to_string(), "true".to_string())].into(),
                oci_runtime: None,
                images: Default::default(),
                datasets: Default::default(),
                container_slots: None,
            },
            ca_der: ca.cert_der().to_vec(),
            cert_der,
            key_pem,
        };
        st.save(dir).unwrap();
        (st, ca)
    }

    #[test]
    fn saves_and_loads_privately() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("s"));
        let (st, _) = enrolled(&dir);
        let back = AgentState::load(&dir).unwrap();
        assert_eq!(back.config, st.config);
        assert_eq!(back.cert_der, st.cert_der);
        for p in [dir.config(), dir.ca(), dir.cert(), dir.key()] {
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600,
                "{}",
                p.display()
            );
        }
    }

    #[test]
    fn interrupted_renewal_recovers_a_matching_pair() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("s"));
        let (st, ca) = enrolled(&dir);
        let (key2, csr2) = identity::new_key_and_csr("n").unwrap();
        let cert2 = ca
            .sign_host(&csr2, &st.config.host_id, Duration::from_secs(1200))
            .unwrap();
        // Crash after the key was renamed but before the certificate was.
        write(&dir.key(), key2.as_bytes()).unwrap();
        write(&next(&dir.cert()), identity::cert_pem(&cert2).as_bytes()).unwrap();
        let back = AgentState::load(&dir).unwrap();
        assert_eq!(back.cert_der, cert2);
        assert_eq!(back.key_pem, key2);
        assert!(!next(&dir.cert()).exists());

        // Crash after both .next files were written but before any rename: the old
        // pair still matches, the new pair matches too and is newer.
        let (key3, csr3) = identity::new_key_and_csr("n").unwrap();
        let cert3 = ca
            .sign_host(&csr3, &st.config.host_id, Duration::from_secs(2400))
            .unwrap();
        write(&next(&dir.key()), key3.as_bytes()).unwrap();
        write(&next(&dir.cert()), identity::cert_pem(&cert3).as_bytes()).unwrap();
        let back = AgentState::load(&dir).unwrap();
        assert_eq!(back.cert_der, cert3);
        assert_eq!(AgentState::load(&dir).unwrap().key_pem, key3);
    }

    #[test]
    fn image_gc_thresholds_are_validated_on_load() {
        let ok = ImagesSettings::default();
        assert_eq!(ok.validate(), Ok(()));
        let with = |low: f64, high: f64| ImagesSettings {
            gc_low_water_percent: low,
            gc_high_water_percent: high,
            ..ImagesSettings::default()
        };
        assert_eq!(with(0.0, 1.0).validate(), Ok(()));
        assert_eq!(with(99.0, 100.0).validate(), Ok(()));
        for (low, high) in [
            (80.0, 80.0),
            (90.0, 85.0),
            (-1.0, 50.0),
            (50.0, 101.0),
            (f64::NAN, 85.0),
        ] {
            let err = with(low, high).validate().unwrap_err();
            assert!(
                err.contains("gc_low_water_percent < gc_high_water_percent"),
                "{err}"
            );
        }
        let zero = ImagesSettings {
            gc_interval_secs: 0,
            ..ImagesSettings::default()
        };
        assert!(zero.validate().unwrap_err().contains("gc_interval_secs"));

        // And the loader refuses such an agent.toml, naming the file.
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("s"));
        let (mut st, _) = enrolled(&dir);
        st.config.images = with(90.0, 85.0);
        st.save(&dir).unwrap();
        let err = AgentState::load(&dir).unwrap_err().to_string();
        assert!(
            err.contains("agent.toml") && err.contains("gc_high_water_percent = 85"),
            "{err}"
        );
    }

    #[test]
    fn missing_enrolment_says_what_to_do() {
        let tmp = tempfile::tempdir().unwrap();
        let err = AgentState::load(&StateDir::new(tmp.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("run `cairn-agent join` first"), "{err}");
    }
}
