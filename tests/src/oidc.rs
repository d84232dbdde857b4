//! A real OpenID Connect provider on loopback: PyPI's `django-oidc-provider` on
//! Django (the project in `tests/oidc`), served by Django's `runserver`.
//!
//! [`OidcProvider::start`] provisions users (with Django groups) and one confidential
//! client, then serves the provider at `http://127.0.0.1:PORT/openid` (the issuer):
//! discovery, `authorize` (authorization code, PKCE `S256` or `plain`), `token`
//! (`client_secret_basic` or `client_secret_post`), `userinfo` and `jwks` (one RS256
//! key). The scope `groups` adds the claim `groups` (the names of the user's groups)
//! to the ID token and to userinfo; `email` adds `email` and `email_verified`;
//! `profile` adds `preferred_username` (the username) and `name`. The client never
//! asks for consent. A user who is not logged in is sent to Django's login page, a
//! plain form: inputs `username` and `password`, a hidden `csrfmiddlewaretoken`,
//! and the button `#login-submit` (`button[type=submit]`).
//!
//! The Python environment is a venv of `tests/oidc/requirements.txt` (pinned, from
//! PyPI), built on first use under the target directory (`oidc-venv-HASH`, keyed by
//! the requirements and the interpreter) behind a file lock, and reused by later
//! runs. Each provider gets a fresh temporary directory: its sqlite database, the
//! provisioning spec, and the logs of `migrate`, `cairn_provision` and the server.
//! The server is killed when the handle is dropped.
//!
//! It needs Debian's `python3` and `python3-venv` (`/usr/bin/python3` is preferred
//! over another `python3` on `PATH`) and PyPI; a missing piece is an error naming it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::alphabet;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use rand::RngCore;
use reqwest::header::{HeaderMap, COOKIE, LOCATION, SET_COOKIE};
use reqwest::{StatusCode, Url};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::cluster::free_tcp_port;
use crate::require::find_program;

/// The client every provider is provisioned with.
pub const CLIENT_ID: &str = "cairn";

/// Scopes the client may ask for.
pub const CLIENT_SCOPES: &[&str] = &["openid", "email", "profile", "groups"];

/// The login page's path (Django's `LoginView`), where `authorize` sends a browser
/// that is not logged in (with `?next=` the authorize request).
pub const LOGIN_PATH: &str = "/accounts/login/";

/// How long a server may take to answer discovery after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A user of the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcUser {
    pub username: String,
    pub password: String,
    pub email: String,
    /// Names of the user's groups (created as needed), the `groups` claim.
    pub groups: Vec<String>,
}

impl OidcUser {
    pub fn new(username: &str, password: &str, email: &str, groups: &[&str]) -> Self {
        OidcUser {
            username: username.to_string(),
            password: password.to_string(),
            email: email.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }
}

/// A running provider. Dropping it kills the server and removes its directory.
pub struct OidcProvider {
    /// `http://127.0.0.1:PORT/openid`, as the discovery document and ID tokens say.
    pub issuer: String,
    /// The confidential client's id ([`CLIENT_ID`]).
    pub client_id: String,
    /// Its secret, random for each provider.
    pub client_secret: String,
    /// Where the server listens.
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl OidcProvider {
    /// Builds the venv if needed, provisions `users` and the client (allowed
    /// `redirect_uris`) into a fresh database, starts the server on a free loopback
    /// port, and returns once its discovery document names the expected issuer.
    pub async fn start(users: &[OidcUser], redirect_uris: &[String]) -> Result<Self> {
        let venv = tokio::task::spawn_blocking(ensure_venv)
            .await
            .context("the venv builder panicked")??;
        let python = venv.join("bin").join("python");
        let dir = tempfile::Builder::new()
            .prefix("cairn-oidc-")
            .tempdir()
            .context("creating the provider's temporary directory")?;
        let db = dir.path().join("db.sqlite3");

        let client_secret = random_token(24);
        let spec = json!({
            "users": users.iter().map(|u| json!({
                "username": u.username,
                "password": u.password,
                "email": u.email,
                "groups": u.groups,
            })).collect::<Vec<_>>(),
            "clients": [{
                "client_id": CLIENT_ID,
                "client_secret": client_secret,
                "redirect_uris": redirect_uris,
            }],
        });
        let spec_path = dir.path().join("spec.json");
        std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec)?)
            .context("writing the provisioning spec")?;

