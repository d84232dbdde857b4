//! Archives uploaded to the controller (`cairn images push`), fetched over the link.
//!
//! The bytes go to `PARTIAL_DIR/<archive>.tar`. A fetch that is interrupted (the link
//! dropped, the agent restarted) leaves the file where it is, and the next attempt
//! asks the controller only for the bytes after its end
//! ([`AgentRequest::FetchImage`]'s `offset`). Once the file is whole its BLAKE3 hash
//! must be the archive's name; a file that fails is deleted, so the retry starts
//! from scratch rather than resuming garbage.
//!
//! [`ArchiveFetcher`] hides the link, so the resume and verify logic is tested
//! without one; [`QuicFetcher`] is the real thing on the live connection.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use cairn_shared::protocol::{AgentRequest, AgentResponse};
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::chunks::fetch::{FetchError as LinkError, QuicChunkSource};

/// The bytes of an archive from the requested offset on.
pub type ArchiveReader = Pin<Box<dyn AsyncRead + Send>>;

/// How long a fetch may go without a single byte before the attempt is given up.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("not connected to the controller")]
    NotConnected,
    #[error("fetching from the controller: {0}")]
    Link(String),
    #[error("the controller refused the archive: {0}")]
    Refused(String),
    #[error("archive {0} is not a BLAKE3 hash")]
    BadName(String),
    #[error("the controller's archive stream ended at byte {got} of {size}")]
    Truncated { got: u64, size: u64 },
    #[error("no bytes from the controller for {} s", STALL_TIMEOUT.as_secs())]
    Stalled,
    #[error("archive {archive} failed verification (its BLAKE3 hash is {actual})")]
    Verification { archive: String, actual: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> FetchError {
    let context = context.into();
    move |source| FetchError::Io { context, source }
}

/// Where archives come from.
pub trait ArchiveFetcher: Send + Sync + 'static {
    /// Opens `archive` at `offset`: its whole size, and its bytes from `offset` on.
    fn open<'a>(
        &'a self,
        archive: &'a str,
        offset: u64,
    ) -> BoxFuture<'a, Result<(u64, ArchiveReader), FetchError>>;
}

/// Fetches from the controller on the link's current connection.
#[derive(Debug, Clone)]
pub struct QuicFetcher {
    link: QuicChunkSource,
}

impl QuicFetcher {
    /// Uses whatever connection the link last put in `connection`.
    pub fn new(connection: watch::Receiver<Option<quinn::Connection>>) -> Self {
        QuicFetcher {
            link: QuicChunkSource::new(connection),
        }
    }
}

impl ArchiveFetcher for QuicFetcher {
    fn open<'a>(
        &'a self,
        archive: &'a str,
        offset: u64,
    ) -> BoxFuture<'a, Result<(u64, ArchiveReader), FetchError>> {
        Box::pin(async move {
            let req = AgentRequest::FetchImage {
                archive: archive.to_string(),
                offset,
            };
            let (resp, recv) = self.link.ask(&req).await.map_err(|e| match e {
                LinkError::NotConnected => FetchError::NotConnected,
                LinkError::Refused(m) => FetchError::Refused(m),
                other => FetchError::Link(other.to_string()),
            })?;
            match resp {
                AgentResponse::ImageStream { size_bytes } => {
                    Ok((size_bytes, Box::pin(recv) as ArchiveReader))
                }
                other => Err(FetchError::Link(format!(
                    "the controller answered an archive fetch with {other:?}"
                ))),
            }
        })
    }
}

async fn truncate(file: &tokio::fs::File, path: &Path) -> Result<(), FetchError> {
    file.set_len(0)
        .await
        .map_err(io(format!("truncating {}", path.display())))
}

/// The partial file of `archive` in `dir`.
pub fn partial_path(dir: &Path, archive: &str) -> PathBuf {
    dir.join(format!("{archive}.tar"))
}

