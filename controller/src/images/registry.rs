//! A client for the registry HTTP API v2 (the distribution spec): which manifest
//! digest a tag points at right now, and the logins the controller has for
//! registries.
//!
//! `HEAD /v2/REPO/manifests/TAG` with every manifest type in `Accept` answers with
//! `Docker-Content-Digest`; a registry that leaves it out gets a `GET` and the
//! SHA-256 of the body, which is what the digest is by definition. A `401` is
//! answered as its `WWW-Authenticate` challenge asks: `Basic` with the configured
//! login, or `Bearer` with a token fetched from the challenge's realm (with the
//! login, or anonymously without one).
//!
//! Passwords never appear in errors or logs: requests carry them in headers only,
//! [`Login`]'s `Debug` hides them, and errors name the user at most.

use std::time::Duration;

use reqwest::header::{HeaderMap, ACCEPT, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};

use crate::config::{ImagesConfig, RegistryConfig};
use cairn_shared::images::RegistryCredential;
use cairn_shared::reference::{valid_digest, Reference};

/// Every manifest type a tag may point at: multi-platform indexes first, since
/// Docker pulls by the index digest and picks the platform on the host.
pub const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";
/// Largest manifest read when the digest must be computed from the body.
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest token response read.
const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// A username and password for one registry. `Debug` hides the password.
#[derive(Clone)]
pub struct Login {
    pub username: String,
    password: String,
}

impl Login {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Login {
            username: username.into(),
            password: password.into(),
        }
    }

    pub fn password(&self) -> &str {
        &self.password
    }
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Why a tag could not be resolved. Messages are for the admin saving a blueprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("tag {tag} not found in {repository}")]
    TagNotFound { tag: String, repository: String },
    #[error("digest {digest} not found in {repository}")]
    DigestNotFound { digest: String, repository: String },
    #[error("registry {host} is unreachable: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("registry {host} did not answer within {secs} s")]
    Timeout { host: String, secs: u64 },
    #[error(
        "registry {host} needs a login: add one for it under [[images.registries]] in the \
         controller's config.toml"
    )]
    LoginRequired { host: String },
    #[error("registry {host} refused the login for {user}")]
    LoginRefused { host: String, user: String },
    #[error("{repository} does not exist, or {user} may not pull from it")]
    Denied { repository: String, user: String },
    #[error(
        "registry {host} has a login for {user} but no password: set password or password_file"
    )]
    NoPassword { host: String, user: String },
    #[error("registry {host}: cannot read the password file {path}: {reason}")]
    PasswordFile {
        host: String,
        path: String,
        reason: String,
    },
    #[error("registry {host}: {message}")]
    Protocol { host: String, message: String },
    #[error("cannot set up the registry HTTP client: {0}")]
    Client(String),
}

/// One authentication challenge from `WWW-Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lower-case: `basic`, `bearer`, …
    pub scheme: String,
    /// Parameter names lower-case, values unquoted.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a `WWW-Authenticate` value (RFC 9110 §11.6.1): one or more challenges,
/// each a scheme and comma-separated `name=value` parameters whose values may be
/// quoted strings with commas and backslash escapes inside.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = vec![];
    let b = header.as_bytes();
    let mut i = 0;
    let skip = |i: &mut usize, f: &dyn Fn(u8) -> bool| {
        while *i < b.len() && f(b[*i]) {
            *i += 1;
        }
    };
    let is_token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&c);
    loop {
        skip(&mut i, &|c| c == b' ' || c == b'\t' || c == b',');
        if i >= b.len() {
            break;
        }
        let start = i;
        skip(&mut i, &is_token);
        if i == start {
            // Not a token: give up on the rest rather than loop.
            break;
        }
        let token = &header[start..i];
        let after_ws = {
            let mut j = i;
            skip(&mut j, &|c| c == b' ' || c == b'\t');
            j
        };
        if after_ws < b.len() && b[after_ws] == b'=' && !out.is_empty() {
            // A parameter of the current challenge.
            i = after_ws + 1;
            skip(&mut i, &|c| c == b' ' || c == b'\t');
            let value = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = String::new();
                let mut chars = header[i..].char_indices();
                let mut end = header.len();
                while let Some((k, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                v.push(n);
                            }
                        }
                        '"' => {
                            end = i + k + 1;
                            break;
                        }
                        c => v.push(c),
                    }
                }
                i = end;
                v
            } else {
                // Leniently up to the next comma or space: some servers leave URLs
                // unquoted, though ':' and '/' are not token characters.
                let s = i;
                skip(&mut i, &|c| c != b',' && c != b' ' && c != b'\t');
                header[s..i].to_string()
            };
            if let Some(last) = out.last_mut() {
                last.params.push((token.to_ascii_lowercase(), value));
            }
        } else {
            // A new challenge; token68 credentials (`Negotiate abc==`) are not used here.
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: vec![],
            });
        }
    }
    out
}

