//! [`ContainerRuntime`] on the Docker Engine.
//!
//! Containers join one Cairn-managed bridge network with inter-container traffic
//! off, publish no ports on the host, get hard memory (no swap) and CPU limits, and
//! carry `cairn.*` labels so a restarted agent adopts them.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountBindOptions, MountBindOptionsPropagationEnum,
    MountTypeEnum, NetworkCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, InspectNetworkOptions,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StartContainerOptions,
};
use bollard::Docker;
use cairn_shared::ids::InstanceId;
use cairn_shared::resources::Isolation;
use cairn_shared::workload::{DesiredInstance, MAX_LOG_BYTES};
use futures::{FutureExt, StreamExt};

use super::{labels, ContainerRuntime, ContainerState, DatasetBind, Observed, RuntimeError};
use crate::docker::DockerClient;
use crate::images::docker::DockerImages;
use crate::images::ImageBackend;

/// The Docker network instances run on, and its Linux bridge.
pub const NETWORK: &str = "cairn";
pub const BRIDGE: &str = "cairn0";

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn docker_err(what: &str, e: bollard::errors::Error) -> RuntimeError {
    let msg = match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
        other => other.to_string(),
    };
    RuntimeError(format!("{what}: {msg}"))
}

async fn bounded<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, RuntimeError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| docker_err(what, e)),
        Err(_) => Err(RuntimeError::no_answer(what, CALL_TIMEOUT)),
    }
}

/// Docker, through bollard.
#[derive(Debug)]
pub struct DockerRuntime {
    client: DockerClient,
    /// This agent's host id, stamped on and filtered by [`labels::HOST`].
    host: String,
    /// The OCI runtime for instance containers; Docker's default when `None`.
    oci_runtime: Option<String>,
}

impl DockerRuntime {
    pub fn new(host: &cairn_shared::ids::HostId) -> Self {
        DockerRuntime {
            client: DockerClient::new(CALL_TIMEOUT),
            host: host.to_string(),
            oci_runtime: None,
        }
    }

    /// Runs instance containers under this OCI runtime (e.g. `runsc`).
    pub fn with_oci_runtime(mut self, runtime: Option<String>) -> Self {
        self.oci_runtime = runtime;
        self
    }

    async fn docker(&self) -> Result<&Docker, RuntimeError> {
        self.client
            .get()
            .await
            .map_err(|e| RuntimeError(format!("Docker Engine: {e}")))
    }

    fn name(id: &InstanceId) -> String {
        format!("cairn-{id}")
    }
}

impl DockerRuntime {
    /// The Cairn network and the isolation rules around it.
    async fn prepare_all(&self) -> Result<Isolation, RuntimeError> {
        self.ensure_network().await?;
        // Without the rules an instance could reach the host's services. Refusing to
        // run anything would make a laptop without root useless for trying Cairn, so
        // the failure is reported to the controller, whose pools place nothing here
        // unless they allow unisolated hosts.
        let isolation = tokio::task::spawn_blocking(|| super::isolation::install(BRIDGE))
            .await
            .map_err(|e| RuntimeError(e.to_string()))?;
        Ok(match isolation {
            Ok(()) => Isolation::Enforced,
            Err(error) => {
                tracing::error!(%error, "instances are NOT fenced off from this host: installing packet filter rules failed");
                Isolation::Failed { error }
            }
        })
    }
}

