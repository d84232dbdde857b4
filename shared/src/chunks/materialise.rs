//! A manifest written out as a tree: chunks put in place in any order, from trees
//! already on this disk (seeds) and from the wire.
//!
//! [`Assembly::prepare`] validates the manifest whole before anything is written (so
//! a symlink can never be used as a path prefix: every parent is a directory this
//! code created), then lays the tree out in a sibling staging directory
//! `<dest>.partial`: directories, symlinks, and every file at its final length. A
//! file a seed holds with the same chunks, mode and mtime is hard-linked whole
//! (trees are read-only, so sharing an inode is safe); any other chunk a seed holds
//! is copied from it, checked against its hash. What is left is
//! [`Assembly::missing`]: the caller fetches those and hands each to
//! [`Assembly::put`], which checks it and writes it wherever the manifest places it
//! (so a fetched chunk is written once, straight into the tree, never into a cache
//! first). [`Assembly::finish`] sets modes and mtimes (directories last, deepest
//! first, since writing their children changes their mtime), optionally syncs the
//! filesystem once, and renames the staging directory to `dest`: a reader sees no
//! tree or the whole tree.
//!
//! A staging directory left by an interrupted assembly of the same manifest is
//! resumed, not trusted: each chunk it holds is read back and checked against its
//! hash, and only those that fail are fetched again.
//!
//! [`materialise`] is the one-call form for a source that hands chunks in order.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::manifest::{EntryKind, Limits, Manifest, ManifestError};
use super::{ChunkId, ChunkRef};

/// Why a tree could not be written or does not match its manifest.
#[derive(Debug, thiserror::Error)]
pub enum MaterialiseError {
    #[error("refused manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("{path}: destination already exists")]
    DestExists { path: PathBuf },
    #[error("chunk {}… of {path:?} does not match its hash", &chunk.to_hex()[..16])]
    Corrupt { path: String, chunk: ChunkId },
    #[error("fetching chunk {}… of {path:?}: {source}", &chunk.to_hex()[..16])]
    Source {
        path: String,
        chunk: ChunkId,
        #[source]
        source: io::Error,
    },
    /// A chunk handed to [`Assembly::put`] that the manifest does not list.
    #[error("chunk {chunk} is not part of this tree")]
    Unexpected { chunk: ChunkId },
    /// [`Assembly::finish`] with chunks still missing.
    #[error("{count} chunks of the tree never arrived")]
    Incomplete { count: usize },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `verify_tree` found a difference.
    #[error("{path:?}: {what}")]
    Differs { path: String, what: String },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> MaterialiseError + '_ {
    move |source| MaterialiseError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `<dest>.partial`, next to `dest`.
pub fn staging_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

/// The mode a tree entry gets: the manifest's, without set-user-id and set-group-id.
/// A pushed tree is data; it must never hand a container user someone else's
/// identity (bind mounts from Docker cannot be `nosuid`).
fn tree_mode(mode: u32) -> u32 {
    mode & !0o6000
}

/// A finished tree on this disk whose files may give their bytes to a new one (an
/// earlier version of the same dataset, the last snapshot of a volume).
#[derive(Debug, Clone)]
pub struct Seed {
    pub root: PathBuf,
    pub manifest: Arc<Manifest>,
    /// Whether a whole file may be hard-linked from it: only when both trees stay
    /// read-only (dataset versions). A writable tree (a user's volume) must get
    /// copies, or a write through one tree would change the other.
    pub link: bool,
}

/// Where a chunk goes: an entry of the manifest and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    entry: u32,
    offset: u64,
}

/// What [`Assembly::prepare`] found already on this disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prepared {
    /// Files hard-linked whole from a seed, and their bytes.
    pub linked_files: u64,
    pub linked_bytes: u64,
    /// Bytes copied from seeds chunk by chunk.
    pub seeded_bytes: u64,
    /// Bytes found in place, verified, in the staging directory of an interrupted
    /// earlier assembly.
    pub resumed_bytes: u64,
    /// Bytes of the chunks still missing (each distinct chunk once).
    pub missing_bytes: u64,
}

/// A tree being assembled in its staging directory.
#[derive(Debug)]
pub struct Assembly {
    manifest: Arc<Manifest>,
    dest: PathBuf,
    staging: PathBuf,
    /// Every chunk still to come: its length and where it goes.
    places: HashMap<ChunkId, (u32, Vec<Place>)>,
    /// The subset of `places` not yet put.
    remaining: Mutex<HashSet<ChunkId>>,
    /// Entries hard-linked from a seed: their inode is the seed's, left untouched.
    linked: HashSet<u32>,
    /// The chunks missing after `prepare`, in manifest order.
    missing: Vec<ChunkRef>,
}

