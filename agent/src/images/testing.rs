//! Fakes for unit tests: an engine that holds images in a set and pulls on command,
//! and a controller that serves one archive.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use bollard::models::{CreateImageInfo, ProgressDetail};
use cairn_shared::images::RegistryCredential;
use futures::future::BoxFuture;
use tokio::sync::Semaphore;

use super::fetch::{ArchiveFetcher, ArchiveReader, FetchError};
use super::{BackendError, ImageBackend, PullEvents};

/// An engine in memory.
pub(crate) struct FakeBackend {
    pub present: Mutex<BTreeSet<String>>,
    /// Every pull attempt, in order.
    pub pulls: Mutex<Vec<String>>,
    /// The username of the login each pull attempt used.
    pub logins: Mutex<Vec<Option<String>>>,
    /// Pull attempts to fail before one succeeds, and Docker's message for them.
    pub fail_pulls: AtomicU32,
    pub fail_message: String,
    /// A pull (or load) takes one permit after reporting half its bytes.
    pub gate: Semaphore,
    /// What a load of an archive must contain, and the image it then holds.
    pub archive: Mutex<Option<(Vec<u8>, String)>>,
    pub loads: AtomicU32,
}

impl FakeBackend {
    /// Pulls and loads go straight through.
    pub fn open() -> Self {
        let b = Self::gated();
        b.gate.add_permits(Semaphore::MAX_PERMITS / 2);
        b
    }

    /// Pulls and loads wait for [`FakeBackend::release`].
    pub fn gated() -> Self {
        FakeBackend {
            present: Mutex::new(BTreeSet::new()),
            pulls: Mutex::new(vec![]),
            logins: Mutex::new(vec![]),
            fail_pulls: AtomicU32::new(0),
            fail_message: "manifest unknown".into(),
            gate: Semaphore::new(0),
            archive: Mutex::new(None),
            loads: AtomicU32::new(0),
        }
    }

    pub fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }

    pub fn holds(&self, reference: &str) -> bool {
        self.present.lock().unwrap().contains(reference)
    }

    pub fn pulls_of(&self, reference: &str) -> usize {
        self.pulls
            .lock()
            .unwrap()
            .iter()
            .filter(|r| *r == reference)
            .count()
    }
}

fn event(id: &str, status: &str, progress: Option<(i64, i64)>) -> CreateImageInfo {
    CreateImageInfo {
        id: Some(id.into()),
        status: Some(status.into()),
        progress_detail: progress.map(|(c, t)| ProgressDetail {
            current: Some(c),
            total: Some(t),
        }),
        ..Default::default()
    }
}

impl ImageBackend for FakeBackend {
    fn present<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            // Asking the engine takes a moment, as it does for real: concurrent
            // callers interleave here.
            tokio::task::yield_now().await;
            Ok(self.holds(reference))
        })
    }

    fn pull<'a>(
        &'a self,
        reference: &'a str,
        credential: Option<&'a RegistryCredential>,
        events: PullEvents<'a>,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            self.pulls.lock().unwrap().push(reference.to_string());
            self.logins
                .lock()
                .unwrap()
                .push(credential.map(|c| c.username.clone()));
            events(&event("l1", "Pulling fs layer", None));
            events(&event("l2", "Pulling fs layer", None));
            events(&event("l1", "Downloading", Some((50, 100))));
            events(&event("l2", "Downloading", Some((50, 100))));
            self.gate.acquire().await.unwrap().forget();
            let failing = self
                .fail_pulls
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return Err(BackendError(self.fail_message.clone()));
            }
            for l in ["l1", "l2"] {
                events(&event(l, "Download complete", None));
                events(&event(l, "Pull complete", None));
            }
            self.present.lock().unwrap().insert(reference.to_string());
            Ok(())
        })
    }

    fn load<'a>(&'a self, archive: &'a Path) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            self.loads.fetch_add(1, Ordering::SeqCst);
            self.gate.acquire().await.unwrap().forget();
            let bytes = std::fs::read(archive).map_err(|e| BackendError(e.to_string()))?;
            let Some((want, image)) = self.archive.lock().unwrap().clone() else {
                return Err(BackendError("unexpected load".into()));
            };
            if bytes != want {
                return Err(BackendError("invalid tar header".into()));
            }
            self.present.lock().unwrap().insert(image);
            Ok(())
        })
    }
}

/// Serves one archive's bytes and remembers the offsets asked for.
pub(crate) struct FakeFetcher {
    pub data: Vec<u8>,
    pub offsets: Mutex<Vec<u64>>,
    /// Serve only this many bytes per request, then end the stream.
    pub cut_after: Option<usize>,
}

impl FakeFetcher {
    pub fn new(data: Vec<u8>) -> Self {
        FakeFetcher {
            data,
            offsets: Mutex::new(vec![]),
            cut_after: None,
        }
    }
}

impl ArchiveFetcher for FakeFetcher {
    fn open<'a>(
        &'a self,
        _: &'a str,
        offset: u64,
    ) -> BoxFuture<'a, Result<(u64, ArchiveReader), FetchError>> {
        self.offsets.lock().unwrap().push(offset);
        let mut rest = self.data[offset as usize..].to_vec();
        if let Some(n) = self.cut_after {
            rest.truncate(n);
        }
        let size = self.data.len() as u64;
        Box::pin(async move { Ok((size, Box::pin(std::io::Cursor::new(rest)) as ArchiveReader)) })
    }
}

/// The BLAKE3 name of an archive.
pub fn archive_of(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}
