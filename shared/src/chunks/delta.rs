//! A manifest sent as its difference from one the receiver already holds.
//!
//! A new version of a tree differs from the last in a few entries, yet its manifest
//! (a megabyte for 10,000 files) would travel whole with every push and every
//! fetch. Both sides cut the two encodings into small content-defined parts
//! ([`PARAMS`]); a part of the new encoding that the base also has is sent as a
//! reference to where the base holds it, the rest as bytes. Entries are sorted by
//! path, so changed files change only the parts around their entries.
//!
//! [`apply`] is bounded (the result's length, every reference inside the base) and
//! checks the result against the id it must have, so a wrong base or a damaged
//! delta is an error, never a wrong manifest.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::chunker::chunk_bytes;
use super::{ChunkId, Params};

/// Parts of about 1 KiB: some ten entries each, so a change to one file resends
/// about a kilobyte of manifest.
pub const PARAMS: Params = Params {
    min: 256,
    avg: 1024,
    max: 4096,
};

/// One piece of the target encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Piece {
    /// `len` bytes of the base from `offset`.
    Copy { offset: u64, len: u64 },
    /// Bytes the base does not have.
    Bytes(Vec<u8>),
}

/// The target manifest's encoding as pieces of the base's and new bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub base: ChunkId,
    pub target: ChunkId,
    pub pieces: Vec<Piece>,
}

/// Why a delta could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("the delta is not a valid encoding: {0}")]
    Encoding(String),
    #[error("the delta is against {expected}, not the base given ({got})")]
    WrongBase { expected: ChunkId, got: ChunkId },
    #[error("the delta copies bytes {offset}..{end} of a {len}-byte base")]
    OutOfRange { offset: u64, end: u64, len: u64 },
    #[error("the delta makes more than {max} bytes")]
    TooLong { max: usize },
    #[error("the delta's result is not {expected}")]
    Mismatch { expected: ChunkId },
}

/// The pieces that make `target` from `base` (whose id is `base_id`).
pub fn diff(base_id: ChunkId, base: &[u8], target: &[u8]) -> Delta {
    let mut at: HashMap<ChunkId, (u64, u64)> = HashMap::new();
    for (offset, id, part) in parts(base) {
        at.entry(id).or_insert((offset, part.len() as u64));
    }
    let mut pieces: Vec<Piece> = vec![];
    for (_, id, part) in parts(target) {
        match at.get(&id) {
            Some(&(offset, len)) => match pieces.last_mut() {
                // Runs of the base in order become one reference.
                Some(Piece::Copy { offset: o, len: l }) if *o + *l == offset => *l += len,
                _ => pieces.push(Piece::Copy { offset, len }),
            },
            None => match pieces.last_mut() {
                Some(Piece::Bytes(b)) => b.extend_from_slice(part),
                _ => pieces.push(Piece::Bytes(part.to_vec())),
            },
        }
    }
    Delta {
        base: base_id,
        target: ChunkId::of(target),
        pieces,
    }
}

/// Rebuilds the target from `base`, refusing anything longer than `max_len` bytes,
/// any reference outside the base, and a result that is not `delta.target`.
pub fn apply(delta: &Delta, base: &[u8], max_len: usize) -> Result<Vec<u8>, DeltaError> {
    let got = ChunkId::of(base);
    if got != delta.base {
        return Err(DeltaError::WrongBase {
            expected: delta.base,
            got,
        });
    }
    let mut out = Vec::new();
    for p in &delta.pieces {
        let add = match p {
            Piece::Copy { offset, len } => {
                let end = offset.checked_add(*len).unwrap_or(u64::MAX);
                if end > base.len() as u64 {
                    return Err(DeltaError::OutOfRange {
                        offset: *offset,
                        end,
                        len: base.len() as u64,
                    });
                }
                &base[*offset as usize..end as usize]
            }
            Piece::Bytes(b) => &b[..],
        };
        if out.len() + add.len() > max_len {
            return Err(DeltaError::TooLong { max: max_len });
        }
        out.extend_from_slice(add);
    }
    if ChunkId::of(&out) != delta.target {
        return Err(DeltaError::Mismatch {
            expected: delta.target,
        });
    }
    Ok(out)
}

