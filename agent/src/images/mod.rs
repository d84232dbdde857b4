//! Images on this host: getting them before containers are created from them.
//!
//! * [`pull`] — the [`ImageManager`]: one pull per reference however many launches
//!   wait for it, pre-pulls of the desired set under a concurrency limit, retries
//!   with back-off, progress for heartbeats.
//! * [`progress`] — the pure accumulator turning Docker's pull events into layer and
//!   byte counts.
//! * [`chunked`] — archives uploaded to the controller, fetched as chunks: what the
//!   archives kept here share with them is not fetched again; verified against
//!   their BLAKE3 hash.
//! * [`fetch`] — the same archives fetched whole (from a controller that does not
//!   serve them as chunks), resumed after an interruption.
//! * [`docker`] — the Docker Engine implementation of [`ImageBackend`].
//! * [`gc`] — image garbage collection: when Docker's data root passes the
//!   high-water mark, removes images no container uses and nobody wants, least
//!   recently used first, down to the low-water mark.
//!
//! Docker is reached only through [`ImageBackend`], so unit tests use a fake and the
//! hollow runtime has every image instantly.

pub mod chunked;
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
use cairn_shared::reference::Reference;
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

/// The login for the registry `reference` pulls from, if there is one. Docker Hub's
/// names all match each other; a reference that does not parse has none.
pub fn credential_for<'a>(
    reference: &str,
    credentials: &'a [RegistryCredential],
) -> Option<&'a RegistryCredential> {
    let reference = Reference::parse(reference).ok()?;
    credentials
        .iter()
        .find(|c| reference.registry_matches(&c.registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_matched_by_registry() {
        let c = |r: &str, u: &str| RegistryCredential {
            registry: r.into(),
            username: u.into(),
            password: "p".into(),
        };
        let creds = vec![c("127.0.0.1:5000", "local"), c("index.docker.io", "hub")];
        let user = |r: &str| credential_for(r, &creds).map(|c| c.username.as_str());
        let digest = format!("sha256:{}", "0".repeat(64));
        assert_eq!(user(&format!("127.0.0.1:5000/x@{digest}")), Some("local"));
        assert_eq!(user(&format!("127.0.0.1:5001/x@{digest}")), None);
        assert_eq!(user(&format!("jupyter/base@{digest}")), Some("hub"));
        assert_eq!(user("docker.io/library/busybox:1"), Some("hub"));
        assert_eq!(user(&format!("example.org/x@{digest}")), None);
        assert_eq!(user("not a reference"), None);
    }
}