/// Identifies a file's content and metadata, for linking a seed's copy.
fn file_key(chunks: &[ChunkRef], mode: u32, mtime_ns: i64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for c in chunks {
        h.update(&c.id.0);
    }
    h.update(&tree_mode(mode).to_le_bytes());
    h.update(&mtime_ns.to_le_bytes());
    *h.finalize().as_bytes()
}

/// Reads `len` bytes at `offset` of `path` (never following a symlink) and checks
/// them against `id`; `None` on any failure (the chunk is then fetched instead).
pub fn read_verified(path: &Path, offset: u64, len: u32, id: &ChunkId) -> Option<Vec<u8>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .ok()?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset).ok()?;
    id.verifies(&buf).then_some(buf)
}

fn open_for_write(path: &Path) -> Result<File, MaterialiseError> {
    OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(io_at(path))
}

/// Creates an empty file of `size` bytes (sparse until its chunks are written).
fn create_sized(path: &Path, size: u64) -> Result<(), MaterialiseError> {
    // create_new fails on anything already there, symlinks included.
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_at(path))?;
    f.set_len(size).map_err(io_at(path))
}

/// Removes whatever is at `path` (a file, a symlink, a whole directory).
fn clear(path: &Path) -> Result<(), MaterialiseError> {
    match force_remove(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_at(path)(e)),
    }
}