        let mut migrate = manage(&python, &db, None);
        migrate.args(["migrate", "--noinput"]);
        run_logged(
            migrate,
            &dir.path().join("migrate.log"),
            "manage.py migrate",
        )
        .await?;
        let mut provision = manage(&python, &db, None);
        provision
            .arg("cairn_provision")
            .arg("--spec")
            .arg(&spec_path);
        run_logged(
            provision,
            &dir.path().join("provision.log"),
            "manage.py cairn_provision",
        )
        .await?;

        let http = plain_client()?;
        let log = dir.path().join("server.log");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let addr = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
            let base = format!("http://{addr}");
            let issuer = format!("{base}/openid");
            let out = File::create(&log).context("creating the server log")?;
            let mut server = manage(&python, &db, Some(&base));
            server
                .args(["runserver", "--noreload", "--insecure"])
                .arg(addr.to_string())
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            let mut child = Server(Some(
                server
                    .spawn()
                    .with_context(|| format!("starting {server:?}"))?,
            ));
            match wait_ready(&http, &mut child, &issuer, &log).await {
                Ok(()) => {
                    return Ok(OidcProvider {
                        issuer,
                        client_id: CLIENT_ID.to_string(),
                        client_secret,
                        addr,
                        child: child.0.take(),
                        dir,
                    })
                }
                // The free port was taken between our probe and the server's bind.
                Err(_) if attempt < 3 && tail(&log, 60).contains("already in use") => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// `http://127.0.0.1:PORT`, the server's root.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `{issuer}/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// `{issuer}/authorize`.
    pub fn authorization_endpoint(&self) -> String {
        format!("{}/authorize", self.issuer)
    }

    /// `{issuer}/token`.
    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// `{issuer}/userinfo` (a bearer access token).
    pub fn userinfo_endpoint(&self) -> String {
        format!("{}/userinfo", self.issuer)
    }

    /// `{issuer}/jwks`.
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    /// The login page ([`LOGIN_PATH`]).
    pub fn login_url(&self) -> String {
        format!("{}{LOGIN_PATH}", self.base_url())
    }

    /// The provider's temporary directory (database, spec, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The last lines the server wrote (requests, errors, and why the provider
    /// refused a request).
    pub fn log(&self) -> String {
        tail(&self.log_path(), 60)
    }

    /// An authorization request for the code flow with PKCE `S256`.
    pub fn authorize_url(
        &self,
        redirect_uri: &str,
        scope: &str,
        state: &str,
        nonce: &str,
        code_challenge: &str,
    ) -> String {
        let mut url = Url::parse(&self.authorization_endpoint()).expect("the issuer is a URL");
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", scope)
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", code_challenge)
            .append_pair("code_challenge_method", "S256");
        url.to_string()
    }

    /// Plays a browser over plain HTTP: GETs `authorize_url`, follows redirects
    /// within the provider, fills in the login form when it is shown, and returns
    /// the first redirect that leaves the provider (the client's `redirect_uri`
    /// with `code` and `state`, or `error`) without following it.
    pub async fn log_in(&self, authorize_url: &str, username: &str, password: &str) -> Result<Url> {
        let http = plain_client()?;
        let mut jar = BTreeMap::new();
        let mut url = Url::parse(authorize_url).context("the authorize URL")?;
        let mut posted = false;
        for _ in 0..10 {
            let resp = http
                .get(url.clone())
                .header(COOKIE, cookie_header(&jar))
                .send()
                .await
                .with_context(|| format!("GET {url}"))?;
            keep_cookies(&mut jar, resp.headers());
            let status = resp.status();
            if status.is_redirection() {
                let next = redirect_target(&url, resp.headers())?;
                if next.origin() != url.origin() {
                    return Ok(next);
                }
                url = next;
                continue;
            }
            let body = resp.text().await.unwrap_or_default();
            if status != StatusCode::OK || url.path() != LOGIN_PATH {
                bail!(
                    "GET {url} answered {status}, not a redirect nor the login page: {}\n{}",
                    snippet(&body),
                    self.log()
                );
            }
            if posted {
                bail!(
                    "the login page came back after logging in: {}",
                    snippet(&body)
                );
            }
            let csrf = hidden_input(&body, "csrfmiddlewaretoken")
                .ok_or_else(|| anyhow!("no CSRF token in the login page: {}", snippet(&body)))?;
            let resp = http
                .post(url.clone())
                .header(COOKIE, cookie_header(&jar))
                .form(&[
                    ("csrfmiddlewaretoken", csrf.as_str()),
                    ("username", username),
                    ("password", password),
                ])
                .send()
                .await
                .with_context(|| format!("POST {url}"))?;
            keep_cookies(&mut jar, resp.headers());
            let status = resp.status();
            if !status.is_redirection() {
                let body = resp.text().await.unwrap_or_default();
                if body.contains("id=\"login-error\"") {
                    bail!("the provider refused the login of {username:?} (wrong username or password)");
                }
                bail!(
                    "POST {url} answered {status}: {}\n{}",
                    snippet(&body),
                    self.log()
                );
            }
            posted = true;
            let next = redirect_target(&url, resp.headers())?;
            if next.origin() != url.origin() {
                return Ok(next);
            }
            url = next;
        }
        bail!("too many redirects from {authorize_url}")
    }

    /// The token endpoint's answer (`access_token`, `id_token`, ...) for `code`,
    /// authenticating the client with HTTP basic auth; an error carries the
    /// provider's status and body.
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<Value> {
        let resp = plain_client()?
            .post(self.token_endpoint())
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", code_verifier),
            ])
            .send()
            .await
            .context("POST to the token endpoint")?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if status != StatusCode::OK {
            bail!("the token endpoint answered {status}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("the token answer is not JSON: {body}"))
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL; runserver --noreload is a single process
            let _ = c.wait();
        }
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() && self.log_path().exists() {
            eprintln!("--- OIDC provider {} log ---\n{}", self.issuer, self.log());
        }
    }
}

/// A server process being started: killed if dropped before it is handed over.
struct Server(Option<Child>);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls discovery until it answers 200 naming `issuer`; fails at once if the
/// server exits or names another issuer.
async fn wait_ready(
    http: &reqwest::Client,
    server: &mut Server,
    issuer: &str,
    log: &Path,
) -> Result<()> {
    let url = format!("{issuer}/.well-known/openid-configuration");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(child) = server.0.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the OIDC provider's server exited with {status} before answering:\n{}",
                    tail(log, 60)
                );
            }
        }
        let last = match http.get(&url).timeout(Duration::from_secs(5)).send().await {
            Ok(resp) if resp.status() == StatusCode::OK => {
                let doc: Value = resp.json().await.context("discovery is not JSON")?;
                if doc["issuer"] == issuer {
                    return Ok(());
                }
                bail!(
                    "discovery names issuer {} instead of {issuer}:\n{}",
                    doc["issuer"],
                    tail(log, 60)
                );
            }
            Ok(resp) => format!("HTTP {}", resp.status()),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            bail!(
                "the OIDC provider did not answer {url} within {} s (last: {last}):\n{}",
                READY_TIMEOUT.as_secs(),
                tail(log, 60)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A PKCE code verifier: 32 random bytes, base64url (43 characters).
pub fn pkce_verifier() -> String {
    random_token(32)
}

/// The PKCE `S256` challenge of `verifier`: base64url(SHA-256(verifier)).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The claims of a JWT (its middle part), without checking its signature.
pub fn jwt_payload(jwt: &str) -> Result<Value> {
    jwt_part(jwt, 1)
}

/// The header of a JWT (`alg`, `kid`, ...).
pub fn jwt_header(jwt: &str) -> Result<Value> {
    jwt_part(jwt, 0)
}

fn jwt_part(jwt: &str, index: usize) -> Result<Value> {
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        bail!("not a JWS compact serialization: {} parts", parts.len());
    }
    let bytes = decode_base64url(parts[index])?;
    serde_json::from_slice(&bytes).context("a JWT part is not JSON")
}

/// Decodes base64url, padded or not (standard base64's `+` and `/` too), as a JWT part.
fn decode_base64url(text: &str) -> Result<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );
    let url_safe = text
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_");
    LENIENT
        .decode(url_safe)
        .with_context(|| format!("{text:?} is not base64url"))
}

