//! What the Docker Engine holds: its version, images, and containers with `cairn.*`
//! labels.
//!
//! Every call is bounded by a timeout and every failure becomes
//! [`RuntimeFacts::Unavailable`] with the engine's own words, so a hung or stopped
//! engine shows up on the controller instead of stalling heartbeats. The client
//! negotiates the API version, because hosts run engines older than bollard's default.

use std::path::PathBuf;
use std::time::Duration;

use bollard::query_parameters::{ListContainersOptionsBuilder, ListImagesOptionsBuilder};
use bollard::Docker;
use cairn_shared::resources::{
    ContainerInfo, DockerFacts, ImageInfo, RuntimeFacts, MAX_CONTAINERS, MAX_IMAGES,
};
use tokio::sync::Mutex;

const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const LABEL_PREFIX: &str = "cairn.";

fn clip(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_owned();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Where the engine is, in words for error messages.
fn engine_address() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!(
            "{what}: no answer within {} s",
            CALL_TIMEOUT.as_secs()
        )),
    }
}

async fn connect() -> Result<Docker, String> {
    let docker = Docker::connect_with_defaults().map_err(|e| e.to_string())?;
    bounded("negotiating the API version", docker.negotiate_version()).await
}

/// Checks that the Docker Engine answers; returns its version, or a one-line error
/// saying what to do.
pub async fn ping_docker() -> Result<String, String> {
    let fail = |e: String| {
        format!(
            "cannot reach the Docker Engine at {}: {e} — start it (systemctl start docker) or point DOCKER_HOST at it",
            engine_address()
        )
    };
    let docker = connect().await.map_err(fail)?;
    let v = bounded("version", docker.version()).await.map_err(fail)?;
    Ok(v.version.unwrap_or_else(|| "unknown".into()))
}

struct Conn {
    docker: Option<Docker>,
    data_root: Option<PathBuf>,
}

/// A lazily (re)connecting Docker client.
pub struct DockerProbe {
    conn: Mutex<Conn>,
}

impl Default for DockerProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl DockerProbe {
    pub fn new() -> Self {
        DockerProbe {
            conn: Mutex::new(Conn {
                docker: None,
                data_root: None,
            }),
        }
    }

    async fn client(&self) -> Result<Docker, String> {
        let mut c = self.conn.lock().await;
        if let Some(d) = &c.docker {
            return Ok(d.clone());
        }
        let d = connect().await?;
        if let Ok(info) = bounded("info", d.info()).await {
            c.data_root = info.docker_root_dir.map(PathBuf::from);
        }
        c.docker = Some(d.clone());
        Ok(d)
    }

    /// Docker's data root, once known.
    pub async fn data_root(&self) -> Option<PathBuf> {
        let _ = self.client().await;
        self.conn.lock().await.data_root.clone()
    }

    /// The engine's facts now. On failure the client is dropped so the next call
    /// reconnects (the engine may have restarted).
    pub async fn facts(&self) -> RuntimeFacts {
        match self.collect().await {
            Ok(f) => RuntimeFacts::Docker(f),
            Err(e) => {
                self.conn.lock().await.docker = None;
                RuntimeFacts::Unavailable {
                    error: clip(&format!("Docker Engine at {}: {e}", engine_address()), 4000),
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
        let containers = bounded(
            "listing containers",
            docker.list_containers(Some(ListContainersOptionsBuilder::new().all(true).build())),
        )
        .await?;
        let data_root = self.conn.lock().await.data_root.clone();

        let image_count = images.len().min(u32::MAX as usize) as u32;
        let images = images
            .into_iter()
            .take(MAX_IMAGES)
            .map(|i| ImageInfo {
                id: clip(&i.id, 128),
                tags: i
                    .repo_tags
                    .iter()
                    .filter(|t| *t != "<none>:<none>")
                    .take(64)
                    .map(|t| clip(t, 512))
                    .collect(),
                size_bytes: i.size.max(0) as u64,
                created_unix: i.created,
            })
            .collect();
        let containers = containers
            .into_iter()
            .filter_map(|c| {
                let labels: std::collections::BTreeMap<String, String> = c
                    .labels
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(k, _)| k.starts_with(LABEL_PREFIX))
                    .take(cairn_shared::resources::MAX_LABELS)
                    .map(|(k, v)| (clip(&k, 128), clip(&v, 512)))
                    .collect();
                if labels.is_empty() {
                    return None;
                }
                Some(ContainerInfo {
                    id: clip(&c.id.unwrap_or_default(), 128),
                    name: clip(
                        c.names
                            .unwrap_or_default()
                            .first()
                            .map(|n| n.trim_start_matches('/'))
                            .unwrap_or_default(),
                        256,
                    ),
                    image: clip(&c.image.unwrap_or_default(), 512),
                    state: clip(&c.state.map(|s| s.to_string()).unwrap_or_default(), 32),
                    labels,
                })
            })
            .take(MAX_CONTAINERS)
            .collect();
        Ok(DockerFacts {
            engine_version: clip(version.version.as_deref().unwrap_or_default(), 64),
            api_version: clip(version.api_version.as_deref().unwrap_or_default(), 64),
            data_root: clip(
                &data_root
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                4096,
            ),
            images,
            image_count,
            containers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("héllo", 2), "h");
        assert_eq!(clip("abc", 10), "abc");
    }

    #[tokio::test]
    async fn unreachable_engine_is_reported_not_raised() {
        // Point the probe at a socket that does not exist by way of a fresh client.
        let err = match Docker::connect_with_unix(
            "/nonexistent/docker.sock",
            2,
            bollard::API_DEFAULT_VERSION,
        ) {
            Ok(d) => bounded("version", d.version()).await.err(),
            Err(e) => Some(e.to_string()),
        };
        assert!(err.is_some());
    }
}
