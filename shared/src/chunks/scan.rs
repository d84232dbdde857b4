//! A directory turned into a manifest.
//!
//! The walk never follows symlinks (it records them with their target), refuses
//! anything that is not a file, directory or symlink, and refuses names that are not
//! UTF-8 — each with the path named, never silently skipped. Files are cut with the
//! chunker; a file whose size, mtime, ctime, inode and device match the previous
//! scan's [`ScanCache`] (made with the same [`Params`]) reuses its chunk list without
//! being read, as restic and Mutagen do.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufReader};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use super::chunker::chunk_reader;
use super::manifest::{Entry, EntryKind, Limits, Manifest, ManifestError};
use super::{ChunkId, ChunkRef, Params};

/// Why a scan failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: a {kind} cannot be stored (only files, directories and symlinks)")]
    Unsupported { path: PathBuf, kind: &'static str },
    #[error("{path}: name is not UTF-8")]
    NotUtf8 { path: PathBuf },
    #[error("{path}: the scan root must be a directory")]
    RootNotDirectory { path: PathBuf },
    #[error("chunker params: {0}")]
    Params(String),
    #[error("the scanned tree is not a valid manifest: {0}")]
    Manifest(#[from] ManifestError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ScanError + '_ {
    move |source| ScanError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the scan knew of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedFile {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    pub dev: u64,
    pub chunks: Vec<ChunkRef>,
}

/// The previous scan's files, to skip reading unchanged ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanCache {
    /// The cache only applies to scans with the same params.
    pub params: Params,
    /// Relative path → what it was.
    pub files: BTreeMap<String, CachedFile>,
}

impl ScanCache {
    /// Reads a cache saved by [`ScanCache::save`]. A missing or unreadable
    /// (corrupt, older format) cache is `None`: it only ever saves work.
    pub fn load(path: &Path) -> Option<ScanCache> {
        let bytes = fs::read(path).ok()?;
        postcard::from_bytes(&bytes).ok()
    }

    /// Writes the cache atomically (mode 0600).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let bytes = postcard::to_allocvec(self).map_err(io::Error::other)?;
        crate::fsutil::write_atomic(path, &bytes, 0o600)
    }
}

/// Where a chunk's bytes can be read in the scanned tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLocation {
    /// Relative to the scan root.
    pub path: PathBuf,
    pub offset: u64,
    pub len: u32,
}

/// How far a scan got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanProgress {
    pub files_done: u64,
    /// Known once the walk is done (before any file is hashed).
    pub files_total: Option<u64>,
    pub bytes_done: u64,
}

/// A scan's result.
#[derive(Debug, Clone)]
pub struct Scan {
    pub manifest: Manifest,
    /// To pass as `previous` next time.
    pub cache: ScanCache,
    /// One place to read each chunk from.
    pub locations: HashMap<ChunkId, ChunkLocation>,
    /// Files actually read (the rest came from the cache).
    pub files_read: u64,
    /// The distinct chunks of the files read. When the previous scan's cache was
    /// saved after a push that committed, the other chunks are on the controller
    /// already: a push need only ask about these.
    pub fresh: Vec<ChunkRef>,
}

/// A file found by the walk, waiting for its chunks.
struct Pending {
    rel: String,
    meta: CachedFile,
    mode: u32,
}

