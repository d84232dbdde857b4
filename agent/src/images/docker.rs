//! [`ImageBackend`] on the Docker Engine: `inspect` for presence, `create_image`
//! (`docker pull`) with the registry's login, and `/images/load` (`docker load`)
//! streaming an archive from disk.

use std::path::Path;
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{CreateImageOptions, ImportImageOptions};
use cairn_shared::images::RegistryCredential;
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::{BackendError, ImageBackend, PullEvents};
use crate::docker::DockerClient;

/// How long an `inspect` may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a pull may go without a single event from Docker. Big layers still send
/// "Downloading" events every few hundred kilobytes, so silence means a stuck pull.
const PULL_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a `docker load` may take in all.
const LOAD_TIMEOUT: Duration = Duration::from_secs(1800);

/// Docker's own words for an error, without bollard's wrapping.
fn message(e: bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
        bollard::errors::Error::DockerStreamError { error } => error,
        other => other.to_string(),
    }
}

/// Images through the Docker Engine.
#[derive(Debug, Clone)]
pub struct DockerImages {
    client: DockerClient,
}

impl DockerImages {
    /// Uses `client`, typically the one the container runtime uses too.
    pub fn new(client: DockerClient) -> Self {
        DockerImages { client }
    }

    async fn docker(&self) -> Result<&bollard::Docker, BackendError> {
        self.client.get().await.map_err(|e| BackendError(e.0))
    }
}

impl ImageBackend for DockerImages {
    fn present<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            let docker = self.docker().await?;
            match tokio::time::timeout(CALL_TIMEOUT, docker.inspect_image(reference)).await {
                Err(_) => Err(BackendError(format!(
                    "inspecting image {reference}: the Docker Engine did not answer within {} s",
                    CALL_TIMEOUT.as_secs()
                ))),
                Ok(Ok(_)) => Ok(true),
                Ok(Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    ..
                })) => Ok(false),
                Ok(Err(e)) => Err(BackendError(format!(
                    "inspecting image {reference}: {}",
                    message(e)
                ))),
            }
        })
    }

    fn pull<'a>(
        &'a self,
        reference: &'a str,
        credential: Option<&'a RegistryCredential>,
        events: PullEvents<'a>,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let docker = self.docker().await?;
            // The digest reference as a whole: Docker pulls exactly that manifest.
            let opts = CreateImageOptions {
                from_image: Some(reference.to_string()),
                ..Default::default()
            };
            let credentials = credential.map(|c| DockerCredentials {
                username: Some(c.username.clone()),
                password: Some(c.password.clone()),
                serveraddress: Some(c.registry.clone()),
                ..Default::default()
            });
            let mut stream = docker.create_image(Some(opts), None, credentials);
            loop {
                match tokio::time::timeout(PULL_IDLE_TIMEOUT, stream.next()).await {
                    Err(_) => {
                        return Err(BackendError(format!(
                            "no progress from Docker for {} s",
                            PULL_IDLE_TIMEOUT.as_secs()
                        )))
                    }
                    Ok(None) => return Ok(()),
                    Ok(Some(Ok(info))) => events(&info),
                    Ok(Some(Err(e))) => return Err(BackendError(message(e))),
                }
            }
        })
    }

    fn load<'a>(&'a self, archive: &'a Path) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let docker = self.docker().await?;
            let file = tokio::fs::File::open(archive)
                .await
                .map_err(|e| BackendError(format!("opening {}: {e}", archive.display())))?;
            // Streamed from disk: archives can be larger than the agent's memory.
            let body = futures::stream::try_unfold(file, |mut f| async move {
                let mut buf = vec![0u8; 1 << 20];
                let n = f.read(&mut buf).await?;
                if n == 0 {
                    return Ok(None);
                }
                buf.truncate(n);
                Ok(Some((bytes::Bytes::from(buf), f)))
            });
            let opts = ImportImageOptions {
                quiet: true,
                ..Default::default()
            };
            let mut stream = docker.import_image(opts, bollard::body_try_stream(body), None);
            let drain = async {
                while let Some(item) = stream.next().await {
                    item.map_err(|e| BackendError(message(e)))?;
                }
                Ok(())
            };
            tokio::time::timeout(LOAD_TIMEOUT, drain)
                .await
                .map_err(|_| {
                    BackendError(format!(
                        "the Docker Engine did not finish loading within {} s",
                        LOAD_TIMEOUT.as_secs()
                    ))
                })?
        })
    }
}
