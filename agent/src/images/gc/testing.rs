//! Test helpers shared by the collector's parts: images, disks and sets.

use std::collections::BTreeSet;

use cairn_shared::resources::DiskUsage;

use super::plan::{GcImage, GcPlan, Thresholds};

pub const GB: u64 = 1_000_000_000;

pub fn img(id: &str, tags: &[&str], size_gb: u64, created: i64, last: Option<u64>) -> GcImage {
    GcImage {
        id: full_id(id),
        repo_tags: tags.iter().map(|s| s.to_string()).collect(),
        repo_digests: vec![],
        size_bytes: size_gb * GB,
        created_unix: created,
        last_used_ms: last,
    }
}

/// A real-looking id (64 hex digits) made from a readable name.
pub fn full_id(short: &str) -> String {
    format!("sha256:{:0<64}", hex::encode(short))
}

pub fn disk(used_gb: u64) -> DiskUsage {
    DiskUsage {
        total_bytes: 100 * GB,
        free_bytes: (100 - used_gb) * GB,
    }
}

pub const T: Thresholds = Thresholds {
    high_water_percent: 85.0,
    low_water_percent: 80.0,
};

pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub fn ids(p: &GcPlan<'_>) -> Vec<String> {
    p.remove.iter().map(|i| i.id.clone()).collect()
}
