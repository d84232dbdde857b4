//! A tree as a manifest: versioned, postcard-encoded, named by the BLAKE3 hash of
//! its encoding, and validated whole before anyone trusts a byte of it.
//!
//! [`Manifest::decode`] is the one door for manifests that came from elsewhere: it
//! bounds the encoded size first, reads the format and entry count before decoding
//! the entries, then [`Manifest::validate`]s every rule. A manifest that breaks one
//! rule is refused whole, with a message naming the rule and the path.

use std::cmp::Ordering;
use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::{ChunkId, ChunkRef, Params, MAX_CHUNK_LEN};

/// The manifest format this build writes and reads.
pub const FORMAT: u32 = 1;

/// A manifest's name: the BLAKE3 hash of its encoding (same shape as a chunk's).
pub type ManifestId = super::ChunkId;

/// What an entry is. Nothing else exists in a manifest: no devices, fifos, sockets
/// or hard links.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A regular file: its bytes are its chunks, in order.
    File {
        chunks: Vec<ChunkRef>,
    },
    Directory,
    /// A symbolic link and its target, as written (never followed by Cairn).
    Symlink {
        target: String,
    },
}

/// One path in the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative, `/`-separated, no `.`/`..`/empty components, no NUL.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits only (`0o7777`).
    pub mode: u32,
    /// Bytes of a file; 0 for the rest. Must equal the sum of the chunk lengths.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

/// A whole tree. Entries are sorted by path components (see [`path_cmp`]), so
/// every directory comes before its children.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`]; a manifest of another format is refused with a clear message.
    pub format: u32,
    /// The chunker sizes the files were cut with (a later scan must use the same
    /// to reuse chunks).
    pub params: Params,
    pub entries: Vec<Entry>,
}

/// Bounds on what a manifest may hold; checked by [`Manifest::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_entries: usize,
    pub max_path_bytes: usize,
    pub max_component_bytes: usize,
    pub max_depth: usize,
    pub max_total_bytes: u64,
    pub max_symlink_target: usize,
    pub max_encoded_bytes: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        max_entries: 500_000,
        max_path_bytes: 4096,
        max_component_bytes: 255,
        max_depth: 64,
        max_total_bytes: 16 << 40,
        max_symlink_target: 4096,
        max_encoded_bytes: 256 << 20,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {len} bytes, at most {max} allowed")]
    TooLarge { len: usize, max: usize },
    #[error("unsupported manifest format {found} (this build reads {FORMAT})")]
    Format { found: u32 },
    #[error("manifest does not decode: {0}")]
    Decode(String),
    #[error("manifest params: {0}")]
    Params(String),
    #[error("{count} entries, at most {max} allowed")]
    TooManyEntries { count: u64, max: usize },
    #[error("entries not sorted or duplicated at {path:?}")]
    Unsorted { path: String },
    /// One entry breaks a rule; `rule` says which.
    #[error("entry {path:?}: {rule}")]
    Entry { path: String, rule: String },
    #[error("files total {total} bytes, at most {max} allowed")]
    TotalTooLarge { total: u64, max: u64 },
}

fn entry_err(path: &str, rule: impl Into<String>) -> ManifestError {
    ManifestError::Entry {
        path: path.to_owned(),
        rule: rule.into(),
    }
}

/// The order of entries: by `/`-separated components, each compared bytewise, so
/// `a` < `a/b` < `a.b` (plain bytewise order would put `a.b` between `a` and
/// `a/b`, separating a directory from its children).
pub fn path_cmp(a: &str, b: &str) -> Ordering {
    a.split('/').cmp(b.split('/'))
}

/// The parent of a manifest path (`None` for a top-level entry).
pub fn parent_of(path: &str) -> Option<&str> {
    path.rfind('/').map(|i| &path[..i])
}

impl Manifest {
    /// A manifest of this build's format; sorts the entries.
    pub fn new(params: Params, mut entries: Vec<Entry>) -> Self {
        entries.sort_by(|a, b| path_cmp(&a.path, &b.path));
        Manifest {
            format: FORMAT,
            params,
            entries,
        }
    }

