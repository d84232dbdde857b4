//! The collector's loop: every interval, read the disk, the images and the
//! containers from a [`GcBackend`], plan, remove, and log every decision.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use cairn_shared::resources::DiskUsage;
use tokio_util::sync::CancellationToken;

use super::feed::GcHandle;
use super::plan::{plan, reference_matches, usage_percent, GcImage, KeepReason, Thresholds};
use super::usage::{now_ms, UsageLog};
use super::GcError;
use crate::state::{ImagesSettings, StateDir};

/// How long after start the first pass runs (or the interval, if shorter): long
/// enough not to compete with adopting containers and the first connection, short
/// enough that a host started with a full disk is relieved soon.
pub const FIRST_PASS_DELAY: Duration = Duration::from_secs(10);
/// Most plan-and-remove rounds in one pass. Freed bytes are only an estimate (see
/// [`plan`]), so after each round the disk is read again and, if usage is still not
/// under the low-water mark, the next candidates are planned; a few rounds are
/// enough, the next pass continues.
const MAX_ROUNDS: usize = 4;

/// One container as the collector sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcContainer {
    /// The id of the image it was created from.
    pub image_id: Option<String>,
    /// The reference it was created with; used only when the id is missing.
    pub image: Option<String>,
    /// Running (or paused, or restarting) now.
    pub running: bool,
}

/// What the collector needs from the engine; Docker in production
/// ([`DockerGc`]), a fake in tests.
pub trait GcBackend: Send + Sync + 'static {
    /// Space of the file system that holds the engine's data root.
    fn disk(&self) -> impl Future<Output = Result<DiskUsage, GcError>> + Send;
    /// Top-level images (not intermediate layers), `last_used_ms` left `None`.
    fn images(&self) -> impl Future<Output = Result<Vec<GcImage>, GcError>> + Send;
    /// Every container, running or not.
    fn containers(&self) -> impl Future<Output = Result<Vec<GcContainer>, GcError>> + Send;
    /// Removes the image without force: [`GcError::Conflict`] if a container uses
    /// it, [`GcError::Gone`] if it is not there.
    fn remove(&self, image: &GcImage) -> impl Future<Output = Result<(), GcError>> + Send;
}

/// What one pass did; for tests and callers that want more than the log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PassReport {
    /// Nothing was considered: the desired set is not known yet.
    pub waiting_for_desired: bool,
    /// Usage when the pass began (`None` when it stopped before reading the disk).
    pub usage_before: Option<f64>,
    /// Usage after the removals.
    pub usage_after: Option<f64>,
    /// Ids removed, in order.
    pub removed: Vec<String>,
    /// Sum of the removed images' sizes (an estimate of the bytes freed).
    pub freed_bytes: u64,
}

/// The periodic collector.
pub struct ImageGc<B> {
    backend: B,
    handle: GcHandle,
    usage: UsageLog,
    thresholds: Thresholds,
    interval: Duration,
    clock: fn() -> u64,
    /// The last pass's error, so a lasting failure is warned about once.
    last_error: Option<String>,
    /// The last pass could not get under the low-water mark; warned about once.
    stuck: bool,
    /// The "waiting for the desired set" line was logged.
    waiting_logged: bool,
}

impl<B> std::fmt::Debug for ImageGc<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageGc")
            .field("thresholds", &self.thresholds)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// A percentage for the log: `91.3%`, or `unknown` for NaN.
struct Percent(f64);

impl std::fmt::Display for Percent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_nan() {
            f.write_str("unknown")
        } else {
            write!(f, "{:.1}%", self.0)
        }
    }
}

/// A last-used time for the log: ms since the epoch, or `never`.
struct LastUsed(Option<u64>);

impl std::fmt::Display for LastUsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ms) => write!(f, "{ms}"),
            None => f.write_str("never"),
        }
    }
}

/// An image's names for the log, comma-separated, without spaces.
fn names(img: &GcImage) -> String {
    let list = if img.repo_tags.is_empty() {
        &img.repo_digests
    } else {
        &img.repo_tags
    };
    if list.is_empty() {
        "<none>".into()
    } else {
        list.join(",")
    }
}