/// How the next request authenticates.
enum Auth<'a> {
    Anonymous,
    Basic(&'a Login),
    Bearer(String),
}

/// What an answered `401` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Basic,
    Bearer,
}

/// Where and how to reach one registry.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub reference: &'a Reference,
    pub login: Option<&'a Login>,
    /// Plain HTTP: loopback registries and those configured `insecure`.
    pub plain_http: bool,
}

/// A registry API client with one time limit for a whole resolution.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    timeout: Duration,
}

impl RegistryClient {
    /// A client whose [`RegistryClient::manifest_digest`] gives up after `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, RegistryError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("cairn-controller/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()
            .map_err(|e| RegistryError::Client(innermost(&e)))?;
        Ok(RegistryClient { http, timeout })
    }

    /// The digest (`sha256:…`) of the manifest the reference's tag (or digest)
    /// names in its registry now.
    pub async fn manifest_digest(&self, target: &Target<'_>) -> Result<String, RegistryError> {
        let host = target.reference.registry().to_string();
        match tokio::time::timeout(self.timeout, self.digest_inner(target)).await {
            Ok(r) => r,
            Err(_) => Err(RegistryError::Timeout {
                host,
                secs: self.timeout.as_secs().max(1),
            }),
        }
    }

    async fn digest_inner(&self, t: &Target<'_>) -> Result<String, RegistryError> {
        let r = t.reference;
        let host = r.registry().to_string();
        let scheme = if t.plain_http { "http" } else { "https" };
        let what = r.digest().unwrap_or_else(|| r.tag_or_latest());
        let url = format!(
            "{scheme}://{}/v2/{}/manifests/{what}",
            r.api_host(),
            r.repository()
        );
        let mut auth = Auth::Anonymous;
        let mut answered: Option<Scheme> = None;
        let mut resp = self.send(Method::HEAD, &url, &auth, &host).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let challenges = challenges_of(resp.headers());
            let bearer = challenges.iter().find(|c| c.scheme == "bearer");
            let basic = challenges.iter().any(|c| c.scheme == "basic");
            auth = match (bearer, basic, t.login) {
                (Some(c), _, login) => {
                    answered = Some(Scheme::Bearer);
                    Auth::Bearer(self.token(c, t, login).await?)
                }
                (None, true, Some(login)) => {
                    answered = Some(Scheme::Basic);
                    Auth::Basic(login)
                }
                (None, true, None) => return Err(RegistryError::LoginRequired { host }),
                (None, false, _) => {
                    return Err(RegistryError::Protocol {
                        host,
                        message: "answered 401 without a Basic or Bearer challenge".into(),
                    })
                }
            };
            resp = self.send(Method::HEAD, &url, &auth, &host).await?;
        }
        let status = resp.status();
        tracing::debug!(registry = %host, repository = %r.repository(), reference = %what, %status, "manifest HEAD");
        match status {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Err(not_found(r)),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(match (answered, t.login) {
                    (Some(Scheme::Basic), Some(l)) => RegistryError::LoginRefused {
                        host,
                        user: l.username.clone(),
                    },
                    (_, Some(l)) => RegistryError::Denied {
                        repository: r.name(),
                        user: l.username.clone(),
                    },
                    (_, None) if status == StatusCode::UNAUTHORIZED => {
                        RegistryError::LoginRequired { host }
                    }
                    (_, None) => RegistryError::Denied {
                        repository: r.name(),
                        user: "an anonymous client".into(),
                    },
                });
            }
            s => {
                return Err(RegistryError::Protocol {
                    host,
                    message: format!("answered {s} for {}:{what}", r.repository()),
                })
            }
        }
        if let Some(d) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
        {
            if valid_digest(d) {
                return Ok(d.to_string());
            }
            return Err(RegistryError::Protocol {
                host,
                message: format!("answered with a digest that is not sha256: {d:?}"),
            });
        }
        // No digest header: the digest is the SHA-256 of the manifest as served.
        let resp = self.send(Method::GET, &url, &auth, &host).await?;
        if !resp.status().is_success() {
            return Err(RegistryError::Protocol {
                host,
                message: format!("answered {} to GET of the manifest", resp.status()),
            });
        }
        let body = read_limited(resp, MAX_MANIFEST_BYTES, &host, self.timeout).await?;
        Ok(format!("sha256:{}", hex::encode(Sha256::digest(&body))))
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        auth: &Auth<'_>,
        host: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut req = self
            .http
            .request(method, url)
            .header(ACCEPT, MANIFEST_TYPES);
        req = match auth {
            Auth::Anonymous => req,
            Auth::Basic(l) => req.basic_auth(&l.username, Some(l.password())),
            Auth::Bearer(token) => req.bearer_auth(token),
        };
        req.send()
            .await
            .map_err(|e| transport(host, &e, self.timeout))
    }

    /// A bearer token from the challenge's realm, for pulling the repository.
    async fn token(
        &self,
        challenge: &Challenge,
        t: &Target<'_>,
        login: Option<&Login>,
    ) -> Result<String, RegistryError> {
        let host = t.reference.registry().to_string();
        let protocol = |message: String| RegistryError::Protocol {
            host: host.clone(),
            message,
        };
        let realm = challenge
            .param("realm")
            .ok_or_else(|| protocol("its Bearer challenge names no realm".into()))?;
        let realm_url = reqwest::Url::parse(realm)
            .map_err(|e| protocol(format!("its token realm {realm:?} is not a URL: {e}")))?;
        match realm_url.scheme() {
            "https" => {}
            // A login over plain HTTP only where the registry itself is plain HTTP.
            "http" if t.plain_http || login.is_none() => {}
            _ => {
                return Err(protocol(format!(
                    "its token realm {realm:?} is not HTTPS; the login is not sent there"
                )))
            }
        }
        let scope = challenge
            .param("scope")
            .map(str::to_string)
            .unwrap_or_else(|| format!("repository:{}:pull", t.reference.repository()));
        let mut query: Vec<(&str, &str)> = vec![("scope", &scope)];
        if let Some(service) = challenge.param("service") {
            query.push(("service", service));
        }
        let mut req = self.http.get(realm_url).query(&query);
        if let Some(l) = login {
            req = req.basic_auth(&l.username, Some(l.password()));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport(&host, &e, self.timeout))?;
        let status = resp.status();
        tracing::debug!(registry = %host, %status, "token request");
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(match login {
                Some(l) => RegistryError::LoginRefused {
                    host,
                    user: l.username.clone(),
                },
                None => RegistryError::LoginRequired { host },
            });
        }
        if !status.is_success() {
            return Err(protocol(format!("its token service answered {status}")));
        }
        let body = read_limited(resp, MAX_TOKEN_BYTES, &host, self.timeout).await?;
        #[derive(serde::Deserialize)]
        struct TokenBody {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let parsed: TokenBody = serde_json::from_slice(&body)
            .map_err(|e| protocol(format!("its token service sent no JSON token: {e}")))?;
        parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| protocol("its token service sent an empty token".into()))
    }
}