impl Assembly {
    /// Lays `manifest` out at `<dest>.partial` (resuming one left by an earlier
    /// attempt) and fills in what `seeds` and the staging directory already hold.
    /// `dest` must not exist.
    pub fn prepare(
        manifest: Arc<Manifest>,
        dest: &Path,
        seeds: &[Seed],
    ) -> Result<(Assembly, Prepared), MaterialiseError> {
        manifest.validate(&Limits::DEFAULT)?;
        if fs::symlink_metadata(dest).is_ok() {
            return Err(MaterialiseError::DestExists {
                path: dest.to_path_buf(),
            });
        }
        let staging = staging_path(dest);
        match fs::symlink_metadata(&staging) {
            Ok(md) if md.is_dir() => {
                // An interrupted finish may have made directories read-only; and
                // nothing the manifest does not list may stay.
                open_up(&staging).map_err(io_at(&staging))?;
                prune(&staging, &manifest)?;
            }
            Ok(_) => {
                clear(&staging)?;
                fs::create_dir(&staging).map_err(io_at(&staging))?;
            }
            Err(_) => fs::create_dir(&staging).map_err(io_at(&staging))?,
        }

        // What the seeds hold: whole files by content and metadata, chunks by id.
        let mut seed_files: HashMap<[u8; 32], (usize, usize)> = HashMap::new();
        let mut seed_chunks: HashMap<ChunkId, (usize, usize, u64)> = HashMap::new();
        for (si, seed) in seeds.iter().enumerate() {
            for (ei, e) in seed.manifest.entries.iter().enumerate() {
                if let EntryKind::File { chunks } = &e.kind {
                    if seed.link {
                        seed_files
                            .entry(file_key(chunks, e.mode, e.mtime_ns))
                            .or_insert((si, ei));
                    }
                    let mut off = 0u64;
                    for c in chunks {
                        seed_chunks.entry(c.id).or_insert((si, ei, off));
                        off += u64::from(c.len);
                    }
                }
            }
        }

        let mut stats = Prepared::default();
        let mut linked = HashSet::new();
        // Chunks to find, in manifest order, and where each goes.
        let mut order: Vec<ChunkRef> = vec![];
        let mut places: HashMap<ChunkId, (u32, Vec<Place>)> = HashMap::new();
        // Chunks already verified in place in the staging directory.
        let mut in_staging: HashMap<ChunkId, Place> = HashMap::new();
        for (ei, e) in manifest.entries.iter().enumerate() {
            let full = staging.join(&e.path);
            let existing = fs::symlink_metadata(&full).ok();
            match &e.kind {
                EntryKind::Directory => match existing {
                    Some(md) if md.is_dir() => {}
                    other => {
                        if other.is_some() {
                            clear(&full)?;
                        }
                        fs::create_dir(&full).map_err(io_at(&full))?;
                    }
                },
                EntryKind::Symlink { target } => {
                    let same = existing.is_some_and(|md| md.file_type().is_symlink())
                        && fs::read_link(&full).is_ok_and(|t| t.as_os_str() == target.as_str());
                    if !same {
                        clear(&full)?;
                        std::os::unix::fs::symlink(target, &full).map_err(io_at(&full))?;
                    }
                }
                EntryKind::File { chunks } => {
                    let entry = ei as u32;
                    let mut pending: Vec<(ChunkRef, u64)> = vec![];
                    let mut fresh = true;
                    if let Some(md) = existing.as_ref().filter(|md| md.is_file()) {
                        // Left by an earlier attempt: keep what still verifies.
                        let mut ok = vec![];
                        let mut off = 0u64;
                        for c in chunks {
                            if read_verified(&full, off, c.len, &c.id).is_some() {
                                ok.push((*c, off));
                            } else {
                                pending.push((*c, off));
                            }
                            off += u64::from(c.len);
                        }
                        if pending.is_empty() && md.len() == e.size {
                            if md.nlink() > 1 {
                                linked.insert(entry);
                            }
                            stats.resumed_bytes += e.size;
                            for (c, off) in ok {
                                in_staging
                                    .entry(c.id)
                                    .or_insert(Place { entry, offset: off });
                            }
                            continue;
                        }
                        if md.nlink() == 1 {
                            // Ours alone: fix its length, keep its good chunks.
                            fresh = false;
                            fs::set_permissions(&full, fs::Permissions::from_mode(0o600))
                                .map_err(io_at(&full))?;
                            open_for_write(&full)?
                                .set_len(e.size)
                                .map_err(io_at(&full))?;
                            for (c, off) in ok {
                                stats.resumed_bytes += u64::from(c.len);
                                in_staging
                                    .entry(c.id)
                                    .or_insert(Place { entry, offset: off });
                            }
                        } else {
                            // Shares an inode it does not match: never write into it.
                            pending.clear();
                        }
                    }
                    if fresh {
                        if existing.is_some() {
                            clear(&full)?;
                        }
                        let key = file_key(chunks, e.mode, e.mtime_ns);
                        if let Some(&(si, sei)) = seed_files.get(&key) {
                            let from = seeds[si].root.join(&seeds[si].manifest.entries[sei].path);
                            if fs::hard_link(&from, &full).is_ok() {
                                linked.insert(entry);
                                stats.linked_files += 1;
                                stats.linked_bytes += e.size;
                                continue;
                            }
                        }
                        create_sized(&full, e.size)?;
                        let mut off = 0u64;
                        pending = chunks
                            .iter()
                            .map(|c| {
                                let at = off;
                                off += u64::from(c.len);
                                (*c, at)
                            })
                            .collect();
                    }
                    for (c, offset) in pending {
                        let slot = places.entry(c.id).or_insert_with(|| {
                            order.push(c);
                            (c.len, vec![])
                        });
                        slot.1.push(Place { entry, offset });
                    }
                }
            }
        }

        let mut assembly = Assembly {
            manifest,
            dest: dest.to_path_buf(),
            staging,
            remaining: Mutex::new(places.keys().copied().collect()),
            places,
            linked,
            missing: vec![],
        };
        // Fill in what is on this disk already: the staging directory first, then
        // the seeds.
        let mut missing = vec![];
        for c in order {
            let local = in_staging
                .get(&c.id)
                .map(|p| (assembly.path_of(p.entry), p.offset))
                .or_else(|| {
                    seed_chunks.get(&c.id).map(|&(si, ei, off)| {
                        (
                            seeds[si].root.join(&seeds[si].manifest.entries[ei].path),
                            off,
                        )
                    })
                });
            let bytes = local.and_then(|(path, off)| read_verified(&path, off, c.len, &c.id));
            match bytes {
                Some(b) => {
                    assembly.put(&c, &b)?;
                    if in_staging.contains_key(&c.id) {
                        stats.resumed_bytes += u64::from(c.len);
                    } else {
                        stats.seeded_bytes += u64::from(c.len);
                    }
                }
                None => {
                    stats.missing_bytes += u64::from(c.len);
                    missing.push(c);
                }
            }
        }
        assembly.missing = missing;
        Ok((assembly, stats))
    }

    fn path_of(&self, entry: u32) -> PathBuf {
        self.staging
            .join(&self.manifest.entries[entry as usize].path)
    }

