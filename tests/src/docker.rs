//! Whether a Docker Engine is reachable, and the rule that CI must have one.
//!
//! Tests that need Docker start with `if !require_docker() { return; }`. On a
//! developer's machine without Docker they print why they skipped; under `CI=true` a
//! missing engine fails the test instead, so CI can never pass by skipping.

use std::process::Command;

/// Whether `docker version` reaches a server.
pub fn docker_available() -> Result<String, String> {
    let out = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map_err(|e| format!("cannot run the docker CLI: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// True if Docker is there. If not: panics under `CI=true`, otherwise prints a skip
/// line and returns false.
pub fn require_docker() -> bool {
    match docker_available() {
        Ok(_) => true,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "CI=true but the Docker Engine is not reachable ({e}); Docker tests must run in CI"
            )
        }
        Err(e) => {
            eprintln!("skipping: no Docker Engine ({e})");
            false
        }
    }
}

/// Runs `docker ARGS`, panicking with its stderr on failure; returns stdout.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes a container when dropped, so a failing test leaves none behind.
#[derive(Debug)]
pub struct ContainerGuard(pub String);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}
