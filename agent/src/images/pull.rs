//! The image manager: makes images present, one pull per reference.
//!
//! [`ImageManager::ensure`] is how anything on the agent gets an image. It answers
//! at once when the engine already holds it; otherwise it starts a pull, or joins
//! the one under way for the same reference, so two launches of one image on a host
//! cost one pull. The answer is a [`PullHandle`]: any number of waiters can clone
//! it, watch its progress and wait for the outcome.
//!
//! Pulls come in two kinds. Pulls for launches start immediately: a user is waiting.
//! Pre-pulls (the desired set from the controller, [`ImageManager::set_desired`])
//! queue for one of `pull_concurrency` slots, so a host that is told to hold fifty
//! images does not saturate its link. A launch that needs an image whose pre-pull is
//! queued promotes it: it starts at once and stops counting against the slots.
//!
//! Every pull is tried `pull_attempts` times with exponential back-off (1 s
//! doubling, at most 30 s). [`ImageManager::progress`] lists pulls under way and
//! those that failed in the last ten minutes, for heartbeats. [`ImageManager::run`]
//! keeps the desired set present: every 30 s, and at once when it changes.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::CreateImageInfo;
use cairn_shared::backoff::Backoff;
use cairn_shared::images::{DesiredImages, ImageSource, ImageSpec, PullPhase, PullProgress};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::chunked::{ChunkedArchives, ChunkedError};
use super::fetch::{self, ArchiveFetcher, QuicFetcher};
use super::progress::LayerProgress;
use super::{credential_for, ImageBackend};
use crate::chunks::fetch::QuicChunkSource;
use crate::state::ImagesSettings;

/// First wait between attempts of a pull; it doubles up to [`RETRY_MAX`].
const RETRY_INITIAL: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long a failed pull stays in heartbeats.
const FAILED_SHOWN: Duration = Duration::from_secs(600);
/// How often the desired set is checked against the engine.
const RECHECK: Duration = Duration::from_secs(30);
/// How long a failed pre-pull rests before the desired set tries it again.
const PREPULL_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Why an image could not be made present. The text is shown to users.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PullError {
    #[error("image {reference} is not on this host (the blueprint says pull = never)")]
    NotOnHost { reference: String },
    #[error("cannot check whether image {reference} is on this host: {message}")]
    Unchecked { reference: String, message: String },
    #[error("cannot pull {reference}: {message} ({})", attempts_text(.attempts))]
    Failed {
        reference: String,
        /// The last attempt's error, in Docker's (or the link's) words.
        message: String,
        attempts: u32,
    },
    #[error("the pre-pull of {reference} was dropped: the image is no longer in the desired set")]
    Cancelled { reference: String },
    #[error("the pull of {reference} ended without a result")]
    Abandoned { reference: String },
}

fn attempts_text(n: &u32) -> String {
    if *n == 1 {
        "1 attempt".into()
    } else {
        format!("{n} attempts")
    }
}

/// Where a pull stands, as its waiters see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullState {
    /// Queued, pulling, loading or waiting to retry.
    Active(PullProgress),
    /// The engine holds the image.
    Ready,
    Failed(PullError),
}

/// A share in one pull: clone it freely; every clone sees the same outcome.
#[derive(Debug, Clone)]
pub struct PullHandle {
    reference: String,
    state: watch::Receiver<PullState>,
}

impl PullHandle {
    /// A handle whose outcome is already known.
    fn settled(reference: String, state: PullState) -> Self {
        let (_, rx) = watch::channel(state);
        PullHandle {
            reference,
            state: rx,
        }
    }

    pub fn reference(&self) -> &str {
        &self.reference
    }

    pub fn state(&self) -> PullState {
        self.state.borrow().clone()
    }

    /// Progress while the pull is under way; `None` once it is over.
    pub fn progress(&self) -> Option<PullProgress> {
        match &*self.state.borrow() {
            PullState::Active(p) => Some(p.clone()),
            _ => None,
        }
    }

    /// Whether the outcome is known (ready or failed).
    pub fn is_settled(&self) -> bool {
        !matches!(*self.state.borrow(), PullState::Active(_))
    }

    /// Waits for the outcome.
    pub async fn wait(&mut self) -> Result<(), PullError> {
        let abandoned = || PullError::Abandoned {
            reference: self.reference.clone(),
        };
        match self
            .state
            .wait_for(|s| !matches!(s, PullState::Active(_)))
            .await
            .map(|s| s.clone())
        {
            Ok(PullState::Ready) => Ok(()),
            Ok(PullState::Failed(e)) => Err(e),
            Ok(PullState::Active(_)) | Err(_) => Err(abandoned()),
        }
    }
}