    /// The chunks still to put after `prepare` (each once, in manifest order).
    pub fn missing(&self) -> &[ChunkRef] {
        &self.missing
    }

    /// How many chunks have not been put yet.
    pub fn remaining(&self) -> usize {
        self.remaining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Checks `bytes` against `chunk` and writes them wherever the manifest places
    /// that chunk. Safe to call from several threads at once. Putting a chunk twice
    /// rewrites the same bytes.
    pub fn put(&self, chunk: &ChunkRef, bytes: &[u8]) -> Result<(), MaterialiseError> {
        let Some((len, places)) = self.places.get(&chunk.id) else {
            return Err(MaterialiseError::Unexpected { chunk: chunk.id });
        };
        if bytes.len() != *len as usize || !chunk.id.verifies(bytes) {
            let path = places
                .first()
                .map(|p| self.manifest.entries[p.entry as usize].path.clone())
                .unwrap_or_default();
            return Err(MaterialiseError::Corrupt {
                path,
                chunk: chunk.id,
            });
        }
        for p in places {
            let path = self.path_of(p.entry);
            open_for_write(&path)?
                .write_all_at(bytes, p.offset)
                .map_err(io_at(&path))?;
        }
        self.remaining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&chunk.id);
        Ok(())
    }

    /// Sets modes and mtimes, makes the tree durable if `sync` (one `syncfs`), and
    /// renames it to `dest`. Every chunk must have been put.
    pub fn finish(&self, sync: bool) -> Result<PathBuf, MaterialiseError> {
        let left = self.remaining();
        if left > 0 {
            return Err(MaterialiseError::Incomplete { count: left });
        }
        let mut dirs = Vec::new();
        for (ei, e) in self.manifest.entries.iter().enumerate() {
            let full = self.staging.join(&e.path);
            match &e.kind {
                EntryKind::Directory => dirs.push(e),
                EntryKind::File { .. } => {
                    if self.linked.contains(&(ei as u32)) {
                        continue;
                    }
                    fs::set_permissions(&full, fs::Permissions::from_mode(tree_mode(e.mode)))
                        .map_err(io_at(&full))?;
                    set_mtime(&full, e.mtime_ns)?;
                }
                EntryKind::Symlink { .. } => set_mtime(&full, e.mtime_ns)?,
            }
        }
        // Deepest first: a directory's mtime is final only once its children exist,
        // and a read-only mode must not stop us writing inside it.
        dirs.sort_by_key(|e| std::cmp::Reverse(e.path.split('/').count()));
        for e in dirs {
            let full = self.staging.join(&e.path);
            fs::set_permissions(&full, fs::Permissions::from_mode(tree_mode(e.mode)))
                .map_err(io_at(&full))?;
            set_mtime(&full, e.mtime_ns)?;
        }
        if sync {
            sync_fs(&self.staging).map_err(io_at(&self.staging))?;
        }
        fs::rename(&self.staging, &self.dest).map_err(io_at(&self.dest))?;
        if sync {
            let parent = self
                .dest
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io_at(parent))?;
        }
        Ok(self.dest.clone())
    }

    /// Gives up: removes the staging directory.
    pub fn abandon(&self) {
        let _ = force_remove(&self.staging);
    }
}

/// Writes `manifest` as a new tree at `dest` (which must not exist), taking each
/// missing chunk's bytes from `source` in order and reporting bytes put to
/// `progress`; durable on return. On error nothing is left behind.
pub fn materialise(
    manifest: &Manifest,
    dest: &Path,
    source: &mut dyn FnMut(&ChunkRef) -> Result<Vec<u8>, io::Error>,
    progress: &mut dyn FnMut(u64),
) -> Result<(), MaterialiseError> {
    let (a, _) = Assembly::prepare(Arc::new(manifest.clone()), dest, &[])?;
    let filled = (|| {
        for c in a.missing() {
            let bytes = source(c).map_err(|source| MaterialiseError::Source {
                path: a
                    .places
                    .get(&c.id)
                    .and_then(|(_, p)| p.first())
                    .map(|p| a.manifest.entries[p.entry as usize].path.clone())
                    .unwrap_or_default(),
                chunk: c.id,
                source,
            })?;
            a.put(c, &bytes)?;
            progress(bytes.len() as u64);
        }
        Ok(())
    })();
    match filled {
        Ok(()) => a.finish(true).map(|_| ()),
        Err(e) => {
            a.abandon();
            Err(e)
        }
    }
}

