//! A changed chunk sent as its difference from the chunk it replaces, the way
//! rsync sends a changed file: the receiver (which holds the old chunk) computes
//! its block signature ([`signature`]), the sender matches the new chunk against
//! it ([`diff`]) and sends literal bytes only where nothing matched, and the
//! receiver rebuilds the chunk ([`apply`]). A 4 KiB insert in the middle of a
//! large file changes one content-defined chunk of ~64 KiB or two; this sends
//! about the 4 KiB and a signature of ~1.5 KiB per chunk instead.
//!
//! The deltas are librsync's (Dropbox's `fast_rsync`), whose block hashes are
//! MD4: a delta may rebuild the wrong bytes, so [`apply`] checks the result
//! against the new chunk's BLAKE3 name and refuses it otherwise (the sender then
//! sends the chunk whole). Both ends bound what they read: a signature or delta
//! from the peer is parsed with its limits, and a rebuilt chunk is at most
//! [`MAX_CHUNK_LEN`].

use std::ops::Range;

use super::{ChunkId, MAX_CHUNK_LEN};

/// Bytes per signature block: the grain of what a delta can reuse.
pub const BLOCK_SIZE: u32 = 512;
/// Bytes of each block's MD4 kept in a signature (collisions only cost a resend:
/// the rebuilt chunk is checked by its BLAKE3 name).
pub const HASH_BYTES: u32 = 8;
/// A delta frame's header: the new chunk's id, the base chunk's id, the length.
pub const DELTA_HEADER: usize = 32 + 32 + 4;

/// Why a delta was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("the delta for chunk {id} is malformed: {detail}")]
    Malformed { id: ChunkId, detail: String },
    #[error("the delta for chunk {id} rebuilds other bytes than the chunk's")]
    Mismatch { id: ChunkId },
    #[error("the delta pack ends inside frame {frame}")]
    Truncated { frame: usize },
    #[error("the delta pack holds no frames")]
    Empty,
}

impl PatchError {
    /// The chunk the error is about, if any.
    pub fn id(&self) -> Option<ChunkId> {
        match self {
            PatchError::Malformed { id, .. } | PatchError::Mismatch { id } => Some(*id),
            _ => None,
        }
    }
}

/// The block signature of `base` (what the holder of a chunk sends).
pub fn signature(base: &[u8]) -> Vec<u8> {
    fast_rsync::Signature::calculate(
        base,
        fast_rsync::SignatureOptions {
            block_size: BLOCK_SIZE,
            crypto_hash_size: HASH_BYTES,
        },
    )
    .into_serialized()
}

/// `new` as a delta against the chunk whose `signature` the peer sent; `None`
/// when the signature does not parse (then the chunk goes whole).
pub fn diff(signature: &[u8], new: &[u8]) -> Option<Vec<u8>> {
    let sig = fast_rsync::Signature::deserialize(signature.to_vec()).ok()?;
    let mut out = Vec::with_capacity(new.len() / 8);
    fast_rsync::diff(&sig.index(), new, &mut out).ok()?;
    Some(out)
}

/// Rebuilds chunk `id` from `base` and `delta`, checked against `id`.
pub fn apply(id: ChunkId, base: &[u8], delta: &[u8]) -> Result<Vec<u8>, PatchError> {
    let mut out = Vec::with_capacity(base.len());
    fast_rsync::apply_limited(base, delta, &mut out, MAX_CHUNK_LEN as usize).map_err(|e| {
        PatchError::Malformed {
            id,
            detail: e.to_string(),
        }
    })?;
    if out.is_empty() || !id.verifies(&out) {
        return Err(PatchError::Mismatch { id });
    }
    Ok(out)
}

/// Appends a delta frame: `[new id][base id][u32 BE length][delta]`.
pub fn push_delta_frame(pack: &mut Vec<u8>, id: ChunkId, base: ChunkId, delta: &[u8]) {
    pack.extend_from_slice(&id.0);
    pack.extend_from_slice(&base.0);
    pack.extend_from_slice(&(delta.len() as u32).to_be_bytes());
    pack.extend_from_slice(delta);
}

/// The frames of a delta pack: each new chunk's id, its base's, and where its
/// delta is.
pub fn parse_delta_pack(pack: &[u8]) -> Result<Vec<(ChunkId, ChunkId, Range<usize>)>, PatchError> {
    let mut out = vec![];
    let mut at = 0usize;
    while at < pack.len() {
        let frame = out.len();
        let head = pack
            .get(at..at + DELTA_HEADER)
            .ok_or(PatchError::Truncated { frame })?;
        let mut id = [0u8; 32];
        id.copy_from_slice(&head[..32]);
        let mut base = [0u8; 32];
        base.copy_from_slice(&head[32..64]);
        let len = u32::from_be_bytes([head[64], head[65], head[66], head[67]]) as usize;
        let start = at + DELTA_HEADER;
        let end = start
            .checked_add(len)
            .ok_or(PatchError::Truncated { frame })?;
        if end > pack.len() {
            return Err(PatchError::Truncated { frame });
        }
        out.push((ChunkId(id), ChunkId(base), start..end));
        at = end;
    }
    if out.is_empty() {
        return Err(PatchError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(seed: u8, len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(seed);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn an_insert_travels_as_about_its_own_size_and_rebuilds_exactly() {
        let old = noise(1, 64 * 1024);
        let mut new = old[..30_000].to_vec();
        new.extend_from_slice(&noise(2, 4096));
        new.extend_from_slice(&old[30_000..]);
        let sig = signature(&old);
        let delta = diff(&sig, &new).unwrap();
        assert!(sig.len() < 1700, "signature of {} bytes", sig.len());
        assert!(
            delta.len() < 4096 + BLOCK_SIZE as usize + 64,
            "delta of {} bytes",
            delta.len()
        );
        let id = ChunkId::of(&new);
        assert_eq!(apply(id, &old, &delta).unwrap(), new);
        let mut pack = vec![];
        push_delta_frame(&mut pack, id, ChunkId::of(&old), &delta);
        let frames = parse_delta_pack(&pack).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].0, id);
        assert_eq!(&pack[frames[0].2.clone()], &delta[..]);
    }

    #[test]
    fn a_wrong_base_or_a_forged_delta_is_refused_never_stored() {
        let old = noise(3, 8192);
        let new = noise(4, 8192);
        let delta = diff(&signature(&old), &new).unwrap();
        let id = ChunkId::of(&new);
        // Applied to other bytes than the base it was made for.
        let other = noise(5, 8192);
        let r = apply(id, &other, &delta);
        assert!(matches!(r, Err(PatchError::Mismatch { .. }) | Ok(_)));
        if let Ok(bytes) = r {
            assert_eq!(bytes, new, "only the exact chunk is ever accepted");
        }
        // Garbage.
        assert!(apply(id, &old, b"not a delta").is_err());
        assert!(parse_delta_pack(&[0u8; 10]).is_err());
        assert!(parse_delta_pack(&[]).is_err());
        assert!(diff(b"not a signature", &new).is_none());
    }
}
