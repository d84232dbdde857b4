//! [`GcBackend`] on the Docker Engine: disk usage of the data root, images,
//! containers, and removals with Docker's conflict and not-found answers told apart.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder,
};
use bollard::Docker;
use cairn_shared::resources::DiskUsage;

use super::executor::{GcBackend, GcContainer};
use super::plan::GcImage;
use super::GcError;
use crate::docker::DockerClient;

/// Longest wait for a listing or an inspection.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for one image removal: deleting the layers of a big image on a
/// slow disk takes a while.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(120);

/// [`GcBackend`] on the Docker Engine the `docker` CLI would use. Connects on first
/// use, and again until it works.
#[derive(Debug)]
pub struct DockerGc {
    client: DockerClient,
}

impl Default for DockerGc {
    fn default() -> Self {
        DockerGc {
            client: DockerClient::new(CALL_TIMEOUT),
        }
    }
}

fn describe(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

async fn bounded<T>(
    what: &str,
    limit: Duration,
    f: impl Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, GcError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(|e| GcError::Docker(format!("{what}: {}", describe(&e)))),
        Err(_) => Err(GcError::Docker(format!(
            "{what}: no answer within {} s",
            limit.as_secs()
        ))),
    }
}

/// How an image deletion ended.
enum Deleted {
    Yes,
    NotFound,
    Conflict(String),
}

impl DockerGc {
    pub fn new() -> Self {
        Self::default()
    }

    async fn docker(&self) -> Result<&Docker, GcError> {
        self.client
            .get()
            .await
            .map_err(|e| GcError::Docker(e.to_string()))
    }

    async fn delete(&self, name: &str) -> Result<Deleted, GcError> {
        let opts = RemoveImageOptionsBuilder::new()
            .force(false)
            .noprune(false)
            .build();
        let docker = self.docker().await?;
        match tokio::time::timeout(REMOVE_TIMEOUT, docker.remove_image(name, Some(opts), None))
            .await
        {
            Ok(Ok(_)) => Ok(Deleted::Yes),
            Ok(Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            })) => Ok(Deleted::NotFound),
            Ok(Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                message,
            })) => Ok(Deleted::Conflict(message)),
            Ok(Err(e)) => Err(GcError::Docker(format!(
                "removing {name}: {}",
                describe(&e)
            ))),
            Err(_) => Err(GcError::Docker(format!(
                "removing {name}: no answer within {} s",
                REMOVE_TIMEOUT.as_secs()
            ))),
        }
    }
}

impl GcBackend for DockerGc {
    async fn disk(&self) -> Result<DiskUsage, GcError> {
        let docker = self.docker().await?;
        let info = bounded("info", CALL_TIMEOUT, docker.info()).await?;
        let root = info
            .docker_root_dir
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                GcError::Disk("the engine does not say where its data root is".into())
            })?;
        tokio::task::spawn_blocking(move || {
            let real = match std::fs::canonicalize(&root) {
                Ok(p) => p,
                // An engine on another machine (DOCKER_HOST=tcp://…): its disk is not
                // ours to measure, and guessing would remove images for nothing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(GcError::Disk(format!(
                        "{root} does not exist on this machine; is the engine remote?"
                    )))
                }
                Err(_) => PathBuf::from(&root),
            };
            crate::facts::system::disk_usage_at(&real)
                .ok_or_else(|| GcError::Disk(format!("no mounted file system holds {root}")))
        })
        .await
        .map_err(|e| GcError::Disk(e.to_string()))?
    }

    async fn images(&self) -> Result<Vec<GcImage>, GcError> {
        let docker = self.docker().await?;
        let list = bounded(
            "listing images",
            CALL_TIMEOUT,
            docker.list_images(Some(ListImagesOptionsBuilder::new().all(false).build())),
        )
        .await?;
        // Old engines list untagged images as `<none>:<none>` / `<none>@<none>`.
        let real = |names: Vec<String>| -> Vec<String> {
            names
                .into_iter()
                .filter(|n| !n.starts_with("<none>"))
                .collect()
        };
        Ok(list
            .into_iter()
            .map(|i| GcImage {
                id: i.id,
                repo_tags: real(i.repo_tags),
                repo_digests: real(i.repo_digests),
                size_bytes: u64::try_from(i.size).unwrap_or(0),
                created_unix: i.created,
                last_used_ms: None,
            })
            .collect())
    }

    async fn containers(&self) -> Result<Vec<GcContainer>, GcError> {
        use bollard::models::ContainerSummaryStateEnum as S;
        let docker = self.docker().await?;
        let list = bounded(
            "listing containers",
            CALL_TIMEOUT,
            docker.list_containers(Some(ListContainersOptionsBuilder::new().all(true).build())),
        )
        .await?;
        Ok(list
            .into_iter()
            .map(|c| GcContainer {
                image_id: c.image_id.filter(|i| !i.is_empty()),
                image: c.image.filter(|i| !i.is_empty()),
                running: matches!(c.state, Some(S::RUNNING | S::PAUSED | S::RESTARTING)),
            })
            .collect())
    }

    async fn remove(&self, image: &GcImage) -> Result<(), GcError> {
        match self.delete(&image.id).await? {
            Deleted::Yes => return Ok(()),
            Deleted::NotFound => return Err(GcError::Gone),
            // Docker removes by id without force only an image whose names all lie in
            // one repository with at most one tag; otherwise its names must go first.
            // Any other conflict (a container, a child image) is final.
            Deleted::Conflict(msg) if msg.contains("referenced in multiple repositories") => {}
            Deleted::Conflict(msg) => return Err(GcError::Conflict(msg)),
        }
        // Removing a name never touches a container; removing the last name deletes
        // the image, with the same in-use check as removal by id.
        for name in image.repo_tags.iter().chain(&image.repo_digests) {
            if let Deleted::Conflict(msg) = self.delete(name).await? {
                return Err(GcError::Conflict(msg));
            }
        }
        match self.delete(&image.id).await? {
            // Gone now means the last untag took it.
            Deleted::Yes | Deleted::NotFound => Ok(()),
            Deleted::Conflict(msg) => Err(GcError::Conflict(msg)),
        }
    }
}
