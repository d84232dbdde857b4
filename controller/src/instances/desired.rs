//! Blueprint to container: what a host is asked to run for one instance (image,
//! command, environment with the app's secrets and base URL, limits, probe). Pure.

use cairn_shared::ids::InstanceId;
use cairn_shared::workload::{DesiredInstance, Probe};

use super::state::{AppSecrets, Instance};
use crate::auth;
use crate::blueprints::spec::{AppKind, BlueprintSpec};

const MIB: u64 = 1024 * 1024;

/// The base path of an instance behind the controller's proxy.
pub fn base_url(id: &InstanceId) -> String {
    format!("/i/{id}/")
}

/// Fresh secrets for an instance of an app: Jupyter gets a token, RStudio a
/// password; plain web apps handle their own.
pub fn new_secrets(kind: AppKind) -> AppSecrets {
    match kind {
        AppKind::Jupyter => AppSecrets {
            jupyter_token: Some(auth::random_secret(24)),
            rstudio_password: None,
        },
        AppKind::Rstudio => AppSecrets {
            jupyter_token: None,
            rstudio_password: Some(auth::random_secret(12)),
        },
        AppKind::Http => AppSecrets::default(),
    }
}

/// The container a host should run for `i`, started from `spec` (its revision).
pub fn desired_of(i: &Instance, spec: &BlueprintSpec, start_timeout_ms: u64) -> DesiredInstance {
    let base = base_url(&i.id);
    let mut env: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.push(("CAIRN_INSTANCE".into(), i.id.to_string()));
    env.push(("CAIRN_BASE_URL".into(), base.clone()));
    if let Some(t) = &i.secrets.jupyter_token {
        env.push(("JUPYTER_TOKEN".into(), t.clone()));
        // Jupyter has no environment variable for its base URL; the Jupyter Docker
        // Stacks images pass NOTEBOOK_ARGS to the server, and Cairn's own images read
        // CAIRN_BASE_URL.
        env.push((
            "NOTEBOOK_ARGS".into(),
            format!("--ServerApp.base_url={base}"),
        ));
    }
    if let Some(p) = &i.secrets.rstudio_password {
        env.push(("PASSWORD".into(), p.clone()));
    }
    let probe = match spec.app {
        AppKind::Jupyter => Probe::Http { path: base },
        AppKind::Http => Probe::Http { path: "/".into() },
        AppKind::Rstudio => Probe::Tcp,
    };
    DesiredInstance {
        id: i.id.clone(),
        owner: i.owner.clone(),
        blueprint: i.blueprint.clone(),
        revision: i.revision,
        image: spec.run_image().to_string(),
        image_source: spec.image_source(),
        command: spec.command.clone(),
        env,
        memory_bytes: spec.memory_mib * MIB,
        nano_cpus: (spec.cpus * 1e9) as u64,
        app_port: spec.app_port,
        probe,
        start_timeout_ms,
        expect_existing: i.container_seen,
        // The versions fixed at launch, never the blueprint's `latest` of today.
        datasets: i.datasets.clone(),
        volume: i.volume.as_ref().map(|v| v.mount.clone()),
    }
}