    /// The postcard encoding (what [`Manifest::id`] hashes).
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data to a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// The manifest's name.
    pub fn id(&self) -> ManifestId {
        ChunkId::of(&self.encode())
    }

    /// Decodes and validates a manifest from elsewhere. The size is checked before
    /// anything is decoded, and the format and entry count before the entries are.
    /// (postcard itself never preallocates more than serde's cautious 1 MiB for a
    /// length prefix, so a hostile prefix cannot allocate beyond the input either.)
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Manifest, ManifestError> {
        if bytes.len() > limits.max_encoded_bytes {
            return Err(ManifestError::TooLarge {
                len: bytes.len(),
                max: limits.max_encoded_bytes,
            });
        }
        let derr = |e: postcard::Error| ManifestError::Decode(e.to_string());
        // The format comes first in the encoding; read it alone so that a manifest
        // of another format gets that message rather than a decode error.
        let (format, rest) = postcard::take_from_bytes::<u32>(bytes).map_err(derr)?;
        if format != FORMAT {
            return Err(ManifestError::Format { found: format });
        }
        let (_params, rest) = postcard::take_from_bytes::<Params>(rest).map_err(derr)?;
        // A sequence length is a varint, the same encoding as a u64.
        let (count, _) = postcard::take_from_bytes::<u64>(rest).map_err(derr)?;
        if count > limits.max_entries as u64 {
            return Err(ManifestError::TooManyEntries {
                count,
                max: limits.max_entries,
            });
        }
        let (m, rest) = postcard::take_from_bytes::<Manifest>(bytes).map_err(derr)?;
        if !rest.is_empty() {
            return Err(ManifestError::Decode(format!(
                "{} trailing bytes after the manifest",
                rest.len()
            )));
        }
        m.validate(limits)?;
        Ok(m)
    }

