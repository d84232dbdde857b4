//! The Docker Engine from tests: whether it answers, running the CLI, and guards that
//! remove what a test created. Tests that need it begin with
//! `require(&[Need::Docker])` ([`crate::require`]).
//!
//! The `docker` CLI is used rather than bollard so the helpers stay synchronous and
//! usable from any test, async or not.

use std::process::{Command, Stdio};

/// The engine's version as `docker version` reports it, or why it could not.
pub fn docker_server_version() -> Result<String, String> {
    let out = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run the docker CLI: {e}"))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // `docker version` prints the client part and fails when the server is missing;
    // an empty server version is the same failure.
    if out.status.success() && !version.is_empty() {
        Ok(version)
    } else {
        let err = String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', " ");
        Err(if err.is_empty() {
            format!("docker version exited with {}", out.status)
        } else {
            err
        })
    }
}

/// Runs `docker ARGS`, panicking with its stderr on failure; returns stdout, trimmed.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker {}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `docker logs --tail TAIL NAME`: the container's last lines, stdout then stderr, for
/// failure messages; says so if docker could not be run.
pub fn container_logs(name: &str, tail: u32) -> String {
    Command::new("docker")
        .args(["logs", "--tail", &tail.to_string(), name])
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_else(|e| format!("(docker logs: {e})"))
}

/// Removes a container (by id or name) when dropped, so a failing test leaves none
/// behind.
#[derive(Debug)]
pub struct ContainerGuard(pub String);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.0])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Removes the containers of the instances a test launched (`cairn-{id}`) when dropped,
/// whatever happens.
#[derive(Debug, Default)]
pub struct InstanceContainers(pub Vec<String>);

impl Drop for InstanceContainers {
    fn drop(&mut self) {
        for id in &self.0 {
            drop(ContainerGuard(format!("cairn-{id}")));
        }
    }
}
