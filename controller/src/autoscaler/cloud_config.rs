//! Settings of pools whose hosts a cloud creates: `[pools.openstack]` per pool (what
//! server to boot) and `[cloud_hosts]` (what every created host is told: where the
//! controller is, and the agent's package for bootstrap mode).
//!
//! Credentials are not here: they come from `clouds.yaml` (`./clouds.yaml`,
//! `~/.config/openstack/clouds.yaml` or `/etc/openstack/clouds.yaml`) or `OS_*`
//! variables, where every OpenStack tool looks for them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use super::user_data::Mode;

/// What an OpenStack pool's servers boot with (`[pools.openstack]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OpenStackPool {
    /// The `clouds.yaml` entry; without one, `OS_CLOUD` or the `OS_*` variables.
    #[serde(default)]
    pub cloud: Option<String>,
    /// Flavor name or id.
    pub flavor: String,
    /// Image name or id: a plain Debian cloud image (bootstrap) or one with the
    /// `cairn-agent` package (bake).
    pub image: String,
    /// `auto` (Nova picks or makes one), `none`, or a network's name or id.
    #[serde(default = "default_network")]
    pub network: String,
    #[serde(default)]
    pub key_name: Option<String>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// Server metadata (the pool's name is added as `cairn-pool`).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Servers are named `PREFIX{pool}-{random}`.
    #[serde(default = "default_prefix")]
    pub name_prefix: String,
    #[serde(default)]
    pub mode: Mode,
    /// A server whose agent has not joined this long after the create call is
    /// deleted and counted as a failure.
    #[serde(default = "default_join_deadline")]
    pub join_deadline_secs: u64,
}

fn default_network() -> String {
    "auto".into()
}
fn default_prefix() -> String {
    "cairn-".into()
}
fn default_join_deadline() -> u64 {
    600
}

impl OpenStackPool {
    pub fn validate(&self, pool: &str) -> Result<(), String> {
        let at = |what: &str| format!("pool {pool}: openstack.{what}");
        for (what, v) in [("flavor", &self.flavor), ("image", &self.image)] {
            if v.is_empty() || v.len() > 255 {
                return Err(format!("{} must be 1-255 bytes", at(what)));
            }
        }
        if self.network.is_empty() {
            return Err(format!("{} must be auto, none or a network", at("network")));
        }
        // Nova's server names become host names: keep them DNS labels.
        let label_ok = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !label_ok(&self.name_prefix) || self.name_prefix.len() > 30 {
            return Err(format!(
                "{} must be at most 30 lowercase letters, digits or dashes",
                at("name_prefix")
            ));
        }
        if !label_ok(pool) {
            return Err(format!(
                "pool {pool}: an OpenStack pool's name becomes part of host names: use lowercase letters, digits or dashes"
            ));
        }
        if !(30..=24 * 3600).contains(&self.join_deadline_secs) {
            return Err(format!(
                "{} must be between 60 and 86400",
                at("join_deadline_secs")
            ));
        }
        if self.metadata.len() > 100 {
            return Err(format!("{} has more than 100 keys", at("metadata")));
        }
        Ok(())
    }
}

/// What every host a cloud creates is told (`[cloud_hosts]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CloudHosts {
    /// The link address created hosts dial, `HOST:PORT` (the link listener's
    /// public name).
    pub controller_link: String,
    /// The controller's HTTPS URL as created hosts reach it, for bootstrap mode's
    /// package download (`{public_url}/packages/cairn-agent.deb`).
    #[serde(default)]
    pub public_url: Option<String>,
    /// The `cairn-agent` .deb served to bootstrapping hosts.
    #[serde(default = "default_package")]
    pub agent_package: PathBuf,
}

fn default_package() -> PathBuf {
    PathBuf::from("/usr/share/cairn/packages/cairn-agent.deb")
}

impl CloudHosts {
    pub fn validate(&self) -> Result<(), String> {
        if self
            .controller_link
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(format!(
                "cloud_hosts.controller_link {:?} must be HOST:PORT",
                self.controller_link
            ));
        }
        if let Some(u) = &self.public_url {
            let parsed = reqwest::Url::parse(u)
                .map_err(|e| format!("cloud_hosts.public_url {u:?} is not a URL: {e}"))?;
            if !matches!(parsed.scheme(), "https" | "http") {
                return Err("cloud_hosts.public_url must be an https URL".into());
            }
        }
        Ok(())
    }
}
