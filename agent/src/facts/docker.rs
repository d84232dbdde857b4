//! What the Docker Engine holds: its version, images, and containers with `cairn.*`
//! labels.
//!
//! Every call is bounded by a timeout and every failure becomes
//! [`RuntimeFacts::Unavailable`] with the cause spelled out, so a hung or stopped
//! engine shows up on the controller instead of stalling heartbeats. The client
//! negotiates the API version, because hosts run engines older than bollard's default,
//! and is rebuilt after a failure, because the engine may have restarted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex as SyncMutex;
use std::time::Duration;

use bollard::models::{ContainerSummary, ImageSummary, SystemVersion};
use bollard::query_parameters::{ListContainersOptionsBuilder, ListImagesOptionsBuilder};
use bollard::Docker;
use cairn_shared::resources::{
    ContainerInfo, DockerFacts, ImageInfo, RuntimeFacts, MAX_CONTAINERS, MAX_IMAGES, MAX_LABELS,
};
use tokio::sync::Mutex;

use super::clip;
use crate::docker::{describe, Endpoint};

/// Longest wait for any one engine call; a heartbeat needs at most a few of them.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Containers Cairn manages carry labels with this prefix; others are not reported.
const LABEL_PREFIX: &str = "cairn.";

// Bounds from `Validate for RuntimeFacts` in cairn-shared.
const MAX_ERROR: usize = 4096;
const MAX_TEXT: usize = 512;
const MAX_ID: usize = 128;
const MAX_NAME: usize = 256;
const MAX_STATE: usize = 32;
const MAX_VERSION: usize = 64;
const MAX_PATH: usize = 4096;
const MAX_TAGS: usize = 64;
const MAX_LABEL_KEY: usize = 128;

/// Runs one engine call with [`CALL_TIMEOUT`], naming the call in the error.
async fn bounded<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {}", describe(&e))),
        Err(_) => Err(format!(
            "{what}: no answer within {} s",
            CALL_TIMEOUT.as_secs()
        )),
    }
}

/// Checks that the Docker Engine answers; returns its version, or a one-line error
/// saying what to do.
pub async fn ping_docker() -> Result<String, String> {
    let endpoint = Endpoint::Defaults;
    let fail = |e: String| {
        format!(
            "cannot reach the Docker Engine at {}: {e} — start it (systemctl start docker) or set DOCKER_HOST",
            endpoint.address()
        )
    };
    let docker = endpoint
        .connect(CALL_TIMEOUT)
        .await
        .map_err(|e| fail(e.0))?;
    let v = bounded("version", docker.version()).await.map_err(fail)?;
    Ok(v.version.unwrap_or_else(|| "unknown".into()))
}

/// Docker's data root as the engine reported it, and as a real path on this host.
#[derive(Debug, Clone)]
struct DataRoot {
    reported: String,
    resolved: PathBuf,
}

/// A lazily (re)connecting Docker client.
pub struct DockerProbe {
    endpoint: Endpoint,
    /// Async lock: held across connecting, so concurrent callers share one attempt.
    client: Mutex<Option<Docker>>,
    /// Sync lock, never held across an await: capacity reads it without waiting on
    /// a connection attempt.
    data_root: SyncMutex<Option<DataRoot>>,
}