fn not_found(r: &Reference) -> RegistryError {
    match r.digest() {
        Some(d) => RegistryError::DigestNotFound {
            digest: d.to_string(),
            repository: r.name(),
        },
        None => RegistryError::TagNotFound {
            tag: r.tag_or_latest().to_string(),
            repository: r.name(),
        },
    }
}

fn challenges_of(headers: &HeaderMap) -> Vec<Challenge> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse_challenges)
        .collect()
}

async fn read_limited(
    mut resp: reqwest::Response,
    max: usize,
    host: &str,
    timeout: Duration,
) -> Result<Vec<u8>, RegistryError> {
    let mut body = vec![];
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if body.len() + c.len() > max {
                    return Err(RegistryError::Protocol {
                        host: host.to_string(),
                        message: format!("sent more than {max} bytes"),
                    });
                }
                body.extend_from_slice(&c);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(transport(host, &e, timeout)),
        }
    }
}

/// The innermost cause: "Connection refused (os error 111)" rather than reqwest's
/// "error sending request for url (…)".
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn transport(host: &str, e: &reqwest::Error, timeout: Duration) -> RegistryError {
    if e.is_timeout() {
        RegistryError::Timeout {
            host: host.to_string(),
            secs: timeout.as_secs().max(1),
        }
    } else {
        RegistryError::Unreachable {
            host: host.to_string(),
            reason: innermost(e),
        }
    }
}

