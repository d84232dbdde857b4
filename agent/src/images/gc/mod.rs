//! Image garbage collection: keeps Docker's data root from filling up with images
//! nobody runs any more.
//!
//! When the file system holding Docker's data root is more used than the high-water
//! mark (`[images] gc_high_water_percent`, 85 by default), images that no container
//! uses and that this host is not asked to keep are removed, least recently used
//! first, until usage is under the low-water mark (`gc_low_water_percent`, 80).
//!
//! * [`plan`] — the pure planner: disk space, images, the references in use and the
//!   desired references → ordered removals.
//! * [`usage`] — [`UsageLog`]: when each image last had a running container. Docker
//!   does not record it, so the agent keeps it in `STATE_DIR/image-usage.toml`.
//! * [`feed`] — [`GcHandle`], how the rest of the agent feeds in the desired set
//!   ([`GcHandle::set_desired`]) and reports containers created from an image
//!   ([`GcHandle::note_used`]); [`DesiredImagesFeed`] feeds it from the controller's
//!   desired updates.
//! * [`executor`] — [`ImageGc`], the periodic loop, behind [`GcBackend`] so it is
//!   tested without Docker.
//! * [`docker`] — [`DockerGc`], the real backend.
//!
//! Every decision is logged, for operators and for the end-to-end test that reads
//! the agent's log:
//! ```text
//! INFO  image gc: removing image=sha256:… tags=REPO:TAG,… size=BYTES last_used=MS|never
//! DEBUG image gc: keeping image=sha256:… tags=… reason=in-use|desired
//! INFO  image gc: done removed=N freed=BYTES usage_before=X% usage_after=Y%
//! ```
//! `tags` lists an untagged image's repo digests instead, or `<none>`; `last_used`
//! is milliseconds since the Unix epoch. A `removing` line whose removal then fails
//! is followed by an `image gc: not removed` line.

pub mod docker;
pub mod executor;
pub mod feed;
pub mod plan;
#[cfg(test)]
mod testing;
pub mod usage;

pub use docker::DockerGc;
pub use executor::{GcBackend, GcContainer, ImageGc, PassReport, FIRST_PASS_DELAY};
pub use feed::{DesiredImagesFeed, GcHandle, SOURCE_INSTANCES, SOURCE_PREPULL};
pub use plan::{plan, reference_matches, usage_percent, GcImage, GcPlan, KeepReason, Thresholds};
pub use usage::{now_ms, UsageLog, USAGE_FILE};

/// Why a pass, or one removal, failed.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The engine did not answer, or answered with an error.
    #[error("Docker Engine: {0}")]
    Docker(String),
    /// Docker refused to remove the image: a container started using it since the
    /// listing, or another image is built on it.
    #[error("Docker refused: {0}")]
    Conflict(String),
    /// The image went away before it was removed (someone else removed it).
    #[error("the image no longer exists")]
    Gone,
    /// The space of the data root's file system is unknown.
    #[error("disk usage of Docker's data root: {0}")]
    Disk(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}