impl Delta {
    /// The postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes at most `max_len` bytes of encoding.
    pub fn decode(bytes: &[u8], max_len: usize) -> Result<Delta, DeltaError> {
        if bytes.len() > max_len {
            return Err(DeltaError::TooLong { max: max_len });
        }
        postcard::from_bytes(bytes).map_err(|e| DeltaError::Encoding(e.to_string()))
    }
}

/// `(offset, id, part)` of `bytes` cut at [`PARAMS`].
fn parts(bytes: &[u8]) -> Vec<(u64, ChunkId, &[u8])> {
    let mut offset = 0usize;
    chunk_bytes(bytes, PARAMS)
        .into_iter()
        .map(|c| {
            let part = &bytes[offset..offset + c.len as usize];
            let at = offset as u64;
            offset += c.len as usize;
            (at, c.id, part)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks::manifest::{Entry, EntryKind, Manifest};
    use crate::chunks::{ChunkRef, DEFAULT_PARAMS};

    fn manifest(files: usize, changed: &[usize]) -> Vec<u8> {
        let entries = (0..files)
            .map(|i| {
                let tag = if changed.contains(&i) { "new" } else { "old" };
                let bytes = format!("{tag}-{i}");
                Entry {
                    path: format!("dir/file-{i:05}.txt"),
                    kind: EntryKind::File {
                        chunks: vec![ChunkRef {
                            id: ChunkId::of(bytes.as_bytes()),
                            len: bytes.len() as u32,
                        }],
                    },
                    mode: 0o644,
                    size: bytes.len() as u64,
                    mtime_ns: 1,
                }
            })
            .collect();
        let mut all = vec![Entry {
            path: "dir".into(),
            kind: EntryKind::Directory,
            mode: 0o755,
            size: 0,
            mtime_ns: 1,
        }];
        all.extend::<Vec<Entry>>(entries);
        Manifest::new(DEFAULT_PARAMS, all).encode()
    }

    #[test]
    fn a_few_changed_entries_travel_as_a_few_parts() {
        let base = manifest(5000, &[]);
        let target = manifest(5000, &[10, 2000, 4999]);
        let d = diff(ChunkId::of(&base), &base, &target);
        let sent = d.encode().len();
        assert!(sent < target.len() / 20, "{sent} of {}", target.len());
        let back = Delta::decode(&d.encode(), 1 << 20).unwrap();
        assert_eq!(apply(&back, &base, 1 << 22).unwrap(), target);
    }

    #[test]
    fn unrelated_bases_still_give_the_target() {
        let base = b"nothing alike".to_vec();
        let target = manifest(100, &[]);
        let d = diff(ChunkId::of(&base), &base, &target);
        assert_eq!(apply(&d, &base, 1 << 22).unwrap(), target);
    }

    #[test]
    fn bad_deltas_are_refused() {
        let base = manifest(500, &[]);
        let target = manifest(500, &[3]);
        let d = diff(ChunkId::of(&base), &base, &target);
        // Another base.
        let other = manifest(500, &[4]);
        assert!(matches!(
            apply(&d, &other, 1 << 22),
            Err(DeltaError::WrongBase { .. })
        ));
        // Too long a result.
        assert_eq!(apply(&d, &base, 100), Err(DeltaError::TooLong { max: 100 }));
        // A reference past the base's end.
        let mut past = d.clone();
        past.pieces = vec![Piece::Copy {
            offset: base.len() as u64 - 1,
            len: 2,
        }];
        assert!(matches!(
            apply(&past, &base, 1 << 22),
            Err(DeltaError::OutOfRange { .. })
        ));
        let mut wrap = d.clone();
        wrap.pieces = vec![Piece::Copy {
            offset: u64::MAX,
            len: 2,
        }];
        assert!(matches!(
            apply(&wrap, &base, 1 << 22),
            Err(DeltaError::OutOfRange { .. })
        ));
        // Pieces that make something else.
        let mut wrong = d;
        wrong.pieces.push(Piece::Bytes(b"x".to_vec()));
        assert!(matches!(
            apply(&wrong, &base, 1 << 22),
            Err(DeltaError::Mismatch { .. })
        ));
        assert!(matches!(
            Delta::decode(b"\xff\xff", 1 << 20),
            Err(DeltaError::Encoding(_))
        ));
        assert!(matches!(
            Delta::decode(&[0; 10], 5),
            Err(DeltaError::TooLong { max: 5 })
        ));
    }
}
