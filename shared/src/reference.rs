//! Docker image references (`[REGISTRY/]REPO[:TAG][@DIGEST]`), parsed the way Docker
//! does it, following the distribution project's reference grammar. Pure.
//!
//! The first path component names a registry only if it looks like a host: it
//! contains `.` or `:`, is `localhost`, or has upper-case letters (repositories are
//! lower-case). Anything else is on Docker Hub, whose API lives at
//! `registry-1.docker.io` and whose single-component names are `library/…`.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Docker Hub, as it appears in normalised references.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API answers.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Names Docker Hub goes by in configuration files.
const DOCKER_HUB_ALIASES: &[&str] = &[
    DOCKER_HUB,
    "index.docker.io",
    DOCKER_HUB_API,
    "registry.hub.docker.com",
];
/// Longest `REGISTRY/REPO`, as in the distribution grammar.
const MAX_NAME: usize = 255;
/// Longest tag.
const MAX_TAG: usize = 128;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// Why a string is not an image reference. Each message says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("the image reference is empty")]
    Empty,
    #[error("{0:?} is not an image reference: it contains spaces or control characters")]
    Whitespace(String),
    #[error(
        "{0:?} is not a registry host: use a host name or IP address with an optional port, \
         e.g. registry.example.org or 127.0.0.1:5000"
    )]
    Registry(String),
    #[error("repository {0:?} must be lower-case")]
    UpperCase(String),
    #[error(
        "repository {0:?} is not valid: its parts, separated by '/', are lower-case letters \
         and digits joined by '.', '_', '__' or '-'"
    )]
    Repository(String),
    #[error(
        "tag {0:?} is not valid: up to 128 letters, digits, '_', '.' and '-', \
         not starting with '.' or '-'"
    )]
    Tag(String),
    #[error("digest {0:?} is not valid: expected sha256: followed by 64 lower-case hex digits")]
    Digest(String),
    #[error("the image name is longer than {MAX_NAME} characters")]
    TooLong,
}