/// One pull that is queued or running.
struct Entry {
    spec: ImageSpec,
    /// Only pre-pulls want it; false as soon as a launch does.
    prepull: bool,
    started: bool,
    state: watch::Sender<PullState>,
}

struct Failure {
    at: Instant,
    progress: PullProgress,
}

#[derive(Default)]
struct Inner {
    active: HashMap<String, Entry>,
    /// Pre-pulls waiting for a slot, oldest first.
    queue: VecDeque<String>,
    /// The last failure per reference, shown in heartbeats for a while.
    failed: HashMap<String, Failure>,
    desired: DesiredImages,
}

/// Makes images present on this host; see the module documentation.
pub struct ImageManager {
    backend: Arc<dyn ImageBackend>,
    fetcher: Arc<dyn ArchiveFetcher>,
    /// Archives as chunks (on the link); `None` in tests with a fake fetcher.
    chunked: Option<Arc<ChunkedArchives>>,
    connection: watch::Sender<Option<quinn::Connection>>,
    partial_dir: PathBuf,
    pull_concurrency: usize,
    pull_attempts: u32,
    inner: Mutex<Inner>,
    wake: Notify,
    /// Told each reference this manager pulled or loaded (the image collector may
    /// only remove images the agent brought).
    on_ready: std::sync::OnceLock<ReadyHook>,
    /// Told each reference a launch asks for, just before its container is created
    /// (the image collector's "last used").
    on_launch: std::sync::OnceLock<ReadyHook>,
}

/// See [`ImageManager::on_ready`].
type ReadyHook = Box<dyn Fn(&str) + Send + Sync>;

impl std::fmt::Debug for ImageManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageManager")
            .field("partial_dir", &self.partial_dir)
            .field("pull_concurrency", &self.pull_concurrency)
            .field("pull_attempts", &self.pull_attempts)
            .finish_non_exhaustive()
    }
}

impl ImageManager {
    /// Pulls through `backend` and fetches uploaded archives from the controller over
    /// the connection given to [`ImageManager::set_connection`], keeping partial
    /// archives in `partial_dir`.
    pub fn new(
        backend: Arc<dyn ImageBackend>,
        settings: &ImagesSettings,
        partial_dir: PathBuf,
    ) -> Arc<Self> {
        let (connection, rx) = watch::channel(None);
        let chunked = ChunkedArchives::new(
            partial_dir.with_file_name("archives"),
            Arc::new(QuicChunkSource::new(rx.clone())),
        );
        Self::build(
            backend,
            Arc::new(QuicFetcher::new(rx)),
            Some(Arc::new(chunked)),
            connection,
            settings,
            partial_dir,
        )
    }

    /// Like [`ImageManager::new`], with archives from `fetcher` instead of the link.
    pub fn with_fetcher(
        backend: Arc<dyn ImageBackend>,
        fetcher: Arc<dyn ArchiveFetcher>,
        settings: &ImagesSettings,
        partial_dir: PathBuf,
    ) -> Arc<Self> {
        let (connection, _) = watch::channel(None);
        Self::build(backend, fetcher, None, connection, settings, partial_dir)
    }

    fn build(
        backend: Arc<dyn ImageBackend>,
        fetcher: Arc<dyn ArchiveFetcher>,
        chunked: Option<Arc<ChunkedArchives>>,
        connection: watch::Sender<Option<quinn::Connection>>,
        settings: &ImagesSettings,
        partial_dir: PathBuf,
    ) -> Arc<Self> {
        Arc::new(ImageManager {
            backend,
            fetcher,
            chunked,
            connection,
            partial_dir,
            pull_concurrency: usize::try_from(settings.pull_concurrency.max(1)).unwrap_or(1),
            pull_attempts: settings.pull_attempts.max(1),
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
            on_ready: std::sync::OnceLock::new(),
            on_launch: std::sync::OnceLock::new(),
        })
    }

    /// Calls `f` with every reference this manager pulls or loads from now on. Set
    /// once; later calls are ignored.
    pub fn on_ready(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.on_ready.set(Box::new(f));
    }