impl std::fmt::Debug for DockerProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerProbe")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Default for DockerProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl DockerProbe {
    /// A probe for the engine the `docker` CLI would use; does not connect yet.
    pub fn new() -> Self {
        Self::with_endpoint(Endpoint::Defaults)
    }

    fn with_endpoint(endpoint: Endpoint) -> Self {
        DockerProbe {
            endpoint,
            client: Mutex::new(None),
            data_root: SyncMutex::new(None),
        }
    }

    /// Connects and learns the data root now, if the engine answers; a failure is
    /// left for [`DockerProbe::facts`] to report.
    pub async fn warm_up(&self) {
        let _ = self.client().await;
    }

    /// Docker's data root resolved to a real path, once known. Never waits on the
    /// engine.
    pub fn data_root(&self) -> Option<PathBuf> {
        self.cached_root().map(|r| r.resolved)
    }

    fn cached_root(&self) -> Option<DataRoot> {
        self.data_root
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The connected client, connecting first if needed. The data root is asked for
    /// on each new connection (it only changes when the engine restarts with a new
    /// config) and while it is unknown.
    async fn client(&self) -> Result<Docker, String> {
        let (docker, fresh) = {
            let mut slot = self.client.lock().await;
            match &*slot {
                Some(d) => (d.clone(), false),
                None => {
                    let d = self.endpoint.connect(CALL_TIMEOUT).await.map_err(|e| e.0)?;
                    *slot = Some(d.clone());
                    (d, true)
                }
            }
        };
        if fresh || self.cached_root().is_none() {
            let info = bounded("info", docker.info()).await?;
            if let Some(reported) = info.docker_root_dir.filter(|r| !r.is_empty()) {
                let resolved =
                    std::fs::canonicalize(&reported).unwrap_or_else(|_| PathBuf::from(&reported));
                *self.data_root.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(DataRoot { reported, resolved });
            }
        }
        Ok(docker)
    }

    /// The engine's facts now. On failure the client is dropped so the next call
    /// reconnects. The data root is kept: the disk under it is still worth
    /// reporting while the engine is down.
    pub async fn facts(&self) -> RuntimeFacts {
        match self.collect().await {
            Ok(f) => RuntimeFacts::Docker(f),
            Err(e) => {
                *self.client.lock().await = None;
                RuntimeFacts::Unavailable {
                    error: clip(
                        &format!("Docker Engine at {}: {e}", self.endpoint.address()),
                        MAX_ERROR,
                    ),
                }
            }
        }
    }

    async fn collect(&self) -> Result<DockerFacts, String> {
        let docker = self.client().await?;
        let version = bounded("version", docker.version()).await?;
        let images = bounded(
            "listing images",
            docker.list_images(Some(ListImagesOptionsBuilder::new().all(false).build())),
        )
        .await?;
        // Docker's label filter matches whole keys only, not a prefix, so all
        // containers are listed and the `cairn.*` ones picked here.
        let containers = bounded(
            "listing containers",
            docker.list_containers(Some(ListContainersOptionsBuilder::new().all(true).build())),
        )
        .await?;
        let data_root = self.cached_root().map(|r| r.reported);
        Ok(docker_facts(
            &version,
            data_root.as_deref(),
            images,
            containers,
        ))
    }
}

/// Builds the report from the engine's answers, cut to the shared bounds.
fn docker_facts(
    version: &SystemVersion,
    data_root: Option<&str>,
    images: Vec<ImageSummary>,
    containers: Vec<ContainerSummary>,
) -> DockerFacts {
    let image_count = u32::try_from(images.len()).unwrap_or(u32::MAX);
    DockerFacts {
        engine_version: clip(version.version.as_deref().unwrap_or_default(), MAX_VERSION),
        api_version: clip(
            version.api_version.as_deref().unwrap_or_default(),
            MAX_VERSION,
        ),
        data_root: clip(data_root.unwrap_or_default(), MAX_PATH),
        images: images
            .into_iter()
            .take(MAX_IMAGES)
            .map(image_info)
            .collect(),
        image_count,
        containers: containers
            .into_iter()
            .filter_map(container_info)
            .take(MAX_CONTAINERS)
            .collect(),
    }
}

fn image_info(i: ImageSummary) -> ImageInfo {
    ImageInfo {
        id: clip(&i.id, MAX_ID),
        tags: i
            .repo_tags
            .iter()
            // What the engine shows for an untagged image; not a tag anyone can use.
            .filter(|t| *t != "<none>:<none>")
            .take(MAX_TAGS)
            .map(|t| clip(t, MAX_TEXT))
            .collect(),
        repo_digests: i
            .repo_digests
            .iter()
            .filter(|t| !t.starts_with("<none>"))
            .take(MAX_TAGS)
            .map(|t| clip(t, MAX_TEXT))
            .collect(),
        size_bytes: u64::try_from(i.size).unwrap_or(0),
        created_unix: i.created,
    }
}

