//! A local content-addressed directory of chunks (and manifests, which are stored
//! the same way under their [`ManifestId`](super::manifest::ManifestId)).
//!
//! Objects live at `root/ab/abcdef…` (the first two hex characters fan out so no
//! directory grows huge). Writes go to a unique temporary name in the same
//! directory and are renamed into place, so a reader never sees half an object; a
//! crash leaves only `*.tmp*` files, which [`ChunkDir::open`] removes. Every read is
//! verified against the name: a corrupt object is an error, never returned.
//!
//! The API is blocking; async callers wrap it in `spawn_blocking`. Used by the
//! controller's local store and the agent's cache.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::manifest::Limits;
use super::{ChunkId, MAX_CHUNK_LEN};

/// Why a [`ChunkDir`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChunkDirError {
    /// Bytes handed to `put` are not the chunk `id` names.
    #[error("bytes given for chunk {id} do not match its hash")]
    Mismatch { id: ChunkId },
    /// The stored object does not match its name (disk corruption or tampering).
    #[error("stored chunk {id} does not match its hash")]
    Corrupt { id: ChunkId },
    #[error("stored object {id} is {len} bytes, at most {max} allowed here")]
    TooLarge { id: ChunkId, len: u64, max: u64 },
    #[error("chunk directory I/O: {0}")]
    Io(#[from] io::Error),
}

/// Distinguishes temporary names of concurrent writers in one process (the pid
/// distinguishes processes).
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A directory of objects named by their BLAKE3 hash.
#[derive(Debug, Clone)]
pub struct ChunkDir {
    root: PathBuf,
}

