//! When each image last had a running container, and which images this agent
//! brought itself, persisted in the state directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_shared::fsutil;
use serde::{Deserialize, Serialize};

use super::GcError;
use crate::state::StateDir;

/// The file in the state directory that remembers when images were last used.
pub const USAGE_FILE: &str = "image-usage.toml";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageFile {
    /// Image id → when a container last ran from it, ms since the epoch.
    #[serde(default)]
    last_used_ms: BTreeMap<String, u64>,
    /// Ids of the images this agent pulled or loaded itself: the only ones it may
    /// remove. An image the operator put on the host (a `pull = "never"` blueprint's,
    /// a base image of their own) cannot be fetched again by Cairn, so removing it
    /// could break a blueprint for good.
    #[serde(default)]
    brought: BTreeSet<String>,
}

/// When each image last had a container, in `STATE_DIR/image-usage.toml`.
///
/// A cache: a missing or unreadable file only means every image looks never used
/// until containers are seen again. Entries of images that no longer exist are
/// dropped every pass, so the file is as small as the image list.
#[derive(Debug)]
pub struct UsageLog {
    path: PathBuf,
    entries: BTreeMap<String, u64>,
    brought: BTreeSet<String>,
    dirty: bool,
}

impl UsageLog {
    /// Reads the log of `dir`; a missing file is an empty log, a damaged one is
    /// logged and replaced.
    pub fn load(dir: &StateDir) -> Self {
        let path = dir.root().join(USAGE_FILE);
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => match toml::from_str::<UsageFile>(&text) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "image gc: the image usage file is damaged; starting afresh");
                    UsageFile::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => UsageFile::default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "image gc: cannot read the image usage file; starting afresh");
                UsageFile::default()
            }
        };
        UsageLog {
            path,
            entries: file.last_used_ms,
            brought: file.brought,
            dirty: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn last_used(&self, image_id: &str) -> Option<u64> {
        self.entries.get(image_id).copied()
    }

    /// Records a use of `image_id` at `at_ms`; an older time than the recorded one
    /// is ignored (notes can arrive out of order).
    pub fn touch(&mut self, image_id: &str, at_ms: u64) {
        let e = self.entries.entry(image_id.to_owned()).or_insert(0);
        if at_ms > *e {
            *e = at_ms;
            self.dirty = true;
        }
    }

    /// Records that this agent pulled or loaded image `image_id`.
    pub fn mark_brought(&mut self, image_id: &str) {
        self.dirty |= self.brought.insert(image_id.to_owned());
    }

    /// Whether this agent brought image `image_id` (and so may remove it).
    pub fn brought(&self, image_id: &str) -> bool {
        self.brought.contains(image_id)
    }

    /// Drops entries of images for which `exists` is false.
    pub fn retain(&mut self, exists: impl Fn(&str) -> bool) {
        let before = self.entries.len() + self.brought.len();
        self.entries.retain(|id, _| exists(id));
        self.brought.retain(|id| exists(id));
        self.dirty |= self.entries.len() + self.brought.len() != before;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the log if it changed, atomically (temporary file, fsync, rename), off
    /// the async threads: the agent runs on one thread and fsync may be slow.
    pub async fn save(&mut self) -> Result<(), GcError> {
        if !self.dirty {
            return Ok(());
        }
        let file = UsageFile {
            last_used_ms: self.entries.clone(),
            brought: self.brought.clone(),
        };
        let body = toml::to_string(&file).map_err(|e| GcError::Io {
            context: format!("encoding {}", self.path.display()),
            source: std::io::Error::other(e),
        })?;
        let text = format!(
            "# Written by cairn-agent: when a container last ran from each image (ms since the\n# Unix epoch), for image garbage collection. Safe to delete.\n{body}"
        );
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || fsutil::write_atomic(&path, text.as_bytes(), 0o600))
            .await
            .map_err(|e| GcError::Io {
                context: format!("writing {}", self.path.display()),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| GcError::Io {
                context: format!("writing {}", self.path.display()),
                source,
            })?;
        self.dirty = false;
        Ok(())
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_log_round_trips_and_stays_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut log = UsageLog::load(&dir);
            assert!(log.is_empty());
            log.touch("sha256:a", 10);
            log.touch("sha256:a", 5); // older: ignored
            log.touch("sha256:b", 7);
            log.save().await.unwrap();
            let mut back = UsageLog::load(&dir);
            assert_eq!(back.last_used("sha256:a"), Some(10));
            assert_eq!(back.last_used("sha256:b"), Some(7));
            back.retain(|id| id == "sha256:b");
            back.save().await.unwrap();
            assert_eq!(UsageLog::load(&dir).len(), 1);
            // A damaged file is a fresh start, not an error.
            std::fs::write(tmp.path().join(USAGE_FILE), "not = [toml").unwrap();
            assert!(UsageLog::load(&dir).is_empty());
        });
    }
}