impl<B: GcBackend> ImageGc<B> {
    /// A collector with the thresholds and interval of `settings` (validated when
    /// `agent.toml` is loaded) and the usage log of `state_dir`.
    pub fn new(
        backend: B,
        handle: GcHandle,
        state_dir: &StateDir,
        settings: &ImagesSettings,
    ) -> Self {
        ImageGc {
            backend,
            handle,
            usage: UsageLog::load(state_dir),
            thresholds: Thresholds::from_settings(settings),
            interval: Duration::from_secs(settings.gc_interval_secs.max(1)),
            clock: now_ms,
            last_error: None,
            stuck: false,
            waiting_logged: false,
        }
    }

    /// Passes every interval until `shutdown`; the first one shortly after start,
    /// and one as soon as the first desired set arrives if a pass was waiting for it.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(
            high_water = %Percent(self.thresholds.high_water_percent),
            low_water = %Percent(self.thresholds.low_water_percent),
            interval_secs = self.interval.as_secs(),
            usage_file = %self.usage.path().display(),
            "image gc: started"
        );
        let mut known = self.handle.first_set_told();
        let mut delay = FIRST_PASS_DELAY.min(self.interval);
        let mut waiting = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
                r = known.changed(), if waiting => {
                    if r.is_err() {
                        // Cannot happen while `self` holds the handle; fall back to the
                        // interval rather than spin.
                        waiting = false;
                        continue;
                    }
                }
            }
            delay = self.interval;
            match self.pass().await {
                Ok(report) => {
                    waiting = report.waiting_for_desired;
                    if self.last_error.take().is_some() {
                        tracing::info!("image gc: working again");
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    if self.last_error.as_deref() == Some(text.as_str()) {
                        tracing::debug!(error = %text, "image gc: pass failed again");
                    } else {
                        tracing::warn!(error = %text, "image gc: pass failed; trying again next interval");
                    }
                    self.last_error = Some(text);
                }
            }
        }
    }

    /// One pass: records which images are in use, then, if the desired set is
    /// known and the disk is above the high-water mark, removes images.
    pub async fn pass(&mut self) -> Result<PassReport, GcError> {
        let mut report = PassReport::default();
        let mut images = self.backend.images().await?;
        let mut containers = self.backend.containers().await?;
        self.track(&images, &containers);
        if let Err(e) = self.usage.save().await {
            // Only precision is lost; collection goes on with what is in memory.
            tracing::warn!(error = %e, "image gc: cannot save image usage");
        }
        let Some(mut desired) = self.handle.desired() else {
            if !self.waiting_logged {
                tracing::info!("image gc: waiting for the controller's desired images before removing anything");
                self.waiting_logged = true;
            }
            report.waiting_for_desired = true;
            return Ok(report);
        };

        let t = self.thresholds;
        let mut disk = self.backend.disk().await?;
        let before = usage_percent(disk);
        report.usage_before = Some(before);
        let mut thresholds = t;
        let mut exhausted = false;
        let mut in_use_count = 0;
        let mut desired_count = 0;
        // Images Docker refused to remove this pass; a container holds them, so they
        // count as in use in later rounds rather than being tried again.
        let mut refused: BTreeSet<String> = BTreeSet::new();
        let mut told: BTreeSet<(String, KeepReason)> = BTreeSet::new();
        let mut disk_known = true;
        for round in 0..MAX_ROUNDS {
            self.fill_last_used(&mut images);
            let mut in_use = in_use_references(&containers);
            in_use.extend(refused.iter().cloned());
            // Only images this agent brought are candidates; see `UsageFile::brought`.
            let ours: Vec<GcImage> = images
                .iter()
                .filter(|i| self.usage.brought(&i.id))
                .cloned()
                .collect();
            let p = plan(disk, &ours, &in_use, &desired, thresholds);
            if !p.triggered {
                if round == 0 {
                    tracing::debug!(usage = %Percent(p.usage_percent), high_water = %Percent(t.high_water_percent), "image gc: below the high-water mark");
                }
                break;
            }
            if round == 0 {
                tracing::info!(usage = %Percent(p.usage_percent), high_water = %Percent(t.high_water_percent), low_water = %Percent(t.low_water_percent), candidates = p.remove.len(), "image gc: above the high-water mark");
            }
            for (img, reason) in &p.kept {
                // Later rounds plan over the same images: say each decision once.
                if told.insert((img.id.clone(), *reason)) {
                    tracing::debug!(image = %img.id, tags = %names(img), reason = %reason, "image gc: keeping");
                }
            }
            in_use_count = p
                .kept
                .iter()
                .filter(|(_, r)| *r == KeepReason::InUse)
                .count();
            desired_count = p.kept.len() - in_use_count;
            exhausted = p.exhausted;
            let mut removed_this_round = 0;
            for img in &p.remove {
                // The desired set may have grown since it was read (a launch came
                // in): check once more right before removing.
                if self.handle.is_desired(img) {
                    tracing::debug!(image = %img.id, tags = %names(img), reason = %KeepReason::Desired, "image gc: keeping");
                    exhausted = false;
                    continue;
                }
                tracing::info!(
                    image = %img.id,
                    tags = %names(img),
                    size = img.size_bytes,
                    last_used = %LastUsed(img.last_used_ms),
                    "image gc: removing"
                );
                match self.backend.remove(img).await {
                    Ok(()) => {
                        removed_this_round += 1;
                        report.removed.push(img.id.clone());
                        report.freed_bytes = report.freed_bytes.saturating_add(img.size_bytes);
                    }
                    Err(GcError::Gone) => {
                        tracing::info!(image = %img.id, reason = %"gone", "image gc: not removed");
                    }
                    Err(GcError::Conflict(msg)) => {
                        // Became used between listing and removal: exactly what the
                        // rule protects, not a failure.
                        tracing::info!(image = %img.id, reason = %"conflict", error = %msg, "image gc: not removed");
                        refused.insert(img.id.clone());
                        exhausted = false;
                    }
                    Err(e) => {
                        tracing::warn!(image = %img.id, reason = %"error", error = %e, "image gc: not removed");
                        exhausted = false;
                    }
                }
            }
            // From here on a failure ends the run but not the pass: what was removed
            // still gets its summary.
            match self.backend.disk().await {
                Ok(d) => disk = d,
                Err(e) => {
                    tracing::warn!(error = %e, "image gc: cannot read the disk after removing images");
                    disk_known = false;
                    break;
                }
            }
            if removed_this_round == 0 || usage_percent(disk) < t.low_water_percent || exhausted {
                break;
            }
            // A run in progress continues down to the low-water mark.
            thresholds.high_water_percent = t.low_water_percent;
            match (self.backend.images().await, self.backend.containers().await) {
                (Ok(i), Ok(c)) => (images, containers) = (i, c),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "image gc: cannot list again; the next pass continues");
                    break;
                }
            }
            if let Some(d) = self.handle.desired() {
                desired = d;
            }
        }
        // NaN when unknown: printed as `unknown`, and compares false to every mark.
        let after = if disk_known {
            usage_percent(disk)
        } else {
            f64::NAN
        };
        report.usage_after = disk_known.then_some(after);
        let ids: BTreeSet<&str> = report.removed.iter().map(String::as_str).collect();
        self.usage.retain(|id| !ids.contains(id));
        if !report.removed.is_empty() {
            tracing::info!(
                removed = report.removed.len(),
                freed = report.freed_bytes,
                usage_before = %Percent(before),
                usage_after = %Percent(after),
                "image gc: done"
            );
            if let Err(e) = self.usage.save().await {
                tracing::warn!(error = %e, "image gc: cannot save image usage");
            }
        }
        let still_high = report
            .usage_before
            .is_some_and(|b| b > t.high_water_percent)
            && after >= t.low_water_percent;
        if still_high && !self.stuck {
            tracing::warn!(
                usage = %Percent(after),
                low_water = %Percent(t.low_water_percent),
                in_use = in_use_count,
                desired = desired_count,
                no_more_candidates = exhausted,
                "image gc: still not under the low-water mark; the rest is held by images in use or desired, or by other data"
            );
        }
        self.stuck = still_high;
        Ok(report)
    }

    /// Marks the images of running containers used now, applies notes of created
    /// containers, and forgets images that are gone.
    fn track(&mut self, images: &[GcImage], containers: &[GcContainer]) {
        let now = (self.clock)();
        let resolve = |reference: &str| -> Vec<&str> {
            images
                .iter()
                .filter(|i| reference_matches(i, reference))
                .map(|i| i.id.as_str())
                .collect()
        };
        for c in containers.iter().filter(|c| c.running) {
            match (&c.image_id, &c.image) {
                (Some(id), _) => self.usage.touch(id, now),
                (None, Some(r)) => {
                    for id in resolve(r) {
                        self.usage.touch(id, now);
                    }
                }
                (None, None) => {}
            }
        }
        for (reference, at) in self.handle.take_notes() {
            for id in resolve(&reference) {
                self.usage.touch(id, at);
            }
        }
        for reference in self.handle.take_brought() {
            for id in resolve(&reference) {
                self.usage.mark_brought(id);
            }
        }
        let live: BTreeSet<&str> = images.iter().map(|i| i.id.as_str()).collect();
        self.usage.retain(|id| live.contains(id));
    }

    fn fill_last_used(&self, images: &mut [GcImage]) {
        for img in images {
            img.last_used_ms = self.usage.last_used(&img.id);
        }
    }
}