impl Reference {
    /// Parses and normalises a reference as written in a blueprint.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ReferenceError::Whitespace(s.to_string()));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                if !valid_digest(d) {
                    return Err(ReferenceError::Digest(d.to_string()));
                }
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A ':' after the last '/' starts the tag; one before it is a registry port.
        let last_slash = name_tag.rfind('/');
        let (name, tag) = match name_tag.rfind(':') {
            Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
                let tag = &name_tag[colon + 1..];
                if !valid_tag(tag) {
                    return Err(ReferenceError::Tag(tag.to_string()));
                }
                (&name_tag[..colon], Some(tag.to_string()))
            }
            _ => (name_tag, None),
        };
        if name.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if name.len() > MAX_NAME {
            return Err(ReferenceError::TooLong);
        }
        let (registry, remote) = match name.split_once('/') {
            Some((first, rest)) if looks_like_host(first) => {
                if !valid_registry(first) {
                    return Err(ReferenceError::Registry(first.to_string()));
                }
                let registry = if is_docker_hub(first) {
                    DOCKER_HUB.to_string()
                } else {
                    first.to_string()
                };
                (registry, rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if remote.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::UpperCase(remote));
        }
        if !valid_repository(&remote) {
            return Err(ReferenceError::Repository(remote));
        }
        let repository = if registry == DOCKER_HUB && !remote.contains('/') {
            format!("library/{remote}")
        } else {
            remote
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry as written in references: `docker.io`, `127.0.0.1:5000`, …
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host (and port) whose `/v2/` API serves this registry.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The repository path, `library/` included for Docker Hub's official images.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag as written, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The tag, `latest` when none was written.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    /// The digest as written, if any (`sha256:…`).
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `REGISTRY/REPO`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The familiar short name Docker shows (`python:3.11` for
    /// `docker.io/library/python:3.11`), with the tag (or `latest`); no digest.
    pub fn familiar_tagged(&self) -> String {
        let name = if self.registry == DOCKER_HUB {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            self.name()
        };
        format!("{name}:{}", self.tag_or_latest())
    }

    /// `REGISTRY/REPO@DIGEST`: what instances run once the tag is resolved. Docker
    /// accepts `docker.io/library/x@sha256:…` as written.
    pub fn canonical_digest_reference(&self, digest: &str) -> String {
        format!("{}/{}@{digest}", self.registry, self.repository)
    }

    /// Whether the registry is on this machine (`localhost`, 127.0.0.0/8, `::1`),
    /// where Docker allows plain HTTP without configuration.
    pub fn is_loopback(&self) -> bool {
        host_is_loopback(&self.registry)
    }

    /// Whether `configured` (a registry host from the controller's config) names
    /// this reference's registry; Docker Hub's aliases all match each other.
    pub fn registry_matches(&self, configured: &str) -> bool {
        let configured = configured.trim().trim_end_matches('/');
        if self.registry == DOCKER_HUB {
            is_docker_hub(configured)
        } else {
            configured.eq_ignore_ascii_case(&self.registry)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn is_docker_hub(host: &str) -> bool {
    DOCKER_HUB_ALIASES
        .iter()
        .any(|a| a.eq_ignore_ascii_case(host))
}

/// Docker's rule for "the first component is a registry".
fn looks_like_host(first: &str) -> bool {
    first.contains('.')
        || first.contains(':')
        || first == "localhost"
        || first.bytes().any(|b| b.is_ascii_uppercase())
}

/// `host[:port]`, host being a DNS name, an IPv4 address or a bracketed IPv6 one.
fn valid_registry(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return false,
            },
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(s), None),
        }
    };
    if let Some(h) = host {
        let ok = !h.is_empty()
            && h.split('.').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !c.starts_with('-')
                    && !c.ends_with('-')
            });
        if !ok {
            return false;
        }
    }
    match port {
        None => true,
        Some(p) => {
            !p.is_empty()
                && p.len() <= 5
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n))
        }
    }
}

fn host_is_loopback(registry: &str) -> bool {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest
            .split_once(']')
            .and_then(|(v6, _)| v6.parse::<Ipv6Addr>().ok())
            .is_some_and(|a| a.is_loopback());
    }
    let host = registry.split(':').next().unwrap_or(registry);
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback())
}

/// `path-component ('/' path-component)*`, where a path component is
/// `[a-z0-9]+ (([._]|__|-+) [a-z0-9]+)*`.
fn valid_repository(s: &str) -> bool {
    !s.is_empty() && s.split('/').all(valid_path_component)
}

fn valid_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or any number of '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`.
fn valid_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG
        && word(b[0])
        && b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// Only sha256 digests: the one algorithm registries and Docker use.
pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> String {
        format!("sha256:{}", "ab".repeat(32))
    }

    #[test]
    fn a_loopback_registry_with_a_port() {
        let r = Reference::parse("127.0.0.1:5000/course/python:3.11").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.api_host(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "course/python");
        assert_eq!(r.tag(), Some("3.11"));
        assert_eq!(r.digest(), None);
        assert!(r.is_loopback());
        assert_eq!(
            r.canonical_digest_reference(&digest()),
            format!("127.0.0.1:5000/course/python@{}", digest())
        );
        assert_eq!(r.to_string(), "127.0.0.1:5000/course/python:3.11");
    }

    #[test]
    fn localhost_is_a_registry_even_without_a_dot() {
        let r = Reference::parse("localhost/x").unwrap();
        assert_eq!((r.registry(), r.repository()), ("localhost", "x"));
        assert_eq!(r.tag_or_latest(), "latest");
        assert!(r.is_loopback());
        let r = Reference::parse("localhost:5000/team/x:1").unwrap();
        assert_eq!((r.registry(), r.repository()), ("localhost:5000", "team/x"));
        let r = Reference::parse("[::1]:5000/x").unwrap();
        assert!(r.is_loopback(), "{r}");
        // A bare `localhost:5000` is the image "localhost", tag "5000", as in Docker.
        let r = Reference::parse("localhost:5000").unwrap();
        assert_eq!(r.repository(), "library/localhost");
        assert_eq!(r.tag(), Some("5000"));
    }

    #[test]
    fn docker_hub_names_are_normalised() {
        let r = Reference::parse("ubuntu").unwrap();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.repository(), "library/ubuntu");
        assert_eq!(r.tag_or_latest(), "latest");
        assert!(!r.is_loopback());
        assert_eq!(r.familiar_tagged(), "ubuntu:latest");
        assert_eq!(
            r.canonical_digest_reference(&digest()),
            format!("docker.io/library/ubuntu@{}", digest())
        );
        let r = Reference::parse("jupyter/base-notebook:2024-01-01").unwrap();
        assert_eq!(r.name(), "docker.io/jupyter/base-notebook");
        assert_eq!(r.familiar_tagged(), "jupyter/base-notebook:2024-01-01");
        let r = Reference::parse("index.docker.io/library/python:3").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/python:3");
        assert!(r.registry_matches("registry-1.docker.io"));
        assert!(r.registry_matches("docker.io"));
        assert!(!r.registry_matches("ghcr.io"));
    }

    #[test]
    fn tag_and_digest_together() {
        let s = format!("a/b:c@{}", digest());
        let r = Reference::parse(&s).unwrap();
        assert_eq!(r.repository(), "a/b");
        assert_eq!(r.tag(), Some("c"));
        assert_eq!(r.digest(), Some(digest().as_str()));
        assert_eq!(r.to_string(), format!("docker.io/a/b:c@{}", digest()));
        let r = Reference::parse(&format!("r.example:443/x@{}", digest())).unwrap();
        assert_eq!((r.registry(), r.tag()), ("r.example:443", None));
    }

    #[test]
    fn separators_in_repository_names() {
        for ok in [
            "a.b/c__d/e-f",
            "registry.example.org/a---b",
            "x_y",
            "a1/b2/c3/d4",
        ] {
            assert!(Reference::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn invalid_references_say_why() {
        use ReferenceError as E;
        let bad = |s: &str| Reference::parse(s).unwrap_err();
        assert_eq!(bad(""), E::Empty);
        assert!(matches!(bad("a b"), E::Whitespace(_)));
        assert!(matches!(bad("Ubuntu"), E::UpperCase(_)));
        assert!(matches!(bad("r.example/Team/x"), E::UpperCase(_)));
        assert!(matches!(bad("a//b"), E::Repository(_)));
        assert!(matches!(bad("a/b/"), E::Repository(_)));
        assert!(matches!(bad("-a"), E::Repository(_)));
        assert!(matches!(bad("a..b"), E::Repository(_)));
        assert!(matches!(bad("a___b"), E::Repository(_)));
        assert!(matches!(bad("a:"), E::Tag(_)));
        assert!(matches!(bad("a:-x"), E::Tag(_)));
        assert!(matches!(bad(&format!("a:{}", "t".repeat(129))), E::Tag(_)));
        assert!(matches!(bad("a@sha256:abc"), E::Digest(_)));
        assert!(matches!(bad("a@md5:0123"), E::Digest(_)));
        assert!(matches!(
            bad(&format!("a@sha256:{}", "AB".repeat(32))),
            E::Digest(_)
        ));
        assert!(matches!(bad("host:99999/x"), E::Registry(_)));
        assert!(matches!(bad("host:/x"), E::Registry(_)));
        assert!(matches!(bad("-bad.example/x"), E::Registry(_)));
        assert!(matches!(bad("[zz]:5000/x"), E::Registry(_)));
        assert_eq!(bad(&format!("r.example/{}", "a".repeat(260))), E::TooLong);
        assert!(matches!(bad(":tag"), E::Empty));
        // Messages name the offending part.
        assert!(bad("a:-x").to_string().contains("\"-x\""));
    }
}
