//! A snapshot as a tar stream: written on a blocking thread from the manifest,
//! each file's chunks read from the chunk store one at a time (each verified by
//! the store), so memory stays at one chunk and a few blocks in flight whatever the
//! snapshot's size. Modes, mtimes and symlinks are kept; long names go as GNU
//! extensions. A client that goes away stops the writer at its next block.

use std::io::{Read, Write};
use std::sync::Arc;

use cairn_shared::chunks::{ChunkId, ChunkRef, EntryKind, Manifest};

use crate::chunks::ChunkStore;

/// Blocks of tar in flight between the writer and the response.
const IN_FLIGHT: usize = 4;

/// A download: the file name to offer and the bytes.
pub struct TarDownload {
    pub filename: String,
    pub stream: futures::stream::BoxStream<'static, Result<Vec<u8>, std::io::Error>>,
}

/// Starts writing `m` as a tar; `label` names it in the log if it ends early.
pub fn stream(
    m: Manifest,
    store: Arc<dyn ChunkStore>,
    filename: String,
    label: String,
) -> TarDownload {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(IN_FLIGHT);
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let sink = ChannelWriter { tx: tx.clone() };
        if let Err(e) = write_tar(&m, store, handle, sink) {
            tracing::warn!(snapshot = %label, error = %e, "snapshot download ended early");
            let _ = tx.blocking_send(Err(e));
        }
    });
    TarDownload {
        filename,
        stream: Box::pin(tokio_stream_of(rx)),
    }
}

fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Sends what the tar writer writes to the response, in blocks.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Ok(buf.to_vec()))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A file's bytes read from the chunk store, chunk by chunk.
struct ChunkReader {
    chunks: std::vec::IntoIter<ChunkRef>,
    store: Arc<dyn ChunkStore>,
    handle: tokio::runtime::Handle,
    current: bytes::Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            let Some(c) = self.chunks.next() else {
                return Ok(0);
            };
            let id: ChunkId = c.id;
            let got = self
                .handle
                .block_on(self.store.get(id))
                .map_err(std::io::Error::other)?;
            self.current = got.ok_or_else(|| {
                std::io::Error::other(format!("chunk {id} is missing from the chunk store"))
            })?;
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Writes `m` as a tar archive (modes, mtimes, symlinks; long names as GNU
/// extensions).
fn write_tar(
    m: &Manifest,
    store: Arc<dyn ChunkStore>,
    handle: tokio::runtime::Handle,
    sink: ChannelWriter,
) -> std::io::Result<()> {
    let mut b = tar::Builder::new(std::io::BufWriter::with_capacity(256 * 1024, sink));
    b.follow_symlinks(false);
    for e in &m.entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode & 0o7777);
        h.set_mtime(u64::try_from(e.mtime_ns / 1_000_000_000).unwrap_or(0));
        match &e.kind {
            EntryKind::Directory => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, format!("{}/", e.path), std::io::empty())?;
            }
            EntryKind::Symlink { target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, &e.path, target)?;
            }
            EntryKind::File { chunks } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(e.size);
                let r = ChunkReader {
                    chunks: chunks.clone().into_iter(),
                    store: store.clone(),
                    handle: handle.clone(),
                    current: bytes::Bytes::new(),
                };
                b.append_data(&mut h, &e.path, r)?;
            }
        }
    }
    b.into_inner()?.flush()
}