impl ChunkDir {
    /// Opens (creating if needed) the directory at `root` and removes temporary
    /// files a crash left behind.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        for fan in fs::read_dir(&root)? {
            let fan = fan?;
            if !fan.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(fan.path())? {
                let f = f?;
                if f.file_name().to_string_lossy().contains(".tmp") {
                    // Best effort: another process may have just renamed it.
                    let _ = fs::remove_file(f.path());
                }
            }
        }
        Ok(ChunkDir { root })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the object `id` lives (whether or not it is there).
    pub fn path_of(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    /// Stores `bytes` as `id` after checking they hash to it. `Ok(false)` when the
    /// object was already present (nothing written). With `durable`, the file and
    /// Stores many chunks, each verified, durable together: the objects are written
    /// and renamed without a flush each, then one `syncfs` makes every one of them
    /// (data and directory entries) durable before this returns. A push of 16,000
    /// chunks costs one flush per pack instead of two fsyncs per chunk. Returns how
    /// many were newly written.
    pub fn put_many(&self, items: &[(ChunkId, &[u8])]) -> Result<usize, ChunkDirError> {
        let mut written = 0;
        for (id, bytes) in items {
            if self.put(id, bytes, false)? {
                written += 1;
            }
        }
        if written > 0 {
            let root = File::open(&self.root)?;
            rustix::fs::syncfs(&root).map_err(io::Error::from)?;
        }
        Ok(written)
    }

    /// its directory are fsync'd before returning.
    pub fn put(&self, id: &ChunkId, bytes: &[u8], durable: bool) -> Result<bool, ChunkDirError> {
        if !id.verifies(bytes) {
            return Err(ChunkDirError::Mismatch { id: *id });
        }
        let path = self.path_of(id);
        if path.is_file() {
            return Ok(false);
        }
        let fan = path
            .parent()
            .ok_or_else(|| io::Error::other("object path has no parent"))?;
        if !fan.is_dir() {
            fs::create_dir_all(fan)?;
            if durable {
                File::open(&self.root)?.sync_all()?;
            }
        }
        let tmp = fan.join(format!(
            ".{}.tmp.{}.{}",
            id.to_hex(),
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(bytes)?;
            if durable {
                f.sync_all()?;
            }
            drop(f);
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        if durable {
            File::open(fan)?.sync_all()?;
        }
        Ok(true)
    }

    /// Reads and verifies the object `id`, refusing one longer than `max_len`.
    /// `Ok(None)` when absent.
    pub fn get(&self, id: &ChunkId, max_len: u64) -> Result<Option<Vec<u8>>, ChunkDirError> {
        let f = match File::open(self.path_of(id)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let len = f.metadata()?.len();
        if len > max_len {
            return Err(ChunkDirError::TooLarge {
                id: *id,
                len,
                max: max_len,
            });
        }
        let mut buf = Vec::with_capacity(len as usize);
        // Bounded even if the file grows after the metadata call.
        f.take(max_len + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > max_len {
            return Err(ChunkDirError::TooLarge {
                id: *id,
                len: buf.len() as u64,
                max: max_len,
            });
        }
        if !id.verifies(&buf) {
            return Err(ChunkDirError::Corrupt { id: *id });
        }
        Ok(Some(buf))
    }

    /// A chunk (at most [`MAX_CHUNK_LEN`] bytes).
    pub fn get_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, ChunkDirError> {
        self.get(id, u64::from(MAX_CHUNK_LEN))
    }

    /// A manifest's encoding (at most `Limits::DEFAULT.max_encoded_bytes`).
    pub fn get_manifest(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, ChunkDirError> {
        self.get(id, Limits::DEFAULT.max_encoded_bytes as u64)
    }

    /// Whether an object named `id` is present (not verified).
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.path_of(id).is_file()
    }

    /// Removes `id`; `Ok(false)` if it was not there.
    pub fn remove(&self, id: &ChunkId) -> io::Result<bool> {
        match fs::remove_file(self.path_of(id)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every object: its id, length and modification time. Names that are not an
    /// object (temporary files, strays) are ignored.
    pub fn list(&self) -> io::Result<Vec<(ChunkId, u64, SystemTime)>> {
        let mut out = Vec::new();
        for fan in fs::read_dir(&self.root)? {
            let fan = fan?;
            let fan_name = fan.file_name();
            let Some(fan_name) = fan_name.to_str() else {
                continue;
            };
            if fan_name.len() != 2 || !fan.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(fan.path())? {
                let f = f?;
                let name = f.file_name();
                let Some(id) = name.to_str().and_then(ChunkId::from_hex) else {
                    continue;
                };
                if !id.to_hex().starts_with(fan_name) {
                    continue;
                }
                let md = match f.metadata() {
                    Ok(md) => md,
                    // Removed since read_dir listed it.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                if md.is_file() {
                    out.push((id, md.len(), md.modified()?));
                }
            }
        }
        Ok(out)
    }

    /// Bytes of all objects.
    pub fn total_bytes(&self) -> io::Result<u64> {
        Ok(self.list()?.iter().map(|(_, len, _)| len).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_many_stores_each_once_and_refuses_a_forgery() {
        let t = tempfile::tempdir().unwrap();
        let d = ChunkDir::open(t.path().join("store")).unwrap();
        let (a, b) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
        assert!(d.put(&a, b"a", false).unwrap());
        let items: Vec<(ChunkId, &[u8])> = vec![(a, b"a"), (b, b"b"), (b, b"b")];
        assert_eq!(d.put_many(&items).unwrap(), 1);
        assert_eq!(d.get_chunk(&b).unwrap().as_deref(), Some(&b"b"[..]));
        let forged: Vec<(ChunkId, &[u8])> = vec![(ChunkId::of(b"c"), b"not c")];
        assert!(matches!(
            d.put_many(&forged),
            Err(ChunkDirError::Mismatch { .. })
        ));
        assert!(!d.contains(&ChunkId::of(b"c")));
    }

    #[test]
    fn put_get_list_remove() {
        let t = tempfile::tempdir().unwrap();
        let d = ChunkDir::open(t.path().join("store")).unwrap();
        let id = ChunkId::of(b"hello");
        assert!(!d.contains(&id));
        assert_eq!(d.get_chunk(&id).unwrap(), None);
        assert!(d.put(&id, b"hello", true).unwrap());
        assert!(!d.put(&id, b"hello", false).unwrap());
        assert!(d.contains(&id));
        let hex = id.to_hex();
        assert_eq!(
            d.path_of(&id),
            t.path().join("store").join(&hex[..2]).join(&hex)
        );
        assert_eq!(d.get_chunk(&id).unwrap().unwrap(), b"hello");
        let other = ChunkId::of(b"world!");
        d.put(&other, b"world!", false).unwrap();
        let mut l: Vec<_> = d
            .list()
            .unwrap()
            .into_iter()
            .map(|(i, n, _)| (i, n))
            .collect();
        l.sort();
        let mut want = vec![(id, 5), (other, 6)];
        want.sort();
        assert_eq!(l, want);
        assert_eq!(d.total_bytes().unwrap(), 11);
        assert!(d.remove(&id).unwrap());
        assert!(!d.remove(&id).unwrap());
        assert!(!d.contains(&id));
    }

    #[test]
    fn wrong_bytes_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = ChunkDir::open(t.path()).unwrap();
        let id = ChunkId::of(b"hello");
        let e = d.put(&id, b"hellO", true).unwrap_err();
        assert!(matches!(e, ChunkDirError::Mismatch { .. }), "{e}");
        assert!(!d.contains(&id));
    }

    #[test]
    fn corrupt_object_is_never_returned() {
        let t = tempfile::tempdir().unwrap();
        let d = ChunkDir::open(t.path()).unwrap();
        let id = ChunkId::of(b"hello");
        d.put(&id, b"hello", false).unwrap();
        fs::write(d.path_of(&id), b"jello").unwrap();
        let e = d.get_chunk(&id).unwrap_err();
        assert!(
            matches!(e, ChunkDirError::Corrupt { id: i } if i == id),
            "{e}"
        );
        assert!(e.to_string().contains(&id.to_hex()));
    }

    #[test]
    fn read_size_is_bounded() {
        let t = tempfile::tempdir().unwrap();
        let d = ChunkDir::open(t.path()).unwrap();
        let data = vec![1u8; 100];
        let id = ChunkId::of(&data);
        d.put(&id, &data, false).unwrap();
        assert!(matches!(
            d.get(&id, 99).unwrap_err(),
            ChunkDirError::TooLarge {
                len: 100,
                max: 99,
                ..
            }
        ));
        assert_eq!(d.get(&id, 100).unwrap().unwrap(), data);
    }

    #[test]
    fn open_removes_stale_temporaries() {
        let t = tempfile::tempdir().unwrap();
        let d = ChunkDir::open(t.path()).unwrap();
        let id = ChunkId::of(b"x");
        d.put(&id, b"x", false).unwrap();
        let fan = d.path_of(&id).parent().unwrap().to_path_buf();
        let stale = fan.join(format!(".{}.tmp.1.2", id.to_hex()));
        fs::write(&stale, b"half").unwrap();
        assert_eq!(d.list().unwrap().len(), 1);
        let d = ChunkDir::open(t.path()).unwrap();
        assert!(!stale.exists());
        assert!(d.contains(&id));
    }
}