/// `n` random bytes, base64url.
fn random_token(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(&bytes)
}

/// An HTTP client that follows no redirect and uses no proxy (loopback only).
fn plain_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building an HTTP client")
}

fn keep_cookies(jar: &mut BTreeMap<String, String>, headers: &HeaderMap) {
    for set in headers.get_all(SET_COOKIE) {
        let Ok(set) = set.to_str() else { continue };
        let pair = set.split(';').next().unwrap_or_default();
        let Some((name, value)) = pair.split_once('=') else {
            continue;
        };
        let expired = set
            .split(';')
            .any(|attr| attr.trim().eq_ignore_ascii_case("max-age=0"));
        if value.is_empty() || expired {
            jar.remove(name.trim());
        } else {
            jar.insert(name.trim().to_string(), value.trim().to_string());
        }
    }
}

fn cookie_header(jar: &BTreeMap<String, String>) -> String {
    jar.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn redirect_target(from: &Url, headers: &HeaderMap) -> Result<Url> {
    let location = headers
        .get(LOCATION)
        .ok_or_else(|| anyhow!("a redirect from {from} without Location"))?
        .to_str()
        .context("a Location that is not text")?;
    from.join(location)
        .with_context(|| format!("the Location {location:?} from {from}"))
}

/// The value of `<input type="hidden" name="NAME" value="...">` in a page Django
/// rendered (token values need no unescaping).
fn hidden_input(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    let rest = &html[at..];
    let end = rest.find('>')?;
    let value = rest[..end].split("value=\"").nth(1)?;
    Some(value.split('"').next()?.to_string())
}

fn snippet(body: &str) -> String {
    body.chars().take(600).collect()
}

/// The last `n` lines of a file, or a note that it cannot be read.
fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// The Django project (`tests/oidc`).
fn project_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// `python manage.py` for the database `db`; with `site_url`, the issuer is fixed
/// to `{site_url}/openid`.
fn manage(python: &Path, db: &Path, site_url: Option<&str>) -> Command {
    let project = project_dir();
    let mut cmd = Command::new(python);
    cmd.current_dir(&project)
        .arg(project.join("manage.py"))
        .env("DJANGO_SETTINGS_MODULE", "cairn_oidc.settings")
        .env("CAIRN_OIDC_DB", db)
        // Unbuffered, so the log is current when it is read after a failure.
        .env("PYTHONUNBUFFERED", "1")
        // No __pycache__ in the source tree; the venv's packages were compiled by pip.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONPYCACHEPREFIX")
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME")
        .env_remove("CAIRN_OIDC_DEBUG");
    match site_url {
        Some(url) => cmd.env("CAIRN_OIDC_SITE_URL", url),
        None => cmd.env_remove("CAIRN_OIDC_SITE_URL"),
    };
    cmd
}

/// Runs `cmd` to completion with its output in `log`; an error carries the log's tail.
async fn run_logged(cmd: Command, log: &Path, what: &str) -> Result<()> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true);
    let status = cmd
        .status()
        .await
        .with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status}):\n{}", tail(log, 40));
    }
    Ok(())
}