/// Scans the tree under `root` (the root itself is not an entry).
pub fn scan(
    root: &Path,
    params: Params,
    previous: Option<&ScanCache>,
    progress: &mut dyn FnMut(ScanProgress),
) -> Result<Scan, ScanError> {
    params.check().map_err(ScanError::Params)?;
    let md = fs::symlink_metadata(root).map_err(io_err(root))?;
    if !md.is_dir() {
        return Err(ScanError::RootNotDirectory {
            path: root.to_path_buf(),
        });
    }
    let previous = previous.filter(|p| p.params == params);

    let mut entries = Vec::new();
    let mut files = Vec::new();
    walk(root, "", &mut entries, &mut files)?;

    let total = files.len() as u64;
    let mut done = ScanProgress {
        files_done: 0,
        files_total: Some(total),
        bytes_done: 0,
    };
    progress(done);

    // Files the cache cannot vouch for are read by a few workers; results come
    // back over a channel so `progress` (not Send) is only called here.
    let mut chunks_of: Vec<Option<Vec<ChunkRef>>> = vec![None; files.len()];
    let mut to_read = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let hit = previous.and_then(|p| p.files.get(&f.rel)).filter(|c| {
            c.size == f.meta.size
                && c.mtime_ns == f.meta.mtime_ns
                && c.ctime_ns == f.meta.ctime_ns
                && c.inode == f.meta.inode
                && c.dev == f.meta.dev
        });
        match hit {
            Some(c) => {
                chunks_of[i] = Some(c.chunks.clone());
                done.files_done += 1;
                done.bytes_done += c.size;
            }
            None => to_read.push(i),
        }
    }
    if !to_read.is_empty() {
        progress(done);
    }
    let files_read = to_read.len() as u64;
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
        .min(to_read.len().max(1));
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<(usize, Result<Vec<ChunkRef>, ScanError>)>();
    let mut first_err = None;
    std::thread::scope(|s| {
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, to_read, files) = (&next, &to_read, &files);
            s.spawn(move || loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = to_read.get(k) else { break };
                let r = hash_file(&root.join(&files[i].rel), params);
                if tx.send((i, r)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for (i, r) in rx {
            match r {
                Ok(c) => {
                    done.files_done += 1;
                    done.bytes_done += c.iter().map(|c| u64::from(c.len)).sum::<u64>();
                    chunks_of[i] = Some(c);
                    progress(done);
                }
                Err(e) => {
                    if first_err.is_none() {
                        first_err = Some(e);
                        // Stop handing out work; workers finish their current file.
                        next.store(usize::MAX / 2, Ordering::Relaxed);
                    }
                }
            }
        }
    });
    if let Some(e) = first_err {
        return Err(e);
    }

    let mut seen = std::collections::HashSet::new();
    let fresh: Vec<ChunkRef> = to_read
        .iter()
        .filter_map(|&i| chunks_of[i].as_ref())
        .flatten()
        .filter(|c| seen.insert(c.id))
        .copied()
        .collect();
    let mut cache = ScanCache {
        params,
        files: BTreeMap::new(),
    };
    let mut locations = HashMap::new();
    for (f, chunks) in files.into_iter().zip(chunks_of) {
        let chunks = chunks.unwrap_or_default();
        // The size is what was read: the file may have changed since the stat.
        let size: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
        let mut offset = 0u64;
        for c in &chunks {
            locations.entry(c.id).or_insert_with(|| ChunkLocation {
                path: PathBuf::from(&f.rel),
                offset,
                len: c.len,
            });
            offset += u64::from(c.len);
        }
        entries.push(Entry {
            path: f.rel.clone(),
            kind: EntryKind::File {
                chunks: chunks.clone(),
            },
            mode: f.mode,
            size,
            mtime_ns: f.meta.mtime_ns,
        });
        if size == f.meta.size {
            cache.files.insert(f.rel, CachedFile { chunks, ..f.meta });
        }
    }
    let manifest = Manifest::new(params, entries);
    manifest.validate(&Limits::DEFAULT)?;
    Ok(Scan {
        manifest,
        cache,
        locations,
        files_read,
        fresh,
    })
}

fn hash_file(path: &Path, params: Params) -> Result<Vec<ChunkRef>, ScanError> {
    use rustix::fs::{Mode, OFlags};
    // NOFOLLOW: the walk saw a file; if it was swapped for a symlink since, refuse
    // rather than read whatever it points at.
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(path)(e.into()))?;
    let f = BufReader::with_capacity(1 << 20, File::from(fd));
    let mut chunks = Vec::new();
    chunk_reader(f, params, |c, _| {
        chunks.push(c);
        Ok(())
    })
    .map_err(io_err(path))?;
    Ok(chunks)
}

fn ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