/// The references that pin images: each container's image id, or the reference it
/// was created with when the engine did not say the id.
fn in_use_references(containers: &[GcContainer]) -> BTreeSet<String> {
    containers
        .iter()
        .filter_map(|c| c.image_id.clone().or_else(|| c.image.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::gc::testing::*;
    use crate::images::gc::{SOURCE_INSTANCES, SOURCE_PREPULL};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct FakeState {
        total: u64,
        used: u64,
        images: Vec<GcImage>,
        containers: Vec<GcContainer>,
        removed: Vec<String>,
        /// Ids whose removal Docker refuses.
        conflicts: BTreeSet<String>,
        /// Bytes actually freed per removal, as a fraction of the size (shared layers).
        freed_fraction: f64,
        passes: usize,
    }

    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<FakeState>>);

    impl Fake {
        fn st(&self) -> std::sync::MutexGuard<'_, FakeState> {
            self.0.lock().unwrap()
        }
    }

    impl GcBackend for Fake {
        async fn disk(&self) -> Result<DiskUsage, GcError> {
            let s = self.st();
            Ok(DiskUsage {
                total_bytes: s.total,
                free_bytes: s.total - s.used,
            })
        }
        async fn images(&self) -> Result<Vec<GcImage>, GcError> {
            let mut s = self.st();
            s.passes += 1;
            Ok(s.images.clone())
        }
        async fn containers(&self) -> Result<Vec<GcContainer>, GcError> {
            Ok(self.st().containers.clone())
        }
        async fn remove(&self, image: &GcImage) -> Result<(), GcError> {
            let mut s = self.st();
            if s.conflicts.contains(&image.id) {
                return Err(GcError::Conflict("image is being used".into()));
            }
            let Some(pos) = s.images.iter().position(|i| i.id == image.id) else {
                return Err(GcError::Gone);
            };
            let gone = s.images.remove(pos);
            let freed = (gone.size_bytes as f64 * s.freed_fraction) as u64;
            s.used -= freed;
            s.removed.push(gone.id);
            Ok(())
        }
    }

    fn settings(high: f64, low: f64, interval: u64) -> ImagesSettings {
        ImagesSettings {
            gc_high_water_percent: high,
            gc_low_water_percent: low,
            gc_interval_secs: interval,
            ..Default::default()
        }
    }

    fn running(id: &str) -> GcContainer {
        GcContainer {
            image_id: Some(full_id(id)),
            image: None,
            running: true,
        }
    }

    fn stopped(id: &str) -> GcContainer {
        GcContainer {
            running: false,
            ..running(id)
        }
    }

    fn fake(used_gb: u64, images: Vec<GcImage>, containers: Vec<GcContainer>) -> Fake {
        Fake(Arc::new(Mutex::new(FakeState {
            total: 100 * GB,
            used: used_gb * GB,
            images,
            containers,
            freed_fraction: 1.0,
            ..Default::default()
        })))
    }

    #[tokio::test]
    async fn a_pass_removes_unused_undesired_images_oldest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let f = fake(
            95,
            vec![
                img("new", &["new:1"], 1, 30, None),
                img("old", &["old:1"], 1, 10, None),
                img("run", &["run:1"], 1, 1, None),
                img("stop", &["stop:1"], 1, 1, None),
                img("want", &["want:1"], 1, 1, None),
                img("mid", &["mid:1"], 1, 20, None),
                // The oldest of all, but the operator's: never removed.
                img("local", &["local:1"], 1, 0, None),
            ],
            vec![running("run"), stopped("stop")],
        );
        let h = GcHandle::new();
        for t in ["new:1", "old:1", "run:1", "stop:1", "want:1", "mid:1"] {
            h.note_brought(t);
        }
        let mut gc = ImageGc::new(
            f.clone(),
            h.clone(),
            &StateDir::new(tmp.path()),
            &settings(1.0, 0.0, 60),
        );

        // Nothing goes before the desired set is known.
        let r = gc.pass().await.unwrap();
        assert!(r.waiting_for_desired && r.removed.is_empty());
        assert!(f.st().removed.is_empty());

        h.set_desired(SOURCE_PREPULL, ["want:1"]);
        let r = gc.pass().await.unwrap();
        assert_eq!(r.removed, ["old", "mid", "new"].map(full_id).to_vec());
        assert_eq!(f.st().removed, r.removed);
        assert_eq!(r.freed_bytes, 3 * GB);
        assert_eq!(r.usage_before, Some(95.0));
        assert_eq!(r.usage_after, Some(92.0));
        // The running container's image was recorded as used; removed ones are not kept.
        let log = UsageLog::load(&StateDir::new(tmp.path()));
        assert!(log.last_used(&full_id("run")).is_some());
        assert_eq!(log.len(), 1);
    }

    #[tokio::test]
    async fn recently_used_images_go_last_and_notes_count_as_use() {
        let tmp = tempfile::tempdir().unwrap();
        let f = fake(
            90,
            vec![
                img("a", &["a:1"], 4, 1, None),
                img("b", &["b:1"], 4, 2, None),
                img("c", &["c:1"], 4, 3, None),
            ],
            vec![],
        );
        let h = GcHandle::new();
        for t in ["a:1", "b:1", "c:1"] {
            h.note_brought(t);
        }
        h.set_desired(SOURCE_INSTANCES, Vec::<String>::new());
        let mut gc = ImageGc::new(
            f.clone(),
            h.clone(),
            &StateDir::new(tmp.path()),
            &settings(85.0, 80.0, 60),
        );
        gc.clock = || 1_000;
        // A container was created from `a` and removed again between passes.
        h.note_used_at("a:1", 500);
        let r = gc.pass().await.unwrap();
        // 90 → 86 (b) → 82 (c) → 78 (a): a was used, so it goes last.
        assert_eq!(r.removed, ["b", "c", "a"].map(full_id).to_vec());
    }

    #[tokio::test]
    async fn shared_layers_mean_more_rounds_and_conflicts_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let f = fake(
            90,
            vec![
                img("a", &["a:1"], 4, 1, None),
                img("b", &["b:1"], 4, 2, None),
                img("c", &["c:1"], 4, 3, None),
                img("d", &["d:1"], 4, 4, None),
                img("e", &["e:1"], 4, 5, None),
            ],
            vec![],
        );
        {
            let mut s = f.st();
            // Each removal frees half the image's size.
            s.freed_fraction = 0.5;
            s.conflicts.insert(full_id("a"));
        }
        let h = GcHandle::new();
        for t in ["a:1", "b:1", "c:1", "d:1", "e:1"] {
            h.note_brought(t);
        }
        h.set_desired(SOURCE_PREPULL, Vec::<String>::new());
        let mut gc = ImageGc::new(
            f.clone(),
            h,
            &StateDir::new(tmp.path()),
            &settings(85.0, 80.0, 60),
        );
        let r = gc.pass().await.unwrap();
        // Round 1 plans a, b, c (90-12=78), but a is refused and b, c free 2 each: 86.
        // Round 2 plans d, e (86-8=78), not a again; they free 4: 82. Round 3 finds
        // no candidate left.
        assert_eq!(r.removed, ["b", "c", "d", "e"].map(full_id).to_vec());
        assert_eq!(r.usage_after, Some(82.0));
        assert_eq!(f.st().images.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_runs_soon_after_start_then_every_interval() {
        let tmp = tempfile::tempdir().unwrap();
        let f = fake(
            50,
            vec![
                img("a", &["a:1"], 1, 1, None),
                img("b", &["b:1"], 1, 2, None),
            ],
            vec![],
        );
        let h = GcHandle::new();
        h.note_brought("a:1");
        h.note_brought("b:1");
        let gc = ImageGc::new(
            f.clone(),
            h.clone(),
            &StateDir::new(tmp.path()),
            &settings(85.0, 80.0, 60),
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(gc.run(stop.clone()));
        let passes = || f.st().passes;

        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(passes(), 0);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(passes(), 1, "first pass after {FIRST_PASS_DELAY:?}");

        // Waiting for the desired set: its arrival triggers a pass at once.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(passes(), 1);
        h.set_desired(SOURCE_PREPULL, ["a:1"]);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(passes(), 2);

        // Then every interval.
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(passes(), 3);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(passes(), 4);

        // The disk fills: the next pass removes what it may.
        f.st().used = 99 * GB;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(f.st().removed, vec![full_id("b")]);

        stop.cancel();
        task.await.unwrap();
    }
}
