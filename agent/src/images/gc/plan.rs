//! The pure planner: disk space, images, the references in use and the desired
//! references → the images to remove, in order, and why the others stay. Also
//! whether a reference names an image, the way Docker reads it.

use std::collections::BTreeSet;

use cairn_shared::reference::Reference;
use cairn_shared::resources::DiskUsage;

use crate::state::ImagesSettings;

/// The water marks, in percent of the data root's file system.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// A run starts when usage is above this.
    pub high_water_percent: f64,
    /// ... and removes images until usage is under this.
    pub low_water_percent: f64,
}

impl Thresholds {
    pub fn from_settings(s: &ImagesSettings) -> Self {
        Thresholds {
            high_water_percent: s.gc_high_water_percent,
            low_water_percent: s.gc_low_water_percent,
        }
    }
}

/// One image as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcImage {
    /// `sha256:…`, the content-addressable id.
    pub id: String,
    /// `REPO:TAG` names.
    pub repo_tags: Vec<String>,
    /// `REPO@sha256:…` manifest digests.
    pub repo_digests: Vec<String>,
    /// Docker's size of the image, including layers shared with other images.
    pub size_bytes: u64,
    /// When the image was built (Unix seconds); for `docker import`, when imported.
    pub created_unix: i64,
    /// When a container last ran from it (ms since the epoch); `None` if never seen.
    pub last_used_ms: Option<u64>,
}

/// Why an image is never removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeepReason {
    /// A container, running or stopped, was created from it.
    InUse,
    /// In the pre-pull set, or the image of an instance this host should run.
    Desired,
}

impl std::fmt::Display for KeepReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // One word each, so the log field stays easy to match.
        f.write_str(match self {
            KeepReason::InUse => "in-use",
            KeepReason::Desired => "desired",
        })
    }
}

/// What one planning round decided.
#[derive(Debug, Clone, PartialEq)]
pub struct GcPlan<'a> {
    /// Usage of the data root's file system now, in percent.
    pub usage_percent: f64,
    /// Usage is above the high-water mark. When false, nothing else is filled in.
    pub triggered: bool,
    /// Images to remove, in order.
    pub remove: Vec<&'a GcImage>,
    /// Images that must stay, and why.
    pub kept: Vec<(&'a GcImage, KeepReason)>,
    /// Sum of the sizes of `remove`: an upper bound of what is freed.
    pub freed_bytes: u64,
    /// Estimated usage after the removals, in percent.
    pub projected_percent: f64,
    /// Every candidate is in `remove` and projected usage is still not under the
    /// low-water mark: the rest is held by images in use or desired.
    pub exhausted: bool,
}

/// Usage in percent; 0 for a file system that reports no size (nothing to judge).
pub fn usage_percent(disk: DiskUsage) -> f64 {
    if disk.total_bytes == 0 {
        return 0.0;
    }
    let used = disk.total_bytes.saturating_sub(disk.free_bytes);
    used as f64 * 100.0 / disk.total_bytes as f64
}

/// Decides which images to remove. Pure: no I/O, no clock.
///
/// Nothing is removed unless usage is above `high_water_percent`. Then candidates —
/// images matched by no reference in `in_use` (the images of all containers, running
/// or stopped, Cairn's or not) nor in `desired` — are taken in removal order until
/// projected usage is under `low_water_percent`.
///
/// Removal order is least recently used first, with images *never* seen used before
/// all used ones, oldest `created` first, and the id as the last tie-break so the
/// order is deterministic. Why never-used first: an image no container has run from
/// since the agent began tracking shows no demand at all on this host (a pre-pull
/// dropped from the set, a leftover of an operator), while a recently used image is
/// the best guess at the next launch, which the scheduler sends here precisely
/// because the image is cached. Among never-used images creation time is the only
/// age there is.
///
/// Docker's image size includes layers shared with other images, so removing an
/// image may free less than its size: `freed_bytes` and `projected_percent` are
/// estimates (upper and lower bounds). The executor reads the disk again after the
/// removals and plans again if usage is still not under the low-water mark.
pub fn plan<'a>(
    disk: DiskUsage,
    images: &'a [GcImage],
    in_use: &BTreeSet<String>,
    desired: &BTreeSet<String>,
    t: Thresholds,
) -> GcPlan<'a> {
    let usage = usage_percent(disk);
    let mut out = GcPlan {
        usage_percent: usage,
        triggered: false,
        remove: vec![],
        kept: vec![],
        freed_bytes: 0,
        projected_percent: usage,
        exhausted: false,
    };
    if disk.total_bytes == 0 || usage <= t.high_water_percent {
        return out;
    }
    out.triggered = true;

    let mut candidates = vec![];
    for img in images {
        if in_use.iter().any(|r| reference_matches(img, r)) {
            out.kept.push((img, KeepReason::InUse));
        } else if desired.iter().any(|r| reference_matches(img, r)) {
            out.kept.push((img, KeepReason::Desired));
        } else {
            candidates.push(img);
        }
    }
    candidates.sort_by(|a, b| {
        (
            a.last_used_ms.is_some(),
            a.last_used_ms,
            a.created_unix,
            &a.id,
        )
            .cmp(&(
                b.last_used_ms.is_some(),
                b.last_used_ms,
                b.created_unix,
                &b.id,
            ))
    });

    let total = disk.total_bytes as f64;
    let target = total * t.low_water_percent / 100.0;
    let mut used = disk.total_bytes.saturating_sub(disk.free_bytes);
    for img in candidates {
        if (used as f64) < target {
            break;
        }
        used = used.saturating_sub(img.size_bytes);
        out.freed_bytes = out.freed_bytes.saturating_add(img.size_bytes);
        out.remove.push(img);
    }
    out.projected_percent = used as f64 * 100.0 / total;
    out.exhausted = (used as f64) >= target;
    out
}