/// The Python the venv is made from: Debian's, else the first `python3` on `PATH`.
fn base_python() -> Result<PathBuf> {
    let debian = Path::new("/usr/bin/python3");
    if debian.is_file() {
        return Ok(debian.to_path_buf());
    }
    find_program("python3").ok_or_else(|| {
        anyhow!("no python3 for the test OIDC provider: apt-get install python3 python3-venv")
    })
}

/// The cargo target directory the tests run from (marked by cargo's CACHEDIR.TAG).
fn target_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.ancestors().find(|d| d.join("CACHEDIR.TAG").is_file()) {
            return dir.to_path_buf();
        }
    }
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

/// The venv of `tests/oidc/requirements.txt`, built if this machine has none yet.
/// Blocking: it may wait for another test process that is building it.
fn ensure_venv() -> Result<PathBuf> {
    let python = base_python()?;
    let requirements_path = project_dir().join("requirements.txt");
    let requirements = std::fs::read(&requirements_path)
        .with_context(|| format!("reading {}", requirements_path.display()))?;
    let version = Command::new(&python)
        .args(["-c", "import sys; print(sys.version)"])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !version.status.success() {
        bail!(
            "{} does not run: {}",
            python.display(),
            String::from_utf8_lossy(&version.stderr)
        );
    }
    let mut hasher = Sha256::new();
    hasher.update(&requirements);
    hasher.update(python.as_os_str().as_encoded_bytes());
    hasher.update(&version.stdout);
    let hash: String = hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    let target = target_dir();
    std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    let venv = target.join(format!("oidc-venv-{hash}"));
    let done = venv.join(".cairn-complete");
    if done.is_file() {
        return Ok(venv);
    }
    let lock_path = target.join(format!("oidc-venv-{hash}.lock"));
    let lock = File::create(&lock_path)
        .with_context(|| format!("creating the lock {}", lock_path.display()))?;
    // Released when `lock` is closed, also if this process dies.
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    if done.is_file() {
        return Ok(venv);
    }
    let started = Instant::now();
    eprintln!(
        "building the test OIDC provider's venv {} (first use; pip install -r {})",
        venv.display(),
        requirements_path.display()
    );
    if venv.exists() {
        // Left half-built by an interrupted run.
        std::fs::remove_dir_all(&venv)
            .with_context(|| format!("removing the incomplete {}", venv.display()))?;
    }
    let made = Command::new(&python)
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .with_context(|| format!("running {} -m venv", python.display()))?;
    if !made.status.success() {
        bail!(
            "{} -m venv failed (on Debian: apt-get install python3-venv): {}{}",
            python.display(),
            String::from_utf8_lossy(&made.stdout),
            String::from_utf8_lossy(&made.stderr)
        );
    }
    let pip_log = target.join(format!("oidc-venv-{hash}.pip.log"));
    let out = File::create(&pip_log).context("creating the pip log")?;
    let status = Command::new(venv.join("bin").join("python"))
        .args([
            "-m",
            "pip",
            "install",
            "--no-input",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements_path)
        .env_remove("PYTHONPATH")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!(
            "pip install -r {} failed ({status}); PyPI must be reachable:\n{}",
            requirements_path.display(),
            tail(&pip_log, 40)
        );
    }
    let mut marker = File::create(&done).context("marking the venv complete")?;
    marker.write_all(&requirements)?;
    eprintln!(
        "built the test OIDC provider's venv in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(venv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trips_rfc_4648_vectors() {
        let vectors: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg"),
            (b"fo", "Zm8"),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg"),
            (b"fooba", "Zm9vYmE"),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (raw, encoded) in vectors {
            assert_eq!(URL_SAFE_NO_PAD.encode(raw), encoded);
            assert_eq!(decode_base64url(encoded).unwrap(), raw);
        }
        assert_eq!(URL_SAFE_NO_PAD.encode([0xfb, 0xff]), "-_8");
        assert_eq!(decode_base64url("-_8=").unwrap(), [0xfb, 0xff]);
        assert_eq!(decode_base64url("+/8").unwrap(), [0xfb, 0xff]);
        assert!(decode_base64url("Zm9v!").is_err());
        assert!(decode_base64url("Z").is_err());
    }

    #[test]
    fn pkce_challenge_is_rfc_7636_s256() {
        // RFC 7636, appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_eq!(pkce_verifier().len(), 43);
    }

    #[test]
    fn cookies_and_hidden_inputs_are_read_as_django_writes_them() {
        let mut headers = HeaderMap::new();
        headers.append(
            SET_COOKIE,
            "csrftoken_1=abc; expires=Wed, 01 Dec 2027 08:00:00 GMT; Max-Age=31449600; Path=/; SameSite=Lax"
                .parse()
                .unwrap(),
        );
        headers.append(
            SET_COOKIE,
            "sessionid_1=s1; HttpOnly; Path=/".parse().unwrap(),
        );
        let mut jar = BTreeMap::new();
        keep_cookies(&mut jar, &headers);
        assert_eq!(cookie_header(&jar), "csrftoken_1=abc; sessionid_1=s1");
        let mut gone = HeaderMap::new();
        gone.append(
            SET_COOKIE,
            "sessionid_1=\"\"; Max-Age=0; Path=/".parse().unwrap(),
        );
        keep_cookies(&mut jar, &gone);
        assert_eq!(cookie_header(&jar), "csrftoken_1=abc");

        let page = r#"<form><input type="hidden" name="csrfmiddlewaretoken" value="T0k3n">"#;
        assert_eq!(
            hidden_input(page, "csrfmiddlewaretoken").as_deref(),
            Some("T0k3n")
        );
        assert_eq!(hidden_input(page, "next"), None);
    }
}