impl DockerRuntime {
    async fn ensure_network(&self) -> Result<(), RuntimeError> {
        match self
            .docker()
            .await?
            .inspect_network(NETWORK, None::<InspectNetworkOptions>)
            .await
        {
            Ok(net) => {
                let icc = net
                    .options
                    .as_ref()
                    .and_then(|o| o.get("com.docker.network.bridge.enable_icc"))
                    .map(String::as_str);
                if icc != Some("false") {
                    tracing::warn!(network = NETWORK, "the existing network lets containers talk to each other; recreate it to isolate instances");
                }
                Ok(())
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                let options = HashMap::from([
                    (
                        "com.docker.network.bridge.enable_icc".to_string(),
                        "false".to_string(),
                    ),
                    (
                        "com.docker.network.bridge.name".to_string(),
                        BRIDGE.to_string(),
                    ),
                ]);
                let req = NetworkCreateRequest {
                    name: NETWORK.into(),
                    driver: Some("bridge".into()),
                    options: Some(options),
                    labels: Some(HashMap::from([(
                        "cairn.managed".to_string(),
                        "true".to_string(),
                    )])),
                    ..Default::default()
                };
                match bounded(
                    "creating the Cairn network",
                    self.docker().await?.create_network(req),
                )
                .await
                {
                    Ok(_) => Ok(()),
                    // Another agent on the same engine created it first.
                    Err(e) if e.0.contains("already exists") => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(docker_err("inspecting the Cairn network", e)),
        }
    }
}

impl ContainerRuntime for DockerRuntime {
    async fn prepare(&self) -> Result<Isolation, RuntimeError> {
        DockerRuntime::prepare_all(self).await
    }

    fn image_backend(&self) -> Arc<dyn ImageBackend> {
        Arc::new(DockerImages::new(self.client.clone()))
    }

    async fn list(&self) -> Result<BTreeMap<InstanceId, Observed>, RuntimeError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                labels::INSTANCE.to_string(),
                format!("{}={}", labels::HOST, self.host),
            ],
        )]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let containers = bounded(
            "listing containers",
            self.docker().await?.list_containers(Some(opts)),
        )
        .await?;
        let mut out = BTreeMap::new();
        for c in containers {
            let (Some(cid), Some(labels)) = (c.id, c.labels) else {
                continue;
            };
            let Some(Ok(instance)) = labels.get(labels::INSTANCE).map(|s| InstanceId::parse(s))
            else {
                continue;
            };
            let state = match c.state.map(|s| s.to_string()).as_deref() {
                Some("running") => ContainerState::Running,
                Some("exited") | Some("dead") => {
                    let info = bounded(
                        "inspecting a container",
                        self.docker()
                            .await?
                            .inspect_container(&cid, None::<InspectContainerOptions>),
                    )
                    .await?;
                    let st = info.state.unwrap_or_default();
                    ContainerState::Exited {
                        exit_code: st.exit_code.unwrap_or(-1),
                        oom_killed: st.oom_killed.unwrap_or(false),
                    }
                }
                _ => ContainerState::Created,
            };
            out.insert(
                instance,
                Observed {
                    container_id: cid,
                    state,
                },
            );
        }
        Ok(out)
    }

    async fn create(
        &self,
        d: &DesiredInstance,
        datasets: &[DatasetBind],
    ) -> Result<String, RuntimeError> {
        let name = Self::name(&d.id);
        let docker = self.docker().await?;
        let v = docker.client_version();
        let mounts = dataset_mounts(datasets, (v.major_version, v.minor_version));
        let labels = HashMap::from([
            (labels::INSTANCE.to_string(), d.id.to_string()),
            (labels::OWNER.to_string(), d.owner.clone()),
            (labels::BLUEPRINT.to_string(), d.blueprint.clone()),
            (labels::REVISION.to_string(), d.revision.to_string()),
            (labels::HOST.to_string(), self.host.clone()),
        ]);
        let memory = i64::try_from(d.memory_bytes).unwrap_or(i64::MAX);
        let body = ContainerCreateBody {
            image: Some(d.image.clone()),
            cmd: d.command.clone(),
            env: Some(d.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                memory: Some(memory),
                // Swap equal to memory means no swap: an instance over its limit is
                // OOM-killed and reported, not slowed to a crawl.
                memory_swap: Some(memory),
                nano_cpus: Some(i64::try_from(d.nano_cpus).unwrap_or(i64::MAX)),
                network_mode: Some(NETWORK.into()),
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                pids_limit: Some(4096),
                runtime: self.oci_runtime.clone(),
                mounts: (!mounts.is_empty()).then_some(mounts),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::new().name(&name).build();
        let t = std::time::Instant::now();
        let created = bounded(
            "creating the container",
            docker.create_container(Some(opts), body),
        )
        .await;
        crate::metrics::container_op("create", created.is_ok(), t.elapsed());
        let id = match created {
            Ok(r) => r.id,
            // Created by an earlier attempt that did not get to report: reuse it.
            Err(e) if e.0.contains("is already in use") => name.clone(),
            Err(e) => return Err(e),
        };
        let t = std::time::Instant::now();
        let started = bounded(
            "starting the container",
            // 304: already started, by an earlier attempt whose answer never came.
            docker
                .start_container(&id, None::<StartContainerOptions>)
                .map(|r| match r {
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 304,
                        ..
                    }) => Ok(()),
                    r => r,
                }),
        )
        .await;
        crate::metrics::container_op("start", started.is_ok(), t.elapsed());
        if let Err(e) = started {
            let _ = self.remove(&id).await;
            return Err(e);
        }
        Ok(id)
    }

    async fn address(&self, instance: &InstanceId) -> Result<Option<IpAddr>, RuntimeError> {
        let info = bounded(
            "inspecting the container",
            self.docker()
                .await?
                .inspect_container(&Self::name(instance), None::<InspectContainerOptions>),
        )
        .await?;
        Ok(info
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|n| n.get(NETWORK).and_then(|e| e.ip_address.clone()))
            .and_then(|ip| ip.parse().ok()))
    }

    async fn image_user(&self, image: &str) -> Option<(u32, u32)> {
        let info = bounded(
            "inspecting the image",
            self.docker().await.ok()?.inspect_image(image),
        )
        .await
        .ok()?;
        parse_user(info.config?.user.as_deref()?)
    }

    async fn stop(&self, container_id: &str) -> Result<(), RuntimeError> {
        // Ten seconds to finish writing, as `docker stop` gives.
        let opts = bollard::query_parameters::StopContainerOptionsBuilder::new()
            .t(10)
            .build();
        match self
            .docker()
            .await?
            .stop_container(container_id, Some(opts))
            .await
        {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => Ok(()),
            Err(e) => Err(docker_err("stopping the container", e)),
        }
    }

    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError> {
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self
            .docker()
            .await?
            .remove_container(container_id, Some(opts))
            .await
        {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(docker_err("removing the container", e)),
        }
    }

    async fn logs(&self, instance: &InstanceId, tail: u32) -> Result<String, RuntimeError> {
        let opts = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&tail.to_string())
            .build();
        let mut stream = self.docker().await?.logs(&Self::name(instance), Some(opts));
        let mut out: Vec<u8> = vec![];
        let collect = async {
            while let Some(item) = stream.next().await {
                let chunk = item.map_err(|e| docker_err("reading logs", e))?;
                out.extend_from_slice(&chunk.into_bytes());
                if out.len() > MAX_LOG_BYTES {
                    // Keep the newest bytes.
                    let cut = out.len() - MAX_LOG_BYTES;
                    out.drain(..cut);
                }
            }
            Ok::<(), RuntimeError>(())
        };
        tokio::time::timeout(CALL_TIMEOUT, collect)
            .await
            .map_err(|_| RuntimeError("reading logs: the Docker Engine did not answer".into()))??;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// Docker mounts for materialised dataset trees: bind, read-only, `rprivate`