    /// Calls `f` with the reference of every launch's image (each [`ensure`] that is
    /// not a pre-pull). Set once; later calls are ignored.
    ///
    /// [`ensure`]: ImageManager::ensure
    pub fn on_launch(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.on_launch.set(Box::new(f));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The link's current connection to the controller (`None` while it is down):
    /// archive fetches use it.
    pub fn set_connection(&self, connection: Option<quinn::Connection>) {
        self.connection.send_replace(connection);
    }

    /// The engine behind this manager.
    pub fn backend(&self) -> &Arc<dyn ImageBackend> {
        &self.backend
    }

    /// Replaces the desired set and the registry logins; pre-pulls follow at once.
    pub fn set_desired(&self, images: DesiredImages) {
        tracing::info!(
            images = images.prepull.len(),
            registries = images.credentials.len(),
            "desired images updated"
        );
        self.lock().desired = images;
        self.wake.notify_one();
    }

    /// The desired set last given to [`ImageManager::set_desired`].
    pub fn desired(&self) -> DesiredImages {
        self.lock().desired.clone()
    }

    /// Makes `spec` present: at once if the engine holds it, else by a pull shared with
    /// every other caller that wants the same reference. Launches (`prepull` false)
    /// never wait for a pre-pull slot.
    pub async fn ensure(self: &Arc<Self>, spec: ImageSpec, prepull: bool) -> PullHandle {
        let reference = spec.reference.clone();
        if !prepull {
            if let Some(f) = self.on_launch.get() {
                f(&reference);
            }
        }
        if let Some(h) = self.join(&mut self.lock(), &reference, prepull) {
            return h;
        }
        let checked = self.backend.present(&reference).await;
        match (&checked, &spec.source) {
            (Ok(true), _) => return PullHandle::settled(reference, PullState::Ready),
            (Ok(false), ImageSource::Host) => {
                let e = PullError::NotOnHost {
                    reference: reference.clone(),
                };
                tracing::warn!(image = %reference, "image missing and the blueprint forbids pulling it");
                let progress = PullProgress {
                    reference: reference.clone(),
                    phase: PullPhase::Failed {
                        error: e.to_string(),
                    },
                    attempt: 1,
                    layers_done: 0,
                    layers_total: 0,
                    bytes_done: 0,
                    bytes_total: 0,
                    prepull,
                };
                self.lock().failed.insert(
                    reference.clone(),
                    Failure {
                        at: Instant::now(),
                        progress,
                    },
                );
                return PullHandle::settled(reference, PullState::Failed(e));
            }
            (Err(e), ImageSource::Host) => {
                let e = PullError::Unchecked {
                    reference: reference.clone(),
                    message: e.to_string(),
                };
                return PullHandle::settled(reference, PullState::Failed(e));
            }
            // An engine that cannot answer now may answer the pull; its attempts and
            // their errors are reported like any other.
            (Err(e), _) => {
                tracing::debug!(image = %reference, error = %e, "cannot check for image; pulling")
            }
            (Ok(false), _) => {}
        }
        let mut inner = self.lock();
        // Someone else may have started it while the engine was asked.
        if let Some(h) = self.join(&mut inner, &reference, prepull) {
            return h;
        }
        let progress = PullProgress {
            reference: reference.clone(),
            phase: PullPhase::Queued,
            attempt: 1,
            layers_done: 0,
            layers_total: 0,
            bytes_done: 0,
            bytes_total: 0,
            prepull,
        };
        let (tx, rx) = watch::channel(PullState::Active(progress));
        inner.active.insert(
            reference.clone(),
            Entry {
                spec,
                prepull,
                started: false,
                state: tx,
            },
        );
        if prepull {
            tracing::debug!(image = %reference, "pre-pull queued");
            inner.queue.push_back(reference.clone());
            self.schedule(&mut inner);
        } else {
            self.start(&mut inner, &reference);
        }
        PullHandle {
            reference,
            state: rx,
        }
    }

    /// A share in the pull of `reference` if one is queued or running. A launch
    /// joining a pre-pull makes it a launch pull: started now if it was queued.
    fn join(
        self: &Arc<Self>,
        inner: &mut Inner,
        reference: &str,
        prepull: bool,
    ) -> Option<PullHandle> {
        let entry = inner.active.get_mut(reference)?;
        let handle = PullHandle {
            reference: reference.to_string(),
            state: entry.state.subscribe(),
        };
        if !prepull && entry.prepull {
            entry.prepull = false;
            entry.state.send_modify(|s| {
                if let PullState::Active(p) = s {
                    p.prepull = false;
                }
            });
            let queued = !entry.started;
            if queued {
                tracing::info!(image = %reference, "a launch needs a queued pre-pull; starting it now");
                inner.queue.retain(|r| r != reference);
                self.start(inner, reference);
            }
            // A running pre-pull that became a launch pull frees its slot.
            self.schedule(inner);
        }
        Some(handle)
    }

    /// Starts queued pre-pulls while slots are free.
    fn schedule(self: &Arc<Self>, inner: &mut Inner) {
        loop {
            let running = inner
                .active
                .values()
                .filter(|e| e.started && e.prepull)
                .count();
            if running >= self.pull_concurrency {
                return;
            }
            let Some(next) = inner.queue.pop_front() else {
                return;
            };
            self.start(inner, &next);
        }
    }

    fn start(self: &Arc<Self>, inner: &mut Inner, reference: &str) {
        let Some(entry) = inner.active.get_mut(reference) else {
            return;
        };
        if entry.started {
            return;
        }
        entry.started = true;
        let spec = entry.spec.clone();
        let tx = entry.state.clone();
        tracing::info!(image = %reference, prepull = entry.prepull, "image pull started");
        let me = self.clone();
        tokio::spawn(async move { me.drive(spec, tx).await });
    }

    /// Runs a pull to its end and tells its waiters.
    async fn drive(self: Arc<Self>, spec: ImageSpec, tx: watch::Sender<PullState>) {
        let _in_flight = crate::metrics::PullInFlight::start();
        let reference = spec.reference.clone();
        let result = self.attempts(&spec, &tx).await;
        let mut inner = self.lock();
        let prepull = inner
            .active
            .remove(&reference)
            .map(|e| e.prepull)
            .unwrap_or(false);
        match &result {
            Ok(()) => {
                inner.failed.remove(&reference);
                tracing::info!(image = %reference, "image ready");
                if let Some(f) = self.on_ready.get() {
                    f(&reference);
                }
            }
            Err(e) => {
                tracing::warn!(image = %reference, error = %e, "pull failed");
                let mut progress = match &*tx.borrow() {
                    PullState::Active(p) => p.clone(),
                    _ => PullProgress {
                        reference: reference.clone(),
                        phase: PullPhase::Queued,
                        attempt: self.pull_attempts,
                        layers_done: 0,
                        layers_total: 0,
                        bytes_done: 0,
                        bytes_total: 0,
                        prepull,
                    },
                };
                progress.phase = PullPhase::Failed {
                    error: e.to_string(),
                };
                progress.prepull = prepull;
                inner.failed.insert(
                    reference.clone(),
                    Failure {
                        at: Instant::now(),
                        progress,
                    },
                );
            }
        }
        self.schedule(&mut inner);
        drop(inner);
        tx.send_replace(match result {
            Ok(()) => PullState::Ready,
            Err(e) => PullState::Failed(e),
        });
    }

    async fn attempts(
        &self,
        spec: &ImageSpec,
        tx: &watch::Sender<PullState>,
    ) -> Result<(), PullError> {
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
        let mut last = String::new();
        for attempt in 1..=self.pull_attempts {
            update(tx, |p| {
                p.phase = PullPhase::Pulling;
                p.attempt = attempt;
                p.layers_done = 0;
                p.layers_total = 0;
                p.bytes_done = 0;
                p.bytes_total = 0;
            });
            match self.attempt(spec, tx).await {
                Ok(()) => return Ok(()),
                Err(message) => {
                    tracing::warn!(image = %spec.reference, attempt, attempts = self.pull_attempts, error = %message, "pull attempt failed");
                    // Bounded: it travels in heartbeats and instance reports.
                    last = crate::facts::clip(&message, MAX_ERROR);
                }
            }
            if attempt < self.pull_attempts {
                let delay = backoff.next_delay(&mut rand::rng());
                update(tx, |p| {
                    p.phase = PullPhase::Retrying {
                        error: last.clone(),
                        retry_in_ms: delay.as_millis() as u64,
                    }
                });
                tokio::time::sleep(delay).await;
            }
        }
        if let ImageSource::Controller { archive, .. } = &spec.source {
            // A whole, verified archive that Docker will not load is disk wasted; an
            // incomplete one stays, so the next try resumes it.
            let path = fetch::partial_path(&self.partial_dir, archive);
            if last.starts_with(LOAD_FAILED) {
                let _ = tokio::fs::remove_file(path).await;
                if let Some(c) = self.chunked.clone() {
                    let a = archive.clone();
                    let _ = tokio::task::spawn_blocking(move || c.discard(&a)).await;
                }
            }
        }
        Err(PullError::Failed {
            reference: spec.reference.clone(),
            message: last,
            attempts: self.pull_attempts,
        })
    }

    /// One attempt; the error is the message for users.
    async fn attempt(&self, spec: &ImageSpec, tx: &watch::Sender<PullState>) -> Result<(), String> {
        let reference = spec.reference.as_str();
        match &spec.source {
            ImageSource::Host => match self.backend.present(reference).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(PullError::NotOnHost {
                    reference: reference.to_string(),
                }
                .to_string()),
                Err(e) => Err(e.0),
            },
            ImageSource::Registry => {
                let credential = {
                    let inner = self.lock();
                    credential_for(reference, &inner.desired.credentials).cloned()
                };
                if let Some(c) = &credential {
                    tracing::debug!(image = %reference, registry = %c.registry, username = %c.username, "pulling with a registry login");
                }
                let layers = Mutex::new(LayerProgress::new());
                let events = |info: &CreateImageInfo| {
                    let mut l = layers.lock().unwrap_or_else(|p| p.into_inner());
                    l.observe(info);
                    let (ld, lt, bd, bt) = (
                        l.layers_done(),
                        l.layers_total(),
                        l.bytes_done(),
                        l.bytes_total(),
                    );
                    drop(l);
                    update(tx, |p| {
                        p.layers_done = ld;
                        p.layers_total = lt;
                        p.bytes_done = bd;
                        p.bytes_total = bt;
                    });
                };
                self.backend
                    .pull(reference, credential.as_ref(), &events)
                    .await
                    .map_err(|e| e.0)
            }
            ImageSource::Controller {
                archive,
                size_bytes,
            } => {
                let on_bytes = |done: u64, total: u64| {
                    update(tx, |p| {
                        p.bytes_done = done;
                        p.bytes_total = total;
                    })
                };
                // As chunks (what the kept archives hold is not fetched again), or
                // whole from a controller that does not serve it as chunks.
                let chunked = match &self.chunked {
                    Some(c) => match c.fetch(archive, &on_bytes).await {
                        Ok(path) => Some(path),
                        Err(ChunkedError::Unsupported(why)) => {
                            tracing::info!(%archive, %why, "fetching the image archive whole");
                            None
                        }
                        Err(ChunkedError::Failed(e)) => return Err(e),
                    },
                    None => None,
                };
                let path = match chunked {
                    Some(p) => p,
                    None => fetch::fetch_archive(
                        self.fetcher.as_ref(),
                        &self.partial_dir,
                        archive,
                        *size_bytes,
                        &on_bytes,
                    )
                    .await
                    .map_err(|e| e.to_string())?,
                };
                let kept = path.starts_with(self.partial_dir.with_file_name("archives"));
                update(tx, |p| p.phase = PullPhase::Loading);
                tracing::info!(image = %reference, %archive, "loading image archive");
                self.backend
                    .load(&path)
                    .await
                    .map_err(|e| format!("{LOAD_FAILED} {archive}: {e}"))?;
                match self.backend.present(reference).await {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err(format!(
                            "{LOAD_FAILED} {archive}: it does not hold image {reference}"
                        ))
                    }
                    Err(e) => return Err(e.0),
                }
                match (&self.chunked, kept) {
                    // The seed of the next version's fetch.
                    (Some(c), true) => {
                        // Removing older archives unlinks gigabytes: off the runtime.
                        let (c, a) = (c.clone(), archive.clone());
                        let _ = tokio::task::spawn_blocking(move || c.keep(&a)).await;
                    }
                    _ => {
                        if let Err(e) = tokio::fs::remove_file(&path).await {
                            tracing::warn!(path = %path.display(), error = %e, "cannot remove a loaded image archive");
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Pulls under way and pulls that failed in the last ten minutes, launch pulls
    /// first, at most [`cairn_shared::images::MAX_PULLS`].
    pub fn progress(&self) -> Vec<PullProgress> {
        let mut inner = self.lock();
        let now = Instant::now();
        inner
            .failed
            .retain(|_, f| now.duration_since(f.at) < FAILED_SHOWN);
        let mut out: Vec<PullProgress> = inner
            .active
            .values()
            .filter_map(|e| match &*e.state.borrow() {
                PullState::Active(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        out.extend(
            inner
                .failed
                .iter()
                .filter(|(r, _)| !inner.active.contains_key(*r))
                .map(|(_, f)| f.progress.clone()),
        );
        out.sort_by(|a, b| (a.prepull, &a.reference).cmp(&(b.prepull, &b.reference)));
        out.truncate(cairn_shared::images::MAX_PULLS);
        out
    }

    /// Keeps the desired set present until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            self.reconcile().await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(RECHECK) => {}
            }
        }
    }

    /// One pass over the desired set: pre-pulls what is missing, drops queued pre-pulls
    /// of images no longer wanted. Failed pre-pulls rest a few minutes first.
    pub async fn reconcile(self: &Arc<Self>) {
        let wanted = {
            let mut inner = self.lock();
            let wanted = inner.desired.prepull.clone();
            let keep: BTreeSet<&str> = wanted.iter().map(|s| s.reference.as_str()).collect();
            let dropped: Vec<String> = inner
                .queue
                .iter()
                .filter(|r| !keep.contains(r.as_str()))
                .cloned()
                .collect();
            for reference in dropped {
                inner.queue.retain(|r| *r != reference);
                if let Some(e) = inner.active.remove(&reference) {
                    tracing::info!(image = %reference, "dropping a queued pre-pull no longer desired");
                    e.state
                        .send_replace(PullState::Failed(PullError::Cancelled { reference }));
                }
            }
            wanted
        };
        for spec in wanted {
            // The operator puts these images on the host; there is nothing to pull.
            if spec.source == ImageSource::Host {
                continue;
            }
            {
                let inner = self.lock();
                if inner.active.contains_key(&spec.reference) {
                    continue;
                }
                if inner
                    .failed
                    .get(&spec.reference)
                    .is_some_and(|f| f.at.elapsed() < PREPULL_RETRY_AFTER)
                {
                    continue;
                }
            }
            self.ensure(spec, true).await;
        }
    }
}

/// Longest error message kept from one attempt.
const MAX_ERROR: usize = 2048;

/// How the error of a failed `docker load` begins.
const LOAD_FAILED: &str = "cannot load archive";

/// Changes the progress of an active pull (and nothing once it is over).
fn update(tx: &watch::Sender<PullState>, f: impl FnOnce(&mut PullProgress)) {
    tx.send_modify(|s| {
        if let PullState::Active(p) = s {
            f(p)
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::images::testing::{archive_of, FakeBackend, FakeFetcher};
    use cairn_shared::images::RegistryCredential;

    const REF: &str = "127.0.0.1:5000/x@sha256:0123";

    fn registry(reference: &str) -> ImageSpec {
        ImageSpec {
            reference: reference.into(),
            source: ImageSource::Registry,
        }
    }

    fn settings(concurrency: u32, attempts: u32) -> ImagesSettings {
        ImagesSettings {
            pull_concurrency: concurrency,
            pull_attempts: attempts,
            ..Default::default()
        }
    }

    fn manager(
        backend: &Arc<FakeBackend>,
        s: ImagesSettings,
        dir: &std::path::Path,
    ) -> Arc<ImageManager> {
        ImageManager::with_fetcher(
            backend.clone(),
            Arc::new(FakeFetcher::new(vec![])),
            &s,
            dir.to_path_buf(),
        )
    }

    /// Lets spawned pulls run until they block.
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn two_launches_of_one_image_share_one_pull() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = Arc::new(FakeBackend::gated());
        let m = manager(&backend, settings(2, 4), tmp.path());
        let (mut a, mut b) = tokio::join!(
            m.ensure(registry(REF), false),
            m.ensure(registry(REF), false)
        );
        settle().await;
        assert_eq!(backend.pulls_of(REF), 1);
        // Both see the one pull's progress: half the bytes of two layers.
        let p = a.progress().unwrap();
        assert_eq!(p, b.progress().unwrap());
        assert_eq!((p.bytes_done, p.bytes_total, p.layers_total), (100, 200, 2));
        assert_eq!(p.percent(), 50);
        assert_eq!(m.progress(), vec![p]);
        backend.release(1);
        assert_eq!(a.wait().await, Ok(()));
        assert_eq!(b.wait().await, Ok(()));
        assert_eq!(backend.pulls_of(REF), 1);
        assert!(m.progress().is_empty());
        // Present now: no pull at all.
        let c = m.ensure(registry(REF), false).await;
        assert_eq!(c.state(), PullState::Ready);
        assert_eq!(backend.pulls_of(REF), 1);
    }

    #[tokio::test]
    async fn hooks_hear_of_pulled_images_and_of_launches_only() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = Arc::new(FakeBackend::open());
        let m = manager(&backend, settings(2, 4), tmp.path());
        let ready = Arc::new(Mutex::new(vec![]));
        let launched = Arc::new(Mutex::new(vec![]));
        let (r, l) = (ready.clone(), launched.clone());
        m.on_ready(move |x| r.lock().unwrap().push(x.to_string()));
        m.on_launch(move |x| l.lock().unwrap().push(x.to_string()));
        let (p, q) = ("r.example/p@sha256:aa", "r.example/q@sha256:bb");
        m.ensure(registry(p), true).await.wait().await.unwrap();
        m.ensure(registry(q), false).await.wait().await.unwrap();
        // Present now: a second launch pulls nothing but is still a use.
        m.ensure(registry(q), false).await.wait().await.unwrap();
        assert_eq!(*ready.lock().unwrap(), [p, q]);
        assert_eq!(*launched.lock().unwrap(), [q, q]);
    }

    #[tokio::test]
    async fn launches_never_wait_behind_prepulls_and_promote_queued_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = Arc::new(FakeBackend::gated());
        let m = manager(&backend, settings(1, 1), tmp.path());
        let (a, b, c) = (
            "r.example/a@sha256:aa",
            "r.example/b@sha256:bb",
            "r.example/c@sha256:cc",
        );
        let _ha = m.ensure(registry(a), true).await;
        let hb = m.ensure(registry(b), true).await;
        settle().await;
        // One slot: b waits.
        assert_eq!(backend.pulls_of(a), 1);
        assert_eq!(backend.pulls_of(b), 0);
        assert_eq!(hb.progress().unwrap().phase, PullPhase::Queued);
        // A launch of another image starts at once, slot or no slot.
        let _hc = m.ensure(registry(c), false).await;
        settle().await;
        assert_eq!(backend.pulls_of(c), 1);
        // A launch of b joins its queued pre-pull and starts it.
        let hb2 = m.ensure(registry(b), false).await;
        settle().await;
        assert_eq!(backend.pulls_of(b), 1);
        let p = hb2.progress().unwrap();
        assert_eq!(p.phase, PullPhase::Pulling);
        assert!(!p.prepull);
        assert!(!hb.progress().unwrap().prepull);
        let listed = m.progress();
        assert_eq!(
            listed
                .iter()
                .map(|p| (p.reference.as_str(), p.prepull))
                .collect::<Vec<_>>(),
            vec![(b, false), (c, false), (a, true)]
        );
        backend.release(3);
        settle().await;
        assert!(backend.holds(a) && backend.holds(b) && backend.holds(c));
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_next_queued_prepull() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = Arc::new(FakeBackend::gated());
        let m = manager(&backend, settings(1, 1), tmp.path());
        let (a, b) = ("r.example/a@sha256:aa", "r.example/b@sha256:bb");
        let mut ha = m.ensure(registry(a), true).await;
        let mut hb = m.ensure(registry(b), true).await;
        settle().await;
        assert_eq!(backend.pulls_of(b), 0);
        backend.release(1);
        ha.wait().await.unwrap();
        settle().await;
        assert_eq!(backend.pulls_of(b), 1);
        backend.release(1);
        hb.wait().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn failing_pulls_are_retried_with_backoff_then_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = Arc::new(FakeBackend::open());
        backend
            .fail_pulls
            .store(100, std::sync::atomic::Ordering::SeqCst);
        let m = manager(&backend, settings(2, 4), tmp.path());
        let t0 = Instant::now();
        let mut h = m.ensure(registry(REF), false).await;
        let err = h.wait().await.unwrap_err();
        let waited = t0.elapsed();
        assert_eq!(
            err.to_string(),
            format!("cannot pull {REF}: manifest unknown (4 attempts)")
        );
        assert_eq!(backend.pulls_of(REF), 4);
        // Three waits of 1, 2 and 4 s, each jittered down to no less than half.
        assert!(
            waited >= Duration::from_millis(3500) && waited <= Duration::from_secs(7),
            "{waited:?}"
        );
        let listed = m.progress();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].attempt, 4);
        assert_eq!(
            listed[0].phase,
            PullPhase::Failed {
                error: err.to_string()
            }
        );
        tokio::time::advance(Duration::from_secs(601)).await;
        assert!(m.progress().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pull_that_fails_then_works_succeeds_and_shows_its_retry() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = Arc::new(FakeBackend::open());
        backend
            .fail_pulls
            .store(1, std::sync::atomic::Ordering::SeqCst);
        let m = manager(&backend, settings(2, 4), tmp.path());
        let mut h = m.ensure(registry(REF), false).await;
        settle().await;
        let p = h.progress().unwrap();
        assert!(
            matches!(&p.phase, PullPhase::Retrying { error, retry_in_ms } if error == "manifest unknown" && *retry_in_ms >= 500 && *retry_in_ms <= 1000),
            "{p:?}"
        );
        assert_eq!(h.wait().await, Ok(()));
        assert_eq!(backend.pulls_of(REF), 2);
        assert!(m.progress().is_empty());
    }

    #[tokio::test]
    async fn a_missing_host_image_fails_at_once_without_pulling() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = Arc::new(FakeBackend::open());
        let m = manager(&backend, settings(2, 4), tmp.path());
        let spec = ImageSpec {
            reference: "cairn/local:1".into(),
            source: ImageSource::Host,
        };
        let mut h = m.ensure(spec.clone(), false).await;
        assert!(h.is_settled());
        assert_eq!(
            h.wait().await.unwrap_err().to_string(),
            "image cairn/local:1 is not on this host (the blueprint says pull = never)"
        );
        assert!(backend.pulls.lock().unwrap().is_empty());
        // Present: fine.
        backend
            .present
            .lock()
            .unwrap()
            .insert("cairn/local:1".into());
        assert_eq!(m.ensure(spec, false).await.state(), PullState::Ready);
    }

    #[tokio::test]
    async fn an_uploaded_archive_is_fetched_verified_loaded_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 7) as u8).collect();
        let archive = archive_of(&data);
        let image = "sha256:feed".to_string();
        let backend = Arc::new(FakeBackend::gated());
        *backend.archive.lock().unwrap() = Some((data.clone(), image.clone()));
        let fetcher = Arc::new(FakeFetcher::new(data.clone()));
        // An earlier fetch got 20 000 bytes.
        let partial = fetch::partial_path(tmp.path(), &archive);
        std::fs::write(&partial, &data[..20_000]).unwrap();
        let m = ImageManager::with_fetcher(
            backend.clone(),
            fetcher.clone(),
            &settings(2, 4),
            tmp.path().to_path_buf(),
        );
        let spec = ImageSpec {
            reference: image.clone(),
            source: ImageSource::Controller {
                archive: archive.clone(),
                size_bytes: data.len() as u64,
            },
        };
        let mut h = m.ensure(spec, false).await;
        // The file work happens on blocking threads: wait for it.
        for _ in 0..500 {
            if backend.loads.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Fetched from where the partial file ended; loading waits at the gate.
        assert_eq!(*fetcher.offsets.lock().unwrap(), vec![20_000]);
        let p = h.progress().unwrap();
        assert_eq!(p.phase, PullPhase::Loading);
        assert_eq!((p.bytes_done, p.bytes_total), (50_000, 50_000));
        backend.release(1);
        assert_eq!(h.wait().await, Ok(()));
        assert!(backend.holds(&image));
        assert!(!partial.exists());
    }

    #[tokio::test]
    async fn an_archive_that_fails_verification_is_fetched_again() {
        let tmp = tempfile::tempdir().unwrap();
        let data = b"docker save output".to_vec();
        let archive = archive_of(&data);
        let backend = Arc::new(FakeBackend::open());
        *backend.archive.lock().unwrap() = Some((data.clone(), "sha256:ab".into()));
        let fetcher = Arc::new(FakeFetcher::new(data.clone()));
        std::fs::write(fetch::partial_path(tmp.path(), &archive), b"garbage").unwrap();
        let m = ImageManager::with_fetcher(
            backend.clone(),
            fetcher.clone(),
            &settings(2, 2),
            tmp.path().to_path_buf(),
        );
        let spec = ImageSpec {
            reference: "sha256:ab".into(),
            source: ImageSource::Controller {
                archive,
                size_bytes: data.len() as u64,
            },
        };
        tokio::time::pause();
        let mut h = m.ensure(spec, false).await;
        assert_eq!(h.wait().await, Ok(()));
        assert_eq!(*fetcher.offsets.lock().unwrap(), vec![7, 0]);
        assert_eq!(backend.loads.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_desired_set_is_prepulled_with_its_logins() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = Arc::new(FakeBackend::open());
        // Real digests: the login is found by parsing the reference.
        let have = format!("r.example/have@sha256:{}", "11".repeat(32));
        let want = format!("r.example/want@sha256:{}", "22".repeat(32));
        let (have, want) = (have.as_str(), want.as_str());
        backend.present.lock().unwrap().insert(have.into());
        let m = manager(&backend, settings(2, 4), tmp.path());
        m.set_desired(DesiredImages {
            prepull: vec![
                registry(have),
                registry(want),
                ImageSpec {
                    reference: "operator/only:1".into(),
                    source: ImageSource::Host,
                },
            ],
            credentials: vec![RegistryCredential {
                registry: "r.example".into(),
                username: "course".into(),
                password: "hunter2".into(),
            }],
        });
        m.reconcile().await;
        settle().await;
        assert_eq!(*backend.pulls.lock().unwrap(), vec![want.to_string()]);
        assert_eq!(
            *backend.logins.lock().unwrap(),
            vec![Some("course".to_string())]
        );
        assert!(backend.holds(want));
        // Nothing left to do.
        m.reconcile().await;
        settle().await;
        assert_eq!(backend.pulls.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn queued_prepulls_of_images_no_longer_desired_are_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = Arc::new(FakeBackend::gated());
        let m = manager(&backend, settings(1, 1), tmp.path());
        let (a, b) = ("r.example/a@sha256:aa", "r.example/b@sha256:bb");
        m.set_desired(DesiredImages {
            prepull: vec![registry(a), registry(b)],
            credentials: vec![],
        });
        m.reconcile().await;
        settle().await;
        assert_eq!(m.progress().len(), 2);
        m.set_desired(DesiredImages {
            prepull: vec![registry(a)],
            credentials: vec![],
        });
        m.reconcile().await;
        let listed = m.progress();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].reference, a);
        backend.release(1);
        settle().await;
        assert_eq!(backend.pulls_of(b), 0);
    }
}