/// Whether `reference` names `img`: by id (`sha256:…`, or a prefix of at least 12
/// hex digits as Docker accepts), by repo digest (`REPO@sha256:…`) or by tag
/// (`REPO[:TAG]`, `latest` when omitted). Docker Hub names are compared in their
/// short form, so `docker.io/library/busybox` is `busybox`.
///
/// A false match only keeps an image that could have gone, so where Docker's
/// grammar is ambiguous (a bare hex string may be a name or an id) both readings
/// count.
pub fn reference_matches(img: &GcImage, reference: &str) -> bool {
    let r = reference.trim();
    if r.is_empty() {
        return false;
    }
    if id_matches(&img.id, r) {
        return true;
    }
    let Ok(wanted) = Reference::parse(r) else {
        return false;
    };
    let same_name = |other: &Reference| other.name() == wanted.name();
    if let Some(digest) = wanted.digest() {
        // `REPO:TAG@sha256:…` is pinned by the digest; the tag is decoration.
        return img.repo_digests.iter().any(|d| {
            Reference::parse(d).is_ok_and(|have| have.digest() == Some(digest) && same_name(&have))
        });
    }
    img.repo_tags.iter().any(|t| {
        Reference::parse(t)
            .is_ok_and(|have| have.tag_or_latest() == wanted.tag_or_latest() && same_name(&have))
    })
}