/// Makes `dir/<archive>.tar` the whole, verified archive, fetching what is missing.
///
/// `size_bytes` is the size the controller announced in the desired state; a partial
/// file that already has that many bytes is verified without a fetch. `on_bytes` is
/// told (bytes on disk, whole size) as the file grows. A file that fails verification
/// is deleted.
pub async fn fetch_archive(
    fetcher: &dyn ArchiveFetcher,
    dir: &Path,
    archive: &str,
    size_bytes: u64,
    on_bytes: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<PathBuf, FetchError> {
    if !cairn_shared::images::is_archive_hash(archive) {
        return Err(FetchError::BadName(archive.to_string()));
    }
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io(format!("creating {}", dir.display())))?;
    let path = partial_path(dir, archive);
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await
        .map_err(io(format!("opening {}", path.display())))?;
    let mut have = file
        .metadata()
        .await
        .map_err(io(format!("reading {}", path.display())))?
        .len();
    // A size of 0 means the desired state did not say: ask the controller.
    let known = size_bytes > 0;
    if known && have > size_bytes {
        // Longer than the archive can be: not a prefix of it.
        truncate(&file, &path).await?;
        have = 0;
    }
    let mut size = size_bytes;
    if !known || have < size {
        if have > 0 {
            tracing::info!(%archive, offset = have, "resuming an interrupted archive fetch");
        }
        let (total, mut reader) = fetcher.open(archive, have).await?;
        if total < have {
            truncate(&file, &path).await?;
            return Err(FetchError::Link(format!(
                "the controller's archive has {total} bytes, fewer than the {have} already fetched; starting again"
            )));
        }
        if known && total != size {
            tracing::warn!(%archive, announced = size, offered = total, "the controller's archive differs in size from the desired state; the hash decides");
        }
        size = total;
        on_bytes(have, size);
        let mut buf = vec![0u8; 256 * 1024];
        while have < size {
            let want = buf
                .len()
                .min(usize::try_from(size - have).unwrap_or(usize::MAX));
            let n = tokio::time::timeout(STALL_TIMEOUT, reader.read(&mut buf[..want]))
                .await
                .map_err(|_| FetchError::Stalled)?
                .map_err(|e| FetchError::Link(e.to_string()))?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])
                .await
                .map_err(io(format!("writing {}", path.display())))?;
            have += n as u64;
            on_bytes(have, size);
        }
        file.sync_all()
            .await
            .map_err(io(format!("writing {}", path.display())))?;
        if have < size {
            return Err(FetchError::Truncated { got: have, size });
        }
    }
    drop(file);
    on_bytes(have, size);
    let hash_path = path.clone();
    let actual = tokio::task::spawn_blocking(move || cairn_shared::images::blake3_file(&hash_path))
        .await
        .map_err(|e| FetchError::Io {
            context: format!("hashing {}", path.display()),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(io(format!("hashing {}", path.display())))?;
    if actual != archive {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(FetchError::Verification {
            archive: archive.to_string(),
            actual,
        });
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::images::testing::{archive_of, FakeFetcher};
    use std::sync::Mutex;

    #[tokio::test]
    async fn an_interrupted_fetch_resumes_at_the_end_of_the_partial_file() {
        let tmp = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let name = archive_of(&data);
        let mut fetcher = FakeFetcher::new(data.clone());
        fetcher.cut_after = Some(30_000);
        let seen = Mutex::new(vec![]);
        let on = |d: u64, t: u64| seen.lock().unwrap().push((d, t));
        // The stream ends early: the attempt fails, the bytes stay.
        let err = fetch_archive(&fetcher, tmp.path(), &name, data.len() as u64, &on)
            .await
            .unwrap_err();
        assert!(
            matches!(err, FetchError::Truncated { got: 30_000, .. }),
            "{err}"
        );
        let partial = partial_path(tmp.path(), &name);
        assert_eq!(std::fs::metadata(&partial).unwrap().len(), 30_000);
        // The next attempt asks only for the rest.
        fetcher.cut_after = None;
        let path = fetch_archive(&fetcher, tmp.path(), &name, data.len() as u64, &on)
            .await
            .unwrap();
        assert_eq!(*fetcher.offsets.lock().unwrap(), vec![0, 30_000]);
        assert_eq!(std::fs::read(path).unwrap(), data);
        assert_eq!(seen.lock().unwrap().last(), Some(&(100_000, 100_000)));
        // A whole file is verified without fetching anything.
        fetch_archive(&fetcher, tmp.path(), &name, data.len() as u64, &on)
            .await
            .unwrap();
        assert_eq!(fetcher.offsets.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_corrupt_file_fails_verification_and_is_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let data = b"the real archive bytes".to_vec();
        let name = archive_of(&data);
        let partial = partial_path(tmp.path(), &name);
        std::fs::write(&partial, b"the fake").unwrap();
        let fetcher = FakeFetcher::new(data.clone());
        let err = fetch_archive(&fetcher, tmp.path(), &name, data.len() as u64, &|_, _| {})
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("archive {name} failed verification")),
            "{err}"
        );
        assert!(!partial.exists());
        // The next attempt starts from the beginning and succeeds.
        fetch_archive(&fetcher, tmp.path(), &name, data.len() as u64, &|_, _| {})
            .await
            .unwrap();
        assert_eq!(*fetcher.offsets.lock().unwrap(), vec![8, 0]);
    }

    #[tokio::test]
    async fn names_that_are_not_hashes_never_become_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let fetcher = FakeFetcher::new(vec![1]);
        let err = fetch_archive(&fetcher, tmp.path(), "../../etc/passwd", 1, &|_, _| {})
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::BadName(_)), "{err}");
        assert!(fetcher.offsets.lock().unwrap().is_empty());
    }
}
