//! A manifest written out as a tree from verified chunks.
//!
//! The manifest is validated whole before anything is written (so a symlink can
//! never be used as a path prefix: every parent is a directory this code created).
//! The tree is built in a sibling staging directory `<dest>.partial`, every chunk is
//! checked against its hash, modes and mtimes are set (directories last, deepest
//! first, since writing their children changes their mtime), the filesystem is
//! synced once, and the staging directory is renamed to `dest`: a reader sees no
//! tree or the whole tree. On any error the staging directory is removed.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

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

/// Writes `manifest` as a new tree at `dest` (which must not exist), taking each
/// The mode a tree entry gets: the manifest's, without set-user-id and set-group-id.
/// A pushed tree is data; it must never hand a container user someone else's
/// identity (bind mounts from Docker cannot be `nosuid`).
fn tree_mode(mode: u32) -> u32 {
    mode & !0o6000
}

/// chunk's bytes from `source` and reporting bytes written to `progress`.
pub fn materialise(
    manifest: &Manifest,
    dest: &Path,
    source: &mut dyn FnMut(&ChunkRef) -> Result<Vec<u8>, io::Error>,
    progress: &mut dyn FnMut(u64),
) -> Result<(), MaterialiseError> {
    manifest.validate(&Limits::DEFAULT)?;
    if fs::symlink_metadata(dest).is_ok() {
        return Err(MaterialiseError::DestExists {
            path: dest.to_path_buf(),
        });
    }
    let staging = staging_path(dest);
    if fs::symlink_metadata(&staging).is_ok() {
        // Left by a crash: never reused, its contents are unverified.
        force_remove(&staging).map_err(io_at(&staging))?;
    }
    fs::create_dir(&staging).map_err(io_at(&staging))?;
    let built = build(manifest, &staging, source, progress).and_then(|()| {
        let d = File::open(&staging).map_err(io_at(&staging))?;
        rustix::fs::syncfs(&d).map_err(|e| io_at(&staging)(e.into()))?;
        fs::rename(&staging, dest).map_err(io_at(dest))
    });
    if let Err(e) = built {
        let _ = force_remove(&staging);
        return Err(e);
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io_at(parent))?;
    Ok(())
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

fn build(
    manifest: &Manifest,
    staging: &Path,
    source: &mut dyn FnMut(&ChunkRef) -> Result<Vec<u8>, io::Error>,
    progress: &mut dyn FnMut(u64),
) -> Result<(), MaterialiseError> {
    let mut dirs = Vec::new();
    for e in &manifest.entries {
        let full = staging.join(&e.path);
        match &e.kind {
            EntryKind::Directory => {
                fs::create_dir(&full).map_err(io_at(&full))?;
                dirs.push(e);
            }
            EntryKind::File { chunks } => {
                // create_new fails on anything already there, symlinks included.
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&full)
                    .map_err(io_at(&full))?;
                let mut written = 0u64;
                for c in chunks {
                    let bytes = source(c).map_err(|source| MaterialiseError::Source {
                        path: e.path.clone(),
                        chunk: c.id,
                        source,
                    })?;
                    if bytes.len() != c.len as usize || !c.id.verifies(&bytes) {
                        return Err(MaterialiseError::Corrupt {
                            path: e.path.clone(),
                            chunk: c.id,
                        });
                    }
                    f.write_all(&bytes).map_err(io_at(&full))?;
                    written += bytes.len() as u64;
                    progress(bytes.len() as u64);
                }
                if written != e.size {
                    // validate() guarantees this; kept as a last line of defence.
                    return Err(MaterialiseError::Differs {
                        path: e.path.clone(),
                        what: format!("wrote {written} bytes, manifest says {}", e.size),
                    });
                }
                f.set_permissions(fs::Permissions::from_mode(tree_mode(e.mode)))
                    .map_err(io_at(&full))?;
                drop(f);
                set_mtime(&full, e.mtime_ns)?;
            }
            EntryKind::Symlink { target } => {
                std::os::unix::fs::symlink(target, &full).map_err(io_at(&full))?;
                set_mtime(&full, e.mtime_ns)?;
            }
        }
    }
    // Deepest first: a directory's mtime is final only once its children exist,
    // and a read-only mode must not stop us writing inside it.
    dirs.sort_by_key(|e| std::cmp::Reverse(e.path.split('/').count()));
    for e in dirs {
        let full = staging.join(&e.path);
        fs::set_permissions(&full, fs::Permissions::from_mode(tree_mode(e.mode)))
            .map_err(io_at(&full))?;
        set_mtime(&full, e.mtime_ns)?;
    }
    Ok(())
}

/// Removes a tree even if some of its directories are read-only.
fn force_remove(path: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(path)?;
    if !md.is_dir() {
        return fs::remove_file(path);
    }
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
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        tree(&src);
        let dir = ChunkDir::open(t.path().join("chunks")).unwrap();
        let m = store(&src, &dir);
        let dest = t.path().join("out");
        let mut written = 0;
        materialise(&m, &dest, &mut from(&dir), &mut |n| written += n).unwrap();
        assert_eq!(written, m.total_bytes());
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
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        tree(&src);
        let dir = ChunkDir::open(t.path().join("chunks")).unwrap();
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
    fn verify_tree_finds_differences() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        tree(&src);
        let dir = ChunkDir::open(t.path().join("chunks")).unwrap();
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