fn id_matches(id: &str, r: &str) -> bool {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let bare_id = id.strip_prefix("sha256:").unwrap_or(id);
    let bare_ref = match r.strip_prefix("sha256:") {
        Some(rest) => rest,
        None if r.len() >= 12 => r,
        None => return false,
    };
    hex(bare_ref)
        && (bare_ref == bare_id || (bare_ref.len() >= 12 && bare_id.starts_with(bare_ref)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::gc::testing::*;

    #[test]
    fn below_the_high_water_mark_nothing_happens() {
        let images = vec![img("a1", &["a:1"], 10, 1, None)];
        for used in [0, 50, 85] {
            let p = plan(disk(used), &images, &set(&[]), &set(&[]), T);
            assert!(!p.triggered, "{used}");
            assert!(p.remove.is_empty() && p.kept.is_empty());
        }
        // A file system without a size is never judged full.
        let empty = DiskUsage {
            total_bytes: 0,
            free_bytes: 0,
        };
        assert!(!plan(empty, &images, &set(&[]), &set(&[]), T).triggered);
    }

    #[test]
    fn removes_least_recently_used_first_never_used_oldest_first() {
        let images = vec![
            img("u2", &["u:2"], 1, 10, Some(2_000)),
            img("n2", &["n:2"], 1, 20, None),
            img("u1", &["u:1"], 1, 30, Some(1_000)),
            img("n1", &["n:1"], 1, 5, None),
            // Same creation time: the id decides, so the order is stable.
            img("n3", &["n:3"], 1, 20, None),
        ];
        let p = plan(disk(99), &images, &set(&[]), &set(&[]), T);
        assert!(p.triggered);
        assert_eq!(
            ids(&p),
            ["n1", "n2", "n3", "u1", "u2"].map(full_id).to_vec()
        );
        assert!(p.exhausted);
        assert_eq!(p.freed_bytes, 5 * GB);
        assert!((p.projected_percent - 94.0).abs() < 1e-9);
    }

    #[test]
    fn stops_once_projected_usage_is_under_low_water() {
        let images = vec![
            img("a", &["a:1"], 4, 1, None),
            img("b", &["b:1"], 3, 2, None),
            img("c", &["c:1"], 3, 3, None),
            img("d", &["d:1"], 3, 4, None),
        ];
        // 90 used, target under 80: 90-4=86, -3=83, -3=80 (not under), -3=77.
        let p = plan(disk(90), &images, &set(&[]), &set(&[]), T);
        assert_eq!(ids(&p), ["a", "b", "c", "d"].map(full_id).to_vec());
        assert!(!p.exhausted);
        // 88 used: 84, 81, 78 → three removals, the fourth image stays.
        let p = plan(disk(88), &images, &set(&[]), &set(&[]), T);
        assert_eq!(ids(&p), ["a", "b", "c"].map(full_id).to_vec());
        assert!(!p.exhausted);
        assert!((p.projected_percent - 78.0).abs() < 1e-9);
    }

    #[test]
    fn in_use_and_desired_images_are_kept() {
        let mut by_digest = img("dg", &[], 1, 1, None);
        let feed = format!("127.0.0.1:5000/nb@sha256:{}", "fe".repeat(32));
        by_digest.repo_digests = vec![feed.clone()];
        let images = vec![
            img("used", &["x:1"], 1, 1, None),
            img("tag", &["jupyter/base:2024"], 1, 1, None),
            by_digest,
            img("byid", &[], 1, 1, None),
            img("hub", &["busybox:latest"], 1, 1, None),
            img("free", &["free:1"], 1, 1, None),
        ];
        let in_use = set(&[&full_id("used")]);
        let desired = set(&[
            "jupyter/base:2024",
            &feed,
            &full_id("byid"),
            "docker.io/library/busybox",
        ]);
        let p = plan(disk(99), &images, &in_use, &desired, T);
        assert_eq!(ids(&p), vec![full_id("free")]);
        assert!(p.exhausted);
        let kept: Vec<(String, KeepReason)> =
            p.kept.iter().map(|(i, r)| (i.id.clone(), *r)).collect();
        assert_eq!(
            kept,
            vec![
                (full_id("used"), KeepReason::InUse),
                (full_id("tag"), KeepReason::Desired),
                (full_id("dg"), KeepReason::Desired),
                (full_id("byid"), KeepReason::Desired),
                (full_id("hub"), KeepReason::Desired),
            ]
        );
    }

    #[test]
    fn in_use_wins_over_desired_in_the_reason() {
        let images = vec![img("a", &["a:1"], 1, 1, None)];
        let p = plan(disk(99), &images, &set(&["a:1"]), &set(&["a:1"]), T);
        assert_eq!(p.kept[0].1, KeepReason::InUse);
    }

    #[test]
    fn with_nothing_removable_the_plan_is_exhausted_and_empty() {
        let images = vec![img("a", &["a:1"], 1, 1, None)];
        let p = plan(disk(99), &images, &set(&[&full_id("a")]), &set(&[]), T);
        assert!(p.triggered && p.remove.is_empty() && p.exhausted);
        let p = plan(disk(99), &[], &set(&[]), &set(&[]), T);
        assert!(p.triggered && p.remove.is_empty() && p.exhausted);
    }

    #[test]
    fn low_water_zero_removes_every_candidate() {
        // What the end-to-end test does: thresholds so low that usage is always above.
        let t = Thresholds {
            high_water_percent: 1.0,
            low_water_percent: 0.0,
        };
        let images = vec![
            img("b", &["b:1"], 1, 2, None),
            img("a", &["a:1"], 1, 1, None),
            img("k", &["k:1"], 1, 0, None),
        ];
        let p = plan(disk(5), &images, &set(&[]), &set(&["k:1"]), t);
        assert_eq!(ids(&p), ["a", "b"].map(full_id).to_vec());
    }

    #[test]
    fn references_match_like_docker() {
        let mut i = img(
            "x",
            &["busybox:latest", "127.0.0.1:5000/x/y:v1"],
            1,
            1,
            None,
        );
        i.id = format!("sha256:{:0<64}", "abcdef0123456789");
        let d1 = format!("sha256:{}", "d1".repeat(32));
        let d2 = format!("sha256:{}", "d2".repeat(32));
        i.repo_digests = vec![format!("busybox@{d1}")];
        let m = |r: &str| reference_matches(&i, r);
        // Tags, with Docker Hub's long forms and the implied `latest`.
        assert!(m("busybox"));
        assert!(m("busybox:latest"));
        assert!(m("library/busybox"));
        assert!(m("docker.io/library/busybox:latest"));
        assert!(m("index.docker.io/library/busybox"));
        assert!(m("127.0.0.1:5000/x/y:v1"));
        assert!(!m("127.0.0.1:5000/x/y"));
        assert!(!m("busybox:1"));
        assert!(!m("other/busybox"));
        assert!(!m("127.0.0.1:5000/busybox"));
        // Digests, with or without a tag in front.
        assert!(m(&format!("busybox@{d1}")));
        assert!(m(&format!("docker.io/library/busybox:latest@{d1}")));
        assert!(!m(&format!("busybox@{d2}")));
        assert!(!m(&format!("other@{d1}")));
        // Ids: full, with or without the algorithm, and long-enough prefixes.
        assert!(m(&i.id.clone()));
        assert!(m(i.id.strip_prefix("sha256:").unwrap()));
        assert!(m("sha256:abcdef012345"));
        assert!(m("abcdef012345"));
        assert!(!m("abcdef01"));
        assert!(!m("sha256:abcdef01234x"));
        assert!(!m(""));
    }
}
