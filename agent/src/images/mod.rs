//! Images on this host: getting them before containers are created from them.
//!
//! * [`pull`] — the [`ImageManager`]: one pull per reference however many launches
//!   wait for it, pre-pulls of the desired set under a concurrency limit, retries
//!   with back-off, progress for heartbeats.
//! * [`progress`] — the pure accumulator turning Docker's pull events into layer and
//!   byte counts.
//! * [`fetch`] — archives uploaded to the controller: fetched over the link,
//!   resumed after an interruption, verified against their BLAKE3 hash.
//! * [`docker`] — the Docker Engine implementation of [`ImageBackend`].
//! * [`gc`] — image garbage collection: when Docker's data root passes the
//!   high-water mark, removes images no container uses and nobody wants, least
//!   recently used first, down to the low-water mark.
//!
//! Docker is reached only through [`ImageBackend`], so unit tests use a fake and the
//! hollow runtime has every image instantly.

pub mod docker;
pub mod fetch;
pub mod gc;
pub mod progress;
pub mod pull;
#[cfg(test)]
pub(crate) mod testing;

use std::path::Path;

use bollard::models::CreateImageInfo;
use cairn_shared::images::RegistryCredential;
use futures::future::BoxFuture;

pub use pull::{ImageManager, PullError, PullHandle, PullState};

/// A failed image operation, in the engine's own words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// Called with every event of a pull, in order.
pub type PullEvents<'a> = &'a (dyn Fn(&CreateImageInfo) + Send + Sync);

/// What the image manager needs from the container engine.
pub trait ImageBackend: Send + Sync + 'static {
    /// Whether the engine holds `reference` (`REPO@sha256:…`, `sha256:<id>` or a name).
    fn present<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<bool, BackendError>>;
    /// Pulls `reference` from its registry, telling `events` how it goes.
    fn pull<'a>(
        &'a self,
        reference: &'a str,
        credential: Option<&'a RegistryCredential>,
        events: PullEvents<'a>,
    ) -> BoxFuture<'a, Result<(), BackendError>>;
    /// Loads a `docker save` archive (`docker load`).
    fn load<'a>(&'a self, archive: &'a Path) -> BoxFuture<'a, Result<(), BackendError>>;
}

/// Docker Hub's names: references without a registry part pull from it, and a
/// login for any of these names is a login for it.
const DOCKER_HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// The registry a reference pulls from: its first path component when that looks
/// like a host (has a '.' or a ':', or is `localhost`), else Docker Hub — the rule
/// Docker itself applies.
pub fn registry_host(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => DOCKER_HUB[0],
    }
}

/// The login for the registry `reference` pulls from, if there is one.
pub fn credential_for<'a>(
    reference: &str,
    credentials: &'a [RegistryCredential],
) -> Option<&'a RegistryCredential> {
    let host = registry_host(reference);
    let hub = DOCKER_HUB.contains(&host);
    credentials
        .iter()
        .find(|c| c.registry == host || (hub && DOCKER_HUB.contains(&c.registry.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_is_the_first_component_when_it_looks_like_a_host() {
        assert_eq!(
            registry_host("127.0.0.1:5000/x@sha256:00"),
            "127.0.0.1:5000"
        );
        assert_eq!(
            registry_host("registry.example.org/a/b@sha256:00"),
            "registry.example.org"
        );
        assert_eq!(registry_host("localhost/x@sha256:00"), "localhost");
        assert_eq!(registry_host("jupyter/base@sha256:00"), "docker.io");
        assert_eq!(registry_host("busybox@sha256:00"), "docker.io");
        assert_eq!(registry_host("sha256:00"), "docker.io");
    }

    #[test]
    fn credentials_are_matched_by_registry() {
        let c = |r: &str, u: &str| RegistryCredential {
            registry: r.into(),
            username: u.into(),
            password: "p".into(),
        };
        let creds = vec![c("127.0.0.1:5000", "local"), c("index.docker.io", "hub")];
        let user = |r: &str| credential_for(r, &creds).map(|c| c.username.as_str());
        assert_eq!(user("127.0.0.1:5000/x@sha256:00"), Some("local"));
        assert_eq!(user("127.0.0.1:5001/x@sha256:00"), None);
        assert_eq!(user("jupyter/base@sha256:00"), Some("hub"));
        assert_eq!(user("example.org/x@sha256:00"), None);
    }
}
