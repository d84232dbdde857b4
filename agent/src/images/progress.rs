//! Pull progress from Docker's event stream: a pure accumulator fed the
//! [`CreateImageInfo`] events of one `docker pull`, answering how many layers and bytes
//! are done.
//!
//! Docker reports per layer (the event's `id`): "Pulling fs layer" or "Waiting" when
//! it learns of a layer, "Downloading" with `progressDetail{current,total}` while
//! bytes arrive, "Verifying Checksum" and "Download complete" when they are all
//! there, "Extracting" (with its own byte counts, which are *not* download bytes and
//! must not be added twice), and "Pull complete" when the layer is in place. A layer
//! the host already holds only says "Already exists". Events without a layer id, or
//! about the image as a whole ("Pulling from …", "Digest: …", "Status: …"), carry no
//! layer progress and are ignored.

use std::collections::BTreeMap;

use bollard::models::CreateImageInfo;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Layer {
    /// Download bytes received.
    current: u64,
    /// Download size, once Docker has said it (0 until then).
    total: u64,
    /// In place ("Pull complete" or "Already exists").
    done: bool,
}

/// Layers and bytes of one pull so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerProgress {
    layers: BTreeMap<String, Layer>,
}

impl LayerProgress {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one event into account.
    pub fn observe(&mut self, info: &CreateImageInfo) {
        let (Some(id), Some(status)) = (info.id.as_deref(), info.status.as_deref()) else {
            return;
        };
        let detail = info.progress_detail.as_ref();
        let current = detail
            .and_then(|d| d.current)
            .map(|c| u64::try_from(c).unwrap_or(0));
        let total = detail
            .and_then(|d| d.total)
            .map(|t| u64::try_from(t).unwrap_or(0));
        // Matched by prefix: some engines append details ("Waiting for …").
        let layer_event = [
            "Pulling fs layer",
            "Waiting",
            "Downloading",
            "Verifying Checksum",
            "Download complete",
            "Extracting",
            "Pull complete",
            "Already exists",
        ]
        .iter()
        .any(|s| status.starts_with(s));
        if !layer_event {
            return;
        }
        let layer = self.layers.entry(id.to_string()).or_default();
        if status.starts_with("Downloading") {
            if let Some(t) = total.filter(|t| *t > 0) {
                layer.total = t;
            }
            if let Some(c) = current {
                layer.current = c;
            }
        } else if status.starts_with("Verifying Checksum")
            || status.starts_with("Download complete")
            || status.starts_with("Extracting")
        {
            // All download bytes are there; extraction counts are about something else.
            layer.current = layer.total;
        } else if status.starts_with("Pull complete") {
            layer.current = layer.total;
            layer.done = true;
        } else if status.starts_with("Already exists") {
            layer.done = true;
        }
    }

    pub fn layers_total(&self) -> u32 {
        u32::try_from(self.layers.len()).unwrap_or(u32::MAX)
    }

    pub fn layers_done(&self) -> u32 {
        u32::try_from(self.layers.values().filter(|l| l.done).count()).unwrap_or(u32::MAX)
    }

    /// Download bytes received, over layers whose size is known.
    pub fn bytes_done(&self) -> u64 {
        self.layers
            .values()
            .map(|l| l.current.min(l.total))
            .fold(0u64, u64::saturating_add)
    }

    /// Download bytes of the layers whose size is known so far.
    pub fn bytes_total(&self) -> u64 {
        self.layers
            .values()
            .map(|l| l.total)
            .fold(0u64, u64::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::ProgressDetail;

    fn ev(id: &str, status: &str, progress: Option<(i64, i64)>) -> CreateImageInfo {
        CreateImageInfo {
            id: (!id.is_empty()).then(|| id.to_string()),
            status: Some(status.to_string()),
            progress_detail: progress.map(|(current, total)| ProgressDetail {
                current: Some(current),
                total: Some(total),
            }),
            ..Default::default()
        }
    }

    /// A pull as Docker 28 reports it: one layer already on the host, two downloaded.
    fn recorded() -> Vec<CreateImageInfo> {
        vec![
            ev("sha256:aa", "Pulling from cairn/x", None),
            ev("base", "Already exists", None),
            ev("l1", "Pulling fs layer", None),
            ev("l2", "Pulling fs layer", None),
            ev("l2", "Waiting", None),
            ev("l1", "Downloading", Some((100, 1000))),
            ev("l1", "Downloading", Some((600, 1000))),
            ev("l2", "Downloading", Some((50, 3000))),
            ev("l1", "Verifying Checksum", None),
            ev("l1", "Download complete", None),
            ev("l1", "Extracting", Some((32768, 2000))),
            ev("l1", "Pull complete", None),
            ev("l2", "Downloading", Some((3000, 3000))),
            ev("l2", "Download complete", None),
            ev("l2", "Extracting", Some((3000, 9000))),
            ev("l2", "Pull complete", None),
            ev("", "Digest: sha256:aa", None),
            ev(
                "",
                "Status: Downloaded newer image for cairn/x@sha256:aa",
                None,
            ),
        ]
    }

    fn after(n: usize) -> LayerProgress {
        let mut p = LayerProgress::new();
        for e in recorded().iter().take(n) {
            p.observe(e);
        }
        p
    }

    #[test]
    fn counts_layers_and_bytes_through_a_recorded_pull() {
        // "Pulling from" names the image, not a layer.
        assert_eq!(after(1).layers_total(), 0);
        let p = after(5);
        assert_eq!((p.layers_done(), p.layers_total()), (1, 3));
        assert_eq!((p.bytes_done(), p.bytes_total()), (0, 0));
        let p = after(8);
        assert_eq!((p.bytes_done(), p.bytes_total()), (650, 4000));
        // Checksum verified: every download byte of l1 is there.
        let p = after(9);
        assert_eq!(p.bytes_done(), 1050);
        // Extraction byte counts are not download bytes.
        let p = after(11);
        assert_eq!((p.bytes_done(), p.bytes_total()), (1050, 4000));
        let p = after(12);
        assert_eq!((p.layers_done(), p.layers_total()), (2, 3));
        let p = after(recorded().len());
        assert_eq!((p.layers_done(), p.layers_total()), (3, 3));
        assert_eq!((p.bytes_done(), p.bytes_total()), (4000, 4000));
    }

    #[test]
    fn nonsense_counts_do_not_overflow_or_go_negative() {
        let mut p = LayerProgress::new();
        p.observe(&ev("l", "Downloading", Some((-5, -1))));
        p.observe(&ev("m", "Downloading", Some((i64::MAX, i64::MAX))));
        p.observe(&ev("n", "Downloading", Some((i64::MAX, i64::MAX))));
        p.observe(&ev("o", "Downloading", Some((i64::MAX, i64::MAX))));
        assert_eq!(p.bytes_total(), u64::MAX);
        assert_eq!(p.bytes_done(), u64::MAX);
        assert_eq!(p.layers_done(), 0);
    }
}
