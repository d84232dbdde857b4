//! A pack: the body of `POST /api/v1/chunks`, chunks one after another as frames of
//! `[32-byte id][u32 big-endian length][bytes]`. Parsing and verification are pure
//! and happen whole before anything is stored, so a pack with one bad chunk stores
//! nothing and its answer names that chunk.

use std::ops::Range;

use cairn_shared::chunks::{ChunkId, MAX_CHUNK_LEN};

/// The frame header: id then length.
pub const HEADER: usize = 36;

/// Why a pack is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    #[error("the pack ends inside the header of frame {frame} (at byte {at})")]
    TruncatedHeader { frame: usize, at: usize },
    #[error("chunk {id} (frame {frame}) claims {len} bytes, over the limit of {MAX_CHUNK_LEN}")]
    TooLong { id: ChunkId, frame: usize, len: u32 },
    #[error("chunk {id} (frame {frame}) claims {len} bytes but the pack ends first")]
    Truncated { id: ChunkId, frame: usize, len: u32 },
    #[error("chunk {id} (frame {frame}) is empty; empty files have no chunks")]
    Empty { id: ChunkId, frame: usize },
    #[error("chunk {id} (frame {frame}): its bytes do not hash to its id (corrupted or forged); nothing of it was stored")]
    Mismatch { id: ChunkId, frame: usize },
    #[error("the pack holds no chunks")]
    NoChunks,
}

impl PackError {
    /// The chunk the error is about, if it got that far.
    pub fn id(&self) -> Option<ChunkId> {
        match self {
            PackError::TooLong { id, .. }
            | PackError::Truncated { id, .. }
            | PackError::Empty { id, .. }
            | PackError::Mismatch { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// The frames of `pack`: each chunk's id and where its bytes are, every one checked
/// against its id.
pub fn parse(pack: &[u8]) -> Result<Vec<(ChunkId, Range<usize>)>, PackError> {
    let mut out = vec![];
    let mut at = 0usize;
    while at < pack.len() {
        let frame = out.len();
        let Some(head) = pack.get(at..at + HEADER) else {
            return Err(PackError::TruncatedHeader { frame, at });
        };
        let mut idb = [0u8; 32];
        idb.copy_from_slice(&head[..32]);
        let id = ChunkId(idb);
        let len = u32::from_be_bytes([head[32], head[33], head[34], head[35]]);
        if len > MAX_CHUNK_LEN {
            return Err(PackError::TooLong { id, frame, len });
        }
        if len == 0 {
            return Err(PackError::Empty { id, frame });
        }
        let start = at + HEADER;
        let end = start + len as usize;
        let Some(bytes) = pack.get(start..end) else {
            return Err(PackError::Truncated { id, frame, len });
        };
        if !id.verifies(bytes) {
            return Err(PackError::Mismatch { id, frame });
        }
        out.push((id, start..end));
        at = end;
    }
    if out.is_empty() {
        return Err(PackError::NoChunks);
    }
    Ok(out)
}

pub use cairn_shared::chunks::push_frame;

#[cfg(test)]
mod tests {
    use super::*;

    fn pack_of(chunks: &[&[u8]]) -> Vec<u8> {
        let mut p = vec![];
        for c in chunks {
            push_frame(&mut p, ChunkId::of(c), c);
        }
        p
    }

    #[test]
    fn good_packs_parse() {
        let p = pack_of(&[b"hello", b"world!"]);
        let frames = parse(&p).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(&p[frames[1].1.clone()], b"world!");
        assert_eq!(frames[0].0, ChunkId::of(b"hello"));
    }

    #[test]
    fn a_forged_chunk_is_named() {
        let mut p = pack_of(&[b"hello"]);
        let forged = ChunkId::of(b"other");
        push_frame(&mut p, forged, b"not other");
        let e = parse(&p).unwrap_err();
        assert_eq!(
            e,
            PackError::Mismatch {
                id: forged,
                frame: 1
            }
        );
        assert!(e.to_string().contains(&forged.to_hex()));
    }

    #[test]
    fn truncation_length_and_emptiness_are_refused() {
        let p = pack_of(&[b"hello"]);
        assert!(matches!(
            parse(&p[..p.len() - 1]),
            Err(PackError::Truncated { .. })
        ));
        assert!(matches!(
            parse(&p[..10]),
            Err(PackError::TruncatedHeader { .. })
        ));
        assert_eq!(parse(&[]), Err(PackError::NoChunks));
        let mut long = vec![];
        long.extend_from_slice(&[7u8; 32]);
        long.extend_from_slice(&(MAX_CHUNK_LEN + 1).to_be_bytes());
        assert!(matches!(parse(&long), Err(PackError::TooLong { .. })));
        let mut empty = vec![];
        push_frame(&mut empty, ChunkId::of(b""), b"");
        assert!(matches!(parse(&empty), Err(PackError::Empty { .. })));
    }
}
