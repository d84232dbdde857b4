//! An image archive read back from the chunk store: the chunk list of its manifest
//! as one `Read + Seek` file, for the commit's checks ([`super::inspect`] needs to
//! seek) and for the whole-file hash.
//!
//! Only the chunk under the cursor is held in memory (at most
//! [`MAX_CHUNK_LEN`](cairn_shared::chunks::MAX_CHUNK_LEN) bytes), so checking a
//! 20 GiB archive costs a few MiB. Every chunk is verified against its id by the
//! store and its length against the manifest; a missing, corrupt or wrongly sized
//! chunk is an I/O error naming it. Reads block on the store: use the reader on the
//! blocking pool (`spawn_blocking`), never on an async worker.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use bytes::Bytes;
use cairn_shared::chunks::ChunkRef;

use crate::chunks::{ChunkStore, ChunkStoreError};

/// Where each chunk starts in the file: `starts[i]` is the offset of `chunks[i]`,
/// and the last element is the file's size.
pub fn chunk_starts(chunks: &[ChunkRef]) -> Vec<u64> {
    let mut starts = Vec::with_capacity(chunks.len() + 1);
    let mut at = 0u64;
    for c in chunks {
        starts.push(at);
        at += u64::from(c.len);
    }
    starts.push(at);
    starts
}

/// The chunk holding byte `pos` and how far into it `pos` is; `None` at or past the
/// end. `starts` is [`chunk_starts`]'s answer.
pub fn locate(starts: &[u64], pos: u64) -> Option<(usize, u64)> {
    let size = *starts.last()?;
    if pos >= size {
        return None;
    }
    // The last start ≤ pos; chunks have length ≥ 1, so starts are strictly rising
    // (manifests refuse empty chunks).
    let i = starts.partition_point(|&s| s <= pos) - 1;
    Some((i, pos - starts[i]))
}

/// The error a reader gives for a chunk the store cannot give back.
pub fn chunk_error(c: &ChunkRef, e: Option<ChunkStoreError>) -> std::io::Error {
    match e {
        None => std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("chunk {} is missing from the chunk store", c.id),
        ),
        Some(ChunkStoreError::Io(e)) => e,
        Some(e) => std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    }
}

/// Fetches one chunk and checks its length against the manifest (the store checks
/// its hash).
pub async fn fetch_chunk(store: &dyn ChunkStore, c: &ChunkRef) -> std::io::Result<Bytes> {
    let bytes = match store.get(c.id).await {
        Ok(Some(b)) => b,
        Ok(None) => return Err(chunk_error(c, None)),
        Err(e) => return Err(chunk_error(c, Some(e))),
    };
    if bytes.len() != c.len as usize {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "chunk {} is {} bytes in the chunk store, {} in the manifest",
                c.id,
                bytes.len(),
                c.len
            ),
        ));
    }
    Ok(bytes)
}

/// A file made of chunks in a [`ChunkStore`], readable and seekable.
pub struct ChunkedReader {
    store: Arc<dyn ChunkStore>,
    rt: tokio::runtime::Handle,
    chunks: Vec<ChunkRef>,
    starts: Vec<u64>,
    pos: u64,
    /// The chunk last read, by index: a tar reader reads a member header, then its
    /// body, mostly in order, so one chunk is almost always enough.
    current: Option<(usize, Bytes)>,
}

impl ChunkedReader {
    /// A reader at offset 0. `rt` runs the store's futures (`Handle::current()` taken
    /// before `spawn_blocking`).
    pub fn new(
        store: Arc<dyn ChunkStore>,
        rt: tokio::runtime::Handle,
        chunks: Vec<ChunkRef>,
    ) -> Self {
        let starts = chunk_starts(&chunks);
        ChunkedReader {
            store,
            rt,
            chunks,
            starts,
            pos: 0,
            current: None,
        }
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }

    fn chunk(&mut self, i: usize) -> std::io::Result<&Bytes> {
        if self.current.as_ref().map(|(j, _)| *j) != Some(i) {
            self.current = None;
            let c = self.chunks[i];
            let bytes = self.rt.block_on(fetch_chunk(self.store.as_ref(), &c))?;
            self.current = Some((i, bytes));
        }
        match &self.current {
            Some((_, b)) => Ok(b),
            None => Err(std::io::Error::other("chunk cache empty after a fetch")),
        }
    }
}

impl Read for ChunkedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let Some((i, within)) = locate(&self.starts, self.pos) else {
            return Ok(0);
        };
        let bytes = self.chunk(i)?;
        // `within` < the chunk's length, which fits in u32.
        let avail = &bytes[within as usize..];
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ChunkedReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let size = self.size();
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        // Past the end is allowed (reads there give 0), before the start is not.
        let target = target.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the archive",
            )
        })?;
        self.pos = target;
        Ok(target)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::chunks::StoredChunk;
    use cairn_shared::chunks::ChunkId;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A chunk store in memory that can be made to lie (for corruption tests).
    #[derive(Debug, Default)]
    pub(crate) struct MemChunks {
        pub map: Mutex<HashMap<ChunkId, Bytes>>,
    }

    impl MemChunks {
        /// Replaces a stored chunk's bytes without changing its name.
        pub fn corrupt(&self, id: ChunkId, bytes: &[u8]) {
            self.map
                .lock()
                .unwrap()
                .insert(id, Bytes::copy_from_slice(bytes));
        }
        pub fn put_all(&self, data: &[u8], chunks: &[ChunkRef]) {
            let mut at = 0usize;
            for c in chunks {
                let b = &data[at..at + c.len as usize];
                self.map
                    .lock()
                    .unwrap()
                    .insert(c.id, Bytes::copy_from_slice(b));
                at += c.len as usize;
            }
        }
    }

    #[async_trait::async_trait]
    impl ChunkStore for MemChunks {
        async fn contains(&self, ids: &[ChunkId]) -> Result<Vec<bool>, ChunkStoreError> {
            let m = self.map.lock().unwrap();
            Ok(ids.iter().map(|i| m.contains_key(i)).collect())
        }
        async fn put(&self, id: ChunkId, bytes: Bytes) -> Result<(), ChunkStoreError> {
            if !id.verifies(&bytes) {
                return Err(ChunkStoreError::Corrupt { id });
            }
            self.map.lock().unwrap().insert(id, bytes);
            Ok(())
        }
        async fn get(&self, id: ChunkId) -> Result<Option<Bytes>, ChunkStoreError> {
            let b = self.map.lock().unwrap().get(&id).cloned();
            match b {
                Some(b) if !id.verifies(&b) => Err(ChunkStoreError::Corrupt { id }),
                other => Ok(other),
            }
        }
        async fn delete(&self, id: ChunkId) -> Result<(), ChunkStoreError> {
            self.map.lock().unwrap().remove(&id);
            Ok(())
        }
        async fn list(&self) -> Result<Vec<StoredChunk>, ChunkStoreError> {
            Ok(self
                .map
                .lock()
                .unwrap()
                .iter()
                .map(|(id, b)| StoredChunk {
                    id: *id,
                    written_ms: 0,
                    len: b.len() as u64,
                })
                .collect())
        }
    }

    fn noise(n: usize) -> Vec<u8> {
        let mut x: u64 = 0x1234_5678_9abc_def1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// 300 KiB cut into small chunks, stored.
    fn setup() -> (Vec<u8>, Vec<ChunkRef>, Arc<MemChunks>) {
        let data = noise(300 * 1024);
        let chunks = cairn_shared::chunks::chunk_bytes(
            &data,
            cairn_shared::chunks::Params::with_avg(16 * 1024),
        );
        assert!(chunks.len() > 5, "{}", chunks.len());
        let store = Arc::new(MemChunks::default());
        store.put_all(&data, &chunks);
        (data, chunks, store)
    }

    fn reader(store: Arc<MemChunks>, chunks: Vec<ChunkRef>) -> ChunkedReader {
        ChunkedReader::new(store, tokio::runtime::Handle::current(), chunks)
    }

    #[test]
    fn locate_finds_the_chunk_and_the_offset_in_it() {
        let c = |n: u8, len| ChunkRef {
            id: ChunkId::of(&[n]),
            len,
        };
        let starts = chunk_starts(&[c(1, 10), c(2, 5), c(3, 1)]);
        assert_eq!(starts, vec![0, 10, 15, 16]);
        assert_eq!(locate(&starts, 0), Some((0, 0)));
        assert_eq!(locate(&starts, 9), Some((0, 9)));
        assert_eq!(locate(&starts, 10), Some((1, 0)));
        assert_eq!(locate(&starts, 15), Some((2, 0)));
        assert_eq!(locate(&starts, 16), None);
        assert_eq!(locate(&[0], 0), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn reads_across_chunks_and_seeks_into_the_middle_of_one() {
        let (data, chunks, store) = setup();
        let second_start = u64::from(chunks[0].len);
        tokio::task::spawn_blocking(move || {
            let mut r = reader(store, chunks.clone());
            assert_eq!(r.size(), data.len() as u64);
            // Whole, in odd-sized reads that straddle boundaries.
            let mut all = vec![];
            let mut buf = vec![0u8; 7777];
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
            }
            assert!(all == data, "the whole file reads back");
            // Into the middle of the second chunk, across into the third.
            let at = second_start + 100;
            assert_eq!(r.seek(SeekFrom::Start(at)).unwrap(), at);
            let mut got = vec![0u8; chunks[1].len as usize];
            r.read_exact(&mut got).unwrap();
            assert_eq!(got[..], data[at as usize..at as usize + got.len()]);
            // Relative and from the end.
            r.seek(SeekFrom::Current(-10)).unwrap();
            let mut ten = [0u8; 10];
            r.read_exact(&mut ten).unwrap();
            let end = at as usize + got.len();
            assert_eq!(ten[..], data[end - 10..end]);
            r.seek(SeekFrom::End(-3)).unwrap();
            let mut tail = vec![];
            r.read_to_end(&mut tail).unwrap();
            assert_eq!(tail[..], data[data.len() - 3..]);
            // Past the end reads nothing; before the start is an error.
            r.seek(SeekFrom::End(5)).unwrap();
            assert_eq!(r.read(&mut ten).unwrap(), 0);
            assert!(r.seek(SeekFrom::Current(-1_000_000_000)).is_err());
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_corrupt_or_missing_chunk_is_an_error_naming_it() {
        let (data, chunks, store) = setup();
        let bad = chunks[2];
        store.corrupt(bad.id, &vec![0u8; bad.len as usize]);
        let gone = chunks[4];
        store.map.lock().unwrap().remove(&gone.id);
        let s2 = store.clone();
        tokio::task::spawn_blocking(move || {
            let mut r = reader(store, chunks.clone());
            // The chunks before the corrupt one read fine.
            let before = (chunks[0].len + chunks[1].len) as usize;
            let mut head = vec![0u8; before];
            r.read_exact(&mut head).unwrap();
            assert_eq!(head[..], data[..before]);
            let e = r.read(&mut [0u8; 10]).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
            assert!(e.to_string().contains(&bad.id.to_hex()), "{e}");
            assert!(e.to_string().contains("corrupt"), "{e}");
            let at: u64 = chunks[..4].iter().map(|c| u64::from(c.len)).sum();
            r.seek(SeekFrom::Start(at + 1)).unwrap();
            let e = r.read(&mut [0u8; 10]).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
            assert!(e.to_string().contains(&gone.id.to_hex()), "{e}");
        })
        .await
        .unwrap();
        // A chunk of the wrong length (a manifest lying about it) is refused too.
        let c = ChunkRef {
            id: ChunkId::of(b"abc"),
            len: 4,
        };
        s2.put(c.id, Bytes::from_static(b"abc")).await.unwrap();
        let e = fetch_chunk(s2.as_ref(), &c).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("3 bytes in the chunk store, 4 in the manifest"),
            "{e}"
        );
    }
}
