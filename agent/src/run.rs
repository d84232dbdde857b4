//! A running agent wired from its state directory: host facts, the container
//! supervisor on Docker, image pulls and archive fetches, image GC fed by the
//! controller's desired set, and the link. `cairn-agent run` and development mode
//! both start an agent through [`run`], so the two cannot be wired differently.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::datasets::DatasetCache;
use crate::facts::HostFactsSource;
use crate::images::gc::{DesiredImagesFeed, DockerGc, GcHandle, ImageGc};
use crate::images::ImageManager;
use crate::link::{self, LinkError, LinkOptions, WorkloadsHandle};
use crate::runtime::docker::DockerRuntime;
use crate::runtime::{ContainerRuntime, Supervisor};
use crate::state::{AgentState, StateDir};

/// Where partial archive fetches live, under the state directory, so a restart
/// resumes them.
pub fn partial_downloads(dir: &StateDir) -> std::path::PathBuf {
    dir.root().join("images").join("partial")
}

/// Runs the agent enrolled in `dir` (whose loaded state is `state`) until
/// `shutdown` is cancelled or the controller rejects it. Instances keep running when
/// the agent stops; the supervisor adopts them again when it starts.
pub async fn run(
    dir: StateDir,
    state: AgentState,
    shutdown: CancellationToken,
) -> Result<(), LinkError> {
    let facts =
        Arc::new(HostFactsSource::new(state.config.labels.clone(), dir.root().to_path_buf()).await);
    let runtime = DockerRuntime::new(&state.config.host_id)
        .with_oci_runtime(state.config.oci_runtime.clone());
    let images = ImageManager::new(
        runtime.image_backend(),
        &state.config.images,
        partial_downloads(&dir),
    );
    let supervisor = Supervisor::with_images(runtime, images.clone());
    supervisor.set_container_slots(
        state
            .config
            .container_slots
            .unwrap_or(crate::runtime::queue::DEFAULT_CONTAINER_SLOTS),
    );
    let datasets = DatasetCache::open(&dir.root().join("datasets"), &state.config.datasets)
        .map_err(|e| LinkError::Setup(format!("dataset cache: {e}")))?;
    let volumes =
        crate::volumes::VolumeKeeper::open(&dir.root().join("volumes"), datasets.connection())
            .map_err(|e| LinkError::Setup(format!("volumes: {e}")))?;
    supervisor.set_datasets(datasets);
    supervisor.set_volumes(volumes);
    tokio::spawn(supervisor.clone().run(shutdown.clone()));
    // Image GC runs only on the real Docker runtime (never for hollow agents). The
    // feed tells it, from the controller's desired updates, which images to keep.
    let gc = GcHandle::new();
    let brought = gc.clone();
    images.on_ready(move |reference| brought.note_brought(reference));
    let used = gc.clone();
    images.on_launch(move |reference| used.note_used(reference));
    let image_gc = ImageGc::new(DockerGc::new(), gc.clone(), &dir, &state.config.images);
    tokio::spawn(image_gc.run(shutdown.clone()));
    let opts = LinkOptions {
        state_dir: Some(dir),
        images: Some(images),
        workloads: Some(WorkloadsHandle(Arc::new(DesiredImagesFeed::new(
            supervisor, gc,
        )))),
        ..LinkOptions::default()
    };
    link::run(state, facts, None, opts, shutdown).await
}