/// The container's report, or `None` if it has no `cairn.*` label.
fn container_info(c: ContainerSummary) -> Option<ContainerInfo> {
    // Sorted first, so a container with too many labels always loses the same ones.
    // A key longer than the bound is dropped rather than cut: a cut key would be a
    // different label.
    let labels: BTreeMap<String, String> = c
        .labels
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.starts_with(LABEL_PREFIX) && k.len() <= MAX_LABEL_KEY)
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .take(MAX_LABELS)
        .map(|(k, v)| {
            let v = clip(&v, MAX_TEXT);
            (k, v)
        })
        .collect();
    if labels.is_empty() {
        return None;
    }
    let name = c
        .names
        .unwrap_or_default()
        .into_iter()
        .next()
        .unwrap_or_default();
    Some(ContainerInfo {
        id: clip(&c.id.unwrap_or_default(), MAX_ID),
        name: clip(name.trim_start_matches('/'), MAX_NAME),
        image: clip(&c.image.unwrap_or_default(), MAX_TEXT),
        state: clip(
            &c.state.map(|s| s.to_string()).unwrap_or_default(),
            MAX_STATE,
        ),
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::ContainerSummaryStateEnum;
    use cairn_shared::validate::Validate;

    fn image(i: usize, tags: Vec<String>) -> ImageSummary {
        ImageSummary {
            id: format!("sha256:{i:064x}"),
            repo_tags: tags,
            size: 1000,
            created: 1_700_000_000,
            ..Default::default()
        }
    }

    fn container(labels: &[(&str, &str)]) -> ContainerSummary {
        ContainerSummary {
            id: Some("c0ffee".into()),
            names: Some(vec!["/web-1".into()]),
            image: Some("busybox:1".into()),
            state: Some(ContainerSummaryStateEnum::RUNNING),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn converts_images_and_cairn_containers() {
        let version = SystemVersion {
            version: Some("20.10.24".into()),
            api_version: Some("1.41".into()),
            ..Default::default()
        };
        let images = vec![
            image(1, vec!["a:1".into(), "<none>:<none>".into()]),
            image(2, vec!["<none>:<none>".into()]),
        ];
        let containers = vec![
            container(&[("cairn.instance", "i-1"), ("com.example", "x")]),
            container(&[("com.example", "x")]),
            container(&[]),
        ];
        let f = docker_facts(&version, Some("/var/lib/docker"), images, containers);
        assert_eq!(f.engine_version, "20.10.24");
        assert_eq!(f.api_version, "1.41");
        assert_eq!(f.data_root, "/var/lib/docker");
        assert_eq!(f.image_count, 2);
        assert_eq!(f.images[0].tags, vec!["a:1".to_string()]);
        assert!(f.images[1].tags.is_empty());
        assert_eq!(f.containers.len(), 1, "only cairn-labelled containers");
        let c = &f.containers[0];
        assert_eq!(c.name, "web-1");
        assert_eq!(c.state, "running");
        assert_eq!(
            c.labels,
            BTreeMap::from([("cairn.instance".to_string(), "i-1".to_string())])
        );
        RuntimeFacts::Docker(f).validate().unwrap();
    }

    #[test]
    fn oversized_answers_are_cut_to_the_bounds() {
        let long = "é".repeat(5000);
        let version = SystemVersion {
            version: Some(long.clone()),
            api_version: Some(long.clone()),
            ..Default::default()
        };
        // One image and one container with everything too long, then many small ones
        // to hit the list caps (kept small: thousands of big ones would take GiBs).
        let images: Vec<_> =
            std::iter::once(image(0, (0..100).map(|t| format!("{long}:{t}")).collect()))
                .chain((1..MAX_IMAGES + 10).map(|i| image(i, vec![format!("x:{i}")])))
                .collect();
        let mut huge = container(&[]);
        huge.id = Some(long.clone());
        huge.names = Some(vec![format!("/{long}")]);
        huge.image = Some(long.clone());
        huge.labels = Some(
            (0..200)
                .map(|i| (format!("cairn.l{i:03}"), long.clone()))
                .chain([(format!("cairn.{long}"), "v".to_string())])
                .collect(),
        );
        let containers: Vec<_> = std::iter::once(huge)
            .chain((0..MAX_CONTAINERS + 5).map(|_| container(&[("cairn.instance", "i")])))
            .collect();
        let f = docker_facts(&version, Some(&long), images, containers);
        assert_eq!(f.image_count as usize, MAX_IMAGES + 10);
        assert_eq!(f.images.len(), MAX_IMAGES);
        assert_eq!(f.images[0].tags.len(), MAX_TAGS);
        assert_eq!(f.containers.len(), MAX_CONTAINERS);
        let c = &f.containers[0];
        assert_eq!(c.labels.len(), MAX_LABELS);
        // The first labels in key order are the ones kept; the over-long key is gone.
        assert!(c.labels.contains_key("cairn.l000"));
        assert!(c.labels.keys().all(|k| k.len() <= MAX_LABEL_KEY));
        RuntimeFacts::Docker(f).validate().unwrap();
    }

    #[tokio::test]
    async fn unreachable_engine_is_reported_not_raised() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let probe = DockerProbe::with_endpoint(Endpoint::Unix(socket.display().to_string()));
        probe.warm_up().await;
        assert_eq!(probe.data_root(), None);
        let facts = probe.facts().await;
        let RuntimeFacts::Unavailable { error } = &facts else {
            panic!("expected Unavailable, got {facts:?}");
        };
        assert!(error.contains("docker.sock"), "{error}");
        facts.validate().unwrap();

        // A socket nobody listens on: connecting fails with a cause, not a hang.
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        drop(listener);
        let started = std::time::Instant::now();
        let facts = probe.facts().await;
        assert!(started.elapsed() < CALL_TIMEOUT * 3);
        let RuntimeFacts::Unavailable { error } = &facts else {
            panic!("expected Unavailable, got {facts:?}");
        };
        assert!(
            error.contains("refused"),
            "the cause is spelled out: {error}"
        );
        facts.validate().unwrap();
    }
}
