//! The one way the agent reaches the Docker Engine: where it is, connecting with a
//! bounded wait (API version negotiated, because hosts run engines older than
//! bollard's default), and engine errors spelled out on one line.

use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;

/// Where the engine listens when `DOCKER_HOST` is unset or empty.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// Which engine to talk to.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// `DOCKER_HOST`, or the local socket: what the `docker` CLI would use.
    Defaults,
    /// A given Unix socket; lets tests point at an engine that is not there.
    Unix(String),
}

/// Connecting failed; the message names the step and its causes.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(pub String);

impl Endpoint {
    /// Where the engine is, in words for error messages.
    pub fn address(&self) -> String {
        match self {
            Endpoint::Defaults => std::env::var("DOCKER_HOST")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| DEFAULT_HOST.into()),
            Endpoint::Unix(path) => format!("unix://{path}"),
        }
    }

    /// A client for this engine with its API version negotiated, waiting at most
    /// `limit` for the engine to answer.
    pub async fn connect(&self, limit: Duration) -> Result<Docker, ConnectError> {
        let docker = match self {
            // Like the CLI, treat an empty DOCKER_HOST as unset; bollard would reject
            // it as a URI without a scheme.
            Endpoint::Defaults if std::env::var_os("DOCKER_HOST").is_some_and(|h| h.is_empty()) => {
                Docker::connect_with_local_defaults()
            }
            Endpoint::Defaults => Docker::connect_with_defaults(),
            Endpoint::Unix(path) => {
                Docker::connect_with_unix(path, limit.as_secs(), bollard::API_DEFAULT_VERSION)
            }
        }
        .map_err(|e| ConnectError(format!("connecting: {}", describe(&e))))?;
        match tokio::time::timeout(limit, docker.negotiate_version()).await {
            Ok(Ok(docker)) => Ok(docker),
            Ok(Err(e)) => Err(ConnectError(format!(
                "negotiating the API version: {}",
                describe(&e)
            ))),
            Err(_) => Err(ConnectError(format!(
                "negotiating the API version: no answer within {} s",
                limit.as_secs()
            ))),
        }
    }
}

/// [`Endpoint::Defaults`] connected: the engine the `docker` CLI would use.
pub async fn connect(limit: Duration) -> Result<Docker, ConnectError> {
    Endpoint::Defaults.connect(limit).await
}

/// A Docker client that connects on first use (and again until it works), so an
/// agent started before the engine comes up catches up by itself. Clones share one
/// connection.
#[derive(Debug, Clone)]
pub struct DockerClient {
    cell: Arc<tokio::sync::OnceCell<Docker>>,
    limit: Duration,
}

impl DockerClient {
    /// A client whose connection attempts wait at most `limit` for the engine.
    pub fn new(limit: Duration) -> Self {
        DockerClient {
            cell: Arc::default(),
            limit,
        }
    }

    /// The connected client.
    pub async fn get(&self) -> Result<&Docker, ConnectError> {
        self.cell.get_or_try_init(|| connect(self.limit)).await
    }
}

/// An error and its causes on one line: hyper's "client error (Connect)" alone does
/// not say that the socket refused the connection.
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_includes_causes_on_one_line() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused\n(os error 111)",
        ));
        assert_eq!(
            describe(&e),
            "client error (Connect): Connection refused (os error 111)"
        );
    }

    #[tokio::test]
    async fn a_missing_socket_fails_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let endpoint = Endpoint::Unix(socket.display().to_string());
        assert!(endpoint.address().ends_with("docker.sock"));
        let started = std::time::Instant::now();
        let err = endpoint.connect(Duration::from_secs(5)).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(15));
        assert!(err.0.contains("docker.sock"), "the socket is named: {err}");
    }
}