fn set_mtime(path: &Path, mtime_ns: i64) -> Result<(), MaterialiseError> {
    let t = rustix::fs::Timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_at(path)(e.into()))
}

/// Flushes the whole filesystem holding `dir` (every dirty page of it) in one call:
/// cheaper than an fsync per file for a tree of thousands.
pub fn sync_fs(dir: &Path) -> io::Result<()> {
    let d = File::open(dir)?;
    rustix::fs::syncfs(&d).map_err(io::Error::from)
}

/// Removes from a resumed staging directory every entry the manifest does not list.
fn prune(staging: &Path, manifest: &Manifest) -> Result<(), MaterialiseError> {
    let listed: HashSet<&str> = manifest.entries.iter().map(|e| e.path.as_str()).collect();
    let mut stack = vec![(staging.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        for de in fs::read_dir(&dir).map_err(io_at(&dir))? {
            let de = de.map_err(io_at(&dir))?;
            let name = de.file_name();
            let child = match name.to_str() {
                Some(n) if rel.is_empty() => n.to_owned(),
                Some(n) => format!("{rel}/{n}"),
                None => String::new(),
            };
            if child.is_empty() || !listed.contains(child.as_str()) {
                clear(&de.path())?;
            } else if de.file_type().map_err(io_at(&dir))?.is_dir() {
                stack.push((de.path(), child));
            }
        }
    }
    Ok(())
}

/// Makes every directory under `p` (and `p`) writable by its owner.
fn open_up(p: &Path) -> io::Result<()> {
    fs::set_permissions(p, fs::Permissions::from_mode(0o700))?;
    for de in fs::read_dir(p)? {
        let de = de?;
        if de.file_type()?.is_dir() {
            open_up(&de.path())?;
        }
    }
    Ok(())
}

/// Removes a tree even if some of its directories are read-only.
pub fn force_remove(path: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(path)?;
    if !md.is_dir() {
        return fs::remove_file(path);
    }
    let _ = open_up(path);
    fs::remove_dir_all(path)
}

/// Checks that the tree at `dir` is exactly `manifest`: every file's bytes against
/// its chunk list, kinds, modes of files and directories, symlink targets, and no
/// entry the manifest does not list. mtimes are not compared.
pub fn verify_tree(manifest: &Manifest, dir: &Path) -> Result<(), MaterialiseError> {
    let differs = |path: &str, what: String| MaterialiseError::Differs {
        path: path.to_owned(),
        what,
    };
    for e in &manifest.entries {
        let full = dir.join(&e.path);
        let md = fs::symlink_metadata(&full).map_err(io_at(&full))?;
        let ft = md.file_type();
        match &e.kind {
            EntryKind::Directory if !ft.is_dir() => {
                return Err(differs(&e.path, "is not a directory".into()))
            }
            EntryKind::Symlink { target } => {
                if !ft.is_symlink() {
                    return Err(differs(&e.path, "is not a symlink".into()));
                }
                let t = fs::read_link(&full).map_err(io_at(&full))?;
                if t.as_os_str() != target.as_str() {
                    return Err(differs(
                        &e.path,
                        format!("symlink points to {t:?}, manifest says {target:?}"),
                    ));
                }
                continue;
            }
            EntryKind::File { chunks } => {
                if !ft.is_file() {
                    return Err(differs(&e.path, "is not a regular file".into()));
                }
                if md.len() != e.size {
                    return Err(differs(
                        &e.path,
                        format!("is {} bytes, manifest says {}", md.len(), e.size),
                    ));
                }
                let mut f = File::open(&full).map_err(io_at(&full))?;
                let mut buf = Vec::new();
                for c in chunks {
                    buf.resize(c.len as usize, 0);
                    f.read_exact(&mut buf).map_err(io_at(&full))?;
                    if !c.id.verifies(&buf) {
                        return Err(MaterialiseError::Corrupt {
                            path: e.path.clone(),
                            chunk: c.id,
                        });
                    }
                }
            }
            EntryKind::Directory => {}
        }
        if md.mode() & 0o7777 != tree_mode(e.mode) {
            return Err(differs(
                &e.path,
                format!(
                    "mode {:o}, manifest says {:o}",
                    md.mode() & 0o7777,
                    tree_mode(e.mode)
                ),
            ));
        }
    }
    let listed: HashSet<&str> = manifest.entries.iter().map(|e| e.path.as_str()).collect();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((p, rel)) = stack.pop() {
        for de in fs::read_dir(&p).map_err(io_at(&p))? {
            let de = de.map_err(io_at(&p))?;
            let name = de.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if !listed.contains(child.as_str()) {
                return Err(differs(&child, "is not in the manifest".into()));
            }
            if de.file_type().map_err(io_at(&p))?.is_dir() {
                stack.push((de.path(), child));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks::dir::ChunkDir;
    use crate::chunks::manifest::Entry;
    use crate::chunks::scan::scan;
    use crate::chunks::DEFAULT_PARAMS;

    fn tree(root: &Path) {
        fs::create_dir_all(root.join("data/small")).unwrap();
        for i in 0..150 {
            fs::write(
                root.join(format!("data/small/f{i:03}.txt")),
                format!("file {i}\n").repeat(i % 7),
            )
            .unwrap();
        }
        fs::write(root.join("empty"), b"").unwrap();
        let big: Vec<u8> = (0..5_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        fs::write(root.join("data/big.bin"), &big).unwrap();
        fs::write(root.join("data/copy.bin"), &big[..1_000_000]).unwrap();
        fs::write(root.join("naïve ☃ résumé.txt"), "ünïcödé").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
        std::os::unix::fs::symlink("../..", root.join("data/up")).unwrap();
        fs::write(root.join("data/run.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("data/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir(root.join("ro")).unwrap();
        fs::write(root.join("ro/secret"), b"s").unwrap();
        fs::set_permissions(root.join("ro/secret"), fs::Permissions::from_mode(0o400)).unwrap();
        fs::set_permissions(root.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    }

    fn store(root: &Path, dir: &ChunkDir) -> Manifest {
        let s = scan(root, DEFAULT_PARAMS, None, &mut |_| {}).unwrap();
        for (id, loc) in &s.locations {
            let mut f = File::open(root.join(&loc.path)).unwrap();
            let mut buf = vec![0; loc.len as usize];
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(loc.offset)).unwrap();
            f.read_exact(&mut buf).unwrap();
            dir.put(id, &buf, false).unwrap();
        }
        s.manifest
    }

    /// A temporary directory holding the test tree at `src` and an empty chunk
    /// directory.
    fn fixture() -> (tempfile::TempDir, PathBuf, ChunkDir) {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        tree(&src);
        let dir = ChunkDir::open(t.path().join("chunks")).unwrap();
        (t, src, dir)
    }

    fn from(dir: &ChunkDir) -> impl FnMut(&ChunkRef) -> Result<Vec<u8>, io::Error> + '_ {
        move |c| {
            dir.get_chunk(&c.id)
                .map_err(io::Error::other)?
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "missing"))
        }
    }

    fn compare(a: &Path, b: &Path) {
        for de in fs::read_dir(a).unwrap() {
            let de = de.unwrap();
            let (pa, pb) = (de.path(), b.join(de.file_name()));
            let (ma, mb) = (
                fs::symlink_metadata(&pa).unwrap(),
                fs::symlink_metadata(&pb).unwrap(),
            );
            assert_eq!(ma.file_type(), mb.file_type(), "{pa:?}");
            if ma.file_type().is_symlink() {
                assert_eq!(fs::read_link(&pa).unwrap(), fs::read_link(&pb).unwrap());
                continue;
            }
            assert_eq!(ma.mode(), mb.mode(), "{pa:?}");
            assert_eq!(ma.mtime(), mb.mtime(), "{pa:?}");
            if ma.is_dir() {
                compare(&pa, &pb);
            } else {
                assert_eq!(fs::read(&pa).unwrap(), fs::read(&pb).unwrap(), "{pa:?}");
            }
        }
    }

    #[test]
    fn round_trip_scan_store_materialise() {
        let (t, src, dir) = fixture();
        let m = store(&src, &dir);
        let dest = t.path().join("out");
        let mut written = 0;
        materialise(&m, &dest, &mut from(&dir), &mut |n| written += n).unwrap();
        // Each distinct chunk is asked for once, however often the tree holds it.
        let unique: u64 = m.unique_chunks().iter().map(|c| u64::from(c.len)).sum();
        assert!(unique < m.total_bytes());
        assert_eq!(written, unique);
        assert!(!staging_path(&dest).exists());
        compare(&src, &dest);
        compare(&dest, &src);
        verify_tree(&m, &dest).unwrap();
        // a rescan of the copy is the same manifest (modes and mtimes kept)
        let again = scan(&dest, DEFAULT_PARAMS, None, &mut |_| {}).unwrap();
        assert_eq!(again.manifest.id(), m.id());
        // dest exists now: refused
        let e = materialise(&m, &dest, &mut from(&dir), &mut |_| {}).unwrap_err();
        assert!(matches!(e, MaterialiseError::DestExists { .. }), "{e}");
    }

    #[test]
    fn corrupt_chunk_is_detected_and_staging_removed() {
        let (t, src, dir) = fixture();
        let m = store(&src, &dir);
        let big = m.entries.iter().find(|e| e.path == "data/big.bin").unwrap();
        let EntryKind::File { chunks } = &big.kind else {
            panic!()
        };
        let bad = chunks[1].id;
        let dest = t.path().join("out");
        // a stale staging dir from a crash is replaced
        fs::create_dir_all(staging_path(&dest).join("junk")).unwrap();
        let mut get = from(&dir);
        let mut source = |c: &ChunkRef| {
            let mut b = get(c)?;
            if c.id == bad {
                b[0] ^= 1;
            }
            Ok(b)
        };
        let e = materialise(&m, &dest, &mut source, &mut |_| {}).unwrap_err();
        assert!(
            matches!(&e, MaterialiseError::Corrupt { path, chunk } if path == "data/big.bin" && *chunk == bad),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "chunk {}… of \"data/big.bin\" does not match its hash",
                &bad.to_hex()[..16]
            )
        );
        assert!(!dest.exists());
        assert!(!staging_path(&dest).exists());
    }

    #[test]
    fn a_seed_lends_whole_files_and_chunks_and_only_the_rest_is_missing() {
        let (t, src, dir) = fixture();
        let m1 = store(&src, &dir);
        let v1 = t.path().join("v1");
        materialise(&m1, &v1, &mut from(&dir), &mut |_| {}).unwrap();
        // Version 2: one byte of the big file changed, one new file.
        let mut big = fs::read(src.join("data/big.bin")).unwrap();
        big[2_500_000] ^= 0xff;
        fs::write(src.join("data/big.bin"), &big).unwrap();
        fs::write(src.join("new.txt"), b"brand new").unwrap();
        let m2 = store(&src, &dir);
        let seed = Seed {
            root: v1.clone(),
            manifest: Arc::new(m1.clone()),
            link: true,
        };
        let v2 = t.path().join("v2");
        let (a, got) = Assembly::prepare(Arc::new(m2.clone()), &v2, &[seed]).unwrap();
        // Unchanged files are the same inode; the big file is copied but for the
        // chunk around the change; the new file comes from the wire.
        let big_chunks = |m: &Manifest| match &m
            .entries
            .iter()
            .find(|e| e.path == "data/big.bin")
            .unwrap()
            .kind
        {
            EntryKind::File { chunks } => chunks.clone(),
            _ => unreachable!(),
        };
        let old: HashSet<ChunkId> = big_chunks(&m1).iter().map(|c| c.id).collect();
        let fresh: Vec<ChunkRef> = big_chunks(&m2)
            .into_iter()
            .filter(|c| !old.contains(&c.id))
            .collect();
        let mut want: Vec<ChunkId> = fresh.iter().map(|c| c.id).collect();
        want.push(ChunkId::of(b"brand new"));
        want.sort();
        let mut missing: Vec<ChunkId> = a.missing().iter().map(|c| c.id).collect();
        missing.sort();
        assert_eq!(missing, want);
        assert!(got.linked_files >= 150, "{got:?}");
        assert!(got.seeded_bytes > 1_000_000, "{got:?}");
        assert_eq!(got.resumed_bytes, 0);
        for c in a.missing().to_vec() {
            a.put(&c, &dir.get_chunk(&c.id).unwrap().unwrap()).unwrap();
        }
        let out = a.finish(false).unwrap();
        assert_eq!(out, v2);
        verify_tree(&m2, &v2).unwrap();
        verify_tree(&m1, &v1).unwrap();
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&v1.join("data/run.sh")), ino(&v2.join("data/run.sh")));
        assert_ne!(ino(&v1.join("data/big.bin")), ino(&v2.join("data/big.bin")));
        compare(&src, &v2);
    }

    #[test]
    fn an_interrupted_assembly_resumes_with_what_verifies_and_drops_the_rest() {
        let (t, src, dir) = fixture();
        let m = Arc::new(store(&src, &dir));
        let dest = t.path().join("out");
        let (a, _) = Assembly::prepare(m.clone(), &dest, &[]).unwrap();
        let all = a.missing().to_vec();
        // Half arrive, then the process "dies".
        for c in all.iter().step_by(2) {
            a.put(c, &dir.get_chunk(&c.id).unwrap().unwrap()).unwrap();
        }
        drop(a);
        // Damage one chunk already put, and leave junk the manifest does not list.
        let staging = staging_path(&dest);
        let mut big = fs::read(staging.join("data/big.bin")).unwrap();
        big[10] ^= 1;
        fs::write(staging.join("data/big.bin"), &big).unwrap();
        fs::write(staging.join("junk"), b"x").unwrap();
        let (a, got) = Assembly::prepare(m.clone(), &dest, &[]).unwrap();
        assert!(got.resumed_bytes > 0);
        // The damaged chunk is not trusted: it is fetched again or copied from where
        // else the tree holds it (verify_tree below checks every byte).
        let now_missing: HashSet<ChunkId> = a.missing().iter().map(|c| c.id).collect();
        assert!(!now_missing.is_empty());
        assert!(
            now_missing.len() < all.len() / 2 + 2,
            "{} of {}",
            now_missing.len(),
            all.len()
        );
        assert!(matches!(
            a.put(&all[0], b"not it").unwrap_err(),
            MaterialiseError::Corrupt { .. } | MaterialiseError::Unexpected { .. }
        ));
        let unknown = ChunkRef {
            id: ChunkId::of(b"?"),
            len: 1,
        };
        assert!(matches!(
            a.put(&unknown, b"?").unwrap_err(),
            MaterialiseError::Unexpected { .. }
        ));
        for c in a.missing().to_vec() {
            a.put(&c, &dir.get_chunk(&c.id).unwrap().unwrap()).unwrap();
        }
        a.finish(true).unwrap();
        verify_tree(&m, &dest).unwrap();
    }

    #[test]
    fn finish_refuses_a_tree_with_chunks_missing() {
        let (t, src, dir) = fixture();
        let m = Arc::new(store(&src, &dir));
        let dest = t.path().join("out");
        let (a, _) = Assembly::prepare(m, &dest, &[]).unwrap();
        let n = a.missing().len();
        let e = a.finish(false).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{n} chunks of the tree never arrived")
        );
        assert!(!dest.exists());
    }

    #[test]
    fn verify_tree_finds_differences() {
        let (_t, src, dir) = fixture();
        let m = store(&src, &dir);
        verify_tree(&m, &src).unwrap();
        let mut bytes = fs::read(src.join("data/big.bin")).unwrap();
        bytes[4_000_000] ^= 1;
        fs::write(src.join("data/big.bin"), &bytes).unwrap();
        assert!(matches!(
            verify_tree(&m, &src).unwrap_err(),
            MaterialiseError::Corrupt { .. }
        ));
        bytes[4_000_000] ^= 1;
        fs::write(src.join("data/big.bin"), &bytes).unwrap();
        fs::write(src.join("extra"), b"").unwrap();
        let e = verify_tree(&m, &src).unwrap_err();
        assert_eq!(e.to_string(), "\"extra\": is not in the manifest");
        fs::remove_file(src.join("extra")).unwrap();
        fs::set_permissions(src.join("empty"), fs::Permissions::from_mode(0o600)).unwrap();
        assert!(verify_tree(&m, &src)
            .unwrap_err()
            .to_string()
            .contains("mode 600"));
    }

    #[test]
    fn symlink_as_parent_is_refused_before_writing() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let m = Manifest::new(
            DEFAULT_PARAMS,
            vec![
                Entry {
                    path: "a".into(),
                    kind: EntryKind::Symlink {
                        target: outside.to_string_lossy().into_owned(),
                    },
                    mode: 0o777,
                    size: 0,
                    mtime_ns: 0,
                },
                Entry {
                    path: "a/evil".into(),
                    kind: EntryKind::File { chunks: vec![] },
                    mode: 0o644,
                    size: 0,
                    mtime_ns: 0,
                },
            ],
        );
        let dest = t.path().join("out");
        let e =
            materialise(&m, &dest, &mut |_| panic!("no chunk needed"), &mut |_| {}).unwrap_err();
        assert!(
            e.to_string()
                .contains(r#"entry "a/evil": parent "a" is not a directory in the manifest"#),
            "{e}"
        );
        assert!(!dest.exists());
        assert!(!staging_path(&dest).exists());
        assert!(!outside.join("evil").exists());
    }
}