/// The configuration entry for a reference's registry, if there is one.
pub fn config_for<'a>(config: &'a ImagesConfig, r: &Reference) -> Option<&'a RegistryConfig> {
    config
        .registries
        .iter()
        .find(|c| r.registry_matches(&c.host))
}

/// The login configured for one registry entry: `None` without a username.
/// The password comes from `password`, else from `password_file`, read now so a
/// rotated file is picked up without a restart.
pub fn login_of(c: &RegistryConfig) -> Result<Option<Login>, RegistryError> {
    let Some(user) = c.username.as_deref().filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let password = match (&c.password, &c.password_file) {
        (Some(p), _) => p.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
            .map_err(|e| RegistryError::PasswordFile {
                host: c.host.clone(),
                path: path.display().to_string(),
                reason: e.to_string(),
            })?,
        (None, None) => {
            return Err(RegistryError::NoPassword {
                host: c.host.clone(),
                user: user.to_string(),
            })
        }
    };
    Ok(Some(Login::new(user, password)))
}

/// The registry logins to hand to agents for their pulls. Entries without a
/// username are skipped; an entry whose password cannot be read is logged (by host
/// only) and skipped, so the other registries still work.
pub fn credentials(config: &ImagesConfig) -> Vec<RegistryCredential> {
    config
        .registries
        .iter()
        .filter_map(|c| match login_of(c) {
            Ok(Some(l)) => Some(RegistryCredential {
                registry: c.host.trim().to_string(),
                username: l.username.clone(),
                password: l.password().to_string(),
            }),
            Ok(None) => None,
            Err(_) => {
                // The error names the password file's path; the host is enough to act.
                tracing::warn!(registry = %c.host, "cannot read the registry password; agents pull from it without a login");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_with_quoted_commas() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(
            c[0].param("scope"),
            Some("repository:library/ubuntu:pull,push")
        );
    }

    #[test]
    fn basic_and_several_challenges() {
        let c = parse_challenges(r#"Basic realm="cairn-test""#);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some("cairn-test"));

        let c = parse_challenges(
            r#"Basic realm="a \"b\"", Bearer realm=https://t.example/token , service=reg"#,
        );
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].param("realm"), Some(r#"a "b""#));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("realm"), Some("https://t.example/token"));
        assert_eq!(c[1].param("service"), Some("reg"));

        assert!(parse_challenges("").is_empty());
        assert_eq!(parse_challenges("BEARER")[0].scheme, "bearer");
        // Garbage does not loop or panic.
        let _ = parse_challenges("Bearer realm=\"unterminated");
        let _ = parse_challenges("=,=\"\\");
    }

    fn registry(host: &str, user: Option<&str>) -> RegistryConfig {
        RegistryConfig {
            host: host.into(),
            username: user.map(str::to_string),
            password: user.map(|_| "s3cret-pw".to_string()),
            password_file: None,
            insecure: false,
        }
    }

    #[test]
    fn credentials_skip_entries_without_a_login_and_unreadable_files() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let config = ImagesConfig {
            registries: vec![
                registry("open.example", None),
                registry("r.example:5000", Some("course")),
                RegistryConfig {
                    password: None,
                    password_file: Some(file),
                    ..registry("f.example", Some("ci"))
                },
                RegistryConfig {
                    password: None,
                    password_file: Some(tmp.path().join("missing")),
                    ..registry("gone.example", Some("x"))
                },
            ],
            ..Default::default()
        };
        let creds = credentials(&config);
        let shown: Vec<(&str, &str, &str)> = creds
            .iter()
            .map(|c| {
                (
                    c.registry.as_str(),
                    c.username.as_str(),
                    c.password.as_str(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            vec![
                ("r.example:5000", "course", "s3cret-pw"),
                ("f.example", "ci", "from-file")
            ]
        );
        let err = login_of(&config.registries[3]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("registry gone.example: cannot read the password file"),
            "{err}"
        );
        let no_pw = RegistryConfig {
            password: None,
            ..registry("n.example", Some("u"))
        };
        assert!(matches!(
            login_of(&no_pw),
            Err(RegistryError::NoPassword { .. })
        ));
        assert!(!format!("{:?}", login_of(&config.registries[1])).contains("s3cret"));
    }

    #[test]
    fn config_entries_match_by_registry() {
        let config = ImagesConfig {
            registries: vec![
                registry("index.docker.io", Some("hub")),
                registry("127.0.0.1:5000", None),
            ],
            ..Default::default()
        };
        let hub = Reference::parse("python:3").unwrap();
        assert_eq!(config_for(&config, &hub).unwrap().host, "index.docker.io");
        let local = Reference::parse("127.0.0.1:5000/a/b:1").unwrap();
        assert_eq!(config_for(&config, &local).unwrap().host, "127.0.0.1:5000");
        let other = Reference::parse("127.0.0.1:5001/a/b:1").unwrap();
        assert!(config_for(&config, &other).is_none());
    }

    /// A fake registry plus token server on loopback, made with axum.
    mod fake {
        use std::net::SocketAddr;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;

        use axum::extract::{Path, State};
        use axum::http::{HeaderMap, Method, StatusCode};
        use axum::response::{IntoResponse, Response};
        use axum::routing::{any, get};
        use axum::Router;

        pub const MANIFEST: &str =
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
        pub const TOKEN: &str = "tok-123";

        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Mode {
            /// Bearer challenge; the token server wants `user:pass` via Basic.
            Bearer,
            /// Bearer challenge; tokens for anyone.
            BearerAnonymous,
            /// Basic challenge on the registry itself.
            Basic,
            /// Open, but no Docker-Content-Digest header.
            NoDigestHeader,
        }

        pub struct Fake {
            pub mode: Mode,
            pub addr: std::sync::OnceLock<SocketAddr>,
            pub token_requests: AtomicUsize,
            pub scope_seen: std::sync::Mutex<Option<String>>,
        }

        fn basic(user: &str, pass: &str) -> String {
            use base64::Engine as _;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            )
        }

        pub fn digest() -> String {
            use sha2::Digest as _;
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(MANIFEST)))
        }

        async fn manifest(
            State(f): State<Arc<Fake>>,
            method: Method,
            Path((ns, repo, reference)): Path<(String, String, String)>,
            headers: HeaderMap,
        ) -> Response {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let addr = f.addr.get().copied().unwrap_or(([127, 0, 0, 1], 0).into());
            let ok = match f.mode {
                Mode::Bearer | Mode::BearerAnonymous => auth == format!("Bearer {TOKEN}"),
                Mode::Basic => auth == basic("course", "right-pw"),
                Mode::NoDigestHeader => true,
            };
            if !ok {
                let challenge = match f.mode {
                    Mode::Basic => r#"Basic realm="fake""#.to_string(),
                    _ => format!(
                        r#"Bearer realm="http://{addr}/token",service="fake-registry",scope="repository:{ns}/{repo}:pull""#
                    ),
                };
                return (
                    StatusCode::UNAUTHORIZED,
                    [("www-authenticate", challenge)],
                    "",
                )
                    .into_response();
            }
            if ns != "course" || repo != "python" || (reference != "3.11" && reference != digest())
            {
                return (
                    StatusCode::NOT_FOUND,
                    r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#,
                )
                    .into_response();
            }
            let body = if method == Method::HEAD { "" } else { MANIFEST };
            let mut r = (StatusCode::OK, body).into_response();
            r.headers_mut().insert(
                "content-type",
                "application/vnd.oci.image.manifest.v1+json"
                    .parse()
                    .unwrap(),
            );
            if f.mode != Mode::NoDigestHeader {
                r.headers_mut()
                    .insert("docker-content-digest", digest().parse().unwrap());
            }
            r
        }

        async fn token(
            State(f): State<Arc<Fake>>,
            axum::extract::Query(q): axum::extract::Query<Vec<(String, String)>>,
            headers: HeaderMap,
        ) -> Response {
            f.token_requests.fetch_add(1, Ordering::SeqCst);
            *f.scope_seen.lock().unwrap() =
                q.iter().find(|(k, _)| k == "scope").map(|(_, v)| v.clone());
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if f.mode == Mode::Bearer && auth != basic("course", "right-pw") {
                return (StatusCode::UNAUTHORIZED, "").into_response();
            }
            axum::Json(serde_json::json!({ "token": TOKEN })).into_response()
        }

        pub async fn start(mode: Mode) -> Arc<Fake> {
            let f = Arc::new(Fake {
                mode,
                addr: Default::default(),
                token_requests: AtomicUsize::new(0),
                scope_seen: Default::default(),
            });
            let app = Router::new()
                .route("/v2/{ns}/{repo}/manifests/{reference}", any(manifest))
                .route("/token", get(token))
                .with_state(f.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            f.addr.set(listener.local_addr().unwrap()).unwrap();
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            f
        }
    }

    use fake::Mode;

    async fn resolve_with(
        f: &fake::Fake,
        image_path: &str,
        login: Option<&Login>,
    ) -> Result<String, RegistryError> {
        let addr = f.addr.get().unwrap();
        let r = Reference::parse(&format!("{addr}/{image_path}")).unwrap();
        let client = RegistryClient::new(Duration::from_secs(5)).unwrap();
        client
            .manifest_digest(&Target {
                reference: &r,
                login,
                plain_http: r.is_loopback(),
            })
            .await
    }

    #[tokio::test]
    async fn bearer_token_flow_with_a_login() {
        let f = fake::start(Mode::Bearer).await;
        let good = Login::new("course", "right-pw");
        assert_eq!(
            resolve_with(&f, "course/python:3.11", Some(&good))
                .await
                .unwrap(),
            fake::digest()
        );
        assert_eq!(
            f.scope_seen.lock().unwrap().as_deref(),
            Some("repository:course/python:pull")
        );
        let bad = Login::new("course", "wrong-pw");
        let err = resolve_with(&f, "course/python:3.11", Some(&bad))
            .await
            .unwrap_err();
        let host = f.addr.get().unwrap().to_string();
        assert_eq!(
            err.to_string(),
            format!("registry {host} refused the login for course")
        );
        assert!(!format!("{err:?}").contains("wrong-pw"));
        let err = resolve_with(&f, "course/python:3.11", None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::LoginRequired { .. }),
            "{err:?}"
        );
        let err = resolve_with(&f, "course/python:9", Some(&good))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("tag 9 not found in {host}/course/python")
        );
    }

    #[tokio::test]
    async fn anonymous_bearer_tokens() {
        let f = fake::start(Mode::BearerAnonymous).await;
        assert_eq!(
            resolve_with(&f, "course/python:3.11", None).await.unwrap(),
            fake::digest()
        );
        assert_eq!(
            f.token_requests.load(std::sync::atomic::Ordering::SeqCst),
            1
        );
        // By digest, too.
        let by_digest = format!("course/python@{}", fake::digest());
        assert_eq!(
            resolve_with(&f, &by_digest, None).await.unwrap(),
            fake::digest()
        );
    }

    #[tokio::test]
    async fn basic_login_flow() {
        let f = fake::start(Mode::Basic).await;
        let host = f.addr.get().unwrap().to_string();
        let good = Login::new("course", "right-pw");
        assert_eq!(
            resolve_with(&f, "course/python:3.11", Some(&good))
                .await
                .unwrap(),
            fake::digest()
        );
        let err = resolve_with(
            &f,
            "course/python:3.11",
            Some(&Login::new("course", "nope")),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err,
            RegistryError::LoginRefused {
                host: host.clone(),
                user: "course".into()
            }
        );
        let err = resolve_with(&f, "course/python:3.11", None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("needs a login"), "{err}");
        assert_eq!(
            f.token_requests.load(std::sync::atomic::Ordering::SeqCst),
            0
        );
    }

    #[tokio::test]
    async fn the_digest_is_computed_when_the_header_is_missing() {
        let f = fake::start(Mode::NoDigestHeader).await;
        assert_eq!(
            resolve_with(&f, "course/python:3.11", None).await.unwrap(),
            fake::digest()
        );
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_named() {
        // Bind and drop: nothing listens there any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r = Reference::parse(&format!("127.0.0.1:{port}/a/b:1")).unwrap();
        let client = RegistryClient::new(Duration::from_secs(5)).unwrap();
        let err = client
            .manifest_digest(&Target {
                reference: &r,
                login: None,
                plain_http: true,
            })
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("registry 127.0.0.1:{port} is unreachable: ")),
            "{text}"
        );
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }
}