/// (nothing mounted later on the host leaks into the container, and nothing
/// inside propagates out). `ReadOnlyForceRecursive` exists from API 1.44 on and
/// is asked for only there; the trees hold no mounts of their own, so on older
/// engines (20.10 speaks 1.41) the plain read-only bind is already complete. A
/// volume copy is the one writable bind, `rprivate` too.
pub fn dataset_mounts(datasets: &[DatasetBind], api: (usize, usize)) -> Vec<Mount> {
    let recursive = api >= (1, 44);
    datasets
        .iter()
        .map(|b| Mount {
            target: Some(b.target.clone()),
            source: Some(b.source.to_string_lossy().into_owned()),
            typ: Some(MountTypeEnum::BIND),
            read_only: Some(!b.writable),
            bind_options: Some(MountBindOptions {
                propagation: Some(MountBindOptionsPropagationEnum::RPRIVATE),
                read_only_force_recursive: (recursive && !b.writable).then_some(true),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

/// An image's `User` as numbers: `1000` (group 0, as Docker gives a uid with no
/// passwd entry) or `1000:100`; a name is `None` (it would need the image's
/// `/etc/passwd`).
pub fn parse_user(user: &str) -> Option<(u32, u32)> {
    let user = user.trim();
    if user.is_empty() {
        return Some((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let uid = u.parse::<u32>().ok()?;
    let gid = match g {
        Some(g) => g.parse::<u32>().ok()?,
        None => 0,
    };
    Some((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_users_by_number_only() {
        assert_eq!(parse_user(""), Some((0, 0)));
        assert_eq!(parse_user("1000"), Some((1000, 0)));
        assert_eq!(parse_user("1000:100"), Some((1000, 100)));
        assert_eq!(parse_user("jovyan"), None);
        assert_eq!(parse_user("1000:users"), None);
    }

    #[test]
    fn dataset_mounts_are_read_only_private_binds() {
        let b = [DatasetBind {
            writable: false,
            source: "/var/lib/cairn/datasets/trees/ab".into(),
            target: "/data/course".into(),
        }];
        let old = dataset_mounts(&b, (1, 41));
        assert_eq!(old.len(), 1);
        let m = &old[0];
        assert_eq!(m.typ, Some(MountTypeEnum::BIND));
        assert_eq!(m.read_only, Some(true));
        assert_eq!(
            m.source.as_deref(),
            Some("/var/lib/cairn/datasets/trees/ab")
        );
        assert_eq!(m.target.as_deref(), Some("/data/course"));
        let o = m
            .bind_options
            .as_ref()
            .map(|o| (o.propagation, o.read_only_force_recursive));
        assert_eq!(
            o,
            Some((Some(MountBindOptionsPropagationEnum::RPRIVATE), None))
        );
        // Engines that know recursive read-only get it.
        let new = dataset_mounts(&b, (1, 44));
        assert_eq!(
            new[0]
                .bind_options
                .as_ref()
                .and_then(|o| o.read_only_force_recursive),
            Some(true)
        );
    }
}