fn walk(
    dir: &Path,
    rel: &str,
    entries: &mut Vec<Entry>,
    files: &mut Vec<Pending>,
) -> Result<(), ScanError> {
    for de in fs::read_dir(dir).map_err(io_err(dir))? {
        let de = de.map_err(io_err(dir))?;
        let path = de.path();
        let name = de.file_name();
        let Some(name) = name.to_str() else {
            return Err(ScanError::NotUtf8 { path });
        };
        let child = if rel.is_empty() {
            name.to_owned()
        } else {
            format!("{rel}/{name}")
        };
        let md = fs::symlink_metadata(&path).map_err(io_err(&path))?;
        let ft = md.file_type();
        let mode = md.mode() & 0o7777;
        let mtime_ns = ns(md.mtime(), md.mtime_nsec());
        if ft.is_dir() {
            entries.push(Entry {
                path: child.clone(),
                kind: EntryKind::Directory,
                mode,
                size: 0,
                mtime_ns,
            });
            walk(&path, &child, entries, files)?;
        } else if ft.is_file() {
            files.push(Pending {
                rel: child,
                mode,
                meta: CachedFile {
                    size: md.len(),
                    mtime_ns,
                    ctime_ns: ns(md.ctime(), md.ctime_nsec()),
                    inode: md.ino(),
                    dev: md.dev(),
                    chunks: Vec::new(),
                },
            });
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(io_err(&path))?;
            let Some(target) = target.to_str() else {
                return Err(ScanError::NotUtf8 { path });
            };
            entries.push(Entry {
                path: child,
                kind: EntryKind::Symlink {
                    target: target.to_owned(),
                },
                mode,
                size: 0,
                mtime_ns,
            });
        } else {
            let kind = if ft.is_fifo() {
                "fifo"
            } else if ft.is_socket() {
                "socket"
            } else if ft.is_block_device() {
                "block device"
            } else if ft.is_char_device() {
                "character device"
            } else {
                "special file"
            };
            return Err(ScanError::Unsupported { path, kind });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks::DEFAULT_PARAMS;
    use std::io::{Read, Seek, SeekFrom};

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("a/b")).unwrap();
        fs::write(r.join("a/b/one.txt"), b"one").unwrap();
        fs::write(r.join("a.b"), b"dot").unwrap();
        fs::write(r.join("empty"), b"").unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(r.join("a/big.bin"), big).unwrap();
        std::os::unix::fs::symlink("../etc/passwd", r.join("a/link")).unwrap();
        t
    }

    fn run(root: &Path, prev: Option<&ScanCache>) -> Scan {
        scan(root, DEFAULT_PARAMS, prev, &mut |_| {}).unwrap()
    }

    #[test]
    fn records_tree_sorted_with_symlinks() {
        let t = tree();
        let s = run(t.path(), None);
        let paths: Vec<_> = s.manifest.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "a",
                "a/b",
                "a/b/one.txt",
                "a/big.bin",
                "a/link",
                "a.b",
                "empty"
            ]
        );
        let link = &s.manifest.entries[4];
        assert_eq!(
            link.kind,
            EntryKind::Symlink {
                target: "../etc/passwd".into()
            }
        );
        assert_eq!(s.files_read, 4);
        assert_eq!(s.manifest.total_bytes(), 3_000_000 + 6);
        // every location holds its chunk's bytes
        for (id, loc) in &s.locations {
            let mut f = File::open(t.path().join(&loc.path)).unwrap();
            f.seek(SeekFrom::Start(loc.offset)).unwrap();
            let mut buf = vec![0; loc.len as usize];
            f.read_exact(&mut buf).unwrap();
            assert!(id.verifies(&buf));
        }
        assert_eq!(s.locations.len(), s.manifest.unique_chunks().len());
    }

    #[test]
    fn unchanged_rescan_reads_nothing_and_touched_file_is_reread() {
        let t = tree();
        let first = run(t.path(), None);
        let cache_dir = tempfile::tempdir().unwrap();
        let cache_path = cache_dir.path().join("scan.cache");
        first.cache.save(&cache_path).unwrap();
        let cache = ScanCache::load(&cache_path).unwrap();
        assert_eq!(cache, first.cache);

        let again = run(t.path(), Some(&cache));
        assert_eq!(again.files_read, 0);
        assert_eq!(again.manifest.id(), first.manifest.id());
        assert_eq!(again.locations, first.locations);

        // without a cache the same tree gives the same manifest
        assert_eq!(run(t.path(), None).manifest.id(), first.manifest.id());

        assert!(again.fresh.is_empty());
        fs::write(t.path().join("a/b/one.txt"), b"ONE!").unwrap();
        let touched = run(t.path(), Some(&again.cache));
        assert_eq!(touched.files_read, 1);
        assert_eq!(
            touched.fresh,
            vec![ChunkRef {
                id: ChunkId::of(b"ONE!"),
                len: 4
            }]
        );
        assert_ne!(touched.manifest.id(), first.manifest.id());

        // a cache made with other params is ignored
        let other = Params::with_avg(16 * 1024);
        let s = scan(t.path(), other, Some(&touched.cache), &mut |_| {}).unwrap();
        assert_eq!(s.files_read, 4);
    }

    #[test]
    fn progress_reaches_the_total() {
        let t = tree();
        let mut last = None;
        scan(t.path(), DEFAULT_PARAMS, None, &mut |p| last = Some(p)).unwrap();
        assert_eq!(
            last.unwrap(),
            ScanProgress {
                files_done: 4,
                files_total: Some(4),
                bytes_done: 3_000_006
            }
        );
    }

    #[test]
    fn fifo_is_refused_by_name() {
        let t = tree();
        let fifo = t.path().join("a/pipe");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let e = scan(t.path(), DEFAULT_PARAMS, None, &mut |_| {}).unwrap_err();
        assert!(
            matches!(e, ScanError::Unsupported { kind: "fifo", .. }),
            "{e}"
        );
        assert!(
            e.to_string().contains("a/pipe: a fifo cannot be stored"),
            "{e}"
        );
    }

    #[test]
    fn non_utf8_name_is_refused() {
        use std::os::unix::ffi::OsStrExt;
        let t = tree();
        let bad = t.path().join(std::ffi::OsStr::from_bytes(b"bad\xffname"));
        fs::write(&bad, b"x").unwrap();
        let e = scan(t.path(), DEFAULT_PARAMS, None, &mut |_| {}).unwrap_err();
        assert!(matches!(e, ScanError::NotUtf8 { .. }), "{e}");
        assert!(e.to_string().contains("name is not UTF-8"));
    }

    #[test]
    fn root_must_be_a_directory() {
        let t = tree();
        let e = scan(&t.path().join("a.b"), DEFAULT_PARAMS, None, &mut |_| {}).unwrap_err();
        assert!(matches!(e, ScanError::RootNotDirectory { .. }), "{e}");
    }
}
