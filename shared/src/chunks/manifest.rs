//! A tree as a manifest: versioned, postcard-encoded, named by the BLAKE3 hash of
//! its encoding, and validated whole before anyone trusts a byte of it.

use serde::{Deserialize, Serialize};

use super::{ChunkRef, Params};

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

/// A whole tree. Entries are sorted by path (bytewise), parents before children.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`]; a manifest of another format is refused with a clear message.
    pub format: u32,
    /// The chunker sizes the files were cut with (a later scan must use the same
    /// to reuse chunks).
    pub params: Params,
    pub entries: Vec<Entry>,
}
