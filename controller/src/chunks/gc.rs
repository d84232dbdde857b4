//! Mark-and-sweep of the chunk store.
//!
//! The live set is every manifest of every dataset version and of every image
//! archive, and every chunk those manifests list (the caller marks it, see
//! `crate::app::collect_chunks`);
//! everything else stored is swept once it is older than the grace period. The grace
//! period is what makes sweeping safe beside pushes: a push uploads its chunks first
//! and commits the manifest that references them last, so for a while its chunks are
//! unreferenced; they are young, and kept.

use std::collections::HashSet;

use cairn_shared::chunks::ChunkId;

use super::{ChunkStore, ChunkStoreError, StoredChunk};

/// What a sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub chunks: u64,
    pub bytes: u64,
}

/// The stored objects to delete: neither live nor younger than `grace_ms`. A chunk
/// written "in the future" (the clock stepped back) counts as young.
pub fn plan_sweep(
    stored: &[StoredChunk],
    live: &HashSet<ChunkId>,
    now_ms: u64,
    grace_ms: u64,
) -> Vec<ChunkId> {
    stored
        .iter()
        .filter(|c| !live.contains(&c.id))
        .filter(|c| now_ms.saturating_sub(c.written_ms) >= grace_ms)
        .map(|c| c.id)
        .collect()
}

/// Lists the store and deletes what [`plan_sweep`] picks. The caller must keep new
/// manifests from being committed while this runs (a commit checks its chunks are
/// present and records its version under the same lock), or a commit could record
/// a manifest whose old, unreferenced chunks are being swept.
pub async fn collect(
    store: &dyn ChunkStore,
    live: &HashSet<ChunkId>,
    now_ms: u64,
    grace_ms: u64,
) -> Result<Swept, ChunkStoreError> {
    let stored = store.list().await?;
    let doomed = plan_sweep(&stored, live, now_ms, grace_ms);
    let lens: std::collections::HashMap<ChunkId, u64> =
        stored.iter().map(|c| (c.id, c.len)).collect();
    let mut swept = Swept::default();
    for id in doomed {
        store.delete(id).await?;
        swept.chunks += 1;
        swept.bytes += lens.get(&id).copied().unwrap_or(0);
    }
    if swept.chunks > 0 {
        tracing::info!(
            chunks = swept.chunks,
            bytes = swept.bytes,
            stored = stored.len(),
            live = live.len(),
            "chunk store swept"
        );
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    fn chunk(n: u8, written_ms: u64) -> StoredChunk {
        StoredChunk {
            id: ChunkId::of(&[n]),
            written_ms,
            len: 10,
        }
    }

    #[test]
    fn live_are_kept_young_unreferenced_kept_old_unreferenced_swept() {
        let now = 100 * HOUR;
        let grace = 24 * HOUR;
        let old_live = chunk(1, 0);
        let old_dead = chunk(2, now - 25 * HOUR);
        let young_dead = chunk(3, now - HOUR); // a push in flight
        let future = chunk(4, now + HOUR); // the clock stepped back
        let just_at_grace = chunk(5, now - grace);
        let live: HashSet<ChunkId> = [old_live.id].into();
        let swept = plan_sweep(
            &[old_live, old_dead, young_dead, future, just_at_grace],
            &live,
            now,
            grace,
        );
        assert_eq!(swept, vec![old_dead.id, just_at_grace.id]);
    }

    #[test]
    fn nothing_stored_nothing_swept() {
        assert!(plan_sweep(&[], &HashSet::new(), 0, 0).is_empty());
    }
}
