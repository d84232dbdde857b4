//! Which dataset versions leave the cache to make room: a pure decision.
//!
//! The cache holds materialised versions (and their chunks) up to a size limit.
//! Before a version comes in, versions no container uses go, least recently used
//! first, until the cache plus the newcomer fits. Versions in use are never chosen:
//! a mounted tree vanishing under a running container would break it. When even
//! evicting every unused version is not enough, the plan says by how much it falls
//! short; the caller decides (a launch goes ahead over the limit, a pre-fetch waits).

use cairn_shared::chunks::ChunkId;

/// One cached version as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub manifest: ChunkId,
    /// Disk it holds: its tree plus its chunks.
    pub bytes: u64,
    /// When a launch last asked for it (ms since the epoch).
    pub last_used_ms: u64,
    /// A container mounts it, or a launch is about to.
    pub in_use: bool,
}

/// What to evict, and whether that makes room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evictions {
    /// Versions to remove, in order.
    pub evict: Vec<ChunkId>,
    /// Bytes over the limit even after evicting those (0: it fits).
    pub short_by: u64,
}

/// Plans room for `incoming` bytes under `limit`: the least recently used versions
/// no container uses, oldest first (ties broken by name so the plan is stable),
/// only as many as needed.
pub fn plan_evictions(entries: &[CacheEntry], limit: u64, incoming: u64) -> Evictions {
    let used: u64 = entries.iter().map(|e| e.bytes).sum();
    let mut need = used.saturating_add(incoming);
    let mut out = Evictions::default();
    if need <= limit {
        return out;
    }
    let mut candidates: Vec<&CacheEntry> = entries.iter().filter(|e| !e.in_use).collect();
    candidates.sort_by_key(|e| (e.last_used_ms, e.manifest));
    for e in candidates {
        if need <= limit {
            break;
        }
        out.evict.push(e.manifest);
        need = need.saturating_sub(e.bytes);
    }
    out.short_by = need.saturating_sub(limit);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    fn entry(n: u8, bytes: u64, last_used_ms: u64, in_use: bool) -> CacheEntry {
        CacheEntry {
            manifest: id(n),
            bytes,
            last_used_ms,
            in_use,
        }
    }

    #[test]
    fn nothing_goes_while_there_is_room() {
        let e = [entry(1, 40, 1, false), entry(2, 40, 2, false)];
        assert_eq!(plan_evictions(&e, 100, 20), Evictions::default());
        assert_eq!(plan_evictions(&[], 100, 100), Evictions::default());
    }

    #[test]
    fn the_least_recently_used_go_first_and_only_as_many_as_needed() {
        let e = [
            entry(1, 30, 300, false),
            entry(2, 30, 100, false),
            entry(3, 30, 200, false),
        ];
        // 90 + 30 = 120 over 100: one eviction of 30 makes it fit.
        let p = plan_evictions(&e, 100, 30);
        assert_eq!(p.evict, vec![id(2)]);
        assert_eq!(p.short_by, 0);
        // 90 + 60: two go, oldest first.
        assert_eq!(plan_evictions(&e, 100, 60).evict, vec![id(2), id(3)]);
    }

    #[test]
    fn versions_in_use_are_never_evicted() {
        let e = [
            entry(1, 50, 1, true),
            entry(2, 30, 5, false),
            entry(3, 20, 9, true),
        ];
        let p = plan_evictions(&e, 100, 50);
        assert_eq!(p.evict, vec![id(2)]);
        assert_eq!(p.short_by, 20);
        // Everything in use: nothing to do but say how far over.
        let all = [entry(1, 80, 1, true)];
        let p = plan_evictions(&all, 100, 50);
        assert!(p.evict.is_empty());
        assert_eq!(p.short_by, 30);
    }

    #[test]
    fn ties_break_by_name_so_plans_are_stable() {
        let e = [entry(9, 10, 5, false), entry(3, 10, 5, false)];
        assert_eq!(plan_evictions(&e, 10, 10).evict, vec![id(3), id(9)]);
    }

    #[test]
    fn an_incoming_version_larger_than_the_limit_clears_what_it_can() {
        let e = [entry(1, 10, 1, false), entry(2, 10, 2, true)];
        let p = plan_evictions(&e, 100, 500);
        assert_eq!(p.evict, vec![id(1)]);
        assert_eq!(p.short_by, 410);
        // No overflow at the extremes.
        let p = plan_evictions(&[entry(1, u64::MAX, 1, false)], 0, u64::MAX);
        assert_eq!(p.evict, vec![id(1)]);
    }
}
