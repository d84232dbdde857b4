//! FastCDC chunk boundaries: bytes in, [`ChunkRef`]s out (FastCDC 2020, normalisation
//! level 1, seed 0 — every peer must cut the same way for chunks to be shared).

use std::io::Read;

use fastcdc::v2020::{FastCDC, StreamCDC};

use super::{ChunkId, ChunkRef, Params};

/// Cuts everything `r` yields into chunks, calling `f` with each chunk's reference
/// and bytes in order. Returns the total number of bytes read. Empty input gives no
/// chunks. `params` must satisfy [`Params::check`] (an invalid set is an
/// `InvalidInput` error rather than a panic inside fastcdc).
pub fn chunk_reader<R: Read>(
    r: R,
    params: Params,
    mut f: impl FnMut(ChunkRef, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    params
        .check()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut total = 0u64;
    let cdc = StreamCDC::new(
        r,
        params.min as usize,
        params.avg as usize,
        params.max as usize,
    );
    for chunk in cdc {
        let chunk = chunk.map_err(std::io::Error::from)?;
        let len = u32::try_from(chunk.data.len())
            .map_err(|_| std::io::Error::other("chunk longer than u32"))?;
        total += u64::from(len);
        f(
            ChunkRef {
                id: ChunkId::of(&chunk.data),
                len,
            },
            &chunk.data,
        )?;
    }
    Ok(total)
}

/// The chunks of an in-memory buffer (same cuts as [`chunk_reader`]).
/// Panics only if `params` fail [`Params::check`]; callers pass constants.
pub fn chunk_bytes(data: &[u8], params: Params) -> Vec<ChunkRef> {
    assert!(params.check().is_ok(), "invalid chunker params {params:?}");
    FastCDC::new(
        data,
        params.min as usize,
        params.avg as usize,
        params.max as usize,
    )
    .map(|c| {
        let bytes = &data[c.offset..c.offset + c.length];
        ChunkRef {
            id: ChunkId::of(bytes),
            // max ≤ MAX_CHUNK_LEN (checked), so this fits.
            len: c.length as u32,
        }
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks::DEFAULT_PARAMS;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut v = vec![0u8; n];
        rng.fill(&mut v[..]);
        v
    }

    #[test]
    fn empty_input_gives_no_chunks() {
        assert!(chunk_bytes(&[], DEFAULT_PARAMS).is_empty());
        let mut n = 0;
        let total = chunk_reader(&[][..], DEFAULT_PARAMS, |_, _| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((total, n), (0, 0));
    }

    #[test]
    fn deterministic_and_stream_equals_slice() {
        let data = random(4 << 20, 1);
        let a = chunk_bytes(&data, DEFAULT_PARAMS);
        let b = chunk_bytes(&data, DEFAULT_PARAMS);
        assert_eq!(a, b);
        let mut c = Vec::new();
        let total = chunk_reader(std::io::Cursor::new(&data), DEFAULT_PARAMS, |r, bytes| {
            assert!(r.id.verifies(bytes));
            assert_eq!(r.len as usize, bytes.len());
            c.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(total, data.len() as u64);
        assert_eq!(a, c);
        let sum: u64 = a.iter().map(|r| u64::from(r.len)).sum();
        assert_eq!(sum, data.len() as u64);
    }

    #[test]
    fn sizes_within_bounds() {
        let data = random(4 << 20, 2);
        let chunks = chunk_bytes(&data, DEFAULT_PARAMS);
        assert!(chunks.len() > 10);
        let (last, rest) = chunks.split_last().unwrap();
        for c in rest {
            assert!(
                c.len >= DEFAULT_PARAMS.min && c.len <= DEFAULT_PARAMS.max,
                "{c:?}"
            );
        }
        assert!(last.len <= DEFAULT_PARAMS.max);
    }

    #[test]
    fn insertion_changes_few_chunks() {
        let data = random(4 << 20, 3);
        let mut edited = data.clone();
        edited.splice(
            2_000_000..2_000_000,
            b"hello, inserted bytes".iter().copied(),
        );
        let a: std::collections::HashSet<_> =
            chunk_bytes(&data, DEFAULT_PARAMS).into_iter().collect();
        let b = chunk_bytes(&edited, DEFAULT_PARAMS);
        let new = b.iter().filter(|c| !a.contains(c)).count();
        assert!((1..=3).contains(&new), "{new} chunks changed");
    }

    #[test]
    fn invalid_params_are_an_error() {
        let bad = Params {
            min: 0,
            avg: 1,
            max: 2,
        };
        assert!(chunk_reader(&b"x"[..], bad, |_, _| Ok(())).is_err());
    }
}