    /// Checks every rule; the first broken one is the error.
    pub fn validate(&self, limits: &Limits) -> Result<(), ManifestError> {
        if self.format != FORMAT {
            return Err(ManifestError::Format { found: self.format });
        }
        self.params.check().map_err(ManifestError::Params)?;
        if self.entries.len() > limits.max_entries {
            return Err(ManifestError::TooManyEntries {
                count: self.entries.len() as u64,
                max: limits.max_entries,
            });
        }
        let mut dirs: HashSet<&str> = HashSet::new();
        let mut total: u64 = 0;
        let mut prev: Option<&str> = None;
        for e in &self.entries {
            let p = e.path.as_str();
            check_path(p, limits)?;
            if let Some(prev) = prev {
                if path_cmp(prev, p) != Ordering::Less {
                    return Err(ManifestError::Unsorted { path: p.to_owned() });
                }
            }
            prev = Some(p);
            // Every parent must be a directory listed earlier: this is what stops a
            // symlink (or a file) being used as a path prefix when materialising.
            if let Some(parent) = parent_of(p) {
                if !dirs.contains(parent) {
                    return Err(entry_err(
                        p,
                        format!("parent {parent:?} is not a directory in the manifest"),
                    ));
                }
            }
            if e.mode & !0o7777 != 0 {
                return Err(entry_err(
                    p,
                    format!("mode {:o} has bits outside 0o7777", e.mode),
                ));
            }
            match &e.kind {
                EntryKind::File { chunks } => {
                    let mut sum: u64 = 0;
                    for c in chunks {
                        if c.len == 0 || c.len > MAX_CHUNK_LEN {
                            return Err(entry_err(
                                p,
                                format!(
                                    "chunk {} has length {}, allowed 1..={MAX_CHUNK_LEN}",
                                    c.id, c.len
                                ),
                            ));
                        }
                        sum += u64::from(c.len);
                    }
                    if sum != e.size {
                        return Err(entry_err(
                            p,
                            format!("declared size {} but its chunks hold {sum} bytes", e.size),
                        ));
                    }
                    total = total.saturating_add(sum);
                    if total > limits.max_total_bytes {
                        return Err(ManifestError::TotalTooLarge {
                            total,
                            max: limits.max_total_bytes,
                        });
                    }
                }
                EntryKind::Directory => {
                    if e.size != 0 {
                        return Err(entry_err(p, "a directory must have size 0"));
                    }
                    dirs.insert(p);
                }
                EntryKind::Symlink { target } => {
                    if e.size != 0 {
                        return Err(entry_err(p, "a symlink must have size 0"));
                    }
                    if target.is_empty() {
                        return Err(entry_err(p, "symlink target is empty"));
                    }
                    if target.contains('\0') {
                        return Err(entry_err(p, "symlink target contains NUL"));
                    }
                    if target.len() > limits.max_symlink_target {
                        return Err(entry_err(
                            p,
                            format!(
                                "symlink target is {} bytes, at most {} allowed",
                                target.len(),
                                limits.max_symlink_target
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Bytes of all files (saturating).
    pub fn total_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File { .. }))
            .fold(0u64, |a, e| a.saturating_add(e.size))
    }

    /// Number of regular files.
    pub fn file_count(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File { .. }))
            .count() as u64
    }

    /// Every chunk the files name, each once, in first-seen order.
    pub fn unique_chunks(&self) -> Vec<ChunkRef> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for e in &self.entries {
            if let EntryKind::File { chunks } = &e.kind {
                for c in chunks {
                    if seen.insert(c.id) {
                        out.push(*c);
                    }
                }
            }
        }
        out
    }
}

fn check_path(p: &str, limits: &Limits) -> Result<(), ManifestError> {
    if p.is_empty() {
        return Err(entry_err(p, "path is empty"));
    }
    if p.len() > limits.max_path_bytes {
        return Err(entry_err(
            p,
            format!(
                "path is {} bytes, at most {} allowed",
                p.len(),
                limits.max_path_bytes
            ),
        ));
    }
    if p.starts_with('/') {
        return Err(entry_err(p, "path is absolute"));
    }
    if p.contains('\0') {
        return Err(entry_err(p, "path contains NUL"));
    }
    let mut depth = 0;
    for c in p.split('/') {
        depth += 1;
        match c {
            "" => return Err(entry_err(p, "path has an empty component")),
            "." | ".." => return Err(entry_err(p, format!("path component {c:?} is not allowed"))),
            _ if c.len() > limits.max_component_bytes => {
                return Err(entry_err(
                    p,
                    format!(
                        "path component is {} bytes, at most {} allowed",
                        c.len(),
                        limits.max_component_bytes
                    ),
                ))
            }
            _ => {}
        }
    }
    if depth > limits.max_depth {
        return Err(entry_err(
            p,
            format!("path is {depth} deep, at most {} allowed", limits.max_depth),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks::DEFAULT_PARAMS;

    fn file(path: &str, data: &[u8]) -> Entry {
        let chunks = if data.is_empty() {
            vec![]
        } else {
            vec![ChunkRef {
                id: ChunkId::of(data),
                len: data.len() as u32,
            }]
        };
        Entry {
            path: path.into(),
            kind: EntryKind::File { chunks },
            mode: 0o644,
            size: data.len() as u64,
            mtime_ns: 0,
        }
    }
    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Directory,
            mode: 0o755,
            size: 0,
            mtime_ns: 0,
        }
    }
    fn link(path: &str, target: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Symlink {
                target: target.into(),
            },
            mode: 0o777,
            size: 0,
            mtime_ns: 0,
        }
    }
    fn good() -> Manifest {
        Manifest::new(
            DEFAULT_PARAMS,
            vec![
                file("a.b", b"x"),
                dir("a"),
                file("a/b", b"hello"),
                link("l", "/etc"),
                file("a/c", b"hello"),
                file("empty", b""),
            ],
        )
    }
    fn refused(m: &Manifest) -> String {
        let e = m.validate(&Limits::DEFAULT).unwrap_err().to_string();
        // decode of the encoding refuses it too, with the same message
        let d = Manifest::decode(&m.encode(), &Limits::DEFAULT)
            .unwrap_err()
            .to_string();
        assert_eq!(e, d);
        e
    }
    fn with(entries: Vec<Entry>) -> Manifest {
        Manifest {
            format: FORMAT,
            params: DEFAULT_PARAMS,
            entries,
        }
    }

    #[test]
    fn round_trip_and_accessors() {
        let m = good();
        let paths: Vec<_> = m.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "a/b", "a/c", "a.b", "empty", "l"]);
        let d = Manifest::decode(&m.encode(), &Limits::DEFAULT).unwrap();
        assert_eq!(d, m);
        assert_eq!(d.id(), m.id());
        assert_eq!(m.total_bytes(), 11);
        assert_eq!(m.file_count(), 4);
        let u = m.unique_chunks();
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].id, ChunkId::of(b"hello"));
    }

    #[test]
    fn path_rules() {
        for (p, msg) in [
            (
                "a/../b",
                r#"entry "a/../b": path component ".." is not allowed"#,
            ),
            ("./b", r#"entry "./b": path component "." is not allowed"#),
            ("/etc", r#"entry "/etc": path is absolute"#),
            ("", r#"entry "": path is empty"#),
            ("a//b", r#"entry "a//b": path has an empty component"#),
            ("a/", r#"entry "a/": path has an empty component"#),
            ("x\0y", r#"entry "x\0y": path contains NUL"#),
        ] {
            assert_eq!(refused(&with(vec![dir("a"), file(p, b"1")])), msg, "{p}");
        }
        // backslash is an ordinary byte in a name
        with(vec![file("a\\b", b"1")])
            .validate(&Limits::DEFAULT)
            .unwrap();
        let long = "x".repeat(256);
        assert!(refused(&with(vec![file(&long, b"1")])).contains("path component is 256 bytes"));
        let deep: Vec<String> = (1..=65).map(|n| vec!["d"; n].join("/")).collect();
        let mut es: Vec<Entry> = deep[..64].iter().map(|p| dir(p)).collect();
        es.push(file(&format!("{}/f", deep[63]), b"1"));
        assert!(refused(&with(es)).contains("65 deep, at most 64"));
        let mut lim = Limits::DEFAULT;
        lim.max_path_bytes = 3;
        assert!(with(vec![file("abcd", b"1")])
            .validate(&lim)
            .unwrap_err()
            .to_string()
            .contains("path is 4 bytes, at most 3"));
    }

    #[test]
    fn parent_must_be_a_directory_listed() {
        let m = with(vec![link("a", "/etc"), file("a/passwd", b"x")]);
        assert_eq!(
            refused(&m),
            r#"entry "a/passwd": parent "a" is not a directory in the manifest"#
        );
        let m = with(vec![file("a", b"1"), file("a/b", b"x")]);
        assert!(refused(&m).contains(r#"parent "a" is not a directory"#));
        let m = with(vec![file("a/b", b"x")]);
        assert!(refused(&m).contains(r#"parent "a" is not a directory"#));
    }

    #[test]
    fn order_and_duplicates() {
        let m = with(vec![file("b", b"1"), file("a", b"1")]);
        assert_eq!(refused(&m), r#"entries not sorted or duplicated at "a""#);
        let m = with(vec![file("a", b"1"), file("a", b"1")]);
        assert_eq!(refused(&m), r#"entries not sorted or duplicated at "a""#);
        // bytewise order would be a, a.b, a/b: refused, the directory split
        let m = with(vec![dir("a"), file("a.b", b"1"), file("a/b", b"1")]);
        assert!(refused(&m).contains("not sorted"));
    }

    #[test]
    fn size_and_chunk_rules() {
        let mut e = file("x", &[7u8; 1024]);
        e.size = 10 << 30;
        assert_eq!(
            refused(&with(vec![e])),
            r#"entry "x": declared size 10737418240 but its chunks hold 1024 bytes"#
        );
        let mut e = file("x", b"1");
        if let EntryKind::File { chunks } = &mut e.kind {
            chunks[0].len = 0;
        }
        e.size = 0;
        assert!(refused(&with(vec![e])).contains("has length 0"));
        let mut e = file("x", b"1");
        if let EntryKind::File { chunks } = &mut e.kind {
            chunks[0].len = MAX_CHUNK_LEN + 1;
        }
        e.size = u64::from(MAX_CHUNK_LEN + 1);
        assert!(refused(&with(vec![e])).contains("has length 4194305"));
        let mut d = dir("d");
        d.size = 1;
        assert!(refused(&with(vec![d])).contains("directory must have size 0"));
        let mut lim = Limits::DEFAULT;
        lim.max_total_bytes = 3;
        let m = with(vec![file("a", b"12"), file("b", b"34")]);
        assert_eq!(
            m.validate(&lim).unwrap_err().to_string(),
            "files total 4 bytes, at most 3 allowed"
        );
    }

    #[test]
    fn mode_and_symlink_rules() {
        let mut e = file("x", b"1");
        e.mode = 0o10644;
        assert!(refused(&with(vec![e])).contains("mode 10644 has bits outside 0o7777"));
        assert!(refused(&with(vec![link("l", "a\0b")])).contains("symlink target contains NUL"));
        assert!(refused(&with(vec![link("l", "")])).contains("symlink target is empty"));
        let long = "t".repeat(4097);
        assert!(refused(&with(vec![link("l", &long)]))
            .contains("symlink target is 4097 bytes, at most 4096"));
    }

    #[test]
    fn format_params_and_size() {
        let mut m = good();
        m.format = 7;
        assert_eq!(
            refused(&m),
            "unsupported manifest format 7 (this build reads 1)"
        );
        let mut m = good();
        m.params.max = MAX_CHUNK_LEN * 2;
        assert!(refused(&m).starts_with("manifest params:"));
        let mut lim = Limits::DEFAULT;
        lim.max_encoded_bytes = 10;
        let e = Manifest::decode(&good().encode(), &lim).unwrap_err();
        assert!(matches!(e, ManifestError::TooLarge { max: 10, .. }), "{e}");
        // garbage and trailing bytes
        assert!(matches!(
            Manifest::decode(&[1, 0xff], &Limits::DEFAULT),
            Err(ManifestError::Decode(_))
        ));
        let mut b = good().encode();
        b.push(0);
        assert!(Manifest::decode(&b, &Limits::DEFAULT)
            .unwrap_err()
            .to_string()
            .contains("trailing"));
    }

    #[test]
    fn hostile_length_prefix_is_cheap() {
        // format 1, params, then an entry count of u64::MAX-ish with no entries.
        let mut b = postcard::to_allocvec(&(FORMAT, DEFAULT_PARAMS)).unwrap();
        b.extend(postcard::to_allocvec(&(u64::MAX >> 1)).unwrap());
        let e = Manifest::decode(&b, &Limits::DEFAULT).unwrap_err();
        assert!(matches!(e, ManifestError::TooManyEntries { .. }), "{e}");
        // just under the limit: postcard fails on missing bytes without allocating
        // for the declared count
        let mut b = postcard::to_allocvec(&(FORMAT, DEFAULT_PARAMS)).unwrap();
        b.extend(postcard::to_allocvec(&400_000u64).unwrap());
        assert!(matches!(
            Manifest::decode(&b, &Limits::DEFAULT),
            Err(ManifestError::Decode(_))
        ));
    }

    #[test]
    fn a_million_entries_are_refused_quickly() {
        let entries: Vec<Entry> = (0..1_000_001u32)
            .map(|i| file(&format!("{i:07}"), b""))
            .collect();
        let m = with(entries);
        let bytes = m.encode();
        let t = std::time::Instant::now();
        let e = Manifest::decode(&bytes, &Limits::DEFAULT).unwrap_err();
        assert_eq!(e.to_string(), "1000001 entries, at most 500000 allowed");
        assert_eq!(
            m.validate(&Limits::DEFAULT).unwrap_err().to_string(),
            "1000001 entries, at most 500000 allowed"
        );
        assert!(t.elapsed() < std::time::Duration::from_millis(100));
    }
}
